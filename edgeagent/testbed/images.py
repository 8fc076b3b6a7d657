"""The two container images a test node needs, written as OCI image archives without any registry.

No container registry is reachable here, so the node's images are made from what the machine has: `pause`
(the pod sandbox's process: a static C program that sleeps until a signal ends it) and `busybox` (Debian's
busybox-static with a link per applet). Each archive is an OCI image layout in a tar (one uncompressed
layer, a config, a manifest, an index naming the image) that ``ctr images import`` takes as it is.

Reproducible: entries sorted, mtimes and owners fixed, so the same inputs give the same digests; the archives
are cached per machine (keyed by those inputs) and rebuilt only when an input changes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeagent.errors import ConfigError

PAUSE_IMAGE = "edgeagent.local/pause:3.10"
BUSYBOX_IMAGE = "edgeagent.local/busybox:1.35"

_PAUSE_C = r"""
/* The pod sandbox's process: holds the pod's namespaces until the runtime stops it. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; }
int main(void) {
    signal(SIGINT, done);
    signal(SIGTERM, done);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"""


@dataclass(frozen=True)
class Image:
    name: str
    archive: Path


def _cache_dir() -> Path:
    return Path(os.environ.get("EDGEAGENT_CACHE", Path.home() / ".cache" / "edgeagent")) / "images"


def _tar_add(tar: tarfile.TarFile, name: str, *, data: bytes | None = None, mode: int = 0o644,
             kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.linkname = link
    info.size = len(data) if data is not None else 0
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _layer(files: dict[str, tuple[bytes, int]], dirs: list[str], symlinks: dict[str, str]) -> bytes:
    """An uncompressed layer tar: directories, then regular files, then symlinks, each sorted."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(dirs):
            _tar_add(tar, d + "/", kind=tarfile.DIRTYPE, mode=0o755)
        for path, (data, mode) in sorted(files.items()):
            _tar_add(tar, path, data=data, mode=mode)
        for path, target in sorted(symlinks.items()):
            _tar_add(tar, path, kind=tarfile.SYMTYPE, mode=0o777, link=target)
    return buf.getvalue()


def _blob(data: bytes) -> tuple[str, int]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)


def _file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest(), path.stat().st_size


def write_archive(path: Path, name: str, layer: bytes | Path, *, entrypoint: list[str], cmd: list[str],
                  env: list[str] | None = None, user: str = "", workdir: str = "/",
                  labels: dict[str, str] | None = None, gzip_layer: bool = False) -> Path:
    """An OCI image layout tar holding one image called ``name`` with one uncompressed layer (bytes, or a tar
    file for big ones), written atomically."""
    layer_digest, layer_size = _blob(layer) if isinstance(layer, bytes) else _file_digest(layer)
    diff_id, layer_type = layer_digest, "application/vnd.oci.image.layer.v1.tar"
    if isinstance(layer, Path) and gzip_layer:
        # Deterministic gzip (no name, mtime 0): the same layer gives the same blob.
        packed = layer.with_name(layer.name + ".gz")
        with layer.open("rb") as src, packed.open("wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        layer = packed
        layer_digest, layer_size = _file_digest(packed)
        layer_type += "+gzip"
    image_config: dict[str, object] = {"Entrypoint": entrypoint, "Cmd": cmd, "Env": env or ["PATH=/bin"],
                                       "WorkingDir": workdir}
    if user:
        image_config["User"] = user
    if labels:
        image_config["Labels"] = labels
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }, sort_keys=True).encode()
    config_digest, config_size = _blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": config_size},
        "layers": [{"mediaType": layer_type, "digest": layer_digest,
                    "size": layer_size}],
    }, sort_keys=True).encode()
    manifest_digest, manifest_size = _blob(manifest)
    tag = name.rsplit(":", 1)[1]
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                       "size": manifest_size, "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": tag}}],
    }, sort_keys=True).encode()
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _tar_add(tar, "blobs/", kind=tarfile.DIRTYPE, mode=0o755)
        _tar_add(tar, "blobs/sha256/", kind=tarfile.DIRTYPE, mode=0o755)
        blobs: list[tuple[str, bytes | Path]] = [(layer_digest, layer), (_blob(config)[0], config),
                                                 (manifest_digest, manifest)]
        for digest, blob in sorted(blobs, key=lambda b: b[0]):
            entry = "blobs/sha256/" + digest.split(":", 1)[1]
            if isinstance(blob, bytes):
                _tar_add(tar, entry, data=blob)
            else:
                info = tarfile.TarInfo(entry)
                info.size, info.mode, info.mtime = blob.stat().st_size, 0o644, 0
                info.uname = info.gname = "root"
                with blob.open("rb") as f:
                    tar.addfile(info, f)
        _tar_add(tar, "index.json", data=index)
        _tar_add(tar, "oci-layout", data=b'{"imageLayoutVersion":"1.0.0"}')
    tmp.replace(path)
    return path


def _pause_binary(work: Path) -> bytes:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise ConfigError("gcc missing: run scripts/install-system-deps.sh (it builds the pause image)")
    src, out = work / "pause.c", work / "pause"
    src.write_text(_PAUSE_C)
    run = subprocess.run([cc, "-static", "-Os", "-s", "-o", str(out), str(src)], capture_output=True,
                         text=True, check=False)
    if run.returncode != 0:
        raise ConfigError(f"building the pause image failed: {run.stderr.strip().splitlines()[-1:]}")
    return out.read_bytes()


def _busybox() -> tuple[bytes, list[str]]:
    exe = Path("/bin/busybox")
    if not exe.exists():
        raise ConfigError("/bin/busybox missing: run scripts/install-system-deps.sh (Debian busybox-static)")
    listed = subprocess.run([exe, "--list-full"], capture_output=True, text=True, check=True).stdout
    return exe.read_bytes(), sorted(line.strip() for line in listed.splitlines() if line.strip())


def _cached(name: str, key: str, build: Callable[[Path], None]) -> Path:
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    stem = name.split("/")[-1].replace(":", "-")
    path = cache / f"{stem}-{key[:16]}.tar"
    if not path.exists():
        build(path)
    return path


def pause_image() -> Image:
    key = hashlib.sha256(_PAUSE_C.encode() + b"1").hexdigest()

    def build(path: Path) -> None:
        work = path.with_name(path.name + ".build")
        work.mkdir(exist_ok=True)
        try:
            layer = _layer({"pause": (_pause_binary(work), 0o755)}, [], {})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        write_archive(path, PAUSE_IMAGE, layer, entrypoint=["/pause"], cmd=[])

    return Image(PAUSE_IMAGE, _cached(PAUSE_IMAGE, key, build))


def busybox_image() -> Image:
    binary, applets = _busybox()
    key = hashlib.sha256(binary + "\n".join(applets).encode() + b"1").hexdigest()

    def build(path: Path) -> None:
        links = {a: "/bin/busybox" for a in applets if a != "bin/busybox"}
        dirs = sorted({str(Path(a).parent) for a in applets} | {"bin", "tmp", "etc", "proc", "sys", "dev"})
        passwd = b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        files = {"bin/busybox": (binary, 0o755),
                 "etc/passwd": (passwd, 0o644),
                 "etc/group": (b"root:x:0:\nnobody:x:65534:\n", 0o644)}
        layer = _layer(files, [d for d in dirs if d != "."], links)
        write_archive(path, BUSYBOX_IMAGE, layer, entrypoint=[], cmd=["/bin/sh"])

    return Image(BUSYBOX_IMAGE, _cached(BUSYBOX_IMAGE, key, build))
