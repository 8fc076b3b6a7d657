"""One shared watch per watched kind, fanned out to the controllers that asked for it.

Each ``SharedWatch`` lists its kind once, then watches from the list's resourceVersion, tracking the newest
resourceVersion it has seen (objects and BOOKMARKs, requested with ``allowWatchBookmarks``). When the stream
ends (server timeout, network, API server restart) it resumes from that version after a backoff; when the API
server answers 410 Gone (the version fell out of its watch window) it relists and turns the difference between
what it knew and what it finds into ADDED/MODIFIED/DELETED events, so a controller misses no change of state,
only intermediate states nobody could see any more.

Subscriptions can come and go while the watch runs (controllers loaded from a ConfigMap, restarted after a
failure): a new subscriber needs the current state, like an informer's first list, so adding one interrupts
the stream and relists: new subscribers get every matching object as ADDED, the others only the difference.

Controllers filter by namespace and label selector here, not in the API server, because controllers with
different filters share the watch. To make that cheap the watch keeps only (resourceVersion, labels) per
object, never the objects: an event's raw JSON line is what controllers receive, decoded once for routing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from edgeagent.controllers.kubeapi import KubeApi, resource_path, status_message
from edgeagent.controllers.manifest import Watch
from edgeagent.errors import ClusterError, PeerUnreachable

log = logging.getLogger(__name__)

EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED")


@dataclasses.dataclass(frozen=True)
class Event:
    """A watch event for one object: ``raw`` is ``{"type": ..., "object": ...}`` as JSON bytes."""

    type: str
    namespace: str
    name: str
    labels: dict[str, str]
    resource_version: str
    raw: bytes
    received: float  # time.perf_counter() when the host got it: the start of wake latency


@dataclasses.dataclass
class WatchStats:
    events: int = 0
    bookmarks: int = 0
    relists: int = 0  # lists after the first: 410 Gone or an unusable resume point
    gone: int = 0  # 410 answers
    reconnects: int = 0
    errors: int = 0
    last_error: str = ""


@dataclasses.dataclass(frozen=True)
class Subscription:
    watch: Watch
    sink: Callable[[Event], None]


class Gone(Exception):
    """The API server no longer has the requested resourceVersion (HTTP/watch status 410)."""


class SharedWatch:
    """The list+watch loop for one (group, version, plural), on its own thread."""

    def __init__(
        self,
        api: KubeApi,
        group: str,
        version: str,
        plural: str,
        *,
        namespace: str = "",
        field_selector: str = "",
        timeout_seconds: tuple[int, int] = (240, 360),
        backoff: tuple[float, float] = (0.2, 10.0),
    ) -> None:
        self.api = api
        self.group, self.version, self.plural = group, version, plural
        self.namespace = namespace  # "" watches every namespace
        self.field_selector = field_selector
        # Replaced, never mutated: the watch thread iterates a snapshot while others add and remove.
        self.subscriptions: tuple[Subscription, ...] = ()
        self._fresh: list[Subscription] = []  # added since the last list: they get everything as ADDED
        self.resource_version: str | None = None
        self.stats = WatchStats()
        self.synced = threading.Event()
        self._known: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
        self._timeout_seconds = timeout_seconds
        self._backoff = backoff
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None
        self._thread: threading.Thread | None = None

    @property
    def kind(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def path(self) -> str:
        return resource_path(self.group, self.version, self.plural, namespace=self.namespace)

    def _selectors(self) -> list[tuple[str, str]]:
        return [("fieldSelector", self.field_selector)] if self.field_selector else []

    def subscribe(self, watch: Watch, sink: Callable[[Event], None]) -> None:
        self.add([Subscription(watch, sink)])

    def add(self, subs: list[Subscription]) -> None:
        """Adds subscribers (or re-adds existing ones, to resync them); a running watch relists for them.

        A subscriber outside this watch's namespace widens it to every namespace.
        """
        with self._lock:
            current = [s for s in self.subscriptions if s not in subs]
            self.subscriptions = (*current, *subs)
            self._fresh.extend(subs)
            if self.namespace and any(s.watch.namespace != self.namespace for s in subs):
                self.namespace = ""
        if self._thread is not None:
            self._close_stream()  # the loop sees the fresh subscribers and relists

    def remove(self, sink: Callable[[Event], None]) -> int:
        """Drops every subscription delivering to ``sink``; returns how many are left."""
        with self._lock:
            self.subscriptions = tuple(s for s in self.subscriptions if s.sink != sink)
            self._fresh = [s for s in self._fresh if s.sink != sink]
            return len(self.subscriptions)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._close_stream()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _close_stream(self) -> None:
        with self._lock:
            resp = self._response
        if resp is not None:
            try:
                shutdown = getattr(resp, "shutdown", None)
                if callable(shutdown):
                    shutdown()
                resp.close()
            except (
                Exception
            ):  # closing a stream another thread reads may raise in urllib3; it is closed either way
                log.debug("closing watch stream of %s", self.kind, exc_info=True)

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            try:
                if self.resource_version is None or self._fresh:
                    self._list()
                self._watch_once()
                delay = self._backoff[0]  # a stream that opened and ended normally: no backoff
            except Gone:
                self.stats.gone += 1
                log.info(
                    "watch %s: resourceVersion %s expired (410 Gone); relisting",
                    self.kind,
                    self.resource_version,
                )
                with self._lock:
                    self.resource_version = None
            except (PeerUnreachable, ClusterError) as e:
                if self._stop.is_set():
                    break
                self.stats.errors += 1
                self.stats.reconnects += 1
                self.stats.last_error = str(e)
                log.warning("watch %s: %s; retrying in %.1f s", self.kind, e, delay)
                self._stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self._backoff[1])

    def _list(self) -> None:
        """Lists every object (paged), emits the difference to what was known, sets the resume point."""
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            query = [("limit", "500"), *self._selectors()] + ([("continue", cont)] if cont else [])
            resp = self.api.call("GET", self.path, query=query)
            if resp.status == 410:
                # A continue token expired mid-list: start over.
                items, cont = [], ""
                continue
            if not 200 <= resp.status <= 299:
                raise ClusterError(f"list {self.kind}: {resp.status} {status_message(resp.data)}")
            body = json.loads(resp.data)
            items.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            cont = meta.get("continue") or ""
            if not cont:
                list_rv = str(meta.get("resourceVersion", ""))
                break
        first = not self.synced.is_set()
        with self._lock:
            fresh, self._fresh = self._fresh, []
            others = tuple(s for s in self.subscriptions if s not in fresh)
        if not first and not fresh:
            self.stats.relists += 1
        seen: set[tuple[str, str]] = set()
        now = time.perf_counter()
        for obj in items:
            meta = obj.get("metadata") or {}
            key = (meta.get("namespace", ""), meta.get("name", ""))
            seen.add(key)
            rv = str(meta.get("resourceVersion", ""))
            old = self._known.get(key)
            changed = old is None or old[0] != rv
            if fresh:
                self._emit("ADDED", obj, now, subs=fresh, count=not (changed and others))
            if changed:
                self._emit("ADDED" if old is None else "MODIFIED", obj, now, subs=others)
        for key in [k for k in self._known if k not in seen]:
            rv, labels = self._known[key]
            gone = {
                "metadata": {"namespace": key[0], "name": key[1], "resourceVersion": rv, "labels": labels}
            }
            if self.group:
                gone["apiVersion"] = f"{self.group}/{self.version}"
            else:
                gone["apiVersion"] = self.version
            self._emit("DELETED", gone, now, subs=others)
        with self._lock:
            self.resource_version = list_rv
        self.synced.set()

    def _watch_once(self) -> None:
        lo, hi = self._timeout_seconds
        timeout = random.randint(lo, hi)
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout)),
            ("resourceVersion", self.resource_version or ""),
            *self._selectors(),
        ]
        try:
            resp, lines = self.api.watch_lines(self.path, query=query, read_timeout=timeout + 30)
        except ClusterError as e:
            if getattr(e, "status", None) == 410:
                raise Gone() from None
            raise
        with self._lock:
            self._response = resp
        try:
            if self._stop.is_set() or self._fresh:
                return
            for line in lines:
                now = time.perf_counter()
                ev = json.loads(line)
                etype = ev.get("type")
                obj = ev.get("object") or {}
                if etype == "ERROR":
                    code = obj.get("code")
                    if code == 410:
                        raise Gone()
                    raise ClusterError(f"watch {self.kind}: {code} {obj.get('message', '')}")
                rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
                if etype == "BOOKMARK":
                    self.stats.bookmarks += 1
                elif etype in EVENT_TYPES:
                    self._emit(etype, obj, now, raw=line)
                if rv:
                    with self._lock:
                        self.resource_version = rv
        except PeerUnreachable:
            if self._stop.is_set() or self._fresh:  # closed under us: stopping, or new subscribers
                return
            raise
        finally:
            with self._lock:
                self._response = None
            try:
                resp.release_conn()
            except Exception:
                log.debug("releasing watch connection of %s", self.kind, exc_info=True)

    def _emit(
        self,
        etype: str,
        obj: dict[str, Any],
        received: float,
        *,
        raw: bytes | None = None,
        subs: Iterable[Subscription] | None = None,
        count: bool = True,
    ) -> None:
        meta = obj.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        labels = meta.get("labels") or {}
        rv = str(meta.get("resourceVersion", ""))
        if etype == "DELETED":
            self._known.pop((ns, name), None)
        else:
            self._known[(ns, name)] = (rv, labels)
        self.stats.events += count
        event: Event | None = None
        for sub in self.subscriptions if subs is None else subs:
            if not sub.watch.matches(ns, labels):
                continue
            if event is None:
                if raw is None:
                    raw = json.dumps({"type": etype, "object": obj}, separators=(",", ":")).encode()
                event = Event(etype, ns, name, labels, rv, raw, received)
            sub.sink(event)


class WatchHub:
    """Groups controllers' watches by kind: one SharedWatch per kind, namespaced when all agree on one.

    Before ``start`` subscriptions are collected, so each kind's watch opens once with all of them; after it,
    a subscription joins the running watch for its kind (which relists for it) or opens a new one.
    """

    def __init__(self, api: KubeApi, **watch_options: Any) -> None:
        self.api = api
        self._options = watch_options
        self._pending: dict[tuple[str, str, str], list[Subscription]] = {}
        self.watches: dict[tuple[str, str, str], SharedWatch] = {}
        self._started = False
        self._lock = threading.Lock()

    def subscribe(self, watch: Watch, sink: Callable[[Event], None]) -> None:
        sub = Subscription(watch, sink)
        with self._lock:
            if not self._started:
                self._pending.setdefault(watch.kind_key, []).append(sub)
                return
            sw = self.watches.get(watch.kind_key)
            if sw is None:
                sw = self.watches[watch.kind_key] = self._open(watch.kind_key, [sub])
                return
        sw.add([sub])

    def unsubscribe(self, sink: Callable[[Event], None]) -> None:
        """Stops delivering to ``sink``; a watch left without subscribers is closed."""
        with self._lock:
            for subs in self._pending.values():
                subs[:] = [s for s in subs if s.sink != sink]
            idle = [key for key, sw in self.watches.items() if sw.remove(sink) == 0]
            closing = [self.watches.pop(key) for key in idle]
        for sw in closing:
            sw.stop()

    def resync(self, sink: Callable[[Event], None]) -> None:
        """Delivers every object ``sink`` watches again as ADDED (a restarted controller's fresh start)."""
        with self._lock:
            targets = [(sw, [s for s in sw.subscriptions if s.sink == sink]) for sw in self.watches.values()]
        for sw, subs in targets:
            if subs:
                sw.add(subs)

    def _open(self, key: tuple[str, str, str], subs: list[Subscription]) -> SharedWatch:
        namespaces = {s.watch.namespace for s in subs}
        ns = next(iter(namespaces)) if len(namespaces) == 1 else ""
        sw = SharedWatch(self.api, *key, namespace=ns, **self._options)
        sw.add(subs)
        sw.start()
        return sw

    def start(self) -> None:
        with self._lock:
            self._started = True
            for key, subs in self._pending.items():
                if subs:
                    self.watches[key] = self._open(key, subs)
            self._pending.clear()

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(w.synced.wait(max(0.0, deadline - time.monotonic())) for w in self.watches.values())

    def stop(self) -> None:
        with self._lock:
            watches = list(self.watches.values())
        for w in watches:
            w._stop.set()
        for w in watches:
            w.stop()

    def __iter__(self) -> Iterable[SharedWatch]:  # type: ignore[override]
        return iter(self.watches.values())
