"""Keylime's agent protocol (pull mode, API 2.x as served by keylime 7.14): wire formats as pure functions.

Nothing here does I/O or touches a TPM, so the HTTP handlers, the registrar client and the tests share one
definition of every message. Names follow Keylime's JSON fields and the TCG structures they carry. Every
malformed input raises a `ProtocolError` (or a more specific `AttestationError`) with a one-line cause: these
bytes come from the network and must never surface as a ``KeyError`` or ``binascii.Error``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgeagent.errors import (
    ApiVersionMismatch,
    KeyDerivationError,
    ProtocolError,
    SignatureError,
)
from edgeagent.tpm import credential as tpm_credential

# ---------------------------------------------------------------- API versions
AGENT_API_VERSIONS: tuple[str, ...] = ("2.1", "2.2")
"""Versions the agent serves: 2.2 added /agent/info; later 2.x minors change nothing an agent serves."""

_VERSION_RE = re.compile(r"^(\d{1,3})\.(\d{1,3})$")


def parse_api_version(text: str) -> tuple[int, int]:
    """ "2.2" -> (2, 2); ordering as tuples is the ordering Keylime uses when it picks the highest."""
    m = _VERSION_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ProtocolError(f"malformed Keylime API version {text!r} (expected MAJOR.MINOR)")
    return int(m.group(1)), int(m.group(2))


def negotiate_api_version(ours: Iterable[str], theirs: Iterable[str]) -> str:
    """The highest version both sides support, as both sides of Keylime choose it."""
    ours, theirs = list(ours), list(theirs)
    common = {parse_api_version(v) for v in ours} & {parse_api_version(v) for v in theirs}
    if not common:
        raise ApiVersionMismatch(f"no common Keylime API version: ours {ours}, theirs {theirs}")
    major, minor = max(common)
    return f"{major}.{minor}"


def version_results(versions: Iterable[str] = AGENT_API_VERSIONS) -> dict[str, Any]:
    """The agent's `GET /version` results: the highest version and the full list."""
    ordered = sorted(versions, key=parse_api_version)
    return {"supported_version": ordered[-1], "supported_versions": ordered}


def parse_version_results(results: Mapping[str, Any]) -> list[str]:
    """Versions a peer's `GET /version` announces.

    The agent answers `supported_version` + `supported_versions`; the verifier and registrar answer
    `current_version` + `supported_versions`. Both are accepted, every entry validated.
    """
    listed = results.get("supported_versions")
    single = results.get("supported_version", results.get("current_version"))
    versions: list[str] = []
    if isinstance(listed, list):
        versions.extend(listed)
    elif single is not None:
        versions.append(single)
    if not versions:
        raise ProtocolError("version response names no supported API version")
    for v in versions:
        parse_api_version(v)
    return versions


_PATH_RE = re.compile(r"^/v(\d{1,3}\.\d{1,3})(/[A-Za-z0-9_/\-]*)$")


def split_versioned_path(path: str) -> tuple[str, str]:
    """ "/v2.2/keys/ukey" -> ("2.2", "/keys/ukey"), the form of every versioned agent endpoint."""
    m = _PATH_RE.fullmatch(path)
    if m is None:
        raise ProtocolError(f"not a versioned Keylime API path: {path[:80]!r}")
    return m.group(1), m.group(2).rstrip("/") or "/"


# ---------------------------------------------------------------- response envelope
@dataclass(frozen=True)
class Envelope:
    """Every Keylime response: `{"code": N, "status": "...", "results": {...}}`."""

    code: int
    status: str
    results: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "status": self.status, "results": self.results}

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


def envelope(code: int, status: str, results: Mapping[str, Any] | None = None) -> Envelope:
    return Envelope(code, status, dict(results or {}))


def parse_envelope(data: bytes | str | Mapping[str, Any]) -> Envelope:
    """Validates a response body; a peer that is not Keylime (or a proxy's error page) fails here."""
    obj = load_json_object(data, what="response") if not isinstance(data, Mapping) else data
    code, status, results = obj.get("code"), obj.get("status"), obj.get("results", {})
    if not isinstance(code, int) or isinstance(code, bool):
        raise ProtocolError("Keylime response has no integer 'code'")
    if not isinstance(status, str):
        raise ProtocolError("Keylime response has no string 'status'")
    if results is None:
        results = {}
    if not isinstance(results, dict):
        raise ProtocolError("Keylime response 'results' is not an object")
    return Envelope(code, status, results)


