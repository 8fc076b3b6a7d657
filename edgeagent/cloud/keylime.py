"""A REST client for stock Keylime's registrar and verifier, as Keylime's own tenant uses them.

Keylime's Python modules have no stable API and live in their own environment; the controller only speaks
their REST APIs over mTLS with the Keylime CA and client certificate (`cv_ca/`: cacert.crt,
client-cert.crt, client-private.pem). Every response is Keylime's envelope, parsed by
`edgeagent.protocol.keylime`. A service that cannot be reached raises PeerUnreachable (the caller retries with
backoff); a refusal raises AttestationError with Keylime's own status text.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from edgeagent.errors import AttestationError, PeerUnreachable, ProtocolError
from edgeagent.protocol import keylime as protocol

CLIENT_API_VERSIONS: tuple[str, ...] = ("2.1", "2.2", "2.3", "2.4", "2.5", "2.6")
"""Registrar/verifier API versions this client's requests are valid for (pull mode, 2.x)."""


class OperationalState:
    """The verifier's per-agent states (keylime.common.states), by Keylime's numbers."""

    REGISTERED = 0
    START = 1
    SAVED = 2
    GET_QUOTE = 3
    GET_QUOTE_RETRY = 4
    PROVIDE_V = 5
    PROVIDE_V_RETRY = 6
    FAILED = 7
    TERMINATED = 8
    INVALID_QUOTE = 9
    TENANT_FAILED = 10

    GOOD = frozenset({GET_QUOTE, PROVIDE_V})
    """States of an agent whose last quote passed (PROVIDE_V: good quote, V on its way)."""
    BAD = frozenset({FAILED, INVALID_QUOTE, TENANT_FAILED, TERMINATED})
    """States after which the verifier stops polling until the agent is reactivated."""


@dataclass(frozen=True)
class KeylimeTls:
    """The Keylime CA and the client certificate the tenant presents (Keylime's `cv_ca` layout)."""

    ca_cert: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def from_dir(cls, ca_dir: Path) -> KeylimeTls:
        return cls(ca_dir / "cacert.crt", ca_dir / "client-cert.crt", ca_dir / "client-private.pem")

    def context(self, *, server_pem: str | None = None) -> ssl.SSLContext:
        """Client context: trust the Keylime CA, or only ``server_pem`` (an agent's pinned mTLS cert)."""
        try:
            if server_pem is None:
                ctx = ssl.create_default_context(cafile=str(self.ca_cert))
            else:
                # The verifier pins each agent's self-issued certificate from the registrar; so do we.
                ctx = ssl.create_default_context(cadata=server_pem)
                ctx.check_hostname = False
                ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        except (OSError, ssl.SSLError) as e:
            raise AttestationError(f"cannot load Keylime TLS material: {e}") from None
        return ctx


@dataclass(frozen=True)
class RegistrarAgent:
    """An agent's record at the registrar (`GET /v2.x/agents/{uuid}` on the TLS port)."""

    uuid: str
    ek_tpm: bytes
    aik_tpm: bytes
    ekcert: bytes | None
    mtls_cert: str | None
    ip: str | None
    port: int | None
    regcount: int


@dataclass(frozen=True)
class VerifierAgent:
    """What the verifier says about an agent it polls."""

    uuid: str
    operational_state: int
    attestation_count: int
    last_event_id: str | None
    last_successful_attestation: int
    raw: dict[str, Any]

    @property
    def push(self) -> bool:
        """A push-mode agent: the verifier has no address for it (it pushes its evidence)."""
        return self.raw.get("ip") is None and self.raw.get("port") is None

    @property
    def attestation_status(self) -> str:
        """Keylime 7.14's summary: PASS, FAIL, TIMEOUT (a push agent silent 5 quote intervals), PENDING."""
        return str(self.raw.get("attestation_status") or "PENDING")

    @property
    def good(self) -> bool:
        if self.push:  # operational_state stays GET_QUOTE whatever the evidence says
            return self.attestation_status == "PASS" and self.attestation_count > 0
        return self.operational_state in OperationalState.GOOD and self.attestation_count > 0

    @property
    def failed(self) -> bool:
        if self.push:
            return self.attestation_status in ("FAIL", "TIMEOUT")
        return self.operational_state in OperationalState.BAD


