"""`edgeagent agent` on a real software TPM with simulated sensors: the device side of the service.

Enrollment is off here (agent.enroll = false): these tests are about the supervisor, drivers, the local API,
metrics, systemd notify, reload, stop and restart; tests/integration/cloud/test_agent_e2e.py runs the same
service against Keylime and a real API server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeagent.measure import cel
from tests.fixtures import procs
from tests.integration.agent_proc import EDGEAGENT, AgentProcess, NotifyListener, stage_drivers

pytestmark = pytest.mark.integration

SENSORS = """
[[drivers.instances]]
name = "climate"
driver = "bme280"
interval = 0.2
sim = "true"

[[drivers.instances]]
name = "temp"
driver = "tmp102"
interval = 0.2
sim = "true"

[[drivers.instances]]
name = "lcd"
driver = "hd44780_pcf8574"
sim = "true"
"""


def base_config(tmp_path: Path, *, metrics_port: int = 0, extra: str = "", instances: str = SENSORS) -> str:
    drivers = stage_drivers(tmp_path / "drivers")
    return f"""
state_dir = "{tmp_path / "state"}"
policies_dir = "{Path(__file__).resolve().parents[2] / "policies"}"
[measure]
firmware_log = "{tmp_path / "no-firmware-log"}"
[drivers]
modules_dir = "{drivers}"
{instances}
[controllers]
dir = "{tmp_path / "no-controllers"}"
[agent]
enroll = false
socket = "{tmp_path / "agent.sock"}"
metrics_port = {metrics_port}
restart_backoff = 0.2
restart_backoff_max = 1.0
{extra}
"""


@pytest.fixture
def agent_factory(tmp_path: Path, fresh_swtpm, wasm_build):
    started: list[AgentProcess] = []

    def make(text: str | None = None, *, env: dict[str, str] | None = None) -> AgentProcess:
        cfg = tmp_path / "agent.toml"
        cfg.write_text(text if text is not None else base_config(tmp_path))
        agent = AgentProcess(cfg, fresh_swtpm.tcti, tmp_path / "agent.sock", env=env)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop(signal.SIGKILL)


def cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEAGENT_")}
    return subprocess.run(
        [str(EDGEAGENT), "--config", str(tmp_path / "agent.toml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@contextlib.contextmanager
def small_tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted on ``path`` (the tests run as root on the project's machines); unmounted after."""
    path.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).returncode != 0:
        pytest.fail(f"cannot mount a tmpfs ({options}) on {path}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


def test_drivers_read_through_the_agent_and_status_metrics_and_outputs_show_it(agent_factory, tmp_path):
    port = procs.free_port()
    agent = agent_factory(base_config(tmp_path, metrics_port=port)).start()
    s = agent.wait_status(
        lambda s: (
            len(s["drivers"]) == 3 and all(d["readings"] >= 2 for d in s["drivers"] if d["name"] != "lcd")
        ),
        what="two readings from each sensor",
    )
    climate = agent.driver(s, "climate")
    assert climate["state"] == "running" and climate["device"] == "sim:/dev/i2c-1:0x76"
    assert climate["latest"]["values"]["temperature"] == pytest.approx(21.5, abs=0.05)
    assert climate["latest"]["units"]["pressure"] == "hPa"
    assert s["phases"]["measure"] == "measured" and s["measure"]["files"] > 0
    assert s["phases"]["attestation"] == "disabled"
    # the CLI renders the same status; JSON for scripts
    p = cli("status", "--json", tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    assert {d["name"] for d in json.loads(p.stdout)["drivers"]} == {"climate", "temp", "lcd"}
    p = cli("status", tmp_path=tmp_path)
    assert p.returncode == 0 and "climate" in p.stdout and "temperature 21.5 C" in p.stdout, p.stdout
    # output through the local API, as the LCD's policy allows
    p = cli("output", "lcd", "hello edge", tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    assert agent.driver(agent.status(), "lcd")["latest"]["written"] == "hello edge"
    # writing to a sensor or to no driver: one line, non-zero, the agent keeps going
    p = cli("output", "climate", "x", tmp_path=tmp_path)
    assert p.returncode != 0 and p.stderr.strip() == (
        "edgeagent: error: driver climate is a sensor driver: it takes no output"
    )
    p = cli("output", "nope", "x", tmp_path=tmp_path)
    assert p.returncode != 0 and p.stderr.strip() == "edgeagent: error: no driver instance 'nope'"
    # Prometheus: readings as gauges labelled by driver, channel and unit; phase states
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'edgeagent_driver_reading{channel="temperature",driver="climate",unit="C"} 21.5' in text
    assert 'edgeagent_phase_state{phase="measure",state="measured"} 1.0' in text
    assert "edgeagent_driver_operations_total" in text


def test_systemd_notify_ready_status_watchdog_reload_and_stopping(agent_factory, tmp_path):
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        agent = agent_factory(env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "3000000"})
        agent.start()
        listener.wait("READY=1")
        listener.wait("STATUS=")
        listener.wait("WATCHDOG=1")
        mark = listener.mark()
        agent.send(signal.SIGHUP)
        _, reloading = listener.wait("RELOADING=1", after=mark)
        assert "MONOTONIC_USEC=" in reloading
        usec = int(reloading.split("MONOTONIC_USEC=")[1].split()[0])
        assert abs(usec - time_monotonic_usec()) < 60_000_000
        listener.wait("READY=1", after=mark + 1)
        mark = listener.mark()
        assert agent.stop() == 0
        listener.wait("STOPPING=1", after=mark)
    finally:
        listener.close()


def time_monotonic_usec() -> int:
    import time

    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_sighup_measures_first_then_adds_removes_and_restarts_only_what_changed(agent_factory, tmp_path):
    agent = agent_factory().start()
    agent.wait_status(lambda s: agent.driver(s, "temp")["readings"] >= 2, what="temp readings")
    before = agent.driver(agent.status(), "temp")
    cfg = tmp_path / "agent.toml"
    text = cfg.read_text()
    # remove "climate", add "humid", keep "temp" and "lcd"
    text = text.replace('name = "climate"\ndriver = "bme280"', 'name = "humid"\ndriver = "hts221"')
    cfg.write_text(text)
    agent.send(signal.SIGHUP)
    s = agent.wait_status(
        lambda s: (
            s["measure"]["reloads"] == 1
            and any(d["name"] == "humid" and d["readings"] > 0 for d in s["drivers"])
        ),
        what="the reload",
    )
    assert {d["name"] for d in s["drivers"]} == {"humid", "temp", "lcd"}
    # "temp" was neither stopped nor restarted: the same worker goes on counting
    s = agent.wait_status(
        lambda s: agent.driver(s, "temp")["readings"] > before["readings"] + 2, what="temp to go on reading"
    )
    assert agent.driver(s, "temp")["restarts"] == 0
    # the new config was measured (its new digest logged) before the new driver could load
    records = cel.read_log(tmp_path / "state" / "measurements.cel.jsonl")
    config_digests = [
        r.content.get("sha256")
        for r in records
        if r.kind == cel.FILE and r.content.get("path") == str(cfg.resolve())
    ]
    import hashlib

    assert config_digests[-1] == hashlib.sha256(cfg.read_bytes()).hexdigest()
    assert len(config_digests) == 2


def test_a_bad_config_on_reload_is_refused_in_one_line_and_the_old_one_keeps_running(agent_factory, tmp_path):
    agent = agent_factory().start()
    agent.wait_status(lambda s: agent.driver(s, "temp")["readings"] >= 1, what="a reading")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(cfg.read_text().replace("[agent]", "[agent]\nbogus_key = 1"))
    agent.send(signal.SIGHUP)
    s = agent.wait_status(lambda s: s["reload_error"], what="the reload to be refused")
    assert "unknown key 'bogus_key'" in s["reload_error"]
    n = agent.driver(s, "temp")["readings"]
    agent.wait_status(lambda s: agent.driver(s, "temp")["readings"] > n, what="readings to go on")


def test_a_trapping_driver_backs_off_a_tampered_module_is_refused_and_a_reload_measures_the_fix(
    agent_factory, tmp_path, wasm_build
):
    # The installed tmp102 module is a guest that loops in every read (stopped by the compute limit).
    instances = SENSORS.replace('name = "temp"', 'name = "custom"')
    agent = agent_factory(base_config(tmp_path, instances=instances))
    module = tmp_path / "drivers" / "tmp102.wasm"
    shutil.copyfile(wasm_build / "tests" / "looping_driver.wasm", module)
    agent.start()
    s = agent.wait_status(
        lambda s: agent.driver(s, "custom")["restarts"] >= 2,
        timeout=60,
        what="the looping driver to be stopped and restarted twice",
    )
    assert "compute limit" in agent.driver(s, "custom")["last_error"]
    assert agent.driver(s, "climate")["state"] == "running"  # the rest runs
    # the module is replaced on disk without a reload: its next start is refused (not what was measured)
    shutil.copyfile(wasm_build / "tmp102.wasm", module)
    s = agent.wait_status(
        lambda s: "does not match its measured digest" in agent.driver(s, "custom")["last_error"],
        timeout=60,
        what="the changed module to be refused",
    )
    assert agent.driver(s, "climate")["state"] == "running"
    # a reload measures the new module into PCR 23 first, then it loads and reads
    agent.send(signal.SIGHUP)
    s = agent.wait_status(
        lambda s: agent.driver(s, "custom")["readings"] > 0, timeout=60, what="the measured module to read"
    )
    assert agent.driver(s, "custom")["latest"]["values"]["temperature"] == pytest.approx(23.5, abs=0.1)


def test_sigterm_stops_cleanly_and_sigkill_then_restart_resumes(agent_factory, tmp_path, fresh_swtpm):
    agent = agent_factory().start()
    agent.wait_status(lambda s: agent.driver(s, "temp")["readings"] >= 1, what="a reading")
    assert agent.stop(signal.SIGTERM) == 0
    assert not (tmp_path / "agent.sock").exists()  # the socket is removed on a clean stop
    agent.start()
    agent.wait_status(lambda s: agent.driver(s, "temp")["readings"] >= 1, what="a reading after restart")
    agent.stop(signal.SIGKILL)
    assert (tmp_path / "agent.sock").exists()  # a killed agent leaves its socket: the next one replaces it
    s = agent.start().wait_ready()
    assert s["phases"]["measure"] == "measured"
    agent.stop()
    # the event log is intact and still explains the PCR (one segment, nothing torn)
    p = cli("--tpm", fresh_swtpm.tcti, "measure", "verify", "--json", tmp_path=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


def test_status_without_an_agent_is_one_line(tmp_path):
    (tmp_path / "agent.toml").write_text("")
    p = cli("status", "--socket", str(tmp_path / "none.sock"), tmp_path=tmp_path)
    assert p.returncode == 69
    assert (
        p.stderr.strip() == f"edgeagent: error: no agent is running (no socket at {tmp_path / 'none.sock'})"
    )
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on (a killed agent's)
    p = cli("status", "--socket", str(stale), tmp_path=tmp_path)
    assert p.returncode == 69 and "nothing listens on" in p.stderr and "Traceback" not in p.stderr


def _raw(path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"garbage\r\n\r\n", b"400"),
        (b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"DELETE /v1/status HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (b"POST /v1/drivers/lcd/write HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{nope", b"400"),
        (b"POST /v1/drivers/lcd/write HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n[]", b"400"),
        (b'POST /v1/drivers/lcd/write HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{"text": 42}', b"400"),
        (b"POST /v1/drivers/lcd/write HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", b"413"),
        (b"POST /v1/drivers/lcd/write HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", b"400"),
        (b"POST /v1/controllers/none/restart HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", b"409"),
    ],
)
def test_malformed_local_api_requests_get_4xx_and_the_agent_keeps_serving(
    agent_factory, tmp_path, request_bytes, status
):
    agent = agent_factory().start()
    answer = _raw(tmp_path / "agent.sock", request_bytes)
    assert answer.split(b" ")[1] == status, answer[:200]
    assert agent.status()["ready"]
    assert oct((tmp_path / "agent.sock").stat().st_mode & 0o777) == "0o660"


def test_bad_config_at_start_is_one_line_naming_the_key(agent_factory, tmp_path):
    agent = agent_factory(
        base_config(tmp_path) + '\n[[drivers.instances]]\nname = "temp"\ndriver = "tmp102"\n'
    )
    # the duplicate name is in an array of tables after [agent]: TOML puts it under drivers.instances
    p = cli("agent", tmp_path=tmp_path)
    assert p.returncode == 78, p.stderr
    assert "drivers.instances" in p.stderr and "name 'temp' is used twice" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    del agent


def test_an_unusable_state_dir_is_one_line(agent_factory, tmp_path):
    agent = agent_factory()
    state = tmp_path / "state"
    state.mkdir()
    (state / "measurements.cel.jsonl").mkdir()  # the log path is a directory: cannot be opened for append
    agent.start(wait_ready=False)
    assert agent.proc is not None
    rc = agent.proc.wait(60)
    assert rc in (4, 74), agent.output()
    lines = [line for line in agent.output().splitlines() if "error" in line]
    assert lines and lines[-1].startswith("edgeagent: error: "), agent.output()
    assert "Traceback" not in agent.output()


def test_a_full_state_dir_fails_in_one_line_and_loses_nothing(agent_factory, tmp_path):
    with small_tmpfs(tmp_path / "state", "size=512k") as state:
        agent = agent_factory().start()  # it fits; then the disk fills up
        try:
            with (state / "filler").open("wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass  # full
        log_path = state / "measurements.cel.jsonl"
        log_before = log_path.read_bytes()
        records_before = cel.read_log(log_path)
        # a reload that must log many new measurements (more than a tmpfs page holds) cannot
        extra = tmp_path / "extra"
        extra.mkdir()
        for i in range(60):
            (extra / f"f{i:02d}").write_text(str(i))
        cfg = tmp_path / "agent.toml"
        cfg.write_text(cfg.read_text().replace("[measure]\n", f'[measure]\nextra_paths = ["{extra}"]\n'))
        agent.send(signal.SIGHUP)
        s = agent.wait_status(lambda s: s["reload_error"], what="the reload to fail")
        assert "No space left on device" in s["reload_error"], s["reload_error"]
        assert log_path.read_bytes() == log_before  # nothing lost, no half record left
        assert cel.read_log(log_path) == records_before
        agent.wait_status(lambda s: agent.driver(s, "temp")["readings"] > 0, what="the drivers to go on")
        assert agent.stop() == 0


def test_a_missing_driver_module_is_reported_and_the_rest_runs(agent_factory, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text("[[i2c]]\nbus = 1\naddresses = [0x48]\n")
    instances = (
        SENSORS
        + f"""
[[drivers.instances]]
name = "gone"
driver = "{tmp_path / "nowhere" / "gone.wasm"}"
policy = "{policy}"
sim = "true"
"""
    )
    agent = agent_factory(base_config(tmp_path, instances=instances)).start()
    s = agent.wait_status(
        lambda s: agent.driver(s, "gone")["errors"] >= 1, what="the missing module reported"
    )
    assert (
        agent.driver(s, "gone")["last_error"]
        == f"driver module {tmp_path / 'nowhere' / 'gone.wasm'} does not exist"
    )
    agent.wait_status(lambda s: agent.driver(s, "temp")["readings"] >= 2, what="the others to read")


def test_a_read_only_state_dir_is_one_line(agent_factory, tmp_path):
    with small_tmpfs(tmp_path / "state", "size=1m,ro"):
        agent = agent_factory()
        agent.start(wait_ready=False)
        assert agent.proc is not None
        rc = agent.proc.wait(60)
        out = agent.output()
        assert rc in (4, 74), out
        last = out.strip().splitlines()[-1]
        assert last.startswith("edgeagent: error: ") and "Read-only file system" in last, out
        assert "Traceback" not in out
