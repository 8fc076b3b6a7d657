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

import logging
from collections.abc import Callable

from edgeagent.controllers.kubeapi import ApiRequest, KubeApi
from edgeagent.controllers.manifest import Manifest
from edgeagent.errors import PeerUnreachable
from edgeagent.wasm.host import I32, HostModule, hostfunc

log = logging.getLogger("edgeagent.controllers.k8s")

ERR_DENIED = -1
ERR_INVALID = -2
ERR_UNAVAILABLE = -3
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
            resp = self.api.send(req, impersonate=self.manifest.impersonate_user)
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
