"""How edgeagent reaches the API server: HTTPS on urllib3, set up from a kubeconfig, the in-cluster account or
explicit files (the device's CA, bootstrap token or client certificate).

The controllers host and the device's enrollment speak JSON and need no typed models, so they do not import
the official kubernetes client for the common configurations: a kubeconfig with a CA (file or data), a client
certificate and key (files or data), a bearer token (inline or ``tokenFile``), and the in-cluster
ServiceAccount. That client's import alone costs a process ~17 MB, about half of the controllers host's fixed
memory. Anything else a kubeconfig can say (``exec`` credential plugins, ``auth-provider``, proxies, basic
auth) is handed to the official client, loaded only then (``ClientTransport``), so no configuration stops
working.

Both transports return urllib3 responses: ``status``, ``data``, ``stream()``, ``release_conn()``.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import urllib3

from edgeagent.errors import ConfigError

IN_CLUSTER = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_SUPPORTED_USER_KEYS = frozenset(
    {"client-certificate", "client-certificate-data", "client-key", "client-key-data", "token", "tokenFile"}
)
_SUPPORTED_CLUSTER_KEYS = frozenset(
    {
        "server",
        "certificate-authority",
        "certificate-authority-data",
        "insecure-skip-tls-verify",
        "tls-server-name",
    }
)


class Transport(Protocol):
    host: str

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float | tuple[float, float],
        stream: bool,
    ) -> Any: ...


class DirectTransport:
    """One urllib3 pool for every controller and watch; the token is re-read when it comes from a file."""

    def __init__(
        self, host: str, ssl_context: ssl.SSLContext | None, token: Callable[[], str | None] | None = None
    ) -> None:
        self.host = host.rstrip("/")
        self._token = token
        # maxsize: the watches' long-lived streams plus the workers' requests without reconnecting.
        self.pool = urllib3.PoolManager(num_pools=2, maxsize=16, ssl_context=ssl_context, retries=False)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float | tuple[float, float],
        stream: bool,
    ) -> Any:
        url = self.host + path + (f"?{urlencode(list(query))}" if query else "")
        hdrs = dict(headers)
        token = self._token() if self._token is not None else None
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        t = urllib3.Timeout(connect=timeout[0], read=timeout[1]) if isinstance(timeout, tuple) else timeout
        return self.pool.request(
            method, url, body=body, headers=hdrs, timeout=t, preload_content=not stream, redirect=False
        )


def direct(
    server: str,
    *,
    ca_file: Path,
    token: str | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> DirectTransport:
    """A transport from explicit files: the CA to trust, and a bearer token or a client certificate and key.

    Raises ConfigError when a file cannot be loaded.
    """
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        if cert_file is not None and key_file is not None:
            ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load TLS material for {server}: {e}") from None
    return DirectTransport(server, ctx, (lambda: token) if token is not None else None)


class ClientTransport:
    """The official client's connection (exec plugins, auth providers, proxies), for what the other lacks."""

    def __init__(self, api_client: Any) -> None:
        self.client = api_client
        self.host = str(api_client.configuration.host).rstrip("/")

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float | tuple[float, float],
        stream: bool,
    ) -> Any:
        # The client's default headers too: Impersonate-User, set there, must reach every request.
        hdrs = {**getattr(self.client, "default_headers", {}), **headers}
        # auth_settings() runs the configuration's refresh hook (exec plugins, expiring tokens).
        for setting in self.client.configuration.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                hdrs[setting["key"]] = setting["value"]
        url = self.host + path + (f"?{urlencode(list(query))}" if query else "")
        t = urllib3.Timeout(connect=timeout[0], read=timeout[1]) if isinstance(timeout, tuple) else timeout
        return self.client.rest_client.pool_manager.request(
            method, url, body=body, headers=hdrs, timeout=t, preload_content=not stream, redirect=False
        )


# ---------------------------------------------------------------------------------------------- kubeconfig
def _named(items: Any, name: str, what: str, path: Path) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            return dict(item.get(what) or {})
    raise ConfigError(f"kubeconfig {path}: no {what} named {name!r}")


