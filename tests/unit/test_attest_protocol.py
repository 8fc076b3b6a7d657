"""Keylime agent-protocol wire formats: round trips, values fixed by Keylime's code, malformed input."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.errors import (
    ApiVersionMismatch,
    AttestationError,
    KeyDerivationError,
    ProtocolError,
    SignatureError,
)
from edgeagent.protocol import keylime as p

UUID = "d432fbb3-d2f1-4a97-9ef7-75bd81c00000"


@pytest.fixture(scope="module")
def nk() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def revocation_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_protocol_errors_are_attestation_errors() -> None:
    for cls in (ProtocolError, ApiVersionMismatch, KeyDerivationError, SignatureError):
        assert issubclass(cls, AttestationError)


# ---------------------------------------------------------------- versions
def test_negotiate_picks_highest_common_numerically() -> None:
    assert p.negotiate_api_version(["2.1", "2.2", "2.10"], ["1.0", "2.2", "2.10", "3.0"]) == "2.10"
    assert p.negotiate_api_version(p.AGENT_API_VERSIONS, ["2.0", "2.1", "2.6"]) == "2.1"


def test_negotiate_without_common_version() -> None:
    with pytest.raises(ApiVersionMismatch, match="no common"):
        p.negotiate_api_version(["2.1"], ["3.0"])


@pytest.mark.parametrize("bad", ["2", "v2.1", "2.1.0", "", "a.b", " 2.1", "2.1\n"])
def test_malformed_version(bad: str) -> None:
    with pytest.raises(ProtocolError):
        p.parse_api_version(bad)


def test_version_results_round_trip() -> None:
    results = p.version_results(["2.2", "2.1"])
    assert results == {"supported_version": "2.2", "supported_versions": ["2.1", "2.2"]}
    assert p.parse_version_results(results) == ["2.1", "2.2"]
    # the verifier's form
    assert p.parse_version_results({"current_version": "2.6"}) == ["2.6"]
    with pytest.raises(ProtocolError):
        p.parse_version_results({})
    with pytest.raises(ProtocolError):
        p.parse_version_results({"supported_versions": ["2.1", "x"]})


def test_split_versioned_path() -> None:
    assert p.split_versioned_path("/v2.2/keys/ukey") == ("2.2", "/keys/ukey")
    assert p.split_versioned_path("/v2.1/agent/info/") == ("2.1", "/agent/info")
    for bad in ("/version", "/v2/keys", "/v2.2", "/v2.2/../etc", "/v2.2/keys?x=1", "/v2.2/keys\n"):
        with pytest.raises(ProtocolError):
            p.split_versioned_path(bad)


# ---------------------------------------------------------------- envelope
def test_envelope_round_trip() -> None:
    env = p.envelope(200, "Success", {"a": 1})
    assert p.parse_envelope(json.dumps(env.to_json())) == env
    assert env.ok
    assert not p.parse_envelope({"code": 403, "status": "Forbidden"}).ok


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>502</html>", b"[1]", b'{"status": "x"}', b'{"code": "200", "status": "x"}',
     b'{"code": true, "status": "x"}', b'{"code": 200}', b'{"code": 200, "status": "x", "results": []}',
     b"\xff\xfe"],
)
def test_malformed_envelope(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        p.parse_envelope(body)


# ---------------------------------------------------------------- registration
def test_registration_request_json() -> None:
    req = p.RegistrationRequest(ek_tpm=b"\x01ek", aik_tpm=b"\x02ak", ekcert=b"\x30der", mtls_cert="PEM",
                                ip="127.0.0.1", port=9002)
    body = req.to_json()
    assert body == {"ekcert": "MGRlcg==", "ek_tpm": "AWVr", "aik_tpm": "AmFr", "mtls_cert": "PEM",
                    "ip": "127.0.0.1", "port": 9002}
    assert p.RegistrationRequest(b"e", b"a", None, None, "127.0.0.1", 1).to_json()["ekcert"] is None


def _keylime_style_blob(id_object: bytes, secret: bytes) -> bytes:
    """As keylime.tpm.tpm_util.makecredential lays it out: header, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET."""
    return (struct.pack(">II", 0xBADCC0DE, 1) + struct.pack(">H", len(id_object)) + id_object
            + struct.pack(">H", len(secret)) + secret)


def test_credential_blob_parse_and_round_trip() -> None:
    id_object = struct.pack(">H", 32) + os.urandom(32) + os.urandom(34)  # integrityHMAC + encIdentity
    secret = os.urandom(256)
    raw = _keylime_style_blob(id_object, secret)
    blob = p.parse_credential_blob(raw)
    assert blob.credential_blob == id_object
    assert blob.secret == secret
    assert blob.to_bytes() == raw
    results = {"blob": base64.b64encode(raw).decode()}
    assert p.parse_registration_results(results) == blob


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:7],  # shorter than the header
        lambda b: b"\xba\xdc\xc0\xdf" + b[4:],  # wrong magic
        lambda b: b[:4] + b"\x00\x00\x00\x02" + b[8:],  # unknown version
        lambda b: b[:-1],  # secret truncated
        lambda b: b + b"\x00",  # trailing byte
        lambda b: b[:8] + b"\xff\xff" + b[10:],  # id object size past the end
        lambda b: b[:9],  # truncated inside a size field
    ],
)
def test_credential_blob_malformed(mutate) -> None:
    raw = _keylime_style_blob(b"\x00\x20" + bytes(32) + bytes(34), bytes(256))
    with pytest.raises(ProtocolError, match="credential blob"):
        p.parse_credential_blob(mutate(raw))


def test_credential_blob_empty_parts() -> None:
    with pytest.raises(ProtocolError, match="empty"):
        p.parse_credential_blob(_keylime_style_blob(b"", b"x"))


def test_registration_results_bad_base64() -> None:
    with pytest.raises(ProtocolError, match="base64"):
        p.parse_registration_results({"blob": "not base64!"})
    with pytest.raises(ProtocolError, match="missing"):
        p.parse_registration_results({})


def test_agent_id() -> None:
    assert p.check_agent_id(UUID) == UUID
    assert p.check_agent_id("edge_1.a") == "edge_1.a"
    for bad in ("", "..", "a/b", "a b", "a\n", "x" * 256, "é"):
        with pytest.raises(ProtocolError, match="agent id"):
            p.check_agent_id(bad)


def test_auth_tag_matches_registrar_rule() -> None:
    # keylime's registrar: key = base64(challenge).decode(); expects do_hmac(key.encode(), agent_id)
    challenge = b"0123456789abcdefghijABCDEFGHIJ+/"
    expected = hmac.new(base64.b64encode(challenge), UUID.encode(), hashlib.sha384).hexdigest()
    assert p.auth_tag(challenge, UUID) == expected
    assert p.activation_request(challenge, UUID) == {"auth_tag": expected}
    assert p.auth_tag(challenge, UUID) != hmac.new(challenge, UUID.encode(), hashlib.sha384).hexdigest()


# ---------------------------------------------------------------- quote request and PCR mask
def test_parse_integrity_request() -> None:
    req = p.parse_quote_request({"nonce": "abcDEF0123456789wxyz", "mask": "0x10401", "partial": "0",
                                 "ima_ml_entry": "7"}, integrity=True)
    assert req == p.QuoteRequest("abcDEF0123456789wxyz", (0, 10, 16), False, 7)
    ident = p.parse_quote_request({"nonce": "n1"}, integrity=False)
    assert ident.pcrs == () and ident.partial is False


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"nonce": ""},
        {"nonce": "a" * 65},
        {"nonce": "abc;rm"},
        {"nonce": "abc\n"},
        {"nonce": "abc", "mask": "zz"},
        {"nonce": "abc", "mask": "0x1000000"},  # PCR 24
        {"nonce": "abc", "mask": "-0x1"},
        {"nonce": "abc", "partial": "2"},
        {"nonce": "abc", "ima_ml_entry": "-1"},
    ],
)
def test_malformed_quote_request(query: dict[str, str]) -> None:
    with pytest.raises(ProtocolError):
        p.parse_quote_request(query, integrity=True)


def test_mask_round_trip() -> None:
    assert p.mask_from_pcrs([0, 10, 16, 23]) == "0x810401"
    assert p.pcrs_from_mask("0x810401") == (0, 10, 16, 23)
    with pytest.raises(ProtocolError):
        p.mask_from_pcrs([24])


def test_data_pcr_value_is_extend_of_pem_hash() -> None:
    pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    h = hashlib.sha256(pem.encode()).digest()
    assert p.data_pcr_value(pem) == hashlib.sha256(bytes(32) + h).digest()
    assert p.data_pcr_value(pem.encode()) == p.data_pcr_value(pem)


# ---------------------------------------------------------------- quote string and pcrblob
def test_quote_string_round_trip() -> None:
    q = p.QuoteString(b"\xffTCG" + os.urandom(60), os.urandom(262), os.urandom(668))
    text = q.format()
    assert text.startswith("r") and text.count(":") == 2
    assert p.parse_quote_string(text) == q


@pytest.mark.parametrize("bad", ["", "xAAAA:AAAA:AAAA", "rAAAA:AAAA", "rAAAA:AAAA:AAAA:AAAA", "r:AAAA:AAAA",
                                 "rAA!A:AAAA:AAAA"])
def test_malformed_quote_string(bad: str) -> None:
    with pytest.raises(ProtocolError):
        p.parse_quote_string(bad)


def _reference_pcrblob(values: dict[int, bytes]) -> bytes:
    """tpm2-tools' struct dump for one sha256 bank, written out field by field as the notes describe it."""
    pcrs = sorted(values)
    mask = sum(1 << i for i in pcrs)
    out = struct.pack("<I", 1) + struct.pack("<HB", 0x000B, 3) + bytes([mask & 0xFF, mask >> 8 & 0xFF,
                                                                          mask >> 16 & 0xFF, 0, 0])
    out += bytes(8 * 15)
    lists = [pcrs[i : i + 8] for i in range(0, len(pcrs), 8)]
    out += struct.pack("<I", len(lists))
    for chunk in lists:
        out += struct.pack("<I", len(chunk))
        for j in range(8):
            if j < len(chunk):
                out += struct.pack("<H", 32) + values[chunk[j]] + bytes(32)
            else:
                out += bytes(66)
    return out


