"""Helpers for fixtures that run real components: free loopback ports, process groups, readiness waits."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def free_listen_port(low: int = 20000) -> int:
    """A loopback port free now and outside the kernel's ephemeral range, for a server that binds it much
    later (a fleet device's agent binds minutes after): an ephemeral port handed out meanwhile to some
    outgoing connection would take it ("Address already in use", seen at 100 devices)."""
    import random

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    high = max(low + 1000, ephemeral_low) - 1
    for _ in range(500):
        port = random.randint(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def free_port(count: int = 1) -> int:
    """A loopback port P such that P..P+count-1 were all free a moment ago (swtpm needs P and P+1)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + count > 65535:
            continue
        ok = True
        for extra in range(1, count):
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + extra))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no free loopback port range")


def wait_port(
    port: int, *, timeout: float = 30.0, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    """Waits until something accepts on 127.0.0.1:port; fails early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            args = proc.args
            program = args if isinstance(args, str | bytes | os.PathLike) else args[0]
            program = os.fsdecode(program)
            raise RuntimeError(f"{program} exited with {proc.returncode} before listening:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def wait_for(
    pred: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def start(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Starts ``cmd`` in its own session (process group), output to ``log``, so `stop` can kill it all."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    try:
        return subprocess.Popen(
            [str(c) for c in cmd],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        fh.close()


def stop(proc: subprocess.Popen, *, timeout: float = 10.0) -> None:
    """SIGTERM to the process group, SIGKILL after ``timeout``; some services (Keylime) ignore SIGTERM."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
