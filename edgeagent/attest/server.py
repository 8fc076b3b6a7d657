"""The agent's Keylime API (pull mode, 2.x): what the verifier and the tenant call on the device.

Endpoints (every answer in Keylime's envelope {"code", "status", "results"}):

    GET  /version                          supported API versions
    GET  /v2.x/agent/info                  uuid and TPM algorithms
    GET  /v2.x/quotes/identity?nonce=      quote over PCR 16 (NK binding) + the NK, for the tenant
    GET  /v2.x/quotes/integrity?nonce=&mask=&partial=&ima_ml_entry=
                                           quote over the mask (+16); the firmware TCG2 log if PCR 0 is in it
    GET  /v2.x/keys/pubkey                 the NK public key
    POST /v2.x/keys/ukey                   U share, its auth_tag and the encrypted payload (tenant)
    POST /v2.x/keys/vkey                   V share (verifier, after a good quote)
    GET  /v2.x/keys/verify?challenge=      HMAC(K, challenge): proof the agent derived K
    POST /v2.x/notifications/revocation    signed revocation message from the verifier

Transport: HTTPS that requires a client certificate from the Keylime CA. The TLS handshake runs in the
connection's worker thread with a timeout, so a client that connects and stalls, or presents no certificate,
costs one thread for a few seconds and never blocks the accept loop. Malformed requests get a 4xx envelope
that names the problem; unexpected failures a 500; the server keeps serving either way.

TPM use is serialized: the agent owns one `Tpm` (raw swtpm has no resource manager), and a quote is the
sequence reset PCR 16, extend it with sha256(NK PEM), quote, which must not interleave with another quote.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from edgeagent.attest.nk import AgentKey
from edgeagent.attest.payload import KeyShares
from edgeagent.errors import AttestationError, EdgeAgentError, ProtocolError, TpmError
from edgeagent.protocol import keylime as protocol
from edgeagent.tpm.connection import Tpm
from edgeagent.tpm.identity import Identity
from edgeagent.tpm.quote import Quote

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
"""Largest request body accepted: a U share with a payload of join material is a few KiB."""
HANDSHAKE_TIMEOUT = 10.0
QUOTE_BANK = "sha256"
FIRMWARE_LOG_PCR = 0
IMA_PCR = 10
_CHALLENGE_MAX = 256


class HttpError(Exception):
    """A request the agent refuses: status code and a one-line reason for the envelope."""

    def __init__(self, code: int, status: str) -> None:
        super().__init__(status)
        self.code = code
        self.status = status


def boot_time() -> int:
    """Unix time of the last boot (Keylime uses it to notice reboots); 0 when unknown."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class AgentApi:
    """The agent's state behind the HTTP endpoints; usable without HTTP in tests."""

    def __init__(
        self,
        *,
        tpm: Tpm,
        identity: Identity,
        uuid: str,
        nk: AgentKey,
        shares: KeyShares,
        firmware_log: Path | None = None,
        revocation_key: rsa.RSAPublicKey | None = None,
        on_revocation: Callable[[protocol.Revocation], None] | None = None,
    ) -> None:
        self.tpm = tpm
        self.identity = identity
        self.uuid = uuid
        self.nk = nk
        self.shares = shares
        self.firmware_log = firmware_log
        self.revocation_key = revocation_key
        self.on_revocation = on_revocation
        self._quote_lock = threading.Lock()
        self.quotes_served = 0
        self.bytes_sent = 0
        """HTTP bodies and the headers this API sets, summed over its answers (the bench compares it with
        push mode's requests; TLS framing is not counted in either)."""
        self.first_quote_at: float | None = None
        """time.monotonic() of the first integrity quote served (for enrollment timing)."""
        self.last_quote_at: float | None = None
        """time.monotonic() of the latest integrity quote served: how long the verifier has been silent."""

    # ------------------------------------------------------------ quotes
    def quote(self, nonce: str, pcrs: tuple[int, ...]) -> Quote:
        """Binds the NK into PCR 16, then quotes ``pcrs`` + 16 with ``nonce`` as qualifying data."""
        pem = self.nk.public_pem.encode("ascii")
        selection = sorted({*pcrs, protocol.DATA_PCR})
        with self._quote_lock:
            banks = self.tpm.pcr_banks()
            self.tpm.pcr_reset(protocol.DATA_PCR)
            self.tpm.pcr_extend(protocol.DATA_PCR, {b: hashlib.new(b, pem).digest() for b in banks})
            return self.tpm.quote(self.identity, nonce.encode("ascii"), selection, QUOTE_BANK)

    def _quote_results(self, quote: Quote, *, with_pubkey: bool) -> dict[str, Any]:
        results: dict[str, Any] = {
            "quote": quote.keylime_string(),
            "hash_alg": QUOTE_BANK,
            "enc_alg": self.identity.algorithms.get("enc", "rsa"),
            "sign_alg": self.identity.algorithms.get("sign", "rsassa"),
            "boottime": boot_time(),
        }
        if with_pubkey:
            results["pubkey"] = self.nk.public_pem
        return results

    def identity_quote(self, query: Mapping[str, str]) -> dict[str, Any]:
        req = protocol.parse_quote_request(query, integrity=False)
        return self._quote_results(self.quote(req.nonce, ()), with_pubkey=True)

    def integrity_quote(self, query: Mapping[str, str]) -> dict[str, Any]:
        req = protocol.parse_quote_request(query, integrity=True)
        results = self._quote_results(self.quote(req.nonce, req.pcrs), with_pubkey=not req.partial)
        if FIRMWARE_LOG_PCR in req.pcrs and self.firmware_log is not None:
            try:
                results["mb_measurement_list"] = base64.b64encode(self.firmware_log.read_bytes()).decode()
            except FileNotFoundError:
                pass  # no log: the verifier reports the measured-boot PCRs as unverifiable
            except OSError as e:
                raise TpmError(
                    f"cannot read the firmware event log {self.firmware_log}: {e.strerror}") from None
        self.quotes_served += 1
        self.last_quote_at = time.monotonic()
        if self.first_quote_at is None:
            self.first_quote_at = self.last_quote_at
        return results

    # ------------------------------------------------------------ keys
    def ukey(self, body: Mapping[str, Any]) -> dict[str, Any]:
        u = protocol.parse_ukey(body)
        share = protocol.decrypt_key_share(self.nk.private_key, u.encrypted_key)
        self.shares.add_u(share, u.auth_tag, u.payload)
        return {}

    def vkey(self, body: Mapping[str, Any]) -> dict[str, Any]:
        v = protocol.parse_vkey(body)
        self.shares.add_v(protocol.decrypt_key_share(self.nk.private_key, v.encrypted_key))
        return {}

    def verify(self, query: Mapping[str, str]) -> dict[str, Any]:
        challenge = query.get("challenge", "")
        if not challenge or len(challenge) > _CHALLENGE_MAX or not challenge.isascii():
            raise ProtocolError(f"'challenge' missing or not 1-{_CHALLENGE_MAX} ASCII characters")
        if self.shares.key is None:
            raise HttpError(400, "Bootstrap key not yet available.")
        return {"hmac": protocol.verify_response(self.shares.key, challenge)}

    def info(self) -> dict[str, Any]:
        return {
            "agent_uuid": self.uuid,
            "tpm_hash_alg": QUOTE_BANK,
            "tpm_enc_alg": self.identity.algorithms.get("enc", "rsa"),
            "tpm_sign_alg": self.identity.algorithms.get("sign", "rsassa"),
            "ak_handle": 0,  # the AK is a transient object re-loaded at every start: no persistent handle
        }

    def revocation(self, body: Mapping[str, Any]) -> dict[str, Any]:
        if self.revocation_key is None:
            # Without the verifier's revocation key nothing can be authenticated, so nothing is acted on.
            log.warning("revocation notification ignored: no revocation certificate configured")
            return {"accepted": False}
        rev = protocol.verify_revocation(body, self.revocation_key)
        log.info("revocation notification from the verifier: %s", rev.msg.get("type", "?"))
        if self.on_revocation is not None:
            self.on_revocation(rev)
        return {"accepted": True}

    # ------------------------------------------------------------ routing
    def route(self, method: str, target: str, body: bytes | None) -> tuple[int, dict[str, Any]]:
        """Answers one request: (HTTP status, envelope). Never raises."""
        try:
            return 200, protocol.envelope(200, "Success", self._dispatch(method, target, body)).to_json()
        except HttpError as e:
            return e.code, protocol.envelope(e.code, e.status).to_json()
        except (ProtocolError, AttestationError) as e:
            return 400, protocol.envelope(400, f"Bad Request: {e}").to_json()
        except EdgeAgentError as e:
            log.error("%s %s failed: %s", method, target.split("?")[0][:80], e)
            return 500, protocol.envelope(500, f"Internal Server Error: {e}").to_json()
        except Exception:  # a bug: reported, and the server keeps serving
            log.exception("%s %s crashed", method, target.split("?")[0][:80])
            return 500, protocol.envelope(500, "Internal Server Error").to_json()

    def _dispatch(self, method: str, target: str, body: bytes | None) -> dict[str, Any]:
        url = urllib.parse.urlsplit(target)
        query = _query(url.query)
        if url.path.rstrip("/") == "/version":
            _allow(method, "GET")
            return protocol.version_results()
        try:
            version, path = protocol.split_versioned_path(url.path)
        except ProtocolError:
            raise HttpError(404, f"Not Found: {url.path[:80]}") from None
        if version not in protocol.AGENT_API_VERSIONS:
            raise HttpError(400, f"API version {version} not supported (supported: "
                                 f"{', '.join(protocol.AGENT_API_VERSIONS)})")
        gets: dict[str, Callable[[], dict[str, Any]]] = {
            "/agent/info": self.info,
            "/quotes/identity": lambda: self.identity_quote(query),
            "/quotes/integrity": lambda: self.integrity_quote(query),
            "/keys/pubkey": lambda: {"pubkey": self.nk.public_pem},
            "/keys/verify": lambda: self.verify(query),
        }
        posts: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "/keys/ukey": self.ukey,
            "/keys/vkey": self.vkey,
            "/notifications/revocation": self.revocation,
        }
        if path in gets:
            _allow(method, "GET")
            return gets[path]()
        if path in posts:
            _allow(method, "POST")
            return posts[path](protocol.load_json_object(body or b"", what="request body"))
        raise HttpError(404, f"Not Found: {path[:80]}")


