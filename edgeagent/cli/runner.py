"""Running a typer app as the `edgeagent` command: the one place that turns errors into one line and an exit
code (shared by the full CLI and the cluster side's lean one)."""

from __future__ import annotations

import logging
import sys

import typer

from edgeagent.errors import EdgeAgentError


def run(app: typer.Typer, args: list[str]) -> None:
    """A project error becomes one line on stderr and its exit code, never a traceback.

    Usage errors, --help and exit codes are handled by typer's standalone mode (it raises SystemExit).
    """
    verbose = any(a in ("-v", "-vv", "-vvv", "--verbose") for a in args)
    try:
        app(args=args, prog_name="edgeagent")
    except EdgeAgentError as e:
        print(f"edgeagent: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(141)
    except Exception as e:  # a bug: still one line, the traceback only on request
        if verbose:
            logging.getLogger("edgeagent").exception("internal error")
        print(
            f"edgeagent: internal error: {type(e).__name__}: {e} (rerun with -v for details)", file=sys.stderr
        )
        sys.exit(70)