def test_pcrblob_matches_tpm2_tools_layout() -> None:
    values = {i: hashlib.sha256(bytes([i])).digest() for i in (0, 1, 2, 3, 4, 5, 6, 7, 10, 16)}
    blob = p.format_pcrblob({"sha256": values})
    assert blob == _reference_pcrblob(values)
    assert len(blob) == 4 + 16 * 8 + 4 + 2 * (4 + 8 * 66)
    assert p.parse_pcrblob(blob) == {"sha256": values}


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.integers(0, 23), st.binary(min_size=32, max_size=32), min_size=1, max_size=24),
    st.dictionaries(st.integers(0, 23), st.binary(min_size=20, max_size=20), max_size=24),
)
def test_pcrblob_round_trip(sha256: dict[int, bytes], sha1: dict[int, bytes]) -> None:
    banks: dict[str, dict[int, bytes]] = {"sha256": sha256}
    if sha1:
        banks["sha1"] = sha1
    assert p.parse_pcrblob(p.format_pcrblob(banks)) == banks


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:100],
        lambda b: b + b"\x00",
        lambda b: b[:-66],
        lambda b: struct.pack("<I", 17) + b[4:],  # more banks than TPML_PCR_SELECTION holds
        lambda b: b[:4] + struct.pack("<H", 0x0099) + b[6:],  # unknown hash algorithm
        lambda b: b[:6] + b"\x04" + b[7:],  # sizeofSelect 4
        lambda b: b[:7] + b"\x03" + b[8:],  # selects PCR 0 and 1 but carries one digest
        lambda b: b[:136] + struct.pack("<I", 9) + b[140:],  # TPML_DIGEST count above 8
        lambda b: b[:140] + struct.pack("<H", 65) + b[142:],  # digest size above 64
        lambda b: b[:140] + struct.pack("<H", 20) + b[142:],  # not a sha256 digest
    ],
)
def test_malformed_pcrblob(mutate) -> None:
    blob = p.format_pcrblob({"sha256": {0: bytes(32)}})
    with pytest.raises(ProtocolError, match="pcrblob"):
        p.parse_pcrblob(mutate(blob))


