"""The shared watch against a scripted fake API server: what it does when the stream or the list goes wrong.

The fake answers ``KubeApi.call`` (lists) and ``watch_lines`` (streams) from scripts; a stream whose script
ran out stays open until the watch closes it, like a quiet API server. Backoff waits go through the watch's
stop event, which the tests replace with one that records each wait and returns at once, so they see that
the watch backed off without timing it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from edgeagent.kube import errors
from edgeagent.kube.api import KubeApi
from edgeagent.kube.watch import Event, Everything, SharedWatch
from edgeagent.testbed.procs import wait_for

DEADLINE = 10.0


def gone(what: str) -> Exception:
    return errors.for_status(410, what)


def disconnected() -> Exception:
    return errors.Unavailable("watch: ProtocolError: connection reset by peer")


def obj(name: str, rv: int, ns: str = "default") -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name, "resourceVersion": str(rv), "labels": {}}}


def line(etype: str, o: dict[str, Any]) -> bytes:
    return json.dumps({"type": etype, "object": o}).encode()


def listing(rv: int, *items: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return 200, {"metadata": {"resourceVersion": str(rv)}, "items": list(items)}


@dataclasses.dataclass
class Answer:
    status: int
    data: bytes


TIMEOUT = "timeout"
"""A stream's ending: the server's timeoutSeconds ran out, the stream ends normally."""


class Stream:
    """An open watch: its lines, then ``end`` raised, a normal end (TIMEOUT), or (None) open until closed."""

    def __init__(self, lines: list[bytes], end: Exception | str | None) -> None:
        self._lines, self._end = lines, end
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()

    def release_conn(self) -> None:
        pass

    def lines(self) -> Iterator[bytes]:
        for raw in self._lines:
            if self.closed.is_set():
                break
            yield raw
        if self._end == TIMEOUT:
            return
        if isinstance(self._end, Exception):
            raise self._end
        self.closed.wait()
        raise disconnected()


class FakeApi(KubeApi):
    """Lists from ``lists`` (status, body); streams from ``streams`` (lines, ending) or an error to raise."""

    def __init__(self) -> None:
        super().__init__(transport=None)  # type: ignore[arg-type]  # nothing goes over a transport
        self.lists: list[tuple[int, Any]] = []
        self.streams: list[tuple[list[bytes], Exception | str | None] | Exception] = []
        self.current: Stream | None = None
        self.list_calls = 0
        self.watch_rvs: list[str] = []
        self.down = threading.Event()  # set: every request fails as unreachable

    @property
    def host(self) -> str:
        return "https://fake"

    def call(self, method: str, path: str, **kw: Any) -> Answer:
        if self.down.is_set():
            raise disconnected()
        self.list_calls += 1
        status, body = self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]
        return Answer(status, body if isinstance(body, bytes) else json.dumps(body).encode())

    def watch_lines(
        self, path: str, *, query: Any, read_timeout: float
    ) -> tuple[Stream, Iterator[bytes]]:
        if self.down.is_set():
            raise disconnected()
        self.watch_rvs.append(dict(query)["resourceVersion"])
        script = self.streams.pop(0) if self.streams else ([], None)
        if isinstance(script, Exception):
            raise script
        stream = self.current = Stream(*script)
        return stream, stream.lines()


class RecordingStop(threading.Event):
    """The watch's stop event: records each backoff wait and returns at once (unless stopping)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None:
            self.waits.append(timeout)
        return self.is_set()


@pytest.fixture
def make_watch() -> Iterator[Any]:
    watches: list[SharedWatch] = []

    def make(api: FakeApi, *, start: bool = True) -> tuple[SharedWatch, list[Event], RecordingStop]:
        sw = SharedWatch(api, "", "v1", "configmaps", timeout_seconds=(5, 5), backoff=(0.01, 0.05))
        stop = RecordingStop()
        sw._stop = stop
        seen: list[Event] = []
        sw.subscribe(Everything(), seen.append)
        watches.append(sw)
        if start:
            sw.start()
        return sw, seen, stop

    yield make
    for sw in watches:
        sw.stop()


def names(seen: list[Event]) -> list[str]:
    return [f"{e.type} {e.name}@{e.resource_version}" for e in seen]


