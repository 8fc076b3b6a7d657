"""`edgeagent agent` (the service), `edgeagent status` and `edgeagent output` (its local API)."""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from edgeagent.cli import render
from edgeagent.cli.context import state


def agent_command(ctx: typer.Context) -> None:
    """Run the device agent: measure, enroll (or resume) and keep attesting, run the configured drivers and
    controllers; SIGHUP reloads, SIGTERM stops. What systemd's edgeagent.service runs."""
    st = state(ctx)
    cfg = st.config  # bad configuration fails here, as one line, before the exec
    # The service runs in its own lean process image (see edgeagent.agent.__main__); same pid, so systemd's
    # notify socket, signals and the watchdog see the process they started.
    argv = [sys.executable, "-m", "edgeagent.agent"]
    if st.config_path is not None:
        argv += ["--config", str(st.config_path)]
    argv += ["--state-dir", str(cfg.state_dir), "--tpm", cfg.tpm_tcti] + ["-v"] * st.verbose
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _socket(ctx: typer.Context, socket: Path | None) -> Path:
    return socket or state(ctx).config.agent.socket


SocketOption = Annotated[
    Path | None, typer.Option("--socket", help="The agent's local API socket [default: agent.socket]")
]


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0.0, dt.datetime.now().timestamp() - ts)
    return f"{s:.1f} s ago" if s < 120 else f"{s / 60:.0f} min ago"


def _seconds(n: Any) -> str:
    if n is None:
        return "-"
    n = int(n)
    return f"{n} s" if abs(n) < 120 else f"{n // 60} min" if abs(n) < 7200 else f"{n / 3600:.1f} h"


def _values(latest: dict[str, Any] | None) -> str:
    if not latest:
        return "-"
    if "written" in latest:
        return f"wrote {latest['written']!r}"
    units = latest.get("units") or {}
    return ", ".join(
        f"{k} {v:.4g} {units.get(k, '')}".rstrip() for k, v in (latest.get("values") or {}).items()
    )


def render_status(s: dict[str, Any]) -> None:
    for part in status_renderables(s):
        render.console.print(part)


def status_renderables(s: dict[str, Any]) -> list[Any]:
    """The status as rich renderables: printed by `edgeagent status`, shown live by `make run`."""
    att, m, ctl = s.get("attestation") or {}, s.get("measure") or {}, s.get("controllers") or {}
    out: list[Any] = [
        f"[bold]edgeagent {escape(str(s.get('version')))}[/] pid {s.get('pid')}, up "
        f"{_seconds(s.get('uptime'))}, config {escape(str(s.get('config') or '-'))}"
        + ("" if s.get("ready") else " [yellow](starting)[/]")
    ]
    if s.get("reload_error"):
        out.append(f"[red]last reload refused:[/] {escape(s['reload_error'])}")
    t = Table(title="phases", title_justify="left")
    for c in ("phase", "state", "detail"):
        t.add_column(c)
    t.add_row(
        "tpm", "open", escape(f"{s['tpm']['tcti']} (EK {s['tpm']['ek_type']}, AK {s['tpm']['ak_type']})")
    )
    t.add_row(
        "measure",
        m.get("state", "-"),
        escape(
            f"PCR {m.get('pcr')} = {str(m.get('pcr_value', ''))[:16]}…, {m.get('files')} files, "
            f"{m.get('new')} new at the last measurement, {m.get('reloads')} reloads"
        ),
    )
    detail = (
        f"node {att.get('node_name') or '-'}, agent {att.get('uuid') or '-'} on "
        f"{att.get('agent_address')}, {att.get('quotes_served', 0)} quotes served"
    )
    if att.get("push_last_error"):
        detail += f", last push error: {escape(str(att['push_last_error']))}"
    if att.get("revoked"):
        detail += ", [red]revoked: credential dropped[/]"
    if att.get("last_error"):
        detail += f", last error: {escape(att['last_error'])}"
    if att.get("phase") == "disabled":
        detail = "agent.enroll = false: no Keylime, no node credential"
    t.add_row("attestation", str(att.get("phase")), detail)
    cred = (
        "none"
        if not att.get("credential_expiry")
        else f"expires {att['credential_expiry']} (in {_seconds(att.get('credential_seconds_left'))}), "
        f"{att.get('renewals', 0)} renewals"
    )
    if att.get("last_renewal_error"):
        cred += f", last renewal failed: {escape(att['last_renewal_error'])}"
    t.add_row("credential", "issued" if att.get("credential_expiry") else "-", cred)
    t.add_row("controllers", str(ctl.get("state")), escape(ctl.get("last_error") or ""))
    out.append(t)
    drivers = s.get("drivers") or []
    if drivers:
        t = Table(title="drivers", title_justify="left")
        for c in (
            "name",
            "driver",
            "device",
            "state",
            "last reading",
            "when",
            "readings",
            "errors",
            "last error",
        ):
            t.add_column(c)
        for d in drivers:
            latest = d.get("latest") or {}
            style = (
                "green"
                if d["state"] == "running"
                else "yellow"
                if d["state"] in ("starting", "errors")
                else "red"
            )
            t.add_row(
                d["name"],
                escape(d["driver"]),
                escape(d.get("device") or "-"),
                f"[{style}]{d['state']}[/]",
                escape(_values(latest)),
                _ago(latest.get("time")),
                str(d.get("readings", 0)),
                str(d.get("errors", 0)),
                escape(d.get("last_error") or ""),
            )
        out.append(t)
    ctls = ctl.get("controllers") or []
    if ctls:
        t = Table(title="controllers", title_justify="left")
        for c in ("name", "state", "events", "wakes", "swaps", "restarts", "last error"):
            t.add_column(c)
        for c in ctls:
            t.add_row(
                c["name"],
                c["state"],
                str(c.get("events", 0)),
                str(c.get("wakes", 0)),
                str(c.get("swaps", 0)),
                str(c.get("restarts", 0)),
                escape(c.get("last_error") or ""),
            )
        out.append(t)
    return out


def status_command(
    ctx: typer.Context,
    socket: SocketOption = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show what the running agent is doing: TPM, measurement, attestation, credential, drivers with their
    last readings, controllers."""
    from edgeagent.agent.client import AgentClient

    s = AgentClient(_socket(ctx, socket)).status()
    if json_:
        render.print_json(s)
    else:
        render_status(s)


def output_command(
    ctx: typer.Context,
    driver: Annotated[str, typer.Argument(help="Output driver instance (e.g. the LCD)")],
    text: Annotated[str, typer.Argument(help="Text to write")],
    socket: SocketOption = None,
) -> None:
    """Write TEXT to an output driver instance of the running agent, as its policy allows."""
    from edgeagent.agent.client import AgentClient

    AgentClient(_socket(ctx, socket)).write(driver, text)
    render.console.print(f"wrote {len(text)} characters to {escape(driver)}")


def register(app: typer.Typer) -> None:
    app.command("agent")(agent_command)
    app.command("status")(status_command)
    app.command("output")(output_command)
