"""End to end with the device helper's `edgeagent enroll` state machine and this controller.

enroll -> the kubelet kubeconfig it writes authenticates as system:node:NAME and carries the node's grants;
a measured file changes and is measured again -> access is gone; the device returns to the state it enrolled
in (PCR 23 reset and replayed from the log segment it was attested with) -> access is back. (Re-measuring
from scratch would not do here: the agent measures its own package, which other work changes meanwhile.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import uuid
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from edgeagent.attest.enroll import Enrollment
from edgeagent.cloud import crd
from edgeagent.cloud.controller import Controller
from edgeagent.config import AgentConfig, EnrollConfig, MeasureConfig
from edgeagent.measure import cel, measurer
from edgeagent.tpm import Tpm
from edgeagent.tpm import identity as tpm_identity
from edgeagent.tpm.swtpm import SoftwareTpm
from tests.fixtures import procs
from tests.fixtures.keylime import Keylime
from tests.fixtures.kube import KubeCluster
from tests.integration.cloud.conftest import wait_edgenode

pytestmark = pytest.mark.integration


def _allowed(core: k8s.CoreV1Api) -> bool:
    try:
        core.list_namespaced_config_map("default")
    except ApiException as e:
        if e.status == 403:
            return False
        raise
    return True


def test_enroll_lose_access_on_tamper_and_regain_it(
    controller: Controller,
    keylime: Keylime,
    kube_cluster: KubeCluster,
    swtpm_template: SoftwareTpm,
    tmp_path: Path,
) -> None:
    api = kube_cluster.client()
    name = f"edge-e2e-{uuid.uuid4().hex[:6]}"
    agent_uuid = f"{name}-agent"
    software_tpm = swtpm_template.clone(tmp_path / "swtpm").start()
    try:
        with Tpm.open(software_tpm.tcti) as tpm:
            ek_cert = tpm_identity.load_ek(tpm).cert
        assert ek_cert is not None
        measured = tmp_path / "app.conf"
        measured.write_text("mode = production\n")
        (tmp_path / "policies").mkdir()
        port = procs.free_port()
        config = AgentConfig(
            state_dir=tmp_path / "state",
            tpm_tcti=software_tpm.tcti,
            policies_dir=tmp_path / "policies",
            measure=MeasureConfig(extra_paths=[measured], firmware_log=tmp_path / "no-firmware-log"),
            enroll=EnrollConfig(
                registrar_url=keylime.registrar_url,
                agent_host="127.0.0.1",
                agent_port=port,
                node_name=name,
                uuid=agent_uuid,
                keylime_ca=keylime.ca_cert,
                payload_dir=tmp_path / "run",
                kubeconfig=tmp_path / "kubelet" / "kubeconfig",
                retry_timeout=60,
                payload_timeout=120,
                certificate_timeout=60,
                certificate_seconds=3600,
            ),
        )
        k8s.CoreV1Api(api).create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=name)))
        crd.EdgeNodes(api).create(
            name,
            crd.EdgeNodeSpec(
                agent_uuid=agent_uuid,
                ek_cert_sha256=hashlib.sha256(ek_cert).hexdigest(),
                agent_address=f"127.0.0.1:{port}",
            ),
        )
        enrollment = Enrollment(config)
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = enrollment.run()
            except BaseException as e:  # reported by the assertion below
                outcome["error"] = e

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            procs.wait_for(
                lambda: "error" in outcome or config.enroll.kubeconfig.exists(),
                timeout=120,
                what="edgeagent enroll to write the kubelet kubeconfig",
            )
            assert "error" not in outcome, outcome.get("error")
            assert config.enroll.kubeconfig.stat().st_mode & 0o777 == 0o600
            as_node = k8s.CoreV1Api(kube_cluster.client(config.enroll.kubeconfig))
            assert as_node.read_node(name).metadata.name == name
            assert _allowed(as_node)
            wait_edgenode(api, name, lambda en: en.phase == "Enrolled", what="to be enrolled")

            assert enrollment.tpm is not None
            enrolled_segment = cel.segment(cel.read_log(measurer.log_path(config)), config.measure.pcr)
            measured.write_text("mode = debug\n")  # tamper: the changed file is measured into PCR 23
            measurer.measure(config, enrollment.tpm)
            procs.wait_for(
                lambda: not _allowed(as_node),
                timeout=30,
                interval=0.1,
                what="access to be withdrawn after the tamper",
            )
            en = wait_edgenode(api, name, lambda en: en.phase == "Unattested", what="to be unattested")
            assert en.status["attested"] is False

            enrollment.tpm.pcr_reset(config.measure.pcr)  # back to the enrolled state
            for record in enrolled_segment:
                if record.digests:
                    enrollment.tpm.pcr_extend(config.measure.pcr, dict(record.digests))
            procs.wait_for(
                lambda: _allowed(as_node),
                timeout=30,
                interval=0.1,
                what="access to come back after the restore",
            )
            en = wait_edgenode(api, name, lambda en: en.status.get("attested") is True, what="to be attested")
            assert en.phase == "Enrolled"
        finally:
            enrollment.stop()
            thread.join(timeout=30)
            keylime.tenant("-c", "delete", "-u", agent_uuid)
            keylime.tenant("-c", "regdelete", "-u", agent_uuid)
        result = outcome.get("result")
        assert result is not None and result.node_name == name
        assert dataclasses.asdict(result)["figures"]["total"] > 0
    finally:
        software_tpm.stop()
