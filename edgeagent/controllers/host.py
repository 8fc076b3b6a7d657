"""The controller host: Wasm controllers that sleep on disk and wake on events.

Life of a controller::

    load (verify digest, compile via the module cache, instantiate, init(config))
      -> ACTIVE --idle past its timeout--> snapshot to <state>/controllers/snapshots/NAME.snap, drop instance
      -> SWAPPED --event or timer--> new instance without _initialize, restore snapshot, deliver -> ACTIVE
    any trap, loop (compute limit) or ABI violation -> FAILED: instance dropped, reported, events dropped
      -> after a backoff (doubling, capped) a fresh instance: snapshot discarded, init(config) again, and its
         watches resynced (every object it watches delivered as ADDED, like a restarted controller's first
         list) -> ACTIVE; after ``restart_limit`` consecutive failures it stays FAILED

Controllers can be added, replaced and removed while the host runs (a ConfigMap source reloading them).

Everything that touches a controller (events, timer firings, swap-outs) goes through its ``SerialQueue``, so
they run one at a time in arrival order; an event that arrives while the controller is being restored waits in
that queue behind the event that woke it. A failing controller only ever fails itself.

The host writes ``<state>/controllers/status.json`` atomically once a second when something changed (a
watch failing or recovering counts); that file is what ``edgeagent controllers list`` shows, from any process.

Threads, and what each owns:

- the caller's (``service.run``): loads manifests, ``start``, waits for a signal, ``stop``.
- the worker pool (``controller_N``, ``HostOptions.workers``, 2 by default): drains the controllers'
  ``SerialQueue``s, one controller at a time per queue. The only threads that run guest code; they own the
  instances (instantiate, restore, swap out, fail, restart).
- ``controller-timers``: takes due ids from the host's ``kube.queue.DelayQueue`` and runs their callbacks:
  guest timers, idle checks and restart backoffs only post to a controller's queue; the status tick writes
  ``status.json``. Callbacks must be short: they share this one thread.
- one ``watch-KIND`` per shared watch (``kube.watch.SharedWatch`` through ``watch.WatchHub``): owns its
  stream, resume point and health; delivers by posting to the subscribed controllers' queues, never calling
  a guest.
- with a ConfigMap source (``source``): its ``configmap-source`` thread applies changes (adds and removes
  controllers, waiting for their queues), fed by a watch thread of its own.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import enum
import hashlib
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import wasmtime

from edgeagent.controllers.hosts.k8s import K8sHost
from edgeagent.controllers.hosts.log import ControllerLogHost
from edgeagent.controllers.hosts.timer import TimerHost
from edgeagent.controllers.manifest import Manifest, load_manifest, manifest_paths
from edgeagent.controllers.queue import SerialQueue
from edgeagent.controllers.watch import WatchHub
from edgeagent.errors import ControllerError, EdgeAgentError, ManifestError, StateError, WasmError
from edgeagent.kube.api import KubeApi
from edgeagent.kube.queue import DelayQueue
from edgeagent.kube.watch import Event
from edgeagent.wasm import Guest, Limits, ModuleCache, Runtime, Snapshot, signed32
from edgeagent.wasm.hosts.log import LogLimit

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
REQUESTS_DIR = "requests"  # `controllers restart NAME` drops restart-NAME here; the status tick acts on it
REQUIRED_EXPORTS = ("memory", "alloc", "handle-event")
# A measured-digest policy: module path -> expected sha256 (hex), or None when the policy says nothing.
DigestLookup = Callable[[Path], str | None]


class State(enum.StrEnum):
    ACTIVE = "active"
    SWAPPED = "swapped"
    FAILED = "failed"


@dataclasses.dataclass
class ControllerStats:
    events: int = 0
    timers: int = 0
    wakes: int = 0
    swaps: int = 0
    denied: int = 0
    errors: int = 0  # handler calls that returned non-zero (the controller's own failures, not traps)
    dropped: int = 0  # events that arrived after it failed
    restarts: int = 0  # fresh instances after failures
    last_error: str = ""


@dataclasses.dataclass(frozen=True)
class HostOptions:
    state_dir: Path
    swap: bool = True  # False: controllers stay instantiated (the benchmark's "without swapping")
    workers: int = 2
    # At most this many controllers instantiated at once (0: no cap); the least recently active one beyond
    # it is swapped out early. Bounds the host's peak memory, and with it what fragmentation leaves behind.
    max_active: int = 0
    status_interval: float = 1.0
    call_ms: float = 10_000.0  # wall-clock limit of one handler call, API requests included
    digest_for: DigestLookup | None = None
    wake_samples: int = 5000
    # A failed controller is restarted after restart_backoff[0] s, doubling up to restart_backoff[1], at most
    # restart_limit times in a row; a controller that then runs restart_reset s without failing starts over.
    restart_limit: int = 5
    restart_backoff: tuple[float, float] = (1.0, 60.0)
    restart_reset: float = 600.0
    # Take over the snapshot a previous host left for the same module (graceful stop, or the last swap before
    # a crash) instead of running init: the agent service's controllers keep their state across restarts.
    resume_saved: bool = False
    # Leave this host's state directory where `controllers list`/`restart` look when not given --state-dir
    # (see pointer_path): the standalone `controllers run` host does.
    advertise: bool = False


@dataclasses.dataclass(frozen=True)
class _Swap:
    pass


@dataclasses.dataclass(frozen=True)
class _SwapNow:
    pass


@dataclasses.dataclass(frozen=True)
class _Restart:
    pass


@dataclasses.dataclass(frozen=True)
class _Revive:
    """An operator's restart: a fresh instance now, whatever its state and failure count."""


