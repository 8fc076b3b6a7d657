"""The controller host's life across restarts, failures and bad watches (issue 13's defects), without an API
server: a scripted fake answers lists, watches and the probe's requests.

Everything else is real: the probe controller (make -C controllers), wasmtime, snapshots and status on disk,
``service.run`` as `edgeagent controllers run` runs it (a stop event instead of signals).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeagent.cli.main import main
from edgeagent.config import load_config
from edgeagent.controllers import service
from edgeagent.controllers.host import ControllerHost, HostOptions, State, read_status
from edgeagent.controllers.manifest import parse_manifest
from edgeagent.errors import ControllerError, ManifestError
from edgeagent.kube import errors as kube_errors
from edgeagent.kube.api import KubeApi
from edgeagent.kube.watch import Event
from edgeagent.testbed.procs import wait_for

CONTROLLERS = Path(__file__).resolve().parents[2] / "controllers"
PROBE = CONTROLLERS / "build" / "testing" / "probe.wasm"
DEADLINE = 20.0


@pytest.fixture(scope="module", autouse=True)
def guests() -> None:
    subprocess.run(["make", "-s", "-C", str(CONTROLLERS)], check=True)


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where advertising hosts (service.run) leave their pointer: this test's, not the machine's /run."""
    d = tmp_path / "xdg-runtime"
    d.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    return d


@dataclasses.dataclass
class Answer:
    status: int
    data: bytes


class Stream:
    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()

    def shutdown(self) -> None:
        self.closed.set()

    def release_conn(self) -> None:
        pass

    def lines(self) -> Iterator[bytes]:
        self.closed.wait()
        raise kube_errors.Unavailable("watch: closed")
        yield b""  # pragma: no cover - a generator


class FakeCluster(KubeApi):
    """Lists ``objects`` (configmaps in t), keeps watches open and quiet, records the probe's ConfigMap.

    ``missing``: the kind does not exist (a wrong plural): every list answers 404.
    """

    def __init__(self, objects: list[dict[str, Any]] | None = None, *, missing: bool = False) -> None:
        super().__init__(transport=None)  # type: ignore[arg-type]  # nothing goes over a transport
        self.objects = objects or []
        self.missing = missing
        self.published: list[dict[str, str]] = []
        self.lists = 0

    @property
    def host(self) -> str:
        return "https://fake"

    def call(self, method: str, path: str, *, body: Any = None, **_: Any) -> Answer:
        if method == "GET":
            self.lists += 1
            if self.missing:
                raise kube_errors.for_status(404, f"list {path}: 404 the server could not find the resource")
            listing = {"metadata": {"resourceVersion": "5"}, "items": self.objects}
            return Answer(200, json.dumps(listing).encode())
        if body is not None and "data" in body:
            self.published.append(dict(body["data"]))
        return Answer(200, b"{}")

    def watch_lines(self, path: str, *, query: Any, read_timeout: float) -> tuple[Stream, Iterator[bytes]]:
        s = Stream()
        return s, s.lines()


def configmap(name: str, seq: str, rv: int = 1) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "t",
            "resourceVersion": str(rv),
            "annotations": {"probe-seq": seq},
            "labels": {},
        }
    }


PROBE_TOML = f"""
name = "p"
module = "{PROBE}"
config = {{ namespace = "t", out = "o", publish_synced = true }}
[[watches]]
version = "v1"
kind = "ConfigMap"
plural = "{{plural}}"
namespace = "t"
[[grants]]
verbs = ["create", "patch"]
resources = ["configmaps"]
namespaces = ["t"]
"""


def manifest_dir(tmp_path: Path, plural: str = "configmaps") -> Path:
    d = tmp_path / "ctl"
    d.mkdir(exist_ok=True)
    (d / "p.toml").write_text(PROBE_TOML.replace("{plural}", plural))
    return d


def config(tmp_path: Path) -> Any:
    cfg = load_config(None, overrides={"state_dir": tmp_path / "state"})
    cfg.controllers.verify = False
    return cfg


