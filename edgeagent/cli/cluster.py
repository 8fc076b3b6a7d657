"""`python -m edgeagent.cli.cluster`: the cluster side's command line, what the attestation controller's image
runs. Only the commands that run in the cluster are registered, so nothing device-side (tpm2-pytss, wasmtime,
smbus2, pyusb) is imported and the image carries none of it.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from edgeagent import __version__
from edgeagent.cli import cloud
from edgeagent.cli.runner import run
from edgeagent.logs import setup_logging

app = typer.Typer(
    name="edgeagent",
    help="edgeagent's cluster side: the attestation controller.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeagent {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More logging (-vv: debug)")
    ] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version")
    ] = False,
) -> None:
    setup_logging(verbose)


cloud.register(app)


def main(argv: list[str] | None = None) -> None:
    run(app, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
