"""Registration and AK activation against the real Keylime 7.14.3 registrar, the TPM being a real swtpm."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeagent import certs
from edgeagent.attest.registrar import RegistrarClient, RetryPolicy
from edgeagent.errors import PeerUnreachable, RegistrationError
from edgeagent.protocol import keylime as protocol
from edgeagent.tpm import Identity, Tpm, provision
from tests.fixtures import procs
from tests.fixtures.keylime import Keylime

pytestmark = pytest.mark.integration


def _mtls_cert(agent_id: str) -> str:
    cert = certs.build(agent_id, signer=ec.generate_private_key(ec.SECP256R1()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _request(identity: Identity, agent_id: str) -> protocol.RegistrationRequest:
    return protocol.RegistrationRequest(
        ek_tpm=identity.ek_public, aik_tpm=identity.ak_public, ekcert=identity.ek_cert,
        mtls_cert=_mtls_cert(agent_id), ip="127.0.0.1", port=procs.free_port())


def _registrar_record(keylime: Keylime, agent_id: str) -> dict:
    env = protocol.parse_envelope(keylime.get(f"{keylime.registrar_tls_url}/v2.2/agents/{agent_id}"))
    return env.results


def test_register_and_activate(keylime: Keylime, swtpm, tmp_path: Path) -> None:
    agent_id = str(uuid.uuid4())
    client = RegistrarClient(keylime.registrar_url)
    with Tpm.open(swtpm.tcti) as tpm:
        identity = provision(tpm, tmp_path)
        assert identity.ek_cert is not None  # swtpm_setup made one; the tenant will check it
        client.register_and_activate(agent_id, _request(identity, agent_id),
                                     lambda blob: tpm.activate_credential(identity, blob))
    record = _registrar_record(keylime, agent_id)
    assert base64.b64decode(record["aik_tpm"]) == identity.ak_public
    assert base64.b64decode(record["ek_tpm"]) == identity.ek_public
    assert client.api_version() == "2.2"

    # Re-registering the same device (same EK and AK, e.g. after a restart) is accepted.
    with Tpm.open(swtpm.tcti) as tpm:
        again = provision(tpm, tmp_path)
        assert again.ak_public == identity.ak_public
        client.register_and_activate(agent_id, _request(again, agent_id),
                                     lambda blob: tpm.activate_credential(again, blob))


def test_activation_with_a_wrong_secret_is_refused(keylime: Keylime, swtpm, tmp_path: Path) -> None:
    agent_id = str(uuid.uuid4())
    client = RegistrarClient(keylime.registrar_url)
    with Tpm.open(swtpm.tcti) as tpm:
        identity = provision(tpm, tmp_path)
        credential = client.register(agent_id, _request(identity, agent_id))
        secret = tpm.activate_credential(identity, credential.to_bytes())
    status, _ = keylime.request("GET", f"{keylime.registrar_tls_url}/v2.2/agents/{agent_id}")
    assert status == 404  # registered but not activated: not an agent anyone may attest yet
    assert len(secret) == 32
    with pytest.raises(RegistrationError, match="refused activation"):
        client.activate(agent_id, bytes(b ^ 1 for b in secret))
    # Keylime drops a registration whose proof was wrong: the agent must register again from scratch.
    with pytest.raises(RegistrationError, match="404"):
        client.activate(agent_id, secret)
    with Tpm.open(swtpm.tcti) as tpm:
        identity = provision(tpm, tmp_path)
        client.register_and_activate(agent_id, _request(identity, agent_id),
                                     lambda blob: tpm.activate_credential(identity, blob))
    assert base64.b64decode(_registrar_record(keylime, agent_id)["aik_tpm"]) == identity.ak_public


def test_same_uuid_with_another_ak_is_refused(keylime: Keylime, swtpm, tmp_path: Path) -> None:
    agent_id = str(uuid.uuid4())
    client = RegistrarClient(keylime.registrar_url)
    with Tpm.open(swtpm.tcti) as tpm:
        first = provision(tpm, tmp_path / "first")
        client.register_and_activate(agent_id, _request(first, agent_id),
                                     lambda blob: tpm.activate_credential(first, blob))
    with Tpm.open(swtpm.tcti) as tpm:
        second = provision(tpm, tmp_path / "second")  # a new AK under the same EK
        assert second.ak_public != first.ak_public
        with pytest.raises(RegistrationError, match="refused registration"):
            client.register(agent_id, _request(second, agent_id))


def test_registrar_down_then_up_resumes(keylime_factory, swtpm, tmp_path: Path) -> None:
    deployment = keylime_factory(start=False)
    deployment.start_verifier()  # the registrar reuses the CA the verifier generates
    waits: list[float] = []

    def sleep_and_bring_it_up(delay: float) -> None:
        waits.append(delay)
        if len(waits) == 2:
            deployment.start_registrar()

    client = RegistrarClient(deployment.registrar_url, sleep=sleep_and_bring_it_up,
                             retry=RetryPolicy(attempts=5, initial_delay=0.1))
    agent_id = str(uuid.uuid4())
    with Tpm.open(swtpm.tcti) as tpm:
        identity = provision(tpm, tmp_path)
        client.register_and_activate(agent_id, _request(identity, agent_id),
                                     lambda blob: tpm.activate_credential(identity, blob))
    assert waits == [0.1, 0.2]  # two refused attempts, with backoff, then success
    assert base64.b64decode(_registrar_record(deployment, agent_id)["aik_tpm"]) == identity.ak_public


def test_registrar_never_up_is_unreachable() -> None:
    waits: list[float] = []
    client = RegistrarClient(f"http://127.0.0.1:{procs.free_port()}", sleep=waits.append,
                             retry=RetryPolicy(attempts=4, initial_delay=0.5, factor=3.0, max_delay=2.0))
    with pytest.raises(PeerUnreachable, match="unreachable for version after 4 attempts"):
        client.api_version()
    assert waits == [0.5, 1.5, 2.0]
