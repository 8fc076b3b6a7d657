"""The controller host without an API server: a recording fake stands in for the one KubeApi method it uses.

Everything else is real: the probe and ring controllers (make -C controllers), wasmtime, snapshots on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeagent.cli.main import main
from edgeagent.controllers.host import ControllerHost, HostOptions, State, host_alive, read_status
from edgeagent.controllers.manifest import Manifest, parse_manifest
from edgeagent.errors import ControllerError, StateError, WasmError
from edgeagent.kube import errors as kube_errors
from edgeagent.kube.api import KubeApi
from edgeagent.kube.watch import Event
from edgeagent.testbed.procs import wait_for

CONTROLLERS = Path(__file__).resolve().parents[2] / "controllers"
PROBE = CONTROLLERS / "build" / "testing" / "probe.wasm"
RING = CONTROLLERS / "build" / "ring.wasm"


@pytest.fixture(scope="module", autouse=True)
def guests() -> None:
    subprocess.run(["make", "-s", "-C", str(CONTROLLERS)], check=True)


@dataclasses.dataclass(frozen=True)
class Sent:
    method: str
    path: str
    body: Any

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def resource(self) -> str:
        return self.path.rsplit("/", 2)[-2]


@dataclasses.dataclass
class Answer:
    status: int
    data: bytes


class RecordingApi:
    """Answers every request 200 with an empty object and remembers it (KubeApi.call's signature)."""

    host = "https://fake"

    def __init__(self) -> None:
        self.sent: list[tuple[Sent, str | None]] = []

    def call(self, method: str, path: str, *, body: Any = None, headers: Any = None, **_: Any) -> Answer:
        self.sent.append((Sent(method, path, body), (headers or {}).get("Impersonate-User")))
        return Answer(200, b"{}")

    def published(self) -> dict[str, str]:
        req, _ = self.sent[-1]
        return dict(req.body["data"])


@pytest.fixture
def make_host(tmp_path: Path) -> Iterator[Any]:
    hosts: list[ControllerHost] = []

    def make(*manifests: Manifest, start: bool = True, **options: Any) -> tuple[ControllerHost, RecordingApi]:
        api = RecordingApi()
        h = ControllerHost(api, HostOptions(state_dir=tmp_path / f"s{len(hosts)}", **options))  # type: ignore[arg-type]
        hosts.append(h)
        h.hub = None  # no watches: tests post events themselves
        for m in manifests:
            h.add(m)
        if start:
            h.start()
        return h, api

    yield make
    for h in hosts:
        h.stop()


def probe(name: str = "p", **extra: Any) -> Manifest:
    return parse_manifest(
        {
            "name": name,
            "module": str(PROBE),
            "config": {"namespace": "t", "out": "o"},
            "watches": [{"version": "v1", "kind": "ConfigMap", "plural": "configmaps", "namespace": "t"}],
            "grants": [{"verbs": ["create", "patch"], "resources": ["configmaps"], "namespaces": ["t"]}],
            **extra,
        }
    )


def event(seq: str = "", action: str = "", etype: str = "MODIFIED") -> Event:
    ann = {"probe-seq": seq} if seq else {}
    if action:
        ann["probe-action"] = action
    obj = {"metadata": {"name": "in", "namespace": "t", "annotations": ann}}
    raw = json.dumps({"type": etype, "object": obj}).encode()
    return Event(etype, "t", "in", {}, "1", raw, time.perf_counter())


def test_state_and_order_survive_forced_swaps(make_host) -> None:
    host, api = make_host(probe())
    ctl = host.controllers["p"]
    n = 0
    for _ in range(10):
        host.swap_all()
        for _ in range(5):  # the first wakes it; the others queue behind the wake
            n += 1
            ctl.post(event(str(n)))
        assert host.wait_idle(10)
        assert ctl.state == State.ACTIVE
    published = api.published()
    assert published["count"] == str(n)
    assert published["seq"] == ",".join(str(i) for i in range(1, n + 1))
    assert ctl.stats.wakes == 10 and ctl.stats.swaps == 10
    assert len(host.wake_latencies) == 10
    assert ctl.snapshot_path.exists()


def test_idle_controllers_swap_out_by_themselves(make_host) -> None:
    host, _ = make_host(probe(idle_timeout=0.05))
    ctl = host.controllers["p"]
    deadline = time.monotonic() + 10
    while ctl.state != State.SWAPPED and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ctl.state == State.SWAPPED and ctl.guest is None
    assert ctl.status()["snapshot_bytes"] > 0 and ctl.status()["memory_bytes"] == 0


def test_no_swapping_keeps_instances(make_host) -> None:
    host, _ = make_host(probe(idle_timeout=0.01), swap=False)
    time.sleep(0.1)
    assert host.controllers["p"].state == State.ACTIVE


def test_denied_requests_never_reach_the_api(make_host) -> None:
    host, api = make_host(probe())
    ctl = host.controllers["p"]
    ctl.post(event(action="forbidden"))
    assert host.wait_idle(10)
    assert all(req.resource == "configmaps" for req, _ in api.sent)
    assert api.published()["denied"] == "-1"
    assert ctl.stats.denied == 1


def test_impersonation_header(make_host) -> None:
    host, api = make_host(probe(service_account="t/probe"))
    host.controllers["p"].post(event("1"))
    assert host.wait_idle(10)
    assert {imp for _, imp in api.sent} == {"system:serviceaccount:t:probe"}


def test_trap_and_loop_stop_only_that_controller(make_host) -> None:
    host, _ = make_host(probe("a"), probe("b"), probe("ok"), restart_limit=0)
    host.controllers["a"].post(event(action="trap"))
    host.controllers["b"].post(event(action="loop"))
    host.controllers["ok"].post(event("1"))
    assert host.wait_idle(10)
    a, b, ok = (host.controllers[n] for n in ("a", "b", "ok"))
    assert a.state == b.state == State.FAILED
    assert "unreachable" in a.stats.last_error and "compute limit" in b.stats.last_error
    assert ok.state == State.ACTIVE and ok.stats.errors == 0
    a.post(event("2"))
    assert host.wait_idle(10)
    assert a.stats.dropped == 1


def test_digest_policy(make_host) -> None:
    digest = hashlib.sha256(PROBE.read_bytes()).hexdigest()
    host, _ = make_host(start=False, digest_for=lambda p: digest if p == PROBE else None)
    host.add(probe("good"))
    bad = ControllerHost(
        None, HostOptions(state_dir=host.options.state_dir / "x", digest_for=lambda p: "0" * 64)
    )
    try:
        with pytest.raises(ControllerError, match="does not match its measured digest"):
            bad.add(probe("evil"))
    finally:
        bad.stop()


def test_load_directory_reports_and_skips_bad_controllers(tmp_path: Path, make_host) -> None:
    d = tmp_path / "ctl"
    d.mkdir()
    good = {
        "name": "good",
        "module": str(PROBE),
        "config": {"namespace": "t", "out": "o"},
        "watches": [{"version": "v1", "kind": "ConfigMap", "plural": "configmaps"}],
    }
    (d / "good.controller.json").write_text(json.dumps(good))
    (d / "broken.toml").write_text("name = [\n")
    (d / "nomodule.controller.json").write_text(
        json.dumps({**good, "name": "nomodule", "module": "absent.wasm"})
    )
    (d / "noinit.controller.json").write_text(json.dumps({**good, "name": "ring", "module": str(RING)}))
    host, _ = make_host(start=False)
    errors = host.load_directory(d)
    assert list(host.controllers) == ["good"]
    assert len(errors) == 3
    assert any("not valid TOML" in e for e in errors)
    assert any("cannot read" in e and "absent.wasm" in e for e in errors)
    assert any("init returned 1" in e for e in errors)  # ring without config "next"
    host.write_status()
    status = read_status(host.options.state_dir)
    assert [c["name"] for c in status["controllers"]] == ["good"]
    assert len(status["failed_loads"]) == 3


def test_not_a_controller_module(tmp_path: Path, make_host) -> None:
    host, _ = make_host(start=False)
    junk = tmp_path / "junk.wasm"
    junk.write_bytes(b"not wasm")
    with pytest.raises(WasmError, match="not a WebAssembly module"):
        host.add(
            parse_manifest(
                {
                    "name": "junk",
                    "module": str(junk),
                    "watches": [{"version": "v1", "kind": "Pod", "plural": "pods"}],
                }
            )
        )


def test_status_file(tmp_path: Path, make_host) -> None:
    host, _ = make_host(probe())
    host.write_status()
    status = read_status(host.options.state_dir)
    assert host_alive(status)
    (c,) = status["controllers"]
    assert c["name"] == "p" and c["state"] == "active" and c["memory_bytes"] > 0
    with pytest.raises(StateError, match="no controller status"):
        read_status(tmp_path / "elsewhere")
    bad = tmp_path / "bad" / "controllers"
    bad.mkdir(parents=True)
    (bad / "status.json").write_text("{")
    with pytest.raises(StateError, match="corrupt"):
        read_status(tmp_path / "bad")


def test_max_active_caps_instances_without_losing_state(make_host) -> None:
    host, api = make_host(*(probe(f"p{i}") for i in range(6)), max_active=2)
    assert host.wait_idle(10)
    ctls = list(host.controllers.values())
    for round_ in range(1, 4):
        for c in ctls:
            c.post(event(f"{c.name}-{round_}"))
        assert host.wait_idle(10)
        assert sum(c.state == State.ACTIVE for c in ctls) <= 2
    for c in ctls:
        mine = [
            req.body["data"]
            for req, _ in api.sent
            if req.name == "o" and req.body["data"]["seq"].startswith(c.name)
        ]
        assert mine[-1]["count"] == "3" and mine[-1]["seq"] == f"{c.name}-1,{c.name}-2,{c.name}-3"
    assert sum(c.stats.swaps for c in ctls) >= 12


def wait(pred: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_failed_controller_restarts_fresh_with_backoff_up_to_a_limit(make_host) -> None:
    host, api = make_host(probe("a"), probe("ok"), restart_backoff=(0.05, 0.1), restart_limit=2)
    a = host.controllers["a"]
    for seq in ("1", "2"):
        a.post(event(seq))
    assert host.wait_idle(10)
    host.swap_all()  # a snapshot on disk holding count=2: the restart must not resume it
    assert host.wait_idle(10) and a.snapshot_path.exists()
    a.post(event(action="trap"))
    wait(lambda: a.stats.restarts == 1 and a.state == State.ACTIVE)
    assert a.status()["restarts"] == 1 and "unreachable" in a.status()["last_error"]
    a.post(event("3"))
    assert host.wait_idle(10)
    published = api.published()
    assert (published["count"], published["seq"]) == ("1", "3")  # a fresh instance, not the snapshot's
    a.post(event(action="loop"))
    wait(lambda: a.stats.restarts == 2 and a.state == State.ACTIVE)
    a.post(event(action="loop"))  # the third consecutive failure exceeds the limit of 2 restarts
    wait(lambda: a.state == State.FAILED and a.restart_at is None)
    assert a.state == State.FAILED and a.restart_at is None and a.stats.restarts == 2
    assert "compute limit" in a.stats.last_error
    a.post(event("4"))
    assert host.wait_idle(10)
    assert a.stats.dropped == 1
    assert host.controllers["ok"].state != State.FAILED
    host.write_status()
    (row,) = [c for c in read_status(host.options.state_dir)["controllers"] if c["name"] == "a"]
    assert row["state"] == "failed" and row["restarts"] == 2 and "compute limit" in row["last_error"]


def test_controllers_come_and_go_while_the_host_runs(make_host) -> None:
    host, api = make_host(probe("first"))
    late = host.add(probe("late"))
    late.post(event("1"))
    assert host.wait_idle(10)
    assert api.published()["seq"] == "1"
    host.swap_all()
    assert host.wait_idle(10) and late.snapshot_path.exists()
    host.remove("late")
    assert "late" not in host.controllers and not late.snapshot_path.exists()
    late.post(event("2"))  # a straggler event for a removed controller does nothing
    assert host.wait_idle(10) and late.stats.events == 1
    assert list(host.controllers) == ["first"]


class UnreachableApi(KubeApi):
    """An API server that does not answer: every list and watch fails as unreachable."""

    def __init__(self) -> None:
        super().__init__(transport=None)  # type: ignore[arg-type]  # call() never reaches a transport

    @property
    def host(self) -> str:
        return "https://fake"

    def call(self, method: str, path: str, **_: Any) -> Answer:
        raise kube_errors.Unavailable(f"API server {self.host}: ConnectionRefusedError: refused")


def test_a_failing_watch_is_reported_unhealthy_in_the_status_and_by_controllers_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    host = ControllerHost(
        UnreachableApi(),
        HostOptions(state_dir=state, status_interval=0.05),
        watch_options={"backoff": (0.01, 0.05)},
    )
    try:
        host.add(probe())
        host.start(sync_timeout=0.01)
        assert host.hub is not None
        (watch,) = host.hub.watches.values()
        wait_for(lambda: watch.stats.consecutive_failures >= 2, timeout=10, what="the watch failing")

        def reported() -> dict[str, Any]:
            return read_status(state)["watches"][0]

        # the status writer notices the watch's failures by itself (nothing else marks the status dirty)
        wait_for(lambda: reported()["consecutive_failures"] >= 2, timeout=10, what="the status showing it")
        row = reported()
        assert row["healthy"] is False and row["synced"] is False and "refused" in row["last_error"]
        assert watch.alive  # failing, retrying, not dead
        with pytest.raises(SystemExit) as exited:
            main(["--state-dir", str(state), "controllers", "list"])
        assert exited.value.code in (0, None)
        out = capsys.readouterr().out
        assert "watch configmaps in t UNHEALTHY" in out and "refused" in out
    finally:
        host.stop()
