"""What the global options hand to every command."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from edgeagent.config import AgentConfig, load_config


@dataclasses.dataclass
class CliState:
    config_path: Path | None = None
    state_dir: Path | None = None
    tcti: str | None = None
    verbose: int = 0
    _config: AgentConfig | None = None

    @property
    def config(self) -> AgentConfig:
        """Loaded on first use, so `--help` works even with a broken config file."""
        if self._config is None:
            self._config = load_config(
                self.config_path, overrides={"state_dir": self.state_dir, "tpm_tcti": self.tcti}
            )
        return self._config


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):  # pragma: no cover - only when a command is invoked outside main
        obj = CliState()
        ctx.find_root().obj = obj
    return obj
