"""``edgeagent:controller/k8s``: Kubernetes API requests, checked against the controller's grants first.

Core lowering of ``request: func(request: string) -> result<response, error-code>`` (see controller.wit):

- ``request(ptr, len) -> i32``: the request JSON; returns the HTTP status (>= 100) of the answer, or a
  negative error code: ``ERR_DENIED`` (outside the manifest's grants: the request never left the host),
  ``ERR_INVALID`` (not a request the host understands), ``ERR_UNAVAILABLE`` (the API server is unreachable).
- ``response-len() -> i32``: length of the last answer's body (a Kubernetes object or Status as JSON).
- ``response-read(ptr, cap) -> i32``: copies up to ``cap`` bytes of it; returns the full length.

A denied request is also a log line naming the controller and what it asked for, so an operator sees a grant
missing without reading guest code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

from edgeagent.controllers.manifest import VERBS, ApiRequestScope, Manifest
from edgeagent.errors import PeerUnreachable
from edgeagent.kube.api import KubeApi, resource_path
from edgeagent.wasm.host import I32, HostModule, hostfunc

log = logging.getLogger("edgeagent.controllers.k8s")

ERR_DENIED = -1
ERR_INVALID = -2
ERR_UNAVAILABLE = -3
# Content type per patch type; the names are the API server's.
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


def send(
    api: KubeApi,
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
    resp = api.call(
        _METHODS[req.verb],
        req.path,
        query=req.query,
        body=req.body,
        content_type=content_type,
        headers=headers,
        timeout=timeout,
    )
    return ApiResponse(int(resp.status), bytes(resp.data or b""))


MAX_REQUEST = 4 << 20


class K8sHost(HostModule):
    interface = "edgeagent:controller/k8s"

    def __init__(
        self,
        manifest: Manifest,
        api: KubeApi | None,
        *,
        on_denied: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.manifest = manifest
        self.api = api
        self.on_denied = on_denied
        self._body = b""

    @hostfunc("request", params=(I32, I32), results=(I32,), blocking=True)
    def request(self, ptr: int, length: int) -> int:
        self._body = b""
        name = self.manifest.name
        if length > MAX_REQUEST:
            log.warning("controller %s: request of %d bytes refused (limit %d)", name, length, MAX_REQUEST)
            return ERR_INVALID
        raw = self.memory.read(ptr, length)
        try:
            req = ApiRequest.from_json(raw)
        except ValueError as e:
            log.warning("controller %s: invalid API request: %s", name, e)
            return ERR_INVALID
        if not self.manifest.allows(req.scope):
            what = req.describe()
            log.warning("controller %s: denied: %s (not in its grants)", name, what)
            if self.on_denied is not None:
                self.on_denied(what)
            return ERR_DENIED
        if self.api is None:
            return ERR_UNAVAILABLE
        try:
            resp = send(self.api, req, impersonate=self.manifest.impersonate_user)
        except PeerUnreachable as e:
            log.warning("controller %s: %s: %s", name, req.describe(), e)
            return ERR_UNAVAILABLE
        self._body = resp.body
        log.debug("controller %s: %s -> HTTP %d", name, req.describe(), resp.status)
        if resp.status >= 400:
            log.info("controller %s: %s: HTTP %d", name, req.describe(), resp.status)
        return resp.status

    @hostfunc("response-len", results=(I32,))
    def response_len(self) -> int:
        return len(self._body)

    @hostfunc("response-read", params=(I32, I32), results=(I32,))
    def response_read(self, ptr: int, cap: int) -> int:
        n = min(cap, len(self._body))
        if n:
            self.memory.write(ptr, self._body[:n])
        return len(self._body)
