#!/usr/bin/env bash
# Installs the Debian packages edgeagent and its test suite need. Idempotent: does nothing when all are present.
# Uses sudo when not root.
set -euo pipefail

PKGS=(
  # build + Python
  make gcc pkg-config python3-dev python3-venv
  # TPM: swtpm with its local CA, TSS libraries for tpm2-pytss, tpm2-tools for Keylime's verifier
  swtpm swtpm-tools tpm2-tools libtss2-dev
  # Keylime's own imports (gpg from Debian), measured-boot policy code
  python3-gpg libefivar1
  # emulated kernel devices for unmodified smbus2 / pyusb
  umockdev gir1.2-umockdev-1.0 python3-gi libusb-1.0-0
  # Wasm guests: C to wasm32-wasi
  clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32
  # Kubernetes test cluster: etcd + a build of kube-apiserver/kube-controller-manager from Debian's source
  golang-go etcd-server rsync jq dpkg-dev golang-github-modern-go-reflect2-dev
  # A real worker node in the tests: containerd + runc + CNI plugins; busybox-static for the test image
  containerd runc containernetworking-plugins busybox-static iptables
  # The units under a real systemd booted in namespaces (systemd-analyze too), the NAT testbed's netns
  systemd libcap2-bin iproute2 util-linux
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
