"""`edgeagent dev cluster up|down|env`: a local Kubernetes control plane to develop controllers against."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir", help="Where the cluster keeps its data [default: ~/.local/state/edgeagent/dev-cluster]"
    ),
]


def _dir(directory: Path | None) -> Path:
    from edgeagent.testbed.dev_cluster import default_dir

    return directory or default_dir()


def up(
    directory: DirOption = None,
    no_controller_manager: Annotated[
        bool, typer.Option("--no-controller-manager", help="Only etcd and kube-apiserver")
    ] = False,
    tpm: Annotated[bool, typer.Option("--tpm", help="Also a software TPM (swtpm): EDGEAGENT_TPM")] = False,
    keylime: Annotated[
        bool, typer.Option("--keylime", help="Also Keylime (verifier + registrar) trusting the swtpm's EK CA")
    ] = False,
) -> None:
    """Start etcd, kube-apiserver and kube-controller-manager on loopback (once; again: prints its env).

    Prints the shell lines to use it: eval "$(edgeagent dev cluster up)"."""
    from edgeagent.testbed import dev_cluster

    record = dev_cluster.up(
        _dir(directory), controller_manager=not no_controller_manager, tpm=tpm, keylime=keylime
    )
    typer.echo(f"# Kubernetes {record['version']} at {record['server']} (logs: {record['logs']})", err=True)
    if "keylime" in record:
        kl = record["keylime"]
        typer.echo(f"# Keylime verifier {kl['verifier']}, registrar {kl['registrar']}", err=True)
    _print_env(record)


def _print_env(record: dict[str, Any]) -> None:
    env = record.get("env") or {"KUBECONFIG": record["kubeconfig"]}
    for k, v in dict(env).items():
        typer.echo(f"export {k}={v}")


def down(directory: DirOption = None) -> None:
    """Stop the local cluster."""
    from edgeagent.testbed import dev_cluster

    root = _dir(directory)
    if not dev_cluster.down(root):
        typer.echo(f"no local cluster recorded in {root}", err=True)
        return
    typer.echo(f"stopped the local cluster in {root}", err=True)


def env(directory: DirOption = None) -> None:
    """Print the shell line that points kubectl and edgeagent at the running local cluster."""
    from edgeagent.errors import StateError
    from edgeagent.testbed import dev_cluster

    root = _dir(directory)
    record = dev_cluster.status(root)
    if record is None:
        raise StateError(f"no local cluster runs from {root} (start one: edgeagent dev cluster up)")
    _print_env(record)


def register(app: typer.Typer) -> None:
    dev = typer.Typer(help="Development helpers.", no_args_is_help=True)
    cluster = typer.Typer(
        help="A local Kubernetes control plane (etcd + kube-apiserver + kcm).", no_args_is_help=True
    )
    cluster.command("up")(up)
    cluster.command("down")(down)
    cluster.command("env")(env)
    dev.add_typer(cluster, name="cluster")
    app.add_typer(dev, name="dev")