def load_json_object(data: bytes | str, *, what: str = "body") -> dict[str, Any]:
    """Parses a JSON object from the wire, never letting a decode error escape as a traceback."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"{what} is not JSON: {e.__class__.__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return obj


def b64decode_field(obj: Mapping[str, Any], name: str) -> bytes:
    """A required base64 field of a Keylime message, strictly decoded."""
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"field {name!r} is missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"field {name!r} is not valid base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------- registration
_AGENT_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,255}$")


def check_agent_id(agent_id: str) -> str:
    """Keylime accepts agent ids matching [\\w.-]+; anything else would also break the URL path."""
    if not isinstance(agent_id, str) or not _AGENT_ID_RE.fullmatch(agent_id) or agent_id in (".", ".."):
        raise ProtocolError(f"invalid Keylime agent id {str(agent_id)[:80]!r} (use letters, digits, _ . -)")
    return agent_id


@dataclass(frozen=True)
class RegistrationRequest:
    """Body of `POST /v2.x/agents/{uuid}` to the registrar."""

    ek_tpm: bytes
    """TPM2B_PUBLIC of the endorsement key."""
    aik_tpm: bytes
    """TPM2B_PUBLIC of the attestation key."""
    ekcert: bytes | None
    """DER EK certificate from NV (0x1c00002 for RSA-2048), or None when the TPM has none."""
    mtls_cert: str | None
    """PEM certificate of the agent's HTTPS server, which the verifier pins."""
    ip: str
    port: int

    def to_json(self) -> dict[str, Any]:
        return {
            "ekcert": _b64(self.ekcert) if self.ekcert else None,
            "ek_tpm": _b64(self.ek_tpm),
            "aik_tpm": _b64(self.aik_tpm),
            "mtls_cert": self.mtls_cert,
            "ip": self.ip,
            "port": self.port,
        }


def parse_registration_results(results: Mapping[str, Any]) -> CredentialBlob:
    """The registrar's answer to a registration: the AK challenge, made with MakeCredential to the EK."""
    return parse_credential_blob(b64decode_field(results, "blob"))


CREDENTIAL_BLOB_MAGIC = tpm_credential.TOOLS_CREDENTIAL_MAGIC
CREDENTIAL_BLOB_VERSION = tpm_credential.TOOLS_CREDENTIAL_VERSION


@dataclass(frozen=True)
class CredentialBlob:
    """tpm2-tools' makecredential output, as Keylime's registrar sends it.

    Layout (big-endian): u32 magic 0xBADCC0DE, u32 version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET; these
    two are TPM2_ActivateCredential's `credentialBlob` and `secret` parameters.
    """

    credential_blob: bytes
    """TPM2B_ID_OBJECT contents (integrityHMAC TPM2B + encIdentity), without its size prefix."""
    secret: bytes
    """TPM2B_ENCRYPTED_SECRET contents, without its size prefix."""

    def to_bytes(self) -> bytes:
        return (
            struct.pack(">II", CREDENTIAL_BLOB_MAGIC, CREDENTIAL_BLOB_VERSION)
            + struct.pack(">H", len(self.credential_blob)) + self.credential_blob
            + struct.pack(">H", len(self.secret)) + self.secret
        )


def parse_credential_blob(blob: bytes) -> CredentialBlob:
    """The registrar's blob, parsed by the TPM layer's parser (one format, one parser) as a ProtocolError."""
    try:
        credential, secret = tpm_credential.parse_tools_credential(blob)
    except tpm_credential.CredentialError as e:
        raise ProtocolError(str(e)) from None
    if not credential or not secret:
        raise ProtocolError("credential blob has an empty TPM2B_ID_OBJECT or TPM2B_ENCRYPTED_SECRET")
    return CredentialBlob(credential, secret)


