"""The tenant's half of the U/V payload opens with the device's half (edgeagent.attest) and nothing else."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from edgeagent.attest import payload
from edgeagent.cloud.tenant import JoinMaterial, SplitKey, nonce
from edgeagent.errors import KeyDerivationError
from edgeagent.protocol import keylime as protocol
from tests.fixtures import kube_pki

UUID = "agent-1"


def test_split_key_and_payload_round_trip_through_the_device_side() -> None:
    nk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = SplitKey.fresh()
    material = JoinMaterial(
        "https://10.0.0.1:6443",
        kube_pki.make_ca("cluster-ca").cert_pem.decode(),
        "abcdef.0123456789abcdef",
        "edge1",
    )
    u = protocol.decrypt_key_share(nk, protocol.encrypt_key_share(nk.public_key(), key.u))
    k = protocol.combine_keys(u, key.v, uuid=UUID, expected_auth_tag=protocol.key_auth_tag(key.k, UUID))
    blob = protocol.encrypt_payload(material.to_bytes(), key.k, iv=b"\x00" * 16)
    parsed = payload.parse_join_material(protocol.decrypt_payload(blob, k))
    assert (parsed.api_server, parsed.bootstrap_token, parsed.node_name) == (
        material.api_server,
        material.bootstrap_token,
        material.node_name,
    )


def test_neither_share_alone_is_k() -> None:
    key = SplitKey.fresh()
    assert key.u != key.k and key.v != key.k
    with pytest.raises(KeyDerivationError):
        protocol.combine_keys(key.u, key.u, uuid=UUID, expected_auth_tag=protocol.key_auth_tag(key.k, UUID))


def test_nonces_are_keylime_shaped() -> None:
    values = {nonce() for _ in range(50)}
    assert len(values) == 50
    assert all(len(n) == 20 and n.isalnum() for n in values)
