"""The controlling side of the device emulation: start the emulator, run programs against it, plug and unplug.

Used by the test fixture and the emulated-device benchmark. A program under test is a separate process with
the umockdev preload library and the testbed's root in its environment, so the libraries it loads (smbus2,
pyusb/libusb) are the unmodified ones; a Python snippet reports back by printing one JSON document as its last
stdout line. Nothing here imports GI: only the emulator process needs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from edgeagent.errors import HardwareError

PRELOAD = "libumockdev-preload.so.0"


class EmulationError(HardwareError):
    """The emulator could not start, a command failed, or a program under emulation failed."""


def last_json_line(stdout: str) -> Any:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith(("{", "[")):
            return json.loads(line)
    raise EmulationError("the program printed no JSON result")


class Emulator:
    """One emulator process (one testbed). Use as a context manager, or call `close()`."""

    def __init__(
        self,
        spec: Mapping[str, Any],
        *,
        python: str = sys.executable,
        log: Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        wrapper = shutil.which("umockdev-wrapper")
        if wrapper is None:
            raise EmulationError("umockdev-wrapper not found (install Debian's umockdev)")
        self.python = python
        self._log: IO[bytes] | int = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [wrapper, python, "-m", "edgeagent.hw.emulation.server", json.dumps(dict(spec))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        try:
            ready = self._read(start_timeout)
        except EmulationError:
            self.close()
            raise
        if not ready.get("ready"):
            self.close()
            raise EmulationError(f"emulator did not start: {ready}")
        self.root: str = ready["root"]
        self.usb: dict[str, dict[str, Any]] = ready["usb"]
        self.i2c: dict[str, str] = ready["i2c"]

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ the emulator
    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise EmulationError(f"emulator did not answer within {timeout:g} s")
        line = self.proc.stdout.readline()
        if not line:
            raise EmulationError(f"emulator exited (status {self.proc.poll()})")
        return dict(json.loads(line))

    def command(self, op: str, *, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise EmulationError("emulator is gone") from None
        reply = self._read(timeout)
        if not reply.get("ok"):
            raise EmulationError(f"emulator {op}: {reply.get('error', 'failed')}")
        return reply

    def plug(self, name: str, model: str, **fields: Any) -> dict[str, Any]:
        reply = self.command("plug", name=name, model=model, **fields)
        self.usb[name] = {k: v for k, v in reply.items() if k != "ok"}
        return self.usb[name]

    def unplug(self, name: str) -> None:
        self.command("unplug", name=name)
        self.usb.pop(name, None)

    def halt(self, name: str, endpoint: int) -> None:
        self.command("halt", name=name, endpoint=endpoint)

    def wait_pending(self, name: str, endpoint: int | None = None, timeout: float = 10.0) -> bool:
        """Waits until a transfer to `endpoint` of device `name` is pending (NAKed) in the emulator."""
        reply = self.command("wait_pending", timeout=timeout + 10, name=name, endpoint=endpoint, wait=timeout)
        return bool(reply.get("pending"))

    def stats(self) -> dict[str, Any]:
        return self.command("stats")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, EmulationError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if not isinstance(self._log, int):
            self._log.close()

    # ------------------------------------------------------------ programs under emulation
    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        preload = env.get("LD_PRELOAD", "")
        env["LD_PRELOAD"] = f"{PRELOAD}:{preload}" if preload else PRELOAD
        env["UMOCKDEV_DIR"] = self.root
        env.update(extra or {})
        return env

    def spawn_python(self, code: str, args: Sequence[str] = (), **kwargs: Any) -> subprocess.Popen[str]:
        """Starts `code` under emulation without waiting (for plugging/unplugging while it runs)."""
        return subprocess.Popen(
            [self.python, "-c", code, *args],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            **kwargs,
        )

    def run(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Runs a program (e.g. the ``edgeagent`` console script) under emulation; its exit status is the
        caller's to judge. Killed with its process group after ``timeout``."""
        proc = subprocess.Popen(
            list(argv),
            env=self.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise EmulationError(f"{argv[0]} under emulation timed out after {timeout:g} s") from None
        return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)

    def run_python(self, code: str, args: Sequence[str] = (), *, timeout: float = 120.0) -> Any:
        """Runs `code` under emulation; returns the JSON its last stdout line holds."""
        proc = self.spawn_python(code, args)
        return self.result(proc, timeout=timeout)

    def result(self, proc: subprocess.Popen[str], *, timeout: float = 120.0) -> Any:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise EmulationError(
                f"program under emulation timed out after {timeout:g} s: {err[-2000:]}"
            ) from None
        if proc.returncode != 0:
            raise EmulationError(f"program under emulation exited {proc.returncode}: {err.strip()[-3000:]}")
        return last_json_line(out)
