"""One list+watch loop per watched kind, shared by every subscriber of that kind, that never dies quietly.

Each ``SharedWatch`` lists its kind once, then watches from the list's resourceVersion, tracking the newest
resourceVersion it has seen (objects and BOOKMARKs, requested with ``allowWatchBookmarks``), so a stream that
ends (the server's timeoutSeconds, network, API server restart) resumes where it stopped, without a list. Only
when the API server answers 410 Gone (the version fell out of its watch window) does it relist, and it turns
the difference between what it knew and what it finds into ADDED/MODIFIED/DELETED events, so a subscriber
misses no change of state, only intermediate states nobody could see any more. An optional ``relist_interval``
relists on a schedule too (one paged LIST, events only for differences): off by default.

Failure handling, the reason this module exists: ANY exception in the loop (the API server unreachable or
refusing, a malformed line on the stream, a 410 on the first page of a list, a bug) is logged, counted in
``stats`` (``errors``, ``consecutive_failures``, ``last_error``) and retried after a capped exponential
backoff with jitter, from the last resourceVersion. While it fails, ``healthy`` is False (``synced`` is
cleared), so a status report shows it; the next list or watch the API server accepts makes it healthy again. A
subscriber's sink that raises is logged and skipped: it cannot stall the others.

Subscriptions can come and go while the watch runs: a new subscriber needs the current state, like an
informer's first list, so adding one interrupts the stream and relists: new subscribers get every matching
object as ADDED, the others only the difference.

Subscribers filter by namespace and labels here, not in the API server, because subscribers with different
filters share the watch. To make that cheap the watch keeps only (resourceVersion, labels) per object, never
the objects: an event's raw JSON line is what subscribers receive, decoded once for routing.

Threads: each SharedWatch runs one daemon thread (``watch-KIND``), which alone reads the stream, lists and
calls the sinks; ``add``/``remove``/``stop``/``known`` may be called from any thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from edgeagent.errors import EdgeAgentError
from edgeagent.kube import errors
from edgeagent.kube.api import KubeApi, resource_path

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
    received: float  # time.perf_counter() when the watch got it: the start of wake latency

    def object(self) -> dict[str, Any]:
        """The object, decoded (each call decodes ``raw`` again)."""
        obj = json.loads(self.raw).get("object")
        return obj if isinstance(obj, dict) else {}


@dataclasses.dataclass
class WatchStats:
    events: int = 0
    bookmarks: int = 0
    lists: int = 0  # LIST requests sent (every page counts)
    streams: int = 0  # watch requests the API server accepted
    relists: int = 0  # lists after the first: 410 Gone, an unusable resume point, or relist_interval
    gone: int = 0  # 410 answers
    errors: int = 0  # failed rounds of the loop (each one backed off)
    consecutive_failures: int = 0  # failed rounds since the last success; 0 while healthy
    last_error: str = ""
    last_error_at: float = 0.0  # time.time() of last_error


class Selector(Protocol):
    """What a subscriber wants of a kind: ``namespace`` ("" for all) and a match on (namespace, labels)."""

    @property
    def namespace(self) -> str: ...

    def matches(self, namespace: str, labels: Mapping[str, str]) -> bool: ...


@dataclasses.dataclass(frozen=True)
class Everything:
    """Every object of the kind (in ``namespace`` if given)."""

    namespace: str = ""

    def matches(self, namespace: str, labels: Mapping[str, str]) -> bool:
        return not self.namespace or self.namespace == namespace


@dataclasses.dataclass(frozen=True)
class Subscription:
    selector: Selector
    sink: Callable[[Event], None]


class _Expired(Exception):
    """The watch's resourceVersion is no longer served (410): relist, without backoff; not a failure."""

    def __str__(self) -> str:
        return "410 Gone: the resourceVersion a list just returned is no longer served"


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
        relist_interval: float = 0.0,
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
        """Set while the watch is healthy: it has listed, and its last list or watch request succeeded."""
        self._listed = False
        self._known: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
        self._timeout_seconds = timeout_seconds
        self._backoff = backoff
        self._relist_interval = relist_interval
        self._relist_due = float("inf")
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

    @property
    def healthy(self) -> bool:
        return self.synced.is_set()

    @property
    def alive(self) -> bool:
        """Whether the watch thread runs (False before ``start`` and after ``stop``)."""
        return self._thread is not None and self._thread.is_alive()

    def known(self) -> list[tuple[str, str]]:
        """(namespace, name) of every object the watch knows now: its memory, no request."""
        with self._lock:
            return list(self._known)

    def _selectors(self) -> list[tuple[str, str]]:
        return [("fieldSelector", self.field_selector)] if self.field_selector else []

    def subscribe(self, selector: Selector, sink: Callable[[Event], None]) -> None:
        self.add([Subscription(selector, sink)])

    def add(self, subs: list[Subscription]) -> None:
        """Adds subscribers (or re-adds existing ones, to resync them); a running watch relists for them.

        A subscriber outside this watch's namespace widens it to every namespace.
        """
        with self._lock:
            current = [s for s in self.subscriptions if s not in subs]
            self.subscriptions = (*current, *subs)
            self._fresh.extend(subs)
            if self.namespace and any(s.selector.namespace != self.namespace for s in subs):
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
        self.synced.clear()

    def _close_stream(self) -> None:
        with self._lock:
            resp = self._response
        if resp is not None:
            try:
                shutdown = getattr(resp, "shutdown", None)
                if callable(shutdown):
                    shutdown()
                resp.close()
            except Exception:  # closing a stream another thread reads may raise in urllib3; it is closed
                log.debug("closing watch stream of %s", self.kind, exc_info=True)

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        while not self._stop.is_set():
            listed = False
            try:
                if self.resource_version is None or self._fresh or time.monotonic() >= self._relist_due:
                    self._list()
                    listed = True
                self._watch_once()
            except _Expired as e:
                self.stats.gone += 1
                with self._lock:
                    self.resource_version = None
                if listed:  # the version a list just returned is already gone: back off, do not spin
                    self._failed(errors.Gone(str(e), status=410))
                    continue
                log.info(
                    "watch %s: resourceVersion %s expired (410 Gone); relisting",
                    self.kind,
                    self.resource_version,
                )
            except Exception as e:  # every failure is retried: a dead watch thread would fail silently
                if self._stop.is_set():
                    break
                self._failed(e)

    def _failed(self, e: Exception) -> None:
        s = self.stats
        s.errors += 1
        s.consecutive_failures += 1
        s.last_error = f"{type(e).__name__}: {e}" if not isinstance(e, EdgeAgentError) else str(e)
        s.last_error_at = time.time()
        self.synced.clear()
        lo, hi = self._backoff
        delay = min(lo * 2 ** min(s.consecutive_failures - 1, 32), hi) * random.uniform(0.5, 1.0)
        if isinstance(e, EdgeAgentError):
            log.warning("watch %s: %s; retrying in %.1f s", self.kind, s.last_error, delay)
        else:  # not a request failure: a malformed answer or a bug; the traceback says which
            log.warning("watch %s: %s; retrying in %.1f s", self.kind, s.last_error, delay, exc_info=True)
        self._stop.wait(delay)

    def _succeeded(self) -> None:
        if self.stats.consecutive_failures:
            log.info("watch %s: healthy again after %d failures", self.kind, self.stats.consecutive_failures)
        self.stats.consecutive_failures = 0
        self.synced.set()

    def _list(self) -> None:
        """Lists every object (paged), emits the difference to what was known, sets the resume point.

        An expired continue token restarts the list once; a 410 on a first page is a failure (backed off).
        """
        items: list[dict[str, Any]] = []
        cont = ""
        restarted = False
        while True:
            query = [("limit", "500"), *self._selectors()] + ([("continue", cont)] if cont else [])
            self.stats.lists += 1
            try:
                body = self.api.request_json("GET", self.path, query=query, what=f"list {self.kind}")
            except errors.Gone:
                self.stats.gone += 1
                if not cont or restarted:
                    raise
                items, cont, restarted = [], "", True  # the continue token expired mid-list: start over
                continue
            page = body.get("items") or []
            if not isinstance(page, list):
                raise errors.ApiError(f"list {self.kind}: items is not a list", status=200)
            items.extend(page)
            meta = body.get("metadata") or {}
            cont = meta.get("continue") or ""
            if not cont:
                list_rv = str(meta.get("resourceVersion", ""))
                break
        with self._lock:
            fresh, self._fresh = self._fresh, []
            others = tuple(s for s in self.subscriptions if s not in fresh)
        if self._listed and not fresh:
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
            if changed:  # before the fresh ones: it compares with the labels known before this list
                self._emit("ADDED" if old is None else "MODIFIED", obj, now, subs=others)
            if fresh:
                self._emit("ADDED", obj, now, subs=fresh, count=not (changed and others))
        for key in [k for k in self._known if k not in seen]:
            rv, labels = self._known[key]
            gone: dict[str, Any] = {
                "metadata": {"namespace": key[0], "name": key[1], "resourceVersion": rv, "labels": labels}
            }
            gone["apiVersion"] = f"{self.group}/{self.version}" if self.group else self.version
            self._emit("DELETED", gone, now, subs=others)
        with self._lock:
            self.resource_version = list_rv
        self._listed = True
        if self._relist_interval > 0:
            self._relist_due = time.monotonic() + self._relist_interval
        self._succeeded()

    def _watch_once(self) -> None:
        lo, hi = self._timeout_seconds
        timeout = random.randint(lo, hi)
        if self._relist_interval > 0:  # end the stream in time for the scheduled relist
            timeout = max(1, min(timeout, int(self._relist_due - time.monotonic()) + 1))
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout)),
            ("resourceVersion", self.resource_version or ""),
            *self._selectors(),
        ]
        try:
            resp, lines = self.api.watch_lines(self.path, query=query, read_timeout=timeout + 30)
        except errors.Gone:
            raise _Expired() from None
        self.stats.streams += 1
        self._succeeded()
        with self._lock:
            self._response = resp
        ended = False
        try:
            if self._stop.is_set() or self._fresh:
                ended = True
                return
            for line in lines:
                now = time.perf_counter()
                ev = json.loads(line)
                if not isinstance(ev, dict):
                    raise ValueError(f"watch {self.kind}: an event is not a JSON object: {line[:100]!r}")
                etype = ev.get("type")
                obj = ev.get("object") or {}
                if etype == "ERROR":
                    code = obj.get("code")
                    if code == 410:
                        raise _Expired()
                    raise errors.ApiError(
                        f"watch {self.kind}: {code} {obj.get('message', '')}", status=int(code or 0)
                    )
                rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
                if etype == "BOOKMARK":
                    self.stats.bookmarks += 1
                elif etype in EVENT_TYPES:
                    self._emit(etype, obj, now, raw=line)
                if rv:
                    with self._lock:
                        self.resource_version = rv
            ended = True
        except errors.Unavailable:
            if self._stop.is_set() or self._fresh:  # closed under us: stopping, or new subscribers
                return
            raise
        finally:
            with self._lock:
                self._response = None
            try:
                if not ended:  # abandoned mid-stream: unread data must not go back into the pool
                    resp.close()
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
        with self._lock:
            if etype == "DELETED":
                old = self._known.pop((ns, name), None)
            else:
                old = self._known.get((ns, name))
                self._known[(ns, name)] = (rv, labels)
        old_labels = old[1] if old is not None else None
        self.stats.events += count
        events: dict[str, Event] = {}
        for sub in self.subscriptions if subs is None else subs:
            # What a label-selector watch on the API server reports: an object that stops matching is
            # DELETED for that subscriber, one that starts matching is ADDED (with the object as it is now).
            if etype == "MODIFIED" and old_labels is not None:
                was, now = sub.selector.matches(ns, old_labels), sub.selector.matches(ns, labels)
                if not was and not now:
                    continue
                etype_for = "DELETED" if not now else "ADDED" if not was else etype
            elif not sub.selector.matches(ns, labels):
                continue
            else:
                etype_for = etype
            event = events.get(etype_for)
            if event is None:
                data = raw if raw is not None and etype_for == etype else None
                if data is None:
                    data = json.dumps({"type": etype_for, "object": obj}, separators=(",", ":")).encode()
                event = events[etype_for] = Event(etype_for, ns, name, labels, rv, data, received)
            try:
                sub.sink(event)
            except Exception:  # one subscriber's bug must not stall the watch for the others
                log.exception("watch %s: a subscriber failed on %s %s/%s", self.kind, etype, ns, name)
