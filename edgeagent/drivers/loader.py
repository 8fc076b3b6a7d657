"""Finding a driver's module and policy, and compiling it through the cache.

A driver is named either by a bundled name (``tmp102``) or by a path to a ``.wasm`` file; in the second case
the policy must be given (a module from elsewhere gets nothing by default).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import wasmtime

from edgeagent.config import AgentConfig
from edgeagent.drivers import registry
from edgeagent.drivers.policy import Policy, load_policy
from edgeagent.errors import DriverError, PolicyError
from edgeagent.wasm.cache import ModuleCache, usable_directory
from edgeagent.wasm.engine import Runtime


@dataclasses.dataclass
class DriverSource:
    name: str
    path: Path
    info: registry.DriverInfo | None
    policy: Policy


def is_usb(source: DriverSource) -> bool:
    """A bundled driver says its bus; a module given by path is USB when its policy grants USB and no I2C."""
    if source.info is not None:
        return source.info.bus == "usb"
    return bool(source.policy.usb) and not source.policy.i2c


def cache_for(config: AgentConfig) -> ModuleCache:
    """The compiled-module cache under the state dir (``<state>/cache/wasm``); where that is not writable
    (a non-root user, the default state dir) the user's own cache, else none."""
    return ModuleCache(usable_directory(config.state_path(Path("cache/wasm"))))


def resolve(driver: str, config: AgentConfig, policy_file: Path | None = None) -> DriverSource:
    """Bundled name, installed bundle, bundle path or .wasm path -> module path + policy.

    Raises DriverError / PolicyError (BundleError for a broken bundle).
    """
    from edgeagent.drivers import bundled  # third-party bundles: kept out of the rules below

    found = bundled.lookup(driver, config)
    if found is not None:
        return DriverSource(
            name=found.meta.name,
            path=found.module,
            info=found.info,
            policy=load_policy(policy_file or found.policy),
        )
    looks_like_path = driver.endswith(".wasm") or "/" in driver
    if looks_like_path:
        path = Path(driver)
        if not path.is_file():
            raise DriverError(f"driver module {path} does not exist")
        info = None
        name = path.stem
        if policy_file is None:
            raise PolicyError(
                f"driver {name}: a module given by path needs --policy (nothing is granted by default)"
            )
    else:
        info = registry.get(driver)
        name = info.name
        path = registry.module_path(info, config)
        if policy_file is None:
            policy_file = registry.policy_path(info, config)
            if policy_file is None:
                raise PolicyError(
                    f"driver {name}: no policy found (looked for drivers/{name}.toml in "
                    f"{config.policies_dir} and {registry.POLICY_DIR})"
                )
    return DriverSource(name=name, path=path, info=info, policy=load_policy(policy_file))


def load_module(source: DriverSource, runtime: Runtime, cache: ModuleCache) -> wasmtime.Module:
    return cache.load_file(runtime, source.path, name=f"driver {source.name}")
