"""`edgeagent bench fleet -N 10,25,50,100`: N devices boot at once (as after a power cut) and enroll against
one Keylime verifier + registrar and one attestation controller; then the steady state, one device's tamper
among N, and all N revoked at once.

Each device is separate processes, as separate devices are: its own swtpm (its own EK, `testbed.fleet`) and
its own `edgeagent agent` (the lean service process, attestation and the node credential only). The
controller runs as its image runs it (`python -m edgeagent.cli.cluster`, its own user), so its CPU, memory and
API requests are its own: CPU and memory from /proc per process group, requests from the API server's audit
log (only the controller's user is audited).

Figures per N, all from one run:
- boot -> credential per device (agent started -> kubeconfig written): p50, p90, p99, max;
- the fleet's wall time (first boot -> last credential) against its CPU bound (CPU seconds of every process
  of the testbed in that window / cores): a ratio near 1 means nothing serialises, polls or sleeps;
- the controller's share of all CPU, its resident memory (and, across N, memory per additional device),
  the verifier's CPU and memory, the controller's API requests (enrollment, and per second when steady);
- steady state (after ``settle`` seconds): attestations per second the verifier completes (its own
  attestation counts), the effective quote interval per device, and every role's CPU use;
- one device tampered (a measured file changed, SIGHUP): tamper -> its RBAC grant deleted, and whether any
  other device's grant or EdgeNode phase changed meanwhile or its attestations stopped;
- every other device tampered at once: tamper -> the last grant deleted.
Threads: a watch thread records every grant (ClusterRoleBinding edgeagent-node-*) and EdgeNode change with its
arrival time; everything else runs in the caller's thread.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeagent.bench.harness import Case, Report
from edgeagent.errors import EdgeAgentError

SIZES = (10, 25, 50, 100)
CPU_BOUND_TARGET = 1.25
CONTROLLER_CPU_SHARE_TARGET = 10.0
CONTROLLER_KIB_PER_DEVICE_TARGET = 100.0
BINDING_PREFIX = "edgeagent-node-"


def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


class Recorder:
    """Every change of the nodes' grants and EdgeNodes as it arrives (one watch thread per kind)."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.events: list[tuple[float, str, str, str]] = []
        """(arrival unix time, kind "binding"/"edgenode", event type or phase, node name)"""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,), name=f"fleet-watch-{k}", daemon=True)
                         for k in ("binding", "edgenode")]

    def start(self) -> Recorder:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self, kind: str) -> None:
        from kubernetes import client as k8s
        from kubernetes import watch

        from edgeagent.cloud import crd

        rv = ""
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                if kind == "binding":
                    fn: Any = k8s.RbacAuthorizationV1Api(self.api).list_cluster_role_binding
                    args: tuple[Any, ...] = ()
                else:
                    fn = k8s.CustomObjectsApi(self.api).list_cluster_custom_object
                    args = (crd.GROUP, crd.VERSION, crd.PLURAL)
                for ev in w.stream(fn, *args, resource_version=rv, timeout_seconds=30,
                                   allow_watch_bookmarks=False):
                    at = time.time()
                    obj = ev["object"]
                    if kind == "binding":
                        name = obj.metadata.name
                        rv = obj.metadata.resource_version
                        if not name.startswith(BINDING_PREFIX):
                            continue
                        record = (at, kind, ev["type"], name.removeprefix(BINDING_PREFIX))
                    else:
                        rv = obj["metadata"]["resourceVersion"]
                        phase = (obj.get("status") or {}).get("phase") or "-"
                        record = (at, kind, phase if ev["type"] != "DELETED" else "DELETED",
                                  obj["metadata"]["name"])
                    with self._lock:
                        self.events.append(record)
                    if self._stop.is_set():
                        break
            except Exception:  # a closed or expired watch: start again (from now on a 410)
                rv = ""
                time.sleep(0.2)

    def first(self, kind: str, what: str, name: str, *, since: float) -> float | None:
        with self._lock:
            for at, k, w, n in self.events:
                if k == kind and w == what and n == name and at >= since:
                    return at
        return None

    def since(self, t: float) -> list[tuple[float, str, str, str]]:
        with self._lock:
            return [e for e in self.events if e[0] >= t]


