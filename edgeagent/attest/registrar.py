"""Client of Keylime's registrar (its plain-HTTP agent port): registration and AK activation.

Registration proves nothing by itself: the registrar answers with a credential that only the TPM holding the
EK can open for the AK, and activation returns the proof. `enroll` drives the two steps through
`register_and_activate`, handing the credential to the TPM in between.

A registrar that cannot be reached (refused, timed out, 5xx) is retried with exponential backoff, then
reported as `PeerUnreachable`; a refusal (4xx, e.g. 403 for a uuid already registered with another EK or AK)
is a `RegistrationError` at once, since retrying cannot change the answer. Keylime forgets a registration
whose activation proof was wrong (the next activation gets 404): start again with `register`.
Standard library only.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeagent.errors import PeerUnreachable, ProtocolError, RegistrationError
from edgeagent.protocol import keylime as protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep knocking on a registrar that is down (it may be restarting, or not up yet)."""

    attempts: int = 6
    initial_delay: float = 0.2
    factor: float = 2.0
    max_delay: float = 5.0
    request_timeout: float = 10.0

    def delays(self) -> list[float]:
        """The waits between attempts: attempts - 1 of them."""
        out, delay = [], self.initial_delay
        for _ in range(max(self.attempts - 1, 0)):
            out.append(min(delay, self.max_delay))
            delay *= self.factor
        return out


class _Retryable(Exception):
    """A transport failure or a 5xx: worth another attempt."""


