"""The device side of Keylime's push model (API 3.0): an HTTPS client with no listening socket.

Every connection starts on the device, so a device behind NAT or a firewall that drops inbound connections
attests like any other:

    session      `POST /v3.0/sessions` -> challenge -> TPM2_Certify of the AK by itself over it ->
                 `PATCH /v3.0/sessions/{id}` -> bearer token (the verifier extends it on every passed
                 attestation; a 401 later makes the agent prove possession again, once per attempt)
    phase 1      `POST /v3.0/agents/{id}/attestations`: what the agent can quote (banks, PCRs, the AK), the
                 firmware log and the CEL log it can send -> nonce, hash algorithm, PCR selection
    phase 2      quote with that nonce -> `PATCH .../attestations/latest` with the quote and the logs asked
                 for -> 202 and `meta.seconds_to_next_attestation`, which the loop honours
    join         after each accepted push, the attestation controller's join endpoint: 200 with join
                 material sealed to this TPM (TPM2_MakeCredential to the EK for the AK's name), opened here
                 with ActivateCredential; 403 with a revocation signed by the controller's answer key;
                 404 while the verifier has not passed the device yet

A verifier that cannot be reached (refused, timed out, 5xx) is retried with exponential backoff (1 s doubling
to ``backoff_max``), logged once per outage and once when it answers again. 429/503 with Retry-After are
waited out. A refusal that retrying cannot change is a `PushError` with the verifier's own detail.

Threads: `PushAttester.run` runs in the thread that calls it (`enroll` starts one named
``push-attestation``); it owns the session token and the statistics. The TPM connection serialises its quotes
with the enrollment's binding quotes. `stop` (any thread) ends the loop at its next wait.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeagent.errors import AttestationError, PeerUnreachable, ProtocolError, TpmError
from edgeagent.protocol import keylime as protocol
from edgeagent.protocol import push
from edgeagent.tpm import attest
from edgeagent.tpm import identity as tpm_identity
from edgeagent.tpm.connection import Tpm

log = logging.getLogger(__name__)

BASE = f"/v{push.API_VERSION}"


class NotEnrolled(push.PushError):
    """The verifier does not know this agent (yet): the attestation controller adds it once it is pinned."""


class ChallengeExpired(push.PushError):
    """The evidence came after the verifier's challenge had expired: a new attestation must start."""


@dataclass(frozen=True)
class Response:
    code: int
    body: dict[str, Any] | None
    raw: bytes
    retry_after: float | None = None

    def detail(self) -> str:
        return push.error_detail(self.raw) if self.raw else f"HTTP {self.code}"


class HttpsClient:
    """JSON over HTTPS to one base URL; the server is checked against ``ca`` (server authentication only:
    the agent has no client certificate in push mode). Counts the bytes it sends (for the benchmark)."""

    def __init__(self, base_url: str, ca: Path | None, *, timeout: float = 10.0,
                 what: str = "verifier") -> None:
        self.base_url = base_url.rstrip("/")
        self.what = what
        self.timeout = timeout
        self.ctx: ssl.SSLContext | None = None
        if self.base_url.startswith("https://"):
            try:
                self.ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
            except (OSError, ssl.SSLError) as e:
                raise AttestationError(f"cannot load the CA {ca} for the {what}: {e}") from None
        self.bytes_sent = 0
        self.requests = 0

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = None) -> Response:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/vnd.api+json"
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        url = self.base_url + path
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        self.requests += 1
        self.bytes_sent += len(data or b"") + sum(len(k) + len(v) + 4 for k, v in headers.items()) + len(url)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.ctx) as resp:
                raw, code, retry = resp.read(), resp.status, resp.headers.get("Retry-After")
        except urllib.error.HTTPError as e:
            raw, code, retry = e.read(), e.code, e.headers.get("Retry-After") if e.headers else None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise PeerUnreachable(f"{self.what} at {self.base_url} unreachable: {reason}") from None
        if code >= 500 and code != 503:
            raise PeerUnreachable(f"{self.what} at {self.base_url} answered {method} {path} with HTTP {code}")
        parsed: dict[str, Any] | None
        try:
            parsed = push.load_body(raw, what=f"{method} {path}") if raw else None
        except push.PushError:
            parsed = None
        try:
            retry_after = float(retry) if retry else None
        except ValueError:
            retry_after = None
        return Response(code, parsed, raw, retry_after)


