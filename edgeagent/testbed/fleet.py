"""A fleet of simulated devices on one machine: each its own swtpm (its own EK, certified by one shared local
CA as a vendor's would be), its own state directory, identity and `edgeagent agent` process, all enrolling
against one cluster side. For `edgeagent bench fleet` and the fleet tests.

Why the TPMs are made once per machine: swtpm_setup generates an EK and its certificate per device (about
0.7 s each); a device's EK is its factory identity, so reusing it across runs is what a re-flashed device
does. Each run copies the states, so every run starts from a TPM that has never seen an AK.

Also here: what a fleet costs, read from /proc (no root needed): CPU seconds and resident memory per process
group, summed per role (devices, swtpm, Keylime, the controller, the control plane).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeagent.errors import EdgeAgentError
from edgeagent.testbed import procs, worker
from edgeagent.testbed.agent_process import AgentProcess

TPM_CACHE_VERSION = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cache_root() -> Path:
    cache = Path(os.environ.get("EDGEAGENT_CACHE", Path.home() / ".cache" / "edgeagent"))
    return cache / f"fleet-tpms-v{TPM_CACHE_VERSION}"


@dataclasses.dataclass(frozen=True)
class FleetTpm:
    """A device's manufactured TPM: its state template and its EK certificate (DER)."""

    template: Any  # edgeagent.tpm.swtpm.SoftwareTpm, never started after manufacture
    ek_cert: bytes


def manufacture(n: int, *, root: Path | None = None) -> tuple[Path, list[FleetTpm]]:
    """``n`` TPMs with EKs of their own under one local CA (made and kept in ``root``, the per-machine
    cache by default); returns the CA certificate and the TPMs. Only the missing ones are made, one at a
    time: swtpm_localca's serial-number file does not take concurrent writers ("Error getting next
    filename" when two setups ran at once)."""
    from edgeagent.tpm.swtpm import SoftwareTpm

    root = root or cache_root()
    ca_dir = root / "ca"
    root.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> FleetTpm:
        workdir = root / f"device-{i:04d}"
        tpm = SoftwareTpm(workdir, ca_dir=ca_dir)
        ek_file = workdir / "ek.der"
        if not (tpm.is_set_up and ek_file.is_file()):
            tpm.setup()
            ek_file.write_bytes(_read_ek_cert(tpm, workdir))
        return FleetTpm(tpm, ek_file.read_bytes())

    return ca_dir / "issuercert.pem", [one(i) for i in range(n)]


def _read_ek_cert(template: Any, workdir: Path) -> bytes:
    from edgeagent.tpm import Tpm
    from edgeagent.tpm import identity as tpm_identity

    probe = template.clone(workdir / "probe").start()
    try:
        with Tpm.open(probe.tcti) as t:
            cert = tpm_identity.load_ek(t).cert
    finally:
        probe.stop()
        import shutil

        shutil.rmtree(workdir / "probe", ignore_errors=True)
    if cert is None:
        raise EdgeAgentError(f"the software TPM in {workdir} has no EK certificate")
    return bytes(cert)