def _b64(value: str, what: str, path: Path) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"kubeconfig {path}: {what} is not base64") from None


def _file(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _ssl_context(cluster: dict[str, Any], user: dict[str, Any], path: Path) -> ssl.SSLContext:
    base = path.parent
    ctx = ssl.create_default_context()
    try:
        if cluster.get("certificate-authority-data"):
            ca = _b64(cluster["certificate-authority-data"], "certificate-authority-data", path)
            ctx.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        elif cluster.get("certificate-authority"):
            ctx.load_verify_locations(cafile=str(_file(cluster["certificate-authority"], base)))
        if cluster.get("insecure-skip-tls-verify"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cert, key = user.get("client-certificate-data"), user.get("client-key-data")
        if cert or key or user.get("client-certificate"):
            with tempfile.TemporaryDirectory(prefix="edgeagent-kube-") as tmp:
                # ssl loads a key pair only from files: private ones that exist for this call only.
                cert_file = _file(user["client-certificate"], base) if not cert else Path(tmp, "c.pem")
                key_file = _file(user.get("client-key", ""), base) if not key else Path(tmp, "k.pem")
                for data, dst, what in (
                    (cert, cert_file, "client-certificate-data"),
                    (key, key_file, "client-key-data"),
                ):
                    if data:
                        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                        with os.fdopen(fd, "wb") as f:
                            f.write(_b64(data, what, path))
                ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"kubeconfig {path}: cannot load TLS material: {e}") from None
    return ctx


def from_kubeconfig(path: Path, *, context: str | None = None) -> Transport:
    """A transport for ``path``'s current (or named) context. Raises ConfigError for an unusable file."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"kubeconfig {path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"kubeconfig {path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path}: not a kubeconfig")
    ctx_name = context or doc.get("current-context")
    if not ctx_name:
        raise ConfigError(f"kubeconfig {path}: no current-context")
    ctx = _named(doc.get("contexts"), ctx_name, "context", path)
    cluster = _named(doc.get("clusters"), ctx.get("cluster", ""), "cluster", path)
    user = _named(doc.get("users"), ctx.get("user", ""), "user", path) if ctx.get("user") else {}
    if set(user) - _SUPPORTED_USER_KEYS or set(cluster) - _SUPPORTED_CLUSTER_KEYS:
        return _official(path, context)
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise ConfigError(f"kubeconfig {path}: cluster {ctx.get('cluster')!r} has no server")
    ssl_context = _ssl_context(cluster, user, path) if server.startswith("https:") else None
    if cluster.get("tls-server-name"):
        return _official(path, context)  # SNI override: urllib3 needs it per request; the client handles it
    token: Callable[[], str | None] | None = None
    if user.get("token"):
        value = str(user["token"])
        token = lambda: value  # noqa: E731
    elif user.get("tokenFile"):
        token = _token_file(_file(user["tokenFile"], path.parent))
    return DirectTransport(server, ssl_context, token)


def _token_file(path: Path) -> Callable[[], str | None]:
    """Reads the token at each request: projected ServiceAccount tokens are rotated on disk."""

    def read() -> str | None:
        try:
            return path.read_text().strip()
        except OSError:
            return None

    return read


def in_cluster() -> Transport:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port or not (IN_CLUSTER / "token").is_file():
        raise ConfigError(
            "no usable Kubernetes configuration: no kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a pod"
        )
    ctx = ssl.create_default_context(cafile=str(IN_CLUSTER / "ca.crt"))
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return DirectTransport(server, ctx, _token_file(IN_CLUSTER / "token"))


def _official(path: Path, context: str | None) -> Transport:
    from kubernetes import config as kconfig

    try:
        return ClientTransport(
            kconfig.new_client_from_config(str(path), context=context, persist_config=False)
        )
    except kconfig.ConfigException as e:
        raise ConfigError(f"no usable Kubernetes configuration: {e}") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read Kubernetes configuration: {e}") from None
