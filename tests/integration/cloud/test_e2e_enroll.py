"""End to end with the device's `edgeagent enroll` state machine and this controller.

enroll -> the kubelet kubeconfig it writes authenticates as system:node:NAME and carries the node's grants;
a measured file changes and is measured again -> Keylime fails the agent: the controller withdraws access (a
copy of the certificate taken before is refused) and the device, told by the verifier's signed revocation
notification, deletes its certificate and kubeconfig; the device returns to the state it enrolled in (PCR 23
reset and replayed from the log segment it was attested with) -> the controller restores access and sends new
join material, with which the device gets a new certificate for the same key. (Re-measuring from scratch would
not do here: the agent measures its own package, which other work changes meanwhile.)

Renewal: with a tiny `renew_fraction` the device renews its certificate (same key, new serial) while
attested; while it is unattested (its revocation notifications made unverifiable, so it keeps its
certificate) every renewal is refused and retried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from edgeagent.attest import nodekey
from edgeagent.attest.enroll import Enrollment
from edgeagent.cloud.controller import Controller
from edgeagent.config import AgentConfig, EnrollConfig, MeasureConfig
from edgeagent.measure import cel, measurer, simboot, tcg2
from edgeagent.testbed.cluster_side import pin_device
from edgeagent.tpm import Tpm
from edgeagent.tpm import identity as tpm_identity
from edgeagent.tpm.swtpm import SoftwareTpm
from tests.fixtures import kube_pki, procs
from tests.fixtures.keylime import Keylime
from tests.fixtures.kube import KubeCluster
from tests.integration.cloud.conftest import wait_edgenode

pytestmark = pytest.mark.integration


def _allowed(core: k8s.CoreV1Api) -> bool:
    try:
        core.list_namespaced_config_map("default")
    except ApiException as e:
        if e.status in (401, 403):
            return False
        raise
    return True


@dataclasses.dataclass
class Running:
    name: str
    config: AgentConfig
    enrollment: Enrollment
    measured: Path
    outcome: dict[str, Any]

    @property
    def cert_path(self) -> Path:
        return self.enrollment.cert_path

    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    def tamper(self) -> list[cel.Record]:
        """Measures a changed file into PCR 23; returns the segment to restore the attested state with."""
        assert self.enrollment.tpm is not None
        segment = cel.segment(cel.read_log(measurer.log_path(self.config)), self.config.measure.pcr)
        self.measured.write_text("mode = debug\n")
        measurer.measure(self.config, self.enrollment.tpm)
        return segment

    def restore(self, segment: list[cel.Record]) -> None:
        tpm = self.enrollment.tpm
        assert tpm is not None
        tpm.pcr_reset(self.config.measure.pcr)
        for record in segment:
            if record.digests:
                tpm.pcr_extend(self.config.measure.pcr, dict(record.digests))


@contextlib.contextmanager
def enrolled_device(
    keylime: Keylime,
    kube_cluster: KubeCluster,
    swtpm_template: SoftwareTpm,
    tmp_path: Path,
    *,
    firmware: str | None = None,
    boot_pcrs: dict[str, list[str]] | None = None,
    mb_refstate: dict[str, Any] | None = None,
    wait_credential: bool = True,
    **enroll: Any,
) -> Iterator[Running]:
    """A device running `Enrollment.run()` (serving) in a thread, enrolled as a fresh EdgeNode.

    ``firmware``: boot the TPM first with simboot's firmware log of that variant (log written for the agent).
    """
    api = kube_cluster.client()
    name = f"edge-e2e-{uuid.uuid4().hex[:6]}"
    agent_uuid = f"{name}-agent"
    software_tpm = swtpm_template.clone(tmp_path / "swtpm").start()
    try:
        firmware_log = tmp_path / "no-firmware-log"
        with Tpm.open(software_tpm.tcti) as tpm:
            ek_cert = tpm_identity.load_ek(tpm).cert
            if firmware is not None:
                log = simboot.firmware_log(tuple(tpm.pcr_banks()), variant=firmware)
                simboot.boot(tpm, log)
                firmware_log = tmp_path / "binary_bios_measurements"
                firmware_log.write_bytes(tcg2.encode(log))
        assert ek_cert is not None
        measured = tmp_path / "app.conf"
        measured.write_text("mode = production\n")
        (tmp_path / "policies").mkdir()
        port = procs.free_port()
        settings: dict[str, Any] = dict(
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
        )
        settings.update(enroll)
        config = AgentConfig(
            state_dir=tmp_path / "state",
            tpm_tcti=software_tpm.tcti,
            policies_dir=tmp_path / "policies",
            measure=MeasureConfig(extra_paths=[measured], firmware_log=firmware_log),
            enroll=EnrollConfig(**settings),
        )
        pin_device(
            api,
            name,
            ek_cert=ek_cert,
            agent_uuid=agent_uuid,
            agent_address=f"127.0.0.1:{port}",
            boot_pcrs=boot_pcrs,
            mb_refstate=mb_refstate,
        )
        enrollment = Enrollment(config)
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = enrollment.run()
            except BaseException as e:  # reported by the assertions
                outcome["error"] = e

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            if wait_credential:
                procs.wait_for(
                    lambda: "error" in outcome or config.enroll.kubeconfig.exists(),
                    timeout=120,
                    what="edgeagent enroll to write the kubelet kubeconfig",
                )
                assert "error" not in outcome, outcome.get("error")
            yield Running(name, config, enrollment, measured, outcome)
        finally:
            enrollment.stop()
            thread.join(timeout=30)
            keylime.tenant("-c", "delete", "-u", agent_uuid)
            keylime.tenant("-c", "regdelete", "-u", agent_uuid)
        if wait_credential:
            assert "error" not in outcome, outcome.get("error")
            result = outcome.get("result")
            assert result is not None and result.node_name == name
            assert dataclasses.asdict(result)["figures"]["total"] > 0
    finally:
        software_tpm.stop()


def test_enroll_lose_access_on_tamper_and_regain_it(
    controller: Controller,
    keylime: Keylime,
    kube_cluster: KubeCluster,
    swtpm_template: SoftwareTpm,
    tmp_path: Path,
) -> None:
    api = kube_cluster.client()
    with enrolled_device(keylime, kube_cluster, swtpm_template, tmp_path) as dev:
        kubeconfig = dev.config.enroll.kubeconfig
        assert kubeconfig.stat().st_mode & 0o777 == 0o600
        revocation_cert = dev.config.state_dir / "agent" / "revocation.crt"
        assert revocation_cert.stat().st_mode & 0o777 == 0o600
        as_node = k8s.CoreV1Api(kube_cluster.client(kubeconfig))
        assert as_node.read_node(dev.name).metadata.name == dev.name
        assert _allowed(as_node)
        wait_edgenode(api, dev.name, lambda en: en.phase == "Enrolled", what="to be enrolled")
        # what a thief copying the files would hold: usable until the certificate expires, RBAC aside
        first_cert = dev.cert_path.read_bytes()
        key_pem = (dev.config.state_dir / "node" / nodekey.KEY_FILE).read_bytes()
        stolen = kube_cluster.write_kubeconfig(
            tmp_path / "stolen.kubeconfig", first_cert, key_pem, user=f"system:node:{dev.name}"
        )
        as_thief = k8s.CoreV1Api(kube_cluster.client(stolen))

        segment = dev.tamper()
        procs.wait_for(
            lambda: not _allowed(as_thief),
            timeout=30,
            interval=0.1,
            what="access to be withdrawn after the tamper",
        )
        en = wait_edgenode(api, dev.name, lambda en: en.phase == "Unattested", what="to be unattested")
        assert en.status["attested"] is False
        procs.wait_for(
            dev.enrollment.revoked.is_set,
            timeout=30,
            interval=0.1,
            what="the device to act on the verifier's revocation notification",
        )
        assert not dev.cert_path.exists() and not kubeconfig.exists()

        dev.restore(segment)
        procs.wait_for(
            kubeconfig.exists,
            timeout=60,
            interval=0.1,
            what="a new credential from the join material sent after the restore",
        )
        assert dev.cert_path.read_bytes() != first_cert
        assert dev.cert().public_key() == x509.load_pem_x509_certificate(first_cert).public_key()
        as_node = k8s.CoreV1Api(kube_cluster.client(kubeconfig))
        assert _allowed(as_node)
        assert _allowed(as_thief)  # the grants are per node: the old certificate works again too
        en = wait_edgenode(api, dev.name, lambda en: en.status.get("attested") is True, what="to be attested")
        assert en.phase == "Enrolled"


def test_renewal_while_attested_and_refused_while_not(
    controller: Controller,
    keylime: Keylime,
    kube_cluster: KubeCluster,
    swtpm_template: SoftwareTpm,
    tmp_path: Path,
) -> None:
    api = kube_cluster.client()
    # A revocation certificate the verifier does not sign with: notifications fail to verify, so the device
    # keeps its certificate while unattested (as when a notification is lost) and keeps trying to renew.
    other = kube_pki.make_ca("not-the-revocation-key")
    unverifiable = tmp_path / "other-revocation.crt"
    unverifiable.write_bytes(other.cert_pem)
    with enrolled_device(
        keylime,
        kube_cluster,
        swtpm_template,
        tmp_path,
        renew_fraction=0.002,
        renew_retry=1.0,
        revocation_cert=unverifiable,
    ) as dev:
        first = dev.cert()
        mode = dev.cert_path.stat().st_mode & 0o777
        procs.wait_for(
            lambda: dev.enrollment.renewals >= 1,
            timeout=60,
            interval=0.2,
            what="the node certificate to be renewed",
        )
        renewed = dev.cert()
        assert renewed.serial_number != first.serial_number
        assert renewed.public_key() == first.public_key()  # same node key
        assert mode == dev.cert_path.stat().st_mode & 0o777 == 0o600
        assert dev.config.enroll.kubeconfig.stat().st_mode & 0o777 == 0o600
        config = json.loads(dev.config.enroll.kubeconfig.read_text())
        assert config["users"][0]["user"]["client-certificate"] == str(dev.cert_path)
        assert _allowed(k8s.CoreV1Api(kube_cluster.client(dev.config.enroll.kubeconfig)))

        segment = dev.tamper()
        wait_edgenode(api, dev.name, lambda en: en.phase == "Unattested", what="to be unattested")
        failures = dev.enrollment.renewal_failures
        procs.wait_for(
            lambda: dev.enrollment.renewal_failures >= failures + 2,
            timeout=60,
            interval=0.2,
            what="renewals to be refused while unattested",
        )
        assert "denied" in (dev.enrollment.last_renewal_error or "") or "403" in (
            dev.enrollment.last_renewal_error or ""
        )
        assert not dev.enrollment.revoked.is_set()
        held = dev.cert_path.read_bytes()
        renewals = dev.enrollment.renewals

        dev.restore(segment)
        wait_edgenode(api, dev.name, lambda en: en.status.get("attested") is True, what="to be attested")
        procs.wait_for(
            lambda: dev.enrollment.renewals > renewals,
            timeout=120,
            interval=0.2,
            what="renewal to succeed again once attested",
        )
        assert dev.cert_path.read_bytes() != held


def _reference_boot_pcrs(variant: str) -> dict[str, list[str]]:
    """What an administrator pins: PCRs 0-7 as the firmware's log of a known-good boot replays them."""
    replayed = tcg2.replay(simboot.firmware_log(("sha256",), variant=variant), ["sha256"])
    return {str(pcr): [banks["sha256"].hex()] for pcr, banks in replayed.items() if pcr <= 7}


