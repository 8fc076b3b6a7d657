"""The host's one connection to the API server: raw JSON requests and watch streams.

Controllers speak JSON, so the host needs no typed model layer: requests go through a ``transport.Transport``
(urllib3; the official client's connection only for kubeconfigs that need it), one pool serving every
controller and every watch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3

from edgeagent.controllers import transport
from edgeagent.controllers.manifest import VERBS, ApiRequestScope
from edgeagent.controllers.transport import Transport
from edgeagent.errors import ClusterError, ConfigError, PeerUnreachable

log = logging.getLogger(__name__)

# (HTTP method, content type) per verb; patch types follow the API server's names.
PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
# (connect, read) seconds for a controller's request; well inside the host's default 10 s call limit.
GUEST_REQUEST_TIMEOUT = (3.0, 5.0)
_METHODS = {
    "get": "GET",
    "list": "GET",
    "create": "POST",
    "update": "PUT",
    "patch": "PATCH",
    "delete": "DELETE",
    "deletecollection": "DELETE",
}


def connect(kubeconfig: Path | None = None, *, context: str | None = None) -> Transport:
    """A transport from ``kubeconfig`` (else $KUBECONFIG / ~/.kube/config, else the in-cluster account).

    Raises ConfigError when no usable configuration is found.
    """
    if kubeconfig is not None:
        if not kubeconfig.is_file():
            raise ConfigError(f"kubeconfig {kubeconfig} does not exist")
        return transport.from_kubeconfig(kubeconfig, context=context)
    default = Path(os.environ.get("KUBECONFIG", "~/.kube/config")).expanduser()
    if default.is_file():
        return transport.from_kubeconfig(default, context=context)
    return transport.in_cluster()


def resource_path(
    group: str, version: str, resource: str, *, namespace: str = "", name: str = "", subresource: str = ""
) -> str:
    """The REST path of a collection or object: /api/v1/... for the core group, /apis/G/V/... otherwise."""
    parts = ["/api", version] if group == "" else ["/apis", group, version]
    if namespace:
        parts += ["namespaces", quote(namespace, safe="")]
    parts.append(resource)
    if name:
        parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
    return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class ApiRequest:
    """A request a controller asked for, decoded from its JSON (the ``request`` record of controller.wit)."""

    verb: str
    group: str
    version: str
    resource: str
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    body: Any = None
    patch_type: str = "merge"
    query: tuple[tuple[str, str], ...] = ()

    @property
    def scope(self) -> ApiRequestScope:
        res = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        return ApiRequestScope(self.verb, self.group, res, self.namespace, self.name)

    @property
    def path(self) -> str:
        return resource_path(
            self.group,
            self.version,
            self.resource,
            namespace=self.namespace,
            name=self.name,
            subresource=self.subresource,
        )

    def describe(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        what = self.scope.resource + (f".{self.group}" if self.group else "")
        return f"{self.verb} {what}{'/' + self.name if self.name else ''}{where}"

    @classmethod
    def from_json(cls, raw: bytes) -> ApiRequest:
        """Raises ValueError naming what is wrong with the controller's request."""
        try:
            d = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"request is not JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError("request must be a JSON object")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown request field {sorted(unknown)[0]!r}")
        strs = {}
        for key in ("verb", "group", "version", "resource", "namespace", "name", "subresource", "patch_type"):
            v = d.get(key, "")
            if not isinstance(v, str):
                raise ValueError(f"request field {key} must be a string")
            strs[key] = v
        if strs["verb"] not in VERBS:
            raise ValueError(f"unknown verb {strs['verb']!r}")
        for key in ("version", "resource"):
            if not strs[key]:
                raise ValueError(f"request field {key} is required")
        if strs["verb"] in ("get", "update", "patch", "delete") and not strs["name"]:
            raise ValueError(f"verb {strs['verb']} needs a name")
        if strs["verb"] in ("create", "update", "patch") and d.get("body") is None:
            raise ValueError(f"verb {strs['verb']} needs a body")
        if not strs["patch_type"]:
            strs["patch_type"] = "merge"
        if strs["patch_type"] not in PATCH_TYPES:
            raise ValueError(f"unknown patch_type {strs['patch_type']!r}")
        query = d.get("query") or {}
        if not isinstance(query, dict) or not all(isinstance(v, str) for v in query.values()):
            raise ValueError("request field query must map names to strings")
        return cls(**strs, body=d.get("body"), query=tuple(sorted(query.items())))