def auth_tag(challenge: bytes, uuid: str) -> str:
    """Proof that the TPM activated the credential, for `PUT /v2.x/agents/{uuid}/activate`.

    Keylime's registrar keys the HMAC with the *base64 text* of the challenge it put in the credential
    (the secret ActivateCredential returns), not with the raw bytes:
    hex(HMAC-SHA384(b64(challenge), uuid)).
    """
    return hmac.new(base64.b64encode(challenge), uuid.encode(), hashlib.sha384).hexdigest()


def activation_request(challenge: bytes, uuid: str) -> dict[str, str]:
    return {"auth_tag": auth_tag(challenge, uuid)}


# ---------------------------------------------------------------- quotes
NONCE_RE = re.compile(r"^[A-Za-z0-9]{1,64}$")
"""A nonce becomes the quote's qualifyingData (TPM2B_DATA, <= 64 bytes); Keylime sends 20 alphanumerics."""

PCR_COUNT = 24
DATA_PCR = 16
"""PCR16 binds the agent's NK to its quotes: reset, then extended with sha256 of the NK public key PEM."""

TPM_ALG_IDS: dict[str, int] = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D}
TPM_ALG_NAMES: dict[int, str] = {v: k for k, v in TPM_ALG_IDS.items()}


@dataclass(frozen=True)
class QuoteRequest:
    """Query of `GET /v2.x/quotes/identity` (mask 0, partial) or `/quotes/integrity`."""

    nonce: str
    pcrs: tuple[int, ...]
    """PCR indices from the hex `mask`, ascending."""
    partial: bool
    """True when the verifier already has the NK (`partial=1`): the response may omit `pubkey`."""
    ima_ml_entry: int


def parse_quote_request(query: Mapping[str, str], *, integrity: bool) -> QuoteRequest:
    """Validates a quote query; anything odd is refused before the TPM is touched."""
    nonce = query.get("nonce", "")
    if not NONCE_RE.fullmatch(nonce):
        raise ProtocolError("quote nonce missing or not 1-64 alphanumeric characters")
    pcrs: tuple[int, ...] = ()
    partial = False
    ima_ml_entry = 0
    if integrity:
        pcrs = pcrs_from_mask(query.get("mask", "0x0"))
        partial_text = query.get("partial", "1")
        if partial_text not in ("0", "1"):
            raise ProtocolError("quote 'partial' must be 0 or 1")
        partial = partial_text == "1"
        entry = query.get("ima_ml_entry", "0")
        if not entry.isdigit() or len(entry) > 12:
            raise ProtocolError("quote 'ima_ml_entry' must be a non-negative integer")
        ima_ml_entry = int(entry)
    return QuoteRequest(nonce=nonce, pcrs=pcrs, partial=partial, ima_ml_entry=ima_ml_entry)


def pcrs_from_mask(mask: str) -> tuple[int, ...]:
    """Keylime's PCR mask ("0x408000"): bit i selects PCR i."""
    try:
        value = int(mask, 16)
    except (TypeError, ValueError):
        raise ProtocolError(f"PCR mask {str(mask)[:40]!r} is not hexadecimal") from None
    if value < 0 or value >> PCR_COUNT:
        raise ProtocolError(f"PCR mask {mask!r} selects PCRs outside 0-{PCR_COUNT - 1}")
    return tuple(i for i in range(PCR_COUNT) if value >> i & 1)


def mask_from_pcrs(pcrs: Iterable[int]) -> str:
    value = 0
    for i in pcrs:
        if not 0 <= i < PCR_COUNT:
            raise ProtocolError(f"PCR {i} outside 0-{PCR_COUNT - 1}")
        value |= 1 << i
    return hex(value)


def data_pcr_value(nk_public_pem: str | bytes) -> bytes:
    """PCR16 after reset and one extend with sha256(NK PEM): what the verifier expects in the quote."""
    pem = nk_public_pem.encode() if isinstance(nk_public_pem, str) else nk_public_pem
    return hashlib.sha256(b"\x00" * 32 + hashlib.sha256(pem).digest()).digest()


