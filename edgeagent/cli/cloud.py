"""`edgeagent attestation-controller`: run the cluster side of attested enrollment."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgeagent.errors import ConfigError

if TYPE_CHECKING:
    from kubernetes import client as k8s

MAX_LIFETIME = 86400


def load_api(kubeconfig: Path | None) -> k8s.ApiClient:
    """The official client from a kubeconfig, or in-cluster (service account) when none is given."""
    # Imported here: every other `edgeagent` command would otherwise pay for the Kubernetes client.
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config
    from kubernetes.config.config_exception import ConfigException

    try:
        if kubeconfig is not None:
            return k8s_config.new_client_from_config(config_file=str(kubeconfig))
        cfg = k8s.Configuration()
        k8s_config.load_incluster_config(client_configuration=cfg)
        return k8s.ApiClient(cfg)
    except (ConfigException, OSError, ValueError, TypeError) as e:
        where = kubeconfig or "the in-cluster service account"
        raise ConfigError(f"cannot load Kubernetes credentials from {where}: {e}") from None


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise typer.BadParameter(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None


def register(app: typer.Typer) -> None:
    @app.command("attestation-controller")
    def attestation_controller(
        registrar_url: Annotated[
            str, typer.Option(help="Keylime registrar TLS URL, e.g. https://registrar:8891")
        ],
        verifier_url: Annotated[
            list[str],
            typer.Option(metavar="URL",
                         help="Keylime verifier URL, e.g. https://verifier:8881; repeat it for several "
                         "verifiers sharing the registrar and CA (new devices go to the least loaded)"),
        ],
        keylime_ca_dir: Annotated[
            Path, typer.Option(help="Keylime CA dir: cacert.crt, client-cert.crt, client-private.pem")
        ],
        ek_ca_store: Annotated[Path, typer.Option(help="Vendor EK CA certificates (file or directory)")],
        kubeconfig: Annotated[Path | None, typer.Option(help="Kubeconfig [default: in-cluster]")] = None,
        api_server_url: Annotated[
            str | None, typer.Option(help="API server URL devices use [default: the kubeconfig's]")
        ] = None,
        api_server_ca: Annotated[
            Path | None, typer.Option(help="CA of that API server (PEM) [default: the kubeconfig's]")
        ] = None,
        webhook_listen: Annotated[str, typer.Option(help="Revocation webhook HOST:PORT")] = "0.0.0.0:8443",
        webhook_cert: Annotated[
            Path | None,
            typer.Option(help="Webhook TLS certificate (trusted by the verifier's trusted_server_ca)"),
        ] = None,
        webhook_key: Annotated[Path | None, typer.Option(help="Webhook TLS key")] = None,
        join_listen: Annotated[
            str | None,
            typer.Option(help="Join endpoint HOST:PORT for push-mode devices (TLS with the webhook's "
                         "certificate when given) [default: not served]"),
        ] = None,
        credential_lifetime: Annotated[
            int, typer.Option(min=600, max=MAX_LIFETIME, help="Longest node certificate, seconds")
        ] = MAX_LIFETIME,
        require_ek_cert: Annotated[bool, typer.Option(help="Refuse TPMs without an EK certificate")] = True,
        poll_interval: Annotated[
            float | None, typer.Option(min=0.1, help="Verifier polling, seconds [default: 1.0, Settings']")
        ] = None,
        lease_namespace: Annotated[str, typer.Option(
            help="Namespace of the leader Lease and of the join signing-key Secret")] = "kube-system",
        identity: Annotated[str | None, typer.Option(help="Leader identity [default: hostname]")] = None,
        install_crd: Annotated[bool, typer.Option(help="Create/update the EdgeNode CRD at start")] = False,
        resync_interval: Annotated[
            float,
            typer.Option(
                min=0.0,
                help="Relist EdgeNodes and CSRs every this many seconds (one LIST each; 0: never, the "
                "watches resume from their resourceVersion and relist only when it expired)",
            ),
        ] = 0.0,
    ) -> None:
        """Attest edge devices with Keylime and issue/withdraw their node credentials (runs until stopped)."""
        from edgeagent.cloud import selfcheck
        from edgeagent.cloud.controller import Controller, Settings

        host, port = parse_listen(webhook_listen)
        join_host, join_port = parse_listen(join_listen) if join_listen else ("0.0.0.0", None)
        api = load_api(kubeconfig)
        ca_path = api_server_ca or (
            Path(api.configuration.ssl_ca_cert) if api.configuration.ssl_ca_cert else None
        )
        if ca_path is None:
            raise ConfigError("no API server CA: pass --api-server-ca")
        if (webhook_cert is None) != (webhook_key is None):
            raise ConfigError("--webhook-cert and --webhook-key go together")
        for path, what in ((keylime_ca_dir, "Keylime CA dir"), (ek_ca_store, "EK CA store")):
            if not path.exists():
                raise ConfigError(f"{what} {path} does not exist")
        settings = Settings(
            registrar_url=registrar_url,
            verifier_url=verifier_url[0],
            more_verifiers=tuple(verifier_url[1:]),
            keylime_ca_dir=keylime_ca_dir,
            ek_ca_store=ek_ca_store,
            api_server_url=api_server_url or api.configuration.host,
            api_server_ca_pem=_read(ca_path, "API server CA"),
            require_ek_cert=require_ek_cert,
            credential_lifetime=credential_lifetime,
            lease_namespace=lease_namespace,
            identity=identity or socket.gethostname(),
            webhook_host=host,
            webhook_port=port,
            webhook_cert=webhook_cert,
            webhook_key=webhook_key,
            webhook_client_ca=keylime_ca_dir / "cacert.crt" if webhook_cert else None,
            install_crd=install_crd,
            resync_interval=resync_interval,
            join_host=join_host,
            join_port=join_port,
            self_ref=selfcheck.SelfRef.from_env(),  # its Pod, when the chart passes the downward API
        )
        if poll_interval is not None:  # the default lives in Settings, once
            settings = dataclasses.replace(settings, poll_interval=poll_interval)
        controller = Controller(api, settings)
        signal.signal(signal.SIGTERM, lambda *_: controller.stop_event.set())
        with contextlib.suppress(KeyboardInterrupt):
            controller.run_forever()
