#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager 1.20.2 from Debian's kubernetes source package, once per
# machine: the binaries are cached under ${EDGEAGENT_CACHE:-~/.cache/edgeagent}/kubernetes-1.20.2/bin.
# Why from source: no registry reachable here ships these binaries, and Debian's source package carries vendor/.
set -euo pipefail

CACHE="${EDGEAGENT_CACHE:-$HOME/.cache/edgeagent}"
OUT="$CACHE/kubernetes-1.20.2/bin"
if [ -x "$OUT/kube-apiserver" ] && [ -x "$OUT/kube-controller-manager" ]; then
  exit 0
fi
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
mkdir -p .go/src/k8s.io
[ -e .go/src/k8s.io/kubernetes ] || ln -s ../../.. .go/src/k8s.io/kubernetes
echo "building kube-apiserver + kube-controller-manager (once per machine, ~6 min)" >&2
env GOPATH="$PWD/.go" CGO_ENABLED=0 HOME="$(mktemp -d)" \
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log" >&2; exit 1; }
mkdir -p "$OUT.tmp"
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$OUT.tmp/"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
cd "$CACHE" && rm -rf "$WORK"
echo "kubernetes binaries in $OUT" >&2