BULK_FIELDS = ("operational_state", "attestation_count", "last_event_id", "last_successful_attestation",
               "ip", "port", "attestation_status")
"""What `VerifierAgent` reads from a verifier record."""


def verifier_agent(uuid: str, r: dict[str, Any]) -> VerifierAgent:
    """A verifier record (one agent's) as a VerifierAgent; ProtocolError without a usable state."""
    state = r.get("operational_state")
    if state is None and r.get("ip") is None and r.get("port") is None:
        state = OperationalState.GET_QUOTE  # push mode clears it while it verifies the first evidence
    if not isinstance(state, int):
        raise ProtocolError(f"verifier's record of {uuid} has no operational_state")
    return VerifierAgent(
        uuid=uuid,
        operational_state=state,
        attestation_count=int(r.get("attestation_count") or 0),
        last_event_id=r.get("last_event_id"),
        last_successful_attestation=int(r.get("last_successful_attestation") or 0),
        raw=r,
    )


class Http:
    """JSON over HTTP(S) with Keylime's envelope; the one place that speaks HTTP to Keylime.

    Connections are kept alive and reused (urllib3's pool): a controller polling a verifier and registrar
    for a fleet would otherwise pay a TLS handshake with client authentication, on both sides, per request
    (measured by `edgeagent bench fleet`). Safe from several threads (the pool is)."""

    def __init__(self, ctx: ssl.SSLContext | None, *, timeout: float = 10.0) -> None:
        self.ctx = ctx
        self.timeout = timeout
        pinned = ctx is not None and not ctx.check_hostname  # an agent's self-issued certificate, pinned
        options: dict[str, Any] = {"assert_hostname": False} if pinned else {}
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=8, ssl_context=ctx, retries=False, timeout=urllib3.Timeout(total=timeout),
            **options,
        )

    def request(self, method: str, url: str, body: Any = None) -> protocol.Envelope:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        try:
            resp = self._pool.request(method, url, body=data, headers=headers, redirect=False)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise PeerUnreachable(f"{method} {url.split('?')[0]}: {reason}") from None
        raw = resp.data
        if resp.status >= 400:
            try:
                return protocol.parse_envelope(raw)
            except ProtocolError:
                return protocol.envelope(resp.status, resp.reason or "error")
        return protocol.parse_envelope(raw)

    def close(self) -> None:
        self._pool.clear()


