"""The join endpoint devices in push mode fetch their join material from: `GET /v1/push/{agent_id}/join`.

Nothing here authenticates the device, on purpose: a device behind NAT has no credential yet, and the
material is sealed to its TPM (TPM2_MakeCredential to its registered EK for its registered AK's name), so
whoever fetches it learns nothing a TPM other than the device's can open. The controller answers:

    200 {"state": "attested", "credential", "nonce", "ciphertext"}  only while the verifier passes it now
    403 {"state": "revoked", "revocation": {msg, signature}}         signed with the controller's answer key
                                                                    (`signingkey`, kept in a Secret), whose
                                                                    certificate the device got in its join
                                                                    material
    404 {"state": "pending" | "unknown"}                            not attested yet, or not pinned here
    503 {"state": "follower"}                                       this replica does not lead

Threads: the accept loop (``push-join``) and one thread per connection (``ThreadingHTTPServer``); each calls
``answer(agent_id)``, which the controller serialises per node.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

_PATH = re.compile(r"^/v1/push/([A-Za-z0-9_.\-]{1,255})/join$")

Answer = tuple[int, dict[str, Any]]


class _Handler(BaseHTTPRequestHandler):
    server: JoinServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("join %s " + format, self.client_address[0], *args)

    def do_GET(self) -> None:
        m = _PATH.match(self.path.split("?")[0])
        if m is None:
            self._reply(404, {"state": "unknown", "detail": "GET /v1/push/{agent_id}/join"})
            return
        try:
            code, body = self.server.answer(m.group(1))
        except Exception as e:  # the controller's view of Keylime or the API server is unavailable
            log.warning("join answer for %s failed: %s", m.group(1), e)
            code, body = 503, {"state": "unavailable", "detail": str(e)[:200]}
        self._reply(code, body)

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class JoinServer(ThreadingHTTPServer):
    daemon_threads = True
    timeout_seconds = 10.0

    def __init__(self, answer: Callable[[str], Answer], host: str, port: int,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__((host, port), _Handler)
        self.answer = answer
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True,
                                                  do_handshake_on_connect=False)
        self._thread: threading.Thread | None = None

    def get_request(self) -> tuple[Any, Any]:
        conn, addr = super().get_request()
        conn.settimeout(self.timeout_seconds)
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.info("join connection from %s failed", client_address[0])

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> JoinServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="push-join", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
