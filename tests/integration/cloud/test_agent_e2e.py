"""The whole story through `edgeagent agent`, one process on the device, against stock Keylime and a real
API server with the attestation controller:

start -> measured, registered, attested, credential issued -> Wasm drivers read, a Wasm controller (the
node-labeler, talking to the API server as the attested node) wakes on a ConfigMap change and labels the Node
-> a measured file changes and SIGHUP re-measures it -> Keylime fails the device: access withdrawn, the agent
drops its credential on the verifier's revocation and stops its controllers (state saved) -> the file is
restored and the device "reboots" (its swtpm restarts, so PCR 23 starts from zero) -> same AK, attested
again, a new credential, controllers back with their saved state. And SIGKILL while serving: the next start
is ready again with the same AK and the same certificate (nothing re-enrolled).
"""

from __future__ import annotations

import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client as k8s

from edgeagent.cloud.controller import Controller
from edgeagent.testbed import device
from edgeagent.testbed.cluster_side import labels_configmap, pin_device
from edgeagent.tpm import Tpm
from edgeagent.tpm import identity as tpm_identity
from edgeagent.tpm.swtpm import SoftwareTpm
from tests.fixtures import procs
from tests.fixtures.keylime import Keylime
from tests.fixtures.kube import KubeCluster
from tests.integration.agent_proc import ROOT, AgentProcess, stage_drivers
from tests.integration.cloud.conftest import wait_edgenode

pytestmark = pytest.mark.integration

NAMESPACE = "edgeagent-system"


def _labels(core: k8s.CoreV1Api, node: str) -> dict[str, str]:
    return {k: v for k, v in (core.read_node(node).metadata.labels or {}).items() if k.startswith("device.")}


def _controllers_dir(tmp_path: Path, node: str) -> Path:
    manifest = device.labeler_manifest(
        "node-labeler", node, namespace=NAMESPACE, selector="edgeagent.io/node-labels=true", idle_timeout=0.5
    )
    return device.stage_labelers(tmp_path / "controllers", {"node-labeler": manifest})


