"""The Wasm controllers host inside the agent, tied to the node credential.

Why in the agent's process and not a child: the host's fixed cost is the Python interpreter plus wasmtime
(~26 MiB measured for `controllers run` alone), which the agent already pays; a controller adds ~30 KiB.
A child process would pay the fixed cost twice (figures: `edgeagent bench agent`).

Thread ``controllers`` owns the host's life: it waits until the node credential exists (controllers talk to
the API server as the attested node, so they lose access with it), starts the host, and checks once a second
whether the credential changed (a renewal or a re-enrollment: the host restarts on the new certificate, the
controllers' state carried over in their snapshots) or vanished (a revocation: the host stops, snapshots
saved, until the credential is back). The host's own threads (its pool, timers, watches) are described in
``edgeagent.controllers.host``.

A reload (SIGHUP) re-reads the controllers directory and reconciles by name: new manifests are added,
removed ones stopped, changed ones (manifest or module) restarted; unchanged ones keep running.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

from edgeagent.agent.backoff import Backoff
from edgeagent.agent.part import Part
from edgeagent.config import AgentConfig
from edgeagent.errors import EdgeAgentError

log = logging.getLogger(__name__)


def _fingerprint(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(p), 0, -1))
    return tuple(out)


def _manifest_digest(path: Path, module: Path) -> str:
    h = hashlib.sha256()
    for p in (path, module):
        try:
            h.update(p.read_bytes())
        except OSError:
            h.update(b"missing")
    return h.hexdigest()


class ControllersRunner(Part):
    def __init__(self, config: AgentConfig, *, backoff: Backoff, credential_files: list[Path]) -> None:
        super().__init__(backoff=backoff, thread_name="controllers")
        self.config = config
        self.credential_files = credential_files
        self.host: Any = None
        self._source: Any = None
        self._reload = threading.Event()
        self._loaded: dict[str, str] = {}  # controller name -> manifest+module digest

    @property
    def kubeconfig(self) -> Path:
        return self.config.controllers.kubeconfig or self.config.enroll.kubeconfig

    def configured(self) -> bool:
        from edgeagent.controllers.manifest import manifest_paths

        if self.config.controllers.configmap:
            return True
        try:
            return bool(manifest_paths(self.config.controllers.dir))
        except EdgeAgentError:
            return False

    # ------------------------------------------------------------ control (supervisor thread)
    def stop(self, timeout: float = 15.0) -> None:
        """Stops the host with every controller's state saved to its snapshot."""
        self._join(timeout)
        self.state = "stopped"

    def reload(self, config: AgentConfig) -> None:
        self.config = config
        self._reload.set()

    def restart_controller(self, name: str, timeout: float = 15.0) -> str:
        """Revives one controller as `edgeagent controllers restart NAME` does, through ``host.restart``: a
        fresh instance with its failures forgotten (so one stopped after its restart limit comes back too),
        init run, its watches resynced. Returns its state once the host has acted.

        Runs on a local-API request thread; the restart itself runs on the controller's queue, which this
        waits for. ControllerError if there is no such controller, it failed again, or ``timeout`` passed.
        """
        from edgeagent.controllers.host import State
        from edgeagent.errors import ControllerError

        host = self.host
        if host is None:
            raise ControllerError("the controllers host is not running")
        ctl = host.controllers.get(name)
        before = ctl.stats.restarts if ctl is not None else 0
        host.restart(name)  # ControllerError for a name the host does not run
        if not ctl.queue.wait_idle(timeout) or ctl.stats.restarts <= before:
            raise ControllerError(f"controller {name}: the host did not restart it within {timeout:g} s")
        if ctl.state == State.FAILED:
            raise ControllerError(f"controller {name} restarted and failed again: {ctl.stats.last_error}")
        return str(ctl.state)

    # ------------------------------------------------------------ the thread
    def _cycle(self) -> None:
        """Waits for the credential, runs the host until the credential changes, then returns normally."""
        if not self.configured():
            self.state = "none configured"
            while not self._stop.is_set() and not self._reload.is_set():
                self._stop.wait(1.0)
            self._reload.clear()
            return
        self.state = "waiting for credential"
        while not self.kubeconfig.is_file():
            if self._stop.wait(0.5):
                return
        seen = _fingerprint([self.kubeconfig, *self.credential_files])
        self._start_host()
        self.backoff.started()
        self.state = "running"
        self.last_error = ""
        while not self._stop.wait(1.0):
            if self._reload.is_set():
                self._reload.clear()
                self._reconcile()
            if not self.kubeconfig.is_file():
                self.state = "waiting for credential"
                log.warning("controllers: the node credential is gone (revoked?): stopping them, state saved")
                return
            if _fingerprint([self.kubeconfig, *self.credential_files]) != seen:
                log.info("controllers: the node credential changed: restarting the host on it")
                return

    def _start_host(self) -> None:
        from edgeagent.controllers.host import ControllerHost, HostOptions
        from edgeagent.controllers.measured import measured_digests
        from edgeagent.controllers.source import ConfigMapSource
        from edgeagent.kube.api import KubeApi, connect

        cc = self.config.controllers
        api = KubeApi(connect(self.kubeconfig))
        host = ControllerHost(
            api,
            HostOptions(
                state_dir=self.config.state_dir,
                swap=cc.swap,
                workers=cc.workers,
                max_active=cc.max_active,
                digest_for=measured_digests(self.config) if cc.verify else None,
                resume_saved=True,
            ),
        )
        self.host = host
        self._loaded = {}
        self._reconcile(start=False)
        if cc.configmap:
            ns, name = cc.configmap.split("/")
            self._source = ConfigMapSource(host, api, ns, name)
            self._source.load()
        host.start(sync_timeout=10.0)
        if self._source is not None:
            self._source.start()

    def _reconcile(self, *, start: bool = True) -> None:
        """Directory manifests -> the host, by name (see the module docstring)."""
        from edgeagent.controllers.manifest import load_manifest, manifest_paths

        host = self.host
        if host is None:
            return
        wanted: dict[str, tuple[Any, str]] = {}
        errors: dict[str, str] = {}
        try:
            paths = manifest_paths(self.config.controllers.dir)
        except EdgeAgentError as e:
            paths, errors[str(self.config.controllers.dir)] = [], str(e)
        for path in paths:
            try:
                m = load_manifest(path)
                wanted[m.name] = (m, _manifest_digest(path, m.module))
            except EdgeAgentError as e:
                errors[str(path)] = str(e)
        for name in [n for n in self._loaded if n not in wanted or wanted[n][1] != self._loaded[n]]:
            host.remove(name, keep_state=False)
            del self._loaded[name]
            log.info("controllers: %s stopped (removed or changed)", name)
        for name, (m, digest) in wanted.items():
            if name in self._loaded:
                continue
            try:
                host.add(m)
                self._loaded[name] = digest
                if start:
                    log.info("controllers: %s started", name)
            except EdgeAgentError as e:
                errors[str(m.source)] = str(e)
                log.error("%s", e)
        host.set_failed_loads("dir", errors)

    def _cleanup(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.stop()
        host, self.host = self.host, None
        if host is not None:
            host.stop(save=True)

    def status(self) -> dict[str, Any]:
        host = self.host
        out: dict[str, Any] = {
            "state": self.state,
            "last_error": self.last_error,
            "restarts": self.backoff.restarts,
            "kubeconfig": str(self.kubeconfig),
        }
        if host is not None:
            s = host.status()
            out.update(
                controllers=s["controllers"],
                failed_loads=s["failed_loads"],
                watches=s["watches"],
                wake_latency_s=s["wake_latency_s"][-100:],
            )
        else:
            out.update(controllers=[], failed_loads=[], watches=[], wake_latency_s=[])
        return out
