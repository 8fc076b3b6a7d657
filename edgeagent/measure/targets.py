"""What the agent measures before it trusts it: its own code, its configuration, and the Wasm it will run.

A target has a *component* (``package``, ``config``, ``policies``, ``driver``, ``controller``, ``extra``)
and a *name* that stays the same from one device to the next, so a reference policy written on one machine
applies to another: package files are ``edgeagent/<path in the package>``, files under the policies,
drivers and controllers directories are ``policies/...``, ``drivers/...``, ``controllers/...``; the config
file, explicitly listed driver modules outside the drivers directory and extra paths keep their absolute
path. Targets come out sorted by (component order, name), so the measurement order, and therefore the PCR
value, is reproducible.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import edgeagent
from edgeagent.config import AgentConfig
from edgeagent.errors import MeasureError

COMPONENTS = ("package", "config", "policies", "driver", "controller", "extra")
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}  # caches Python rewrites on its own: not what the package ships


@dataclasses.dataclass(frozen=True)
class Target:
    component: str
    name: str
    path: Path


def package_dir() -> Path:
    """The installed edgeagent package (the source tree for an editable install)."""
    return Path(edgeagent.__file__).resolve().parent


def _files_under(root: Path) -> Iterator[Path]:
    """Regular files below ``root``, sorted; links to files count, links to directories are not followed."""
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError as e:
        raise MeasureError(f"cannot list {root}: {e.strerror}") from None
    for p in entries:
        if p.is_dir() and not p.is_symlink():
            if p.name not in _SKIP_DIRS:
                yield from _files_under(p)
        elif p.is_file() and p.suffix not in _SKIP_SUFFIXES:
            yield p


def _tree(component: str, prefix: str, root: Path) -> list[Target]:
    return [Target(component, f"{prefix}/{p.relative_to(root).as_posix()}", p) for p in _files_under(root)]


def _required_file(component: str, path: Path, what: str) -> Target:
    if not path.is_file():
        raise MeasureError(f"{what} {path} does not exist or is not a file")
    return Target(component, str(path), path)


def collect(config: AgentConfig) -> list[Target]:
    """Every file to measure. Raises MeasureError for a configured module or extra path that is missing.

    Directories (policies, drivers, controllers) are measured when they exist: an absent optional
    directory means nothing of that kind will be loaded.
    """
    out: list[Target] = _tree("package", "edgeagent", package_dir())
    if config.source is not None:
        out.append(_required_file("config", config.source.resolve(), "config file"))
    if config.policies_dir.is_dir():
        out += _tree("policies", "policies", config.policies_dir)
    drivers_dir = config.drivers.modules_dir
    if drivers_dir.is_dir():
        out += _tree("driver", "drivers", drivers_dir)
    for module in config.drivers.modules:
        path = module if module.is_absolute() else drivers_dir / module
        target = _required_file("driver", path, "driver module")
        try:
            name = f"drivers/{path.relative_to(drivers_dir).as_posix()}"
        except ValueError:
            name = str(path)
        out.append(dataclasses.replace(target, name=name))
    # What the agent service will load is measured before it loads, once (a file also found in a measured
    # directory keeps that directory's portable name).
    seen = {t.path.resolve() for t in out}
    for inst in config.drivers.instances:
        files = []
        if inst.driver.endswith(".wasm") or "/" in inst.driver:
            files.append(("driver", Path(inst.driver), f"driver {inst.name}'s module"))
        if inst.policy is not None:
            files.append(("policies", inst.policy, f"driver {inst.name}'s policy"))
        for component, path, what in files:
            # A missing one is not measured (nothing of it can load: the agent reports that driver alone).
            if path.resolve() not in seen and path.is_file():
                seen.add(path.resolve())
                out.append(_required_file(component, path.resolve(), what))
    if config.controllers.dir.is_dir():
        out += _tree("controller", "controllers", config.controllers.dir)
    for extra in config.measure.extra_paths:
        if extra.is_dir():
            out += [Target("extra", str(p), p) for p in _files_under(extra)]
        else:
            out.append(_required_file("extra", extra, "extra measured path"))
    unique = {t.name: t for t in out}  # a module listed and also present in modules_dir is measured once
    order = {c: i for i, c in enumerate(COMPONENTS)}
    return sorted(unique.values(), key=lambda t: (order[t.component], t.name))


def sha256_file(path: Path) -> str:
    """The file's SHA-256 (hex). Raises MeasureError naming the file when it cannot be read."""
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise MeasureError(f"cannot read {path} to measure it: {e.strerror}") from None
    return h.hexdigest()
