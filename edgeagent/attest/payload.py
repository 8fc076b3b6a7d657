"""The U/V payload: two key shares become K, K opens the payload, the payload is the node's join material.

Keylime splits the bootstrap key K: the tenant (here the attestation controller) sends U with the encrypted
payload and ``auth_tag = HMAC(K, uuid)``; the verifier sends V only after a quote passed. Neither share alone
reveals anything, so the payload opens only on a device that was attested. Shares may arrive in any order and
more than once (a re-add sends a new U, a verifier restart a new V); every pairing is tried and the one whose
XOR matches an auth_tag wins.

The payload is treated as data: stock Keylime may unzip it and run ``autorun.sh``; this agent never executes
anything from it. It is written 0600 to ``enroll.payload_dir`` (a tmpfs by default, so it is gone at the next
boot) and parsed as join material: JSON {"apiServer", "caCert", "bootstrapToken", "nodeName"} and optionally
"revocationCert": the PEM certificate of this enrollment's revocation key, with which the verifier signs the
revocation notifications the agent then acts on.
"""

from __future__ import annotations

import dataclasses
import json
import re
import stat
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from edgeagent.attest.secrets import read_private, write_private
from edgeagent.errors import KeyDerivationError, ProtocolError, StateError
from edgeagent.protocol import keylime as protocol

PAYLOAD_FILE = "payload"
MAX_SHARES = 8
"""Shares kept per kind; older ones are dropped so a client cannot grow the agent's memory without bound."""

_TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
_NODE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")


@dataclasses.dataclass(frozen=True)
class Delivery:
    key: bytes = dataclasses.field(repr=False)
    payload: bytes | None = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class _U:
    share: bytes
    auth_tag: str
    payload: str | None


class KeyShares:
    """Collects U and V shares (thread-safe) and reports a `Delivery` once a pair forms K."""

    def __init__(self, uuid: str, on_delivery: Callable[[Delivery], None] | None = None) -> None:
        self.uuid = uuid
        self._on_delivery = on_delivery
        self._lock = threading.Lock()
        self._u: list[_U] = []
        self._v: list[bytes] = []
        self.key: bytes | None = None
        self.delivered: Delivery | None = None

    def add_u(self, share: bytes, auth_tag: str, payload: str | None) -> Delivery | None:
        with self._lock:
            self._u = [*self._u, _U(share, auth_tag.lower(), payload)][-MAX_SHARES:]
            found = self._combine()
        return self._deliver(found)

    def add_v(self, share: bytes) -> Delivery | None:
        with self._lock:
            self._v = [*self._v, share][-MAX_SHARES:]
            found = self._combine()
        return self._deliver(found)

    def _combine(self) -> Delivery | None:
        for u in reversed(self._u):  # the newest pair wins: a re-add supersedes an old payload
            for v in reversed(self._v):
                try:
                    k = protocol.combine_keys(u.share, v, uuid=self.uuid, expected_auth_tag=u.auth_tag)
                except KeyDerivationError:
                    continue
                data = protocol.decrypt_payload(u.payload, k) if u.payload else None
                delivery = Delivery(k, data)
                if self.delivered == delivery:
                    return None
                self.key, self.delivered = k, delivery
                return delivery
        return None

    def _deliver(self, found: Delivery | None) -> Delivery | None:
        if found is not None and self._on_delivery is not None:
            self._on_delivery(found)
        return found


def store(directory: Path, data: bytes) -> Path:
    """Writes the decrypted payload (0600, atomically); returns its path."""
    return write_private(directory / PAYLOAD_FILE, data)


def stored(directory: Path) -> bytes | None:
    return read_private(directory / PAYLOAD_FILE)


def payload_dir(configured: Path, state_dir: Path) -> Path:
    """``configured`` (a tmpfs such as /run/edgeagent) when it can be used, else ``state_dir/payload``.

    A new directory is 0700. An existing one loses group write and all access for others, but keeps group
    read/search: by default it is the unit's RuntimeDirectory (0750), which also holds agent.sock for the
    edgeagent group; the payload file itself is 0600."""
    for candidate in (configured, state_dir / "payload"):
        try:
            candidate.mkdir(parents=True, exist_ok=True, mode=0o700)
            candidate.chmod(stat.S_IMODE(candidate.stat().st_mode) & 0o750 | 0o700)
        except OSError:
            continue
        return candidate
    raise StateError(f"neither {configured} nor {state_dir / 'payload'} can hold the payload")


@dataclasses.dataclass(frozen=True)
class JoinMaterial:
    """What the cloud side sends a device it attested: where the cluster is and a one-shot credential."""

    api_server: str
    ca_cert: bytes
    bootstrap_token: str = dataclasses.field(repr=False)
    node_name: str
    revocation_cert: bytes | None = None
    """PEM certificate of the verifier's revocation key for this enrollment (None: not sent)."""


def parse_join_material(data: bytes) -> JoinMaterial:
    """Validates the payload as join material; ProtocolError with the offending field otherwise."""
    obj = protocol.load_json_object(data, what="payload")
    fields = {}
    for name in ("apiServer", "caCert", "bootstrapToken", "nodeName"):
        value = obj.get(name)
        if not isinstance(value, str) or not value:
            raise ProtocolError(f"payload field {name!r} is missing or not a string")
        fields[name] = value
    url = urllib.parse.urlparse(fields["apiServer"])
    if url.scheme != "https" or not url.hostname:
        raise ProtocolError("payload 'apiServer' is not an https URL")
    try:
        x509.load_pem_x509_certificate(fields["caCert"].encode())
    except ValueError:
        raise ProtocolError("payload 'caCert' is not a PEM certificate") from None
    if not _TOKEN_RE.match(fields["bootstrapToken"]):
        raise ProtocolError("payload 'bootstrapToken' is not a Kubernetes bootstrap token (id.secret)")
    if len(fields["nodeName"]) > 253 or not _NODE_RE.match(fields["nodeName"]):
        raise ProtocolError("payload 'nodeName' is not a valid node name")
    revocation = obj.get("revocationCert")
    if revocation is not None:
        if not isinstance(revocation, str):
            raise ProtocolError("payload 'revocationCert' is not a string")
        try:
            key = x509.load_pem_x509_certificate(revocation.encode()).public_key()
        except ValueError:
            raise ProtocolError("payload 'revocationCert' is not a PEM certificate") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise ProtocolError("payload 'revocationCert' does not hold an RSA key (Keylime signs RSA-PSS)")
    return JoinMaterial(fields["apiServer"], fields["caCert"].encode(), fields["bootstrapToken"],
                        fields["nodeName"], revocation.encode() if revocation else None)


def encode_join_material(material: JoinMaterial) -> bytes:
    """The JSON the cloud side sends (for tests and tools)."""
    return json.dumps({
        "apiServer": material.api_server,
        "caCert": material.ca_cert.decode(),
        "bootstrapToken": material.bootstrap_token,
        "nodeName": material.node_name,
        **({"revocationCert": material.revocation_cert.decode()} if material.revocation_cert else {}),
    }).encode()
