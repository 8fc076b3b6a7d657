"""`edgeagent agent`: the supervisor that runs every phase of the device in one process.

Start order: open the TPM (the one connection, shared) -> measure what is new or changed into PCR 23 -> the
local API and the metrics endpoint -> enrollment: register or resume, serve attestation (READY=1 once the
verifier can be answered), wait for the node credential, keep renewing it -> the driver instances -> the
controllers host (once the credential exists).

Threads:
- main: this supervisor. It handles signals (as flags: a handler does nothing else), reloads, stops, checks
  that every part's thread is alive (restarting a part whose thread died), and pings the systemd watchdog; it
  pings only from this loop, so a wedged supervisor is restarted by systemd.
- ``attestation`` (+ the agent API server's threads), ``driver-NAME`` per driver instance, ``controllers``
  (+ the controllers host's pool, timers and watches), ``local-api`` (+ a thread per request), and the
  metrics server's thread. Each part restarts itself with backoff after a failure, so a driver trapping on
  every read or a controller host without a cluster never stops attestation.

SIGHUP: the configuration is read again and every new or changed file it names (modules, policies, the
config itself) is measured into PCR 23 BEFORE anything from it loads; then drivers and controllers that
were added, removed or changed are started, stopped or restarted, the rest keeps running. A changed measured
file changes PCR 23, which the verifier checks: a reload that is not expected by the cluster side's policy
gets the device revoked, by design. A bad new configuration is refused (one log line) and the old one stays.

SIGTERM/SIGINT: controllers are swapped out to their snapshots, drivers closed, the agent API closed, the TPM
connection closed; nothing is torn (every state file is written atomically, the event log is append-only).
After SIGKILL or a power cut the next start resumes: same AK, the event log replayed, the credential kept
while valid, controllers restored from their snapshots.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from edgeagent import __version__
from edgeagent.agent import heap, sdnotify
from edgeagent.agent.attestation import AttestationWorker
from edgeagent.agent.backoff import Backoff
from edgeagent.agent.controller_runner import ControllersRunner
from edgeagent.agent.driver_instances import DriverWorker
from edgeagent.agent.localapi import LocalApi, Routes
from edgeagent.config import AgentConfig, DriverInstance, load_config
from edgeagent.errors import DriverError, EdgeAgentError

log = logging.getLogger(__name__)

# Free heap pages go back to the kernel once start-up (or a reload) has settled -- drivers loaded,
# attestation served -- and then now and again for what renewals and TLS sessions leave behind.
TRIM_AFTER_START = 15.0
TRIM_EVERY = 600.0


@dataclasses.dataclass
class Measured:
    state: str = "pending"
    pcr: int = 23
    pcr_value: str = ""
    files: int = 0
    new: int = 0
    at: float = 0.0
    reloads: int = 0
    last_error: str = ""


class Supervisor:
    def __init__(
        self,
        config: AgentConfig,
        *,
        reload_config: Callable[[], AgentConfig] | None = None,
    ) -> None:
        """``reload_config`` reads the configuration again (SIGHUP); None: the file it came from."""
        self.config = config
        self._reload_config = reload_config or (lambda: load_config(config.source))
        self.started = time.time()
        self.tpm: Any = None
        self.measured = Measured(pcr=config.measure.pcr)
        self.attestation: AttestationWorker | None = None
        self.drivers: dict[str, DriverWorker] = {}
        self.controllers: ControllersRunner | None = None
        self.local_api: LocalApi | None = None
        self.metrics: Any = None
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._status_line = ""
        self.reload_error = ""
        try:
            interval = sdnotify.watchdog_interval()  # half systemd's WatchdogSec
        except sdnotify.NotifyError as e:
            log.warning("%s: no watchdog pings", e)
            interval = None
        self._tick_seconds = min(1.0, interval / 2) if interval else 1.0
        self._trim_at = time.monotonic() + TRIM_AFTER_START  # see heap.trim

    # ------------------------------------------------------------ signals -> flags (main thread)
    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def install_signal_handlers(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.request_reload()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    # ------------------------------------------------------------ run (main thread)
    def run(self) -> None:
        """Runs until a stop is requested. Raises project errors for what stops it from starting at all
        (no TPM, an unusable state directory, a corrupt event log): systemd restarts it."""
        try:
            self._start()
            while not self._stop.is_set():
                self._tick()
                self._wake.wait(self._tick_seconds)
                self._wake.clear()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    self.reload()
        finally:
            self.shutdown()

    def _start(self) -> None:
        from edgeagent.tpm.connection import Tpm

        cfg = self.config
        self._notify_status("opening the TPM")
        self.tpm = Tpm.open(cfg.tpm_tcti)
        self._measure(cfg)
        self.local_api = LocalApi(
            cfg.agent.socket,
            Routes(
                status=self.status,
                write=self.write_output,
                restart_controller=self.restart_controller,
                reload=self.request_reload,
            ),
            group=cfg.agent.socket_group,
        )
        self.local_api.start()
        if cfg.agent.metrics_port:
            from edgeagent.agent import metrics

            try:
                self.metrics = metrics.serve(self.status, cfg.agent.metrics_address, cfg.agent.metrics_port)
            except OSError as e:
                log.error(
                    "metrics: cannot listen on %s:%d: %s (continuing without)",
                    cfg.agent.metrics_address,
                    cfg.agent.metrics_port,
                    e.strerror,
                )
        if cfg.agent.enroll:
            self.attestation = AttestationWorker(cfg, self.tpm, backoff=self._backoff())
            self.attestation.start()
            self._notify_status("enrolling: waiting until attestation is served")
            while not self.attestation.serving.wait(0.1):
                if self._stop.is_set():
                    return
                if self._reload.is_set():
                    self._reload.clear()  # nothing else is loaded yet: the next start reads the new config
        self.ready.set()
        self._sd(sdnotify.ready)
        for inst in cfg.drivers.instances:
            self._start_driver(inst)
        self.controllers = ControllersRunner(
            cfg, backoff=self._backoff(), credential_files=self._credential_files(cfg)
        )
        self.controllers.start()
        self._tick()

    def _backoff(self) -> Backoff:
        a = self.config.agent
        return Backoff(base=a.restart_backoff, cap=a.restart_backoff_max)

    @staticmethod
    def _credential_files(cfg: AgentConfig) -> list[Path]:
        from edgeagent.attest.enroll import CERT_FILE, NODE_DIR

        return [cfg.state_dir / NODE_DIR / CERT_FILE]

    def _measure(self, cfg: AgentConfig) -> None:
        from edgeagent.measure import measurer

        self._notify_status("measuring")
        res = measurer.measure(cfg, self.tpm)
        m = self.measured
        m.state, m.pcr, m.files, m.new, m.at = "measured", res.pcr, len(res.items), res.measured, time.time()
        m.pcr_value = next(iter(res.pcr_values.values()), b"").hex()
        log.info("measured %d files into PCR %d (%d new)", m.files, m.pcr, m.new)

    def _start_driver(self, inst: DriverInstance) -> None:
        from edgeagent.controllers.measured import measured_digests

        def digests(path: Path) -> str | None:
            lookup = measured_digests(self.config)  # re-read: a reload may have measured a new version
            return lookup(path) if lookup is not None else None

        worker = DriverWorker(inst, self.config, digests=digests, backoff=self._backoff())
        self.drivers = {**self.drivers, inst.name: worker}
        worker.start()

    def _tick(self) -> None:
        """Restarts a part whose thread died (a bug: parts restart themselves), pings the watchdog."""
        if self.attestation is not None and not self.attestation.alive() and not self._stop.is_set():
            log.error("attestation thread ended; restarting it")
            self.attestation.start()
        for worker in list(self.drivers.values()):
            if not worker.alive() and not self._stop.is_set():
                log.error("driver %s: thread ended; restarting it", worker.name)
                worker.start()
        if self.controllers is not None and not self.controllers.alive() and not self._stop.is_set():
            self.controllers.start()
        self._notify_status(self.summary())
        self._sd(sdnotify.watchdog)
        if time.monotonic() >= self._trim_at:
            heap.trim()
            self._trim_at = time.monotonic() + TRIM_EVERY

    def _sd(self, fn: Callable[..., bool], *args: Any) -> None:
        """systemd notify; a failed send is logged, never fatal (the service manager may be restarting)."""
        try:
            fn(*args)
        except sdnotify.NotifyError as e:
            log.warning("%s", e)

    def _notify_status(self, line: str) -> None:
        if line != self._status_line:
            self._status_line = line
            self._sd(sdnotify.status, line)

    def summary(self) -> str:
        parts = [
            f"measured ({self.measured.files} files)"
            if self.measured.state == "measured"
            else self.measured.state
        ]
        if self.attestation is not None:
            parts.append(f"attestation {self.attestation.phase}")
        if self.drivers:
            running = sum(1 for d in self.drivers.values() if d.state == "running")
            parts.append(f"drivers {running}/{len(self.drivers)} running")
        if self.controllers is not None:
            parts.append(f"controllers {self.controllers.state}")
        return "; ".join(parts)

    # ------------------------------------------------------------ reload (main thread)
    def reload(self) -> None:
        self._sd(sdnotify.reloading)
        try:
            new = self._reload_config()
            self._measure(new)  # before anything it names is loaded
        except EdgeAgentError as e:
            self.reload_error = str(e)
            log.error("reload refused, the running configuration stays: %s", e)
            self._sd(sdnotify.ready)
            return
        old, self.config = self.config, new
        self.reload_error = ""
        self.measured.reloads += 1
        if dataclasses.asdict(old.enroll) != dataclasses.asdict(new.enroll) and self.attestation is not None:
            log.info("reload: enrollment settings changed: restarting attestation")
            self.attestation.stop()
            self.attestation = AttestationWorker(new, self.tpm, backoff=self._backoff())
            self.attestation.start()
        elif self.attestation is not None:
            self.attestation.config = new
        wanted = {i.name: i for i in new.drivers.instances}
        for name, worker in list(self.drivers.items()):
            if name not in wanted or wanted[name] != worker.inst or self._driver_files_changed(worker):
                worker.stop()
                self.drivers = {k: v for k, v in self.drivers.items() if k != name}
                log.info("reload: driver %s stopped%s", name, "" if name not in wanted else " (changed)")
        for name, inst in wanted.items():
            if name not in self.drivers:
                self._start_driver(inst)
                log.info("reload: driver %s started", name)
        if self.controllers is not None:
            self.controllers.reload(new)
        self._sd(sdnotify.ready)
        self._trim_at = time.monotonic() + TRIM_AFTER_START
        log.info("reloaded %s", new.source or "the configuration")

    def _driver_files_changed(self, worker: DriverWorker) -> bool:
        import hashlib

        from edgeagent.drivers import loader

        try:
            source = loader.resolve(worker.inst.driver, self.config, worker.inst.policy)
            return hashlib.sha256(source.path.read_bytes()).hexdigest() != worker.module_sha256
        except (EdgeAgentError, OSError):
            return True

    # ------------------------------------------------------------ local API (request threads)
    def write_output(self, name: str, text: str) -> None:
        worker = self.drivers.get(name)
        if worker is None:
            raise LookupError(f"no driver instance {name!r}")
        worker.write(text)

    def restart_controller(self, name: str) -> str:
        """The controller's state after its restart (see ControllersRunner.restart_controller)."""
        if self.controllers is None or self.controllers.host is None:
            raise DriverError("the controllers host is not running")
        return self.controllers.restart_controller(name)

    def status(self) -> dict[str, Any]:
        """Every phase, as `edgeagent status --json` prints it and the metrics endpoint reads it."""
        cfg = self.config
        att = self.attestation.status() if self.attestation is not None else {"phase": "disabled"}
        drivers = [w.status() for w in self.drivers.values()]
        ctl = self.controllers.status() if self.controllers is not None else {"state": "not started"}
        running = sum(1 for d in drivers if d["state"] == "running")
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started": self.started,
            "uptime": round(time.time() - self.started, 3),
            "ready": self.ready.is_set(),
            "config": str(cfg.source) if cfg.source else None,
            "reload_error": self.reload_error,
            "tpm": {"tcti": cfg.tpm_tcti, "ek_type": cfg.tpm.ek_type, "ak_type": cfg.tpm.ak_type},
            "phases": {
                "measure": self.measured.state,
                "attestation": att.get("phase"),
                "drivers": "none"
                if not drivers
                else "running"
                if running == len(drivers)
                else f"{running}/{len(drivers)} running",
                "controllers": ctl.get("state"),
            },
            "measure": dataclasses.asdict(self.measured),
            "attestation": att,
            "drivers": drivers,
            "controllers": ctl,
        }

    # ------------------------------------------------------------ stop (main thread)
    def shutdown(self) -> None:
        """Graceful stop, in reverse start order; safe to call twice."""
        self._sd(sdnotify.stopping)
        if self.controllers is not None:
            self.controllers.stop()
        for worker in self.drivers.values():
            worker.stop()
        if self.attestation is not None:
            self.attestation.stop()
        if self.local_api is not None:
            self.local_api.stop()
            self.local_api = None
        if self.metrics is not None:
            self.metrics.shutdown()
            self.metrics.server_close()
            self.metrics = None
        if self.tpm is not None:
            self.tpm.close()
            self.tpm = None