def run(config: Any, *, repeat: int = 1, sizes: Sequence[int] = SIZES, quote_interval: float = 2.0,
        settle: float = 10.0, window: float = 10.0, plot: Path | None = None,
        keep: Path | None = None, agent_notifications: bool = True, out: Path | None = None,
        verifier_workers: int = 1) -> Report:
    """``keep``: run in this directory and leave it (every process's log) instead of a temporary one;
    ``out``: the JSON report, rewritten after each size (a long run keeps what it measured). A size that
    fails is recorded (``per_n[N]["error"]``) and the next one runs; ``verifier_workers``: Keylime's
    verifier processes (its num_workers; each sends at most 10 requests to agents at once, tornado's
    default AsyncHTTPClient)."""
    from edgeagent.testbed import fleet

    if not sizes or min(sizes) < 1:
        raise EdgeAgentError("fleet sizes must be positive numbers, e.g. -N 10,25,50,100")
    report = Report("fleet")
    cores = os.cpu_count() or 1
    ca, tpms = fleet.manufacture(max(sizes))
    load_before = os.getloadavg()
    report.meta.update({"sizes": list(sizes), "quote_interval_s": quote_interval, "cores": cores,
                        "settle_s": settle, "window_s": window, "agent_notifications": agent_notifications,
                        "verifier_workers": verifier_workers, "loadavg_before": load_before,
                        "machine": _machine(), "per_n": {}})
    per_n: dict[int, dict[str, Any]] = report.meta["per_n"]
    with contextlib.ExitStack() as stack:
        tmp = keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeagent-bench-fleet-")))
        for n in sizes:
            per_n[n] = {}
            try:
                _one_size(tmp / f"n{n}", n, ca, tpms[:n], quote_interval=quote_interval,
                          agent_notifications=agent_notifications, settle=settle, window=window,
                          verifier_workers=verifier_workers,
                          cores=cores, report=report, out=per_n[n])
            except (EdgeAgentError, TimeoutError, OSError) as e:
                per_n[n]["error"] = str(e)  # what was measured before stays
                report.meta.setdefault("notes", []).append(f"N={n}: {e}")
            if out is not None:
                report.write_json(out)
    _memory_slope(report, per_n)
    if plot is not None:
        _plot(per_n, plot, quote_interval)
        report.meta["plot"] = str(plot)
    return report


def _machine() -> dict[str, Any]:
    mem = {}
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("MemTotal", "MemAvailable"):
                mem[k] = v.strip()
    return {"cpus": os.cpu_count(), **mem}


