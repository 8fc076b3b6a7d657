"""`edgeagent bench enroll`: attested enrollment end to end against stock Keylime and a real API server.

Each run enrolls a fresh device (a new swtpm copy, a new state dir, so a new AK) with the device side's
`Enrollment` and the cluster side's attestation controller, then tampers with PCR 23 and times until the
node's credential no longer works. Phases, from the device's own step timings: TPM provision, registration +
activation, first good quote (agent API up -> the verifier's first integrity quote), credential issued (CSR
created -> certificate stored), total. Revocation: tamper -> access denied (includes Keylime's detection at
its next quote, `quote_interval`, 2 s by default) and notification -> access withdrawn (the controller's
part, which the issue bounds at 3 s).

Then, with the kubelet in the loop (the published design's 20.91 s is up to node Ready), up to
`WORKER_RUNS` worker runs: containerd already up (as at boot), `edgeagent agent` started -> credential
(kubeconfig written) -> kubelet started at once (as edgeagent-kubelet.path does) -> kubelet serving -> Node
Ready; a busybox pod created -> Running; then the same tamper through the agent (a measured file changed,
SIGHUP) -> the pod's processes gone, and -> the pod object deleted. These need root (a mount namespace, a
bridge, cgroups) and Debian's containerd; without them the report says so in its notes and has no worker rows.

The real components come from the local testbed (edgeagent.testbed: Keylime's generated config, the kube
control plane with kube-controller-manager), so it runs wherever `make keylime` and `make kube` filled the
cache; without them it stops with a one-line error.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from edgeagent.bench.harness import Case, Report
from edgeagent.config import AgentConfig, EnrollConfig, MeasureConfig
from edgeagent.errors import EdgeAgentError

TOTAL_TARGET = 3.0
REVOCATION_TARGET = 3.0
READY_TARGET = 5.0
"""agent start -> Node Ready (the issue's target; the published design: 20.91 s mean)."""
EVICTION_SLACK = 5.0
"""tamper -> the pod's containers stopped: at most Keylime's quote interval + this."""
WORKER_RUNS = 5
WORKER_KEYS = ("w_credential", "w_kubelet", "w_ready", "w_total", "w_pod", "w_stopped", "w_deleted")


def run(config: AgentConfig, *, repeat: int) -> Report:
    from edgeagent.testbed import procs
    from edgeagent.testbed.cluster_side import ClusterSide
    from edgeagent.tpm import Tpm
    from edgeagent.tpm import identity as tpm_identity
    from edgeagent.tpm.swtpm import SoftwareTpm

    report = Report("enroll")
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "provision",
            "register",
            "first_quote",
            "credential",
            "total",
            "tamper_to_denied",
            "notified_to_denied",
            *WORKER_KEYS,
        )
    }
    from edgeagent.testbed.node import unavailable as worker_unavailable

    no_worker = worker_unavailable()
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeagent-bench-enroll-")))
        template = SoftwareTpm(root / "swtpm-template").setup()
        probe_tpm = template.clone(root / "probe").start()  # every clone shares the template's EK
        try:
            with Tpm.open(probe_tpm.tcti) as probe:
                ek_cert = tpm_identity.load_ek(probe).cert
        finally:
            probe_tpm.stop()
        if ek_cert is None:
            raise EdgeAgentError("the software TPM has no EK certificate")
        side = stack.enter_context(ClusterSide(root, [template.ca_cert], nodes=no_worker is None))
        keylime, cluster, controller = side.keylime, side.cluster, side.controller
        report.meta.update(
            {
                "quote_interval_s": keylime.settings.quote_interval,
                "runs": repeat,
                "startup_s": side.startup_seconds,
            }
        )
        for i in range(repeat):
            _one_run(i, root, template, ek_cert, keylime, cluster, controller, samples, procs)
        if no_worker is None:
            for i in range(min(repeat, WORKER_RUNS)):
                _worker_run(i, root, template, ek_cert, side, samples)
            report.meta["worker_runs"] = min(repeat, WORKER_RUNS)
        else:
            report.meta["notes"] = [f"no worker rows (agent start -> Node Ready, eviction): {no_worker}"]
    labels = {
        "provision": ("TPM provision (EK + new AK)", None),
        "register": ("registration + AK activation", None),
        "first_quote": ("first good quote (agent API up -> verifier quote)", None),
        "credential": ("credential issued (CSR -> certificate)", None),
        "total": ("total enrollment", TOTAL_TARGET),
        "tamper_to_denied": ("revocation: tamper -> access denied", None),
        "notified_to_denied": ("revocation: Keylime notification -> access denied", REVOCATION_TARGET),
        "w_credential": ("worker: agent start -> credential (kubeconfig written)", None),
        "w_kubelet": ("worker: kubeconfig -> kubelet serving", None),
        "w_ready": ("worker: kubelet serving -> Node Ready", None),
        "w_total": ("worker: agent start -> Node Ready", READY_TARGET),
        "w_pod": ("worker: pod created -> Running", None),
        "w_stopped": ("worker: tamper -> the pod's containers stopped",
                      float(report.meta["quote_interval_s"]) + EVICTION_SLACK),
        "w_deleted": ("worker: tamper -> the pod object deleted", None),
    }
    for key, (label, target) in labels.items():
        if samples[key]:
            report.add(Case(label, samples[key], target=target))
    return report


