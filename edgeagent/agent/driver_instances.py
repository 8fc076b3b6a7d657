"""The driver instances the agent runs (``[[drivers.instances]]``), each in a thread of its own.

Thread ``driver-NAME`` owns its driver session (Wasm store, bus or USB handle): it opens the driver, takes a
reading every ``interval`` and records it; the only other thread that touches the session is a local-API
request writing to an output driver, under the worker's lock. Why one thread per instance: a driver blocked
on a slow bus (a conversion wait, a USB timeout) must not delay the others' readings, and the Wasm compute
limit bounds how long any one call can hold its thread.

Failures, in the order a device meets them:
- refused before it runs: the module or policy does not match the digest ``edgeagent measure`` extended into
  the TPM (or was never measured), the policy is wrong, the device is not granted: reported, retried with
  backoff (a reload that measures a fixed file brings it up), never fatal to the agent;
- a bad reading (NACK, timeout, data error): counted and reported, the stream goes on after a backoff;
- a trap, a loop stopped by the compute limit, an unplugged device: the session is closed and the driver
  restarted with backoff (doubling, capped; a long healthy run resets it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeagent.agent.backoff import Backoff
from edgeagent.agent.part import Part
from edgeagent.config import AgentConfig, DriverInstance
from edgeagent.errors import AccessDenied, DriverError, HardwareError, StateError

log = logging.getLogger(__name__)

# path -> the sha256 (hex) it had when measured, or None when the measurement log does not name it
DigestLookup = Callable[[Path], str | None]


def _sim_flag(value: str) -> bool | None:
    return {"auto": None, "true": True, "false": False}[value]


def check_measured(what: str, path: Path, digests: DigestLookup) -> str:
    """The file's sha256 when it is what was measured; DriverError otherwise (loading it would run code the
    attestation never vouched for)."""
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise DriverError(f"{what}: cannot read {path}: {e.strerror}") from None
    expected = digests(path)
    if expected is None:
        raise DriverError(
            f"{what}: {path} was not measured (put it under a measured directory or list it in "
            "drivers.modules, then reload)"
        )
    if expected.lower() != digest:
        raise DriverError(
            f"{what}: {path} does not match its measured digest (sha256 {digest[:16]}..., "
            f"measured {expected[:16]}...)"
        )
    return digest


class DriverWorker(Part):
    """One configured driver instance and the thread that runs it."""

    def __init__(
        self,
        inst: DriverInstance,
        config: AgentConfig,
        *,
        digests: DigestLookup,
        backoff: Backoff,
        on_reading: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(backoff=backoff, thread_name=f"driver-{inst.name}")
        self.inst = inst
        self.config = config
        self.digests = digests
        self.on_reading = on_reading
        self.kind = ""  # "sensor" or "output" once open
        self.device = ""
        self.sim: bool | None = None
        self.latest: dict[str, Any] | None = None
        self.readings = 0
        self.errors = 0
        self.module_sha256 = ""
        self._session: Any = None
        self._lock = threading.Lock()
        self._log_file: Any = None

    @property
    def name(self) -> str:
        return self.inst.name

    # ------------------------------------------------------------ control (supervisor thread)
    def stop(self, timeout: float = 5.0) -> None:
        """Stops the thread and closes the driver (waits up to ``timeout`` for a call in progress)."""
        if not self._join(timeout):
            log.warning("driver %s: still in a call after %.0f s; abandoned", self.name, timeout)
        self.state = "stopped"

    # ------------------------------------------------------------ local API (request threads)
    def write(self, text: str) -> None:
        """Writes to an output driver (the policy, checked by the host, decides what it may reach)."""
        with self._lock:
            session = self._session
            if session is None or self.state != "running":
                raise DriverError(
                    f"driver {self.name} is not running ({self.state}: {self.last_error or '-'})"
                )
            if self.kind != "output":
                raise DriverError(
                    f"driver {self.name} is a {self.kind or 'sensor'} driver: it takes no output"
                )
            try:
                session.driver.write(text)
            except (HardwareError, AccessDenied) as e:
                self._failed(e)
                raise
            self.latest = {"time": time.time(), "written": text}
            self.readings += 1

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "driver": self.inst.driver,
            "kind": self.kind,
            "device": self.device,
            "sim": self.sim,
            "state": self.state,
            "interval": self.inst.interval,
            "readings": self.readings,
            "errors": self.errors,
            "restarts": self.backoff.restarts,
            "last_error": self.last_error,
            "latest": self.latest,
            "module_sha256": self.module_sha256,
        }

    # ------------------------------------------------------------ the driver's thread
    def _cycle(self) -> None:
        self._open()
        self.backoff.started()
        self.state = "running"
        log.info("driver %s: running (%s on %s)", self.name, self.kind, self.device)
        self._serve()

    def _failed(self, e: BaseException) -> None:
        self.errors += 1
        super()._failed(e)

    def _open(self) -> None:
        from edgeagent.drivers import loader
        from edgeagent.drivers.session import open_driver

        inst, what = self.inst, f"driver {self.inst.name}"
        source = loader.resolve(inst.driver, self.config, inst.policy)
        self.module_sha256 = check_measured(what, source.path, self.digests)
        policy_path = Path(source.policy.source)
        if policy_path.is_file():
            check_measured(f"{what}'s policy", policy_path, self.digests)
        session = open_driver(
            inst.driver,
            self.config,
            policy_file=inst.policy,
            device=inst.device or None,
            sim=_sim_flag(inst.sim),
        )
        with self._lock:
            self._session = session
        self.sim = session.sim
        driver = session.driver
        self.kind = getattr(driver, "kind", "sensor")
        self.device = str(session.device) if not hasattr(session, "where") else session.where
        if hasattr(session, "bus") and hasattr(session.device, "address"):
            self.device = f"{session.bus.name}:{session.device.address:#04x}"
        if inst.readings_log is not None and self._log_file is None:
            path = self.config.state_path(inst.readings_log)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._log_file = path.open("a", encoding="utf-8")
            except OSError as e:
                raise StateError(f"{what}: cannot open readings log {path}: {e.strerror}") from None

    def _serve(self) -> None:
        if self.kind == "output":
            self._stop.wait()
            return
        session = self._session
        # A USB session takes its own readings (a ping round, a block check); an I2C session's driver does.
        read = session.read if hasattr(session, "read") else session.driver.read
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                reading = read()
            except HardwareError as e:  # the bus or the part: the driver is fine, the stream goes on
                self._failed(e)
                self.state = "errors"
                log.warning("driver %s: %s", self.name, e)
                if self._stop.wait(max(self.inst.interval, self.backoff.failed())):
                    return
                continue
            if getattr(reading, "skipped", False):  # the driver's EA_SKIP: nothing to record this time
                self._stop.wait(max(0.0, self.inst.interval - (time.monotonic() - t0)))
                continue
            row = reading.to_dict() if hasattr(reading, "to_dict") else dict(reading)
            self.latest = {
                "time": row.get("time", time.time()),
                "values": row.get("values", {}),
                "units": row.get("units", {}),
            }
            self.readings += 1
            if self.state != "running":
                self.state = "running"
                self.backoff.started()
            if self.on_reading is not None:
                self.on_reading(self.name, self.latest)
            if self._log_file is not None:
                try:
                    self._log_file.write(json.dumps({"driver": self.name, **self.latest}) + "\n")
                    self._log_file.flush()
                except OSError as e:
                    self._failed(StateError(f"driver {self.name}: readings log: {e.strerror}"))
            self._stop.wait(max(0.0, self.inst.interval - (time.monotonic() - t0)))

    def _cleanup(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(Exception):
                session.close()
        if self._stop.is_set() and self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None