def test_format_pcrblob_rejects_wrong_digest_size() -> None:
    with pytest.raises(ProtocolError):
        p.format_pcrblob({"sha256": {0: bytes(20)}})
    with pytest.raises(ProtocolError):
        p.format_pcrblob({"md5": {0: bytes(16)}})


# ---------------------------------------------------------------- U/V and payload
def _oaep_sha1(public: rsa.RSAPublicKey, data: bytes) -> bytes:
    """The tenant's encryption, written independently of the module under test."""
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    return public.encrypt(data, oaep)


def test_u_v_combination_and_payload(nk: rsa.RSAPrivateKey) -> None:
    k = os.urandom(32)
    u = os.urandom(32)
    v = bytes(a ^ b for a, b in zip(k, u, strict=True))
    tag = hmac.new(k, UUID.encode(), hashlib.sha384).hexdigest()
    plaintext = b"cluster: join material\n"
    iv = os.urandom(16)
    # Keylime's crypto.encrypt: b64(iv || AES-GCM(ct) || tag), written here with the raw primitive
    enc = Cipher(algorithms.AES(k), modes.GCM(iv)).encryptor()
    ct = enc.update(plaintext) + enc.finalize()
    payload = base64.b64encode(iv + ct + enc.tag).decode()

    ukey = p.parse_ukey({"encrypted_key": base64.b64encode(_oaep_sha1(nk.public_key(), u)).decode(),
                         "auth_tag": tag, "payload": payload})
    vkey = p.parse_vkey({"encrypted_key": base64.b64encode(_oaep_sha1(nk.public_key(), v)).decode()})
    u2 = p.decrypt_key_share(nk, ukey.encrypted_key)
    v2 = p.decrypt_key_share(nk, vkey.encrypted_key)
    assert (u2, v2) == (u, v)
    key = p.combine_keys(u2, v2, uuid=UUID, expected_auth_tag=ukey.auth_tag)
    assert key == k
    assert p.decrypt_payload(ukey.payload or "", key) == plaintext
    assert p.verify_response(key, "chal") == hmac.new(k, b"chal", hashlib.sha384).hexdigest()
    # the helpers for the other side agree with the independent construction
    assert p.key_auth_tag(k, UUID) == tag
    assert p.decrypt_payload(p.encrypt_payload(plaintext, k, iv=iv), k) == plaintext


