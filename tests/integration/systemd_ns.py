"""Booting the machine's systemd as PID 1 in namespaces of its own, for the tests of the shipped units.

See test_systemd_real.py's docstring for what the boot is and what the staged tree adds to the installed one;
systemd_boot.sh for how the root is built. `boot` runs it in fresh namespaces, or with ``netns`` inside an
existing network namespace (``ip netns exec``: e.g. the NAT testbed's device namespace, whose relays on
127.0.0.1 reach the cluster side), where everything but the network is still fresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from edgeagent.testbed import device
from edgeagent.tpm.swtpm import SoftwareTpm

ROOT = Path(__file__).resolve().parents[2]
BOOT = Path(__file__).with_name("systemd_boot.sh")
SYSTEMD = Path("/lib/systemd/systemd")
NS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SWTPM_DIR = "/run/edgeagent-test-swtpm"
SWTPM_STATE = "/var/lib/edgeagent-test-swtpm"

TEST_UNITS = {
    "edgeagent-test.target": """\
[Unit]
Description=edgeagent test boot: sysinit and basic, a software TPM, nothing else from the host
Requires=basic.target
Wants=edgeagent-test-swtpm.service
After=basic.target
AllowIsolate=yes
""",
    "edgeagent-test-swtpm.service": f"""\
[Unit]
Description=edgeagent test: a software TPM on a Unix socket, standing in for /dev/tpmrm0
Before=edgeagent-measure.service edgeagent.service

[Service]
ExecStart=/usr/bin/swtpm socket --tpm2 --tpmstate dir={SWTPM_STATE} \\
    --server type=unixio,path={SWTPM_DIR}/tpm.sock,mode=0666 \\
    --ctrl type=unixio,path={SWTPM_DIR}/tpm.sock.ctrl,mode=0666 --flags not-need-init,startup-clear
ExecStartPost=/bin/sh -c 'until [ -S {SWTPM_DIR}/tpm.sock ]; do sleep 0.05; done'
RuntimeDirectory=edgeagent-test-swtpm
RuntimeDirectoryMode=0755
""",
    "edgeagent-measure.service.d/test-swtpm.conf": """\
# The test's TPM is a swtpm on a Unix socket; the unit's RestrictAddressFamilies=none would refuse it.
[Service]
RestrictAddressFamilies=AF_UNIX
""",
    "edgeagent.service.d/test-watchdog.conf": """\
# Pings every 1.5 s instead of 15 s: seen quickly, and a supervisor that stops pinging is killed mid-test.
[Service]
WatchdogSec=3s
""",
}


T = TypeVar("T")


def wait_until(cond: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """The first truthy value of ``cond()``; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def own_cgroup2() -> Path:
    """This process's cgroup in the cgroup2 hierarchy (the hybrid layout's /sys/fs/cgroup/unified or the
    unified layout's /sys/fs/cgroup): the test's systemd gets a child of it, so it escapes no limit."""
    mount = next(
        (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
         if line.split(" - ")[1].startswith("cgroup2 ")),
        None,
    )
    if mount is None:
        pytest.fail("no cgroup2 hierarchy mounted: the test's systemd needs one for its cgroup namespace")
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    rel = next(line[3:] for line in lines if line.startswith("0::"))
    return Path(mount) / rel.lstrip("/")