@dataclasses.dataclass(frozen=True)
class _Synced:
    """Every watch of the controller has delivered its initial list: call its optional ``handle-synced``."""


@dataclasses.dataclass(frozen=True)
class _Stop:
    keep_state: bool  # snapshot the instance first, for a successor running the same module


@dataclasses.dataclass(frozen=True)
class _Timer:
    timer_id: int
    generation: int
    received: float


class Controller:
    """One controller: its manifest, compiled module, queue, and (while active) its instance."""

    def __init__(
        self,
        host: ControllerHost,
        manifest: Manifest,
        module: wasmtime.Module,
        sha256: str,
        *,
        origin: str = "",
    ) -> None:
        self.host = host
        self.manifest = manifest
        self.name = manifest.name
        self.module = module
        self.sha256 = sha256
        self.origin = origin  # where it was loaded from: "" for a directory, "configmap NS/NAME" otherwise
        self.state = State.SWAPPED
        self.guest: Guest | None = None
        self.stats = ControllerStats()
        self.snapshot_path = host.snapshot_dir / f"{self.name}.snap"
        self.snapshot_bytes = 0
        self.memory_bytes = 0
        self.last_active = time.monotonic()
        self.queue: SerialQueue[Any] = SerialQueue(self._handle, host.pool, name=self.name)
        self._idle_pending = False
        self._timers: dict[int, tuple[int, int]] = {}  # guest timer id -> (generation, host timer id)
        self._generation = 0
        self._failures = 0  # consecutive: reset once it runs restart_reset s without failing
        self._started_at = time.monotonic()
        self.restart_at: float | None = None  # time.time() of the scheduled restart
        self.removed = False
        # One budget across instances: a controller waking from its snapshot is not a fresh log source.
        self.log_limit = LogLimit(manifest.log_lines_per_second)
        self.watch_error = ""  # set by the host's status writer when one of its watches fails

    # ------------------------------------------------------------------ entry points (any thread)
    def post(self, event: Event) -> None:
        self.queue.post(event)

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {
            "name": self.name,
            "state": self.state.value,
            "memory_bytes": self.memory_bytes if self.state == State.ACTIVE else 0,
            "snapshot_bytes": self.snapshot_bytes if self.state == State.SWAPPED else 0,
            "events": s.events,
            "timers": s.timers,
            "wakes": s.wakes,
            "swaps": s.swaps,
            "denied": s.denied,
            "errors": s.errors,
            "dropped": s.dropped,
            "restarts": s.restarts,
            "restart_at": self.restart_at,
            "last_error": s.last_error,
            "log_suppressed": self.log_limit.total_suppressed,
            # healthy: not failed, and every watch it depends on lists and watches (a wrong plural's 404
            # leaves a controller that never gets an event: that is not healthy)
            "healthy": self.state != State.FAILED and not self.watch_error,
            "watch_error": self.watch_error,
            "origin": self.origin,
            "module": str(self.manifest.module),
            "sha256": self.sha256,
            "watches": [
                {
                    "kind": f"{w.plural}.{w.group}" if w.group else w.plural,
                    "namespace": w.namespace,
                    "label_selector": str(w.label_selector),
                }
                for w in self.manifest.watches
            ],
        }

    # ------------------------------------------------------------------ lifecycle (queue thread)
    def resume(self) -> None:
        """Takes over the snapshot a previous instance of the same module left (a reload that kept state)."""
        self.snapshot_bytes = self.snapshot_path.stat().st_size if self.snapshot_path.exists() else 0
        self.state = State.SWAPPED

    def start(self) -> None:
        """Instantiates, runs ``init(config)``; raises ControllerError if the guest cannot start."""
        self.snapshot_path.unlink(missing_ok=True)  # a previous run's state is not this run's
        self._started_at = time.monotonic()
        guest = self._instantiate(initialize=True)
        try:
            if "init" in guest.export_names:
                config = json.dumps(dict(self.manifest.config), separators=(",", ":")).encode()
                rc = self._call_with(guest, "init", config)
                if rc != 0:
                    raise ControllerError(f"controller {self.name}: init returned {rc}")
        except BaseException:
            guest.close()
            raise
        self.guest = guest
        self.state = State.ACTIVE
        self.memory_bytes = guest.memory.size if guest.memory else 0
        self.last_active = time.monotonic()
        self.host.note_active(self)
        self._schedule_idle()

    def _instantiate(self, *, initialize: bool) -> Guest:
        m = self.manifest
        hosts = [
            K8sHost(m, self.host.api, on_denied=self._denied),
            TimerHost(self._set_timer, self._cancel_timer),
            ControllerLogHost(self.name, limit=self.log_limit),
        ]
        return Guest(
            self.host.runtime,
            self.module,
            name=self.name,
            hosts=hosts,
            limits=Limits(
                memory_bytes=m.memory_limit, compute_ms=m.compute_limit_ms, call_ms=self.host.options.call_ms
            ),
            required_exports=REQUIRED_EXPORTS,
            initialize=initialize,
            kind="controller",
            error_class=ControllerError,
        )

    def _denied(self, what: str) -> None:
        self.stats.denied += 1
        self.stats.last_error = f"denied: {what}"
        self.host.mark_dirty()

    def _handle(self, item: Any) -> None:
        if self.removed:
            return
        if isinstance(item, _Stop):
            if item.keep_state and self.guest is not None:
                self.swap_out()
            self.stop()
            return
        if isinstance(item, _Restart):
            self._restart()
            return
        if isinstance(item, _Revive):
            self._revive()
            return
        if self.state == State.FAILED:
            if isinstance(item, Event | _Timer):
                self.stats.dropped += 1
            return
        try:
            if isinstance(item, _Swap):
                self._maybe_swap()
            elif isinstance(item, _SwapNow):
                self.swap_out()
            elif isinstance(item, _Synced):
                if not self.exports_synced:
                    return  # no need to wake a swapped-out controller that has no such export
                guest = self._ensure_active(time.perf_counter())
                if "handle-synced" in guest.export_names:
                    rc = signed32(int(guest.call("handle-synced") or 0) & 0xFFFFFFFF)
                    self._after_call("handle-synced", rc)
            elif isinstance(item, _Timer):
                if self._timers.get(item.timer_id, (None,))[0] != item.generation:
                    return  # cancelled or replaced after it fired
                del self._timers[item.timer_id]
                guest = self._ensure_active(item.received)
                self.stats.timers += 1
                rc = signed32(int(guest.call("handle-timer", item.timer_id) or 0) & 0xFFFFFFFF)
                self._after_call("handle-timer", rc)
            else:
                guest = self._ensure_active(item.received)
                self.stats.events += 1
                rc = self._call_with(guest, "handle-event", item.raw)
                self._after_call("handle-event", rc)
        except (WasmError, StateError) as e:
            if isinstance(item, Event):  # which object it choked on: the first thing an author needs
                where = f"{item.namespace}/{item.name}" if item.namespace else item.name
                e.args = (f"{e} (handling {item.type} {where})",)
            self._fail(e)
        finally:
            self.host.mark_dirty()

    def _after_call(self, export: str, rc: int) -> None:
        if rc != 0:
            self.stats.errors += 1
            self.stats.last_error = f"{export} returned {rc}"
        self.last_active = time.monotonic()
        if self.guest is not None and self.guest.memory is not None:
            self.memory_bytes = self.guest.memory.size
        self.host.note_active(self)
        self._schedule_idle()

    def _call_with(self, guest: Guest, export: str, payload: bytes) -> int:
        ptr = int(guest.call("alloc", len(payload)) or 0) & 0xFFFFFFFF
        if ptr == 0:
            raise ControllerError(f"controller {self.name}: alloc({len(payload)}) failed (out of memory?)")
        assert guest.memory is not None
        guest.memory.write(ptr, payload)
        return signed32(int(guest.call(export, ptr, len(payload)) or 0) & 0xFFFFFFFF)

    def _ensure_active(self, received: float) -> Guest:
        if self.guest is not None:
            return self.guest
        guest = self._instantiate(initialize=False)
        try:
            guest.restore(Snapshot.load(self.snapshot_path))
        except BaseException:
            guest.close()
            raise
        self.guest = guest
        self.state = State.ACTIVE
        self.stats.wakes += 1
        self.host.record_wake(self.name, time.perf_counter() - received)
        return guest

    def _schedule_idle(self) -> None:
        if not self.host.options.swap or self._idle_pending or self.guest is None:
            return
        self._idle_pending = True
        self.host.call_at(
            self.last_active + self.manifest.idle_timeout, lambda: self.queue.post(_Swap())
        )

    def _maybe_swap(self) -> None:
        self._idle_pending = False
        if self.guest is None or len(self.queue) > 0:
            return  # the queued items reschedule the check when they are done
        if time.monotonic() < self.last_active + self.manifest.idle_timeout:
            self._schedule_idle()
            return
        self.swap_out()

    def swap_out(self) -> None:
        """Snapshot to disk, drop the instance (queue thread only)."""
        guest = self.guest
        if guest is None:
            return
        snap = guest.snapshot()
        try:
            snap.save(self.snapshot_path)
        except OSError as e:
            self.stats.last_error = f"cannot write snapshot: {e.strerror}"
            log.error(
                "controller %s: cannot write snapshot %s: %s", self.name, self.snapshot_path, e.strerror
            )
            self.last_active = time.monotonic()
            self._schedule_idle()
            return
        self.snapshot_bytes = len(snap.memory)
        _write_small(self.module_marker, self.sha256.encode())  # whose state this is, for a later host
        guest.close()
        self.guest = None
        self.state = State.SWAPPED
        self.host.note_inactive(self)
        self.stats.swaps += 1
        log.debug("controller %s: swapped out (%d bytes)", self.name, self.snapshot_bytes)

    def _fail(self, err: EdgeAgentError) -> None:
        self.state = State.FAILED
        self.stats.last_error = str(err)
        for _, tid in self._timers.values():
            self.host.cancel_timer(tid)
        self._timers.clear()
        if self.guest is not None:
            self.guest.close()
            self.guest = None
        self.memory_bytes = 0
        self.host.note_inactive(self)
        opts = self.host.options
        if time.monotonic() - self._started_at >= opts.restart_reset:
            self._failures = 0
        self._failures += 1
        if self._failures > opts.restart_limit or not self.host.running:
            self.restart_at = None
            log.error(
                "%s; controller stopped after %d restart(s), the others go on", err, self.stats.restarts
            )
            return
        lo, hi = opts.restart_backoff
        delay = min(lo * 2 ** (self._failures - 1), hi)
        self.restart_at = time.time() + delay
        log.error("%s; restarting it in %.1f s, the others go on", err, delay)
        self.host.call_later(delay, lambda: self.queue.post(_Restart()))

    def _restart(self) -> None:
        """A fresh instance after a failure: the snapshot is discarded, init runs, its watches resync."""
        if self.state != State.FAILED or self.restart_at is None:
            return
        self.restart_at = None
        self.stats.restarts += 1
        log.info("controller %s: restart %d", self.name, self.stats.restarts)
        try:
            self.start()
        except (WasmError, StateError) as e:
            self._fail(e)
            return
        finally:
            self.host.mark_dirty()
        if self.host.hub is not None:
            self.host.hub.resync(self.post)

    def _revive(self) -> None:
        """A fresh instance on request (``controllers restart``): failures forgotten, init, resynced."""
        for _, tid in self._timers.values():
            self.host.cancel_timer(tid)
        self._timers.clear()
        self.close()
        self.host.note_inactive(self)
        self._failures = 0
        self.restart_at = time.time()
        self.state = State.FAILED  # what _restart starts from
        self._restart()

    def stop(self) -> None:
        """Ends it for good (removal): timers cancelled, instance dropped (queue thread only)."""
        self.removed = True
        for _, tid in self._timers.values():
            self.host.cancel_timer(tid)
        self._timers.clear()
        self.restart_at = None
        self.close()
        self.host.note_inactive(self)

    def close(self) -> None:
        if self.guest is not None:
            self.guest.close()
            self.guest = None

    @property
    def exports_synced(self) -> bool:
        return any(e.name == "handle-synced" for e in self.module.exports)

    @property
    def module_marker(self) -> Path:
        """Beside the snapshot: the sha256 of the module that wrote it (a snapshot fits only its module)."""
        return self.snapshot_path.with_name(self.snapshot_path.name + ".module")

    def saved_state_fits(self) -> bool:
        try:
            return self.snapshot_path.is_file() and self.module_marker.read_bytes().decode() == self.sha256
        except (OSError, UnicodeDecodeError):
            return False

    # ------------------------------------------------------------------ timers (guest thread -> timer thread)
    def _set_timer(self, timer_id: int, delay: float) -> None:
        self._cancel_timer(timer_id)
        self._generation += 1
        gen = self._generation
        tid = self.host.call_later(
            delay, lambda: self.queue.post(_Timer(timer_id, gen, time.perf_counter()))
        )
        self._timers[timer_id] = (gen, tid)

    def _cancel_timer(self, timer_id: int) -> None:
        old = self._timers.pop(timer_id, None)
        if old is not None:
            self.host.cancel_timer(old[1])


