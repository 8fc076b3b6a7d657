"""The one delay queue (attestation controller keys, controller host timers): earliest due time wins, due keys
come out in order, cancel drops a key, stop and close end a wait."""

from __future__ import annotations

import threading
import time

from edgeagent.kube.queue import DelayQueue


def test_order_and_dedup() -> None:
    q: DelayQueue[str] = DelayQueue()
    stop = threading.Event()
    q.add("b", 0.05)
    q.add("a", 0.0)
    q.add("b", 10.0)  # a later due time for a queued key is ignored
    assert q.get(stop) == "a"
    assert q.get(stop, timeout=5) == "b"  # it came at its first due time, not the later one


def test_earlier_request_supersedes() -> None:
    q: DelayQueue[str] = DelayQueue()
    stop = threading.Event()
    q.add("k", 60.0)
    q.add("k", 0.0)
    assert q.get(stop) == "k"
    assert len(q) == 0
    stop.set()
    assert q.get(stop) is None  # nothing left: the superseded entry does not come back


def test_stop_ends_a_wait() -> None:
    q: DelayQueue[str] = DelayQueue()
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert q.get(stop) is None


def test_close_wakes_a_taker_without_a_stop_event() -> None:
    q: DelayQueue[int] = DelayQueue()
    q.add(1, 60.0)
    got: list[int | None] = []
    taker = threading.Thread(target=lambda: got.append(q.get()))
    taker.start()
    q.close()
    taker.join(5)
    assert not taker.is_alive() and got == [None]


def test_deadlines_in_order_and_cancel() -> None:
    q: DelayQueue[str] = DelayQueue()
    now = time.monotonic()
    q.add_at("late", now + 0.06)
    q.add_at("cancelled", now + 0.03)
    q.add_at("early", now + 0.02)
    assert q.cancel("cancelled") and not q.cancel("never queued")
    assert "cancelled" not in q
    assert [q.get(timeout=5), q.get(timeout=5)] == ["early", "late"]
    assert q.get(timeout=0.05) is None  # the cancelled key never comes out


def test_a_cancelled_key_can_be_queued_again() -> None:
    q: DelayQueue[str] = DelayQueue()
    q.add("k", 60.0)
    q.cancel("k")
    q.add("k", 0.0)
    assert q.get(timeout=5) == "k"
    assert q.get(timeout=0.05) is None
