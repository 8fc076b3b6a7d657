"""Keylime's push model (API 3.0, experimental in Keylime 7.14): the wire format, pure.

Named after Keylime's own documents (`docs/design/push_model.rst`, `docs/rest_apis/3_0/verifier.rst`) and
checked against the 7.14.3 verifier's code (`keylime/web/verifier/session_controller.py`,
`attestation_controller.py`, `models/verifier/auth_session.py`, `verification/tpm_engine.py`):

    POST  /v3.0/sessions                         {agent_id, authentication_supported: [tpm_pop]}
          <- 200 {id, authentication_requested[0].chosen_parameters.challenge (16 random bytes, b64)}
    PATCH /v3.0/sessions/{id}                    {agent_id, authentication_provided[0].data.{message,
                                                  signature}}: TPM2_Certify of the AK by the AK, the
                                                  challenge as qualifying data
          <- 200 {evaluation: pass, token, token_expires_at} | 200/401 {evaluation: fail}
    POST  /v3.0/agents/{id}/attestations         Authorization: Bearer TOKEN; evidence_supported
          <- 201 {id (index), evidence_requested[tpm_quote].chosen_parameters.{challenge, hash_algorithm,
                  selected_subjects {bank: [pcr...]}}, challenges_expire_at}
    PATCH /v3.0/agents/{id}/attestations/latest  evidence_collected: quote (TPMS_ATTEST, TPMT_SIGNATURE,
                                                  tpm2-tools pcrblob), the logs asked for
          <- 202 meta.seconds_to_next_attestation; verification runs after the answer.

Bodies are JSON:API (``{"data": {"type", "attributes"}}``); errors ``{"errors": [{"status", "title",
"detail"}]}``. The verifier compares the quote's nonce with the base64 text's decoded bytes, so the raw
challenge is the qualifying data. Everything malformed raises `PushError` naming the field.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgeagent.errors import ProtocolError, QuoteVerificationError
from edgeagent.tpm import attest
from edgeagent.tpm.credential import CredentialError, make_credential
from edgeagent.tpm.quote import verify_signature

API_VERSION = "3.0"
POP = {"authentication_class": "pop", "authentication_type": "tpm_pop"}
FIRMWARE_LOG_FORMAT = "application/octet-stream"
CEL_LOG_TYPE = "edgeagent_cel"
"""The agent's CEL-JSON log, offered as a log evidence item. Keylime 7.14's TPM engine requests only
tpm_quote, uefi_log and ima_log, so it is never asked for; PCR 23 is checked through tpm_policy instead."""


class PushError(ProtocolError):
    """A push-mode exchange failed: a malformed 3.0 body, or a refusal the agent cannot recover from."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise PushError(f"malformed 3.0 response: {what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PushError(f"malformed 3.0 response: {what} is not base64") from None


def load_body(raw: bytes | str | Mapping[str, Any], *, what: str) -> dict[str, Any]:
    """A JSON object, or PushError (the verifier answered something that is not one)."""
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise PushError(f"malformed 3.0 response to {what}: not JSON") from None
    if not isinstance(obj, dict):
        raise PushError(f"malformed 3.0 response to {what}: not a JSON object")
    return obj


def _attributes(body: Mapping[str, Any], what: str) -> dict[str, Any]:
    data = body.get("data")
    attrs = data.get("attributes") if isinstance(data, Mapping) else None
    if not isinstance(attrs, Mapping):
        raise PushError(f"malformed 3.0 response to {what}: no data.attributes")
    return dict(attrs)


def error_detail(raw: bytes | str | Mapping[str, Any]) -> str:
    """The first error's detail of a JSON:API error body (or Keylime's older envelope's status), one line."""
    try:
        body = load_body(raw, what="error")
    except PushError:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return " ".join(text.split())[:200]
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
        first = errors[0]
        return str(first.get("detail") or first.get("title") or first.get("code") or "error")[:300]
    if isinstance(errors, Mapping):  # the model layer's {"field": ["message", ...]}
        return "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in errors.items())[:300]
    return str(body.get("status") or body.get("detail") or "no detail")[:300]


# ---------------------------------------------------------------- sessions
def session_request(agent_id: str) -> dict[str, Any]:
    """`POST /v3.0/sessions`: this agent proves possession of its AK with the TPM (tpm_pop)."""
    return {"data": {"type": "session", "attributes": {"agent_id": agent_id,
                                                        "authentication_supported": [dict(POP)]}}}


@dataclass(frozen=True)
class SessionChallenge:
    session_id: str
    challenge: bytes
    """Qualifying data for TPM2_Certify (Keylime: 16 random bytes)."""
    expires_at: str


def parse_session_challenge(body: Mapping[str, Any]) -> SessionChallenge:
    data = body.get("data")
    session_id = data.get("id") if isinstance(data, Mapping) else None
    if not isinstance(session_id, str) or not session_id or "/" in session_id:
        raise PushError("malformed 3.0 response to POST /sessions: no session id")
    attrs = _attributes(body, "POST /sessions")
    requested = attrs.get("authentication_requested")
    if not isinstance(requested, list) or not requested or not isinstance(requested[0], Mapping):
        raise PushError("malformed 3.0 response to POST /sessions: no authentication_requested")
    first = requested[0]
    if first.get("authentication_type") != "tpm_pop":
        raise PushError(f"verifier asks for {first.get('authentication_type')!r} authentication, not tpm_pop")
    params = first.get("chosen_parameters")
    challenge = _unb64(params.get("challenge") if isinstance(params, Mapping) else None, "the challenge")
    if not 0 < len(challenge) <= 64:
        raise PushError(f"malformed 3.0 response: a {len(challenge)}-byte challenge cannot be certified")
    return SessionChallenge(session_id, challenge, str(attrs.get("challenges_expire_at") or ""))


def pop_request(agent_id: str, session_id: str, message: bytes, signature: bytes) -> dict[str, Any]:
    """`PATCH /v3.0/sessions/{id}`: the TPM2_Certify answer (TPMS_ATTEST, TPMT_SIGNATURE)."""
    return {"data": {"type": "session", "id": session_id, "attributes": {
        "agent_id": agent_id,
        "authentication_provided": [
            {**POP, "data": {"message": _b64(message), "signature": _b64(signature)}}],
    }}}


@dataclass(frozen=True)
class SessionToken:
    token: str
    expires_at: float | None
    """Unix time the verifier lets the token lapse (it extends it on every passed attestation)."""


def parse_session_result(body: Mapping[str, Any]) -> SessionToken:
    """The bearer token, or PushError when the verifier did not accept the proof."""
    attrs = _attributes(body, "PATCH /sessions")
    if attrs.get("evaluation") != "pass":
        raise PushError("the verifier refused the proof of possession (evaluation: "
                        f"{attrs.get('evaluation')!r}): is the agent added to the verifier with this AK?")
    token = attrs.get("token")
    if not isinstance(token, str) or not token or any(c.isspace() for c in token):
        raise PushError("malformed 3.0 response to PATCH /sessions: no token")
    return SessionToken(token, parse_time(attrs.get("token_expires_at")))


def parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


def verify_pop(ak_public: bytes, message: bytes, signature: bytes, challenge: bytes) -> None:
    """What the verifier checks of a proof of possession (for tests and diagnostics): a TPM2_Certify
    structure naming the AK, over ``challenge``, signed by the AK. Raises PushError."""
    try:
        att = attest.parse_attest(message)
        ak = attest.parse_public(ak_public)
        sig = attest.parse_signature(signature)
    except attest.StructureError as e:
        raise PushError(f"proof of possession: {e}") from None
    if att.magic != attest.TPM_GENERATED_VALUE or att.type != attest.TPM_ST_ATTEST_CERTIFY:
        raise PushError("proof of possession: not a TPM-generated certify structure")
    if att.extra_data != challenge:
        raise PushError("proof of possession: qualifying data is not the session challenge")
    try:
        verify_signature(ak, sig, message)
    except QuoteVerificationError as e:
        raise PushError(f"proof of possession: signature: {e}") from None


# ---------------------------------------------------------------- attestations
@dataclass(frozen=True)
class Capabilities:
    """What the agent offers in phase 1."""

    ak_public: bytes
    key_algorithm: str  # "rsa" | "ecc"
    key_size: int
    signature_schemes: Sequence[str]
    banks: Sequence[str] = ("sha256",)
    pcrs: Sequence[int] = tuple(range(24))
    firmware_log: bool = False
    cel_entries: int | None = None
    boot_time: float | None = None


def capabilities_request(caps: Capabilities) -> dict[str, Any]:
    """`POST /v3.0/agents/{id}/attestations` body (phase 1)."""
    evidence: list[dict[str, Any]] = [{
        "evidence_class": "certification",
        "evidence_type": "tpm_quote",
        "capabilities": {
            "component_version": "2.0",
            "signature_schemes": list(caps.signature_schemes),
            "hash_algorithms": list(caps.banks),
            "available_subjects": {bank: list(caps.pcrs) for bank in caps.banks},
            "certification_keys": [{
                "key_class": "asymmetric",
                "key_algorithm": caps.key_algorithm,
                "key_size": caps.key_size,
                "server_identifier": "ak",
                "allowable_signature_schemes": list(caps.signature_schemes),
                "allowable_hash_algorithms": list(caps.banks),
                "public": _b64(caps.ak_public),
            }],
        },
    }]
    if caps.firmware_log:
        evidence.append({"evidence_class": "log", "evidence_type": "uefi_log", "capabilities": {
            "supports_partial_access": False, "appendable": False, "formats": [FIRMWARE_LOG_FORMAT]}})
    if caps.cel_entries is not None:
        evidence.append({"evidence_class": "log", "evidence_type": CEL_LOG_TYPE, "capabilities": {
            "entry_count": caps.cel_entries, "supports_partial_access": False, "appendable": True,
            "formats": ["application/json"]}})
    attrs: dict[str, Any] = {"evidence_supported": evidence}
    if caps.boot_time is not None:
        boot = dt.datetime.fromtimestamp(int(caps.boot_time), dt.UTC)
        attrs["system_info"] = {"boot_time": boot.isoformat().replace("+00:00", "Z")}
    return {"data": {"type": "attestation", "attributes": attrs}}


@dataclass(frozen=True)
class EvidenceRequest:
    """Phase 1's answer: what to quote and which logs to send, and until when."""

    index: str
    nonce: bytes
    hash_algorithm: str
    pcrs: tuple[int, ...]
    requested: tuple[tuple[str, str], ...]
    """(evidence_class, evidence_type) in the order the evidence must come back."""
    expires_at: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def parse_evidence_request(body: Mapping[str, Any]) -> EvidenceRequest:
    # Keylime 7.14.3 sends no data.id (its docs show one); the index is then the last segment of
    # data.links.self, and without either the evidence goes to .../attestations/latest.
    data = body.get("data")
    index = data.get("id") if isinstance(data, Mapping) else None
    links = data.get("links") if isinstance(data, Mapping) else None
    if index is None and isinstance(links, Mapping) and isinstance(links.get("self"), str):
        index = links["self"].rstrip("/").rpartition("/")[2]
    index = str(index) if index is not None and str(index).isdigit() else "latest"
    attrs = _attributes(body, "POST /attestations")
    items = attrs.get("evidence_requested")
    if not isinstance(items, list) or not items:
        raise PushError("malformed 3.0 response to POST /attestations: no evidence_requested")
    requested: list[tuple[str, str]] = []
    quote: Mapping[str, Any] | None = None
    for item in items:
        if not isinstance(item, Mapping):
            raise PushError("malformed 3.0 response: an evidence_requested item is not an object")
        pair = (str(item.get("evidence_class")), str(item.get("evidence_type")))
        requested.append(pair)
        if pair == ("certification", "tpm_quote"):
            params = item.get("chosen_parameters")
            quote = params if isinstance(params, Mapping) else {}
    if quote is None:
        raise PushError("malformed 3.0 response: the verifier requested no tpm_quote")
    nonce = _unb64(quote.get("challenge"), "the quote challenge")
    if not 0 < len(nonce) <= 64:
        raise PushError(f"malformed 3.0 response: a {len(nonce)}-byte quote challenge")
    bank = quote.get("hash_algorithm")
    subjects = quote.get("selected_subjects")
    if not isinstance(bank, str) or not isinstance(subjects, Mapping):
        raise PushError("malformed 3.0 response: no hash_algorithm or selected_subjects for the quote")
    pcrs = subjects.get(bank)
    if not isinstance(pcrs, list) or not pcrs or not all(isinstance(p, int) and 0 <= p < 24 for p in pcrs):
        raise PushError(f"malformed 3.0 response: selected_subjects[{bank!r}] is not a list of PCRs 0-23")
    return EvidenceRequest(index, nonce, bank, tuple(sorted(set(pcrs))), tuple(requested),
                           parse_time(attrs.get("challenges_expire_at")), dict(body))


def evidence_request(request: EvidenceRequest, *, attest_: bytes, signature: bytes, pcrblob: bytes,
                     firmware_log: bytes | None = None, cel_log: bytes | None = None) -> dict[str, Any]:
    """`PATCH .../attestations/latest` body (phase 2): the items in the order they were requested."""
    collected: list[dict[str, Any]] = []
    for cls, typ in request.requested:
        item: dict[str, Any] = {"evidence_class": cls, "evidence_type": typ}
        if (cls, typ) == ("certification", "tpm_quote"):
            item["data"] = {"subject_data": _b64(pcrblob), "message": _b64(attest_),
                            "signature": _b64(signature)}
        elif typ == "uefi_log":
            if firmware_log is None:
                raise PushError("the verifier asks for the firmware event log, and this device has none")
            item["data"] = {"entries": _b64(firmware_log)}
        elif typ == CEL_LOG_TYPE:
            item["data"] = {"entries": _b64(cel_log or b"")}
        else:
            raise PushError(f"the verifier asks for {typ!r} evidence, which this agent does not produce")
        collected.append(item)
    return {"data": {"type": "attestation", "attributes": {"evidence_collected": collected}}}


def parse_acknowledgement(body: Mapping[str, Any]) -> float:
    """Seconds to the next attestation from phase 2's 202 answer."""
    meta = body.get("meta")
    value = meta.get("seconds_to_next_attestation") if isinstance(meta, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise PushError("malformed 3.0 response to PATCH /attestations: "
                        "no meta.seconds_to_next_attestation")
    return float(value)


# ---------------------------------------------------------------- join material sealed to one TPM
JOIN_KEY_SIZE = 32


@dataclass(frozen=True)
class Sealed:
    """Join material only one TPM can open: K wrapped with TPM2_MakeCredential (to the EK, for the AK's
    name), the material under AES-256-GCM with K and the agent id as associated data."""

    agent_id: str
    credential: bytes
    """tpm2-tools credential blob (0xBADCC0DE) whose secret is K."""
    nonce: bytes
    ciphertext: bytes

    def to_json(self) -> dict[str, Any]:
        return {"state": "attested", "agent_id": self.agent_id, "credential": _b64(self.credential),
                "nonce": _b64(self.nonce), "ciphertext": _b64(self.ciphertext)}


def seal(*, agent_id: str, ek_public: bytes, ak_name: bytes, material: bytes) -> Sealed:
    """Encrypts ``material`` so that only ActivateCredential in the TPM with this EK and AK can open it."""
    key = os.urandom(JOIN_KEY_SIZE)
    try:
        credential = make_credential(ek_public, ak_name, key)
    except CredentialError as e:
        raise PushError(f"cannot seal join material for {agent_id}: {e}") from None
    nonce = os.urandom(12)
    return Sealed(agent_id, credential, nonce, AESGCM(key).encrypt(nonce, material, agent_id.encode()))


def parse_sealed(body: Mapping[str, Any], agent_id: str) -> Sealed:
    if body.get("agent_id") != agent_id:
        raise PushError(f"malformed join answer: made for agent {body.get('agent_id')!r}, not {agent_id!r}")
    return Sealed(agent_id, _unb64(body.get("credential"), "the join credential"),
                  _unb64(body.get("nonce"), "the join nonce"),
                  _unb64(body.get("ciphertext"), "the join ciphertext"))


def open_sealed(sealed: Sealed, key: bytes) -> bytes:
    """The material, with K from ActivateCredential; PushError if it does not authenticate."""
    if len(key) != JOIN_KEY_SIZE:
        raise PushError(f"join key is {len(key)} bytes, not {JOIN_KEY_SIZE}")
    try:
        return AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, sealed.agent_id.encode())
    except InvalidTag:
        raise PushError("join material does not authenticate under the key this TPM recovered") from None
