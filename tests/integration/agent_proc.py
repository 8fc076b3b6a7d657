"""`edgeagent agent` as systemd runs it: the console script in a process group of its own, for the tests.

The process is the real CLI (which execs into the lean service process, same pid); tests talk to it through
its local API socket, signals and, when asked, a real NOTIFY_SOCKET datagram listener.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeagent.agent.client import AgentClient
from edgeagent.errors import EdgeAgentError

EDGEAGENT = Path(sys.executable).parent / "edgeagent"
ROOT = Path(__file__).resolve().parents[2]


def wait_for(pred: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def stage_drivers(target: Path, names: list[str] | None = None) -> Path:
    """Copies built driver modules where an installed system has them (a measured directory)."""
    target.mkdir(parents=True, exist_ok=True)
    for module in (ROOT / "drivers" / "build").glob("*.wasm"):
        if names is None or module.stem in names:
            shutil.copyfile(module, target / module.name)
    return target


class NotifyListener:
    """A systemd-style notify socket: collects the datagrams the agent sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                return self.messages

    def wait(self, fragment: str, *, timeout: float = 30.0, after: int = 0) -> str:
        def found() -> str | None:
            self.drain()
            return next((m for m in self.messages[after:] if fragment in m), None)

        return wait_for(found, timeout=timeout, what=f"a notify message with {fragment!r}")

    def close(self) -> None:
        self.sock.close()


class AgentProcess:
    def __init__(
        self, config: Path, tcti: str, socket_path: Path, *, env: dict[str, str] | None = None
    ) -> None:
        self.config = config
        self.tcti = tcti
        self.socket = socket_path
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.log = config.with_suffix(".log")
        self.client = AgentClient(socket_path, timeout=10)

    def start(self, *, wait_ready: bool = True, timeout: float = 60.0) -> AgentProcess:
        env = {**os.environ, **self.env}
        env.pop("EDGEAGENT_CONFIG", None)
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [str(EDGEAGENT), "--config", str(self.config), "--tpm", self.tcti, "agent"],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,
            )
        if wait_ready:
            self.wait_ready(timeout=timeout)
        return self

    def status(self) -> dict[str, Any]:
        return self.client.status()

    def try_status(self) -> dict[str, Any] | None:
        try:
            return self.client.status()
        except EdgeAgentError:
            return None

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the agent exited with {self.proc.returncode}:\n{self.output()}")
            s = self.try_status()
            return s if s and s.get("ready") else None

        return wait_for(ready, timeout=timeout, what="the agent to be ready")

    def wait_status(
        self, pred: Callable[[dict[str, Any]], Any], *, timeout: float = 30.0, what: str
    ) -> dict[str, Any]:
        """The first status for which ``pred`` holds."""
        last: dict[str, Any] = {}

        def check() -> Any:
            s = self.try_status()
            if s is None:
                return None
            last.clear()
            last.update(s)
            return s if pred(s) else None

        try:
            return wait_for(check, timeout=timeout, what=what)
        except AssertionError as e:
            raise AssertionError(
                f"{e}; last status: {last}\nagent output:\n{self.output()[-3000:]}"
            ) from None

    def driver(self, s: dict[str, Any], name: str) -> dict[str, Any]:
        """The named driver's status; an empty one (no readings, no errors) while it is not listed yet."""
        return next(
            (d for d in s["drivers"] if d["name"] == name),
            {
                "name": name,
                "state": "absent",
                "readings": 0,
                "errors": 0,
                "restarts": 0,
                "last_error": "",
                "latest": None,
            },
        )

    def send(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signals the agent and waits; kills the group if it does not exit. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                raise AssertionError(f"the agent did not stop within {timeout} s:\n{self.output()}") from None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind
        self.proc = None
        return proc.returncode

    def output(self) -> str:
        try:
            return self.log.read_text()
        except OSError:
            return ""


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
