"""`edgeagent agent` for the tests: the testbed's AgentProcess (the console script in its own process group)
with what the tests add: waiting for readiness at start, a stop that must succeed, and the driver lookup."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from edgeagent.testbed import agent_process
from edgeagent.testbed.agent_process import NotifyListener, wait_until
from edgeagent.testbed.device import stage_drivers

__all__ = ["EDGEAGENT", "ROOT", "AgentProcess", "NotifyListener", "stage_drivers", "wait_for"]

EDGEAGENT = Path(sys.executable).parent / "edgeagent"
ROOT = Path(__file__).resolve().parents[2]
wait_for = wait_until


class AgentProcess(agent_process.AgentProcess):
    def __init__(
        self, config: Path, tcti: str, socket_path: Path, *, env: dict[str, str] | None = None
    ) -> None:
        super().__init__(config, socket_path, config.with_suffix(".log"), tcti=tcti, env=env)

    def start(self, *, wait_ready: bool = True, timeout: float = 60.0, **kwargs: Any) -> AgentProcess:
        super().start(**kwargs)
        if wait_ready:
            self.wait_ready(timeout=timeout)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        code = super().stop(sig, timeout)
        if code is None:
            raise AssertionError(f"the agent did not stop within {timeout} s:\n{self.output()[-3000:]}")
        return code

    def driver(self, s: dict[str, Any], name: str) -> dict[str, Any]:
        """The named driver's status; an empty one (no readings, no errors) while it is not listed yet."""
        return next(
            (d for d in s["drivers"] if d["name"] == name),
            {
                "name": name,
                "state": "absent",
                "readings": 0,
                "errors": 0,
                "restarts": 0,
                "last_error": "",
                "latest": None,
            },
        )
