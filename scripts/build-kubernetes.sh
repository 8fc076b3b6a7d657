#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager 1.20.2 from Debian's kubernetes source package, once per
# machine: the binaries are cached under ${EDGEAGENT_CACHE:-~/.cache/edgeagent}/kubernetes-1.20.2/bin.
# Why from source: no registry reachable here ships these binaries, and Debian's source package carries vendor/.
set -euo pipefail

CACHE="${EDGEAGENT_CACHE:-$HOME/.cache/edgeagent}"
OUT="$CACHE/kubernetes-1.20.2/bin"
# Bump when the build changes, so machines with an older cached build rebuild once.
# 2: vendored modern-go/reflect2 1.0.1 replaced by Debian's 1.0.2: with Go >= 1.18, 1.0.1 makes kube-apiserver
#    segfault (reflect2 UnsafeMapType.UnsafeIterate) on the first custom-resource write.
BUILD_ID="2"
if [ -x "$OUT/kube-apiserver" ] && [ -x "$OUT/kube-controller-manager" ] \
   && [ "$(cat "$OUT/BUILD_ID" 2>/dev/null)" = "$BUILD_ID" ]; then
  exit 0
fi
REFLECT2=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -f "$REFLECT2/reflect2.go" ] || { echo "missing $REFLECT2 (apt: golang-github-modern-go-reflect2-dev)" >&2; exit 1; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if ! apt-get source --print-uris kubernetes >/dev/null 2>&1; then
  $SUDO tee /etc/apt/sources.list.d/edgeagent-deb-src.sources >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  $SUDO apt-get update -qq
fi

WORK="$CACHE/kubernetes-build"
mkdir -p "$WORK"
cd "$WORK"
if ! ls kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
  apt-get source --download-only kubernetes
fi
if [ ! -d kubernetes-1.20.2 ]; then
  tar xzf kubernetes_*.orig.tar.gz
fi
cd kubernetes-1.20.2
rm -rf vendor/github.com/modern-go/reflect2
mkdir -p vendor/github.com/modern-go/reflect2
cp "$REFLECT2"/*.go "$REFLECT2"/*.s vendor/github.com/modern-go/reflect2/ 2>/dev/null \
  || cp "$REFLECT2"/*.go vendor/github.com/modern-go/reflect2/
sed -i 's|^# github.com/modern-go/reflect2 v1.0.1$|# github.com/modern-go/reflect2 v1.0.2|' vendor/modules.txt
sed -i 's|github.com/modern-go/reflect2 v1.0.1$|github.com/modern-go/reflect2 v1.0.2|' go.mod
mkdir -p .go/src/k8s.io
[ -e .go/src/k8s.io/kubernetes ] || ln -s ../../.. .go/src/k8s.io/kubernetes
# Kubernetes 1.20's build expects Debian's Go 1.19; a machine may have a newer Go first on PATH (polyglot: 1.26),
# which this tree does not build with, so Debian's toolchain is called explicitly.
GO119=/usr/lib/go-1.19/bin
[ -x "$GO119/go" ] || { echo "missing $GO119/go (apt: golang-go on bookworm)" >&2; exit 1; }
echo "building kube-apiserver + kube-controller-manager with $("$GO119/go" version | cut -d' ' -f3) (once per machine, ~6 min)" >&2
env PATH="$GO119:$PATH" GOTOOLCHAIN=local GOPATH="$PWD/.go" CGO_ENABLED=0 HOME="$(mktemp -d)" \
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log" >&2; exit 1; }
mkdir -p "$OUT.tmp"
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$OUT.tmp/"
echo "$BUILD_ID" > "$OUT.tmp/BUILD_ID"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
cd "$CACHE" && rm -rf "$WORK"
echo "kubernetes binaries in $OUT" >&2
