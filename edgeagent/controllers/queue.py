"""Per-controller ordered queues on a shared worker pool.

A controller's events must be handled one at a time and in arrival order, including the ones that arrive while
it is being woken from disk. Each controller gets a ``SerialQueue``: posting appends under a lock and, if no
worker is draining that queue, hands the queue to the pool. The draining worker keeps taking items until the
queue is empty, so an item posted at any moment is either taken by the running drain or starts a new one: none
is lost, none overtakes another. Swap-outs and timer firings are posted as items too, so they never race an
event delivery. A thread per controller would cost a stack each; a hundred controllers share two workers.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class SerialQueue(Generic[T]):
    """Items for one consumer, handled strictly in order by ``handler`` on ``pool`` threads."""

    def __init__(self, handler: Callable[[T], None], pool: ThreadPoolExecutor, *, name: str = "") -> None:
        self._handler = handler
        self._pool = pool
        self._items: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()
        self._draining = False
        self._idle = threading.Event()
        self._idle.set()
        self.name = name

    def post(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            if self._draining:
                return
            self._draining = True
            self._idle.clear()
        try:
            self._pool.submit(self._drain)
        except RuntimeError:  # pool shut down: the host is stopping; the item stays queued, unhandled
            with self._lock:
                self._draining = False
                self._idle.set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once every posted item has been handled (for orderly shutdown and tests)."""
        return self._idle.wait(timeout)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._items:
                    self._draining = False
                    self._idle.set()
                    return
                item = self._items.popleft()
            try:
                self._handler(item)
            except Exception:  # a handler bug must not stall the queue
                log.exception("queue %s: handler failed", self.name)
