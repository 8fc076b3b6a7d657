"""The whole story under the shipped units: edgeagent.service, under the machine's real systemd, enrolls in
push mode through a real NAT and gets its node credential (issue 10).

systemd is booted as in test_systemd_real.py (tests/integration/systemd_ns.py), but inside the NAT testbed's
device network namespace (`edgeagent.testbed.nat`, its own prefix and networks so it cannot collide with
test_push_mode.py's): the relays there on 127.0.0.1 reach the push-mode Keylime, the attestation controller's
join endpoint and kube-apiserver on the host, through the masquerading router. The staged tree's agent.toml
turns enrollment on, push mode, with those URLs, the Keylime CA copied to /etc/edgeagent; the swtpm is the
test unit of test_systemd_real.py. The operator's pinning happens as on a device: edgeagent-measure.service
runs at boot (here started by the test), then PCR 23 and the EK certificate are read from that TPM and pinned
in an EdgeNode, then edgeagent.service starts.

Then a measured file (/etc/edgeagent/app.conf, in the config's extra_paths) changes and `systemctl reload
edgeagent` re-measures: the next push fails Keylime's policy, the controller revokes, and the agent drops its
credential.
"""

from __future__ import annotations

import base64
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from edgeagent.cloud import crd
from edgeagent.cloud.controller import Controller
from edgeagent.testbed.cluster_side import pin_device
from edgeagent.testbed.keylime import Keylime
from edgeagent.testbed.nat import Nat, Relay
from edgeagent.tpm import Tpm
from edgeagent.tpm import identity as tpm_identity
from edgeagent.tpm.swtpm import SoftwareTpm
from tests.fixtures.kube import KubeCluster
from tests.integration.cloud.conftest import wait_edgenode
from tests.integration.systemd_ns import (
    SWTPM_DIR,
    Booted,
    agent_status,
    boot,
    config_sections,
    stage_root,
    start_and_wait,
    wait_until,
)

pytestmark = pytest.mark.integration

KUBECONFIG = "/var/lib/edgeagent/kubelet/kubeconfig"
MEASURED = "/etc/edgeagent/app.conf"


@pytest.fixture(scope="module")
def nat() -> Iterator[Nat]:
    # not test_push_mode's "push" namespaces and networks (10.213.97.0/30, 192.168.197.0/24): both can be up
    with Nat("sysdstory", outer="10.213.98.0/30", inner="192.168.198.0/24") as n:
        yield n


def config(name: str, ports: dict[str, int]) -> dict[str, dict[str, Any]]:
    return config_sections(
        extra_paths=[MEASURED],
        enroll={
            "mode": "push",
            "registrar_url": f"http://127.0.0.1:{ports['registrar']}",
            "verifier_url": f"https://127.0.0.1:{ports['verifier']}",
            "join_url": f"https://127.0.0.1:{ports['join']}",
            "node_name": name,
            "uuid": f"{name}-agent",
            "keylime_ca": "/etc/edgeagent/keylime-ca.crt",
            "payload_dir": "/run/edgeagent",
            "kubeconfig": KUBECONFIG,
            "retry_timeout": 60,
            "certificate_timeout": 60,
            "push_backoff_max": 4,
        },
    )


def kubeconfig_cert(b: Booted) -> x509.Certificate:
    """The client certificate the kubeconfig inside the namespace names (a path inside it, or inline)."""
    kc = yaml.safe_load(b.ns_file(KUBECONFIG).read_text())
    user: dict[str, Any] = kc["users"][0]["user"]
    if "client-certificate-data" in user:
        pem = base64.b64decode(user["client-certificate-data"])
    else:
        pem = b.ns_file(user["client-certificate"]).read_bytes()
    return x509.load_pem_x509_certificate(pem)


def status(b: Booted) -> dict[str, Any] | None:
    """`edgeagent status --json` from the agent's group inside the namespace; None while it fails."""
    p = agent_status(b, groups="edgeagent")
    return json.loads(p.stdout) if p.returncode == 0 else None


def why(e: AssertionError, b: Booted) -> AssertionError:
    """A timeout with what `edgeagent status` and the agent's journal said."""
    p = agent_status(b, groups="edgeagent")
    return AssertionError(f"{e}\nstatus ({p.returncode}): {p.stdout[-3000:]}{p.stderr[-2000:]}\n"
                          f"{b.journal('edgeagent.service')}")


