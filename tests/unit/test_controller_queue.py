"""The per-controller ordered queue."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from edgeagent.controllers.queue import SerialQueue


def test_items_are_handled_in_order_one_at_a_time_none_lost() -> None:
    pool = ThreadPoolExecutor(max_workers=4)
    handled: dict[int, list[int]] = {q: [] for q in range(5)}
    busy = {q: 0 for q in range(5)}
    overlap = []
    lock = threading.Lock()

    def handler_for(q: int):
        def handle(item: int) -> None:
            with lock:
                busy[q] += 1
                if busy[q] > 1:
                    overlap.append(q)
            if item % 50 == 0:
                time.sleep(0.002)  # a slow item (a wake): later posts must queue behind it
            handled[q].append(item)
            with lock:
                busy[q] -= 1

        return handle

    queues = [SerialQueue(handler_for(q), pool, name=str(q)) for q in range(5)]

    def producer(q: SerialQueue[int]) -> None:
        for i in range(1000):
            q.post(i)

    threads = [threading.Thread(target=producer, args=(q,)) for q in queues]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for q in queues:
        assert q.wait_idle(10)
    pool.shutdown()
    assert not overlap
    for q in range(5):
        assert handled[q] == list(range(1000))


def test_a_failing_item_does_not_stall_the_queue() -> None:
    pool = ThreadPoolExecutor(max_workers=1)
    seen: list[int] = []

    def handle(item: int) -> None:
        if item == 1:
            raise RuntimeError("bug")
        seen.append(item)

    q: SerialQueue[int] = SerialQueue(handle, pool)
    for i in range(3):
        q.post(i)
    assert q.wait_idle(5)
    pool.shutdown()
    assert seen == [0, 2]


def test_items_posted_after_shutdown_stay_queued() -> None:
    pool = ThreadPoolExecutor(max_workers=1)
    pool.shutdown()
    q: SerialQueue[int] = SerialQueue(lambda _: None, pool)
    q.post(1)
    assert len(q) == 1
    assert q.wait_idle(0.1)
