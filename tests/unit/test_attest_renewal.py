"""Device-side renewal timing, the payload's revocation certificate, and acting on a verified revocation."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edgeagent import certs
from edgeagent.attest import enroll, payload
from edgeagent.attest.secrets import write_private
from edgeagent.cloud import tenant
from edgeagent.config import load_config
from edgeagent.errors import ProtocolError
from edgeagent.protocol import keylime as protocol


def _cert(key: ec.EllipticCurvePrivateKey, *, not_before: dt.datetime, not_after: dt.datetime) -> bytes:
    cert = certs.build("t", signer=key, not_before=not_before, not_after=not_after)
    return cert.public_bytes(serialization.Encoding.PEM)


def test_renewal_is_due_at_the_fraction_of_the_lifetime_left_when_stored() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    # a signer that backdates notBefore by 5 minutes, 1 h lifetime from signing
    pem = _cert(key, not_before=now - dt.timedelta(minutes=5), not_after=now + dt.timedelta(hours=1))
    stored = now.timestamp()
    assert enroll.renewal_due(pem, stored, 2 / 3) == pytest.approx(stored + 2400)
    assert enroll.renewal_due(pem, stored, 0.0) == pytest.approx(stored)
    assert enroll.renewal_due(pem, stored, 5.0) == pytest.approx(stored + 3600)  # clamped to expiry
    # stored before notBefore (clock skew): counted from notBefore
    assert enroll.renewal_due(pem, stored - 3600, 0.5) == pytest.approx(stored - 300 + 1950)


def _material(**extra: object) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    ca = _cert(key, not_before=now, not_after=now + dt.timedelta(days=1)).decode()
    doc = {"apiServer": "https://10.0.0.1:6443", "caCert": ca, "bootstrapToken": "abcdef.0123456789abcdef",
           "nodeName": "edge-1", **extra}
    return json.dumps(doc).encode()


def test_the_revocation_certificate_travels_in_the_join_material() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tenant.revocation_certificate(key, "edge-1")
    m = payload.parse_join_material(_material(revocationCert=pem))
    assert m.revocation_cert == pem.encode()
    assert payload.parse_join_material(payload.encode_join_material(m)) == m
    assert payload.parse_join_material(_material()).revocation_cert is None
    cloud = tenant.JoinMaterial("https://10.0.0.1:6443", json.loads(_material())["caCert"],
                                "abcdef.0123456789abcdef", "edge-1", pem)
    assert payload.parse_join_material(cloud.to_bytes()).revocation_cert == pem.encode()


@pytest.mark.parametrize("value", ["not a cert", 7])
def test_a_bad_revocation_certificate_is_refused(value: object) -> None:
    with pytest.raises(ProtocolError, match="revocationCert"):
        payload.parse_join_material(_material(revocationCert=value))


def test_an_ec_revocation_certificate_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    pem = _cert(key, not_before=now, not_after=now + dt.timedelta(days=1)).decode()
    with pytest.raises(ProtocolError, match="RSA"):
        payload.parse_join_material(_material(revocationCert=pem))


def _enrolled(tmp_path: Path) -> enroll.Enrollment:
    cfg = load_config(None, env={}, overrides={"state_dir": str(tmp_path / "state")})
    cfg.enroll.kubeconfig = tmp_path / "kubelet" / "kubeconfig"
    cfg.enroll.payload_dir = tmp_path / "run"
    run = enroll.Enrollment(cfg)
    run.state.uuid = "agent-1"
    run.state.node_name = "edge-1"
    run.state.steps = {s: {"seconds": 0.1} for s in enroll.STEPS}
    run._payload_dir = payload.payload_dir(cfg.enroll.payload_dir, cfg.state_dir)
    write_private(run.cert_path, b"cert")
    write_private(cfg.enroll.kubeconfig, b"{}")
    payload.store(run._payload_dir, _material())
    return run


def test_a_revocation_for_this_agent_drops_the_credential(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    run = _enrolled(tmp_path)
    with caplog.at_level(logging.INFO, logger="edgeagent.attest.enroll"):
        run._on_revocation(protocol.Revocation({"type": "revocation", "agent_id": "agent-1"}))
    assert run.revoked.is_set()
    assert not run.cert_path.exists() and not run.config.enroll.kubeconfig.exists()
    assert payload.stored(run._payload_dir) is None  # its bootstrap token is spent
    assert "kubeconfig" not in enroll.EnrollState.load(run.state_path).steps  # a restart waits again
    assert len([r for r in caplog.records if "revoked this agent" in r.getMessage()]) == 1


def test_a_revocation_for_another_agent_keeps_the_credential(tmp_path: Path) -> None:
    run = _enrolled(tmp_path)
    run._on_revocation(protocol.Revocation({"type": "revocation", "agent_id": "agent-2"}))
    assert not run.revoked.is_set() and run.cert_path.exists() and run.config.enroll.kubeconfig.exists()


def test_the_delivered_revocation_certificate_is_stored_0600_and_used(tmp_path: Path) -> None:
    run = _enrolled(tmp_path)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    run._store_revocation_cert(_material(revocationCert=tenant.revocation_certificate(key, "edge-1")))
    stored = run.agent_dir / enroll.REVOCATION_CERT_FILE
    assert stored.stat().st_mode & 0o777 == 0o600
    loaded = enroll._load_revocation_key(stored, configured=False)
    msg = protocol.sign_revocation({"type": "revocation", "agent_id": "agent-1"}, key)
    assert protocol.verify_revocation(msg, loaded).agent_id == "agent-1"


def test_the_api_server_is_read_back_from_an_older_kubeconfig(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    write_private(path, json.dumps({"clusters": [{"cluster": {"server": "https://10.0.0.1:6443"}}]}).encode())
    assert enroll._kubeconfig_server(path) == "https://10.0.0.1:6443"
    write_private(path, b"not json")
    assert enroll._kubeconfig_server(path) is None
    assert enroll._kubeconfig_server(tmp_path / "missing") is None
