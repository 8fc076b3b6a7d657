"""The `edgeagent` console script's first step: `edgeagent [global options] agent` goes straight to the
service's lean process, everything else to the typer CLI.

Why: the service is what systemd starts at every boot and after every crash; importing the whole CLI (typer,
rich, every command group) only to exec into ``python -m edgeagent.agent`` cost ~0.3 s of its start-up. The
lean process takes the same global options and reports a bad configuration in the same one line.
"""

from __future__ import annotations

import os
import sys

_GLOBAL_WITH_VALUE = {"--config", "-c", "--state-dir", "--tpm"}
_GLOBAL_FLAGS = {"-v", "-vv", "-vvv", "--verbose"}


def _agent_argv(args: list[str]) -> list[str] | None:
    """The lean service's arguments when ``args`` is `[global options] agent`, else None (the CLI decides)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        name = a.split("=", 1)[0]
        if a == "agent" and i == len(args) - 1:
            return out
        if name in _GLOBAL_WITH_VALUE:
            value = a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else None)
            if value is None:
                return None
            out += ["--config" if name == "-c" else name, value]
            i += 1 if "=" in a else 2
        elif a in _GLOBAL_FLAGS:
            out += ["-v"] * (a.count("v") if a.startswith("-v") else 1)
            i += 1
        else:
            return None  # --help, other options, another command: the full CLI handles it
    return None


def main() -> None:
    args = sys.argv[1:]
    lean = _agent_argv(args)
    if lean is not None:
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "edgeagent.agent", *lean])
    from edgeagent.cli.main import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
