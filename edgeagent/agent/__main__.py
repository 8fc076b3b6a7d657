"""``python -m edgeagent.agent``: the agent service's own lean process (what `edgeagent agent` execs into).

Why a process of its own: the CLI imports every command group (typer, rich, the benchmarks' helpers) to offer
them; a service that runs for months should carry only what it uses. Takes the global options of the CLI;
a project error is one line on stderr and its exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edgeagent.agent import heap
from edgeagent.config import load_config
from edgeagent.errors import EdgeAgentError
from edgeagent.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeagent.agent", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path)
    p.add_argument("--state-dir", type=Path)
    p.add_argument("--tpm")
    p.add_argument("-v", "--verbose", action="count", default=0)
    args = p.parse_args(argv)
    heap.fewer_malloc_arenas()  # before the service starts its threads
    setup_logging(max(args.verbose, 1))  # a service logs what it does (journald keeps it)
    overrides = {"state_dir": args.state_dir, "tpm_tcti": args.tpm}
    try:
        from edgeagent.agent.supervisor import Supervisor

        cfg = load_config(args.config, overrides=overrides)
        sup = Supervisor(cfg, reload_config=lambda: load_config(args.config, overrides=overrides))
        sup.install_signal_handlers()
        sup.run()
    except EdgeAgentError as e:
        print(f"edgeagent: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # a bug: one line, the traceback only with -v
        if args.verbose >= 2:
            logging.getLogger("edgeagent").exception("internal error")
        print(
            f"edgeagent: internal error: {type(e).__name__}: {e} (rerun with -vv for details)",
            file=sys.stderr,
        )
        return 70
    return 0


if __name__ == "__main__":
    sys.exit(main())
