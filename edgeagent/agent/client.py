"""A client of the agent's local API (see ``localapi``), for `edgeagent status` and scripts on the device.

Stdlib only, so a program that just wants the latest reading does not import the agent.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from edgeagent.errors import AccessDenied, EdgeAgentError, PeerUnreachable, StateError


class AgentNotRunning(PeerUnreachable):
    """No agent answers on the socket."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.socket_path))
        except BaseException:
            s.close()
            raise
        self.sock = s


class AgentClient:
    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, method: str, route: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The answer's JSON; AgentNotRunning, AccessDenied, or EdgeAgentError with the agent's words."""
        conn = _UnixConnection(self.path, self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, route, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except FileNotFoundError:
            raise AgentNotRunning(f"no agent is running (no socket at {self.path})") from None
        except ConnectionRefusedError:
            raise AgentNotRunning(f"no agent is running (nothing listens on {self.path})") from None
        except PermissionError:
            raise AccessDenied(
                f"not allowed to use {self.path} (join its group, or run as its owner)"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            raise StateError(f"the agent at {self.path} did not answer: {e}") from None
        finally:
            conn.close()
        try:
            answer = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StateError(f"the agent at {self.path} answered {resp.status} with no JSON") from None
        if resp.status == 403:
            raise AccessDenied(str(answer.get("error")))
        if resp.status >= 400:
            raise EdgeAgentError(str(answer.get("error", f"HTTP {resp.status}")))
        return answer

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/v1/status")

    def write(self, driver: str, text: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/drivers/{driver}/write", {"text": text})

    def restart_controller(self, name: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/controllers/{name}/restart", {})

    def reload(self) -> dict[str, Any]:
        return self.request("POST", "/v1/reload", {})