def _one_size(root: Path, n: int, ca: Path, tpms: Sequence[Any], *, quote_interval: float, settle: float,
              window: float, cores: int, report: Report, agent_notifications: bool,
              out: dict[str, Any], verifier_workers: int = 1) -> dict[str, Any]:
    from edgeagent.testbed import fleet
    from edgeagent.testbed.cluster_side import CONTROLLER_USER, ClusterSide, pin_device

    side = ClusterSide(root / "cluster", [ca], controller_process=True, audit_users=[CONTROLLER_USER],
                       keylime_settings={"quote_interval": quote_interval,
                                         "agent_notifications": agent_notifications,
                                         "extra": {"verifier": {"num_workers": str(verifier_workers),
                                                                "max_workers": str(verifier_workers)}}})
    devices: list[fleet.FleetDevice] = []
    recorder: Recorder | None = None
    try:
        side.start(timeout=60)
        keylime, cluster = side.keylime, side.cluster
        assert side.controller_proc is not None
        groups: dict[str, list[int]] = {
            "controller": [side.controller_proc.pid],
            "keylime verifier": [keylime.verifier_proc.pid] if keylime.verifier_proc else [],
            "keylime registrar": [keylime.registrar_proc.pid] if keylime.registrar_proc else [],
            "kube-apiserver": [cluster.apiserver.pid] if cluster.apiserver else [],
            "etcd": [cluster.etcd.pid] if cluster.etcd else [],
            "kube-controller-manager": [cluster.kcm.pid] if cluster.kcm else [],
            "swtpm": [], "devices": [],
        }
        idle = fleet.sample(groups)
        for i, tpm in enumerate(tpms):
            d = fleet.FleetDevice(root / f"device-{i:03d}", f"fleet-{i:03d}", tpm, keylime)
            devices.append(d)
            d.power_on()
            groups["swtpm"] += d.pgids()["swtpm"]
            pin_device(side.api, d.name, ek_cert=d.ek_cert, agent_uuid=d.agent_uuid,
                       agent_address=f"127.0.0.1:{d.port}", register_node=False)
        recorder = Recorder(side.api).start()
        time.sleep(0.5)  # the controller has seen the EdgeNodes (Pending, waiting for registration)
        before = fleet.sample(groups)
        machine0 = fleet.machine_cpu_seconds()
        timeline = _Timeline().start()
        for d in devices:  # the power cut is over: every device boots at once
            d.boot()
            groups["devices"] += d.pgids()["devices"]
        t0 = min(d.booted_at for d in devices)
        done, failed = fleet.wait_all(devices, timeout=max(300.0, 6.0 * n))
        out["failed"] = failed
        report.add(Case(f"N={n}: enrollments that failed", [float(len(failed))], unit="devices", target=0.0))
        if not done:
            raise EdgeAgentError(f"no device of {n} enrolled: {next(iter(failed.values()))}")
        t_last = max(done.values())
        after = fleet.sample(groups)
        machine = fleet.machine_cpu_seconds() - machine0
        timeline.stop()
        spent = fleet.delta(before, after)
        total_cpu = sum(spent.values())
        times = [done[d.name] - d.booted_at for d in devices if d.name in done]
        wall = t_last - t0
        bound = total_cpu / cores
        audit = fleet.count_audit(cluster.audit_log, since=t0, until=t_last + 1.0)
        out.update({
            "enroll_s": {"p50": percentile(times, 0.5), "p90": percentile(times, 0.9),
                         "p99": percentile(times, 0.99), "max": max(times), "all": times},
            "wall_s": wall, "cpu_bound_s": bound, "cpu_s": spent, "cpu_total_s": total_cpu,
            "machine_cpu_s": machine, "other_cpu_s": max(0.0, machine - total_cpu),
            "machine_bound_s": machine / cores,
            "busy_timeline": timeline.points,
            "enrollments_per_s": n / wall if wall > 0 else 0.0,
            "controller_cpu_share_pct": 100.0 * spent["controller"] / total_cpu if total_cpu else 0.0,
            "rss_mib": {role: u.rss_bytes / 2**20 for role, u in after.items()},
            "rss_idle_mib": {role: u.rss_bytes / 2**20 for role, u in idle.items()},
            "controller_requests_enroll": audit,
            "controller_requests_enroll_total": sum(audit.values()),
        })
        label = f"N={n}"
        report.add(Case(f"{label}: boot -> credential (per device)", times, target=None))
        report.add(Case(f"{label}: CPU bound (all CPU s / {cores} cores)", [bound]))
        report.add(Case(f"{label}: first boot -> last credential", [wall],
                        baseline=f"{label}: CPU bound (all CPU s / {cores} cores)",
                        target=CPU_BOUND_TARGET, target_is_ratio=True))
        report.add(Case(f"{label}: CPU of processes outside the testbed meanwhile", [out["other_cpu_s"]]))
        report.add(Case(f"{label}: machine CPU bound (every process's CPU s / {cores} cores)",
                        [machine / cores]))
        report.add(Case(f"{label}: first boot -> last credential vs the machine's bound", [wall],
                        baseline=f"{label}: machine CPU bound (every process's CPU s / {cores} cores)"))
        report.add(Case(f"{label}: enrollments per second", [out["enrollments_per_s"]], unit="/s",
                        higher_is_better=True))
        report.add(Case(f"{label}: controller share of all CPU", [out["controller_cpu_share_pct"]], unit="%",
                        target=CONTROLLER_CPU_SHARE_TARGET))
        report.add(Case(f"{label}: controller API requests per enrollment",
                        [out["controller_requests_enroll_total"] / n], unit="req"))
        report.add(Case(f"{label}: verifier CPU seconds (enrollment)", [spent["keylime verifier"]], unit="s"))

        # ---- steady state
        time.sleep(settle)
        counts0 = _attestations(keylime)
        s0 = fleet.sample(groups)
        w0 = time.time()
        time.sleep(window)
        w1 = time.time()
        s1 = fleet.sample(groups)
        counts1 = _attestations(keylime)
        steady = fleet.delta(s0, s1)
        done_att = sum(counts1.get(a, 0) - counts0.get(a, 0) for a in counts1)
        rate = done_att / (w1 - w0)
        steady_audit = fleet.count_audit(cluster.audit_log, since=w0, until=w1)
        out.update({
            "steady_attestations_per_s": rate,
            "steady_interval_s": n / rate if rate else None,
            "steady_cpu_pct": {role: 100.0 * v / (w1 - w0) for role, v in steady.items()},
            "steady_cpu_busy_pct": 100.0 * sum(steady.values()) / ((w1 - w0) * cores),
            "steady_controller_requests_per_s": sum(steady_audit.values()) / (w1 - w0),
            "steady_controller_requests": steady_audit,
            "controller_rss_mib_steady": s1["controller"].rss_bytes / 2**20,
        })
        report.add(Case(f"{label}: steady attestations per second", [rate], unit="/s", higher_is_better=True))
        report.add(Case(f"{label}: steady effective quote interval per device",
                        [out["steady_interval_s"] or 0.0], target=quote_interval + 1.0))
        report.add(Case(f"{label}: steady machine CPU busy", [out["steady_cpu_busy_pct"]], unit="%"))
        report.add(Case(f"{label}: steady controller API requests per second",
                        [out["steady_controller_requests_per_s"]], unit="/s"))

        # ---- one device tampered among N
        enrolled = [d for d in devices if d.name in done]
        victim, others = enrolled[0], enrolled[1:]
        counts0 = _attestations(keylime)
        t_tamper = time.time()
        victim.tamper()
        denied = _wait_event(recorder, "binding", "DELETED", victim.name, since=t_tamper, timeout=60)
        grace = time.time() + quote_interval + 1.0
        while time.time() < grace:
            time.sleep(0.1)
        counts1 = _attestations(keylime)
        disturbed = sorted({name for _, kind, what, name in recorder.since(t_tamper)
                            if name != victim.name and (kind == "binding" or what != "Enrolled")})
        stalled = [d.name for d in others if counts1.get(d.agent_uuid, 0) <= counts0.get(d.agent_uuid, 0)]
        out.update({"tamper_to_denied_s": denied - t_tamper, "disturbed": disturbed, "stalled": stalled})
        report.add(Case(f"{label}: one tampered -> its access denied", [denied - t_tamper],
                        target=quote_interval + 1.0))
        report.add(Case(f"{label}: other devices disturbed meanwhile", [float(len(disturbed) + len(stalled))],
                        unit="devices", target=0.0))

        # ---- the verifier revokes all the others at once
        if others:
            t_all = time.time()
            for d in others:
                d.tamper()
            cut = [_wait_event(recorder, "binding", "DELETED", d.name, since=t_all,
                               timeout=max(120.0, 3.0 * len(others))) - t_all
                   for d in others]
            out["all_revoked_s"] = {"p50": percentile(cut, 0.5), "max": max(cut)}
            report.add(Case(f"{label}: all tampered -> each device's access denied", cut))
            report.add(Case(f"{label}: all tampered -> the last access denied", [max(cut)]))
        out["loadavg_after"] = os.getloadavg()
    finally:
        if recorder is not None:
            recorder.stop()
        for d in devices:
            d.stop()
        side.stop()
    return out


