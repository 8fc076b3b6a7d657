"""Keylime API 3.0 (push model) wire format: bodies we send, and every malformed answer refused with one line.

The answers are shaped as the stock 7.14.3 verifier sends them (checked end to end in
tests/integration/cloud/test_push_mode.py); here each field is broken in turn. The HTTP client is run
against a local server that answers garbage, as a verifier that is not one would.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from edgeagent.attest import push as push_client
from edgeagent.cli.main import main
from edgeagent.errors import PeerUnreachable
from edgeagent.protocol import push

CHALLENGE = base64.b64encode(b"c" * 16).decode()


def _session(**attrs: Any) -> dict[str, Any]:
    base = {"authentication_requested": [{"authentication_class": "pop", "authentication_type": "tpm_pop",
                                          "chosen_parameters": {"challenge": CHALLENGE}}]}
    return {"data": {"type": "session", "id": "5b6c", "attributes": {**base, **attrs}}}


def _evidence_request(**params: Any) -> dict[str, Any]:
    chosen = {"challenge": CHALLENGE, "hash_algorithm": "sha256", "selected_subjects": {"sha256": [23]},
              **params}
    return {"data": {"type": "attestation", "attributes": {
        "evidence_requested": [{"evidence_class": "certification", "evidence_type": "tpm_quote",
                                "chosen_parameters": chosen}],
        "challenges_expire_at": "2026-12-03T10:35:00.123456+00:00"},
        "links": {"self": "/v3.0/agents/a/attestations/7"}}}


def test_well_formed_answers_parse() -> None:
    challenge = push.parse_session_challenge(_session())
    assert challenge.session_id == "5b6c" and challenge.challenge == b"c" * 16
    request = push.parse_evidence_request(_evidence_request())
    assert request.index == "7" and request.pcrs == (23,) and request.nonce == b"c" * 16
    assert request.requested == (("certification", "tpm_quote"),)
    assert request.expires_at is not None
    token = push.parse_session_result({"data": {"attributes": {"evaluation": "pass", "token": "s.t",
                                                               "token_expires_at": "2026-12-03T10:00:00"}}})
    assert token.token == "s.t" and token.expires_at is not None
    assert push.parse_acknowledgement({"meta": {"seconds_to_next_attestation": 2}}) == 2.0


@pytest.mark.parametrize(("body", "message"), [
    ({}, "no session id"),
    ({"data": {"id": "x"}}, "no data.attributes"),
    (_session(authentication_requested=[]), "no authentication_requested"),
    (_session(authentication_requested=[{"authentication_type": "password"}]), "not tpm_pop"),
    (_session(authentication_requested=[{"authentication_type": "tpm_pop", "chosen_parameters": {
        "challenge": "%%%"}}]), "challenge is not base64"),
    (_session(authentication_requested=[{"authentication_type": "tpm_pop", "chosen_parameters": {
        "challenge": base64.b64encode(b"x" * 65).decode()}}]), "65-byte challenge"),
])
def test_malformed_session_challenges(body: dict[str, Any], message: str) -> None:
    with pytest.raises(push.PushError, match=message):
        push.parse_session_challenge(body)


@pytest.mark.parametrize(("body", "message"), [
    ({"data": {"attributes": {"evaluation": "fail"}}}, "refused the proof of possession"),
    ({"data": {"attributes": {"evaluation": "pass"}}}, "no token"),
    ({"data": {"attributes": {"evaluation": "pass", "token": "a b"}}}, "no token"),
    ({"data": []}, "no data.attributes"),
])
def test_malformed_session_results(body: dict[str, Any], message: str) -> None:
    with pytest.raises(push.PushError, match=message):
        push.parse_session_result(body)


@pytest.mark.parametrize(("body", "message"), [
    ({"data": {"attributes": {}}}, "no evidence_requested"),
    ({"data": {"attributes": {"evidence_requested": [
        {"evidence_class": "log", "evidence_type": "ima_log"}]}}}, "requested no tpm_quote"),
    (_evidence_request(challenge=None), "quote challenge is missing"),
    (_evidence_request(hash_algorithm=None), "no hash_algorithm"),
    (_evidence_request(selected_subjects={"sha256": [24]}), "not a list of PCRs 0-23"),
    (_evidence_request(selected_subjects={"sha1": [0]}), "not a list of PCRs"),
])
def test_malformed_evidence_requests(body: dict[str, Any], message: str) -> None:
    with pytest.raises(push.PushError, match=message):
        push.parse_evidence_request(body)


@pytest.mark.parametrize("body", [{}, {"meta": {}}, {"meta": {"seconds_to_next_attestation": -1}},
                                  {"meta": {"seconds_to_next_attestation": True}}])
def test_malformed_acknowledgements(body: dict[str, Any]) -> None:
    with pytest.raises(push.PushError, match="seconds_to_next_attestation"):
        push.parse_acknowledgement(body)


def test_evidence_follows_the_requested_order_and_refuses_what_it_cannot_send() -> None:
    request = push.parse_evidence_request(_evidence_request())
    body = push.evidence_request(request, attest_=b"a", signature=b"s", pcrblob=b"p")
    item = body["data"]["attributes"]["evidence_collected"][0]
    assert item["data"] == {"subject_data": "cA==", "message": "YQ==", "signature": "cw=="}
    uefi = push.EvidenceRequest("0", b"n", "sha256", (0,),
                                (("certification", "tpm_quote"), ("log", "uefi_log")))
    with pytest.raises(push.PushError, match="firmware event log"):
        push.evidence_request(uefi, attest_=b"a", signature=b"s", pcrblob=b"p")
    ima = push.EvidenceRequest("0", b"n", "sha256", (0,), (("log", "ima_log"),))
    with pytest.raises(push.PushError, match="'ima_log' evidence"):
        push.evidence_request(ima, attest_=b"a", signature=b"s", pcrblob=b"p")


def test_sealed_material_opens_only_with_its_key_and_agent() -> None:
    sealed = push.Sealed("agent-1", b"cred", os.urandom(12), b"")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = os.urandom(32)
    ct = AESGCM(key).encrypt(sealed.nonce, b"join", b"agent-1")
    sealed = push.Sealed("agent-1", b"cred", sealed.nonce, ct)
    assert push.open_sealed(sealed, key) == b"join"
    with pytest.raises(push.PushError, match="does not authenticate"):
        push.open_sealed(sealed, os.urandom(32))
    with pytest.raises(push.PushError, match="does not authenticate"):
        push.open_sealed(push.Sealed("agent-2", b"cred", sealed.nonce, ct), key)
    with pytest.raises(push.PushError, match="made for agent 'agent-1', not 'agent-2'"):
        push.parse_sealed(sealed.to_json(), "agent-2")


# ---------------------------------------------------------------- a server that is not a verifier
class _Garbage(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, tuple[int, bytes]]] = {}

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        code, body = self.answers.get(f"{self.command} {self.path}", (404, b"{}"))
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _answer


@pytest.fixture
def garbage() -> Iterator[tuple[str, dict[str, tuple[int, bytes]]]]:
    answers: dict[str, tuple[int, bytes]] = {}
    handler = type("Handler", (_Garbage,), {"answers": answers})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answers
    finally:
        server.shutdown()
        server.server_close()


def _attester(url: str) -> push_client.PushAttester:
    return push_client.PushAttester(tpm=None, identity=None, agent_id="a1",  # type: ignore[arg-type]
                                    verifier=push_client.HttpsClient(url, None))


def test_a_session_answer_that_is_not_json_is_one_clear_error(
    garbage: tuple[str, dict[str, tuple[int, bytes]]]
) -> None:
    url, answers = garbage
    answers["POST /v3.0/sessions"] = (200, b"<html>proxy login</html>")
    with pytest.raises(push.PushError, match=r"malformed 3\.0 response to session creation: HTTP 200"):
        _attester(url).authenticate()
    answers["POST /v3.0/sessions"] = (200, json.dumps({"data": {"id": "s"}}).encode())
    with pytest.raises(push.PushError, match=r"response to POST /sessions: no data\.attributes"):
        _attester(url).authenticate()
    limited = {"errors": [{"detail": "Rate limit exceeded"}]}
    answers["POST /v3.0/sessions"] = (429, json.dumps(limited).encode())
    with pytest.raises(push.PushError, match="HTTP 429: Rate limit exceeded"):
        _attester(url).authenticate()


def test_join_answers_that_are_not_the_protocol(garbage: tuple[str, dict[str, tuple[int, bytes]]]) -> None:
    url, answers = garbage
    client = push_client.HttpsClient(url, None, what="join endpoint")
    answers["GET /v1/push/a1/join"] = (200, b'{"state": "attested", "agent_id": "a1"}')
    with pytest.raises(push.PushError, match="join credential is missing"):
        push_client.fetch_join(client, "a1")
    answers["GET /v1/push/a1/join"] = (418, b"teapot")
    with pytest.raises(push.PushError, match="malformed answer from the join endpoint: HTTP 418"):
        push_client.fetch_join(client, "a1")
    answers["GET /v1/push/a1/join"] = (404, b'{"state": "pending"}')
    assert push_client.fetch_join(client, "a1").state == "pending"


def test_a_verifier_that_is_down_is_peer_unreachable() -> None:
    with pytest.raises(PeerUnreachable, match=r"verifier at http://127\.0\.0\.1:9 unreachable"):
        push_client.HttpsClient("http://127.0.0.1:9", None).call("POST", "/v3.0/sessions", {})


def test_cli_refuses_an_unknown_mode(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(config), "--state-dir", str(tmp_path / "s"), "enroll", "--mode", "poll"])
    assert exc.value.code == 78
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["edgeagent: error: --mode must be pull or push, got 'poll'"]
