"""Private files of the agent (keys, certificates, payloads, kubeconfigs): 0600, written atomically.

A crash or SIGKILL while writing leaves either the old file or the new one, never half of one: the data
goes to a temporary file in the same directory (created 0600, so it is never readable by others even
briefly), is fsynced, renamed over the target, and the directory is fsynced so the rename survives power loss.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from edgeagent.errors import StateError


def write_private(path: Path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` with mode 0600, atomically; raises StateError naming the path.

    The temporary file has a unique name (`tempfile.mkstemp`, which creates it 0600), so two writers of the
    same path never share one: the last rename wins with a whole file, never a mix or a missing one.
    """
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        if tmp is not None:
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