def _allow(method: str, expected: str) -> None:
    if method != expected:
        raise HttpError(405, f"Method Not Allowed: use {expected}")


def _query(text: str) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=False,
                                       max_num_fields=16)
    except ValueError:
        raise ProtocolError("query string has too many fields") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        if k in out:
            raise ProtocolError(f"query parameter {k[:40]!r} given twice")
        out[k] = v
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: AgentServer
    timeout = 30.0  # idle keep-alive connections are closed instead of holding a thread forever

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _respond(self, code: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data))}
        self.server.api.bytes_sent += len(data) + sum(len(k) + len(v) + 4 for k, v in headers.items())
        self.send_response(code)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "Length Required: chunked bodies are not accepted")
        if length is None:
            return None
        if not length.isdigit():
            raise HttpError(400, "Bad Request: invalid Content-Length")
        n = int(length)
        if n > MAX_BODY:
            raise HttpError(413, f"Payload Too Large: at most {MAX_BODY} bytes")
        return self.rfile.read(n)

    def _handle(self) -> None:
        try:
            body = self._body()
        except HttpError as e:
            self.close_connection = True
            self._respond(e.code, protocol.envelope(e.code, e.status).to_json())
            return
        code, obj = self.server.api.route(self.command, self.path, body)
        self._respond(code, obj)

    do_GET = _handle
    do_POST = _handle

    def _not_allowed(self) -> None:
        self.close_connection = True
        self._respond(405, protocol.envelope(405, "Method Not Allowed").to_json())

    do_PUT = _not_allowed
    do_DELETE = _not_allowed
    do_PATCH = _not_allowed
    do_HEAD = _not_allowed

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed HTTP (bad request line, oversized headers) answered in Keylime's envelope too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # unparsable request line: answer in HTTP/1.1 anyway
            self.request_version = self.protocol_version
        with contextlib.suppress(OSError):
            self._respond(code, protocol.envelope(code, message or "Bad Request").to_json())


class AgentServer(ThreadingHTTPServer):
    """The mTLS server; `start()` serves in a background thread, `stop()` ends it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, api: AgentApi, host: str, port: int, context: ssl.SSLContext) -> None:
        self.api = api
        self.context = context
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS handshake in the worker thread, bounded by a timeout, then the HTTP exchange."""
        try:
            request.settimeout(HANDSHAKE_TIMEOUT)
            conn = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            log.info("TLS handshake with %s failed: %s", client_address[0], e)
            return
        try:
            conn.settimeout(_Handler.timeout)
            _Handler(conn, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("connection from %s ended with an error", client_address[0], exc_info=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> AgentServer:
        self._thread = threading.Thread(target=self.serve_forever, name="keylime-agent-api",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
