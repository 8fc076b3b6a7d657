"""Private files of the agent (keys, certificates, payloads, kubeconfigs): 0600, written atomically.

A crash or SIGKILL while writing leaves either the old file or the new one, never half of one: the data
goes to a temporary file in the same directory (created 0600, so it is never readable by others even
briefly), is fsynced, renamed over the target, and the directory is fsynced so the rename survives power loss.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from edgeagent.errors import StateError


def write_private(path: Path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` with mode 0600, atomically; raises StateError naming the path."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an old tmp file left by a crash may have kept other bits
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StateError(f"cannot write {path}: {e.strerror}") from None
    return path


def read_private(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist; StateError when it is unreadable."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"cannot read {path}: {e.strerror}") from None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
