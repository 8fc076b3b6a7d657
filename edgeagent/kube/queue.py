"""The one delay queue: keys due at monotonic times, handed out in due order.

Both sides of the project schedule work this way: the attestation controller's worker takes reconcile keys
("node/NAME") due now or after a backoff, and the controllers host's timer thread takes timer ids (guest
timers, idle checks, status writes) due at their deadlines. A key queued again while it waits keeps its
earliest due time, so a burst of events for one object costs one reconcile, and a later requeue never
postpones an earlier one. ``cancel`` drops a waiting key. Thread-safe: any thread adds, one or more take.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

_POLL = 0.5
"""Longest wait before a taker rechecks its stop event (a set Event cannot wake a Condition)."""


class DelayQueue(Generic[K]):
    """Keys due at a time; a key queued twice keeps its earliest due time."""

    def __init__(self) -> None:
        # (due, tie-breaker, key): the counter keeps keys that need not be comparable out of comparisons.
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._closed = False

    def add(self, key: K, delay: float = 0.0) -> None:
        """Makes ``key`` due after ``delay`` seconds, unless it is already due sooner."""
        self.add_at(key, time.monotonic() + delay)

    def add_at(self, key: K, due: float) -> None:
        """Makes ``key`` due at ``due`` (time.monotonic()), unless it is already due sooner."""
        with self._cv:
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            self._cv.notify()

    def cancel(self, key: K) -> bool:
        """Drops ``key`` if it waits; True if it did."""
        with self._cv:
            return self._due.pop(key, None) is not None

    def __len__(self) -> int:
        with self._cv:
            return len(self._due)

    def __contains__(self, key: object) -> bool:
        with self._cv:
            return key in self._due

    def close(self) -> None:
        """Wakes every taker; ``get`` returns None from then on."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def get(self, stop: threading.Event | None = None, *, timeout: float | None = None) -> K | None:
        """The next due key, waiting for it; None once ``stop`` is set, the queue closed, or timed out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while not self._closed and not (stop is not None and stop.is_set()):
                now = time.monotonic()
                while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded or cancelled entries
                if self._heap and self._heap[0][0] <= now:
                    _, _, key = heapq.heappop(self._heap)
                    del self._due[key]
                    return key
                if deadline is not None and now >= deadline:
                    return None
                wait = self._heap[0][0] - now if self._heap else _POLL
                if deadline is not None:
                    wait = min(wait, deadline - now)
                if stop is not None:
                    wait = min(wait, _POLL)
                self._cv.wait(max(wait, 0.0))
        return None