class RegistrarClient:
    """Talks to one registrar, e.g. ``RegistrarClient("http://127.0.0.1:8890")``."""

    def __init__(self, base_url: str, *, retry: RetryPolicy | None = None,
                 api_version: str | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._api_version = api_version
        self._sleep = sleep
        self.attempts_made = 0
        """Requests sent so far, retries included (for progress views and tests)."""

    # ------------------------------------------------------------ protocol steps
    def api_version(self) -> str:
        """The highest API version both sides speak, asked once per client."""
        if self._api_version is None:
            env = self._call("GET", "/version", None, step="version")
            if not env.ok:
                raise RegistrationError(f"registrar answered /version with {env.code} {env.status}")
            versions = protocol.parse_version_results(env.results)
            self._api_version = protocol.negotiate_api_version(protocol.AGENT_API_VERSIONS, versions)
        return self._api_version

    def register(self, agent_id: str, request: protocol.RegistrationRequest | dict[str, Any],
                 ) -> protocol.CredentialBlob:
        """`POST /v{api}/agents/{agent_id}`; returns the credential to activate with the TPM."""
        protocol.check_agent_id(agent_id)
        path = f"/v{self.api_version()}/agents/{agent_id}"
        body = request.to_json() if isinstance(request, protocol.RegistrationRequest) else request
        env = self._call("POST", path, body, step="registration")
        if not env.ok:
            raise RegistrationError(f"registrar refused registration of {agent_id}: {env.code} {env.status}")
        return protocol.parse_registration_results(env.results)

    def activate(self, agent_id: str, challenge: bytes) -> None:
        """`PUT /v{api}/agents/{agent_id}/activate` with the auth_tag: proof the TPM opened the credential."""
        protocol.check_agent_id(agent_id)
        path = f"/v{self.api_version()}/agents/{agent_id}/activate"
        env = self._call("PUT", path, protocol.activation_request(challenge, agent_id), step="activation")
        if not env.ok:
            raise RegistrationError(f"registrar refused activation of {agent_id}: {env.code} {env.status}")

    def register_and_activate(self, agent_id: str, request: protocol.RegistrationRequest,
                              activate_credential: Callable[[bytes], bytes]) -> None:
        """Both steps; ``activate_credential`` gets the tpm2-tools credential blob and returns its secret."""
        credential = self.register(agent_id, request)
        self.activate(agent_id, activate_credential(credential.to_bytes()))

    # ------------------------------------------------------------ API 3.0 (push mode)
    def register_v3(self, agent_id: str, request: protocol.RegistrationRequest,
                    activate_credential: Callable[[bytes], bytes]) -> str:
        """Push mode's registration: no address and no mTLS certificate (nothing connects to the agent).

        First on the registrar's API 3.0 routes (`POST /v3.0/agents` with the id in the body, then
        `POST /v3.0/agents/{id}/activate`). Keylime 7.14.3's registrar stores the registration there but
        then fails to answer it (HTTP 500: its AgentsController calls respond() on a v3 route), so on a 5xx
        the same registration goes to its v2 routes, which push mode leaves unchanged ("the registrar
        interaction is unchanged", push_model.rst). Returns the API version that registered the agent.
        """
        protocol.check_agent_id(agent_id)
        body = {k: v for k, v in request.to_json().items() if k not in ("mtls_cert", "ip", "port")}
        try:
            env = self._once("POST", "/v3.0/agents", {"agent_id": agent_id, **body})
        except _Retryable as e:
            if not str(e).startswith("HTTP 5"):
                env = self._call("POST", "/v3.0/agents", {"agent_id": agent_id, **body}, step="registration")
            else:
                log.warning("registrar answered its API 3.0 registration with %s (Keylime 7.14.3 fails on "
                            "its v3 routes); registering on its v%s routes instead", e, self.api_version())
                credential = self.register(agent_id, body)
                self.activate(agent_id, activate_credential(credential.to_bytes()))
                return self.api_version()
        if not env.ok:
            raise RegistrationError(f"registrar refused registration of {agent_id}: {env.code} {env.status}")
        credential = protocol.parse_registration_results(env.results)
        challenge = activate_credential(credential.to_bytes())
        env = self._call("POST", f"/v3.0/agents/{agent_id}/activate",
                         protocol.activation_request(challenge, agent_id), step="activation")
        if not env.ok:
            raise RegistrationError(f"registrar refused activation of {agent_id}: {env.code} {env.status}")
        return "3.0"

    # ------------------------------------------------------------ transport
    def _call(self, method: str, path: str, body: Any, *, step: str) -> protocol.Envelope:
        delays = self.retry.delays()
        last = ""
        for attempt in range(len(delays) + 1):
            try:
                return self._once(method, path, body)
            except _Retryable as e:
                last = str(e)
            if attempt < len(delays):
                self._sleep(delays[attempt])
        raise PeerUnreachable(
            f"keylime registrar at {self.base_url} unreachable for {step} after "
            f"{len(delays) + 1} attempts: {last}")

    def _once(self, method: str, path: str, body: Any) -> protocol.Envelope:
        data = None if body is None else json.dumps(body).encode()
        # Keylime answers 400 to a body-less request that claims a JSON body.
        headers = {} if data is None else {"Content-Type": "application/json"}
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        self.attempts_made += 1
        try:
            with urllib.request.urlopen(req, timeout=self.retry.request_timeout) as resp:
                raw, code = resp.read(), resp.status
        except urllib.error.HTTPError as e:
            raw, code = e.read(), e.code
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise _Retryable(str(reason) or e.__class__.__name__) from None
        if code >= 500:
            raise _Retryable(f"HTTP {code}")
        try:
            env = protocol.parse_envelope(raw)
        except ProtocolError:
            if code >= 400:  # Keylime's newer handlers answer errors in a JSON:API shape, not the envelope
                return protocol.Envelope(code, _error_detail(raw) or f"HTTP {code}", {})
            raise
        # The HTTP status is authoritative when a body claims another code.
        return env if env.code == code else protocol.Envelope(code, env.status, env.results)


def _error_detail(raw: bytes) -> str:
    """The human text of a JSON:API error body ({"errors": [{"title", "detail"}]}), if it is one."""
    try:
        errors = json.loads(raw).get("errors")
        first = errors[0]
        return str(first.get("detail") or first.get("title") or "")[:200]
    except (ValueError, AttributeError, IndexError, KeyError, TypeError):
        return ""