def test_the_agent_service_enrolls_in_push_mode_under_systemd_and_is_revoked(
    nat: Nat, push_keylime: Keylime, kube_cluster: KubeCluster,
    push_controller: Controller, swtpm_template: SoftwareTpm, wasm_build: Path,
    tmp_path: Path,
) -> None:
    api = kube_cluster.client()
    name = f"edge-sysd-{uuid.uuid4().hex[:6]}"
    join_port = push_controller.s.join_port
    assert join_port is not None
    ports = {"registrar": push_keylime.registrar_port, "verifier": push_keylime.verifier_port,
             "join": join_port, "api": kube_cluster.api_port}
    relays: list[tuple[Relay, Relay]] = []
    try:
        relays += [nat.relay(port) for port in ports.values()]
        stage = tmp_path / "stage"
        stage_root(stage, swtpm_template, config(name, ports))
        shutil.copy(push_keylime.ca_cert, stage / "etc/edgeagent/keylime-ca.crt")
        (stage / MEASURED.lstrip("/")).write_text("mode = production\n")
        for f in ("keylime-ca.crt", "app.conf"):
            (stage / "etc/edgeagent" / f).chmod(0o644)

        with boot(tmp_path, stage, netns=nat.device_ns) as b:
            # the operator pins the device: PCR 23 as edgeagent-measure.service left it, the EK certificate
            assert start_and_wait(b, "edgeagent-measure.service")["Result"] == "success", b.journal()
            with Tpm.open(f"swtpm:path={b.ns_file(SWTPM_DIR)}/tpm.sock") as tpm:
                pcr23 = tpm.pcr_read([23])[23].hex()
                ek_cert = tpm_identity.load_ek(tpm).cert
            assert ek_cert is not None
            pin_device(api, name, ek_cert=ek_cert, agent_uuid=f"{name}-agent", agent_address="",
                       mode="push", tpm_policy={"23": [pcr23]})

            props = start_and_wait(b, "edgeagent.service")
            assert (props["ActiveState"], props["SubState"]) == ("active", "running"), b.journal()

            def credential() -> dict[str, Any] | None:
                s = status(b)
                att = s["attestation"] if s else None
                return s if att and att["phase"] == "serving" and att["credential_expiry"] else None

            try:
                s = wait_until(credential, "the node credential", timeout=180)
            except AssertionError as e:
                raise why(e, b) from None
            att = s["attestation"]
            assert att["mode"] == "push" and att["push_last_error"] is None and att["quotes_served"] >= 1
            wait_edgenode(api, name, lambda e: e.phase == "Enrolled", timeout=30, what="Enrolled")
            cert = kubeconfig_cert(b)
            assert cert.subject.rfc4514_string() == f"CN=system:node:{name},O=system:nodes"
            # every connection reached the cluster side through the router's masquerade
            assert all(set(host.peers) <= {nat.router_outer_ip} for host, _ in relays)
            assert all(host.peers for host, _ in relays[:3])  # registrar, verifier, join
            # the same process all along, as systemd's service user
            assert b.show("edgeagent.service", "MainPID", "NRestarts") == {
                "MainPID": props["MainPID"], "NRestarts": "0"}

            # tamper: a measured file changes; the reload re-measures it into PCR 23
            b.ns_file(MEASURED).write_text("mode = debug\n")
            b.run("systemctl", "reload", "edgeagent.service", timeout=120)
            wait_edgenode(api, name, lambda e: e.phase == "Unattested", timeout=90,
                          what="Unattested after the tampered push")

            def dropped() -> dict[str, Any] | None:
                s = status(b)
                gone = s is not None and s["attestation"]["credential_expiry"] is None
                return s if gone and not b.ns_file(KUBECONFIG).exists() else None

            try:
                s = wait_until(dropped, "the agent to drop its credential", timeout=90)
            except AssertionError as e:
                raise why(e, b) from None
            assert s["attestation"]["revoked"] is True
            assert b.show("edgeagent.service", "ActiveState", "MainPID") == {
                "ActiveState": "active", "MainPID": props["MainPID"]}
    finally:
        for host, dev in relays:
            host.stop()
            dev.stop()
        crd.EdgeNodes(api).delete(name)
        push_keylime.tenant("-c", "delete", "-u", f"{name}-agent")
        push_keylime.tenant("-c", "regdelete", "-u", f"{name}-agent")
