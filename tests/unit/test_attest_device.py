"""Device-side attestation pieces without a TPM: private files, NK, U/V payload, join material, node key,
the enrollment state file and retry loop, and the `enroll` command's bad input."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from edgeagent import certs
from edgeagent.attest import enroll, nk, nodekey, payload
from edgeagent.attest.secrets import write_private
from edgeagent.attest.server import AgentApi
from edgeagent.cli.main import main
from edgeagent.config import load_config
from edgeagent.errors import PeerUnreachable, ProtocolError, StateError
from edgeagent.protocol import keylime as protocol
from edgeagent.protocol import nodebinding

UUID = "d432fbb3-d2f1-4a97-9ef7-75bd81c00000"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- private files, NK
def test_write_private_is_0600_and_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "d" / "secret"
    write_private(path, b"one")
    old_inode = path.stat().st_ino
    write_private(path, b"two")
    assert path.read_bytes() == b"two" and _mode(path) == 0o600
    assert path.stat().st_ino != old_inode  # a new file renamed over the old one, not rewritten in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret"]


def test_write_private_to_an_unwritable_place_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateError, match="cannot write"):
        write_private(tmp_path / "file" / "secret", b"x")


def test_nk_is_created_once_and_reloaded(tmp_path: Path) -> None:
    first = nk.load_or_create(tmp_path)
    again = nk.load_or_create(tmp_path)
    assert first.public_pem == again.public_pem
    assert first.public_pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert _mode(tmp_path / nk.NK_FILE) == 0o600
    (tmp_path / nk.NK_FILE).write_text("garbage")
    with pytest.raises(StateError, match="not a PEM private key"):
        nk.load_or_create(tmp_path)


# ---------------------------------------------------------------- U/V
def _shares(key: bytes, payload_bytes: bytes | None) -> tuple[bytes, bytes, str, str | None]:
    u = os.urandom(32)
    v = bytes(a ^ b for a, b in zip(key, u, strict=True))
    tag = protocol.key_auth_tag(key, UUID)
    enc = protocol.encrypt_payload(payload_bytes, key, iv=os.urandom(16)) if payload_bytes else None
    return u, v, tag, enc


@pytest.mark.parametrize("u_first", [True, False])
def test_u_and_v_in_either_order_open_the_payload(u_first: bool) -> None:
    key = os.urandom(32)
    u, v, tag, enc = _shares(key, b"join material")
    got: list[payload.Delivery] = []
    shares = payload.KeyShares(UUID, on_delivery=got.append)
    if u_first:
        assert shares.add_u(u, tag, enc) is None
        delivery = shares.add_v(v)
    else:
        assert shares.add_v(v) is None
        delivery = shares.add_u(u, tag, enc)
    assert delivery is not None and delivery.payload == b"join material" and delivery.key == key
    assert got == [delivery] and shares.key == key
    assert shares.add_v(v) is None  # the same pair again is not a second delivery
    assert len(got) == 1


def test_shares_that_do_not_match_the_auth_tag_never_deliver() -> None:
    key = os.urandom(32)
    u, _, tag, enc = _shares(key, b"secret")
    shares = payload.KeyShares(UUID)
    shares.add_u(u, tag, enc)
    for _ in range(payload.MAX_SHARES + 3):
        assert shares.add_v(os.urandom(32)) is None
    assert shares.key is None
    assert len(shares._v) == payload.MAX_SHARES  # bounded memory


def test_a_newer_u_supersedes_an_older_payload() -> None:
    key1, key2 = os.urandom(32), os.urandom(32)
    u1, v1, tag1, enc1 = _shares(key1, b"first")
    u2, v2, tag2, enc2 = _shares(key2, b"second")
    shares = payload.KeyShares(UUID)
    shares.add_u(u1, tag1, enc1)
    assert shares.add_v(v1).payload == b"first"  # type: ignore[union-attr]
    shares.add_u(u2, tag2, enc2)
    assert shares.add_v(v2).payload == b"second"  # type: ignore[union-attr]


def test_payload_dir_falls_back_to_the_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    got = payload.payload_dir(blocker / "run", tmp_path / "state")
    assert got == tmp_path / "state" / "payload" and _mode(got) == 0o700
    path = payload.store(got, b"data")
    assert payload.stored(got) == b"data" and _mode(path) == 0o600



def test_payload_dir_keeps_the_group_s_way_to_the_agent_socket(tmp_path: Path) -> None:
    """The shipped defaults share /run/edgeagent (RuntimeDirectoryMode=0750) between the payload and
    agent.sock (0660, the edgeagent group's): chmod 0700 there locked `edgeagent status` out once enrolled
    (seen under the real systemd, tests/integration/cloud/test_systemd_enroll.py). The payload file itself
    stays 0600; a new directory is still 0700, and others lose any access an existing one gave them."""
    run = tmp_path / "run"
    run.mkdir(mode=0o750)
    run.chmod(0o750)
    assert payload.payload_dir(run, tmp_path / "state") == run and _mode(run) == 0o750
    assert _mode(payload.store(run, b"data")) == 0o600
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    assert payload.payload_dir(loose, tmp_path / "state") == loose and _mode(loose) == 0o750
    assert _mode(payload.payload_dir(tmp_path / "new", tmp_path / "state")) == 0o700

def _ca_pem() -> str:
    from cryptography.hazmat.primitives import serialization

    cert = certs.build("ca", signer=ec.generate_private_key(ec.SECP256R1()), ca=True)
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _material(**changes: object) -> bytes:
    doc = {"apiServer": "https://10.0.0.1:6443", "caCert": _ca_pem(),
           "bootstrapToken": "abcdef.0123456789abcdef", "nodeName": "edge-1"}
    doc.update(changes)
    return json.dumps(doc).encode()


def test_join_material_round_trips() -> None:
    m = payload.parse_join_material(_material())
    assert m.api_server == "https://10.0.0.1:6443" and m.node_name == "edge-1"
    assert payload.parse_join_material(payload.encode_join_material(m)) == m
    assert "0123456789abcdef" not in repr(m)  # the token never shows in logs


@pytest.mark.parametrize("changes, field", [
    ({"apiServer": "http://10.0.0.1"}, "apiServer"),
    ({"caCert": "not a cert"}, "caCert"),
    ({"bootstrapToken": "short.token"}, "bootstrapToken"),
    ({"nodeName": "Bad_Name"}, "nodeName"),
    ({"nodeName": 7}, "nodeName"),
])
def test_bad_join_material_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ProtocolError, match=field):
        payload.parse_join_material(_material(**changes))


def test_a_payload_that_is_not_json_is_refused() -> None:
    with pytest.raises(ProtocolError, match="not JSON"):
        payload.parse_join_material(b"#!/bin/sh\nrm -rf /\n")


# ---------------------------------------------------------------- node key and CSR
def test_node_key_is_p256_0600_and_stable(tmp_path: Path) -> None:
    key = nodekey.load_or_create(tmp_path)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert _mode(tmp_path / nodekey.KEY_FILE) == 0o600
    again = nodekey.load_or_create(tmp_path)
    assert nodebinding.spki_der(again.public_key()) == nodebinding.spki_der(key.public_key())
    (tmp_path / nodekey.KEY_FILE).write_bytes(nk.load_or_create(tmp_path / "rsa").private_key.private_bytes(
        *_pkcs8()))
    with pytest.raises(StateError, match="P-256"):
        nodekey.load_or_create(tmp_path)


def _pkcs8() -> tuple:  # type: ignore[type-arg]
    from cryptography.hazmat.primitives import serialization

    return (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def test_nonce_carries_the_time() -> None:
    n = nodebinding.make_nonce(now=1_700_000_000)
    assert len(n) == 20 and n.isalnum() and n.startswith("1700000000")
    assert nodebinding.nonce_time(n) == 1_700_000_000
    assert nodebinding.make_nonce(now=1_700_000_000) != n


def test_binding_digest_covers_key_and_nonce() -> None:
    k1 = nodebinding.spki_der(ec.generate_private_key(ec.SECP256R1()).public_key())
    k2 = nodebinding.spki_der(ec.generate_private_key(ec.SECP256R1()).public_key())
    d = nodebinding.binding_digest(k1, "n1")
    assert d == hashlib.sha256(b"edgeagent-node-key-v1" + k1 + b"n1").digest()
    assert d != nodebinding.binding_digest(k2, "n1") and d != nodebinding.binding_digest(k1, "n2")


class _FakeQuotingTpm:
    def __init__(self) -> None:
        self.asked: list[tuple[bytes, list[int]]] = []

    def quote(self, identity: object, nonce: bytes, pcrs: list[int], bank: str = "sha256") -> object:
        from edgeagent.tpm.quote import Quote

        self.asked.append((nonce, pcrs))
        return Quote(b"attest", b"sig", {23: b"\x00" * 32})


def test_tpm_binding_quotes_the_binding_digest() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    tpm = _FakeQuotingTpm()
    binding = nodekey.tpm_binding(tpm, object(), agent_uuid=UUID, public_key=key.public_key(),  # type: ignore[arg-type]
                                  nonce="1700000000abcdefghij")
    assert binding["agentUUID"] == UUID and binding["nonce"] == "1700000000abcdefghij"
    assert binding["quote"].startswith("r")
    spki = nodebinding.spki_der(key.public_key())
    assert tpm.asked == [(nodebinding.binding_digest(spki, binding["nonce"]), [23])]


def test_csr_is_a_kubelet_client_request(tmp_path: Path) -> None:
    key = nodekey.load_or_create(tmp_path)
    pem = nodekey.build_csr(key, "edge-1")
    csr = x509.load_pem_x509_csr(pem)
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:edge-1"
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    binding = {"agentUUID": UUID, "nonce": "n", "quote": "rAA:BB:CC"}
    body = nodebinding.csr_body(name=nodekey.csr_name("edge-1", now=5), csr_pem=pem, binding=binding,
                            expiration_seconds=3600)
    assert body["metadata"]["name"] == "edgeagent-edge-1-5"
    assert json.loads(body["metadata"]["annotations"][nodebinding.BINDING_ANNOTATION]) == binding
    spec = body["spec"]
    assert spec["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
    assert set(spec["usages"]) == {"digital signature", "key encipherment", "client auth"}
    assert spec["expirationSeconds"] == 3600


# ---------------------------------------------------------------- enrollment state
def test_enroll_state_round_trips_0600(tmp_path: Path) -> None:
    path = tmp_path / enroll.STATE_FILE
    assert enroll.EnrollState.load(path) == enroll.EnrollState()
    st = enroll.EnrollState(uuid=UUID, node_name="edge-1", ak_name="000b" + "aa" * 32, csr_name="c")
    st.record("register", 0.123456, "ok")
    st.save(path)
    assert _mode(path) == 0o600
    again = enroll.EnrollState.load(path)
    assert again == st and again.steps["register"]["seconds"] == 0.1235


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"version": 99}', b'{"version": 1, "bogus": 1}'])
def test_corrupt_enroll_state_is_a_state_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / enroll.STATE_FILE
    path.write_bytes(content)
    with pytest.raises(StateError, match="corrupt"):
        enroll.EnrollState.load(path)


def test_agent_uuid_is_derived_from_the_ek_unless_configured() -> None:
    a = enroll.agent_uuid("", b"ek-one")
    assert a == enroll.agent_uuid("", b"ek-one") and a != enroll.agent_uuid("", b"ek-two")
    assert protocol.check_agent_id(a) == a
    assert enroll.agent_uuid("my-agent", b"ek-one") == "my-agent"
    with pytest.raises(ProtocolError):
        enroll.agent_uuid("bad/uuid", b"ek")


def test_retrying_backs_off_then_succeeds_or_gives_up(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(None, env={}, overrides={"state_dir": str(tmp_path)})
    cfg.enroll.retry_timeout = 5.0
    events: list[enroll.StepEvent] = []
    run = enroll.Enrollment(cfg, on_event=events.append)
    waits: list[float] = []
    monkeypatch.setattr(run, "_wait", waits.append)
    calls = iter([PeerUnreachable("down"), PeerUnreachable("down"), "ok"])

    def flaky() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert run._retrying("register", "registration", flaky) == "ok"
    assert waits == [0.5, 1.0]
    assert [e.status for e in events] == ["retry", "retry"]
    clock = iter(range(0, 1000, 3))
    monkeypatch.setattr(enroll.time, "monotonic", lambda: float(next(clock)))

    def down() -> None:
        raise PeerUnreachable("registrar down")

    with pytest.raises(PeerUnreachable, match="gave up on the registration"):
        run._retrying("register", "registration", down)


# ---------------------------------------------------------------- CLI bad input
@pytest.fixture(autouse=True)
def _keep_root_logging() -> Iterator[None]:
    """main() points the root logger at the captured stderr of the moment; later tests must not keep it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("args, message", [
    (["--port", "0"], "not a TCP port"),
    (["--port", "70000"], "not a TCP port"),
])
def test_enroll_bad_options_are_one_line_errors(args: list[str], message: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--state-dir", str(tmp_path), "enroll", "--once", *args])
    assert exc.value.code == 78
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_enroll_without_a_tpm_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--state-dir", str(tmp_path), "--tpm", "swtpm:host=127.0.0.1,port=1", "enroll", "--once",
              "--port", "9"])
    assert exc.value.code == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def _api(revocation_key: rsa.RSAPublicKey | None, seen: list[protocol.Revocation]) -> AgentApi:
    # Routing and revocation never touch the TPM: no TPM is needed to exercise them.
    return AgentApi(tpm=None, identity=None, uuid=UUID, nk=None, shares=payload.KeyShares(UUID),  # type: ignore[arg-type]
                    revocation_key=revocation_key, on_revocation=seen.append)


def test_revocations_are_acted_on_only_when_signed_by_the_configured_key() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    body = json.dumps(protocol.sign_revocation({"type": "revocation", "agent_id": UUID}, key)).encode()
    seen: list[protocol.Revocation] = []
    status, answer = _api(None, seen).route("POST", "/v2.2/notifications/revocation", body)
    assert (status, answer["results"], seen) == (200, {"accepted": False}, [])
    status, answer = _api(other.public_key(), seen).route("POST", "/v2.2/notifications/revocation", body)
    assert status == 400 and "does not verify" in answer["status"] and seen == []
    status, answer = _api(key.public_key(), seen).route("POST", "/v2.2/notifications/revocation", body)
    assert status == 200 and answer["results"] == {"accepted": True}
    assert [r.agent_id for r in seen] == [UUID]
