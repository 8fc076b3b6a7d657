"""`edgeagent bench AREA`: run a benchmark, print a rich table, write JSON."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

from edgeagent.bench.harness import Report
from edgeagent.cli import render
from edgeagent.cli.benchrender import report_table
from edgeagent.cli.context import state

# area -> (module with `run(config, *, repeat: int) -> Report`, help). Only areas that work are listed.
AREAS: dict[str, tuple[str, str]] = {
    "tpm": ("edgeagent.bench.tpm", "PCR extend/read, quotes with RSA and ECC AKs, quote verification"),
    "enroll": ("edgeagent.bench.enroll", "Attested enrollment per phase, revocation latency (Keylime, kube)"),
    "drivers": ("edgeagent.bench.drivers", "Wasm drivers vs native Python: host calls, reads, cold start"),
    "controllers": (
        "edgeagent.bench.controllers",
        "Ring of N Wasm controllers (swapping or not) vs Python processes/objects: memory, rounds, wakes",
    ),
    "agent": (
        "edgeagent.bench.agent",
        "The agent service: memory and idle CPU (vs separate processes and a bare floor), start -> READY",
    ),
}


def _make_command(area: str, module: str):
    def command(
        ctx: typer.Context,
        repeat: Annotated[int, typer.Option("--repeat", "-n", min=3, help="Repetitions per case")] = 30,
        out: Annotated[
            Path | None, typer.Option("--out", "-o", help="JSON file [default: bench-results/AREA.json]")
        ] = None,
        json_: Annotated[
            bool, typer.Option("--json", help="Print the JSON report instead of a table")
        ] = False,
    ) -> None:
        cfg = state(ctx).config
        report = importlib.import_module(module).run(cfg, repeat=repeat)
        path = out or Path("bench-results") / f"{area}.json"
        _show(report, path, json_=json_)

    return command


def _show(report: Report, path: Path, *, json_: bool, extra: str = "") -> None:
    """Writes the JSON report and prints it, or its table, notes and where it went."""
    report.write_json(path)
    if json_:
        render.print_json(report.to_dict())
        return
    render.console.print(report_table(report))
    for note in report.meta.get("notes", []):
        render.console.print(f"note: {note}")
    render.console.print(f"JSON written to {path}{extra}")


def register(app: typer.Typer) -> None:
    bench = typer.Typer(
        help="Benchmarks: rich table + JSON, baselines measured in the same run.", no_args_is_help=True
    )
    for area, (module, help_) in AREAS.items():
        bench.command(area, help=help_)(_make_command(area, module))
    bench.command("fleet", help="N devices enrolling at once against one Keylime and one controller: "
                  "enrollment vs CPU bound, controller cost, steady state, revocation among N")(_fleet)
    app.add_typer(bench, name="bench")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected sizes like 10,25,50,100") from None
    if not sizes or min(sizes) < 1 or max(sizes) > 1000:
        raise typer.BadParameter(f"{text!r}: sizes must be 1..1000")
    return sizes


def _fleet(
    sizes: Annotated[
        str, typer.Option("-N", "--sizes", help="Fleet sizes, comma-separated")
    ] = "10,25,50,100",
    quote_interval: Annotated[
        float, typer.Option(min=0.5, max=600, help="Keylime's quote interval (seconds) for every device")
    ] = 2.0,
    settle: Annotated[
        float, typer.Option(min=0, help="Seconds after enrollment before the steady window")
    ] = 10,
    window: Annotated[float, typer.Option(min=2, help="Seconds of steady state measured")] = 10,
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON file")] = Path("bench-results/fleet.json"),
    plot: Annotated[Path, typer.Option(help="PNG of the curves")] = Path("bench-results/fleet.png"),
    json_: Annotated[bool, typer.Option("--json", help="Print the JSON report instead of a table")] = False,
    keep: Annotated[
        Path | None, typer.Option(help="Run in this directory and keep it (every process's log)")
    ] = None,
    agent_notifications: Annotated[
        bool, typer.Option("--agent-notifications/--webhook-only",
                           help="Keylime's agent notifier on (each revocation to every agent) or off")
    ] = True,
    verifier_workers: Annotated[
        int, typer.Option(min=1, max=16, help="Keylime verifier worker processes (num_workers)")
    ] = 1,
) -> None:
    import signal

    from edgeagent.bench import fleet

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds the run: every process it started is stopped

    signal.signal(signal.SIGTERM, terminate)
    report = fleet.run(None, sizes=_sizes(sizes), quote_interval=quote_interval, settle=settle, window=window,
                       plot=plot, keep=keep, agent_notifications=agent_notifications, out=out,
                       verifier_workers=verifier_workers)
    _show(report, out, json_=json_, extra=f"; plot {plot}")
