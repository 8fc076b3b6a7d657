"""The shipped units under a real systemd: the machine's systemd 252 booted as PID 1 in namespaces of its own.

The sandbox has no systemd as PID 1, so the test boots one, as a container manager would
(tests/integration/systemd_boot.sh: fresh pid, mount, cgroup, net, uts and ipc namespaces; the host's / as
a read-only overlay layer; /proc/sys and sysfs read-only; cgroup2 rooted at a directory this test makes). What
`make install-files DESTDIR=<stage> PREFIX=/usr` staged is copied over that root before boot, so the boot
itself runs systemd-sysusers (the edgeagent user, the i2c group) and systemd-tmpfiles, then the test starts
the units with systemctl inside the namespaces and checks what systemd and the kernel report.

What the test adds to the installed tree, each because the sandbox is not a device:
- the Python venv: `make install-python` needs PyPI; a venv of the same Python whose .pth puts this worktree
  and the project's venv on sys.path stands in (the wrapper /usr/bin/edgeagent is the installed one);
- /etc/edgeagent/agent.toml: enrollment off, simulated sensors, the TPM a swtpm on a Unix socket
  (edgeagent-test-swtpm.service) instead of /dev/tpmrm0, which the sandbox does not have;
- edgeagent-measure.service.d/test-swtpm.conf: RestrictAddressFamilies=AF_UNIX, because the unit's `none`
  forbids the socket() the swtpm TCTI needs (PrivateNetwork=, DevicePolicy= and the rest stay);
- edgeagent.service.d/test-watchdog.conf: WatchdogSec=3s instead of 30s, so that pings are seen within
  seconds, and a supervisor that stopped pinging would be killed during the test.
edgeagent.service itself needs nothing: the swtpm socket is AF_UNIX, which it allows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeagent.tpm.swtpm import SoftwareTpm
from tests.integration.systemd_ns import (
    Booted,
    agent_status,
    boot,
    config_sections,
    proc_status,
    stage_root,
    start_and_wait,
    wait_until,
)

pytestmark = pytest.mark.integration

CONFIG = config_sections()  # enrollment off: the device side alone


@pytest.fixture
def booted(tmp_path: Path, swtpm_template: SoftwareTpm, wasm_build) -> Iterator[Booted]:
    stage = tmp_path / "stage"
    stage_root(stage, swtpm_template, CONFIG)
    with boot(tmp_path, stage) as b:
        yield b


def test_agent_runs_under_systemd_as_its_user_with_notify_watchdog_reload_stop(booted: Booted):
    b = booted
    # the boot ran sysusers and tmpfiles from the installed entries
    passwd = b.run("getent", "passwd", "edgeagent").stdout.split(":")
    uid, gid = passwd[2], passwd[3]
    assert uid != "0" and b.run("getent", "group", "i2c").returncode == 0
    assert b.run("stat", "-c", "%U %a", "/var/lib/edgeagent").stdout.split() == ["edgeagent", "700"]

    props = start_and_wait(b, "edgeagent.service")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), b.journal()
    assert b.show("edgeagent-measure.service", "ActiveState", "Result") == {
        "ActiveState": "active", "Result": "success"}
    # Type=notify: active only once the agent said READY=1, which it sends after measuring and opening its
    # socket; the 'measured' line is logged in between the fork and systemd's "Started".
    t = b.show("edgeagent.service", "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic",
               "StatusText")
    measured = wait_until(lambda: [
        int(e["__MONOTONIC_TIMESTAMP"]) for e in b.journal_json("edgeagent.service")
        if e.get("_PID") == props["MainPID"] and "supervisor: measured " in str(e.get("MESSAGE", ""))
    ], "the agent's 'measured' line in the journal")
    assert int(t["ExecMainStartTimestampMonotonic"]) < measured[0] < int(t["ActiveEnterTimestampMonotonic"])
    assert t["StatusText"], "no STATUS= reached systemd"

    # the dedicated user, its groups, no capabilities at all, no new privileges, seccomp on
    st = proc_status(b, props["MainPID"])
    assert st["Uid"].split() == [uid] * 4 and st["Gid"].split() == [gid] * 4
    groups = {b.run("getent", "group", g).stdout.split(":")[2] for g in ("tss", "i2c", "plugdev")}
    assert groups <= set(st["Groups"].split())
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"

    # the watchdog is fed: systemd stamps every WATCHDOG=1
    def stamp() -> int:
        return int(b.show("edgeagent.service", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])

    first = stamp()
    second = wait_until(lambda: (s := stamp()) > first and s, "a watchdog ping", timeout=20)
    wait_until(lambda: stamp() > second, "a second watchdog ping", timeout=20)

    # the local API from a process in the agent's group (and not from one outside it)
    p = agent_status(b, groups="edgeagent")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["phases"]["measure"] == "measured" and {d["name"] for d in s["drivers"]} == {"climate"}
    p = agent_status(b, groups="nogroup")
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    # the socket is the agent's group's without a chown (SystemCallFilter=~@privileged refuses chown)
    assert b.run("stat", "-c", "%G %a", "/run/edgeagent/agent.sock").stdout.split() == ["edgeagent", "660"]
    assert "cannot give" not in b.journal("edgeagent.service"), b.journal("edgeagent.service")

    # reload: ExecReload's SIGHUP; the agent re-measures (RELOADING=1 ... READY=1); active again, same process
    b.run("systemctl", "reload", "edgeagent.service", timeout=120)

    def reloaded() -> bool:
        p = agent_status(b, groups="edgeagent")
        return p.returncode == 0 and json.loads(p.stdout)["measure"]["reloads"] == 1

    wait_until(reloaded, "the agent to finish the reload")
    wait_until(lambda: b.show("edgeagent.service", "ActiveState")["ActiveState"] == "active", "active again")
    assert "Reloaded edgeagent.service" in b.journal("edgeagent.service"), b.journal()
    same = {"MainPID": props["MainPID"], "NRestarts": "0"}
    assert b.show("edgeagent.service", "MainPID", "NRestarts") == same

    # stop: SIGTERM, a clean exit: inactive, not failed
    b.run("systemctl", "stop", "edgeagent.service", timeout=120)
    after = b.show("edgeagent.service", "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    clean = {"ActiveState": "inactive", "Result": "success", "ExecMainCode": "1", "ExecMainStatus": "0"}
    assert after == clean, (after, b.journal())  # ExecMainCode 1: CLD_EXITED, with status 0
    assert not b.ns_file("/run/edgeagent").exists()  # RuntimeDirectory= removed with the service


def test_sigkill_of_the_main_process_is_restarted_by_systemd(booted: Booted):
    b = booted
    props = start_and_wait(b, "edgeagent.service")
    assert props["ActiveState"] == "active", b.journal()
    b.run("kill", "-KILL", props["MainPID"])

    def restarted() -> dict[str, str] | None:
        s = b.show("edgeagent.service", "ActiveState", "SubState", "MainPID", "NRestarts")
        return s if s["NRestarts"] == "1" and s["ActiveState"] == "active" else None

    again = wait_until(restarted, "systemd to restart the agent (RestartSec=5s)", timeout=90)
    assert again["SubState"] == "running" and again["MainPID"] not in ("0", props["MainPID"])
    killed = [line for line in b.journal("edgeagent.service").splitlines() if "status=9/KILL" in line]
    assert killed, b.journal()
    p = agent_status(b, groups="edgeagent")
    assert p.returncode == 0 and json.loads(p.stdout)["phases"]["measure"] == "measured", p.stderr
