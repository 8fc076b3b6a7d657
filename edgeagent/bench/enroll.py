"""`edgeagent bench enroll`: attested enrollment end to end against stock Keylime and a real API server.

Each run enrolls a fresh device (a new swtpm copy, a new state dir, so a new AK) with the device side's
`Enrollment` and the cluster side's attestation controller, then tampers with PCR 23 and times until the
node's credential no longer works. Phases, from the device's own step timings: TPM provision, registration +
activation, first good quote (agent API up -> the verifier's first integrity quote), credential issued (CSR
created -> certificate stored), total. Revocation: tamper -> access denied (includes Keylime's detection at
its next quote, `quote_interval`, 2 s by default) and notification -> access withdrawn (the controller's
part, which the issue bounds at 3 s).

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
        )
    }
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
        side = stack.enter_context(ClusterSide(root, [template.ca_cert]))
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
    labels = {
        "provision": ("TPM provision (EK + new AK)", None),
        "register": ("registration + AK activation", None),
        "first_quote": ("first good quote (agent API up -> verifier quote)", None),
        "credential": ("credential issued (CSR -> certificate)", None),
        "total": ("total enrollment", TOTAL_TARGET),
        "tamper_to_denied": ("revocation: tamper -> access denied", None),
        "notified_to_denied": ("revocation: Keylime notification -> access denied", REVOCATION_TARGET),
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
