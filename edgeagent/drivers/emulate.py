"""`edgeagent emulate DRIVER`: a driver through the real kernel-facing stack (smbus2 and its ioctls) against
its simulated part behind an emulated /dev/i2c-N (umockdev), as the project's own emulation tests run drivers.

What it adds over ``run-driver --sim``: the driver's requests go through smbus2, the i2c-dev ioctls
(I2C_RDWR, I2C_SMBUS) and their errno mapping, exactly as on a device, so a driver that works here differs
from hardware only in the part itself. The part is the one ``--sim`` would use (the bundle's model, or a
bundled driver's), loaded by the emulator process.

Processes: this one starts the emulator (``umockdev-wrapper python -m edgeagent.hw.emulation.server``) and
runs ``edgeagent run-driver --hardware`` under umockdev's preload library; its output is the child's.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeagent.config import AgentConfig
from edgeagent.drivers import bundled, loader
from edgeagent.drivers.session import choose_device
from edgeagent.errors import DriverError


def part_spec(driver: str, config: AgentConfig, source: loader.DriverSource, address: int) -> dict[str, Any]:
    """The emulator's description of the driver's simulated part (see edgeagent.hw.emulation.server)."""
    found = bundled.lookup(driver, config)
    if found is not None:
        model = found.meta.model
        if not model:
            raise DriverError(
                f"driver {source.name} has no simulated part (its bundle names no model); nothing to emulate"
            )
        if model.startswith("entry-point:"):
            return {"entry_point": model.removeprefix("entry-point:"), "address": address}
        bundled.model_factory(found.directory, found.meta)  # a broken model: one line here, not in the child
        return {"model_file": str((found.directory / model).resolve()), "address": address}
    if source.info is None or source.info.sim_model is None:
        raise DriverError(f"driver {source.name} has no simulated part (a module outside a bundle has none)")
    part = source.info.sim_model(address)
    return {"model": part.name, "address": address}


def run(
    driver: str,
    config: AgentConfig,
    *,
    policy_file: Path | None,
    device: str | None,
    global_args: Sequence[str],
    run_args: Sequence[str],
    log: Path | None = None,
) -> int:
    """Runs the driver under emulation until it ends; returns its exit status."""
    from edgeagent.hw.emulation.client import Emulator

    source = loader.resolve(driver, config, policy_file)
    if source.info is not None and source.info.bus != "i2c":
        raise DriverError(f"driver {source.name}: only I2C drivers can be emulated by this command")
    dev = choose_device(source, device)
    spec = {"i2c": [{"bus": dev.bus, "parts": [part_spec(driver, config, source, dev.address)]}]}
    argv = [sys.executable, "-m", "edgeagent.cli.main", *global_args, "run-driver", driver, "--hardware"]
    argv += ["--device", f"{dev.bus}:{dev.address:#04x}"]
    if policy_file is not None:
        argv += ["--policy", str(policy_file)]
    argv += list(run_args)
    with Emulator(spec, log=log) as emu:
        return subprocess.run(argv, env=emu.env(), check=False).returncode


__all__ = ["part_spec", "run"]