@dataclass(frozen=True)
class QuoteString:
    """Keylime's quote wire string `"r" + b64(TPMS_ATTEST) ":" b64(TPMT_SIGNATURE) ":" b64(pcrblob)`."""

    attest: bytes
    signature: bytes
    pcrblob: bytes

    def format(self) -> str:
        return "r" + ":".join(_b64(x) for x in (self.attest, self.signature, self.pcrblob))


def parse_quote_string(text: str) -> QuoteString:
    if not isinstance(text, str) or not text.startswith("r"):
        raise ProtocolError("quote string does not start with 'r' (uncompressed TPM 2.0 quote)")
    parts = text[1:].split(":")
    if len(parts) != 3:
        raise ProtocolError(f"quote string has {len(parts)} parts, expected 3")
    fields = ("attest", "signature", "pcrblob")
    decoded = [b64decode_field(dict(zip(fields, parts, strict=True)), f) for f in fields]
    return QuoteString(*decoded)


# tpm2-tools writes the pcrblob as raw little-endian C structs: TPML_PCR_SELECTION (u32 count +
# 16 x TPMS_PCR_SELECTION of 8 bytes: u16 hash, u8 sizeofSelect, u8 pcrSelect[4], 1 pad), u32 number of
# TPML_DIGESTs, each u32 count + 8 x TPM2B_DIGEST of 66 bytes (u16 size + 64-byte buffer).
_HASH_COUNT = 16
_SELECTION_SIZE = 8
_DIGESTS_PER_LIST = 8
_DIGEST_SLOT = 66


def format_pcrblob(values: Mapping[str, Mapping[int, bytes]]) -> bytes:
    """Encodes PCR values per bank ({"sha256": {0: b"...", ...}}) the way tpm2_quote's `-o` does."""
    if not values or len(values) > _HASH_COUNT:
        raise ProtocolError("pcrblob needs 1 to 16 banks")
    selection = struct.pack("<I", len(values))
    digests: list[bytes] = []
    for bank, bank_values in values.items():
        if bank not in TPM_ALG_IDS:
            raise ProtocolError(f"unknown PCR bank {bank!r}")
        mask = int(mask_from_pcrs(bank_values), 16)
        selection += struct.pack("<HB", TPM_ALG_IDS[bank], 3) + mask.to_bytes(4, "little") + b"\x00"
        for i in sorted(bank_values):
            digest = bank_values[i]
            if len(digest) != hashlib.new(bank).digest_size:
                raise ProtocolError(f"PCR {i} value has {len(digest)} bytes, not a {bank} digest")
            digests.append(digest)
    selection += b"\x00" * _SELECTION_SIZE * (_HASH_COUNT - len(values))
    chunks = [digests[i : i + _DIGESTS_PER_LIST] for i in range(0, len(digests), _DIGESTS_PER_LIST)]
    body = struct.pack("<I", len(chunks))
    for chunk in chunks:
        body += struct.pack("<I", len(chunk))
        for j in range(_DIGESTS_PER_LIST):
            d = chunk[j] if j < len(chunk) else b""
            body += struct.pack("<H", len(d)) + d.ljust(64, b"\x00")
    return selection + body


