"""``python -m edgeagent.controllers run ...``: the controller host's own lean process (see ``service``).

Takes the options of ``edgeagent controllers run`` plus the global ``--config``/``--state-dir``/``-v``;
a project error is one line on stderr and its exit code, like the CLI's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeagent.config import load_config
from edgeagent.controllers import service
from edgeagent.errors import EdgeAgentError
from edgeagent.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeagent.controllers", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path)
    p.add_argument("--state-dir", type=Path)
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("directory", type=Path, nargs="?")
    r.add_argument("--kubeconfig", type=Path)
    r.add_argument("--configmap")
    # Defaults live in the config's [controllers] section; an option given here overrides it.
    r.add_argument("--no-swap", dest="swap", action="store_const", const=False)
    r.add_argument("--no-verify", dest="verify", action="store_const", const=False)
    r.add_argument("--workers", type=int)
    r.add_argument("--max-active", type=int)
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    try:
        cfg = load_config(args.config, overrides={"state_dir": args.state_dir})
        service.apply_options(cfg, kubeconfig=args.kubeconfig, configmap=args.configmap, swap=args.swap,
                              verify=args.verify, workers=args.workers, max_active=args.max_active)
        service.run(cfg, args.directory)
    except EdgeAgentError as e:
        print(f"edgeagent: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
