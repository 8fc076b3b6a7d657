"""`edgeagent controllers run [DIR]` and `edgeagent controllers list`: the Wasm controller host."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from edgeagent.cli import render
from edgeagent.cli.context import state

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
        bool, typer.Option("--no-swap", help="Keep every controller instantiated [default: controllers.swap]")
    ] = False,
    no_verify: Annotated[
        bool,
        typer.Option("--no-verify", help="Do not check modules against `edgeagent measure`'s digests "
                     "[default: controllers.verify]"),
    ] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, max=64, help="Threads running controllers "
                                 "[default: controllers.workers]")
    ] = None,
    max_active: Annotated[
        int | None,
        typer.Option("--max-active", min=0, help="Most controllers instantiated at once, 0: no cap "
                     "[default: controllers.max_active]"),
    ] = None,
    configmap: Annotated[
        str | None,
        typer.Option(
            "--configmap",
            metavar="NAMESPACE/NAME",
            help="Load controllers from this ConfigMap (manifests in data, modules in binaryData) and reload "
            "them when it changes; DIR is then only loaded when given",
        ),
    ] = None,
) -> None:
    """Run the controllers in DIR until SIGINT/SIGTERM; idle ones sleep on disk and wake on events."""
    from edgeagent.controllers import service

    st = state(ctx)
    cfg = st.config
    # The defaults live in the config's [controllers] section; options given here override it.
    service.apply_options(cfg, kubeconfig=kubeconfig, configmap=configmap, swap=False if no_swap else None,
                          verify=False if no_verify else None, workers=workers, max_active=max_active)
    service.check(cfg, directory)  # bad input fails here, as one line, before the exec
    # The host is long-lived: it runs in its own lean process image instead of carrying every command
    # group's imports (see edgeagent.controllers.service). Same pid, so signals and the status file agree.
    argv = [sys.executable, "-m", "edgeagent.controllers"]
    if st.config_path is not None:
        argv += ["--config", str(st.config_path)]
    argv += ["--state-dir", str(cfg.state_dir)] + ["-v"] * st.verbose + ["run"]
    if directory is not None:
        argv.append(str(directory))
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    if configmap is not None:
        argv += ["--configmap", configmap]
    argv += ["--no-swap"] * no_swap + ["--no-verify"] * no_verify
    argv += [] if workers is None else ["--workers", str(workers)]
    argv += [] if max_active is None else ["--max-active", str(max_active)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _size(n: int) -> str:
    if n <= 0:
        return "-"
    return f"{n / 1024:.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _find_host(ctx: typer.Context) -> tuple[Path, dict[str, Any]]:
    """The state directory and status of the host to talk to.

    The configured (or --state-dir) one when it holds a status; without --state-dir, else the running host's
    that it registered at start (so `list` finds a host started with another --state-dir).
    """
    from edgeagent.controllers.host import read_status, running_host_state_dir
    from edgeagent.errors import StateError

    st = state(ctx)
    cfg = st.config
    try:
        return cfg.state_dir, read_status(cfg.state_dir)
    except StateError:
        other = running_host_state_dir() if st.state_dir is None else None
        if other is None or other == cfg.state_dir:
            raise
        return other, read_status(other)


def restart_controller(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The controller (see `edgeagent controllers list`)")],
    timeout: Annotated[float, typer.Option("--timeout", min=0.0, help="Seconds to wait for it")] = 15.0,
) -> None:
    """Restart one controller with a fresh instance, also one stopped after repeated failures."""
    from edgeagent.controllers.host import REQUESTS_DIR, host_alive, read_status
    from edgeagent.errors import ControllerError, StateError

    state_dir, status = _find_host(ctx)
    if not host_alive(status):
        raise StateError(f"the controller host that wrote {state_dir / 'controllers'} is not running")
    rows = {c["name"]: c for c in status["controllers"]}
    if name not in rows:
        raise ControllerError(f"no controller {name!r} in the running host (see `controllers list`)")
    before = int(rows[name].get("restarts", 0))
    requests = state_dir / "controllers" / REQUESTS_DIR
    try:
        requests.mkdir(mode=0o700, exist_ok=True)
        (requests / f"restart-{name}").touch()
    except OSError as e:
        raise StateError(f"cannot ask the host to restart {name}: {requests}: {e.strerror}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = next((c for c in read_status(state_dir)["controllers"] if c["name"] == name), None)
        if row is not None and int(row.get("restarts", 0)) > before:
            if row["state"] == "failed":
                why = row.get("last_error")
                raise ControllerError(f"controller {name} restarted and failed again: {why}")
            render.console.print(f"controller {name} restarted ({row['state']})", markup=False,
                                 highlight=False)
            return
        time.sleep(0.2)
    raise ControllerError(f"controller {name}: the host did not restart it within {timeout:g} s")


def list_controllers(
    ctx: typer.Context,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show each controller: active or swapped, memory, events handled, wakes, last error."""
    from edgeagent.controllers.host import host_alive

    _, status = _find_host(ctx)
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
            [
                "name",
                "state",
                "memory",
                "on disk",
                "events",
                "wakes",
                "swaps",
                "denied",
                "restarts",
                "last error",
            ],
            [
                [
                    escape(c["name"]),
                    c["state"] if c.get("healthy", True) or c["state"] == "failed"
                    else f"{c['state']}, UNHEALTHY",
                    _size(int(c.get("memory_bytes", 0))),
                    _size(int(c.get("snapshot_bytes", 0))),
                    c.get("events", 0),
                    c.get("wakes", 0),
                    c.get("swaps", 0),
                    c.get("denied", 0),
                    c.get("restarts", 0),
                    escape(c.get("last_error") or ""),
                ]
                for c in rows
            ],
        )
    )
    for c in rows:
        if c.get("watch_error"):
            render.console.print(f"controller {c['name']} gets no events: {c['watch_error']}", style="red",
                                 markup=False, highlight=False)
    for f in status.get("failed_loads", []):
        render.console.print(f"not loaded: {f['error']}", style="red", markup=False, highlight=False)
    for w in status.get("watches", []):
        where = f" in {w['namespace']}" if w.get("namespace") else ""
        if w.get("healthy", w.get("synced")):
            continue
        failures = int(w.get("consecutive_failures", 0))
        why = f"{failures} failures in a row: {w.get('last_error') or '?'}" if failures else "not listed yet"
        render.console.print(
            f"watch {w.get('kind')}{where} UNHEALTHY ({why})",
            style="red",
            markup=False,
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    controllers = typer.Typer(
        help="Wasm Kubernetes controllers (swapped to disk when idle).", no_args_is_help=True
    )
    controllers.command("run")(run)
    controllers.command("list")(list_controllers)
    controllers.command("restart")(restart_controller)
    from edgeagent.cli.bundle import install_controller

    controllers.command("install")(install_controller)
    app.add_typer(controllers, name="controllers")
