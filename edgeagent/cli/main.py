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
        int, typer.Option("--verbose", "-v", count=True, help="More logging (-vv: debug)")
    ] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version")
    ] = False,
) -> None:
    setup_logging(verbose)
    ctx.obj = CliState(config_path=config, state_dir=state_dir, tcti=tpm, verbose=verbose)


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main(argv: list[str] | None = None) -> None:
    """Runs the CLI: a project error becomes one line on stderr and its exit code, never a traceback."""
    run(app, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":  # pragma: no cover
    main()
