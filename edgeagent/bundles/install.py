"""`edgeagent drivers install` / `controllers install`: a bundle from anywhere to a measured, loadable guest.

Order, and why: the signature is checked first (an untrusted bundle is never unpacked into place); then what
the bundle holds is checked as the agent would load it (ABI version, policy or manifest, model), so a broken
bundle is refused now instead of at its first run; then it is copied into a fresh directory beside its final
place and renamed over it (a reader never sees half a bundle); last, its files are measured into the
measurement PCR (23 by default) and the event log, before anything can load them: a bundle that cannot be
measured is removed again, and the previous version, if any, put back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from edgeagent.config import AgentConfig
from edgeagent.errors import BundleError, EdgeAgentError
from edgeagent.measure import measurer, targets
from edgeagent.wasm import bundle

log = logging.getLogger(__name__)

CONTROLLER_ABI_VERSIONS = (1,)


@dataclasses.dataclass
class Installed:
    meta: bundle.BundleMeta
    directory: Path
    signer: str  # key id, "" for an unsigned bundle installed with allow_unsigned
    replaced: bool
    measured: measurer.MeasureResult | None


def keys_dir(config: AgentConfig) -> Path:
    """Where trusted bundle-signing keys live: ``<policies_dir>/trusted-keys/*.pub`` (PEM)."""
    return config.policies_dir / bundle.KEYS_DIR


def destination(config: AgentConfig, meta: bundle.BundleMeta) -> Path:
    root = config.drivers.modules_dir if meta.kind == "driver" else config.controllers.dir
    return root / meta.name


def check_contents(directory: Path, meta: bundle.BundleMeta) -> None:
    """What the agent will load from the bundle loads: raises the loader's own one-line errors."""
    if meta.kind == "driver":
        from edgeagent.drivers import registry
        from edgeagent.drivers.bundled import model_factory
        from edgeagent.drivers.policy import load_policy
        from edgeagent.drivers.runner import SUPPORTED_ABI_VERSIONS

        if meta.name in {d.name for d in registry.all_drivers()}:
            raise BundleError(f"bundle {meta.name}: that name is a bundled driver's; choose another")
        if meta.abi not in SUPPORTED_ABI_VERSIONS:
            speaks = " and ".join(str(v) for v in SUPPORTED_ABI_VERSIONS)
            raise BundleError(
                f"bundle {meta.name}: built for driver ABI {meta.abi}, this agent speaks {speaks}"
            )
        load_policy(directory / meta.policy)
        model_factory(directory, meta)
    else:
        from edgeagent.controllers.manifest import load_manifest

        if meta.abi not in CONTROLLER_ABI_VERSIONS:
            raise BundleError(f"bundle {meta.name}: built for controller ABI {meta.abi}, this agent speaks 1")
        manifest = load_manifest(directory / meta.manifest)
        if manifest.name != meta.name:
            raise BundleError(f"bundle {meta.name}: its manifest names the controller {manifest.name!r}")
        if manifest.module.resolve() != (directory / meta.module).resolve():
            raise BundleError(
                f"bundle {meta.name}: its manifest's module is {manifest.module.name}, "
                f"the bundle's {meta.module}"
            )
    from edgeagent.wasm.cache import check_wasm

    try:
        check_wasm((directory / meta.module).read_bytes(), f"bundle {meta.name}: {meta.module}")
    except OSError as e:
        raise BundleError(f"bundle {meta.name}: cannot read {meta.module}: {e.strerror}") from None


def install(
    source: Path,
    config: AgentConfig,
    *,
    kind: str,
    open_tpm: Callable[[], AbstractContextManager[measurer.PcrTpm]] | None,
    allow_unsigned: bool = False,
) -> Installed:
    """Verifies, checks, installs and measures the bundle at ``source`` (a directory or a .tar.gz).

    ``open_tpm`` is called only once the bundle is verified and in place (a bad bundle is refused without
    touching the TPM); None: not measured (development machines: the agent then refuses to load it, as it
    refuses anything unmeasured). Raises BundleError and the loaders' and measurement's own errors.
    """
    with bundle.opened(source) as directory:
        meta = bundle.load_meta(directory)
        if meta.kind != kind:
            raise BundleError(f"bundle {meta.name} is a {meta.kind} bundle, not a {kind} one")
        if (directory / bundle.SIGNATURE).is_file() or not allow_unsigned:
            signer = bundle.verify(directory, keys_dir(config))
        else:
            signer = ""
            log.warning(
                "bundle %s is not signed; installing it because unsigned bundles were allowed", meta.name
            )
        check_contents(directory, meta)
        dest = destination(config, meta)
        staged = dest.with_name(f".{dest.name}.new-{os.getpid()}")
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staged, ignore_errors=True)
            shutil.copytree(directory, staged)
        except OSError as e:
            shutil.rmtree(staged, ignore_errors=True)
            raise BundleError(f"cannot install into {dest.parent}: {e.strerror}") from None
    replaced = dest.exists()
    try:
        if replaced:
            os.replace(dest, old)
        os.replace(staged, dest)
    except OSError as e:
        shutil.rmtree(staged, ignore_errors=True)
        raise BundleError(f"cannot install into {dest}: {e.strerror}") from None
    result: measurer.MeasureResult | None = None
    if open_tpm is not None:
        try:
            with open_tpm() as tpm:
                result = measurer.measure(config, tpm, only=measured_targets(config, dest, meta))
        except EdgeAgentError:
            shutil.rmtree(dest, ignore_errors=True)  # never left in place unmeasured
            if replaced:
                os.replace(old, dest)
            raise
    if replaced:
        shutil.rmtree(old, ignore_errors=True)
    return Installed(meta, dest, signer, replaced, result)


def measured_targets(config: AgentConfig, dest: Path, meta: bundle.BundleMeta) -> list[targets.Target]:
    """The installed files, named as `edgeagent measure` names them (drivers/NAME/..., controllers/...)."""
    component, prefix = ("driver", "drivers") if meta.kind == "driver" else ("controller", "controllers")
    return [
        targets.Target(component, f"{prefix}/{meta.name}/{p.relative_to(dest).as_posix()}", p)
        for p in sorted(dest.rglob("*"))
        if p.is_file()
    ]
