"""Enrollment and attestation inside the agent: `attest.enroll.Enrollment` in a thread of its own.

Thread ``attestation`` runs the enrollment steps (register or resume, wait until attested, the node
credential), then keeps serving the verifier and renewing the credential; the agent API server's own threads
answer the verifier meanwhile. The TPM connection is the agent's (shared, behind its lock), so the supervisor
can re-measure on a reload while attestation is served.

A run that fails (the registrar unreachable past ``enroll.retry_timeout``, the port taken) is restarted with
backoff by the supervisor; nothing else in the agent stops because of it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from cryptography import x509

from edgeagent.agent.backoff import Backoff
from edgeagent.agent.part import Part
from edgeagent.config import AgentConfig
from edgeagent.tpm.connection import Tpm

log = logging.getLogger(__name__)

# Phases as `edgeagent status` shows them, from the enrollment's step events.
_PHASE_OF_STEP = {
    "provision": "provisioning",
    "measure": "measuring",
    "register": "registering",
    "attest": "attesting",
    "csr": "credential",
    "certificate": "credential",
    "kubeconfig": "credential",
    "serve": "serving",
}


class AttestationWorker(Part):
    def __init__(self, config: AgentConfig, tpm: Tpm, *, backoff: Backoff) -> None:
        super().__init__(backoff=backoff, thread_name="attestation")
        self.config = config
        self.tpm = tpm
        self.serving = threading.Event()
        """Set once the agent API answers the verifier (systemd's READY=1 waits for it)."""
        self.enrollment: Any = None
        self._steps: dict[str, dict[str, Any]] = {}

    @property
    def phase(self) -> str:
        return self.state

    def stop(self, timeout: float = 10.0) -> None:
        """Ends serving and closes the agent API (the TPM connection stays: the supervisor owns it)."""
        self._stop.set()
        if self.enrollment is not None:
            self.enrollment.stop()
        self._join(timeout)
        self.state = "stopped"

    def _on_event(self, event: Any) -> None:  # runs in the attestation thread
        self.state = _PHASE_OF_STEP.get(event.step, self.state)
        if event.step in ("register", "attest", "serve"):
            self.serving.set()  # the agent API starts before registration (see Enrollment._register)
        self._steps[event.step] = {"status": event.status, "seconds": event.seconds, "detail": event.detail}

    def _cycle(self) -> None:
        from edgeagent.attest.enroll import Enrollment

        run = Enrollment(self.config, on_event=self._on_event, tpm=self.tpm)
        self.enrollment = run
        self.backoff.started()
        run.enroll_steps()
        self.last_error = ""
        if not self._stop.is_set():
            run.serve()

    def _cleanup(self) -> None:
        if self.enrollment is not None:
            self.enrollment.close()
        self.serving.clear()

    # ------------------------------------------------------------ status (any thread)
    def credential_expiry(self) -> float | None:
        """The node certificate's notAfter (epoch seconds), or None without a certificate."""
        run = self.enrollment
        if run is None:
            return None
        try:
            cert = x509.load_pem_x509_certificate(run.cert_path.read_bytes())
        except (OSError, ValueError):
            return None
        return cert.not_valid_after_utc.timestamp()

    def status(self) -> dict[str, Any]:
        run = self.enrollment
        state = run.state if run is not None else None
        expiry = self.credential_expiry()
        api = run.api if run is not None else None
        push = run.push if run is not None else None
        return {
            "phase": self.phase,
            "serving": self.serving.is_set(),
            "uuid": getattr(state, "uuid", None),
            "node_name": getattr(state, "node_name", None),
            "ak_name": getattr(state, "ak_name", None),
            "mode": self.config.enroll.mode,
            "agent_address": (
                f"push to {self.config.enroll.verifier_url}" if self.config.enroll.mode == "push"
                else f"{self.config.enroll.agent_host}:{self.config.enroll.agent_port}"),
            # pull: quotes the verifier fetched; push: evidence the verifier accepted
            "quotes_served": (push.stats.attestations if push is not None
                              else getattr(api, "quotes_served", 0)),
            # how long the verifier has been silent (pull: its last quote request; push: its last accepted
            # evidence): grows while the verifier is down, the credential being kept meanwhile
            "seconds_since_last_quote": _seconds_since_last_quote(api, push),
            "push_last_error": push.stats.last_error if push is not None else None,
            "revoked": bool(run is not None and run.revoked.is_set()),
            "renewals": getattr(run, "renewals", 0),
            "renewal_failures": getattr(run, "renewal_failures", 0),
            "last_renewal_error": getattr(run, "last_renewal_error", None),
            "credential_expiry": (
                dt.datetime.fromtimestamp(expiry, dt.UTC).isoformat(timespec="seconds") if expiry else None
            ),
            "credential_seconds_left": round(expiry - time.time()) if expiry else None,
            "kubeconfig": str(self.config.enroll.kubeconfig),
            "restarts": self.backoff.restarts,
            "last_error": self.last_error,
            "steps": dict(self._steps),
        }


def _seconds_since_last_quote(api: Any, push: Any) -> float | None:
    """None until the first quote (or accepted push) of this run."""
    if push is not None:
        at = push.stats.last_push_at
        return None if at is None else round(time.time() - at, 1)
    at = getattr(api, "last_quote_at", None)
    return None if at is None else round(time.monotonic() - at, 1)
