"""`edgeagent controllers run [DIR]` and `edgeagent controllers list`: the Wasm controller host."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from edgeagent.cli import render
from edgeagent.cli.context import state
from edgeagent.errors import ControllerError

log = logging.getLogger("edgeagent.controllers")


def run(
    ctx: typer.Context,
    directory: Annotated[
        Path | None,
        typer.Argument(help="Directory of controller manifests (*.toml) [default: config controllers.dir]"),
    ] = None,
    kubeconfig: Annotated[
        Path | None,
        typer.Option("--kubeconfig", help="kubeconfig [default: $KUBECONFIG, ~/.kube/config, in-cluster]"),
    ] = None,
    no_swap: Annotated[
        bool, typer.Option("--no-swap", help="Keep every controller instantiated (never swap to disk)")
    ] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Do not check modules against `edgeagent measure`'s digests")
    ] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Threads running controllers")] = 2,
    max_active: Annotated[
        int,
        typer.Option("--max-active", min=0, help="Most controllers instantiated at once (0: no cap)"),
    ] = 16,
) -> None:
    """Run the controllers in DIR until SIGINT/SIGTERM; idle ones sleep on disk and wake on events."""
    from edgeagent.controllers.host import ControllerHost, HostOptions
    from edgeagent.controllers.kubeapi import KubeApi, connect
    from edgeagent.controllers.manifest import manifest_paths
    from edgeagent.controllers.measured import measured_digests

    cfg = state(ctx).config
    directory = directory or cfg.controllers.dir
    paths = manifest_paths(directory)  # ManifestError for a missing directory
    if not paths:
        raise ControllerError(f"no controller manifests (*.toml, *.controller.json) in {directory}")
    api = KubeApi(connect(kubeconfig))
    digests = None if no_verify else measured_digests(cfg)
    host = ControllerHost(
        api,
        HostOptions(
            state_dir=cfg.state_dir,
            swap=not no_swap,
            workers=workers,
            max_active=max_active,
            digest_for=digests,
        ),
    )
    errors = host.load_directory(directory)
    if not host.controllers:
        host.stop()
        raise ControllerError(f"no controller could be loaded from {directory}: {errors[0]}")
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        host.start()
        render.err_console.print(
            f"running {len(host.controllers)} controller(s) against {api.host}"
            + (f"; {len(errors)} failed to load (see `edgeagent controllers list`)" if errors else "")
            + f"; status in {cfg.state_dir / 'controllers'}",
            highlight=False,
        )
        while not stop.wait(1.0):
            pass
    finally:
        host.stop()


def _size(n: int) -> str:
    if n <= 0:
        return "-"
    return f"{n / 1024:.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def list_controllers(
    ctx: typer.Context,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show each controller: active or swapped, memory, events handled, wakes, last error."""
    from edgeagent.controllers.host import host_alive, read_status

    cfg = state(ctx).config
    status = read_status(cfg.state_dir)
    alive = host_alive(status)
    rows = status["controllers"]
    if json_:
        render.print_json(
            {
                "host_running": alive,
                "pid": status.get("pid"),
                "updated": status.get("updated"),
                "controllers": rows,
                "failed_loads": status.get("failed_loads", []),
                "watches": status.get("watches", []),
            }
        )
        return
    updated = time.strftime("%H:%M:%S", time.localtime(float(status.get("updated") or 0)))
    title = (
        f"Controllers (host pid {status.get('pid')}, updated {updated})"
        if alive
        else f"Controllers (host NOT running; last status from {updated})"
    )
    render.console.print(
        render.table(
            title,
            ["name", "state", "memory", "on disk", "events", "wakes", "swaps", "denied", "last error"],
            [
                [
                    escape(c["name"]),
                    c["state"],
                    _size(int(c.get("memory_bytes", 0))),
                    _size(int(c.get("snapshot_bytes", 0))),
                    c.get("events", 0),
                    c.get("wakes", 0),
                    c.get("swaps", 0),
                    c.get("denied", 0),
                    escape(c.get("last_error") or ""),
                ]
                for c in rows
            ],
        )
    )
    for f in status.get("failed_loads", []):
        render.console.print(f"not loaded: {f['error']}", style="red", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    controllers = typer.Typer(
        help="Wasm Kubernetes controllers (swapped to disk when idle).", no_args_is_help=True
    )
    controllers.command("run")(run)
    controllers.command("list")(list_controllers)
    app.add_typer(controllers, name="controllers")
