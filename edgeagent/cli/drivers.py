"""`edgeagent run-driver DRIVER` and `edgeagent drivers list`: Wasm I2C and USB drivers from the CLI."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape

from edgeagent.cli import render
from edgeagent.cli.context import state
from edgeagent.drivers import registry
from edgeagent.drivers.session import DriverSession, open_driver
from edgeagent.drivers.usb_session import UsbSession
from edgeagent.errors import DeviceDataError


def _reading_dict(session: DriverSession | UsbSession, text: str | None) -> dict[str, Any]:
    if isinstance(session, UsbSession):
        return session.read()
    drv = session.driver
    if drv.kind == "sensor":
        return drv.read().to_dict()
    assert text is not None
    drv.write(text)
    out: dict[str, Any] = {"driver": drv.name, "time": time.time(), "written": text}
    model = getattr(session.bus, "models", {}).get(session.device.address)
    if session.sim and model is not None and hasattr(model, "lines"):
        out["display"] = model.lines()
    return out


def _usb_table(session: UsbSession, rows: list[dict[str, Any]]) -> Any:
    title = f"{session.driver.name} on {session.where}"
    if session.header:
        q, cap = session.header["inquiry"], session.header["capacity"]
        title += (
            f"\n{q['vendor']} {q['product']} {q['revision']}: {cap['blocks']} blocks of "
            f"{cap['block_size']} B ({cap['bytes'] / 1e6:.1f} MB)"
        )
    cols = ["time"] + [escape(f"{n} [{u}]") if u else n for n, u in session.channels]
    body = [
        [time.strftime("%H:%M:%S", time.localtime(r["time"]))]
        + [_cell(r["values"].get(n)) for n, _ in session.channels]
        for r in rows
    ]
    return render.table(title, cols, body)


def _cell(v: float | None) -> str:
    if v is None:
        return "-"
    return str(int(v)) if float(v).is_integer() else f"{v:.1f}"


def _table(session: DriverSession | UsbSession, rows: list[dict[str, Any]]) -> Any:
    if isinstance(session, UsbSession):
        return _usb_table(session, rows)
    drv = session.driver
    where = f"{session.bus.name} @ {session.device.address:#04x}{' (simulated)' if session.sim else ''}"
    if drv.kind == "sensor":
        cols = ["time"] + [escape(f"{n} [{u}]") if u else n for n, u in drv.channels]
        body = [
            [time.strftime("%H:%M:%S", time.localtime(r["time"]))]
            + [f"{r['values'].get(n, float('nan')):.3f}" for n, _ in drv.channels]
            for r in rows
        ]
    else:
        cols = ["time", "written", "display"]
        body = [
            [
                time.strftime("%H:%M:%S", time.localtime(r["time"])),
                r["written"].replace("\n", " / "),
                " | ".join(r.get("display", [])),
            ]
            for r in rows
        ]
    return render.table(f"{drv.name} on {where}", cols, body)


def run_driver(
    ctx: typer.Context,
    driver: Annotated[str, typer.Argument(help="A bundled driver (see `drivers list`) or a path to a .wasm")],
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            "-d",
            help="I2C: [BUS:]ADDRESS, e.g. 1:0x48. USB: VID:PID or BUS/ADDRESS, e.g. 1209:0001, 1/5 "
            "[default: the first device the policy grants]",
        ),
    ] = None,
    policy: Annotated[
        Path | None, typer.Option("--policy", "-p", help="Policy TOML [default: bundled]")
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", "-i", min=0.0, help="Seconds between readings")
    ] = 1.0,
    count: Annotated[
        int, typer.Option("--count", "-n", min=0, help="Readings to take (0: until Ctrl-C)")
    ] = 0,
    text: Annotated[
        str | None, typer.Option("--text", help="Output drivers: text to show [default: the time]")
    ] = None,
    size: Annotated[
        int | None,
        typer.Option(
            "--size", min=1, help="USB: bytes per ping [64] or per block check [65536] (restores the data)"
        ),
    ] = None,
    sim: Annotated[
        bool | None,
        typer.Option(
            "--sim/--hardware",
            help="Simulated devices [default: --sim when no /dev/i2c-* exists (I2C) or no device the policy "
            "grants is attached (USB)]",
        ),
    ] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="JSON lines (the default when stdout is not a TTY)")
    ] = False,
) -> None:
    """Load a Wasm driver, grant it the devices its policy allows, and stream its readings."""
    cfg = state(ctx).config
    session = open_driver(driver, cfg, policy_file=policy, device=device, sim=sim, size=size)
    live_table = not json_ and sys.stdout.isatty()
    rows: list[dict[str, Any]] = []
    try:
        if isinstance(session, UsbSession) and session.header and not live_table:
            render.print_json(session.header, indent=None)
        with (
            Live(_table(session, rows), console=render.console, auto_refresh=False)
            if live_table
            else _Null() as live
        ):
            n = 0
            while count == 0 or n < count:
                if n:
                    time.sleep(interval)
                n += 1
                try:
                    row = _reading_dict(session, text if text is not None else time.strftime("%H:%M:%S"))
                except DeviceDataError as e:  # the driver's own verdict on one reading: the stream goes on
                    print(f"edgeagent: warning: {e}", file=sys.stderr, flush=True)
                    continue
                if live_table:
                    if row.get("skipped"):
                        continue
                    rows = [*rows[-19:], row]
                    live.update(_table(session, rows), refresh=True)
                else:
                    render.print_json(row, indent=None)
    finally:
        session.close()


class _Null:
    """Stands in for `Live` when the rows are printed one by one."""

    def __enter__(self) -> _Null:
        return self

    def update(self, *args: object, **kwargs: object) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


def list_drivers(
    ctx: typer.Context,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """The bundled drivers: what they drive, the interfaces they import, their module and policy."""
    cfg = state(ctx).config
    out: list[dict[str, Any]] = []
    for info in registry.all_drivers():
        try:
            module: str | None = str(registry.module_path(info, cfg))
        except Exception:  # not built: listed anyway, with no module
            module = None
        pol = registry.policy_path(info, cfg)
        grants = ""
        if pol is not None:
            from edgeagent.drivers.policy import load_policy

            p = load_policy(pol)
            grants = "; ".join(
                [f"i2c-{r.bus}: {', '.join(f'{a:#04x}' for a in sorted(r.addresses))}" for r in p.i2c]
                + [
                    f"usb {r.vid:04x}:{r.pid:04x}" + (f" if{r.interface}" if r.interface is not None else "")
                    for r in p.usb
                ]
            )
        out.append(
            {
                "name": info.name,
                "kind": info.kind,
                "bus": info.bus,
                "description": info.description,
                "interfaces": list(info.interfaces),
                "module": module,
                "policy": str(pol) if pol else None,
                "grants": grants,
            }
        )
    from edgeagent.drivers import bundled

    for b in bundled.installed(cfg):  # third-party drivers installed from bundles
        out.append(
            {
                "name": b.meta.name,
                "kind": b.info.kind,
                "bus": b.info.bus,
                "description": b.info.description,
                "interfaces": list(b.info.interfaces),
                "module": str(b.module),
                "policy": str(b.policy),
                "grants": "",
                "bundle": {"version": b.meta.version, "abi": b.meta.abi, "model": b.meta.model or None},
            }
        )
    if json_:
        render.print_json(out)
        return
    render.console.print(
        render.table(
            "Bundled and installed drivers",
            ["name", "kind", "bus", "interfaces", "grants (policy)", "module"],
            [
                [
                    d["name"],
                    d["kind"],
                    d["bus"],
                    "\n".join(d["interfaces"]),
                    d["grants"] or "-",
                    d["module"] or "(not built: make -C drivers)",
                ]
                for d in out
            ],
        )
    )


def emulate(
    ctx: typer.Context,
    driver: Annotated[str, typer.Argument(help="A bundled driver, a bundle (directory or its module) or an "
                                          "installed bundle's name")],
    device: Annotated[
        str | None, typer.Option("--device", "-d", help="[BUS:]ADDRESS [default: as run-driver chooses]")
    ] = None,
    policy: Annotated[
        Path | None, typer.Option("--policy", "-p", help="Policy TOML [default: the driver's]")
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", "-i", min=0.0, help="Seconds between readings")
    ] = 1.0,
    count: Annotated[
        int, typer.Option("--count", "-n", min=0, help="Readings to take (0: until Ctrl-C)")
    ] = 0,
    json_: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
) -> None:
    """Run a driver through the real smbus2/i2c-dev stack against its simulated part on an emulated
    /dev/i2c-N (umockdev): what run-driver --sim cannot show (ioctls, errno mapping)."""
    from edgeagent.drivers import emulate as emulation

    st = state(ctx)
    cfg = st.config
    global_args = ["--state-dir", str(cfg.state_dir)]
    if st.config_path is not None:
        global_args = ["--config", str(st.config_path), *global_args]
    global_args += ["-v"] * st.verbose
    run_args = ["--interval", str(interval), "--count", str(count)] + (["--json"] * json_)
    rc = emulation.run(driver, cfg, policy_file=policy, device=device, global_args=global_args,
                       run_args=run_args)
    if rc:
        raise typer.Exit(rc)


def register(app: typer.Typer) -> None:
    app.command("run-driver")(run_driver)
    app.command("emulate")(emulate)
    drivers = typer.Typer(help="Wasm device drivers.", no_args_is_help=True)
    drivers.command("list")(list_drivers)
    from edgeagent.cli.bundle import install_driver

    drivers.command("install")(install_driver)
    app.add_typer(drivers, name="drivers")
