"""The controllers' side of the shared watches: one ``kube.watch.SharedWatch`` per watched kind.

Controllers name what they watch in their manifests (``manifest.Watch``: a kind, a namespace, a label
selector); the hub opens one shared watch per (group, version, plural) and subscribes each controller's queue
to it with its ``Watch`` as the selector, so controllers with different filters share one stream. The watch
machinery itself (resume, relist, backoff, health) is ``edgeagent.kube.watch``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from edgeagent.controllers.manifest import Watch
from edgeagent.kube.api import KubeApi
from edgeagent.kube.watch import Event, SharedWatch, Subscription

__all__ = ["Event", "WatchHub"]


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
        namespaces = {s.selector.namespace for s in subs}
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

    def wait_synced(self, timeout: float, *, cancel: threading.Event | None = None) -> bool:
        """True once every watch has listed and is healthy; False when ``timeout`` passed or ``cancel`` was
        set first (checked every 0.1 s: the signal handler that sets it cannot wake an Event.wait)."""
        deadline = time.monotonic() + timeout
        for w in list(self.watches.values()):
            while not w.synced.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline or (cancel is not None and cancel.is_set()):
                    return False
        return True

    def stop(self) -> None:
        with self._lock:
            watches = list(self.watches.values())
        for w in watches:
            w._stop.set()
        for w in watches:
            w.stop()

    def __iter__(self) -> Iterator[SharedWatch]:
        return iter(self.watches.values())
