"""The endpoint Keylime's webhook revocation notifier POSTs to.

The verifier signs each notification with the revocation key the controller gave it when it added the agent
(one RSA key per enrollment; the public half is kept in the EdgeNode status). A notification is acted on only
when it names a known agent and its signature verifies with that agent's key; anything else gets a 4xx and
changes nothing, so a forged POST cannot revoke a node. Keylime retries until it gets 200/202, which is why a
replica that is not the leader answers 503: the notification is not lost, and polling covers it anyway.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edgeagent.errors import ConfigError, ProtocolError, SignatureError
from edgeagent.protocol import keylime as protocol

log = logging.getLogger(__name__)
MAX_BODY = 256 * 1024


class Outcome:
    """What the receiver did with a notification, as an HTTP status and a one-line reason."""

    def __init__(self, code: int, message: str) -> None:
        self.code, self.message = code, message


class RevocationReceiver:
    """Validates notifications and hands accepted ones to ``on_revocation(agent_id, msg)``.

    ``revocation_key(agent_id)`` returns the agent's revocation public key, or None for an unknown agent.
    ``active()`` says whether this replica may act (the leader).
    """

    def __init__(
        self,
        *,
        revocation_key: Callable[[str], rsa.RSAPublicKey | None],
        on_revocation: Callable[[str, dict[str, Any]], None],
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        self.revocation_key = revocation_key
        self.on_revocation = on_revocation
        self.active = active

    def handle(self, body: bytes) -> Outcome:
        if not self.active():
            return Outcome(503, "not the leader")
        try:
            obj = protocol.load_json_object(body, what="revocation")
            msg = obj.get("msg")
            if not isinstance(msg, str):
                raise ProtocolError("revocation 'msg' is missing or not a string")
            agent_id = protocol.load_json_object(msg, what="revocation msg").get("agent_id")
            if not isinstance(agent_id, str):
                raise ProtocolError("revocation msg names no agent_id")
        except ProtocolError as e:
            return Outcome(400, str(e))
        key = self.revocation_key(agent_id)
        if key is None:
            return Outcome(404, f"agent {agent_id} is not managed here")
        try:
            revocation = protocol.verify_revocation(obj, key)
        except (SignatureError, ProtocolError) as e:
            return Outcome(403, str(e))
        self.on_revocation(agent_id, revocation.msg)
        return Outcome(200, f"revocation of {agent_id} applied")


def server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """TLS for the webhook; with ``client_ca`` (the Keylime CA) only the verifier's client cert gets in."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            ctx.load_verify_locations(cafile=str(client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot set up the webhook's TLS ({cert}, {key}): {e}") from None
    return ctx


def load_public_key(pem: str) -> rsa.RSAPublicKey | None:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError:
        return None
    return key if isinstance(key, rsa.RSAPublicKey) else None


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("webhook %s " + format, self.client_address[0], *args)

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self._reply(Outcome(400, "a JSON body of 1 byte to 256 KiB is required"))
            return
        self._reply(self.server.receiver.handle(self.rfile.read(length)))

    def _reply(self, outcome: Outcome) -> None:
        data = json.dumps({"code": outcome.code, "status": outcome.message}).encode()
        self.send_response(outcome.code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class WebhookServer(ThreadingHTTPServer):
    """The HTTP(S) listener. Keylime 7.14's notifier always speaks HTTPS (it rewrites http:// URLs), with
    its verifier client certificate, and checks the server against its `trusted_server_ca`: pass a
    ``ssl_context`` from `server_context`. The TLS handshake runs in the connection's own thread with a
    timeout, so a stalled client never blocks the accept loop."""

    daemon_threads = True
    timeout_seconds = 10.0

    def __init__(
        self, receiver: RevocationReceiver, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        super().__init__((host, port), _Handler)
        self.receiver = receiver
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread: threading.Thread | None = None

    def get_request(self) -> tuple[Any, Any]:
        conn, addr = super().get_request()
        conn.settimeout(self.timeout_seconds)
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.info("webhook connection from %s failed", client_address[0])

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> WebhookServer:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="revocation-webhook", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