def parse_pcrblob(blob: bytes) -> dict[str, dict[int, bytes]]:
    """Decodes a tpm2-tools pcrblob into {bank: {pcr: digest}}; strict about counts and trailing bytes."""
    header = 4 + _HASH_COUNT * _SELECTION_SIZE + 4
    if len(blob) < header:
        raise ProtocolError(f"pcrblob too short ({len(blob)} bytes)")
    (count,) = struct.unpack_from("<I", blob, 0)
    if count > _HASH_COUNT:
        raise ProtocolError(f"pcrblob selects {count} banks")
    selected: list[tuple[str, list[int]]] = []
    for n in range(count):
        alg, size = struct.unpack_from("<HB", blob, 4 + n * _SELECTION_SIZE)
        if alg not in TPM_ALG_NAMES:
            raise ProtocolError(f"pcrblob names unknown hash algorithm {alg:#06x}")
        if size != 3:
            raise ProtocolError(f"pcrblob sizeofSelect is {size}, expected 3")
        sel = blob[4 + n * _SELECTION_SIZE + 3 : 4 + n * _SELECTION_SIZE + 6]
        mask = int.from_bytes(sel, "little")
        selected.append((TPM_ALG_NAMES[alg], [i for i in range(PCR_COUNT) if mask >> i & 1]))
    offset = 4 + _HASH_COUNT * _SELECTION_SIZE
    (lists,) = struct.unpack_from("<I", blob, offset)
    offset += 4
    expected_len = offset + lists * (4 + _DIGESTS_PER_LIST * _DIGEST_SLOT)
    if len(blob) != expected_len:
        raise ProtocolError(f"pcrblob is {len(blob)} bytes, its header announces {expected_len}")
    digests: list[bytes] = []
    for _ in range(lists):
        (n_digests,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if n_digests > _DIGESTS_PER_LIST:
            raise ProtocolError(f"pcrblob TPML_DIGEST count {n_digests} exceeds 8")
        for j in range(_DIGESTS_PER_LIST):
            (size,) = struct.unpack_from("<H", blob, offset)
            if size > 64:
                raise ProtocolError(f"pcrblob digest size {size} exceeds 64")
            if j < n_digests:
                digests.append(blob[offset + 2 : offset + 2 + size])
            offset += _DIGEST_SLOT
    wanted = sum(len(pcrs) for _, pcrs in selected)
    if len(digests) != wanted:
        raise ProtocolError(f"pcrblob carries {len(digests)} digests for {wanted} selected PCRs")
    result: dict[str, dict[int, bytes]] = {}
    it = iter(digests)
    for bank, pcrs in selected:
        size = hashlib.new(bank).digest_size
        bank_values = result.setdefault(bank, {})
        for i in pcrs:
            d = next(it)
            if len(d) != size:
                raise ProtocolError(f"pcrblob PCR {i} has {len(d)} bytes, not a {bank} digest")
            bank_values[i] = d
    return result


# ---------------------------------------------------------------- U/V keys and payload
KEY_SIZE = 32
"""K, U and V are AES-256 keys."""
_GCM_IV = 16
_GCM_TAG = 16


@dataclass(frozen=True)
class UKey:
    """Body of `POST /v2.x/keys/ukey` (from the tenant): U, its auth_tag, the optional encrypted payload."""

    encrypted_key: bytes
    auth_tag: str
    payload: str | None


@dataclass(frozen=True)
class VKey:
    """Body of `POST /v2.x/keys/vkey` (from the verifier, after a good quote)."""

    encrypted_key: bytes


_HEX_SHA384 = re.compile(r"^[0-9a-f]{96}$")


def parse_ukey(body: Mapping[str, Any]) -> UKey:
    tag = body.get("auth_tag")
    if not isinstance(tag, str) or not _HEX_SHA384.fullmatch(tag.lower()):
        raise ProtocolError("ukey 'auth_tag' is not a hex HMAC-SHA384")
    payload = body.get("payload")
    if payload is not None and not isinstance(payload, str):
        raise ProtocolError("ukey 'payload' is not a string")
    return UKey(b64decode_field(body, "encrypted_key"), tag.lower(), payload or None)


def parse_vkey(body: Mapping[str, Any]) -> VKey:
    return VKey(b64decode_field(body, "encrypted_key"))


# Keylime encrypts U and V to the NK with RSA-OAEP, SHA-1 for both the hash and MGF1.
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def decrypt_key_share(nk: rsa.RSAPrivateKey, encrypted_key: bytes) -> bytes:
    """Recovers U or V with the agent's NK."""
    try:
        share = nk.decrypt(encrypted_key, _OAEP)
    except ValueError:
        raise KeyDerivationError("key share does not decrypt with this agent's NK") from None
    if len(share) != KEY_SIZE:
        raise KeyDerivationError(f"key share is {len(share)} bytes, expected {KEY_SIZE}")
    return share


def encrypt_key_share(nk_public: rsa.RSAPublicKey, share: bytes) -> bytes:
    """The tenant's and verifier's side of `decrypt_key_share` (for tests and tools)."""
    return nk_public.encrypt(share, _OAEP)


def key_auth_tag(key: bytes, uuid: str) -> str:
    """hex(HMAC-SHA384(K, uuid)): the tenant's proof, sent with U, of which K the shares must form."""
    return hmac.new(key, uuid.encode(), hashlib.sha384).hexdigest()


def combine_keys(u: bytes, v: bytes, *, uuid: str, expected_auth_tag: str) -> bytes:
    """K = U xor V, accepted only when HMAC-SHA384(K, uuid) equals the tenant's auth_tag."""
    if len(u) != KEY_SIZE or len(v) != KEY_SIZE:
        raise KeyDerivationError(f"U and V must be {KEY_SIZE} bytes each")
    k = bytes(a ^ b for a, b in zip(u, v, strict=True))
    if not hmac.compare_digest(key_auth_tag(k, uuid), expected_auth_tag.lower()):
        raise KeyDerivationError("U xor V does not match the auth_tag sent with U")
    return k


def verify_response(key: bytes, challenge: str) -> str:
    """`GET /v2.x/keys/verify?challenge=` result: hex(HMAC-SHA384(K, challenge)), proof of holding K."""
    return hmac.new(key, challenge.encode(), hashlib.sha384).hexdigest()


def decrypt_payload(payload_b64: str | bytes, key: bytes) -> bytes:
    """Keylime's payload: b64(iv16 || AES-256-GCM ciphertext || tag16) under K."""
    try:
        raw = base64.b64decode(payload_b64, validate=True)
    except (binascii.Error, ValueError):
        raise KeyDerivationError("payload is not valid base64") from None
    if len(raw) < _GCM_IV + _GCM_TAG:
        raise KeyDerivationError(f"payload is {len(raw)} bytes, shorter than IV + tag")
    if len(key) != KEY_SIZE:
        raise KeyDerivationError(f"payload key must be {KEY_SIZE} bytes")
    iv, body = raw[:_GCM_IV], raw[_GCM_IV:]
    try:
        return AESGCM(key).decrypt(iv, body, None)
    except InvalidTag:
        raise KeyDerivationError("payload fails AES-GCM authentication under K") from None


def encrypt_payload(plaintext: bytes, key: bytes, *, iv: bytes) -> str:
    """The tenant's side of `decrypt_payload` (for tests and tools); `iv` must be fresh and 16 bytes."""
    if len(iv) != _GCM_IV:
        raise KeyDerivationError(f"payload IV must be {_GCM_IV} bytes")
    return _b64(iv + AESGCM(key).encrypt(iv, plaintext, None))


# ---------------------------------------------------------------- revocation
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)


