"""Acting as Keylime's tenant over REST: hand a device its join material, openable only once it is attested.

The sequence is the one Keylime's own tenant follows, minus its Python imports:
1. split a fresh 256-bit K into U and V (U random, V = K xor U) and encrypt the join material under K;
2. add the agent to the verifier with V (the verifier gives V to the agent only after a quote passed);
3. ask the agent for an identity quote with our nonce, verify it with the AK from the registrar and check
   PCR16 binds the agent's NK (so U is encrypted to a key that lives next to that TPM);
4. POST U (RSA-OAEP to the NK), auth_tag = HMAC(K, uuid) and the encrypted payload to the agent.
Payload = JSON {"apiServer", "caCert", "bootstrapToken", "nodeName", "revocationCert"}: data the agent
parses, never a script. "revocationCert" is a self-signed certificate of this enrollment's revocation key (the
verifier signs its revocation notifications with the private half), so the device can act on its own
revocation.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import secrets
import string
from dataclasses import dataclass
from urllib.parse import urlencode

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edgeagent import certs
from edgeagent.cloud.keylime import Http, KeylimeTls, RegistrarAgent
from edgeagent.errors import AttestationError, QuoteVerificationError
from edgeagent.protocol import keylime as protocol
from edgeagent.tpm.quote import Quote, verify_quote

AGENT_API_VERSIONS: tuple[str, ...] = ("2.1", "2.2", "2.3", "2.4", "2.5")
_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class JoinMaterial:
    """What a device needs to ask for its node certificate (the contract's payload)."""

    api_server: str
    ca_cert_pem: str
    bootstrap_token: str
    node_name: str
    revocation_cert_pem: str | None = None

    def to_bytes(self) -> bytes:
        obj = {
            "apiServer": self.api_server,
            "caCert": self.ca_cert_pem,
            "bootstrapToken": self.bootstrap_token,
            "nodeName": self.node_name,
        }
        if self.revocation_cert_pem:
            obj["revocationCert"] = self.revocation_cert_pem
        return json.dumps(obj, sort_keys=True).encode()


def revocation_certificate(key: rsa.RSAPrivateKey, node_name: str, *, days: int = 3650) -> str:
    """A self-signed certificate of the revocation key: only its public key matters to the device."""
    cert = certs.build(f"edgeagent revocation {node_name}", signer=key,
                       lifetime=datetime.timedelta(days=days))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class SplitKey:
    """K and its shares; K never leaves this process, U goes to the agent, V to the verifier."""

    k: bytes
    u: bytes
    v: bytes

    @classmethod
    def fresh(cls) -> SplitKey:
        k, u = os.urandom(protocol.KEY_SIZE), os.urandom(protocol.KEY_SIZE)
        return cls(k, u, bytes(a ^ b for a, b in zip(k, u, strict=True)))


def nonce() -> str:
    """20 alphanumerics, like Keylime's tenant and verifier nonces."""
    return "".join(secrets.choice(_ALNUM) for _ in range(20))


class AgentClient:
    """The agent's mTLS API as the tenant sees it: Keylime client cert out, the registrar's pinned cert in."""

    def __init__(
        self, agent: RegistrarAgent, tls: KeylimeTls, *, address: str | None = None, timeout: float = 10.0
    ) -> None:
        if not agent.mtls_cert:
            raise AttestationError(f"agent {agent.uuid} registered no mTLS certificate; refusing plain HTTP")
        if address is None:
            if not agent.ip or not agent.port:
                raise AttestationError(f"agent {agent.uuid} registered no address")
            address = f"{agent.ip}:{agent.port}"
        self.agent = agent
        self.base = f"https://{address}"
        self.http = Http(tls.context(server_pem=agent.mtls_cert), timeout=timeout)
        self._version: str | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.base.removeprefix("https://").rpartition(":")
        return host, int(port)

    def api_version(self) -> str:
        if self._version is None:
            env = self.http.request("GET", f"{self.base}/version")
            if not env.ok:
                raise AttestationError(f"agent {self.agent.uuid} /version -> {env.code} {env.status}")
            self._version = protocol.negotiate_api_version(
                AGENT_API_VERSIONS, protocol.parse_version_results(env.results)
            )
        return self._version

    def _get(self, path: str, query: dict[str, str]) -> dict:
        env = self.http.request("GET", f"{self.base}/v{self.api_version()}{path}?{urlencode(query)}")
        if not env.ok:
            raise AttestationError(f"agent {self.agent.uuid} {path} -> {env.code} {env.status}")
        return env.results

    def identity_quote(self) -> rsa.RSAPublicKey:
        """Checks an identity quote (fresh nonce, registrar's AK, PCR16 = H(NK)) and returns the NK."""
        n = nonce()
        results = self._get("/quotes/identity", {"nonce": n})
        pem = results.get("pubkey")
        if not isinstance(pem, str):
            raise AttestationError(f"agent {self.agent.uuid} identity quote carries no pubkey")
        quote = Quote.from_keylime_string(str(results.get("quote", "")))
        verify_quote(quote, self.agent.aik_tpm, n.encode())
        if quote.pcr_values.get(protocol.DATA_PCR) != protocol.data_pcr_value(pem):
            raise QuoteVerificationError(f"agent {self.agent.uuid}: PCR16 does not bind the NK it sent")
        try:
            key = serialization.load_pem_public_key(pem.encode())
        except ValueError:
            raise AttestationError(f"agent {self.agent.uuid} NK is not a PEM public key") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise AttestationError(f"agent {self.agent.uuid} NK is not an RSA key")
        return key

    def pcr_values(self, pcrs: list[int]) -> dict[int, bytes]:
        """PCR values from an integrity quote verified with the registrar's AK (trust on first use)."""
        n = nonce()
        results = self._get(
            "/quotes/integrity",
            {"nonce": n, "mask": protocol.mask_from_pcrs(pcrs), "partial": "1", "ima_ml_entry": "0"},
        )
        quote = Quote.from_keylime_string(str(results.get("quote", "")))
        verify_quote(quote, self.agent.aik_tpm, n.encode())
        missing = [i for i in pcrs if i not in quote.pcr_values]
        if missing:
            raise QuoteVerificationError(f"agent {self.agent.uuid} quote lacks PCRs {missing}")
        return {i: quote.pcr_values[i] for i in pcrs}

    def post_revocation(self, signed: dict[str, str]) -> None:
        """`POST /v2.x/notifications/revocation`: a revocation signed with the enrollment's revocation key,
        to this agent only (what Keylime's "agent" notifier sends to every agent it polls)."""
        env = self.http.request("POST", f"{self.base}/v{self.api_version()}/notifications/revocation", signed)
        if not env.ok:
            raise AttestationError(f"agent {self.agent.uuid} refused the revocation: {env.code} {env.status}")

    def post_ukey(self, nk: rsa.RSAPublicKey, key: SplitKey, payload: bytes) -> None:
        body = {
            "encrypted_key": base64.b64encode(protocol.encrypt_key_share(nk, key.u)).decode(),
            "auth_tag": protocol.key_auth_tag(key.k, self.agent.uuid),
            "payload": protocol.encrypt_payload(payload, key.k, iv=os.urandom(16)),
        }
        env = self.http.request("POST", f"{self.base}/v{self.api_version()}/keys/ukey", body)
        if not env.ok:
            raise AttestationError(f"agent {self.agent.uuid} refused U: {env.code} {env.status}")