class FleetDevice:
    """One device of the fleet: a copy of its manufactured TPM running, and its agent (`edgeagent agent` as
    systemd runs it, attestation and the node credential only) once ``boot`` is called."""

    def __init__(self, root: Path, name: str, tpm: FleetTpm, keylime: Any, *,
                 certificate_seconds: int = 3600) -> None:
        self.root = root
        self.name = name
        self.agent_uuid = f"{name}-agent"
        self.ek_cert = tpm.ek_cert
        self.port = procs.free_listen_port()
        self.tpm = tpm.template.clone(root / "swtpm")
        root.mkdir(parents=True, exist_ok=True)
        self.config = worker.write_config(root, keylime, node=name, port=self.port,
                                          certificate_seconds=certificate_seconds)
        self.kubeconfig = worker.kubeconfig_path(root)
        self.agent: AgentProcess | None = None
        self.booted_at = 0.0
        """time.time() at which the agent process was started."""

    def power_on(self) -> None:
        """The TPM, as firmware has it before the OS boots."""
        self.tpm.start()

    def boot(self) -> None:
        """Starts the agent (its lean service process, as `edgeagent agent` execs into)."""
        self.agent = AgentProcess(self.config, self.root / "agent.sock", self.root / "agent.log",
                                  tcti=self.tpm.tcti)
        self.booted_at = time.time()
        self.agent.start(lean=True)

    def credential_at(self) -> float | None:
        """When the agent wrote the node's kubeconfig (its mtime: the file is written atomically), or None."""
        try:
            return self.kubeconfig.stat().st_mtime
        except FileNotFoundError:
            return None

    def exited(self) -> int | None:
        return None if self.agent is None else self.agent.exited()

    def tamper(self) -> None:
        """What an attacker's change to a measured file does once the agent re-measures (SIGHUP)."""
        (self.root / worker.MEASURED_FILE).write_text("mode = tampered\n")
        if self.agent is not None:
            self.agent.send(signal.SIGHUP)

    def pgids(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {"swtpm": []}
        if self.tpm.pid is not None:
            out["swtpm"].append(self.tpm.pid)
        if self.agent is not None and self.agent.proc is not None:
            out["devices"] = [self.agent.pid]
        return out

    def stop(self) -> None:
        if self.agent is not None:
            with contextlib.suppress(Exception):
                self.agent.stop(signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.tpm.stop()


# ---------------------------------------------------------------- what the processes cost
@dataclasses.dataclass
class Usage:
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    processes: int = 0


def sample(groups: Mapping[str, Iterable[int]]) -> dict[str, Usage]:
    """CPU seconds (user + system, including reaped children) and resident memory of every live process
    whose process group is one of ``groups[role]``, summed per role."""
    role_of = {pgid: role for role, pgids in groups.items() for pgid in pgids}
    out = {role: Usage() for role in groups}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        pgid = int(fields[2])
        role = role_of.get(pgid)
        if role is None:
            continue
        u = out[role]
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
        u.cpu_seconds += ticks / CLOCK_TICKS
        u.rss_bytes += int(fields[21]) * PAGE
        u.processes += 1
    return out


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores; /proc/stat without idle and
    iowait): the difference to the testbed's own figures is what else ran meanwhile."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def delta(before: Mapping[str, Usage], after: Mapping[str, Usage]) -> dict[str, float]:
    """CPU seconds each role spent between two samples (a role's processes that started in between count
    from zero)."""
    return {role: after[role].cpu_seconds - (before[role].cpu_seconds if role in before else 0.0)
            for role in after}


def audit_policy(users: Sequence[str]) -> str:
    """A kube-apiserver audit policy recording only ``users``' requests (metadata only): what the fleet
    bench counts the controller's API requests with, from the API server's side."""
    names = ", ".join(f'"{u}"' for u in users)
    return ("apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"RequestReceived\"]\nrules:\n"
            f"- level: Metadata\n  users: [{names}]\n- level: None\n")


def count_audit(log: Path, *, since: float = 0.0, until: float | None = None) -> dict[str, int]:
    """Requests in a kube-apiserver JSON audit log by "verb resource" (ResponseComplete events whose
    stageTimestamp lies in [since, until), unix seconds)."""
    import datetime
    import json

    counts: dict[str, int] = {}
    if not log.is_file():
        return counts
    for line in log.read_text(errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("stage") != "ResponseComplete":  # a watch ends with one too (counted when it ends)
            continue
        stamp = ev.get("stageTimestamp") or ev.get("requestReceivedTimestamp")
        try:
            t = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except (AttributeError, ValueError):
            continue
        if t < since or (until is not None and t >= until):
            continue
        ref = ev.get("objectRef") or {}
        key = f"{ev.get('verb')} {ref.get('resource') or ev.get('requestURI', '?')}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def wait_all(devices: Sequence[FleetDevice], *, timeout: float,
             interval: float = 0.1) -> tuple[dict[str, float], dict[str, str]]:
    """Waits until every device has its credential, has failed (its agent exited) or ``timeout`` passed:
    (credential time per device, unix seconds; why each of the others has none)."""
    done: dict[str, float] = {}
    failed: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(done) + len(failed) < len(devices):
        for d in devices:
            if d.name in done or d.name in failed:
                continue
            at = d.credential_at()
            if at is not None:
                done[d.name] = at
            elif d.exited() is not None:
                failed[d.name] = f"the agent exited with {d.exited()} (see {d.root / 'agent.log'})"
        if len(done) + len(failed) < len(devices):
            if time.monotonic() > deadline:
                for d in devices:
                    if d.name not in done and d.name not in failed:
                        last = _last_line(d.root / "agent.log")
                        failed[d.name] = f"no credential after {timeout:.0f} s: {last}"
                break
            time.sleep(interval)
    return done, failed


def _last_line(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1][-200:] if lines else "empty log"