def test_wrong_share_is_refused(nk: rsa.RSAPrivateKey) -> None:
    k, u = os.urandom(32), os.urandom(32)
    v = bytes(a ^ b for a, b in zip(k, u, strict=True))
    tag = p.key_auth_tag(k, UUID)
    with pytest.raises(KeyDerivationError, match="auth_tag"):
        p.combine_keys(u, os.urandom(32), uuid=UUID, expected_auth_tag=tag)
    with pytest.raises(KeyDerivationError, match="auth_tag"):
        p.combine_keys(u, v, uuid="another-uuid", expected_auth_tag=tag)
    with pytest.raises(KeyDerivationError):
        p.combine_keys(u[:16], v, uuid=UUID, expected_auth_tag=tag)


def test_key_share_for_another_nk(nk: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(KeyDerivationError, match="NK"):
        p.decrypt_key_share(nk, _oaep_sha1(other.public_key(), os.urandom(32)))
    with pytest.raises(KeyDerivationError, match="bytes"):
        p.decrypt_key_share(nk, _oaep_sha1(nk.public_key(), os.urandom(16)))


def test_payload_tampered_or_malformed() -> None:
    k = os.urandom(32)
    good = p.encrypt_payload(b"data", k, iv=os.urandom(16))
    raw = bytearray(base64.b64decode(good))
    raw[20] ^= 1
    with pytest.raises(KeyDerivationError, match="authentication"):
        p.decrypt_payload(base64.b64encode(bytes(raw)), k)
    with pytest.raises(KeyDerivationError, match="authentication"):
        p.decrypt_payload(good, os.urandom(32))
    with pytest.raises(KeyDerivationError, match="base64"):
        p.decrypt_payload("%%%", k)
    with pytest.raises(KeyDerivationError, match="shorter"):
        p.decrypt_payload(base64.b64encode(bytes(31)), k)


@pytest.mark.parametrize(
    "body",
    [
        {"auth_tag": "00" * 48, "encrypted_key": ""},
        {"auth_tag": "00" * 48},
        {"auth_tag": "zz" * 48, "encrypted_key": "AAAA"},
        {"auth_tag": "00" * 32, "encrypted_key": "AAAA"},
        {"auth_tag": 5, "encrypted_key": "AAAA"},
        {"auth_tag": "00" * 48, "encrypted_key": "AAAA", "payload": 3},
        {"auth_tag": "00" * 48, "encrypted_key": "A"},
    ],
)
def test_malformed_ukey(body: dict) -> None:
    with pytest.raises(ProtocolError):
        p.parse_ukey(body)


def test_malformed_vkey() -> None:
    with pytest.raises(ProtocolError):
        p.parse_vkey({"encrypted_key": None})


# ---------------------------------------------------------------- revocation
def _keylime_signed(msg: dict, key: rsa.RSAPrivateKey) -> dict[str, str]:
    """As keylime's verifier signs: crypto.rsa_sign = b64(RSA-PSS(MGF1-SHA256, max salt), SHA-256)."""
    text = json.dumps(msg)
    sig = key.sign(text.encode(), padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                              salt_length=padding.PSS.MAX_LENGTH), hashes.SHA256())
    return {"msg": text, "signature": base64.b64encode(sig).decode()}


