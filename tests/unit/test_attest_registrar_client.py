"""RegistrarClient's transport rules against a scripted loopback HTTP server (the real registrar is in
tests/integration/test_attest_registrar.py): what is retried, what is final, what is malformed."""

from __future__ import annotations

import base64
import json
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgeagent.attest.registrar import RegistrarClient, RetryPolicy
from edgeagent.errors import PeerUnreachable, ProtocolError, RegistrationError
from edgeagent.protocol import keylime as protocol

AGENT = "edge-1"
BLOB = struct.pack(">IIH", 0xBADCC0DE, 1, 4) + b"idob" + struct.pack(">H", 3) + b"sec"
VERSION = (200, {"code": 200, "status": "Success",
                 "results": {"current_version": "2.6", "supported_versions": ["2.0", "2.1", "2.2", "2.6"]}})


class Script:
    """Answers requests in order from a list of (status, body); records what was asked."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, object]] = []
        self.seen: list[tuple[str, str, object]] = []


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n)) if n else None
            script.seen.append((self.command, self.path, body))
            status, payload = script.answers.pop(0)
            raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PUT = _answer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()


def _request() -> protocol.RegistrationRequest:
    return protocol.RegistrationRequest(b"ek", b"ak", None, None, "127.0.0.1", 9002)


def test_register_activate_wire(server) -> None:
    url, script = server
    blob = {"blob": base64.b64encode(BLOB).decode()}
    script.answers = [VERSION,
                      (200, {"code": 200, "status": "Success", "results": blob}),
                      (200, {"code": 200, "status": "Success", "results": {}})]
    secrets: list[bytes] = []

    def activate_credential(blob: bytes) -> bytes:
        secrets.append(blob)
        return b"S" * 32

    RegistrarClient(url).register_and_activate(AGENT, _request(), activate_credential)
    assert secrets == [BLOB]
    (m1, p1, _), (m2, p2, body2), (m3, p3, body3) = script.seen
    assert (m1, p1) == ("GET", "/version")
    assert (m2, p2) == ("POST", f"/v2.2/agents/{AGENT}")
    assert body2 == _request().to_json()
    assert (m3, p3) == ("PUT", f"/v2.2/agents/{AGENT}/activate")
    assert body3 == {"auth_tag": protocol.auth_tag(b"S" * 32, AGENT)}


def test_5xx_is_retried_then_succeeds(server) -> None:
    url, script = server
    script.answers = [(503, b"busy"), (500, {"code": 500, "status": "oops", "results": {}}), VERSION]
    waits: list[float] = []
    client = RegistrarClient(url, sleep=waits.append, retry=RetryPolicy(attempts=3, initial_delay=0.01))
    assert client.api_version() == "2.2"
    assert waits == [0.01, 0.02]
    assert client.attempts_made == 3


def test_5xx_forever_is_unreachable(server) -> None:
    url, script = server
    script.answers = [(502, b"")] * 3
    client = RegistrarClient(url, sleep=lambda _: None, retry=RetryPolicy(attempts=3))
    with pytest.raises(PeerUnreachable, match="HTTP 502"):
        client.api_version()


def test_4xx_is_final_and_names_the_cause(server) -> None:
    url, script = server
    detail = "Agent with ID 'edge-1' has a different EK"
    script.answers = [(403, {"errors": [{"status": "403", "title": "Forbidden", "detail": detail}]})]
    client = RegistrarClient(url, api_version="2.2", sleep=lambda _: pytest.fail("a 4xx must not be retried"))
    with pytest.raises(RegistrationError, match="403 Agent with ID 'edge-1' has a different EK"):
        client.register(AGENT, _request())


def test_no_common_version(server) -> None:
    url, script = server
    script.answers = [(200, {"code": 200, "status": "Success", "results": {"supported_versions": ["3.0"]}})]
    with pytest.raises(ProtocolError, match="no common"):
        RegistrarClient(url).api_version()


@pytest.mark.parametrize(
    "answer",
    [
        (200, b"<html>proxy</html>"),
        (200, {"code": 200, "status": "Success", "results": {}}),  # no blob
        (200, {"code": 200, "status": "Success", "results": {"blob": base64.b64encode(b"junk").decode()}}),
    ],
)
def test_malformed_registration_answer(server, answer) -> None:
    url, script = server
    script.answers = [answer]
    with pytest.raises(ProtocolError):
        RegistrarClient(url, api_version="2.2").register(AGENT, _request())


def test_bad_agent_id_sends_nothing(server) -> None:
    url, script = server
    with pytest.raises(ProtocolError, match="agent id"):
        RegistrarClient(url, api_version="2.2").register("../admin", _request())
    assert script.seen == []


def test_retry_delays_are_capped() -> None:
    assert RetryPolicy(attempts=6, initial_delay=1, factor=3, max_delay=5).delays() == [1, 3, 5, 5, 5]
    assert RetryPolicy(attempts=1).delays() == []
