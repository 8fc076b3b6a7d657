"""Kubeconfig files with embedded credentials, as the kubelet and the official client read them.

Written by `edgeagent enroll` (the node's client certificate for the kubelet) and by the test cluster (its
admin user). A kubeconfig that embeds a private key is a secret: 0600, written atomically so a reader never
sees half a file and a crash never leaves one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from edgeagent.errors import StateError


def render(*, server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, user: str,
           cluster: str = "edgeagent") -> dict[str, Any]:
    """A single-context kubeconfig (apiVersion v1) with CA, client certificate and key embedded."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster,
                      "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert_pem),
                                          "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": f"{user}@{cluster}", "context": {"cluster": cluster, "user": user}}],
        "current-context": f"{user}@{cluster}",
    }


def write(path: Path, config: dict[str, Any]) -> Path:
    """Writes ``config`` to ``path`` with mode 0600 (tmp + fsync + rename).

    JSON is valid YAML, so every kubeconfig reader accepts it and no YAML library is needed.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StateError(f"cannot write kubeconfig {path}: {e.strerror}") from None
    return path
