"""The agent against stock Keylime 7.14 (verifier, registrar, tenant) on a real swtpm.

Registration and AK activation with the registrar; the tenant's identity check and the verifier's polling
attest the agent and deliver a U/V payload byte for byte; PCR 16 binds the NK; a changed PCR 23 or a tampered
firmware log gets the agent flagged; an agent whose AK was never activated is refused; malformed requests on
the agent's API get 4xx and the agent keeps serving.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeagent.measure import tcg2
from edgeagent.protocol import keylime as protocol
from edgeagent.tpm.quote import Quote, verify_quote
from edgeagent.tpm.swtpm import SoftwareTpm
from tests.fixtures.keylime import Keylime
from tests.integration.attest_agent import Agent, start_agent, timed

pytestmark = pytest.mark.integration

GET_QUOTE = 3
FAILED_STATES = {7, 9}  # FAILED, INVALID_QUOTE


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def agent(request: pytest.FixtureRequest, keylime: Keylime, fresh_swtpm: SoftwareTpm,
          tmp_path: Path) -> Iterator[Agent]:
    uuid = f"edgeagent-test-{request.node.name.replace('_', '-')[:40]}-{time.time_ns() % 10**6}"
    firmware_log = tmp_path / "binary_bios_measurements"
    a = start_agent(keylime, fresh_swtpm.tcti, tmp_path / "state", uuid=uuid, firmware_log=firmware_log)
    try:
        yield a
    finally:
        a.remove()
        a.close()


def test_registration_and_activation_with_the_real_registrar(agent: Agent) -> None:
    seconds = timed(agent.register)
    status, body = agent.keylime.request(
        "GET", f"{agent.keylime.registrar_tls_url}/v2.2/agents/{agent.uuid}")
    assert status == 200, body
    results = body["results"]
    assert base64.b64decode(results["aik_tpm"]) == agent.ident.ak_public
    assert base64.b64decode(results["ek_tpm"]) == agent.ident.ek_public
    assert results["mtls_cert"].strip() == agent.server_id.cert_pem.strip()
    # Re-registration of the same agent with the same AK is accepted (a restart), and activates again.
    agent.register()
    print(f"\nregistration + activation: {seconds * 1000:.0f} ms")


def test_an_ak_that_was_not_activated_is_not_trusted(agent: Agent) -> None:
    agent.register(activate=False)
    status, body = agent.keylime.request(
        "GET", f"{agent.keylime.registrar_tls_url}/v2.2/agents/{agent.uuid}")
    assert status == 404, body  # the registrar hides agents until their AK is activated
    result = agent.tenant_add("-f", str(Path(__file__)), check=False)
    assert result.returncode != 0
    assert not agent.delivered.is_set()


def test_verifier_attests_and_the_payload_arrives_byte_identical(agent: Agent, tmp_path: Path) -> None:
    agent.register()
    secret = tmp_path / "join.json"
    secret.write_bytes(json.dumps({"hello": "edge", "bytes": list(range(256))}).encode() + b"\x00\xff")
    t0 = time.perf_counter()
    agent.tenant_add("-f", str(secret))
    assert agent.delivered.wait(60), "payload never formed (no V from the verifier?)"
    delivered = time.perf_counter() - t0
    assert agent.deliveries[-1].payload == secret.read_bytes()
    first = agent.wait_state({GET_QUOTE})
    later = agent.wait_state({GET_QUOTE}, timeout=30)
    procs_deadline = time.monotonic() + 30
    while later["attestation_count"] <= first["attestation_count"] and time.monotonic() < procs_deadline:
        time.sleep(0.3)
        later = agent.verifier_state()
    assert later["operational_state"] == GET_QUOTE
    assert later["attestation_count"] > first["attestation_count"]
    # keys/verify proves the agent holds K
    status, body = agent.call("GET", "/v2.2/keys/verify?challenge=abc123")
    assert status == 200
    assert body["results"]["hmac"] == protocol.verify_response(agent.deliveries[-1].key, "abc123")
    print(f"\ntenant add -> payload delivered: {delivered:.2f} s; quotes served {agent.api.quotes_served}")


def test_pcr16_binds_the_nk_into_every_quote(agent: Agent) -> None:
    nonce = "a1B2c3D4e5F6g7H8i9J0"
    status, body = agent.call("GET", f"/v2.2/quotes/identity?nonce={nonce}")
    assert status == 200, body
    results = body["results"]
    assert results["pubkey"] == agent.api.nk.public_pem
    quote = Quote.from_keylime_string(results["quote"])
    verify_quote(quote, agent.ident.ak_public, nonce.encode())
    assert quote.pcr_values[16] == protocol.data_pcr_value(results["pubkey"])
    status, body = agent.call("GET", f"/v2.2/quotes/integrity?nonce={nonce}&mask=0x800000&partial=1")
    assert status == 200, body
    assert "pubkey" not in body["results"]
    quote = Quote.from_keylime_string(body["results"]["quote"])
    assert sorted(quote.pcr_values) == [16, 23]
    assert quote.pcr_values[16] == protocol.data_pcr_value(agent.api.nk.public_pem)


def test_a_changed_pcr23_gets_the_agent_flagged(agent: Agent, tmp_path: Path) -> None:
    agent.register()
    agent.tpm.pcr_extend(23, {"sha256": b"\x01" * 32})
    expected = agent.tpm.pcr_read([23])[23].hex()
    secret = tmp_path / "p"
    secret.write_bytes(b"x")
    agent.tenant_add("-f", str(secret), "--tpm_policy", json.dumps({"23": [expected]}))
    agent.wait_state({GET_QUOTE})
    assert agent.delivered.wait(30)
    agent.tpm.pcr_extend(23, {"sha256": b"\x02" * 32})  # the agent's own software changed
    state = agent.wait_state(FAILED_STATES, timeout=30)
    assert state["operational_state"] in FAILED_STATES


def _boot_log() -> tcg2.EventLog:
    """A small, well-formed firmware log tpm2_eventlog (Keylime's parser) decodes without complaint."""
    banks = ("sha256",)
    events = [tcg2.measurement(0, tcg2.EV_S_CRTM_VERSION, "1.0\0".encode("utf-16-le"), banks)]
    events += [tcg2.measurement(pcr, tcg2.EV_SEPARATOR, b"\0\0\0\0", banks) for pcr in range(8)]
    events += [tcg2.measurement(9, tcg2.EV_IPL, b"(hd0,gpt2)/vmlinuz\0", banks)]
    return tcg2.build(banks, events)


def test_a_tampered_firmware_log_gets_the_agent_flagged(agent: Agent, tmp_path: Path) -> None:
    log = _boot_log()
    for ev in log.events:  # what firmware would have done at boot
        agent.tpm.pcr_extend(ev.pcr_index, dict(tcg2.digests_by_bank(ev)))
    assert agent.api.firmware_log is not None
    agent.api.firmware_log.write_bytes(tcg2.encode(log))
    mb_policy = tmp_path / "mb-policy.json"
    mb_policy.write_text(json.dumps({"edgeagent": "accept-all reference state"}))
    agent.register()
    agent.tenant_add("-f", str(mb_policy), "--mb-policy", str(mb_policy))
    state = agent.wait_state({GET_QUOTE})
    assert agent.delivered.wait(30)
    policy = state["tpm_policy"]
    mask = int((json.loads(policy) if isinstance(policy, str) else policy)["mask"], 16)
    assert mask & 1 and mask & (1 << 15)  # the verifier asks for the measured-boot PCRs, so it reads the log
    # the integrity quote carried the log: PCR 0 is in the mask of a measured-boot policy
    status, body = agent.call("GET", "/v2.2/quotes/integrity?nonce=abc&mask=0x1&partial=1")
    assert status == 200, body
    assert base64.b64decode(body["results"]["mb_measurement_list"]) == tcg2.encode(log)
    tampered = tcg2.build(("sha256",), [*log.events,
                                        tcg2.measurement(4, tcg2.EV_IPL, b"evil loader\0", ("sha256",))])
    agent.api.firmware_log.write_bytes(tcg2.encode(tampered))
    state = agent.wait_state(FAILED_STATES, timeout=30)
    assert state["operational_state"] in FAILED_STATES


def test_malformed_requests_get_4xx_and_the_agent_keeps_serving(agent: Agent) -> None:
    cases = [
        ("GET", "/v2.2/quotes/integrity?nonce=bad!nonce&mask=0x1", None, 400),
        ("GET", "/v2.2/quotes/integrity?nonce=abc&mask=zz", None, 400),
        ("GET", "/v2.2/quotes/integrity?nonce=abc&mask=0x1000000", None, 400),
        ("GET", "/v2.2/quotes/identity", None, 400),
        ("GET", "/v9.9/agent/info", None, 400),
        ("GET", "/v2.2/nothing/here", None, 404),
        ("GET", "/etc/passwd", None, 404),
        ("POST", "/v2.2/keys/ukey", b"{not json", 400),
        ("POST", "/v2.2/keys/ukey", b"[]", 400),
        ("POST", "/v2.2/keys/ukey", json.dumps({"encrypted_key": "!!", "auth_tag": "0" * 96}).encode(), 400),
        ("POST", "/v2.2/keys/vkey", json.dumps({"encrypted_key": _b64(b"x" * 256)}).encode(), 400),
        ("GET", "/v2.2/keys/verify?challenge=abc", None, 400),  # no K yet
        ("POST", "/v2.2/notifications/revocation", json.dumps({"msg": 1}).encode(), 200),
        ("GET", "/v2.2/keys/ukey", None, 405),
        ("PUT", "/v2.2/keys/ukey", b"{}", 405),
        ("GET", "/v2.2/quotes/integrity?nonce=a&nonce=b&mask=0x1", None, 400),
    ]
    for method, path, body, expected in cases:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        status, answer = agent.call(method, path, body, headers=headers)
        assert status == expected, (method, path, status, answer)
        assert answer["code"] == expected and isinstance(answer["status"], str)
    status, _ = agent.call("POST", "/v2.2/keys/ukey", b"x" * 10, headers={"Content-Length": str(10 << 20)})
    assert status == 413
    # a raw garbage request line over TLS
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as raw, \
            agent.client_context().wrap_socket(raw) as s:
        s.sendall(b"\x00\x01GARBAGE\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.")
    # a client without a Keylime client certificate is refused at the TLS handshake
    anonymous = ssl.create_default_context(cadata=agent.server_id.cert_pem)
    anonymous.check_hostname = False
    with pytest.raises((ssl.SSLError, OSError)):
        agent.call("GET", "/version", ctx=anonymous)
    # a client that connects and says nothing does not block others
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5):
        status, body = agent.call("GET", "/v2.2/agent/info")
    assert status == 200
    assert body["results"]["agent_uuid"] == agent.uuid
    status, body = agent.call("GET", "/version")
    assert status == 200 and body["results"]["supported_version"] == protocol.AGENT_API_VERSIONS[-1]