def test_agent_runs_the_whole_story_and_resumes_after_sigkill(
    controller: Controller,
    keylime: Keylime,
    kube_cluster: KubeCluster,
    swtpm_template: SoftwareTpm,
    tmp_path: Path,
    wasm_build: Path,
) -> None:
    admin = kube_cluster.client()
    core = k8s.CoreV1Api(admin)
    name = f"edge-agent-{uuid.uuid4().hex[:6]}"
    agent_uuid = f"{name}-agent"
    tpm = swtpm_template.clone(tmp_path / "swtpm").start()
    agent: AgentProcess | None = None
    try:
        with Tpm.open(tpm.tcti) as t:
            ek_cert = tpm_identity.load_ek(t).cert
        assert ek_cert is not None
        port = procs.free_port()
        app_conf = tmp_path / "app.conf"
        app_conf.write_text("mode = production\n")
        (tmp_path / "policies").mkdir()
        shutil.copytree(ROOT / "policies" / "drivers", tmp_path / "policies" / "drivers")
        drivers = stage_drivers(tmp_path / "drivers", ["bme280", "tmp102"])
        controllers = _controllers_dir(tmp_path, name)
        cfg = tmp_path / "agent.toml"
        cfg.write_text(f'''
state_dir = "{tmp_path / "state"}"
policies_dir = "{tmp_path / "policies"}"
[measure]
firmware_log = "{tmp_path / "no-firmware-log"}"
extra_paths = ["{app_conf}"]
[drivers]
modules_dir = "{drivers}"
[[drivers.instances]]
name = "climate"
driver = "bme280"
interval = 0.5
sim = "true"
[controllers]
dir = "{controllers}"
[enroll]
registrar_url = "{keylime.registrar_url}"
agent_port = {port}
node_name = "{name}"
uuid = "{agent_uuid}"
keylime_ca = "{keylime.ca_cert}"
payload_dir = "{tmp_path / "run"}"
kubeconfig = "{tmp_path / "kubelet" / "kubeconfig"}"
retry_timeout = 60
certificate_timeout = 60
certificate_seconds = 3600
[agent]
socket = "{tmp_path / "agent.sock"}"
metrics_port = 0
restart_backoff = 0.2
restart_backoff_max = 2.0
''')
        # the cluster side as an operator sets it up: the Node (as a kubelet registers it), the EdgeNode
        # pinning this device's EK, and the ConfigMap the device's controller mirrors into Node labels
        pin_device(admin, name, ek_cert=ek_cert, agent_uuid=agent_uuid, agent_address=f"127.0.0.1:{port}")
        labels_cm = f"labels-{name}"
        labels_configmap(admin, NAMESPACE, labels_cm, {"zone": "lab"})

        agent = AgentProcess(cfg, tpm.tcti, tmp_path / "agent.sock")
        agent.start(timeout=60)
        # SIGKILL as soon as attestation is served (registering or waiting to be attested): the next start
        # picks up where it was
        agent.stop(signal.SIGKILL)
        agent.start(timeout=60)
        # the certificate is stored a moment before the kubeconfig is written and serving begins
        s = agent.wait_status(
            lambda s: s["attestation"]["credential_expiry"] and s["attestation"]["phase"] == "serving",
            timeout=120,
            what="the node credential",
        )
        ak_name = s["attestation"]["ak_name"]
        assert s["attestation"]["phase"] == "serving" and s["attestation"]["node_name"] == name
        assert 0 < s["attestation"]["credential_seconds_left"] <= 3600
        assert agent.driver(s, "climate")["state"] in ("running", "starting")
        wait_edgenode(admin, name, lambda en: en.phase == "Enrolled", what="to be enrolled")
        # the controller runs as the attested node and labels it; a change wakes it again
        procs.wait_for(
            lambda: _labels(core, name) == {"device.edgeagent.io/zone": "lab"},
            timeout=60,
            what="the node-labeler to label the Node",
        )
        agent.wait_status(
            lambda s: any(
                c["name"] == "node-labeler" and c["swaps"] >= 1 for c in s["controllers"]["controllers"]
            ),
            what="the controller to sleep on disk",
        )
        core.patch_namespaced_config_map(labels_cm, NAMESPACE, {"data": {"zone": "lab", "rack": "r7"}})
        procs.wait_for(
            lambda: _labels(core, name).get("device.edgeagent.io/rack") == "r7",
            timeout=30,
            what="the woken controller to add the new label",
        )
        s = agent.wait_status(lambda s: s["controllers"]["controllers"][0]["wakes"] >= 1, what="a wake")
        assert agent.driver(s, "climate")["readings"] > 0

        # tamper: a measured file changes; the reload measures it into PCR 23 before anything else
        app_conf.write_text("mode = debug\n")
        agent.send(signal.SIGHUP)
        kubeconfig = tmp_path / "kubelet" / "kubeconfig"
        s = agent.wait_status(  # revoked is set first, then the files are deleted
            lambda s: s["attestation"]["revoked"] and s["attestation"]["credential_expiry"] is None
            and not kubeconfig.exists(),
            timeout=60,
            what="the verifier's revocation to drop the credential",
        )
        assert s["attestation"]["credential_expiry"] is None
        assert not (tmp_path / "kubelet" / "kubeconfig").exists()
        en = wait_edgenode(admin, name, lambda en: en.phase == "Unattested", what="to be unattested")
        assert en.status["attested"] is False
        node = core.read_node(name)
        assert node.spec.unschedulable is True
        assert any(t.key == "edgeagent.io/unattested" and t.effect == "NoExecute" for t in node.spec.taints)
        agent.wait_status(
            lambda s: s["controllers"]["state"] == "waiting for credential",
            what="the controllers to stop without a credential",
        )
        assert agent.driver(agent.status(), "climate")["state"] == "running"  # drivers go on

        # restore and reboot: the file as attested, PCRs from zero (a restarted swtpm), the same AK
        app_conf.write_text("mode = production\n")
        assert agent.stop(signal.SIGTERM) == 0
        tpm.stop()
        tpm.start()
        agent.tcti = tpm.tcti
        agent.start(timeout=60)
        s = agent.wait_status(
            lambda s: s["attestation"]["credential_expiry"] and not s["attestation"]["revoked"],
            timeout=120,
            what="a new credential after the restore",
        )
        assert s["attestation"]["ak_name"] == ak_name
        wait_edgenode(admin, name, lambda en: en.status.get("attested") is True, what="to be attested again")
        procs.wait_for(
            lambda: not core.read_node(name).spec.unschedulable, timeout=30, what="the Node to be uncordoned"
        )
        agent.wait_status(lambda s: s["controllers"]["state"] == "running", what="the controllers back")
        core.patch_namespaced_config_map(labels_cm, NAMESPACE, {"data": {"rack": "r8"}})
        procs.wait_for(
            lambda: _labels(core, name).get("device.edgeagent.io/rack") == "r8",
            timeout=30,
            what="the controller, resumed from its snapshot, to act again",
        )

        # the API server down for a while: controllers back off and recover, attestation is not disturbed
        kube_cluster.stop_apiserver()
        time.sleep(3)
        agent.wait_status(lambda s: s["attestation"]["phase"] == "serving", what="attestation to go on")
        kube_cluster.start_apiserver()
        core.api_client.rest_client.pool_manager.clear()
        core.patch_namespaced_config_map(labels_cm, NAMESPACE, {"data": {"rack": "r9"}})
        procs.wait_for(
            lambda: _labels(core, name).get("device.edgeagent.io/rack") == "r9",
            timeout=60,
            what="the controller to act after the API server came back",
        )

        # SIGKILL while serving: ready again, same AK, the same certificate kept (nothing re-enrolled)
        cert = (tmp_path / "state" / "node").glob("*.crt")
        before = {p.name: p.read_bytes() for p in cert}
        agent.stop(signal.SIGKILL)
        agent.start(timeout=30)
        s = agent.wait_status(lambda s: s["attestation"]["phase"] == "serving", timeout=60, what="serving")
        assert s["attestation"]["ak_name"] == ak_name
        assert {p.name: p.read_bytes() for p in (tmp_path / "state" / "node").glob("*.crt")} == before
        steps = s["attestation"]["steps"]
        assert steps["csr"]["status"] == "skipped" and steps["certificate"]["status"] == "skipped"
    finally:
        if agent is not None:
            agent.stop(signal.SIGKILL)
        keylime.tenant("-c", "delete", "-u", agent_uuid)
        keylime.tenant("-c", "regdelete", "-u", agent_uuid)
        tpm.stop()