def test_a_malformed_line_mid_stream_is_retried_from_the_last_good_version(make_watch) -> None:
    api = FakeApi()
    api.lists = [listing(1, obj("a", 1))]
    api.streams = [
        ([line("ADDED", obj("b", 2)), b'{"type": "ADDED", "object": {', line("ADDED", obj("c", 3))], None),
        ([line("ADDED", obj("c", 3))], None),
    ]
    sw, seen, stop = make_watch(api)
    wait_for(lambda: len(seen) == 3, timeout=DEADLINE, what="c after the malformed line")
    assert names(seen) == ["ADDED a@1", "ADDED b@2", "ADDED c@3"]
    assert api.watch_rvs[:2] == ["1", "2"]  # resumed after b, the last line that decoded
    assert api.list_calls == 1  # no relist: the resume point was still good
    assert sw.alive and sw.stats.errors == 1 and stop.waits  # counted and backed off
    assert "JSONDecodeError" in sw.stats.last_error
    wait_for(lambda: sw.healthy, timeout=DEADLINE, what="healthy again")
    assert sw.stats.consecutive_failures == 0


def test_a_subscriber_that_raises_does_not_stop_the_watch(make_watch) -> None:
    api = FakeApi()
    api.lists = [listing(1)]
    api.streams = [([line("ADDED", obj("boom", 2)), line("ADDED", obj("b", 3))], None)]
    sw, seen, _ = make_watch(api, start=False)

    def fragile(ev: Event) -> None:
        if ev.name == "boom":
            raise RuntimeError("subscriber bug")

    sw.subscribe(Everything(), fragile)
    sw.start()
    wait_for(lambda: len(seen) == 2, timeout=DEADLINE, what="the event after the failing one")
    assert sw.alive and sw.healthy and names(seen) == ["ADDED boom@2", "ADDED b@3"]


def test_410_on_the_first_page_of_a_list_backs_off_and_is_reported(make_watch) -> None:
    api = FakeApi()
    expired = (410, {"kind": "Status", "code": 410, "message": "too old resource version"})
    api.lists = [expired, expired, expired, listing(5, obj("a", 5))]
    sw, seen, stop = make_watch(api)
    wait_for(lambda: len(seen) == 1, timeout=DEADLINE, what="the list after three 410s")
    assert api.list_calls == 4
    assert len(stop.waits) == 3 and all(w > 0 for w in stop.waits)  # one backoff per refused list
    assert stop.waits[2] >= stop.waits[0] * 0.5 * 2  # exponential (jitter takes at most half)
    assert sw.stats.gone == 3 and sw.stats.errors == 3
    assert "too old resource version" in sw.stats.last_error
    wait_for(lambda: sw.healthy, timeout=DEADLINE, what="healthy after the list")


def test_a_disconnect_mid_stream_resumes_from_the_last_event(make_watch) -> None:
    api = FakeApi()
    api.lists = [listing(1)]
    api.streams = [([line("ADDED", obj("b", 2))], disconnected()), ([line("MODIFIED", obj("b", 3))], None)]
    sw, seen, stop = make_watch(api)
    wait_for(lambda: len(seen) == 2, timeout=DEADLINE, what="the event after the reconnect")
    assert names(seen) == ["ADDED b@2", "MODIFIED b@3"]
    assert api.watch_rvs[:2] == ["1", "2"] and api.list_calls == 1
    assert sw.stats.errors == 1 and len(stop.waits) == 1 and sw.stats.streams == 2


def test_bookmarks_advance_the_resume_point(make_watch) -> None:
    api = FakeApi()
    api.lists = [listing(1)]
    api.streams = [([line("BOOKMARK", {"metadata": {"resourceVersion": "7"}})], TIMEOUT)]
    sw, seen, stop = make_watch(api)
    wait_for(lambda: len(api.watch_rvs) >= 2, timeout=DEADLINE, what="the second watch")
    assert api.watch_rvs[:2] == ["1", "7"] and sw.stats.bookmarks == 1 and seen == []
    assert api.list_calls == 1 and sw.stats.errors == 0 and not stop.waits  # a normal end: no backoff


def test_expired_resume_point_relists_and_emits_only_the_difference(make_watch) -> None:
    api = FakeApi()
    api.lists = [listing(1, obj("a", 1), obj("b", 1)), listing(9, obj("a", 1), obj("c", 8))]
    api.streams = [([], TIMEOUT), gone("watch configmaps")]  # resuming after the stream's end: too old
    sw, seen, stop = make_watch(api)
    wait_for(lambda: len(seen) == 4, timeout=DEADLINE, what="the relist's difference")
    assert sorted(names(seen)[2:]) == ["ADDED c@8", "DELETED b@1"]
    assert sw.stats.gone == 1 and sw.stats.relists == 1 and sw.stats.errors == 0 and not stop.waits