class Booted:
    """A systemd booted by systemd_boot.sh: commands run inside its namespaces through nsenter."""

    def __init__(self, proc: subprocess.Popen[bytes], cgroup: Path, log: Path) -> None:
        self.proc = proc
        self.cgroup = cgroup
        self.log = log
        self.pid1 = wait_until(self._child, "unshare to fork the namespace's init", timeout=20)

    def _child(self) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the boot script exited ({self.proc.returncode}):\n{self.log.read_text()}")
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0]) if children else None

    def run(self, *argv: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "env", "-i", f"PATH={NS_PATH}", *argv],
            capture_output=True, text=True, timeout=timeout,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} failed ({p.returncode}):\n{p.stdout}{p.stderr}\n{self.journal()}"
            )
        return p

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *units: str) -> str:
        args = [a for u in units or ("edgeagent.service", "edgeagent-measure.service") for a in ("-u", u)]
        out = self.run("journalctl", "--no-pager", "-o", "short-monotonic", *args, check=False).stdout
        return out[-6000:]

    def journal_json(self, unit: str) -> list[dict[str, str]]:
        out = self.run("journalctl", "--no-pager", "-o", "json", "-u", unit).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def is_systemd(self) -> bool:
        """Whether the namespace's init has exec'd systemd (the boot script is done)."""
        return os.readlink(f"/proc/{self.pid1}/exe").endswith("/systemd")

    def ns_file(self, path: str) -> Path:
        """A path inside the namespace's root, seen from the host."""
        return Path(f"/proc/{self.pid1}/root") / path.lstrip("/")

    def teardown(self) -> None:
        """SIGKILL to the namespace's init kills every process in the pid namespace; the mount namespace (and
        with it the overlay and tmpfs mounts) goes with its last process; the cgroups are then empty."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, signal.SIGKILL)
            self.proc.wait(timeout=30)
        wait_until(lambda: not any(
            (d / "cgroup.procs").read_text().strip() for d in [self.cgroup, *self.cgroup.rglob("*")]
            if d.is_dir()
        ), "the test's cgroups to empty", timeout=30)
        for d in sorted((p for p in self.cgroup.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                        reverse=True):
            d.rmdir()
        self.cgroup.rmdir()


def config_sections(
    *, enroll: Mapping[str, Any] | None = None, extra_paths: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """The test's /etc/edgeagent/agent.toml (as testbed.device.agent_config sections): the installed paths,
    the swtpm unit's socket for the TPM, one simulated sensor (CLIMATE), no controllers; ``enroll``: the
    [enroll] section (enrollment is off without one)."""
    measure: dict[str, Any] = {"firmware_log": "/sys/kernel/security/tpm0/binary_bios_measurements"}
    if extra_paths:
        measure["extra_paths"] = list(extra_paths)
    sections: dict[str, dict[str, Any]] = {
        "": {
            "state_dir": "/var/lib/edgeagent",
            "tpm_tcti": f"swtpm:path={SWTPM_DIR}/tpm.sock",
            "policies_dir": "/etc/edgeagent/policies",
        },
        "measure": measure,
        "drivers": {"modules_dir": "/usr/lib/edgeagent/drivers"},
        "controllers": {"dir": "/var/lib/edgeagent-test-no-controllers"},
    }
    if enroll is not None:
        sections["enroll"] = dict(enroll)
    sections["agent"] = {
        "enroll": enroll is not None,
        "socket": "/run/edgeagent/agent.sock",
        "socket_group": "edgeagent",
        "metrics_port": 0,
        "restart_backoff": 0.2,
        "restart_backoff_max": 1.0,
    }
    return sections


CLIMATE = {"name": "climate", "driver": "bme280", "interval": 0.5, "sim": "true"}


def stage_root(stage: Path, tpm: SoftwareTpm, config: Mapping[str, Mapping[str, Any]]) -> None:
    """`make install-files` into ``stage``, then the test's additions (test_systemd_real.py's docstring):
    the venv, ``config`` (config_sections) as /etc/edgeagent/agent.toml with the CLIMATE sensor, TEST_UNITS,
    and ``tpm``'s state for the swtpm unit."""
    make = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "install-files", f"DESTDIR={stage}", "PREFIX=/usr"],
        capture_output=True, text=True, timeout=600,
    )
    assert make.returncode == 0, make.stdout + make.stderr
    venv = stage / "usr/lib/edgeagent/venv"
    base_python = Path(sys._base_executable).resolve()  # type: ignore[attr-defined]
    subprocess.run([str(base_python), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = venv / f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
    # the checkout and this venv's packages, bound there by the boot script (see systemd_boot.sh)
    (site / "edgeagent-test.pth").write_text("/opt/edgeagent-test/src\n/opt/edgeagent-test/site\n")
    device.agent_config(stage / "etc/edgeagent/agent.toml", config, [CLIMATE])
    units = stage / "etc/systemd/system"
    for name, text in TEST_UNITS.items():
        (units / name).parent.mkdir(parents=True, exist_ok=True)
        (units / name).write_text(text)
    (units / "default.target").symlink_to("edgeagent-test.target")
    (stage / "etc/hostname").write_text("edgeagent-test\n")
    (stage / "etc/machine-id").write_text("")
    state = stage / SWTPM_STATE.lstrip("/")
    state.mkdir(parents=True, mode=0o700)
    for f in tpm.state_dir.iterdir():
        if f.is_file() and not f.name.startswith(".lock"):
            shutil.copy2(f, state / f.name)


def host_mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line]


def host_fingerprint() -> dict[str, str]:
    """What a systemd booted without the boot script's guards changed on the host (seen while writing
    this test): sysctls set by systemd-sysctl, the options of the host's /sys/fs/cgroup (remounted ro)."""
    sysctls = {f: Path("/proc/sys/fs", f).read_text().strip()
               for f in ("protected_fifos", "protected_hardlinks", "protected_regular", "protected_symlinks")}
    cgroup_fs = [line.split(" - ")[1] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                 if line.split()[4] == "/sys/fs/cgroup"]
    return {**sysctls, "/sys/fs/cgroup": " | ".join(cgroup_fs)}


@contextlib.contextmanager
def boot(tmp_path: Path, stage: Path, *, netns: str | None = None) -> Iterator[Booted]:
    """systemd booted on ``stage`` (see `stage_root`), running its test target; ``netns``: inside that
    network namespace (/run/netns/NAME) instead of a fresh one. On exit everything is killed and the host is
    checked: no mount under ``tmp_path``, the cgroup gone, the host's sysctls and cgroup mount unchanged."""
    if os.geteuid() != 0:
        pytest.fail("booting systemd in namespaces needs root (the project's test machines run as root)")
    for tool in ("unshare", "nsenter", "capsh", "swtpm", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed")
    if not SYSTEMD.exists():
        pytest.fail(f"{SYSTEMD} is not installed (apt install systemd)")
    scratch = tmp_path / "ns"
    scratch.mkdir()
    before = host_fingerprint()
    cgroup = own_cgroup2() / f"realsystemd-{uuid.uuid4().hex[:8]}"
    cgroup.mkdir()
    log = tmp_path / "boot.log"
    # `ip netns exec` execs its command (no fork): the Popen's pid stays unshare's, whose child is the init
    enter = ["ip", "netns", "exec", netns] if netns else []
    net = [] if netns else ["--net"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *enter,
             "unshare", "--cgroup", "--pid", "--fork", "--kill-child=SIGKILL", "--mount", "--uts", "--ipc",
             *net, "--propagation", "private", str(BOOT), str(stage), str(scratch),
             str(ROOT), sysconfig.get_paths()["purelib"]],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    booted: Booted | None = None
    try:
        booted = Booted(proc, cgroup, log)
        # the boot script execs systemd once the root is ready (pivoted); systemctl needs its private socket
        wait_until(lambda: booted.is_systemd() and booted.ns_file("/run/systemd/private").exists(),
                   "systemd's private socket", timeout=60)
        state = booted.run("systemctl", "is-system-running", "--wait", check=False, timeout=120).stdout
        state = state.strip()
        failed = booted.run("systemctl", "--failed", check=False).stdout
        assert state == "running", f"boot ended {state}:\n{failed}"
        yield booted
    finally:
        if booted is not None:
            booted.teardown()
        else:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            cgroup.rmdir()
    # nothing left behind on the host
    assert not host_mounts_under(tmp_path), host_mounts_under(tmp_path)
    assert not cgroup.exists()
    assert host_fingerprint() == before


def start_and_wait(b: Booted, unit: str) -> dict[str, str]:
    b.run("systemctl", "start", unit, timeout=300)
    return b.show(unit, "ActiveState", "SubState", "MainPID", "NRestarts", "Result")


def proc_status(b: Booted, pid: str) -> dict[str, str]:
    text = b.run("cat", f"/proc/{pid}/status").stdout
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def agent_status(b: Booted, *, groups: str) -> subprocess.CompletedProcess[str]:
    """`edgeagent status --json` run as nobody with the given supplementary groups."""
    return b.run("setpriv", "--reuid=nobody", "--regid=nogroup", f"--groups={groups}", "--",
                 "edgeagent", "status", "--json", check=False)
