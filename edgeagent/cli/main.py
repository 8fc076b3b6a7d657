"""The `edgeagent` console script."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from edgeagent import __version__
from edgeagent.cli.context import CliState
from edgeagent.cli.runner import run
from edgeagent.logs import setup_logging

app = typer.Typer(
    name="edgeagent",
    help="Take an edge device from power-on to a trusted Kubernetes worker; run its drivers and controllers "
    "in WebAssembly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each module exposes `register(app)`. A command group is listed here only once it works end to end.
COMMAND_MODULES = [
    "edgeagent.cli.bench",
    "edgeagent.cli.tpm",
    "edgeagent.cli.measure",
    "edgeagent.cli.enroll",
    "edgeagent.cli.cloud",
    "edgeagent.cli.drivers",
    "edgeagent.cli.controllers",
    "edgeagent.cli.agent",
    "edgeagent.cli.bundle",
    "edgeagent.cli.dev",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeagent {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML config [default: /etc/edgeagent/agent.toml]", envvar=None),
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="State directory [default: /var/lib/edgeagent]")
    ] = None,
    tpm: Annotated[
        str | None,
        typer.Option("--tpm", help="TCTI, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321"),
    ] = None,
    verbose: Annotated[
        int,
        typer.Option("--verbose", "-v", count=True, help="More logging: -v info, -vv debug (or --verbose N)"),
    ] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version")
    ] = False,
) -> None:
    setup_logging(verbose)
    ctx.obj = CliState(config_path=config, state_dir=state_dir, tcti=tpm, verbose=verbose)


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


_GLOBAL_WITH_VALUE = {"--config", "-c", "--state-dir", "--tpm"}


def expand_verbosity(args: list[str]) -> list[str]:
    """``-v N`` / ``--verbose N`` / ``--verbose=N`` among the global options -> N times ``-v``.

    Why: --verbose counts (click's count option takes no value), but its help shows ``<int>``, and users
    naturally write ``-v 1``, which click then took for a command named "1".
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, value = a.partition("=")
        if name in ("-v", "--verbose") and (eq or (i + 1 < len(args) and args[i + 1].isdigit())):
            if not eq:
                value = args[i + 1]
                i += 1
            if not value.isdigit():
                out.append(a)  # click reports it
            else:
                out += ["-v"] * int(value)
            i += 1
            continue
        if name in _GLOBAL_WITH_VALUE and not eq and i + 1 < len(args):
            out += [a, args[i + 1]]
            i += 2
            continue
        if not a.startswith("-"):
            return out + args[i:]  # the command: its own options are its own
        out.append(a)
        i += 1
    return out


def main(argv: list[str] | None = None) -> None:
    """Runs the CLI: a project error becomes one line on stderr and its exit code, never a traceback."""
    run(app, expand_verbosity(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":  # pragma: no cover
    main()