def test_a_version_gone_right_after_its_list_backs_off_instead_of_spinning(make_watch) -> None:
    api = FakeApi()
    api.lists = [listing(1, obj("a", 1)), listing(2, obj("a", 2))]
    api.streams = [gone("watch configmaps")]
    sw, seen, stop = make_watch(api)
    wait_for(lambda: len(seen) == 2, timeout=DEADLINE, what="the second list")
    assert names(seen) == ["ADDED a@1", "MODIFIED a@2"]
    assert sw.stats.errors == 1 and len(stop.waits) == 1 and api.list_calls == 2


def test_health_goes_false_while_the_api_server_is_down_and_true_when_it_is_back(make_watch) -> None:
    api = FakeApi()
    api.lists = [listing(1, obj("a", 1))]
    sw, seen, _ = make_watch(api)
    wait_for(lambda: sw.synced.is_set() and api.current is not None, timeout=DEADLINE, what="the first watch")
    api.down.set()
    api.current.close()  # the stream breaks, and the API server stays unreachable
    wait_for(lambda: sw.stats.consecutive_failures >= 3, timeout=DEADLINE, what="failures while down")
    assert not sw.synced.is_set() and not sw.healthy and sw.alive
    assert sw.stats.last_error_at > 0 and "connection reset" in sw.stats.last_error
    api.down.clear()
    wait_for(lambda: sw.healthy, timeout=DEADLINE, what="healthy once the API server answers")
    assert sw.alive and sw.stats.consecutive_failures == 0
    assert api.watch_rvs[-1] == "1" and api.list_calls == 1  # resumed, not relisted
    assert names(seen) == ["ADDED a@1"]


@dataclasses.dataclass(frozen=True)
class Labelled:
    """Objects whose label ``key`` is ``value`` (a label-selector subscriber)."""

    key: str
    value: str
    namespace: str = ""

    def matches(self, namespace: str, labels: Any) -> bool:
        return labels.get(self.key) == self.value


def labelled(name: str, rv: int, **labels: str) -> dict[str, Any]:
    o = obj(name, rv)
    o["metadata"]["labels"] = labels
    return o


def test_an_object_leaving_a_selector_is_deleted_for_it_and_added_when_it_comes_back(make_watch) -> None:
    # What a label-selector watch on the API server reports; without it a mirror keeps an orphaned copy.
    api = FakeApi()
    api.lists = [listing(1, labelled("a", 1, mirror="yes"))]
    api.streams = [
        (
            [
                line("MODIFIED", labelled("a", 2, mirror="no")),
                line("MODIFIED", labelled("a", 3, mirror="no", other="x")),
                line("MODIFIED", labelled("a", 4, mirror="yes")),
            ],
            None,
        )
    ]
    sw, everything, _ = make_watch(api, start=False)
    mirrored: list[Event] = []
    sw.subscribe(Labelled("mirror", "yes"), mirrored.append)
    sw.start()
    wait_for(lambda: len(everything) == 4, timeout=DEADLINE, what="every event")
    wait_for(lambda: len(mirrored) == 3, timeout=DEADLINE, what="the selector's events")
    assert names(mirrored) == ["ADDED a@1", "DELETED a@2", "ADDED a@4"]
    assert json.loads(mirrored[1].raw)["type"] == "DELETED"
    assert names(everything) == ["ADDED a@1", "MODIFIED a@2", "MODIFIED a@3", "MODIFIED a@4"]


def test_a_relist_reports_an_object_that_left_the_selector_meanwhile_as_deleted(make_watch) -> None:
    api = FakeApi()
    api.lists = [listing(1, labelled("a", 1, mirror="yes")), listing(9, labelled("a", 5, mirror="no"))]
    api.streams = [([], TIMEOUT), gone("watch configmaps")]
    sw, _, _ = make_watch(api, start=False)
    mirrored: list[Event] = []
    sw.subscribe(Labelled("mirror", "yes"), mirrored.append)
    sw.start()
    wait_for(lambda: len(mirrored) == 2, timeout=DEADLINE, what="the relist's deletion")
    assert names(mirrored) == ["ADDED a@1", "DELETED a@5"]