def test_revocation_verified(revocation_key: rsa.RSAPrivateKey) -> None:
    msg = {"type": "revocation", "agent_id": UUID, "event_id": "measured_boot.invalid_pcr_0",
           "severity_label": "emergency"}
    rev = p.verify_revocation(_keylime_signed(msg, revocation_key), revocation_key.public_key())
    assert rev.msg == msg
    assert rev.agent_id == UUID
    rev2 = p.verify_revocation(p.sign_revocation(msg, revocation_key), revocation_key.public_key())
    assert rev2.msg == msg


def test_revocation_refused(revocation_key: rsa.RSAPrivateKey) -> None:
    pub = revocation_key.public_key()
    body = _keylime_signed({"agent_id": UUID}, revocation_key)
    tampered = dict(body, msg=body["msg"].replace(UUID, "someone-else"))
    with pytest.raises(SignatureError, match="does not verify"):
        p.verify_revocation(tampered, pub)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(SignatureError):
        p.verify_revocation(body, other.public_key())
    with pytest.raises(SignatureError, match="unsigned"):
        p.verify_revocation({"msg": body["msg"], "signature": "none"}, pub)
    with pytest.raises(ProtocolError):
        p.verify_revocation({"signature": body["signature"]}, pub)
    with pytest.raises(ProtocolError, match="base64"):
        p.verify_revocation({"msg": body["msg"], "signature": "!!"}, pub)
    signed_list = _keylime_signed([1, 2], revocation_key)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="object"):
        p.verify_revocation(signed_list, pub)
