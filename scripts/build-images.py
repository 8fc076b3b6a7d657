"""`make images`: the cluster side's OCI images (deploy/images/*.toml), built offline from pinned Debian packages
and PyPI wheels, cached per machine under ${EDGEAGENT_CACHE:-~/.cache/edgeagent}/images.

Why this way and not buildah or a Dockerfile: no registry is reachable here, so there is no base image to pull,
and what the images need is an interpreter and some libraries, not a distribution. Each image is one layer:
the files of a resolved set of Debian packages (``dpkg-deb -x``, no maintainer scripts: nothing in them needs
to run), the wheels (``pip install --target``), precompiled bytecode (unchecked-hash pycs, so no timestamps),
an ld.so cache, /etc/passwd with the non-root user 65532, and nothing else: no shell, no package manager. The
layer is a tar with sorted entries, fixed owners and mtimes, so the same lock gives the same digest.

The package set is pinned in deploy/images/NAME.lock (Debian versions and wheel versions), written on the first
build from the roots in NAME.toml; `--relock` resolves again. The result: images/index.json maps each image
name to its archive, which `ctr images import` takes (edgeagent.testbed.images.cluster_image reads it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeagent.testbed import images  # noqa: E402

DEFS = ROOT / "deploy" / "images"
CACHE = Path(os.environ.get("EDGEAGENT_CACHE", Path.home() / ".cache" / "edgeagent")) / "images"
DEBS = CACHE / "debs"
WHEELS = CACHE / "wheels"
NONROOT = 65532
PY = sys.executable  # the project's venv: Python 3.11, the interpreter the images carry
BUILD_VERSION = "2"


def run(cmd: list[str], **kw: object) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"build-images: {' '.join(cmd[:4])}...: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return str(proc.stdout)


def resolve_debs(roots: list[str], exclude: list[str]) -> list[tuple[str, str]]:
    """What apt would install on an empty system for ``roots`` (Depends only), minus ``exclude``."""
    with tempfile.NamedTemporaryFile() as empty:
        out = run(["apt-get", "-o", f"Dir::State::status={empty.name}", "-o", "APT::Install-Recommends=false",
                   "install", "-s", *roots])
    pkgs = []
    for line in out.splitlines():
        if line.startswith("Inst "):
            parts = line.split()
            pkgs.append((parts[1], parts[2].strip("()")))
    return sorted((p, v) for p, v in pkgs if p not in exclude)


def resolve_wheels(spec: dict, target: Path) -> list[str]:
    run([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile", "--prefer-binary",
         "--target", str(target), *spec["pip"]])
    frozen = run([PY, "-m", "pip", "list", "--disable-pip-version-check", "--path", str(target),
                  "--format=freeze"])
    skip = {n.lower().replace("_", "-") for n in spec.get("pip_exclude", [])}
    return sorted(line for line in frozen.splitlines()
                  if line and not line.startswith("edgeagent")
                  and line.split("==")[0].lower().replace("_", "-") not in skip)


def fetch_debs(pkgs: list[tuple[str, str]]) -> list[Path]:
    DEBS.mkdir(parents=True, exist_ok=True)
    want = {f"{p}_{v.replace(':', '%3a')}_": (p, v) for p, v in pkgs}
    have = {f.name for f in DEBS.glob("*.deb")}
    missing = [f"{p}={v}" for prefix, (p, v) in want.items() if not any(h.startswith(prefix) for h in have)]
    if missing:
        print(f"build-images: downloading {len(missing)} Debian packages", file=sys.stderr)
        run(["apt-get", "download", *missing], cwd=DEBS)
    files = []
    for prefix in want:
        match = sorted(f for f in DEBS.glob("*.deb") if f.name.startswith(prefix))
        if not match:
            raise SystemExit(f"build-images: {prefix}*.deb missing after download")
        files.append(match[0])
    return files


def edgeagent_wheel() -> Path:
    WHEELS.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(dir=WHEELS))
    run([PY, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps", "-w", str(out), str(ROOT)])
    (wheel,) = out.glob("edgeagent-*.whl")
    return wheel


def source_digest(spec: dict, lock_text: str) -> str:
    h = hashlib.sha256(BUILD_VERSION.encode() + json.dumps(spec, sort_keys=True).encode() + lock_text.encode())
    if spec.get("edgeagent"):
        for f in sorted((ROOT / "edgeagent").rglob("*.py")):
            h.update(str(f.relative_to(ROOT)).encode() + f.read_bytes())
        h.update((ROOT / "pyproject.toml").read_bytes())
    return h.hexdigest()


def populate(rootfs: Path, spec: dict, debs: list[Path], wheels: list[str]) -> None:
    for deb in debs:
        run(["dpkg-deb", "-x", str(deb), str(rootfs)])
    for junk in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
                 "usr/share/bug", "usr/share/doc-base", "etc/cron.daily", "etc/init.d", "etc/logrotate.d"):
        shutil.rmtree(rootfs / junk, ignore_errors=True)
    site = rootfs / "opt/edgeagent/site"
    site.mkdir(parents=True)
    if wheels:
        run([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile", "--no-deps",
             "--prefer-binary", "--target", str(site), *wheels])
    if spec.get("edgeagent"):
        wheel = edgeagent_wheel()
        run([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile", "--no-deps",
             "--target", str(site), str(wheel)])
        shutil.rmtree(wheel.parent, ignore_errors=True)
    shutil.rmtree(site / "bin", ignore_errors=True)
    for rel in spec.get("prune", []):
        for hit in site.glob(rel):
            shutil.rmtree(hit) if hit.is_dir() else hit.unlink()
    etc = rootfs / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                                f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/tmp:/usr/sbin/nologin\n")
    (etc / "group").write_text(f"root:x:0:\nnonroot:x:{NONROOT}:\n")
    for d in spec.get("dirs", []):
        (rootfs / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    run(["/sbin/ldconfig", "-r", str(rootfs)])
    (rootfs / "var/cache/ldconfig").mkdir(parents=True, exist_ok=True)
    # Bytecode now, deterministic (no mtimes): the root filesystem is read-only at run time.
    for d in ("usr/lib/python3.11", "usr/lib/python3/dist-packages", "opt/edgeagent/site"):
        if (rootfs / d).exists():
            subprocess.run([PY, "-m", "compileall", "-q", "-j0", "--invalidation-mode", "unchecked-hash",
                            "-s", str(rootfs), "-p", "/", str(rootfs / d)], capture_output=True, check=False)


def write_layer(rootfs: Path, out: Path, writable: list[str]) -> None:
    """One tar of ``rootfs``: sorted, owners root (``writable`` dirs: the non-root user), mtime 0."""
    writable_set = {w.lstrip("/") for w in writable if w != "/tmp"}

    def entries() -> list[Path]:
        found = []
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in sorted([*dirnames, *filenames]):
                found.append(Path(dirpath) / name)
        return sorted(found, key=lambda p: p.relative_to(rootfs).as_posix())

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in entries():
            rel = path.relative_to(rootfs).as_posix()
            info = tar.gettarinfo(str(path), arcname=rel)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if rel in writable_set:
                info.uid = info.gid = NONROOT
                info.uname = info.gname = "nonroot"
            if rel == "tmp":
                info.mode = 0o1777
            info.pax_headers = {}
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def _layer_size(archive: Path) -> int:
    """The uncompressed size of the image's files (what a node's disk holds once unpacked)."""
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(tar.extractfile("blobs/sha256/" + index["manifests"][0]["digest"][7:]))  # type: ignore[arg-type]
        layer = tar.extractfile("blobs/sha256/" + manifest["layers"][0]["digest"][7:])
        with tarfile.open(fileobj=layer, mode="r|*") as inner:
            return sum(m.size for m in inner)


def build(name: str, relock: bool) -> dict:
    spec = tomllib.loads((DEFS / f"{name}.toml").read_text())
    lock_path = DEFS / f"{name}.lock"
    t0 = time.monotonic()
    if relock or not lock_path.exists():
        with tempfile.TemporaryDirectory() as tmp:
            wheels = resolve_wheels(spec, Path(tmp))
        debs = resolve_debs(spec["debian"], spec.get("exclude", []))
        lock_path.write_text(json.dumps({"debian": [f"{p}={v}" for p, v in debs], "pip": wheels}, indent=1)
                             + "\n")
    lock_text = lock_path.read_text()
    lock = json.loads(lock_text)
    image = f"{spec['name']}:{spec['tag']}"
    key = source_digest(spec, lock_text)[:16]
    archive = CACHE / f"{name}-{spec['tag']}-{key}.tar"
    if not archive.exists():
        print(f"build-images: building {image}", file=sys.stderr)
        debs = fetch_debs([tuple(x.split("=", 1)) for x in lock["debian"]])  # type: ignore[misc]
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            rootfs = Path(tmp) / "rootfs"
            rootfs.mkdir()
            populate(rootfs, spec, debs, lock["pip"])
            layer = Path(tmp) / "layer.tar"
            write_layer(rootfs, layer, spec.get("dirs", []))
            env = ["PATH=/usr/bin:/bin", "PYTHONPATH=/opt/edgeagent/site", "PYTHONDONTWRITEBYTECODE=1",
                   "HOME=/tmp"]
            for old in CACHE.glob(f"{name}-{spec['tag']}-*.tar"):
                old.unlink()
            images.write_archive(archive, image, layer, entrypoint=spec.get("entrypoint", []),
                                 cmd=spec.get("cmd", []), env=env, user=f"{NONROOT}:{NONROOT}",
                                 labels={"org.opencontainers.image.source": "edgeagent",
                                         "org.opencontainers.image.version": spec["tag"]},
                                 gzip_layer=True)
    return {"image": image, "archive": str(archive), "bytes": archive.stat().st_size,
            "unpacked_bytes": _layer_size(archive),
            "seconds": round(time.monotonic() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="images to build (default: every deploy/images/*.toml)")
    ap.add_argument("--relock", action="store_true", help="resolve the package sets again")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("build-images: run as root (the image files keep the owners and modes of the packages)",
              file=sys.stderr)
        return 1
    CACHE.mkdir(parents=True, exist_ok=True)
    names = args.names or sorted(p.stem for p in DEFS.glob("*.toml"))
    index_path = CACHE / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for name in names:
        result = build(name, args.relock)
        index[name] = result
        print(f"{result['image']:<48} {result['bytes'] / 1e6:6.1f} MB compressed, "
              f"{result['unpacked_bytes'] / 1e6:6.1f} MB unpacked  {result['archive']}")
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    tmp.replace(index_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
