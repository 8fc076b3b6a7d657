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
from edgeagent.config import AgentConfig
from edgeagent.errors import EdgeAgentError
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


class AttestationWorker:
    def __init__(self, config: AgentConfig, tpm: Tpm, *, backoff: Backoff) -> None:
        self.config = config
        self.tpm = tpm
        self.backoff = backoff
        self.phase = "starting"
        self.last_error = ""
        self.serving = threading.Event()
        """Set once the agent API answers the verifier (systemd's READY=1 waits for it)."""
        self.enrollment: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._steps: dict[str, dict[str, Any]] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="attestation", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ends serving and closes the agent API (the TPM connection stays: the supervisor owns it)."""
        self._stop.set()
        if self.enrollment is not None:
            self.enrollment.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        self.phase = "stopped"

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _on_event(self, event: Any) -> None:  # runs in the attestation thread
        self.phase = _PHASE_OF_STEP.get(event.step, self.phase)
        if event.step in ("register", "attest", "serve"):
            self.serving.set()  # the agent API starts before registration (see Enrollment._register)
        self._steps[event.step] = {"status": event.status, "seconds": event.seconds, "detail": event.detail}

    def _run(self) -> None:
        from edgeagent.attest.enroll import Enrollment

        while not self._stop.is_set():
            run = Enrollment(self.config, on_event=self._on_event, tpm=self.tpm)
            self.enrollment = run
            self.backoff.started()
            try:
                run.enroll_steps()
                self.last_error = ""
                if not self._stop.is_set():
                    run.serve()
            except EdgeAgentError as e:
                if not self._stop.is_set():
                    self.last_error = str(e)
                    log.error("attestation: %s", e)
            except Exception as e:  # a bug: reported and restarted, never a silent dead thread
                log.exception("attestation: internal error")
                self.last_error = f"{type(e).__name__}: {e}"
            finally:
                run.close()
                self.serving.clear()
            if self._stop.is_set():
                break
            delay = self.backoff.failed()
            self.phase = "backoff"
            log.warning("attestation: restarting in %.1f s", delay)
            self._stop.wait(delay)

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
        return {
            "phase": self.phase,
            "serving": self.serving.is_set(),
            "uuid": getattr(state, "uuid", None),
            "node_name": getattr(state, "node_name", None),
            "ak_name": getattr(state, "ak_name", None),
            "agent_address": f"{self.config.enroll.agent_host}:{self.config.enroll.agent_port}",
            "quotes_served": getattr(api, "quotes_served", 0),
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
