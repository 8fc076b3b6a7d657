"""`edgeagent bundle keygen|pack|sign|verify` and the `install` commands of `drivers` and `controllers`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeagent.cli.context import state


def keygen(
    key: Annotated[Path, typer.Argument(help="Private key to create (PEM); KEY.pub: its public key")],
) -> None:
    """Create an Ed25519 signing key for bundles; trust it on a device by copying KEY.pub to
    <policies>/trusted-keys/."""
    from edgeagent.wasm import bundle

    pub, kid = bundle.generate_key(key)
    print(f"key {kid}: private {key}, public {pub}")


def pack(
    source: Annotated[Path, typer.Argument(help="Folder with a bundle.toml (your driver or controller)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle to write: a directory, or NAME.tar.gz")],
    key: Annotated[Path | None, typer.Option("--key", help="Sign it with this private key")] = None,
) -> None:
    """Collect the files bundle.toml names into a bundle (signed with --key)."""
    from edgeagent.wasm import bundle

    meta = bundle.pack(source, out, private_key=key)
    signed = f", signed with {key}" if key else ", unsigned"
    print(f"{meta.kind} bundle {meta.name} {meta.version} -> {out}{signed}")


def sign(
    directory: Annotated[Path, typer.Argument(help="Bundle directory")],
    key: Annotated[Path, typer.Option("--key", help="Private key (edgeagent bundle keygen)")],
) -> None:
    """Sign a bundle directory (writes bundle.sig over every file in it)."""
    from edgeagent.wasm import bundle

    kid = bundle.sign(directory, key)
    print(f"signed {directory} with key {kid}")


def verify(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Bundle directory or .tar.gz")],
) -> None:
    """Check a bundle's signature against the trusted keys (<policies>/trusted-keys)."""
    from edgeagent.bundles.install import keys_dir
    from edgeagent.wasm import bundle

    cfg = state(ctx).config
    with bundle.opened(path) as d:
        meta = bundle.load_meta(d)
        kid = bundle.verify(d, keys_dir(cfg))
    print(f"{meta.kind} bundle {meta.name}: signed by trusted key {kid}")


def _install(ctx: typer.Context, path: Path, kind: str, allow_unsigned: bool, no_measure: bool) -> None:
    from edgeagent.bundles.install import install

    cfg = state(ctx).config
    if no_measure:
        res = install(path, cfg, kind=kind, open_tpm=None, allow_unsigned=allow_unsigned)
    else:
        from edgeagent.measure import measurer
        from edgeagent.tpm import Tpm

        measurer.check_pcr(cfg.measure.pcr)
        res = install(
            path, cfg, kind=kind, open_tpm=lambda: Tpm.open(cfg.tpm_tcti), allow_unsigned=allow_unsigned
        )
    who = f"signed by {res.signer}" if res.signer else "UNSIGNED"
    line = f"installed {kind} {res.meta.name} {res.meta.version} ({who}) in {res.directory}"
    if res.replaced:
        line += " (replacing the previous version)"
    if res.measured is not None:
        values = ", ".join(f"{b}:{v.hex()[:16]}…" for b, v in res.measured.pcr_values.items())
        line += f"; measured {res.measured.measured} file(s) into PCR {res.measured.pcr} ({values})"
    else:
        line += "; NOT measured (--no-measure): the agent refuses it until `edgeagent measure` runs"
    print(line)


AllowUnsigned = Annotated[
    bool,
    typer.Option(
        "--allow-unsigned", help="Install a bundle without a signature (a signed one is still verified)"
    ),
]
NoMeasure = Annotated[
    bool, typer.Option("--no-measure", help="Do not measure into the TPM now (development machines)")
]


def install_driver(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Driver bundle: a directory or a .tar.gz")],
    allow_unsigned: AllowUnsigned = False,
    no_measure: NoMeasure = False,
) -> None:
    """Verify a driver bundle's signature, install it into drivers.modules_dir and measure it (PCR 23)."""
    _install(ctx, path, "driver", allow_unsigned, no_measure)


def install_controller(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Controller bundle: a directory or a .tar.gz")],
    allow_unsigned: AllowUnsigned = False,
    no_measure: NoMeasure = False,
) -> None:
    """Verify a controller bundle's signature, install it into controllers.dir and measure it (PCR 23)."""
    _install(ctx, path, "controller", allow_unsigned, no_measure)


def sdk_include(
    kind: Annotated[str, typer.Argument(help="driver or controller", metavar="driver|controller")],
) -> None:
    """Print the directory of the guest SDK's C header (for -I in an out-of-tree Makefile)."""
    from edgeagent.errors import ConfigError
    from edgeagent.wasm.sdk import include_dir

    if kind not in ("driver", "controller"):
        raise ConfigError(f"sdk include: expected driver or controller, got {kind!r}")
    print(include_dir(kind))


def register(app: typer.Typer) -> None:
    sdk = typer.Typer(help="The guest SDK: where its C headers are.", no_args_is_help=True)
    sdk.command("include")(sdk_include)
    app.add_typer(sdk, name="sdk")
    group = typer.Typer(help="Signed guest bundles: make a key, pack, sign, verify.", no_args_is_help=True)
    group.command("keygen")(keygen)
    group.command("pack")(pack)
    group.command("sign")(sign)
    group.command("verify")(verify)
    app.add_typer(group, name="bundle")