@dataclasses.dataclass(frozen=True)
class ApiResponse:
    status: int
    body: bytes


class KubeApi:
    """Raw JSON requests and watch streams over one transport."""

    def __init__(self, transport: Transport, *, timeout: float = 30.0) -> None:
        self.transport = transport
        self.timeout = timeout

    @property
    def host(self) -> str:
        return self.transport.host

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        timeout: float | tuple[float, float] | None = None,
        stream: bool = False,
    ) -> Any:
        """Sends one request; returns the urllib3 response (``status`` + ``data``, or a stream to read).

        Raises PeerUnreachable when the API server cannot be reached or stops answering mid-request.
        """
        header_params = {"Accept": "application/json", **(headers or {})}
        data = None
        if body is not None:
            header_params["Content-Type"] = content_type
            data = json.dumps(body, separators=(",", ":")).encode()
        try:
            return self.transport.request(
                method,
                path,
                query=query,
                headers=header_params,
                body=data,
                timeout=timeout or self.timeout,
                stream=stream,
            )
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise PeerUnreachable(f"API server {self.host}: {type(e).__name__}: {e}") from None

    def send(
        self,
        req: ApiRequest,
        *,
        impersonate: str | None = None,
        timeout: tuple[float, float] = GUEST_REQUEST_TIMEOUT,
    ) -> ApiResponse:
        """Performs a controller's request (already checked against its grants).

        The timeout is short: a controller waits in this call, and an API server that hangs must cost it an
        ``unavailable`` answer well within its call limit, not a stop for running past it.
        """
        headers = {"Impersonate-User": impersonate} if impersonate else None
        content_type = PATCH_TYPES[req.patch_type] if req.verb == "patch" else "application/json"
        resp = self.call(
            _METHODS[req.verb],
            req.path,
            query=req.query,
            body=req.body,
            content_type=content_type,
            headers=headers,
            timeout=timeout,
        )
        return ApiResponse(int(resp.status), bytes(resp.data or b""))

    def get_json(self, path: str, *, query: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        """GET returning the decoded object; ClusterError with the API server's message on a non-2xx."""
        resp = self.call("GET", path, query=query)
        if not 200 <= resp.status <= 299:
            raise ClusterError(f"GET {path}: {resp.status} {status_message(resp.data)}")
        return json.loads(resp.data)

    def watch_lines(
        self, path: str, *, query: Sequence[tuple[str, str]], read_timeout: float
    ) -> tuple[Any, Iterator[bytes]]:
        """Opens a watch; returns (response, iterator of JSON lines). Close the response to end it early.

        Raises ClusterError for a refused watch (status in ``.status``), PeerUnreachable if unreachable.
        """
        raw = self.call("GET", path, query=query, timeout=(10.0, read_timeout), stream=True)
        if not 200 <= raw.status <= 299:
            err = ClusterError(f"watch {path}: {raw.status} {status_message(raw.data)}")
            err.status = raw.status  # type: ignore[attr-defined]
            raw.release_conn()
            raise err

        def lines() -> Iterator[bytes]:
            buf = b""
            try:
                for chunk in raw.stream(65536, decode_content=True):
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            yield line
            except (urllib3.exceptions.HTTPError, OSError, AttributeError, ValueError) as e:
                # AttributeError/ValueError: urllib3 raises these when the stream is closed under it.
                raise PeerUnreachable(f"watch {path}: {type(e).__name__}: {e}") from None
            if buf.strip():
                yield buf

        return raw, lines()


def status_message(body: bytes | None) -> str:
    """The ``message`` of a Kubernetes Status body, or the body's start."""
    if not body:
        return ""
    try:
        d = json.loads(body)
        if isinstance(d, dict) and "message" in d:
            return str(d["message"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    return body[:200].decode("utf-8", "replace")