@dataclass(frozen=True)
class PreparedSession:
    """A session the verifier opened and the TPM's answer to its challenge, not yet presented."""

    challenge: push.SessionChallenge
    message: bytes
    signature: bytes
    expires_at: float
    """Unix time after which the verifier no longer takes the answer (its challenge's expiry)."""


PREPARED_LIFETIME = 30.0
"""Seconds a prepared session is used when the verifier names no challenge expiry (Keylime: 60 s)."""


@dataclass
class PushStats:
    attestations: int = 0
    """Evidence submissions the verifier accepted (202)."""
    sessions: int = 0
    failures: int = 0
    last_error: str | None = None
    seconds_to_next: float | None = None
    last_push_at: float | None = None
    unreachable_since: float | None = None
    backoffs: list[float] = field(default_factory=list)
    """The waits chosen while the verifier was unreachable or refusing (the last 50)."""


class PushAttester:
    """One agent's push-mode attestation against one verifier."""

    def __init__(
        self,
        *,
        tpm: Tpm,
        identity: tpm_identity.Identity,
        agent_id: str,
        verifier: HttpsClient,
        firmware_log: Path | None = None,
        cel_log: Path | None = None,
        backoff_max: float = 30.0,
        pending_interval: float = 0.25,
        on_cycle: Callable[[], None] | None = None,
    ) -> None:
        """``on_cycle`` runs in the attesting thread after every accepted push (the enrollment fetches its
        join material or its revocation there)."""
        self.tpm = tpm
        self.ident = identity
        self.agent_id = protocol.check_agent_id(agent_id)
        self.verifier = verifier
        self.firmware_log = firmware_log
        self.cel_log = cel_log
        self.backoff_max = backoff_max
        self.pending_interval = pending_interval
        self.on_cycle = on_cycle
        self.token: push.SessionToken | None = None
        self.prepared: PreparedSession | None = None
        """Set by `prepare_session`, used (once) by the next `authenticate`."""
        self.stats = PushStats()
        self._stop = threading.Event()
        self.pushed = threading.Event()
        """Set after every accepted push (tests and `enroll` wait on it)."""

    def stop(self) -> None:
        self._stop.set()

    def wait(self, seconds: float) -> bool:
        """Sleeps up to ``seconds``; True when stopped."""
        return self._stop.wait(seconds)

    # ------------------------------------------------------------ session
    def prepare_session(self) -> PreparedSession:
        """Opens a session and answers its challenge with the TPM, without presenting the answer yet.

        Why: Keylime 7.14 opens a session for any agent id (it looks the agent up only when the answer comes)
        and spends most of a session's cost there, hashing the new token with PBKDF2 (a few hundred ms on a
        small machine). A device that has just registered does this while the controller adds it to the
        verifier; `authenticate` then only presents the answer."""
        resp = self.verifier.call("POST", f"{BASE}/sessions", push.session_request(self.agent_id))
        if resp.code != 200 or resp.body is None:
            raise self._refusal("session creation", resp)
        challenge = push.parse_session_challenge(resp.body)
        message, signature = self.tpm.certify_ak(self.ident, challenge.challenge)
        expires = push.parse_time(challenge.expires_at) or time.time() + PREPARED_LIFETIME
        self.prepared = PreparedSession(challenge, message, signature, expires)
        return self.prepared

    def authenticate(self) -> push.SessionToken:
        """Proves possession of the AK (with the prepared session while its challenge is valid, else a new
        one); the token is kept for the next requests."""
        prepared, self.prepared = self.prepared, None
        if prepared is None or prepared.expires_at - 1.0 < time.time():
            prepared = self.prepare_session()
            self.prepared = None
        challenge, message, signature = prepared.challenge, prepared.message, prepared.signature
        resp = self.verifier.call("PATCH", f"{BASE}/sessions/{challenge.session_id}",
                                  push.pop_request(self.agent_id, challenge.session_id, message, signature))
        if resp.body is None:
            raise self._refusal("proof of possession", resp)
        self.token = push.parse_session_result(resp.body)
        self.stats.sessions += 1
        log.info("push: proved possession of the AK to the verifier (session %s)", challenge.session_id[:8])
        return self.token

    def _authorised(self, method: str, path: str, body: Any) -> Response:
        """A request with the bearer token; on 401 (expired, revoked or unknown token) the agent proves
        possession again and retries once."""
        if self.token is None:
            self.authenticate()
        assert self.token is not None
        resp = self.verifier.call(method, path, body, token=self.token.token)
        if resp.code == 401:
            log.info("push: verifier refused the session token (%s); proving possession again",
                     resp.detail())
            self.token = None
            self.authenticate()
            assert self.token is not None
            resp = self.verifier.call(method, path, body, token=self.token.token)
            if resp.code == 401:
                raise push.PushError(f"verifier refuses a fresh session token: {resp.detail()}")
        return resp

    # ------------------------------------------------------------ phases
    def capabilities(self) -> push.Capabilities:
        key_size = attest.parse_public(self.ident.ak_public).key.key_size
        algorithm = "rsa" if self.ident.ak_type == "rsa" else "ecc"
        cel_entries = None
        if self.cel_log is not None and self.cel_log.exists():
            cel_entries = sum(1 for line in self.cel_log.read_bytes().splitlines() if line.strip())
        return push.Capabilities(
            ak_public=self.ident.ak_public,
            key_algorithm=algorithm,
            key_size=key_size,
            signature_schemes=[self.ident.algorithms.get("sign", "rsassa")],
            banks=self.tpm.pcr_banks(),
            firmware_log=self.firmware_log is not None and self.firmware_log.exists(),
            cel_entries=cel_entries,
            boot_time=_boot_time(),
        )

    def offer(self) -> push.EvidenceRequest | float:
        """Phase 1: the evidence request, or seconds to wait when the verifier says "not yet" (429/503)."""
        path = f"{BASE}/agents/{self.agent_id}/attestations"
        resp = self._authorised("POST", path, push.capabilities_request(self.capabilities()))
        if resp.code in (429, 503):
            return resp.retry_after if resp.retry_after is not None else self.pending_interval
        if resp.code == 404:
            raise NotEnrolled(f"the verifier does not know agent {self.agent_id} yet: {resp.detail()}")
        if resp.code not in (200, 201) or resp.body is None:
            raise self._refusal("the attestation offer", resp)
        return push.parse_evidence_request(resp.body)

    def collect(self, request: push.EvidenceRequest) -> dict[str, Any]:
        """The quote with the verifier's nonce over its PCR selection, and the logs it asked for."""
        quote = self.tpm.quote(self.ident, request.nonce, list(request.pcrs), bank=request.hash_algorithm)
        firmware = None
        if any(t == "uefi_log" for _, t in request.requested) and self.firmware_log is not None:
            try:
                firmware = self.firmware_log.read_bytes()
            except OSError as e:
                raise AttestationError(f"cannot read the firmware event log {self.firmware_log}: "
                                       f"{e.strerror}") from None
        cel = self.cel_log.read_bytes() if self.cel_log is not None and self.cel_log.exists() else None
        return push.evidence_request(request, attest_=quote.attest, signature=quote.signature,
                                     pcrblob=quote.pcrblob(), firmware_log=firmware, cel_log=cel)

    def submit(self, evidence: dict[str, Any]) -> float:
        """Phase 2: seconds to the next attestation (the verifier's word)."""
        path = f"{BASE}/agents/{self.agent_id}/attestations/latest"
        resp = self._authorised("PATCH", path, evidence)
        if resp.code == 202 and resp.body is not None:
            seconds = push.parse_acknowledgement(resp.body)
            self.stats.attestations += 1
            self.stats.seconds_to_next = seconds
            self.stats.last_push_at = time.time()
            return seconds
        if resp.code == 503:
            return resp.retry_after if resp.retry_after is not None else self.pending_interval
        detail = resp.detail()
        if resp.code == 403 and "expired" in detail:
            raise ChallengeExpired(f"the verifier's challenge expired before the evidence arrived: {detail}")
        if resp.code == 202:
            raise push.PushError("malformed 3.0 response to PATCH /attestations: no JSON body")
        raise self._refusal("the evidence", resp)

    def attest_once(self) -> tuple[bool, float]:
        """One full cycle: (whether the verifier accepted evidence, seconds to wait before the next)."""
        request = self.offer()
        if isinstance(request, float):
            return False, request
        before = self.stats.attestations
        wait = self.submit(self.collect(request))
        return self.stats.attestations > before, wait

    # ------------------------------------------------------------ loop
    def run(self) -> None:
        """Attests until `stop`; see the module doc for what is retried how."""
        delay = 1.0
        pending, early = self.pending_interval, 0
        while not self._stop.is_set():
            try:
                accepted, wait = self.attest_once()
                if self.stats.unreachable_since is not None:
                    log.warning("push: verifier reachable again after %.0f s",
                                time.time() - self.stats.unreachable_since)
                    self.stats.unreachable_since = None
                delay = 1.0
                self.stats.last_error = None
                if accepted:
                    self.pushed.set()
                    if self.on_cycle is not None:
                        self.on_cycle()
            except PeerUnreachable as e:
                self.stats.failures += 1
                self.stats.last_error = str(e)
                if self.stats.unreachable_since is None:
                    self.stats.unreachable_since = time.time()
                    log.warning("push: %s; retrying with backoff (up to %.0f s)", e, self.backoff_max)
                wait, delay = delay, min(delay * 2, self.backoff_max)
                self.stats.backoffs = [*self.stats.backoffs[-49:], wait]
            except ChallengeExpired as e:
                self.stats.failures += 1
                self.stats.last_error = str(e)
                log.warning("push: %s; starting a new attestation", e)
                wait = 0.0
            except (push.PushError, ProtocolError, TpmError, AttestationError) as e:
                self.stats.failures += 1
                if str(e) != self.stats.last_error:
                    log.warning("push: %s", e)
                self.stats.last_error = str(e)
                if self.stats.attestations == 0 and pending < self.backoff_max and (
                        isinstance(e, NotEnrolled) or "refused the proof of possession" in str(e)):
                    # Not added to the verifier yet: the normal state right after registration, which the
                    # attestation controller ends within a second or so; look again soon, gently.
                    early += 1
                    wait = pending
                    if early > 2:  # twice at the base interval, then doubling (session rate limit: 15/min)
                        pending = min(pending * 2, self.backoff_max)
                else:
                    wait, delay = delay, min(delay * 2, self.backoff_max)
                self.stats.backoffs = [*self.stats.backoffs[-49:], wait]
            if self._stop.wait(max(wait, 0.05)):
                return

    def _refusal(self, what: str, resp: Response) -> push.PushError:
        if resp.body is None and resp.code < 400:
            return push.PushError(f"malformed 3.0 response to {what}: HTTP {resp.code} without a JSON body")
        return push.PushError(f"verifier refused {what}: HTTP {resp.code}: {resp.detail()}")