@dataclass(frozen=True)
class Revocation:
    """A verified revocation notification; `msg` is Keylime's JSON (type, agent_id, event_id, ...)."""

    msg: dict[str, Any]

    @property
    def agent_id(self) -> str | None:
        value = self.msg.get("agent_id")
        return value if isinstance(value, str) else None


def verify_revocation(body: Mapping[str, Any], public_key: rsa.RSAPublicKey) -> Revocation:
    """Checks `{msg, signature}` (b64 RSA-PSS/SHA-256 over the msg text, max salt) and parses msg.

    An unsigned message ("signature": "none", which Keylime sends when it has no revocation key) is refused:
    acting on it would let anyone on the network revoke a node.
    """
    msg = body.get("msg")
    if not isinstance(msg, str):
        raise ProtocolError("revocation 'msg' is missing or not a string")
    if body.get("signature") in (None, "", "none"):
        raise SignatureError("revocation message is unsigned")
    signature = b64decode_field(body, "signature")
    try:
        public_key.verify(signature, msg.encode(), _PSS, hashes.SHA256())
    except InvalidSignature:
        raise SignatureError("revocation signature does not verify with the revocation key") from None
    return Revocation(load_json_object(msg, what="revocation msg"))


def sign_revocation(msg: Mapping[str, Any], private_key: rsa.RSAPrivateKey) -> dict[str, str]:
    """The verifier's side of `verify_revocation` (for tests and tools)."""
    text = json.dumps(dict(msg))
    signature = private_key.sign(text.encode(), _PSS, hashes.SHA256())
    return {"msg": text, "signature": _b64(signature)}
