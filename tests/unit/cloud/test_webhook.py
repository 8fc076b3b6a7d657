"""The revocation webhook: only a correctly signed notification about a known agent acts, over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from edgeagent.cloud.webhook import RevocationReceiver, WebhookServer
from edgeagent.protocol import keylime as protocol


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return tuple(rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))


def _receiver(keys, seen: list, *, leader: bool = True) -> RevocationReceiver:
    return RevocationReceiver(
        revocation_key=lambda a: keys[0].public_key() if a == "agent-1" else None,
        on_revocation=lambda a, m: seen.append((a, m)),
        active=lambda: leader,
    )


def _msg(agent: str = "agent-1") -> dict:
    return {"type": "revocation", "agent_id": agent, "event_id": "pcr_value_mismatch", "ip": "127.0.0.1"}


def test_signed_notification_about_known_agent_acts(keys) -> None:
    seen: list = []
    out = _receiver(keys, seen).handle(json.dumps(protocol.sign_revocation(_msg(), keys[0])).encode())
    assert out.code == 200
    assert seen == [("agent-1", _msg())]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", 400),
        (b"[]", 400),
        (json.dumps({"msg": 5}).encode(), 400),
        (json.dumps({"msg": json.dumps({"type": "revocation"})}).encode(), 400),
        (json.dumps({"msg": json.dumps(_msg()), "signature": "none"}).encode(), 403),
        (json.dumps({"msg": json.dumps(_msg()), "signature": ""}).encode(), 403),
    ],
)
def test_malformed_or_unsigned_changes_nothing(keys, body: bytes, code: int) -> None:
    seen: list = []
    assert _receiver(keys, seen).handle(body).code == code
    assert seen == []


def test_wrong_key_and_unknown_agent(keys) -> None:
    seen: list = []
    forged = protocol.sign_revocation(_msg(), keys[1])
    assert _receiver(keys, seen).handle(json.dumps(forged).encode()).code == 403
    stranger = protocol.sign_revocation(_msg("agent-9"), keys[0])
    assert _receiver(keys, seen).handle(json.dumps(stranger).encode()).code == 404
    assert seen == []


def test_follower_defers_to_the_leader(keys) -> None:
    seen: list = []
    body = json.dumps(protocol.sign_revocation(_msg(), keys[0])).encode()
    assert _receiver(keys, seen, leader=False).handle(body).code == 503
    assert seen == []


def test_over_http(keys) -> None:
    seen: list = []
    server = WebhookServer(_receiver(keys, seen), "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{server.port}/revocation"
        data = json.dumps(protocol.sign_revocation(_msg(), keys[0])).encode()
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=5)
        assert bad.value.code == 400
        with pytest.raises(urllib.error.HTTPError) as empty:
            urllib.request.urlopen(urllib.request.Request(url, data=b""), timeout=5)
        assert empty.value.code == 400
    finally:
        server.stop()
    assert len(seen) == 1
