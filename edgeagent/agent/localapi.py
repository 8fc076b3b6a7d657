"""The agent's local API: HTTP/JSON on a Unix socket, for `edgeagent status` and programs on the device.

Why a Unix socket: who may talk to the agent is decided by file permissions (0660, a group of its own), with
no port to firewall and no credential to hand out. Routes (all answers JSON; errors ``{"error": "..."}``):

    GET  /v1/status                      every phase, as `edgeagent status --json` prints it
    GET  /v1/drivers                     each driver instance's status with its latest reading
    GET  /v1/drivers/NAME                one of them
    POST /v1/drivers/NAME/write          {"text": "..."}: to an output driver, within its policy
    POST /v1/controllers/NAME/restart    a controller again (also one stopped after repeated traps), as
                                         `edgeagent controllers restart NAME`; answers once it is done
    POST /v1/reload                      the same as SIGHUP

Threads: ``local-api`` accepts; each request runs in a short-lived thread of its own. A request is at most
64 KiB and must arrive within 5 s (a stalled client holds one thread, not the agent); malformed requests get
a 4xx answer and the server goes on.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from edgeagent.errors import AccessDenied, EdgeAgentError, StateError

log = logging.getLogger(__name__)

MAX_BODY = 64 << 10
REQUEST_TIMEOUT = 5.0


class Routes:
    """What the API can do, as callables the supervisor provides (kept apart from HTTP for tests)."""

    def __init__(
        self,
        *,
        status: Callable[[], dict[str, Any]],
        write: Callable[[str, str], None],
        restart_controller: Callable[[str], str],
        reload: Callable[[], None],
    ) -> None:
        self.status = status
        self.write = write
        self.restart_controller = restart_controller
        self.reload = reload


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    routes: Routes

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A request that broke its handler is logged (not printed to stderr); the server goes on."""
        log.exception("local API: request failed")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT  # socket timeout for reading the request

    def address_string(self) -> str:  # a Unix socket peer has no address
        return "local"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("local API: " + format, *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """JSON like every other answer, with a status line even for a request that had none (HTTP/0.9)."""
        self.close_connection = True
        phrase = HTTPStatus(code).phrase
        data = json.dumps({"error": message or phrase}).encode()
        self.wfile.write(
            f"HTTP/1.1 {code} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"Connection: close\r\n\r\n".encode() + data
        )

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._answer(code, {"error": message})

    def _body(self) -> dict[str, Any] | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self._error(400, "bad Content-Length")
            return None
        if length < 0 or length > MAX_BODY:
            self._error(413, f"request body over {MAX_BODY} bytes")
            return None
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._error(400, "request body is not JSON")
            return None
        if not isinstance(body, dict):
            self._error(400, "request body must be a JSON object")
            return None
        return body

    def do_GET(self) -> None:
        routes = self.server.routes
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        try:
            if parts == ["v1", "status"]:
                return self._answer(200, routes.status())
            if parts[:2] == ["v1", "drivers"] and len(parts) <= 3:
                drivers = routes.status().get("drivers", [])
                if len(parts) == 2:
                    return self._answer(200, {"drivers": drivers})
                for d in drivers:
                    if d["name"] == parts[2]:
                        return self._answer(200, d)
                return self._error(404, f"no driver instance {parts[2]!r}")
        except Exception as e:  # a status that cannot be assembled is the agent's bug: say so, keep serving
            log.exception("local API: %s", self.path)
            return self._error(500, f"internal error: {type(e).__name__}")
        self._error(404, f"no such resource: {self.path[:200]}")

    def do_POST(self) -> None:
        routes = self.server.routes
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        body = self._body()
        if body is None:
            return
        try:
            if len(parts) == 4 and parts[:2] == ["v1", "drivers"] and parts[3] == "write":
                text = body.get("text")
                if not isinstance(text, str):
                    return self._error(400, 'body must be {"text": "..."}')
                routes.write(parts[2], text)
                return self._answer(200, {"written": len(text)})
            if len(parts) == 4 and parts[:2] == ["v1", "controllers"] and parts[3] == "restart":
                state = routes.restart_controller(parts[2])
                return self._answer(200, {"restarted": parts[2], "state": state})
            if parts == ["v1", "reload"]:
                routes.reload()
                return self._answer(202, {"reload": "requested"})
        except LookupError as e:
            return self._error(404, str(e.args[0]) if e.args else "not found")
        except AccessDenied as e:
            return self._error(403, str(e))
        except EdgeAgentError as e:
            return self._error(409, str(e))
        except Exception as e:
            log.exception("local API: %s", self.path)
            return self._error(500, f"internal error: {type(e).__name__}")
        self._error(404, f"no such resource: {self.path[:200]}")

    def _not_allowed(self) -> None:
        self._error(405, f"method {self.command} not allowed")

    do_PUT = do_DELETE = do_PATCH = _not_allowed


class LocalApi:
    """The server; `start()` binds the socket (0660, group ``group`` when it exists) and serves."""

    def __init__(self, path: Path, routes: Routes, *, group: str = "") -> None:
        self.path = path
        self.routes = routes
        self.group = group
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_socket():
                self._refuse_if_in_use()
                self.path.unlink()
            old = os.umask(0o117)  # the socket is created 0660 (no window where others may connect)
            try:
                server = _Server(str(self.path), _Handler)
            finally:
                os.umask(old)
        except OSError as e:
            raise StateError(f"cannot create the local API socket {self.path}: {e.strerror}") from None
        os.chmod(self.path, 0o660)
        if self.group:
            # Only when needed: under edgeagent.service (Group=edgeagent, the default socket_group) the socket
            # is created with that group already, and the unit's SystemCallFilter=~@privileged refuses chown()
            # (EPERM): an unconditional chown warned at every start under a real systemd.
            try:
                gid = grp.getgrnam(self.group).gr_gid
                if os.stat(self.path).st_gid != gid:
                    os.chown(self.path, -1, gid)
            except KeyError:
                log.info("local API: no group %r here; the socket stays with the agent's group", self.group)
            except OSError as e:
                log.warning("local API: cannot give %s to group %s: %s", self.path, self.group, e.strerror)
        server.routes = self.routes
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="local-api", daemon=True)
        self._thread.start()

    def _refuse_if_in_use(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(1.0)
            s.connect(str(self.path))
        except OSError:
            return  # stale: left by an agent that was killed
        finally:
            s.close()
        raise StateError(f"another agent is serving {self.path}")

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with contextlib.suppress(OSError):
            self.path.unlink()
