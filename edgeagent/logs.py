"""Logging set-up: the standard library everywhere, rendered by rich on a terminal."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbosity: int) -> None:
    """0: warnings, 1: info, 2+: debug. Logs go to stderr so stdout stays clean for --json."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, rich_tracebacks=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter stays at WARNING unless asked for debug.
    for noisy in ("urllib3", "kubernetes", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity >= 3 else logging.WARNING)