class _Timeline:
    """The machine's busy fraction every half second (one thread, ``fleet-timeline``): shows where a fleet
    run waits instead of working."""

    def __init__(self, period: float = 0.5) -> None:
        self.period = period
        self.points: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-timeline", daemon=True)

    def start(self) -> _Timeline:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        from edgeagent.testbed import fleet

        cores = os.cpu_count() or 1
        t0 = time.monotonic()
        last_t, last_cpu = t0, fleet.machine_cpu_seconds()
        while not self._stop.wait(self.period):
            now, cpu = time.monotonic(), fleet.machine_cpu_seconds()
            self.points.append((round(now - t0, 2), round((cpu - last_cpu) / ((now - last_t) * cores), 3)))
            last_t, last_cpu = now, cpu


def _attestations(keylime: Any) -> dict[str, int]:
    """Each agent's completed attestations, from the verifier's bulk view (one request)."""
    code, body = keylime.request("GET", f"{keylime.verifier_url}/v2.1/agents/?bulk=true")
    if code != 200:
        raise EdgeAgentError(f"verifier bulk GET answered {code}")
    results = (body or {}).get("results") or {}
    return {uuid: int(r.get("attestation_count") or 0) for uuid, r in results.items()
            if isinstance(r, dict)}


def _wait_event(recorder: Recorder, kind: str, what: str, name: str, *, since: float,
                timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        at = recorder.first(kind, what, name, since=since)
        if at is not None:
            return at
        if time.monotonic() > deadline:
            raise EdgeAgentError(f"no {kind} {what} for {name} within {timeout:.0f} s")
        time.sleep(0.02)


def _memory_slope(report: Report, per_n: dict[int, dict[str, Any]]) -> None:
    """The controller's resident memory per additional device: least-squares slope over the sizes."""
    points = [(n, v["rss_mib"]["controller"]) for n, v in per_n.items() if "rss_mib" in v]
    report.meta["controller_rss_mib_by_n"] = dict(points)
    if len(points) < 2:
        return
    xs, ys = [float(p[0]) for p in points], [p[1] * 1024.0 for p in points]
    slope = statistics.linear_regression(xs, ys).slope
    report.meta["controller_kib_per_device"] = slope
    report.add(Case("controller memory per additional device (RSS slope over N)", [slope], unit="KiB",
                    target=CONTROLLER_KIB_PER_DEVICE_TARGET))


def _plot(per_n: dict[int, dict[str, Any]], path: Path, quote_interval: float) -> None:
    """Enrollment curves and the controller's cost against N (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(n for n, v in per_n.items() if "wall_s" in v)
    if not ns:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, style in (("p50", "o-"), ("p99", "s-")):
        a.plot(ns, [per_n[n]["enroll_s"][key] for n in ns], style, label=f"boot -> credential {key}")
    a.plot(ns, [per_n[n]["wall_s"] for n in ns], "^-", label="whole fleet enrolled")
    a.plot(ns, [per_n[n]["cpu_bound_s"] for n in ns], "k--", label="CPU bound: the testbed's CPU s / cores")
    a.plot(ns, [per_n[n]["machine_bound_s"] for n in ns], "k:", label="the whole machine's CPU s / cores")
    a.set_xlabel("devices booting at once (N)")
    a.set_ylabel("seconds")
    a.set_title(f"Enrollment (quote interval {quote_interval:g} s)")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    b.plot(ns, [per_n[n]["rss_mib"]["controller"] for n in ns], "o-", label="controller RSS (MiB)")
    b.plot(ns, [per_n[n]["rss_mib"]["keylime verifier"] for n in ns], "s-", label="verifier RSS (MiB)")
    b.plot(ns, [per_n[n]["controller_cpu_share_pct"] for n in ns], "^-", label="controller % of all CPU")
    b.set_xlabel("N")
    b.set_title("Cluster side cost")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
