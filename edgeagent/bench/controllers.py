"""`edgeagent bench controllers`: the ring benchmark of on-demand Wasm controllers (CloudNet 2022), redone.

For N = 10, 50, 100 ring controllers (controller i copies a nonce from namespace i to namespace i+1, over N+1
namespaces: without the wrap-around a round ends visibly, when namespace N has the nonce, and the next round's
nonce cannot chase the previous one) against a real etcd + kube-apiserver started for the run, four ways of
running them:

  (a) the Wasm host, idle controllers swapped to disk     (b) the Wasm host, every controller instantiated
  (c) one Python process per controller (kubernetes client; the container-style baseline)
  (d) every controller a plain Python object in one process, sharing one watch (no isolation at all)

Memory is PSS (/proc/PID/smaps_rollup) summed over every process of a variant and its children, so pages a
variant's processes share are counted once; etcd and kube-apiserver serve every variant and are left out.
Also measured: ring round time (nonce written into namespace 0 -> seen in namespace N-1), wake latency of a
swapped controller (event received by the host -> controller running, from the host's own timestamps), and
the memory each additional swapped controller costs. Targets from issue 5 are marked in the report.

The ring's objects are Ring custom resources (edgeagent.io/v1alpha1, controllers/ring/ring-crd.json),
installed into the benchmark's cluster, as in the paper.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import edgeagent
from edgeagent.bench.harness import Case, Report
from edgeagent.config import AgentConfig
from edgeagent.errors import EdgeAgentError, PeerUnreachable
from edgeagent.kube.api import KubeApi, connect
from edgeagent.testbed.kube import KubeCluster
from edgeagent.wasm import ModuleCache, Runtime

SIZES = (10, 50, 100)
TARGET_N = 50
IDLE_TIMEOUT = 0.5  # seconds: short, so the benchmark sees every controller asleep between rounds
LABEL = "edgeagent.io/ring-bench"
RING_GROUP, RING_VERSION, RING_PLURAL = "edgeagent.io", "v1alpha1", "rings"
RINGS = f"/apis/{RING_GROUP}/{RING_VERSION}/{RING_PLURAL}"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
VARIANTS = {
    "a": "wasm host, swapping",
    "b": "wasm host, no swapping",
    "c": "python process per controller",
    "d": "python objects, one process",
}
MiB = 1 << 20


def controllers_dir() -> Path:
    return Path(edgeagent.__file__).resolve().parent.parent / "controllers"


def ring_module() -> Path:
    """controllers/build/ring.wasm of the source tree (`make -C controllers`)."""
    path = controllers_dir() / "build" / "ring.wasm"
    if not path.is_file():
        raise EdgeAgentError(f"{path} missing: run `make -C controllers`")
    return path


def install_ring_crd(api: KubeApi, *, timeout: float = 30.0) -> None:
    """Creates the Ring CRD (controllers/ring/ring-crd.json) and waits until the API server serves it."""
    crd = json.loads((controllers_dir() / "ring" / "ring-crd.json").read_text())
    resp = api.call("POST", CRDS, body=crd)
    if resp.status not in (201, 409):
        raise EdgeAgentError(f"cannot create the Ring CRD: HTTP {resp.status}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = api.get_json(f"{CRDS}/{crd['metadata']['name']}").get("status") or {}
        conditions = status.get("conditions") or []
        established = any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
        if established and api.call("GET", RINGS, query=[("limit", "1")]).status == 200:
            return
        time.sleep(0.1)
    raise EdgeAgentError(f"the Ring CRD was not established after {timeout:.0f} s")


# ---------------------------------------------------------------------------------------------- memory
def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (through /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def pss_bytes(pids: list[int]) -> int:
    """Summed PSS of ``pids`` and their descendants."""
    total = 0
    for root in pids:
        for pid in process_tree(root):
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            total += int(line.split()[1]) * 1024
                            break
            except OSError:
                continue
    return total


# ---------------------------------------------------------------------------------------------- the ring
class RingWatch:
    """The benchmark's own view of the ring: the newest nonce per namespace, from one watch."""

    def __init__(self, api: KubeApi, selector: str) -> None:
        self.api = api
        self.selector = selector
        self.nonces: dict[str, str] = {}
        self._cond = threading.Condition()
        self._stop = False
        body = api.get_json(RINGS, query=[("labelSelector", selector)])
        for item in body.get("items", []):
            self.nonces[item["metadata"]["namespace"]] = (item.get("spec") or {}).get("nonce", "")
        self._rv = body["metadata"]["resourceVersion"]
        self._resp: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-ring-watch")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            query = [
                ("watch", "true"),
                ("labelSelector", self.selector),
                ("resourceVersion", self._rv),
                ("timeoutSeconds", "300"),
            ]
            try:
                self._resp, lines = self.api.watch_lines(RINGS, query=query, read_timeout=330)
                for line in lines:
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    meta = obj.get("metadata") or {}
                    self._rv = meta.get("resourceVersion", self._rv)
                    if ev.get("type") in ("ADDED", "MODIFIED"):
                        with self._cond:
                            self.nonces[meta.get("namespace", "")] = (obj.get("spec") or {}).get("nonce", "")
                            self._cond.notify_all()
            except (PeerUnreachable, EdgeAgentError):
                if not self._stop:
                    time.sleep(0.2)

    def wait(self, namespace: str, nonce: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.nonces.get(namespace) != nonce:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        self._stop = True
        if self._resp is not None:
            with contextlib.suppress(Exception):  # closing a stream under its reader; it is closed either way
                self._resp.shutdown()


def make_ring(api: KubeApi, n: int, tag: str) -> list[str]:
    """N+1 namespaces with a Ring each: controller i copies from namespace i to namespace i+1."""
    names = [f"ring-{tag}-{n}-{i}" for i in range(n + 1)]
    for ns in names:
        resp = api.call("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
        if resp.status not in (201, 409):
            raise EdgeAgentError(f"cannot create namespace {ns}: HTTP {resp.status}")
        ring = {
            "apiVersion": f"{RING_GROUP}/{RING_VERSION}",
            "kind": "Ring",
            "metadata": {"name": "ring", "labels": {LABEL: tag}},
            "spec": {},  # no nonce yet ("" would reach the API server as null from the official client)
        }
        resp = api.call("POST", f"/apis/{RING_GROUP}/{RING_VERSION}/namespaces/{ns}/{RING_PLURAL}", body=ring)
        if resp.status not in (201, 409):
            raise EdgeAgentError(f"cannot create the Ring in {ns}: HTTP {resp.status}")
    return names


def ring_manifests(directory: Path, names: list[str], module: Path, tag: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, ns in enumerate(names[:-1]):
        nxt = names[i + 1]
        manifest = {
            "name": f"ring-{i}",
            "module": str(module),
            "memory_limit": "1MiB",
            "idle_timeout": IDLE_TIMEOUT,
            "config": {"next": nxt},  # ring.wasm's default kind: Ring, nonce in spec
            "watches": [
                {
                    "group": RING_GROUP,
                    "version": RING_VERSION,
                    "kind": "Ring",
                    "plural": RING_PLURAL,
                    "namespace": ns,
                    "label_selector": f"{LABEL}={tag}",
                }
            ],
            "grants": [
                {
                    "verbs": ["patch"],
                    "api_groups": [RING_GROUP],
                    "resources": [RING_PLURAL],
                    "resource_names": ["ring"],
                    "namespaces": [nxt],
                }
            ],
        }
        (directory / f"ring-{i}.controller.json").write_text(json.dumps(manifest))


# ---------------------------------------------------------------------------------------------- variants
class Running:
    """The processes of one variant, and how to tell that its controllers are ready / asleep."""

    def __init__(self, procs: list[subprocess.Popen[bytes]], status: Path | None = None) -> None:
        self.procs = procs
        self.status_path = status

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def status(self) -> dict[str, Any]:
        assert self.status_path is not None
        try:
            return json.loads(self.status_path.read_bytes())
        except (OSError, json.JSONDecodeError):
            return {}

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise EdgeAgentError(f"benchmark process {p.args!r} exited with {p.returncode}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def _wait(pred: Callable[[], bool], timeout: float, what: str, running: Running) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running.check_alive()
        if pred():
            return
        time.sleep(0.1)
    awake = [
        f"{c['name']}={c['state']} {c.get('last_error', '')}".strip()
        for c in running.status().get("controllers", [])
        if c["state"] != "swapped"
    ]
    detail = f" (not swapped: {', '.join(awake[:5])})" if awake else ""
    raise EdgeAgentError(f"benchmark: timed out after {timeout:.0f} s waiting for {what}{detail}")


def start_host(
    root: Path,
    kubeconfig: Path,
    names: list[str],
    module: Path,
    tag: str,
    *,
    swap: bool,
    log: Path,
    state: Path,
) -> Running:
    mdir = root / "manifests"
    ring_manifests(mdir, names, module, tag)
    cmd = [
        sys.executable,
        "-m",
        "edgeagent.cli.main",
        "--state-dir",
        str(state),
        "controllers",
        "run",
        str(mdir),
        "--kubeconfig",
        str(kubeconfig),
        "--no-verify",
    ] + ([] if swap else ["--no-swap"])
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    running = Running([proc], state / "controllers" / "status.json")

    def ready() -> bool:
        st = running.status()
        if st.get("pid") != proc.pid:  # the previous run's status, in the shared state dir
            return False
        ctls, watches = st.get("controllers", []), st.get("watches", [])
        return len(ctls) == len(names) - 1 and bool(watches) and all(w.get("synced") for w in watches)

    _wait(ready, 120, f"{len(names) - 1} Wasm controllers to start", running)
    return running


def start_python(kubeconfig: Path, names: list[str], tag: str, *, per_controller: bool, log: Path) -> Running:
    pairs = [f"{ns}:{names[i + 1]}" for i, ns in enumerate(names[:-1])]
    groups = [[p] for p in pairs] if per_controller else [pairs]
    procs = []
    with open(log, "ab") as err:
        for g in groups:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "edgeagent.bench.ring_py",
                        "--kubeconfig",
                        str(kubeconfig),
                        "--label",
                        f"{LABEL}={tag}",
                        *g,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                )
            )
    running = Running(procs)
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()  # "ready" once its watch cannot miss a change
        if line.strip() != b"ready":
            running.stop()
            raise EdgeAgentError(f"Python ring controller failed to start (see {log})")
    return running


def asleep(running: Running, since: float) -> bool:
    """Every controller swapped out, in a status the host wrote after ``since`` (time.time())."""
    status = running.status()
    ctls = status.get("controllers", [])
    fresh = float(status.get("updated") or 0) > since
    return fresh and bool(ctls) and all(c["state"] == "swapped" for c in ctls)


def measure_variant(
    variant: str,
    running: Running,
    ring: RingWatch,
    names: list[str],
    api: KubeApi,
    *,
    rounds: int,
    mem_samples: int,
) -> dict[str, list[float]]:
    """Ring rounds, then memory at rest (and, for the swapping host, wake latencies)."""
    round_times: list[float] = []
    last_round = time.time()
    for r in range(rounds):
        if variant == "a":
            _wait(functools.partial(asleep, running, last_round), 60, "every controller to swap out", running)
        else:
            time.sleep(0.2)
        nonce = f"{variant}-{uuid.uuid4().hex[:12]}-{r}"
        t0 = time.perf_counter()
        resp = api.call(
            "PATCH",
            f"/apis/{RING_GROUP}/{RING_VERSION}/namespaces/{names[0]}/{RING_PLURAL}/ring",
            body={"spec": {"nonce": nonce}},
            content_type="application/merge-patch+json",
        )
        if resp.status != 200:
            raise EdgeAgentError(f"benchmark: cannot start a round: HTTP {resp.status}")
        if not ring.wait(names[-1], nonce, timeout=120):
            running.check_alive()
            raise EdgeAgentError(
                f"benchmark: ring ({VARIANTS[variant]}, N={len(names) - 1}) did not complete a round"
            )
        round_times.append(time.perf_counter() - t0)
        last_round = time.time()
    if variant == "a":
        _wait(functools.partial(asleep, running, last_round), 60, "every controller to swap out", running)
    else:
        time.sleep(1.0)
    memory = []
    for _ in range(mem_samples):
        memory.append(pss_bytes(running.pids) / MiB)
        time.sleep(0.3)
    out = {"round": round_times, "memory": memory}
    if variant == "a":
        out["wake"] = [float(x) for x in running.status().get("wake_latency_s", [])]
    return out


# ---------------------------------------------------------------------------------------------- the report
def run(config: AgentConfig, *, repeat: int) -> Report:
    module = ring_module()
    rounds = max(3, min(repeat, 10))
    mem_samples = max(3, min(repeat, 5))
    report = Report(
        "controllers",
        meta={
            "sizes": list(SIZES),
            "rounds_per_variant": rounds,
            "memory_samples": mem_samples,
            "idle_timeout_s": IDLE_TIMEOUT,
            "variants": VARIANTS,
            "memory": "PSS from /proc/PID/smaps_rollup summed over each variant's processes and children; "
            "etcd and kube-apiserver are shared by every variant and excluded",
            "ring_objects": "Ring custom resources (controllers/ring/ring-crd.json)",
            "host_options": "`edgeagent controllers run` defaults: 2 workers, --max-active 16",
            "module_cache": "warm (compiled once before the runs, as on a device after its first start)",
        },
    )
    results: dict[tuple[str, int], dict[str, list[float]]] = {}
    tag = uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory(prefix="edgeagent-bench-controllers-") as tmp:
        root = Path(tmp)
        # A bare API server (no kube-controller-manager: the ring needs none) from the shared testbed.
        with KubeCluster(root / "cluster") as cluster:
            cluster.start(controller_manager=False)
            api = KubeApi(connect(cluster.kubeconfig))
            install_ring_crd(api)
            # One state dir for every host run, its compiled-module cache warmed here: a device compiles a
            # controller once, not at every start (compiling costs the compiling process ~15 MB of heap).
            state = root / "state"
            ModuleCache(state / "cache" / "wasm").load(Runtime.default(), module.read_bytes(), name="ring")
            ring = RingWatch(api, f"{LABEL}={tag}")
            try:
                for n in SIZES:
                    names = make_ring(api, n, tag)
                    for variant in VARIANTS:
                        vroot = root / f"{variant}-{n}"
                        vroot.mkdir()
                        log = vroot / "log"
                        if variant in ("a", "b"):
                            running = start_host(
                                vroot,
                                cluster.kubeconfig,
                                names,
                                module,
                                tag,
                                swap=variant == "a",
                                log=log,
                                state=state,
                            )
                        else:
                            running = start_python(
                                cluster.kubeconfig, names, tag, per_controller=variant == "c", log=log
                            )
                        try:
                            results[(variant, n)] = measure_variant(
                                variant, running, ring, names, api, rounds=rounds, mem_samples=mem_samples
                            )
                        finally:
                            running.stop()
            finally:
                ring.close()
    _add_cases(report, results)
    return report


def _name(kind: str, variant: str, n: int) -> str:
    return f"{kind} ({variant}) {VARIANTS[variant]}, N={n}"


def _add_cases(report: Report, results: dict[tuple[str, int], dict[str, list[float]]]) -> None:
    for n in SIZES:
        for v in ("c", "b", "d"):  # baselines first: ratios resolve against cases already in the report
            report.add(Case(_name("memory", v, n), results[(v, n)]["memory"], unit="MiB"))
        a = results[("a", n)]
        main = Case(_name("memory", "a", n), a["memory"], unit="MiB", baseline=_name("memory", "c", n))
        if n == TARGET_N:
            main.target, main.target_is_ratio = 0.10, True
            main.note = "target: <= 10% of (c) (paper: 36% of containers)"
        report.add(main)
        if n == TARGET_N:
            report.add(
                Case(
                    f"memory (a) vs (b), N={n}",
                    a["memory"],
                    unit="MiB",
                    baseline=_name("memory", "b", n),
                    target=0.50,
                    target_is_ratio=True,
                    note="target: <= 50% of the host without swapping",
                )
            )
            report.add(
                Case(
                    f"memory (a) vs (d), N={n}",
                    a["memory"],
                    unit="MiB",
                    baseline=_name("memory", "d", n),
                    target=1.25,
                    target_is_ratio=True,
                    note="target: within 1.25x of no isolation at all",
                )
            )
        report.add(Case(_name("ring round", "c", n), results[("c", n)]["round"]))
        for v in ("a", "b", "d"):
            report.add(
                Case(
                    _name("ring round", v, n), results[(v, n)]["round"], baseline=_name("ring round", "c", n)
                )
            )
        wakes = a.get("wake") or []
        if wakes:
            report.add(
                Case(
                    f"wake latency (a), N={n}",
                    wakes,
                    target=0.005,
                    note="event received by the host -> controller running; target: median <= 5 ms",
                )
            )
    lo, hi = SIZES[0], SIZES[-1]
    per_controller: dict[str, list[float]] = {}
    for v in VARIANTS:
        small, big = results[(v, lo)]["memory"], results[(v, hi)]["memory"]
        per = per_controller[v] = [(b - s) * 1024 / (hi - lo) for s, b in zip(small, big, strict=False)]
        note = f"(PSS at N={hi} - PSS at N={lo}) / {hi - lo}"
        if v == "a":
            note += "; target: each additional swapped controller <= 64 KB"
        report.add(
            Case(
                f"memory per additional controller ({v}) {VARIANTS[v]}",
                per,
                unit="KiB",
                target=64.0 if v == "a" else None,
                note=note,
            )
        )
    # What bounds "(a) <= 50% of (b)": the hosts' fixed part, and how a swapped controller compares with a
    # resident one. Even a host of zero bytes would reach 50% only if that ratio were <= 0.5.
    for v in ("a", "b"):
        at_lo = results[(v, lo)]["memory"]
        fixed = [m - lo * k / 1024 for m, k in zip(at_lo, per_controller[v], strict=False)]
        report.add(
            Case(
                f"host fixed memory ({v}) {VARIANTS[v]}, extrapolated to N=0",
                fixed,
                unit="MiB",
                note=f"PSS at N={lo} - {lo} x the per-controller figure",
            )
        )
    report.add(
        Case(
            "swapped / resident controller (a)/(b), per additional controller",
            [a / b for a, b in zip(per_controller["a"], per_controller["b"], strict=False) if b > 0] or [0.0],
            unit="x",
            note="(a) vs (b) at any N with a zero-byte host; above 0.5 the 50% target is out of reach",
        )
    )
