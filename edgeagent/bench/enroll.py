"""`edgeagent bench enroll`: attested enrollment end to end against stock Keylime and a real API server.

Pull mode first, then push mode (Keylime's push model, API 3.0: a second cluster side, since a verifier runs
in one mode), with the same measurements plus the bytes the device sends per attestation; push's time to
credential is compared with pull's (target <= 1.5x) and its tamper -> denied with the quote interval + 1 s.
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


PUSH_RATIO_TARGET = 1.5
"""Push enrollment may take at most 1.5 times pull's (issue 12)."""

KEYS = ("provision", "register", "first_quote", "credential", "total", "tamper_to_denied",
        "notified_to_denied", "bytes_per_attestation")


def run(config: AgentConfig, *, repeat: int) -> Report:
    """Pull mode, then push mode (a second cluster side: a verifier runs in one mode), same measurements."""
    from edgeagent.testbed import procs
    from edgeagent.testbed.cluster_side import ClusterSide
    from edgeagent.tpm import Tpm
    from edgeagent.tpm import identity as tpm_identity
    from edgeagent.tpm.swtpm import SoftwareTpm

    report = Report("enroll")
    samples: dict[str, dict[str, list[float]]] = {
        m: {k: [] for k in (*KEYS, *WORKER_KEYS)} for m in ("pull", "push")
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
        for mode in ("pull", "push"):
            # the worker rows (a real kubelet) run once, on the pull side
            nodes = mode == "pull" and no_worker is None
            with ClusterSide(root / mode, [template.ca_cert], push=mode == "push", nodes=nodes) as side:
                keylime, cluster, controller = side.keylime, side.cluster, side.controller
                report.meta.update({
                    "quote_interval_s": keylime.settings.quote_interval,
                    "poll_interval_s": controller.s.poll_interval,
                    "runs": repeat,
                    f"startup_s_{mode}": side.startup_seconds,
                })
                for i in range(repeat):
                    _one_run(i, root / mode, template, ek_cert, keylime, cluster, controller, samples[mode],
                             procs, mode=mode)
                if nodes:
                    for i in range(min(repeat, WORKER_RUNS)):
                        _worker_run(i, root / mode, template, ek_cert, side, samples[mode])
                    report.meta["worker_runs"] = min(repeat, WORKER_RUNS)
        if no_worker is not None:
            report.meta["notes"] = [f"no worker rows (agent start -> Node Ready, eviction): {no_worker}"]
    interval = float(report.meta.get("quote_interval_s") or 2.0)
    labels = {
        "provision": ("TPM provision (EK + new AK)", None),
        "register": ("registration + AK activation", None),
        "first_quote": ("first good quote (agent API up / first push accepted)", None),
        "credential": ("credential issued (CSR -> certificate)", None),
        "total": ("time to credential (total enrollment)", TOTAL_TARGET),
        "tamper_to_denied": ("revocation: tamper -> access denied", interval + 1.0),
        "notified_to_denied": ("revocation: Keylime notification -> access denied", REVOCATION_TARGET),
        "bytes_per_attestation": ("bytes the device sends per attestation (HTTP, no TLS)", None),
        "w_credential": ("worker: agent start -> credential (kubeconfig written)", None),
        "w_kubelet": ("worker: kubeconfig -> kubelet serving", None),
        "w_ready": ("worker: kubelet serving -> Node Ready", None),
        "w_total": ("worker: agent start -> Node Ready", READY_TARGET),
        "w_pod": ("worker: pod created -> Running", None),
        "w_stopped": ("worker: tamper -> the pod's containers stopped", interval + EVICTION_SLACK),
        "w_deleted": ("worker: tamper -> the pod object deleted", None),
    }
    for mode in ("pull", "push"):
        for key, (label, target) in labels.items():
            values = samples[mode][key]
            if not values:
                continue
            if key == "tamper_to_denied" and mode == "pull":
                target = None  # pull's bound is on the notification (REVOCATION_TARGET); issue 12 bounds push
            report.add(Case(f"{mode}: {label}", values, target=target,
                            unit="B" if key == "bytes_per_attestation" else "s"))
    pull_total, push_total = samples["pull"]["total"], samples["push"]["total"]
    if pull_total and push_total:
        report.add(Case("push vs pull: time to credential", push_total,
                        baseline=f"pull: {labels['total'][0]}", target=PUSH_RATIO_TARGET,
                        target_is_ratio=True))
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
    *,
    mode: str = "pull",
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
            mode=mode,
            verifier_url=keylime.verifier_url,
            join_url=f"https://127.0.0.1:{controller.s.join_port}",
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
    spec: dict[str, Any] = {}
    if mode == "push":  # no trust on first use in push mode: the operator pins PCR 23 as measured
        from edgeagent.measure import measurer
        from edgeagent.tpm import Tpm

        with Tpm.open(tpm.tcti) as t:
            measurer.measure(config, t)
            spec = {"mode": "push", "tpm_policy": {"23": [t.pcr_read([23])[23].hex()]}}
    pin_device(api, name, ek_cert=ek_cert, agent_uuid=agent_uuid, agent_address=f"127.0.0.1:{port}",
               register_node=False, **spec)
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
        # steady state: bytes the device sends per attestation, over the next three
        count0, bytes0 = enrollment.attestation_traffic()
        procs.wait_for(lambda: enrollment.attestation_traffic()[0] >= count0 + 3, timeout=60, interval=0.1,
                       what=f"three more attestations of {name}")
        count1, bytes1 = enrollment.attestation_traffic()
        samples["bytes_per_attestation"].append((bytes1 - bytes0) / (count1 - count0))
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