class ControllerHost:
    """Loads controllers, connects them to shared watches, swaps them, and reports their status."""

    def __init__(
        self,
        api: KubeApi | None,
        options: HostOptions,
        *,
        runtime: Runtime | None = None,
        watch_options: dict[str, Any] | None = None,
    ) -> None:
        self.api = api
        self.options = options
        self.runtime = runtime or Runtime.default()
        self.dir = options.state_dir / "controllers"
        self.snapshot_dir = self.dir / "snapshots"
        try:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StateError(f"cannot create {self.snapshot_dir}: {e.strerror}") from None
        self.cache = ModuleCache(options.state_dir / "cache" / "wasm")
        self.pool = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="controller")
        # Host timers: ids due in a DelayQueue, their callbacks here, fired by the controller-timers thread.
        self.timers: DelayQueue[int] = DelayQueue()
        self._timer_fns: dict[int, Callable[[], Any]] = {}
        self._timer_ids = itertools.count(1)
        self._timer_lock = threading.Lock()
        self._timer_thread = threading.Thread(target=self._run_timers, name="controller-timers", daemon=True)
        self._timer_thread.start()
        self.controllers: dict[str, Controller] = {}
        self._modules: dict[str, wasmtime.Module] = {}
        self.failed_loads: dict[str, str] = {}  # manifest or module that did not load -> why
        self.load_errors: list[EdgeAgentError] = []  # load_directory's, as raised (their exit codes)
        self.requests_dir = self.dir / REQUESTS_DIR
        self.hub = WatchHub(api, **(watch_options or {})) if api is not None else None
        self.wake_latencies: collections.deque[float] = collections.deque(maxlen=options.wake_samples)
        self.started = time.time()
        self._wake_lock = threading.Lock()
        self._active_lock = threading.Lock()
        self._active: collections.OrderedDict[str, Controller] = collections.OrderedDict()
        self._trimmed_at = -1
        self._dirty = threading.Event()
        self._watch_health_written: tuple[tuple[str, bool, int], ...] = ()
        self._status_lock = threading.Lock()
        self._running = False

    # ------------------------------------------------------------------ loading
    @property
    def running(self) -> bool:
        return self._running

    def add(
        self, manifest: Manifest, *, data: bytes | None = None, origin: str = "", resume: bool = False
    ) -> Controller:
        """Verifies, compiles and starts one controller (before or while the host runs).

        ``data`` is the module when it does not come from ``manifest.module`` on disk (a ConfigMap);
        ``resume`` takes over the snapshot a previous instance of the same module left instead of running
        ``init``. Raises ControllerError/ManifestError/WasmError.
        """
        if manifest.name in self.controllers:
            raise ManifestError(f"manifest {manifest.source}: controller {manifest.name} is already loaded")
        if data is None:
            try:
                data = manifest.module.read_bytes()
            except OSError as e:
                raise ControllerError(
                    f"controller {manifest.name}: cannot read {manifest.module}: {e.strerror}"
                ) from None
        digest = hashlib.sha256(data).hexdigest()
        if self.options.digest_for is not None:
            expected = self.options.digest_for(manifest.module)
            if expected is not None and expected.lower() != digest:
                raise ControllerError(
                    f"controller {manifest.name}: {manifest.module} does not match its measured digest "
                    f"(sha256 {digest[:16]}..., expected {expected[:16]}...)"
                )
        # Controllers built from one module share its compiled code (one mapping, not one per controller).
        module = self._modules.get(digest)
        if module is None:
            module = self._modules[digest] = self.cache.load(self.runtime, data, name=manifest.name)
        ctl = Controller(self, manifest, module, digest, origin=origin)
        if not resume and self.options.resume_saved and self.options.swap and ctl.saved_state_fits():
            resume = True
            log.info("controller %s: resuming from its saved snapshot", manifest.name)
        if resume:
            ctl.resume()
        else:
            ctl.start()
        # Replaced, never mutated: the status writer iterates it from the timer thread.
        self.controllers = {**self.controllers, manifest.name: ctl}
        if self._running and self.hub is not None:
            for w in manifest.watches:
                self.hub.subscribe(w, ctl.post)  # the running watch relists: it gets every object as ADDED
        self.mark_dirty()
        return ctl

    def remove(self, name: str, *, keep_state: bool = False) -> None:
        """Stops a controller and forgets it; ``keep_state`` leaves its snapshot for a successor."""
        ctl = self.controllers.get(name)
        if ctl is None:
            return
        if self.hub is not None:
            self.hub.unsubscribe(ctl.post)
        ctl.queue.post(_Stop(keep_state))
        if not ctl.queue.wait_idle(timeout=self.options.call_ms / 1000 + 5):
            log.warning("controller %s: still busy after its call limit; removed anyway", name)
        self.controllers = {k: v for k, v in self.controllers.items() if k != name}
        self._modules = {c.sha256: c.module for c in self.controllers.values()}
        if not keep_state:
            ctl.snapshot_path.unlink(missing_ok=True)
        self.mark_dirty()

    def set_failed_loads(self, prefix: str, errors: dict[str, str]) -> None:
        """Replaces the load errors reported under ``prefix`` (one source's last reload)."""
        kept = {k: v for k, v in self.failed_loads.items() if not k.startswith(prefix)}
        self.failed_loads = {**kept, **{f"{prefix}: {k}": v for k, v in errors.items()}}
        self.mark_dirty()

    def load_directory(self, directory: Path) -> list[str]:
        """Loads every manifest under ``directory``; one that fails is reported, not fatal. Returns errors."""
        errors: list[str] = []
        for path in manifest_paths(directory):
            try:
                self.add(load_manifest(path))
            except EdgeAgentError as e:
                log.error("%s", e)
                errors.append(str(e))
                self.load_errors.append(e)
                self.failed_loads[str(path)] = str(e)
        return errors

    # ------------------------------------------------------------------ running
    def restart(self, name: str) -> None:
        """A fresh instance of ``name`` now, even one that failed past its restart limit (any thread).

        Raises ControllerError for a name the host does not run.
        """
        ctl = self.controllers.get(name)
        if ctl is None:
            raise ControllerError(f"no controller {name!r} in this host (see `edgeagent controllers list`)")
        log.info("controller %s: restart requested", name)
        ctl.queue.post(_Revive())

    def _take_requests(self) -> None:
        """Acts on the restart requests other processes dropped in ``requests/`` (timer thread)."""
        try:
            names = [p.name for p in self.requests_dir.iterdir()]
        except OSError:
            return
        for fname in names:
            kind, _, name = fname.partition("-")
            (self.requests_dir / fname).unlink(missing_ok=True)
            if kind != "restart":
                continue
            try:
                self.restart(name)
            except ControllerError as e:
                log.warning("%s", e)

    def start(self, *, sync_timeout: float = 30.0, cancel: threading.Event | None = None) -> None:
        """Opens the shared watches, starts delivering; returns once each watch has listed (or timed out).

        ``cancel`` (set by a signal handler) ends the wait for the first lists early: a host told to stop
        while a watch keeps failing must not sit out the whole ``sync_timeout``. Once every watch has listed,
        each controller's optional ``handle-synced`` export runs (through its queue, after the ADDED events
        of that list): its cue to clean up what changed while no host ran.
        """
        if self.hub is not None:
            for ctl in self.controllers.values():
                for w in ctl.manifest.watches:
                    self.hub.subscribe(w, ctl.post)
        self._running = True
        if self.options.advertise:
            _write_small_atomic_pointer(self.options.state_dir)
        release_free_memory()  # what compiling and initialising left behind
        self.call_later(self.options.status_interval, self._status_tick)
        self.write_status()
        if self.hub is not None:
            self.hub.start()
            if self.hub.wait_synced(sync_timeout, cancel=cancel):
                for ctl in self.controllers.values():
                    ctl.queue.post(_Synced())
            elif cancel is None or not cancel.is_set():
                log.warning("not every watch has listed after %.0f s; continuing", sync_timeout)
            self.write_status()

    def stop(self, *, save: bool = False) -> None:
        """Stops watches and timers, finishes queued work, drops every instance, writes the final status.

        ``save``: every active controller is swapped out first, so its state is on disk for the next host.
        """
        if self.hub is not None:
            self.hub.stop()
        if save and self.options.swap:
            self.swap_all()
        self.timers.close()
        self._timer_thread.join(timeout=2.0)
        for ctl in self.controllers.values():
            ctl.queue.wait_idle(timeout=5.0)
        self.pool.shutdown(wait=True, cancel_futures=False)
        for ctl in self.controllers.values():
            ctl.close()
        self._running = False
        self.write_status()

    # ------------------------------------------------------------------ timers
    def call_at(self, deadline: float, fn: Callable[[], Any]) -> int:
        """Runs ``fn`` on the timer thread at ``deadline`` (time.monotonic()); returns an id to cancel."""
        with self._timer_lock:
            tid = next(self._timer_ids)
            self._timer_fns[tid] = fn
        self.timers.add_at(tid, deadline)
        return tid

    def call_later(self, delay: float, fn: Callable[[], Any]) -> int:
        return self.call_at(time.monotonic() + delay, fn)

    def cancel_timer(self, tid: int) -> None:
        self.timers.cancel(tid)
        with self._timer_lock:
            self._timer_fns.pop(tid, None)

    def _run_timers(self) -> None:
        while (tid := self.timers.get()) is not None:
            with self._timer_lock:
                fn = self._timer_fns.pop(tid, None)
            if fn is None:
                continue  # cancelled as it came due
            try:
                fn()  # short by contract: posts to a queue, or writes the status
            except Exception:
                log.exception("timer callback failed")

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once no controller has queued work (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while True:
            if not all(
                c.queue.wait_idle(max(0.0, deadline - time.monotonic())) for c in self.controllers.values()
            ):
                return False
            # A controller's handler may post to another's queue (an eviction under max_active) after that
            # queue was seen idle; only a pass that finds every queue idle at once means no work is left.
            if all(c.queue.wait_idle(0) for c in self.controllers.values()):
                return True

    def swap_all(self) -> None:
        """Swaps every active controller out now, through its queue (benchmarks, memory pressure)."""
        for ctl in self.controllers.values():
            ctl.queue.post(_SwapNow())

    def note_active(self, ctl: Controller) -> None:
        """``ctl`` handled something; past ``max_active`` instances the least recently active one is evicted.

        The eviction is a swap-out posted to that controller's own queue, so it never races its events.
        """
        cap = self.options.max_active
        if not self.options.swap or cap <= 0:
            return
        with self._active_lock:
            self._active[ctl.name] = ctl
            self._active.move_to_end(ctl.name)
            evict = []
            while len(self._active) > cap:
                _, victim = self._active.popitem(last=False)
                evict.append(victim)
        for victim in evict:
            victim.queue.post(_SwapNow())

    def note_inactive(self, ctl: Controller) -> None:
        with self._active_lock:
            self._active.pop(ctl.name, None)

    def record_wake(self, name: str, seconds: float) -> None:
        with self._wake_lock:  # status() copies the deque from the timer thread
            self.wake_latencies.append(seconds)

    # ------------------------------------------------------------------ status
    def mark_dirty(self) -> None:
        self._dirty.set()

    def _watch_health(self) -> tuple[tuple[str, bool, int], ...]:
        if self.hub is None:
            return ()
        return tuple((w.kind, w.healthy and w.alive, w.stats.errors) for w in list(self.hub.watches.values()))

    def _note_watch_errors(self) -> None:
        """Each controller's ``watch_error``: the failure of a watch it depends on, or ""."""
        failing: dict[tuple[str, str, str], str] = {}
        if self.hub is not None:
            for key, w in list(self.hub.watches.items()):
                if w.alive and not w.healthy and w.stats.consecutive_failures:
                    failing[key] = f"watch {w.kind}: {w.stats.last_error}"
        for ctl in list(self.controllers.values()):
            ctl.watch_error = next(
                (failing[w.kind_key] for w in ctl.manifest.watches if w.kind_key in failing), ""
            )

    def _status_tick(self) -> None:
        try:
            self._take_requests()
            health = self._watch_health()
            if health != self._watch_health_written:  # a watch failed or recovered: report it now
                self._watch_health_written = health
                self.mark_dirty()
            if self._dirty.is_set():
                self.write_status()
            swaps = sum(c.stats.swaps for c in self.controllers.values())
            if swaps != self._trimmed_at:
                self._trimmed_at = swaps
                release_free_memory()
        finally:  # a status that stops updating would misreport every controller from then on
            if self._running:
                self.call_later(self.options.status_interval, self._status_tick)

    def status(self) -> dict[str, Any]:
        self._note_watch_errors()
        watches = []
        if self.hub is not None:
            for w in self.hub.watches.values():
                watches.append(
                    {
                        "kind": w.kind,
                        "namespace": w.namespace,
                        "resource_version": w.resource_version,
                        "subscribers": len(w.subscriptions),
                        "synced": w.synced.is_set(),
                        # healthy: its thread runs and its last list or watch request succeeded
                        "healthy": w.healthy and w.alive,
                        **dataclasses.asdict(w.stats),
                    }
                )
        with self._wake_lock:
            wakes = list(self.wake_latencies)
        return {
            "pid": os.getpid(),
            "started": self.started,
            "updated": time.time(),
            "running": self._running,
            "swap": self.options.swap,
            "controllers": [c.status() for c in list(self.controllers.values())],
            "failed_loads": [{"source": k, "error": v} for k, v in dict(self.failed_loads).items()],
            "watches": watches,
            "wake_latency_s": wakes,
        }

    def write_status(self) -> None:
        """Atomic (tmp + fsync + rename) so a reader never sees half a file."""
        with self._status_lock:
            self._dirty.clear()
            data = json.dumps(self.status(), separators=(",", ":")).encode()
            path = self.dir / STATUS_FILE
            tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except OSError as e:
                log.warning("cannot write %s: %s", path, e.strerror)


def _write_small(path: Path, data: bytes) -> None:
    """Atomic small-file write (tmp + rename); a failure is logged: the state is then merely not resumable."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot write %s: %s", path, e.strerror)


def pointer_path() -> Path:
    """Where a running host leaves its state directory for `controllers list`/`restart` run without
    ``--state-dir``: $XDG_RUNTIME_DIR/edgeagent, else /run/edgeagent for root, else /tmp/edgeagent-UID."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        base = Path(runtime) / "edgeagent"
    elif os.geteuid() == 0:
        base = Path("/run/edgeagent")
    else:
        base = Path(f"/tmp/edgeagent-{os.geteuid()}")
    return base / "controllers-host"


def _write_small_atomic_pointer(state_dir: Path) -> None:
    path = pointer_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        log.debug("cannot create %s: %s", path.parent, e.strerror)
        return
    _write_small(path, str(state_dir.resolve()).encode())


def running_host_state_dir() -> Path | None:
    """The state directory of the host that last started (None if none did, or it is gone)."""
    try:
        state_dir = Path(pointer_path().read_text().strip())
        status = read_status(state_dir)
    except (OSError, StateError, UnicodeDecodeError):
        return None
    return state_dir if host_alive(status) else None


def release_free_memory() -> None:
    """Hands memory freed by dropped instances (and by compiling) back to the OS.

    glibc keeps freed heap for reuse, so without this a host that swapped its controllers out would still show
    the memory they used at their peak. No-op where there is no glibc.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def read_status(state_dir: Path) -> dict[str, Any]:
    """The status a running (or the last) host wrote; StateError if there is none or it is corrupt."""
    path = state_dir / "controllers" / STATUS_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise StateError(
            f"no controller status in {path.parent} (is `edgeagent controllers run` running?)"
        ) from None
    except OSError as e:
        raise StateError(f"cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StateError(f"corrupt controller status {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("controllers"), list):
        raise StateError(f"corrupt controller status {path}: no controller list")
    return data


def host_alive(status: dict[str, Any]) -> bool:
    """Whether the process that wrote ``status`` still runs (a stale file means the host is gone)."""
    pid = status.get("pid")
    if not isinstance(pid, int) or not status.get("running"):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