def _one_run(
    i: int,
    root: Path,
    template: Any,
    ek_cert: bytes,
    keylime: Any,
    cluster: Any,
    controller: Any,
    samples: dict[str, list[float]],
    procs: Any,
) -> None:
    """One device: enroll, then tamper and time until its credential stops working; always cleaned up."""
    from kubernetes import client as k8s

    from edgeagent.attest.enroll import Enrollment
    from edgeagent.cloud import crd
    from edgeagent.kube import errors as kube_errors
    from edgeagent.testbed.cluster_side import pin_device

    api = controller.api
    name = f"bench-{i}-{uuidlib.uuid4().hex[:6]}"
    agent_uuid = f"{name}-agent"
    run_dir = root / name
    tpm = template.clone(run_dir / "swtpm").start()
    port = procs.free_port()
    (run_dir / "policies").mkdir(parents=True)
    config = AgentConfig(
        state_dir=run_dir / "state",
        tpm_tcti=tpm.tcti,
        policies_dir=run_dir / "policies",
        measure=MeasureConfig(firmware_log=run_dir / "no-firmware-log"),
        enroll=EnrollConfig(
            registrar_url=keylime.registrar_url,
            agent_port=port,
            node_name=name,
            uuid=agent_uuid,
            keylime_ca=keylime.ca_cert,
            payload_dir=run_dir / "run",
            kubeconfig=run_dir / "kubeconfig",
            retry_timeout=60,
            payload_timeout=120,
            certificate_timeout=60,
            certificate_seconds=3600,
        ),
    )
    pin_device(api, name, ek_cert=ek_cert, agent_uuid=agent_uuid, agent_address=f"127.0.0.1:{port}",
               register_node=False)
    enrollment = Enrollment(config)
    try:
        result = enrollment.enroll_steps()
        f = result.figures
        samples["provision"].append(f["provision"])
        samples["register"].append(f.get("register", 0.0))
        if "first_quote" in f:
            samples["first_quote"].append(f["first_quote"])
        samples["credential"].append(f.get("csr", 0.0) + f.get("certificate", 0.0))
        samples["total"].append(f["total"])
        as_node = k8s.CoreV1Api(cluster.client(config.enroll.kubeconfig))

        def denied() -> bool:
            try:
                list_cms = as_node.list_namespaced_config_map
                kube_errors.call("list ConfigMaps as the node", list_cms, "default", _request_timeout=5)
            except kube_errors.ApiError as e:
                return e.status == 403
            return False

        procs.wait_for(lambda: not denied(), timeout=30, interval=0.05, what=f"{name}'s grants")
        t_tamper = time.monotonic()
        wall_tamper = time.time()
        assert enrollment.tpm is not None
        enrollment.tpm.pcr_extend(config.measure.pcr, {"sha256": hashlib.sha256(b"tamper").digest()})
        procs.wait_for(denied, timeout=30, interval=0.02, what=f"{name}'s access to be withdrawn")
        wall_denied = time.time()
        samples["tamper_to_denied"].append(time.monotonic() - t_tamper)
        # The webhook usually arrives first; when the fallback poll won the race there is no
        # notification -> denied figure for this run (the JSON keeps n).
        with contextlib.suppress(Exception):
            procs.wait_for(
                lambda: any(n == name for _, _, n in controller.notifications),
                timeout=3,
                interval=0.05,
                what="the revocation notification",
            )
        notified = [t for t, _, node in controller.notifications if node == name and t >= wall_tamper]
        if notified and notified[0] <= wall_denied:
            samples["notified_to_denied"].append(wall_denied - notified[0])
    finally:
        enrollment.stop()
        enrollment.close()
        crd.EdgeNodes(api).delete(name)
        keylime.tenant("-c", "delete", "-u", agent_uuid)
        keylime.tenant("-c", "regdelete", "-u", agent_uuid)
        tpm.stop()