GOOD_FIRMWARE = "edgeagent simulated firmware 1.0"


def test_measured_boot_reference_admits_the_known_firmware_and_refuses_another(
    controller: Controller,
    keylime: Keylime,
    kube_cluster: KubeCluster,
    swtpm_template: SoftwareTpm,
    tmp_path: Path,
) -> None:
    api = kube_cluster.client()
    reference = _reference_boot_pcrs(GOOD_FIRMWARE)
    assert sorted(reference) == [str(i) for i in range(8)]
    # the log is checked too: Keylime replays it against the quoted PCRs (mbRefstate; accept-all engine)
    refstate = {"edgeagent": "simboot reference"}
    (tmp_path / "good").mkdir()
    (tmp_path / "other").mkdir()
    with enrolled_device(
        keylime,
        kube_cluster,
        swtpm_template,
        tmp_path / "good",
        firmware=GOOD_FIRMWARE,
        boot_pcrs=reference,
        mb_refstate=refstate,
    ) as dev:
        en = wait_edgenode(api, dev.name, lambda en: en.status.get("attested") is True, what="to be attested")
        assert _allowed(k8s.CoreV1Api(kube_cluster.client(dev.config.enroll.kubeconfig)))

    with enrolled_device(
        keylime,
        kube_cluster,
        swtpm_template,
        tmp_path / "other",
        firmware="edgeagent simulated firmware 1.1",
        boot_pcrs=reference,
        mb_refstate=refstate,
        wait_credential=False,
    ) as dev:
        en = wait_edgenode(api, dev.name, lambda en: en.phase == "Unattested", what="to be refused")
        assert en.status.get("attested") is False
        assert "attest" not in dev.enrollment.state.steps  # the payload never opened
        assert not dev.config.enroll.kubeconfig.exists()
