#!/usr/bin/env bash
# Builds a current Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet) and a matching
# etcd from their Go modules, once per machine: the binaries are cached under
# ${EDGEAGENT_CACHE:-~/.cache/edgeagent}/kubernetes-$KUBE_VERSION/bin (with etcd beside them).
# Why from Go modules: no registry reachable here ships these binaries, Debian's kubernetes stops at 1.20 and its
# etcd-server (3.4) is older than current Kubernetes supports; the Go module proxy serves k8s.io/kubernetes and
# go.etcd.io/etcd/server/v3 with their source.
# The 1.20 build (scripts/build-kubernetes.sh) is separate and unchanged: the testbed picks one with EDGEAGENT_KUBE.
set -euo pipefail

KUBE_VERSION="1.36.5"   # newest 1.36.x served whose k8s.io/kubernetes module resolves and builds here
STAGING_VERSION="0.36.5" # the staging modules (k8s.io/api, apiserver, ...) of the same release
ETCD_VERSION="3.6.16"   # Kubernetes 1.36 is validated against etcd 3.6
# Bump when the build changes, so machines with an older cached build rebuild once.
BUILD_ID="1-k$KUBE_VERSION-e$ETCD_VERSION"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet etcd)

CACHE="${EDGEAGENT_CACHE:-$HOME/.cache/edgeagent}"
ROOT="$CACHE/kubernetes-$KUBE_VERSION"
OUT="$ROOT/bin"

installed() {
  local b
  for b in "${BINARIES[@]}"; do [ -x "$OUT/$b" ] || return 1; done
  [ "$(cat "$OUT/BUILD_ID" 2>/dev/null)" = "$BUILD_ID" ]
}
installed && exit 0

die() { echo "build-kubernetes-current: $*" >&2; exit 1; }
command -v go >/dev/null || die "no go on PATH (Go >= 1.26 is needed: k8s.io/kubernetes $KUBE_VERSION says go 1.26.0)"
GOVER="$(go env GOVERSION)"
case "$GOVER" in
  go1.2[6-9]*|go1.[3-9][0-9]*) ;;
  *) die "$GOVER is too old: k8s.io/kubernetes $KUBE_VERSION needs Go >= 1.26" ;;
esac

mkdir -p "$ROOT"
# One build at a time per machine: a second caller waits, then finds the binaries installed.
exec 9>"$ROOT/.lock"
flock 9
installed && exit 0

WORK="$ROOT/build"
LOG="$ROOT/build.log"
TIMES="$ROOT/build-times.txt"
mkdir -p "$WORK/kube" "$WORK/etcd"
: >"$LOG"
: >"$TIMES"
# Others share this machine's 2 cores: one package compiled at a time, at the lowest priority.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-p=1 -buildvcs=false" GOWORK=off
NICE=(nice -n 19)
LDFLAGS_BASE="-s -w"

step() { # step NAME CMD...: runs CMD in the background of the log, records its wall time
  local name="$1" t0 t1; shift
  t0=$(date +%s)
  echo "== $name: $*" >>"$LOG"
  if ! "$@" >>"$LOG" 2>&1; then
    tail -30 "$LOG" >&2
    die "$name failed (full log: $LOG)"
  fi
  t1=$(date +%s)
  printf '%-28s %5ss\n' "$name" "$((t1 - t0))" | tee -a "$TIMES" >&2
}

# --- Kubernetes: a wrapper module requiring k8s.io/kubernetes. Its go.mod lists the staging modules at v0.0.0
# with replace lines to ./staging, which do not apply to a dependent module: pin each one to the same release.
cd "$WORK/kube"
# Read them from k8s.io/kubernetes's own go.mod (fetched through the module proxy like everything else).
step "kubernetes module download" "${NICE[@]}" go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION"
GOMOD=$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
STAGING=$(awk '/^require \(/{r=1;next} r&&/^\)/{r=0} r&&$2=="v0.0.0"{print $1}' "$GOMOD" 2>/dev/null) || true
[ -n "$STAGING" ] || die "could not read the staging module list of k8s.io/kubernetes@v$KUBE_VERSION"
{
  echo "module edgeagent.local/kubernetes-build"
  echo
  echo "go 1.26.0"
  echo
  echo "require k8s.io/kubernetes v$KUBE_VERSION"
  echo
  echo "replace ("
  for m in $STAGING; do echo "	$m => $m v$STAGING_VERSION"; done
  echo ")"
} >go.mod
rm -f go.sum
KUBE_PKGS=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
           k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet)
step "kubernetes deps resolve" "${NICE[@]}" go get "${KUBE_PKGS[@]/%/@v$KUBE_VERSION}"
step "kubernetes deps download" "${NICE[@]}" go mod download

# What `kubectl version` and /version report (hack/lib/version.sh sets the same variables).
V="k8s.io/component-base/version"
CV="k8s.io/client-go/pkg/version"
MAJOR="${KUBE_VERSION%%.*}"
MINOR="${KUBE_VERSION#*.}"; MINOR="${MINOR%%.*}"
NOW="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
XFLAGS=""
for p in "$V" "$CV"; do
  XFLAGS="$XFLAGS -X $p.gitVersion=v$KUBE_VERSION -X $p.gitMajor=$MAJOR -X $p.gitMinor=$MINOR"
  XFLAGS="$XFLAGS -X $p.gitTreeState=clean -X $p.buildDate=$NOW"
done

rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
  TAGS=()
  # kubelet: no dockerless tag any more (dockershim left in 1.24; checked against 1.36's source: no file has it).
  step "build $b" "${NICE[@]}" go build "${TAGS[@]}" -trimpath -ldflags="$LDFLAGS_BASE$XFLAGS" \
    -o "$OUT.tmp/$b" "k8s.io/kubernetes/cmd/$b"
done

# --- etcd: server/v3's main package is the etcd server binary (server/main.go -> etcdmain.Main).
cd "$WORK/etcd"
printf 'module edgeagent.local/etcd-build\n\ngo 1.26.0\n' >go.mod
rm -f go.sum
step "etcd modules" "${NICE[@]}" go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
step "build etcd" "${NICE[@]}" go build -trimpath -ldflags="$LDFLAGS_BASE" -o "$OUT.tmp/etcd" go.etcd.io/etcd/server/v3

for b in "${BINARIES[@]}"; do
  "$OUT.tmp/$b" --version >>"$LOG" 2>&1 || die "$b --version failed (full log: $LOG)"
  printf '%-28s %5s MB\n' "size $b" "$(( $(stat -c %s "$OUT.tmp/$b") / 1048576 ))" | tee -a "$TIMES" >&2
done
echo "$BUILD_ID" >"$OUT.tmp/BUILD_ID"
# Swap in the new bin dir; readers see either the old complete one or the new complete one.
rm -rf "$OUT.old"
[ -d "$OUT" ] && mv "$OUT" "$OUT.old"
mv "$OUT.tmp" "$OUT"
rm -rf "$OUT.old"
echo "kubernetes $KUBE_VERSION + etcd $ETCD_VERSION binaries in $OUT (times: $TIMES)" >&2