# ---------------------------------------------------------------- join material
@dataclass(frozen=True)
class JoinAnswer:
    """What the attestation controller says about this device: "attested" (with sealed material),
    "revoked" (with a signed revocation) or "pending"."""

    state: str
    sealed: push.Sealed | None = None
    revocation: dict[str, Any] | None = None
    detail: str = ""
    added: bool = False
    """pending: whether the controller has added the agent to the verifier (a session can succeed)."""


def fetch_join(client: HttpsClient, agent_id: str) -> JoinAnswer:
    resp = client.call("GET", f"/v1/push/{agent_id}/join")
    body = resp.body or {}
    if resp.code == 200:
        return JoinAnswer("attested", sealed=push.parse_sealed(body, agent_id))
    if resp.code == 403 and body.get("state") == "revoked":
        revocation = body.get("revocation")
        return JoinAnswer("revoked", revocation=revocation if isinstance(revocation, dict) else None,
                          detail=str(body.get("detail") or ""))
    if resp.code == 503:  # a follower replica, or the controller cannot ask Keylime right now
        return JoinAnswer("pending", detail=str(body.get("state") or "unavailable"))
    if resp.code in (404, 409) and body.get("state") in ("pending", "unknown"):
        return JoinAnswer("pending", detail=str(body.get("detail") or ""), added=body.get("added") is True)
    raise push.PushError(f"malformed answer from the join endpoint: HTTP {resp.code}: {resp.detail()}")


def open_join(tpm: Tpm, identity: tpm_identity.Identity, sealed: push.Sealed) -> bytes:
    """ActivateCredential in this TPM recovers K; K opens the material. Another TPM (or another AK) gets a
    CredentialError from its TPM, never the material."""
    key = tpm.activate_credential(identity, sealed.credential)
    return push.open_sealed(sealed, key)


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        return None
    return None
