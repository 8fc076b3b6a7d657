"""The cluster side against real components: kube-apiserver + kube-controller-manager, Keylime, swtpm agents.

`controller` is one attestation controller for the module, listening on the Keylime fixture's webhook port
(so the stock verifier's webhook notifier reaches it). `start_device` starts an in-process Keylime agent
(the device helper's code, tests/integration/attest_agent.py) on its own swtpm and registers it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import utils as k8s_utils

from edgeagent.cloud import crd
from edgeagent.cloud.controller import Controller, Settings
from edgeagent.testbed.keylime import make_settings
from edgeagent.tpm.swtpm import SoftwareTpm
from tests.fixtures import procs
from tests.fixtures.keylime import Keylime
from tests.fixtures.kube import KubeCluster
from tests.integration.attest_agent import Agent, start_agent


def controller_settings(kube_cluster: KubeCluster, keylime: Keylime, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        registrar_url=keylime.registrar_tls_url,
        verifier_url=keylime.verifier_url,
        keylime_ca_dir=keylime.cv_ca,
        ek_ca_store=keylime.settings.tpm_cert_store,
        api_server_url=kube_cluster.api_url,
        api_server_ca_pem=kube_cluster.ca_cert.read_text(),
        credential_lifetime=3600,
        poll_interval=5.0,
        pending_interval=0.2,
        reactivate_interval=1.0,
        status_interval=5.0,
        lease_name=f"edgeagent-test-{uuid.uuid4().hex[:6]}",
        lease_duration=4.0,
        renew_deadline=3.0,
        retry_period=0.5,
        identity="controller-a",
        webhook_host="127.0.0.1",
        webhook_port=keylime.webhook_port,
        install_crd=True,
        # Keylime's notifier trusts its own CA: serve the verifier's certificate, require its client cert
        webhook_cert=keylime.cv_ca / "server-cert.crt",
        webhook_key=keylime.cv_ca / "server-private.pem",
        webhook_client_ca=keylime.ca_cert,
    )
    values.update(overrides)
    return Settings(**values)


DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
SERVICE_ACCOUNT = "system:serviceaccount:edgeagent-system:edgeagent-attestation-controller"


def apply_manifests(api: k8s.ApiClient, *names: str) -> None:
    """Creates the objects of deploy/NAME (already existing ones are left as they are)."""
    for name in names:
        for doc in yaml.safe_load_all((DEPLOY / name).read_text()):
            try:
                k8s_utils.create_from_dict(api, doc)
            except k8s_utils.FailToCreateError as e:
                if any(getattr(x, "status", None) != 409 for x in e.api_exceptions):
                    raise


def require_custom_resources(kube_cluster: KubeCluster) -> None:
    """Fails with the cause when kube-apiserver dies on a custom resource.

    Kubernetes 1.20 vendors github.com/modern-go/reflect2 v1.0.1, whose map iteration is wrong for Go >= 1.18:
    built with Debian's Go 1.19, kube-apiserver segfaults encoding any custom object. The fix is
    reflect2 v1.0.2's (`mapiterinit(rtype, m, *hiter)` with the full hiter), applied in the build.
    """
    crd.install(kube_cluster.client())
    probe = f"probe-{uuid.uuid4().hex[:6]}"
    nodes = crd.EdgeNodes(kube_cluster.client())
    try:
        nodes.create(probe, crd.EdgeNodeSpec(agent_uuid="probe"))
    except Exception as e:  # the connection drops when the server crashes
        proc = kube_cluster.apiserver
        with contextlib.suppress(subprocess.TimeoutExpired):
            if proc is not None:
                proc.wait(timeout=3)  # a crashing server takes a moment to exit
        if proc is not None and proc.poll() is not None:
            pytest.fail(
                "kube-apiserver crashed creating a custom resource: rebuild it with the reflect2 "
                "fix (see require_custom_resources)"
            )
        raise AssertionError(f"cannot create an EdgeNode: {e}") from e
    nodes.delete(probe)


def least_privilege_client(kube_cluster: KubeCluster) -> k8s.ApiClient:
    """The deployed controller's identity: the admin impersonating its ServiceAccount (deploy/rbac.yaml).

    Every integration test through `controller` thereby checks the manifests grant enough, and nothing
    the code does needs more.
    """
    require_custom_resources(kube_cluster)  # installs the CRD: deploy/crd.yaml is its definition
    apply_manifests(kube_cluster.client(), "namespace.yaml", "rbac.yaml")
    api = kube_cluster.client()
    api.set_default_header("Impersonate-User", SERVICE_ACCOUNT)
    return api


@pytest.fixture(scope="module")
def controller(kube_cluster: KubeCluster, keylime: Keylime) -> Iterator[Controller]:
    api = least_privilege_client(kube_cluster)
    settings = controller_settings(
        kube_cluster, keylime, install_crd=False, lease_namespace="edgeagent-system"
    )
    c = Controller(api, settings).start()
    try:
        procs.wait_for(c.elector.is_leader, timeout=15, what="the controller to lead")
        yield c
    finally:
        c.stop()


@dataclass
class Device:
    name: str
    agent: Agent
    tpm: SoftwareTpm
    state_dir: Path
    material: dict[str, Any] = field(default_factory=dict)

    @property
    def uuid(self) -> str:
        return self.agent.uuid

    @property
    def ek_cert_sha256(self) -> str:
        assert self.agent.ident.ek_cert is not None
        return hashlib.sha256(self.agent.ident.ek_cert).hexdigest()

    def payload(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.agent.delivered.wait(timeout), "no U/V payload reached the agent"
        delivery = self.agent.deliveries[-1]
        assert delivery.payload is not None
        self.material = json.loads(delivery.payload)
        return self.material


@pytest.fixture(scope="module")
def start_device(
    keylime: Keylime, swtpm_template: SoftwareTpm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Device]]:
    made: list[Device] = []

    def start(name: str, *, tpm: SoftwareTpm | None = None, register: bool = True) -> Device:
        root = tmp_path_factory.mktemp(f"device-{name}")
        if tpm is None:
            tpm = swtpm_template.clone(root / "swtpm").start()
        agent = start_agent(keylime, tpm.tcti, root / "state", uuid=f"{name}-{uuid.uuid4().hex[:8]}")
        device = Device(name, agent, tpm, root / "state")
        made.append(device)
        if register:
            agent.register()
        return device

    try:
        yield start
    finally:
        for d in made:
            d.agent.remove()
            d.agent.close()
            d.tpm.stop()


def edgenode_for(
    api: k8s.ApiClient, device: Device, *, name: str | None = None, ek_cert_sha256: str | None = None
) -> crd.EdgeNode:
    spec = crd.EdgeNodeSpec(
        agent_uuid=device.uuid,
        ek_cert_sha256=ek_cert_sha256 or device.ek_cert_sha256,
        agent_address=f"127.0.0.1:{device.agent.port}",
    )
    return crd.EdgeNodes(api).create(name or device.name, spec)


def wait_edgenode(
    api: k8s.ApiClient,
    name: str,
    predicate: Callable[[crd.EdgeNode], bool],
    *,
    timeout: float = 60.0,
    what: str = "",
) -> crd.EdgeNode:
    nodes = crd.EdgeNodes(api)
    seen: list[crd.EdgeNode | None] = [None]

    def check() -> bool:
        seen[0] = nodes.get(name)
        return seen[0] is not None and predicate(seen[0])

    procs.wait_for(
        check,
        timeout=timeout,
        interval=0.1,
        what=f"EdgeNode {name} {what} (last status: {seen[0].status if seen[0] else None})",
    )
    assert seen[0] is not None
    return seen[0]


def events_for(api: k8s.ApiClient, name: str) -> list[k8s.CoreV1Event]:
    items = k8s.CoreV1Api(api).list_namespaced_event("default").items
    return [e for e in items if e.involved_object.kind == crd.KIND and e.involved_object.name == name]


# ------------------------------------------------------ push mode (test_push_mode, test_systemd_enroll)
PUSH_VERIFIER = {
    "mode": "push",
    # a device that failed and was put right attests again without re-adding it
    "auto_recover_attestation_failures": "True",
    # evidence must follow its challenge within 5 s (a quote takes milliseconds; test_push_bad_input)
    "challenge_lifetime": "5",
}


@pytest.fixture(scope="module")
def push_keylime(swtpm_template: SoftwareTpm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keylime]:
    root = tmp_path_factory.mktemp("push-keylime")
    deployment = Keylime(root, make_settings(root, [swtpm_template.ca_cert],
                                             extra={"verifier": dict(PUSH_VERIFIER)}))
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture
def push_controller(kube_cluster: KubeCluster, push_keylime: Keylime) -> Iterator[Controller]:
    """One per test (a test may stop it to restart the controller); its own Lease, so it leads at once."""
    api = least_privilege_client(kube_cluster)
    settings = controller_settings(
        kube_cluster, push_keylime, install_crd=False, lease_namespace="edgeagent-system",
        lease_name=f"edgeagent-push-{uuid.uuid4().hex[:6]}",
        webhook_port=None, join_host="127.0.0.1", join_port=procs.free_port(), poll_interval=0.5,
    )
    c = Controller(api, settings).start()
    try:
        procs.wait_for(c.elector.is_leader, timeout=15, what="the controller to lead")
        yield c
    finally:
        c.stop()
