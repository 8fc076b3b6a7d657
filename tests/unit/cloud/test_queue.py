"""The controller's delay queue: earliest due time wins, due keys come out in order, stop ends a wait."""

from __future__ import annotations

import threading
import time

from edgeagent.cloud.controller import DelayQueue


def test_order_and_dedup() -> None:
    q = DelayQueue()
    stop = threading.Event()
    q.add("b", 0.05)
    q.add("a", 0.0)
    q.add("b", 10.0)  # a later due time for a queued key is ignored
    assert q.get(stop) == "a"
    t0 = time.monotonic()
    assert q.get(stop) == "b"
    assert time.monotonic() - t0 < 5  # it came at its first due time, not the later one


def test_earlier_request_supersedes() -> None:
    q = DelayQueue()
    stop = threading.Event()
    q.add("k", 60.0)
    q.add("k", 0.0)
    assert q.get(stop) == "k"
    stop.set()
    assert q.get(stop) is None  # nothing left: the superseded entry does not come back


def test_stop_ends_a_wait() -> None:
    q = DelayQueue()
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert q.get(stop) is None
