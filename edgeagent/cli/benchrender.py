"""Renders a benchmark `Report` as a rich table."""

from __future__ import annotations

from rich.table import Table

from edgeagent.bench.harness import Report, format_value


def report_table(report: Report) -> Table:
    t = Table(title=f"edgeagent bench {report.area}", title_justify="left")
    for col in ("case", "n", "median", "p90", "baseline", "ratio", "target", "met"):
        t.add_column(col, justify="left" if col in ("case", "baseline") else "right")
    for c in report.cases:
        ratio = report.ratio(c)
        met = report.target_met(c)
        if c.target is None:
            target = ""
        elif c.target_is_ratio:
            target = f"{'>=' if c.higher_is_better else '<='} {c.target:.2f}x"
        else:
            target = f"{'>=' if c.higher_is_better else '<='} {format_value(c.target, c.unit)}"
        t.add_row(
            c.name,
            str(len(c.samples)),
            format_value(c.median, c.unit),
            format_value(c.p90, c.unit),
            c.baseline or "",
            "" if ratio is None else f"{ratio:.3f}x",
            target,
            "" if met is None else ("[green]yes[/]" if met else "[red]no[/]"),
        )
    return t
