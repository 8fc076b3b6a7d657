#!/usr/bin/env bash
# Builds helm (v4) from its Go module, once per machine: ${EDGEAGENT_CACHE:-~/.cache/edgeagent}/helm-$HELM_VERSION/helm.
# Why from Go modules: no registry reachable here ships helm's binaries; the Go module proxy serves helm.sh/helm/v4
# with its source (and Go >= 1.26 is the machine's own; scripts/build-kubernetes-current.sh fetches one if not).
set -euo pipefail

HELM_VERSION="4.3.2"
BUILD_ID="1-h$HELM_VERSION"
CACHE="${EDGEAGENT_CACHE:-$HOME/.cache/edgeagent}"
ROOT="$CACHE/helm-$HELM_VERSION"
OUT="$ROOT/helm"

installed() { [ -x "$OUT" ] && [ "$(cat "$ROOT/BUILD_ID" 2>/dev/null)" = "$BUILD_ID" ]; }
installed && exit 0
mkdir -p "$ROOT"
exec 9>"$ROOT/.lock"
flock 9
installed && exit 0

die() { echo "build-helm: $*" >&2; exit 1; }
GO="$(command -v go || true)"
case "$("${GO:-false}" env GOVERSION 2>/dev/null)" in
  go1.2[4-9]*|go1.[3-9][0-9]*) ;;
  *) for g in "$CACHE"/go1.2[6-9]*/bin/go; do [ -x "$g" ] && GO="$g"; done ;;
esac
"$GO" version >/dev/null 2>&1 || die "no Go >= 1.24 found (make kube-current fetches one)"

WORK="$ROOT/build"
LOG="$ROOT/build.log"
mkdir -p "$WORK"
: >"$LOG"
T0=$(date +%s)
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-p=2 -buildvcs=false -modcacherw" GOWORK=off
export GOMODCACHE="$WORK/gomod" GOCACHE="$WORK/gocache"
cd "$WORK"
printf 'module edgeagent.local/helm-build\n\ngo 1.26.0\n' >go.mod
rm -f go.sum
echo "build-helm: helm v$HELM_VERSION from the Go module proxy (a few minutes the first time)" >&2
nice -n 19 "$GO" get "helm.sh/helm/v4/cmd/helm@v$HELM_VERSION" >>"$LOG" 2>&1 || { tail -20 "$LOG" >&2; die "go get failed ($LOG)"; }
nice -n 19 "$GO" build -trimpath \
  -ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=v$HELM_VERSION" \
  -o "$OUT.tmp" helm.sh/helm/v4/cmd/helm >>"$LOG" 2>&1 || { tail -20 "$LOG" >&2; die "go build failed ($LOG)"; }
"$OUT.tmp" version >>"$LOG" 2>&1 || die "the built helm does not run ($LOG)"
mv "$OUT.tmp" "$OUT"
echo "$BUILD_ID" >"$ROOT/BUILD_ID"
rm -rf "$WORK"
echo "build-helm: $("$OUT" version --short) in $OUT ($(($(date +%s) - T0)) s)" >&2
