"""`edgeagent measure`: measure the agent into its PCR; `measure verify`; `measure policy`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from edgeagent.cli import render
from edgeagent.cli.context import state
from edgeagent.errors import MeasurementMismatch
from edgeagent.measure import measurer, policy, targets, verify
from edgeagent.tpm import Tpm

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def _short(value: bytes | str | None, n: int = 16) -> str:
    if value is None:
        return "-"
    text = value.hex() if isinstance(value, bytes) else value
    return text if len(text) <= n else text[:n] + "…"


def _measure_dict(res: measurer.MeasureResult) -> dict[str, Any]:
    return {
        "pcr": res.pcr,
        "banks": res.banks,
        "pcr_values": {b: v.hex() for b, v in res.pcr_values.items()},
        "event_log": str(res.log_path),
        "segment_start": res.segment_start,
        "new_segment": res.new_segment,
        "rolled_forward": res.rolled_forward,
        "measured": res.measured,
        "items": [
            {
                "component": i.component,
                "name": i.name,
                "path": str(i.path),
                "sha256": i.sha256,
                "recnum": i.recnum,
                "status": i.status,
            }
            for i in res.items
        ],
    }


def _verify_dict(res: verify.VerifyResult) -> dict[str, Any]:
    return {
        "ok": res.ok,
        "firmware_log": {"path": str(res.firmware_log), "present": res.firmware_present},
        "event_log": str(res.cel_log),
        "rows": [
            {
                "log": r.log,
                "pcr": r.pcr,
                "bank": r.bank,
                "events": r.events,
                "expected": r.expected.hex(),
                "actual": r.actual.hex(),
                "match": r.match,
            }
            for r in res.rows
        ],
        "files_changed": [
            {"name": f.name, "path": str(f.path), "recorded": f.recorded, "current": f.current}
            for f in res.files
            if f.changed
        ],
        "files_checked": len(res.files),
        "problems": res.problems,
    }


def measure_command(
    ctx: typer.Context,
    json_: JsonOption = False,
    new_segment: Annotated[
        bool, typer.Option("--new-segment", help="Reset the PCR and start a new log segment")
    ] = False,
) -> None:
    """Measure the agent's package, config, policies and Wasm modules into the TPM and the event log."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = state(ctx).config
    measurer.check_pcr(cfg.measure.pcr)  # a config error is reported before the TPM is touched
    with Tpm.open(cfg.tpm_tcti) as tpm:
        res = measurer.measure(cfg, tpm, new_segment=new_segment)
    if json_:
        render.print_json(_measure_dict(res))
        return
    rows = [
        (i.component, escape(i.name), _short(i.sha256), i.status, "" if i.recnum is None else i.recnum)
        for i in res.items
    ]
    render.console.print(render.table(None, ["component", "name", "sha256", "status", "record"], rows))
    values = ", ".join(f"{b}:{v.hex()}" for b, v in res.pcr_values.items())
    render.console.print(
        f"PCR {res.pcr} = {values}\n{res.measured} measured, {len(res.items) - res.measured} unchanged; "
        f"event log {escape(str(res.log_path))} (segment from record #{res.segment_start})"
    )
    if res.new_segment:
        render.console.print(f"new segment: {res.new_segment}")
    if res.rolled_forward:
        render.console.print(f"completed {res.rolled_forward} records an interrupted run had logged")


def verify_command(
    ctx: typer.Context,
    firmware_log: Annotated[
        Path | None, typer.Option("--firmware-log", help="TCG2 binary log [default: from the config]")
    ] = None,
    policy_file: Annotated[
        Path | None, typer.Option("--policy", help="Also check the measurements against this policy file")
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Replay the firmware log and the agent's event log against the TPM; non-zero exit on any mismatch."""
    cfg = state(ctx).config
    measurer.check_pcr(cfg.measure.pcr)
    reference = policy.load(policy_file) if policy_file is not None else None
    with Tpm.open(cfg.tpm_tcti) as tpm:
        res = verify.verify(cfg, tpm, firmware_log=firmware_log, reference=reference)
    if json_:
        render.print_json(_verify_dict(res))
    else:
        rows = [
            (
                r.log,
                r.pcr,
                r.bank,
                r.events,
                _short(r.expected),
                _short(r.actual),
                "[green]yes[/]" if r.match else "[red]NO[/]",
            )
            for r in res.rows
        ]
        render.console.print(
            render.table(None, ["log", "PCR", "bank", "events", "expected", "actual", "match"], rows)
        )
        if not res.firmware_present:
            render.console.print(
                f"firmware log {escape(str(res.firmware_log))} absent: only the agent's log was replayed"
            )
        changed = sum(f.changed for f in res.files)
        render.console.print(f"{len(res.files)} measured files re-hashed, {changed} changed")
        for p in res.problems:
            render.console.print(f"[red]problem:[/] {escape(p)}", highlight=False)
    if not res.ok:
        more = f" (and {len(res.problems) - 1} more)" if len(res.problems) > 1 else ""
        first = res.problems[0] if res.problems else "a PCR does not match its log"
        raise MeasurementMismatch(f"verification failed: {first}{more}")


def policy_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Policy file to write")],
    json_: JsonOption = False,
) -> None:
    """Write a reference policy allowing the current digest of every measured component."""
    cfg = state(ctx).config
    pcr = measurer.check_pcr(cfg.measure.pcr)
    items = [(t.component, t.name, targets.sha256_file(t.path)) for t in targets.collect(cfg)]
    ref = policy.from_measurements(pcr, items)
    policy.write(out, ref)
    if json_:
        render.print_json({"path": str(out), "pcr": pcr, "components": len(ref.components)})
    else:
        n = len(ref.components)
        render.console.print(f"reference policy for {n} components written to {escape(str(out))}")


def register(app: typer.Typer) -> None:
    measure_app = typer.Typer(
        help="Measure the agent into the TPM (PCR 23) and verify the measurements.",
        invoke_without_command=True,
        no_args_is_help=False,
    )
    measure_app.callback()(measure_command)
    measure_app.command("verify")(verify_command)
    measure_app.command("policy")(policy_command)
    app.add_typer(measure_app, name="measure")
