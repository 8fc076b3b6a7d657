"""`edgeagent bench AREA`: run a benchmark, print a rich table, write JSON."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

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
        report.write_json(path)
        if json_:
            render.print_json(report.to_dict())
        else:
            render.console.print(report_table(report))
            for note in report.meta.get("notes", []):
                render.console.print(f"note: {note}")
            render.console.print(f"JSON written to {path}")

    return command


def register(app: typer.Typer) -> None:
    bench = typer.Typer(
        help="Benchmarks: rich table + JSON, baselines measured in the same run.", no_args_is_help=True
    )
    for area, (module, help_) in AREAS.items():
        bench.command(area, help=help_)(_make_command(area, module))
    app.add_typer(bench, name="bench")
