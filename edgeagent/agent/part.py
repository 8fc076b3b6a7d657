"""A part of the agent (attestation, a driver instance, the controllers host): a thread of its own that runs
one cycle after another, restarting with backoff after a failure, until stopped.

Why one shape for all: whatever fails inside a part (a project error, or a bug) is reported in its status and
retried later; it never ends the thread silently and never reaches the other parts.
"""

from __future__ import annotations

import logging
import threading

from edgeagent.agent.backoff import Backoff
from edgeagent.errors import EdgeAgentError

log = logging.getLogger(__name__)


class Part:
    def __init__(self, *, backoff: Backoff, thread_name: str) -> None:
        self.backoff = backoff
        self.thread_name = thread_name
        self.state = "starting"
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ control (supervisor thread)
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _join(self, timeout: float) -> bool:
        """Asks the thread to stop and waits for it; False if it is still busy after ``timeout``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    # ------------------------------------------------------------ the part's thread
    def _cycle(self) -> None:
        """One run of the part; returns to be run again at once, raises to be run again after the backoff."""
        raise NotImplementedError

    def _cleanup(self) -> None:
        """After every cycle, failed or not."""

    def _failed(self, e: BaseException) -> None:
        self.last_error = str(e) if isinstance(e, EdgeAgentError) else f"{type(e).__name__}: {e}"

    def _run(self) -> None:
        while not self._stop.is_set():
            failed = True
            try:
                self._cycle()
                failed = False
            except EdgeAgentError as e:
                if not self._stop.is_set():
                    self._failed(e)
                    log.error("%s: %s", self.thread_name, e)
            except Exception as e:  # a bug must not end the thread silently: reported and restarted
                log.exception("%s: internal error", self.thread_name)
                self._failed(e)
            finally:
                self._cleanup()
            if self._stop.is_set():
                break
            if not failed:  # a cycle that ended on purpose (the controllers' credential changed): go again
                self._stop.wait(0.1)
                continue
            delay = self.backoff.failed()
            self.state = "backoff"
            log.warning("%s: restarting in %.1f s (%s)", self.thread_name, delay, self.last_error or "ended")
            self._stop.wait(delay)
