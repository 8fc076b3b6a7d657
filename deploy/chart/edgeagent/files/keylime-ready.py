"""Readiness of a Keylime verifier or registrar (the chart's exec probe; the image has Python, no shell).

Ready only while its database volume is usable and it listens: a TCP check alone passed while a volume that
was missing, read-only or not writable by the Keylime user made every registration or enrollment fail
inside Keylime. On failure it prints one line saying why (the kubelet puts it in the pod's "Readiness probe
failed" Event) and exits 1.

Usage: keylime-ready.py DATA_DIR DATABASE_FILE|- HOST PORT (DATABASE_FILE relative to DATA_DIR; "-": an
external database, only the volume and the port are checked).
"""

import os
import socket
import sys


def fail(why: str) -> None:
    print(why)
    sys.exit(1)


def main(data: str, database: str, host: str, port: str) -> None:
    if not os.path.isdir(data):
        fail(f"database volume missing: {data} is not a directory")
    probe = os.path.join(data, f".ready-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as e:
        fail(f"database volume {data} is not writable by uid {os.getuid()}: {e.strerror}")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as e:
        fail(f"not listening on {host}:{port} yet: {e.strerror or e}")
    if database != "-":
        path = os.path.join(data, database)
        if not os.path.isfile(path):
            fail(f"database {path} missing while Keylime runs (volume replaced under it?)")
        if not os.access(path, os.R_OK | os.W_OK):
            fail(f"database {path} is not writable by uid {os.getuid()}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