class Running:
    """``service.run`` on a thread until ``stop``."""

    def __init__(self, cfg: Any, directory: Path, api: KubeApi, *, sync_timeout: float = 30.0) -> None:
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

        def target() -> None:
            try:
                service.run(cfg, directory, stop=self.stop_event, api=api, sync_timeout=sync_timeout)
            except BaseException as e:  # handed to the test
                self.error = e

        self.thread = threading.Thread(target=target, name="test-controllers-run", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "service.run did not stop"
        if self.error is not None:
            raise self.error


def test_state_survives_a_host_restart_and_synced_runs_after_the_initial_list(tmp_path: Path) -> None:
    # Before: a graceful stop dropped every instance and the next start ran init again (count back to 1),
    # and no "initial sync done" hook existed.
    cfg, d = config(tmp_path), manifest_dir(tmp_path)
    api = FakeCluster([configmap("a", "1")])
    run = Running(cfg, d, api)
    wait_for(lambda: any(p.get("synced") == "1" for p in api.published), timeout=DEADLINE, what="synced")
    assert api.published[-1]["count"] == "1" and api.published[-1]["seq"] == "1"
    run.stop()
    assert (cfg.state_dir / "controllers" / "snapshots" / "p.snap").is_file()  # saved on the graceful stop

    api2 = FakeCluster([configmap("a", "1"), configmap("b", "2")])
    run2 = Running(cfg, d, api2)
    try:
        wait_for(
            lambda: any(p.get("synced") == "2" for p in api2.published),
            timeout=DEADLINE,
            what="synced after the restart",
        )
        last = api2.published[-1]
        assert last["count"] == "3" and last["seq"] == "1,1,2"  # the first run's state, then this list
    finally:
        run2.stop()


def test_startup_waiting_for_a_failing_watch_stops_when_told(tmp_path: Path) -> None:
    # Before: the wait for the first list ignored the stop request for its whole sync timeout.
    cfg, d = config(tmp_path), manifest_dir(tmp_path, plural="configmapz")
    api = FakeCluster(missing=True)
    run = Running(cfg, d, api, sync_timeout=3600.0)
    wait_for(lambda: api.lists >= 2, timeout=DEADLINE, what="the failing lists")
    run.stop()  # joins with a deadline far below the sync timeout


def test_a_watch_on_a_wrong_plural_shows_the_controller_unhealthy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: `controllers list` showed the controller as healthy while its watch failed with 404 forever.
    state = tmp_path / "state"
    host = ControllerHost(
        FakeCluster(missing=True),
        HostOptions(state_dir=state, status_interval=0.05),
        watch_options={"backoff": (0.01, 0.05)},
    )
    try:
        m = parse_manifest(tomllib_loads(PROBE_TOML.replace("{plural}", "configmapz")))
        host.add(m)
        host.start(sync_timeout=0.01)

        def row() -> dict[str, Any]:
            return read_status(state)["controllers"][0]

        wait_for(lambda: not row()["healthy"], timeout=DEADLINE, what="the controller reported unhealthy")
        assert "404" in row()["watch_error"] and "configmapz" in row()["watch_error"]
        with pytest.raises(SystemExit):
            main(["--state-dir", str(state), "controllers", "list"])
        out = capsys.readouterr().out
        assert "UNHEALTHY" in out and "controller p gets no events: watch configmapz" in out
    finally:
        host.stop()


def tomllib_loads(text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(text)


def event(action: str = "", seq: str = "", name: str = "in") -> Event:
    ann = {"probe-seq": seq} if seq else {}
    if action:
        ann["probe-action"] = action
    raw = json.dumps(
        {"type": "MODIFIED", "object": {"metadata": {"name": name, "namespace": "t", "annotations": ann}}}
    ).encode()
    return Event("MODIFIED", "t", name, {}, "1", raw, 0.0)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[ControllerHost]:
    h = ControllerHost(
        FakeCluster(), HostOptions(state_dir=tmp_path / "state", status_interval=0.05, restart_limit=0)
    )
    h.hub = None  # no watches: the tests post events themselves
    h.add(parse_manifest(tomllib_loads(PROBE_TOML.replace("{plural}", "configmaps"))))
    h.start()
    yield h
    h.stop()


def test_the_trap_report_names_the_object(host: ControllerHost) -> None:
    ctl = host.controllers["p"]
    ctl.post(event("trap", name="culprit"))
    assert host.wait_idle(10)
    assert ctl.state == State.FAILED
    assert "unreachable" in ctl.stats.last_error and "(handling MODIFIED t/culprit)" in ctl.stats.last_error


def test_a_controller_stopped_after_its_restart_limit_comes_back_on_request(
    host: ControllerHost, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: after its restarts a trapping controller stayed stopped until the host restarted.
    ctl = host.controllers["p"]
    ctl.post(event("trap"))
    assert host.wait_idle(10) and ctl.state == State.FAILED and ctl.restart_at is None
    with pytest.raises(ControllerError, match="no controller 'nope'"):
        host.restart("nope")
    host.restart("p")
    wait_for(lambda: ctl.state == State.ACTIVE, timeout=DEADLINE, what="the restarted controller")
    ctl.post(event(seq="9"))
    assert host.wait_idle(10)
    assert ctl.stats.restarts == 1 and ctl.stats.events == 2
    # the same from another process: `edgeagent controllers restart p` (through the host's requests dir)
    ctl.post(event("trap"))
    assert host.wait_idle(10) and ctl.state == State.FAILED
    with pytest.raises(SystemExit) as exited:
        main(["--state-dir", str(host.options.state_dir), "controllers", "restart", "p"])
    assert exited.value.code in (0, None)
    assert "controller p restarted (active)" in capsys.readouterr().out
    assert ctl.state == State.ACTIVE and ctl.stats.restarts == 2
    with pytest.raises(SystemExit) as exited:
        main(["--state-dir", str(host.options.state_dir), "controllers", "restart", "nope"])
    err = capsys.readouterr().err
    assert exited.value.code == 5 and err.count("\n") == 1 and "no controller 'nope'" in err


def test_the_local_api_revives_a_stopped_controller_as_controllers_restart_does(
    host: ControllerHost, tmp_path: Path
) -> None:
    # Before: the agent's POST /v1/controllers/NAME/restart removed the controller and added a new one (its
    # counters and snapshot gone), not the host's restart that `edgeagent controllers restart` asks for.
    from edgeagent.agent.backoff import Backoff
    from edgeagent.agent.client import AgentClient
    from edgeagent.agent.controller_runner import ControllersRunner
    from edgeagent.agent.localapi import LocalApi, Routes
    from edgeagent.config import AgentConfig
    from edgeagent.errors import EdgeAgentError

    ctl = host.controllers["p"]
    ctl.post(event("trap"))
    assert host.wait_idle(10) and ctl.state == State.FAILED and ctl.restart_at is None
    config = AgentConfig(state_dir=tmp_path / "agent")
    runner = ControllersRunner(config, backoff=Backoff(), credential_files=[])
    runner.host = host  # the agent's runner, on this host (as its controllers thread would have set it)
    api = LocalApi(
        tmp_path / "agent.sock",
        Routes(status=dict, write=print, restart_controller=runner.restart_controller, reload=dict),
    )
    api.start()
    try:
        client = AgentClient(tmp_path / "agent.sock")
        answer = client.restart_controller("p")
        assert host.controllers["p"] is ctl and ctl.state == State.ACTIVE and ctl.stats.restarts == 1
        assert answer == {"restarted": "p", "state": "active"}  # answered once the host has acted
        ctl.post(event(seq="9"))
        assert host.wait_idle(10) and ctl.stats.events == 2  # the same controller goes on counting
        with pytest.raises(EdgeAgentError, match="no controller 'nope'"):
            client.restart_controller("nope")
    finally:
        api.stop()


def test_list_finds_the_running_host_without_repeating_its_state_dir(
    host: ControllerHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: `list` looked only in the configured state directory and reported no status.
    monkeypatch.setattr(host, "options", dataclasses.replace(host.options, advertise=True))
    host.start()  # registers, under this runtime directory (as `controllers run`'s host does)
    other = tmp_path / "agent.toml"
    other.write_text(f'state_dir = "{tmp_path / "elsewhere"}"\n')
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(other), "controllers", "list", "--json"])
    assert exited.value.code in (0, None)
    data = json.loads(capsys.readouterr().out)
    assert data["host_running"] is True and [c["name"] for c in data["controllers"]] == ["p"]


def test_a_manifest_error_exits_78_as_documented(tmp_path: Path) -> None:
    # Before: "no controller could be loaded" was a ControllerError, exit 5, for a configuration error.
    d = tmp_path / "ctl"
    d.mkdir()
    (d / "bad.toml").write_text('name = "bad"\nmodule = "x.wasm"\n')  # no [[watches]]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
        "current-context: x\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeagent.controllers",
            "--state-dir",
            str(tmp_path / "s"),
            "run",
            str(d),
            "--kubeconfig",
            str(kubeconfig),
            "--no-verify",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert r.returncode == ManifestError.exit_code == 78, r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("edgeagent: error: no controller could be loaded") and "[[watches]]" in last
    assert "Traceback" not in r.stderr


def test_rbac_camel_case_spelling_is_accepted_in_grants_and_watches() -> None:
    text = (
        PROBE_TOML.replace("{plural}", "configmaps")
        .replace(
            'resources = ["configmaps"]',
            'resources = ["configmaps"]\napiGroups = [""]\nresourceNames = ["o"]',
        )
        .replace('namespace = "t"\n[[grants]]', 'namespace = "t"\nlabelSelector = "app=x"\n[[grants]]')
    )
    m = parse_manifest(tomllib_loads(text))
    assert m.grants[0].resource_names == frozenset({"o"}) and m.grants[0].api_groups == frozenset({""})
    assert str(m.watches[0].label_selector) == "app=x"
    both = text.replace('apiGroups = [""]', 'apiGroups = [""]\napi_groups = [""]')
    with pytest.raises(ManifestError, match="both 'api_groups' and 'apiGroups'"):
        parse_manifest(tomllib_loads(both))


def test_sigterm_during_the_start_up_wait_for_a_404_watch_ends_the_host(tmp_path: Path) -> None:
    # Before: the host sat out its 30 s sync wait (a wrong plural's 404 never lists) ignoring SIGTERM.
    import http.server
    import signal

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"kind":"Status","code":404,"message":"the server could not find the resource"}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, name="test-404-apiserver", daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{server.server_port}'}}}}]\n"
        "users: [{name: u, user: {}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
        "current-context: x\n"
    )
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeagent.controllers",
            "--state-dir",
            str(state),
            "run",
            str(manifest_dir(tmp_path, plural="configmapz")),
            "--kubeconfig",
            str(kubeconfig),
            "--no-verify",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def failing() -> bool:
            try:
                return any(w.get("consecutive_failures", 0) >= 1 for w in read_status(state)["watches"])
            except Exception:
                return False

        wait_for(failing, timeout=DEADLINE, what="the host's watch failing with 404")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE) == 0  # far below the 30 s start-up wait
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.shutdown()
