"""`edgeagent agent` as systemd runs it, for the tests, the benchmarks and `make run`: the console script in a
process group of its own, talked to through its local API socket, its signals and a NOTIFY_SOCKET listener.

Threads: ``NotifyListener`` receives datagrams in a thread of its own (``notify-listener``) so their arrival
times are those of the datagrams, not of whoever looks at them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeagent.errors import EdgeAgentError


def wait_until(pred: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """``pred``'s first true value; EdgeAgentError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise EdgeAgentError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def edgeagent_command() -> list[str]:
    """The console script systemd's unit runs; `python -m edgeagent.cli.entry` where it is not installed."""
    script = Path(sys.executable).parent / "edgeagent"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "edgeagent.cli.entry"]


class NotifyListener:
    """The service manager's end of NOTIFY_SOCKET: every datagram with the time (perf_counter) it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.perf_counter()
            with self._cond:
                self.messages.append((at, data.decode(errors="replace")))
                self._cond.notify_all()

    def mark(self) -> int:
        """How many datagrams have arrived: wait for what comes after it."""
        with self._cond:
            return len(self.messages)

    def wait(
        self,
        fragment: str,
        *,
        after: int = 0,
        timeout: float = 30.0,
        proc: subprocess.Popen[Any] | None = None,
    ) -> tuple[float, str]:
        """The first datagram after message ``after`` holding ``fragment``: (arrival time, text)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, text in self.messages[after:]:
                    if fragment in text:
                        return at, text
                if proc is not None and proc.poll() is not None:
                    raise EdgeAgentError(f"the agent exited with {proc.returncode} before {fragment!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EdgeAgentError(f"no notify message with {fragment!r} within {timeout:.0f} s")
                self._cond.wait(min(left, 0.2))

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()


class AgentProcess:
    def __init__(
        self,
        config: Path,
        socket_path: Path,
        log: Path,
        *,
        tcti: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``tcti``: passed as --tpm (else the config's); ``env``: added to a copy of this process's
        environment without EDGEAGENT_* variables (the config file alone configures the agent)."""
        from edgeagent.agent.client import AgentClient

        self.config = config
        self.socket = socket_path
        self.log = log
        self.tcti = tcti
        self.env = env or {}
        self.client = AgentClient(socket_path, timeout=10)
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self, *, lean: bool = False) -> list[str]:
        """The console script as systemd runs it, or (``lean``) the service process it execs into."""
        tpm = ["--tpm", self.tcti] if self.tcti else []
        if lean:
            return [sys.executable, "-m", "edgeagent.agent", "--config", str(self.config), *tpm]
        return [*edgeagent_command(), "--config", str(self.config), *tpm, "agent"]

    def start(self, *, lean: bool = False, env: dict[str, str] | None = None) -> AgentProcess:
        base = {
            k: v for k, v in os.environ.items() if not k.startswith("EDGEAGENT_") and k != "NOTIFY_SOCKET"
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv(lean=lean),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**base, **self.env, **(env or {})},
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def status(self) -> dict[str, Any]:
        """The status; EdgeAgentError when the agent does not answer."""
        return self.client.status()

    def try_status(self) -> dict[str, Any] | None:
        """The status, or None while the agent does not answer; EdgeAgentError once it has exited."""
        code = self.exited()
        if code is not None:
            raise EdgeAgentError(f"the agent exited with {code}; see {self.log}")
        try:
            return self.client.status()
        except EdgeAgentError:
            return None

    def wait_status(
        self, pred: Callable[[dict[str, Any]], Any], *, timeout: float = 30.0, what: str
    ) -> dict[str, Any]:
        """The first status for which ``pred`` holds; the error names the last status seen."""
        last: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            s = self.try_status()
            if s is None:
                return None
            last.clear()
            last.update(s)
            return s if pred(s) else None

        try:
            return wait_until(check, timeout=timeout, what=what)
        except EdgeAgentError as e:
            raise EdgeAgentError(f"{e}; last status: {last}; agent log: {self.log}") from None

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        return self.wait_status(lambda s: s.get("ready"), timeout=timeout, what="the agent to be ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signals the agent and waits; kills its group if it does not exit (then None). Returns the exit
        code; whatever the agent left in its process group is killed either way."""
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        code: int | None = proc.poll()
        if code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                code = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        return code

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""