class KeylimeClient:
    """Registrar (TLS port) and verifier admin APIs; versions negotiated once per service, lazily.

    Several verifiers (``more_verifiers``: Keylime verifiers sharing the registrar and the CA, each with its
    own database) split a fleet: a new agent goes to the verifier polling the fewest (as last counted), and
    every later call for it goes where it is. Where each agent is comes from the bulk polls (so a restarted
    controller relearns it in one poll); an agent not seen yet is looked for on each verifier in turn."""

    def __init__(
        self, *, registrar_url: str, verifier_url: str, tls: KeylimeTls, timeout: float = 10.0,
        more_verifiers: tuple[str, ...] = (),
    ) -> None:
        self.registrar_url = registrar_url.rstrip("/")
        self.verifier_urls = [u.rstrip("/") for u in (verifier_url, *more_verifiers)]
        self.verifier_url = self.verifier_urls[0]
        self.tls = tls
        self.http = Http(tls.context(), timeout=timeout)
        self._versions: dict[str, str] = {}
        self._where: dict[str, str] = {}
        """agent -> its verifier (several verifiers only); rebuilt by each bulk poll, so it holds only the
        agents the verifiers poll now."""
        self._load: dict[str, int] = dict.fromkeys(self.verifier_urls, 0)
        self._placing = threading.Lock()

    def _verifier_of(self, uuid: str) -> list[str]:
        """Where to look for ``uuid``: its verifier if known, else every one."""
        known = self._where.get(uuid)
        return [known] if known else list(self.verifier_urls)

    def _version(self, base: str) -> str:
        if base not in self._versions:
            env = self.http.request("GET", f"{base}/version")
            if env.code == 410:
                # A push-mode verifier (Keylime 7.14) has retired /version; its v3 admin routes are stubs
                # answering 404, so the admin API there is still v2: the highest v2 root it answers.
                self._versions[base] = self._v2_root(base)
                return self._versions[base]
            if not env.ok:
                raise AttestationError(f"{base}/version -> {env.code} {env.status}")
            theirs = protocol.parse_version_results(env.results)
            self._versions[base] = protocol.negotiate_api_version(CLIENT_API_VERSIONS, theirs)
        return self._versions[base]

    def _v2_root(self, base: str) -> str:
        for version in reversed(CLIENT_API_VERSIONS):
            if self.http.request("GET", f"{base}/v{version}/").code != 404:
                return version
        raise AttestationError(f"{base} answers /version with 410 and none of the v2 roots "
                               f"{', '.join(CLIENT_API_VERSIONS)}")

    def _url(self, base: str, path: str) -> str:
        return f"{base}/v{self._version(base)}{path}"

    # ------------------------------------------------------------ registrar
    def registrar_agent(self, uuid: str) -> RegistrarAgent | None:
        """The registrar's record of an *activated* agent, or None (unknown, or AK not activated yet)."""
        env = self.http.request("GET", self._url(self.registrar_url, f"/agents/{uuid}"))
        if env.code == 404:
            return None
        if not env.ok:
            raise AttestationError(f"registrar GET agent {uuid}: {env.code} {env.status}")
        r = env.results
        try:
            ekcert = base64.b64decode(r["ekcert"], validate=True) if r.get("ekcert") else None
        except (binascii.Error, ValueError):
            raise ProtocolError("registrar 'ekcert' is not base64") from None
        port = r.get("port")
        return RegistrarAgent(
            uuid=uuid,
            ek_tpm=protocol.b64decode_field(r, "ek_tpm"),
            aik_tpm=protocol.b64decode_field(r, "aik_tpm"),
            ekcert=ekcert,
            mtls_cert=r.get("mtls_cert") or None,
            ip=r.get("ip"),
            port=int(port) if port not in (None, "") else None,
            regcount=int(r.get("regcount") or 0),
        )

    # ------------------------------------------------------------ verifier
    def add_agent(
        self,
        uuid: str,
        *,
        agent: RegistrarAgent,
        v: bytes,
        ip: str | None,
        port: int | None,
        tpm_policy: dict[str, list[str]],
        revocation_key_pem: str,
        agent_api_version: str,
        mb_policy: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """`POST /v2.x/agents/{uuid}`: the verifier starts polling the agent and sends V after a good quote.
        A push-mode verifier ignores ``ip``/``port`` (None) and ``v``: it waits for the agent's evidence.

        ``tpm_policy`` maps PCR numbers to accepted hex values; the mask is derived from it (plus the
        measured-boot PCRs when ``mb_policy``, a Keylime reference state, is given), as Keylime's tenant does.
        """
        policy: dict[str, Any] = {k: [x.lower() for x in vals] for k, vals in tpm_policy.items()}
        mask = int(protocol.mask_from_pcrs(int(k) for k in tpm_policy), 16)
        if mb_policy:
            for pcr in (*range(0, 10), *range(11, 16)):
                mask |= 1 << pcr
        policy["mask"] = hex(mask)
        body = {
            "v": base64.b64encode(v).decode(),
            "cloudagent_ip": ip,
            "cloudagent_port": port,
            "tpm_policy": json.dumps(policy),
            "runtime_policy": "",
            "runtime_policy_name": None,
            "runtime_policy_key": None,
            "mb_policy": mb_policy,
            "mb_policy_name": None,
            "ima_sign_verification_keys": "",
            "metadata": json.dumps(metadata or {}),
            "revocation_key": revocation_key_pem,
            "accept_tpm_hash_algs": ["sha256", "sha384", "sha512"],
            "accept_tpm_encryption_algs": ["rsa", "ecc"],
            "accept_tpm_signing_algs": ["rsassa", "ecschnorr", "ecdsa"],
            "ak_tpm": base64.b64encode(agent.aik_tpm).decode(),
            "mtls_cert": agent.mtls_cert,
            "supported_version": agent_api_version,
        }
        with self._placing:  # concurrent enrollments each take the then least loaded verifier
            base = self._where.get(uuid) or min(self.verifier_urls, key=lambda u: self._load.get(u, 0))
            self._load[base] = self._load.get(base, 0) + 1
        env = self.http.request("POST", self._url(base, f"/agents/{uuid}"), body)
        if not env.ok:
            with self._placing:
                self._load[base] -= 1
            raise AttestationError(f"verifier refused to add agent {uuid}: {env.code} {env.status}")
        if len(self.verifier_urls) > 1:
            self._where[uuid] = base

    def agent_state(self, uuid: str) -> VerifierAgent | None:
        """The verifier's view of ``uuid``, or None when no verifier polls it."""
        for base in self._verifier_of(uuid):
            env = self.http.request("GET", self._url(base, f"/agents/{uuid}"))
            if env.code == 404:
                continue
            if not env.ok:
                raise AttestationError(f"verifier GET agent {uuid}: {env.code} {env.status}")
            if len(self.verifier_urls) > 1:
                self._where[uuid] = base
            return verifier_agent(uuid, env.results.get(uuid, env.results))
        return None

    def agent_states(self) -> dict[str, VerifierAgent]:
        """Every agent the verifier polls, in one request (`GET /v2.x/agents/?bulk=true`): what the
        controller reads each poll instead of one request per device. Only the fields the controller uses
        are kept (a record carries the whole policy). With several verifiers: one request to each, merged."""
        out: dict[str, VerifierAgent] = {}
        where: dict[str, str] = {}
        for base in self.verifier_urls:
            env = self.http.request("GET", self._url(base, "/agents/?bulk=true"))
            if not env.ok:
                raise AttestationError(f"verifier {base} bulk GET agents: {env.code} {env.status}")
            if not isinstance(env.results, dict):
                raise ProtocolError("verifier's bulk answer is not an object of agents")
            count = 0
            for uuid, record in env.results.items():
                if isinstance(record, dict):
                    slim = {k: record.get(k) for k in BULK_FIELDS if k in record}
                    out[str(uuid)] = verifier_agent(str(uuid), slim)
                    where[str(uuid)] = base
                    count += 1
            self._load[base] = count
        if len(self.verifier_urls) > 1:
            self._where = where
        return out

    def reactivate_agent(self, uuid: str) -> None:
        """`PUT /v2.x/agents/{uuid}/reactivate`: the verifier polls a failed agent again (same policies)."""
        for base in self._verifier_of(uuid):
            env = self.http.request("PUT", self._url(base, f"/agents/{uuid}/reactivate"), {})
            if env.code == 404 and len(self.verifier_urls) > 1:
                continue
            if not env.ok:
                raise AttestationError(f"verifier refused to reactivate {uuid}: {env.code} {env.status}")
            return

    def delete_agent(self, uuid: str) -> None:
        """`DELETE /v2.x/agents/{uuid}`; an agent the verifier does not know counts as deleted."""
        for base in self._verifier_of(uuid):
            env = self.http.request("DELETE", self._url(base, f"/agents/{uuid}"))
            if not env.ok and env.code != 404:
                raise AttestationError(f"verifier refused to delete {uuid}: {env.code} {env.status}")
        self._where.pop(uuid, None)
