"""Drivers that come as bundles (edgeagent.wasm.bundle): installed under ``drivers.modules_dir/NAME/`` by
`edgeagent drivers install`, or given by path (the bundle's directory, or a module inside one).

Kept apart from the bundled-driver registry and the loader so third-party drivers need no change to either:
``loader.resolve`` asks ``lookup`` first and falls back to its own rules when it answers None.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeagent.config import AgentConfig
from edgeagent.drivers import registry
from edgeagent.errors import DriverError
from edgeagent.wasm import bundle

if TYPE_CHECKING:
    from edgeagent.hw.sim.clock import Clock


@dataclasses.dataclass(frozen=True)
class BundledDriver:
    directory: Path
    meta: bundle.BundleMeta
    info: registry.DriverInfo

    @property
    def module(self) -> Path:
        return self.directory / self.meta.module

    @property
    def policy(self) -> Path:
        return self.directory / self.meta.policy


def model_factory(directory: Path, meta: bundle.BundleMeta) -> Callable[[int], Any] | None:
    """address -> a simulated part, from the bundle's model (a TOML register map or an entry point); None
    when it names none. Raises ModelError for a model that does not load."""
    if not meta.model:
        return None
    if meta.model.startswith(bundle.ENTRY_POINT_PREFIX):
        from edgeagent.hw.sim.declarative import python_model

        return python_model(meta.model.removeprefix(bundle.ENTRY_POINT_PREFIX))
    from edgeagent.hw.sim.declarative import load_model

    spec = load_model(directory / meta.model)

    def part(address: int, *, clock: Clock = time.monotonic) -> Any:
        return spec.part(spec.place(address), clock=clock)

    return part


def _lazy_model(directory: Path, meta: bundle.BundleMeta) -> Callable[[int], Any]:
    """Loads the model on first use: a broken model must not stop the driver from running on hardware."""
    loaded: list[Callable[[int], Any]] = []

    def part(address: int, *, clock: Clock = time.monotonic) -> Any:
        from edgeagent.hw.sim.clock import new_part

        if not loaded:
            factory = model_factory(directory, meta)
            assert factory is not None
            loaded.append(factory)
        return new_part(loaded[0], address, clock)

    return part


def open_bundle(directory: Path) -> BundledDriver:
    """A driver bundle's metadata and registry entry; BundleError/ModelError for a broken one."""
    meta = bundle.load_meta(directory)
    if meta.kind != "driver":
        raise DriverError(f"bundle {meta.name} in {directory} is a {meta.kind}, not a driver")
    info = registry.DriverInfo(
        name=meta.name,
        kind="sensor",
        bus=meta.bus,
        description=meta.description or f"bundle {meta.name} {meta.version}".strip(),
        interfaces=registry.I2C_INTERFACES,
        default_address=meta.default_address,
        sim_model=_lazy_model(directory, meta) if meta.model else None,
        module_file=meta.module,
    )
    return BundledDriver(directory, meta, info)


def lookup(driver: str, config: AgentConfig) -> BundledDriver | None:
    """The bundle ``driver`` names: a bundle directory, a module inside one (its bundle.toml beside or above
    it), or the name of one installed under ``drivers.modules_dir``; None when it names no bundle."""
    path = Path(driver)
    if path.is_dir() and (path / bundle.META).is_file():  # ".", "sht31-driver", ...
        return open_bundle(path)
    if "/" in driver or driver.endswith(".wasm"):
        if path.is_dir() and (path / bundle.META).is_file():
            return open_bundle(path)
        if path.is_file():
            for d in (path.parent, path.parent.parent):
                if (d / bundle.META).is_file():
                    b = open_bundle(d)
                    if b.module.resolve() == path.resolve():
                        return b
        return None
    if driver in registry.REGISTRY:
        return None
    installed = config.drivers.modules_dir / driver
    if (installed / bundle.META).is_file():
        return open_bundle(installed)
    return None


def installed(config: AgentConfig) -> list[BundledDriver]:
    """Every driver bundle installed under ``drivers.modules_dir`` (broken ones are skipped)."""
    out: list[BundledDriver] = []
    root = config.drivers.modules_dir
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if (d / bundle.META).is_file():
            try:
                out.append(open_bundle(d))
            except Exception:  # listing must not fail on one broken bundle; running it reports why
                continue
    return out
