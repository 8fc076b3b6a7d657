"""Raw JSON requests and watch streams to the API server, over one ``transport.Transport``.

Neither the controllers host (controllers speak JSON) nor the device's enrollment (two CSR requests) needs the
official client's typed models, and importing it costs a process ~17 MB: requests go through urllib3 (the
official client's connection only for kubeconfigs that need it), one pool serving every request and watch.
Answers are urllib3 responses; ``json()`` turns a refusal into the errors of ``kube.errors``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3

from edgeagent.errors import ConfigError
from edgeagent.kube import errors, transport
from edgeagent.kube.errors import status_message
from edgeagent.kube.transport import Transport

__all__ = ["KubeApi", "connect", "resource_path", "status_message"]

log = logging.getLogger(__name__)


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
            raise errors.Unavailable(f"API server {self.host}: {type(e).__name__}: {e}") from e

    def request_json(
        self,
        method: str,
        path: str,
        *,
        what: str = "",
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        timeout: float | tuple[float, float] | None = None,
    ) -> dict[str, Any]:
        """One request returning the decoded answer; a non-2xx is raised as ``errors.for_status``.

        ``what`` names the request in the error ("create CSR x"); by default the method and path.
        """
        resp = self.call(method, path, query=query, body=body, timeout=timeout)
        if not 200 <= resp.status <= 299:
            raise errors.for_status(resp.status, what or f"{method} {path}", resp.data)
        try:
            out = json.loads(resp.data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise errors.ApiError(
                f"cannot {what or f'{method} {path}'}: the answer is not JSON", status=resp.status
            ) from e
        if not isinstance(out, dict):
            raise errors.ApiError(
                f"cannot {what or f'{method} {path}'}: not a JSON object", status=resp.status
            )
        return out

    def get_json(self, path: str, *, query: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        """GET returning the decoded object; the API server's refusal as ``errors.for_status``."""
        return self.request_json("GET", path, query=query, what=f"GET {path}")

    def watch_lines(
        self, path: str, *, query: Sequence[tuple[str, str]], read_timeout: float
    ) -> tuple[Any, Iterator[bytes]]:
        """Opens a watch; returns (response, iterator of JSON lines). Close the response to end it early.

        Raises ``errors.for_status`` for a refused watch (``errors.Gone`` for 410), ``errors.Unavailable`` if
        unreachable.
        """
        raw = self.call("GET", path, query=query, timeout=(10.0, read_timeout), stream=True)
        if not 200 <= raw.status <= 299:
            err = errors.for_status(raw.status, f"watch {path}", raw.data)
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
                raise errors.Unavailable(f"watch {path}: {type(e).__name__}: {e}") from e
            if buf.strip():
                yield buf

        return raw, lines()
