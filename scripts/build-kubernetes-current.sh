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
go_ok() { # go_ok GO: whether GO runs and is Go >= 1.26
  case "$("$1" env GOVERSION 2>/dev/null)" in go1.2[6-9]*|go1.[3-9][0-9]*) return 0 ;; *) return 1 ;; esac
}
mkdir -p "$ROOT"
# One build at a time per machine: a second caller waits, then finds the binaries installed.
exec 9>"$ROOT/.lock"
flock 9
installed && exit 0

# Go >= 1.26 (k8s.io/kubernetes $KUBE_VERSION says go 1.26.0): the one on PATH if new enough, else the official
# toolchain fetched as the Go module golang.org/toolchain (as `go` itself does for GOTOOLCHAIN), with whatever
# older go is at hand (Debian bookworm's golang-go is 1.19, from scripts/install-system-deps.sh).
GO_FALLBACK="1.26.11"
GO="$(command -v go || true)"
if [ -z "$GO" ] || ! go_ok "$GO"; then
  GOROOT_NEW="$CACHE/go$GO_FALLBACK"
  if ! go_ok "$GOROOT_NEW/bin/go"; then
    BOOT="${GO:-$(command -v /usr/lib/go-*/bin/go | tail -1)}"
    [ -n "$BOOT" ] && [ -x "$BOOT" ] || die "no go found: install Go >= 1.26, or Debian's golang-go to fetch it"
    echo "build-kubernetes-current: $("$BOOT" env GOVERSION) is too old; fetching go$GO_FALLBACK" \
      "(golang.org/toolchain from the module proxy)" >&2
    TC="golang.org/toolchain@v0.0.1-go$GO_FALLBACK.$("$BOOT" env GOHOSTOS)-$("$BOOT" env GOHOSTARCH)"
    DIR=$(cd "$ROOT" && GOFLAGS=-modcacherw GO111MODULE=on "$BOOT" mod download -json "$TC" \
      | sed -n 's/.*"Dir": "\(.*\)".*/\1/p') || true
    [ -n "$DIR" ] && [ -d "$DIR" ] || die "could not download $TC"
    rm -rf "$GOROOT_NEW.tmp" && cp -r "$DIR" "$GOROOT_NEW.tmp"
    # Module zips carry no execute bits; the toolchain's programs need them (cmd/go does the same).
    chmod -R u+w "$GOROOT_NEW.tmp" && chmod +x "$GOROOT_NEW.tmp"/bin/* "$GOROOT_NEW.tmp"/pkg/tool/*/*
    rm -rf "$GOROOT_NEW" && mv "$GOROOT_NEW.tmp" "$GOROOT_NEW"
    go_ok "$GOROOT_NEW/bin/go" || die "the fetched go$GO_FALLBACK does not run"
  fi
  export PATH="$GOROOT_NEW/bin:$PATH"
fi
unset GOROOT

WORK="$ROOT/build"
LOG="$ROOT/build.log"
TIMES="$ROOT/build-times.txt"
mkdir -p "$WORK/kube" "$WORK/etcd"
: >"$LOG"
: >"$TIMES"
T_START=$(date +%s)
# Others share this machine's 2 cores: one package compiled at a time, at the lowest priority.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-p=1 -buildvcs=false -modcacherw" GOWORK=off
# Private module and build caches (~1 GB + ~3 GB), removed with the work dir once the binaries are installed.
export GOMODCACHE="$WORK/gomod" GOCACHE="$WORK/gocache"
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
rm -rf "$WORK"
printf '%-28s %5ss\n' "total" "$(($(date +%s) - T_START))" | tee -a "$TIMES" >&2
echo "kubernetes $KUBE_VERSION + etcd $ETCD_VERSION binaries in $OUT (times: $TIMES)" >&2