def _worker_run(i: int, root: Path, template: Any, ek_cert: bytes, side: Any,
                samples: dict[str, list[float]]) -> None:
    """One device becoming a worker, then tampered with; always cleaned up (Node, EdgeNode, Keylime)."""
    import signal

    from kubernetes import client as k8s

    from edgeagent.testbed import procs, worker
    from edgeagent.testbed.agent_process import AgentProcess
    from edgeagent.testbed.cluster_side import pin_device

    name = f"bench-worker-{i}-{uuidlib.uuid4().hex[:6]}"
    run_dir = root / name
    run_dir.mkdir(parents=True)
    core: Any = k8s.CoreV1Api(side.api)  # takes the pod as a plain manifest
    tpm = template.clone(run_dir / "swtpm").start()
    port = procs.free_port()
    pin_device(side.api, name, ek_cert=ek_cert, agent_uuid=f"{name}-agent", agent_address=f"127.0.0.1:{port}",
               register_node=False)
    cfg = worker.write_config(run_dir, side.keylime, node=name, port=port)
    kubeconfig = worker.kubeconfig_path(run_dir)
    agent = AgentProcess(cfg, run_dir / "agent.sock", run_dir / "agent.log", tcti=tpm.tcti)
    node = side.kubelet(run_dir / "node", name, kubeconfig)
    try:
        node.start_network()  # the device's network and containerd are up before the agent, as at boot
        node.start_containerd()
        t0 = time.monotonic()
        agent.start()
        procs.wait_for(kubeconfig.exists, timeout=120, interval=0.01, what=f"{name}'s kubeconfig")
        t_cred = time.monotonic()
        node.start_kubelet()
        t_kubelet = time.monotonic()
        worker.wait_node_ready(core, name, timeout=120)
        t_ready = time.monotonic()
        samples["w_credential"].append(t_cred - t0)
        samples["w_kubelet"].append(t_kubelet - t_cred)
        samples["w_ready"].append(t_ready - t_kubelet)
        samples["w_total"].append(t_ready - t0)

        t_pod = time.monotonic()
        core.create_namespaced_pod("default", worker.pod(name, name))
        procs.wait_for(lambda: worker.pod_phase(core, name) == "Running", timeout=120, interval=0.02,
                       what=f"{name}'s pod to run")
        samples["w_pod"].append(time.monotonic() - t_pod)
        procs.wait_for(lambda: bool(node.container_pids()), timeout=30, what=f"{name}'s pod processes")

        (run_dir / worker.MEASURED_FILE).write_text("mode = tampered\n")
        t_tamper = time.monotonic()
        agent.send(signal.SIGHUP)
        procs.wait_for(lambda: not node.container_pids(), timeout=120, interval=0.02,
                       what=f"{name}'s pod processes to stop")
        samples["w_stopped"].append(time.monotonic() - t_tamper)
        procs.wait_for(lambda: worker.pod_phase(core, name) is None, timeout=120, interval=0.05,
                       what=f"{name}'s pod to be deleted")
        samples["w_deleted"].append(time.monotonic() - t_tamper)
    finally:
        agent.stop(signal.SIGKILL)
        node.stop()
        tpm.stop()
        _forget(side, name)


def _forget(side: Any, name: str) -> None:
    from kubernetes import client as k8s

    from edgeagent.kube import errors as kube_errors

    with contextlib.suppress(Exception):
        side.forget_device(name, f"{name}-agent")
    core = k8s.CoreV1Api(side.api)
    with contextlib.suppress(Exception):
        kube_errors.call(f"delete pod {name}", core.delete_namespaced_pod, name, "default",
                         grace_period_seconds=0, ok=(404,))
    with contextlib.suppress(Exception):
        kube_errors.call(f"delete Node {name}", core.delete_node, name, ok=(404,))
