"""An in-process Keylime agent on a real swtpm, for the attestation integration tests.

Built from the same pieces `edgeagent enroll` uses (Tpm, identity, NK, TLS identity, AgentApi, AgentServer,
RegistrarClient), so the stock verifier and tenant talk to the project's code, not to a test double. The agent
owns the TPM connection; tests must not open a second one to the same swtpm while it runs.
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edgeagent.attest import nk, payload, tls
from edgeagent.attest.registrar import RegistrarClient, RetryPolicy
from edgeagent.attest.server import AgentApi, AgentServer
from edgeagent.protocol import keylime as protocol
from edgeagent.tpm import Tpm
from edgeagent.tpm import identity as tpm_identity
from tests.fixtures import procs
from tests.fixtures.keylime import Keylime


@dataclasses.dataclass
class Agent:
    uuid: str
    tpm: Tpm
    ident: tpm_identity.Identity
    api: AgentApi
    server: AgentServer
    server_id: tls.ServerIdentity
    port: int
    keylime: Keylime
    deliveries: list[payload.Delivery]
    delivered: threading.Event

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def registration(self) -> protocol.RegistrationRequest:
        return protocol.RegistrationRequest(
            ek_tpm=self.ident.ek_public, aik_tpm=self.ident.ak_public, ekcert=self.ident.ek_cert,
            mtls_cert=self.server_id.cert_pem, ip="127.0.0.1", port=self.port)

    def register(self, *, activate: bool = True) -> None:
        client = RegistrarClient(self.keylime.registrar_url, retry=RetryPolicy(attempts=2))
        if activate:
            client.register_and_activate(self.uuid, self.registration(),
                                         lambda blob: self.tpm.activate_credential(self.ident, blob))
        else:
            client.register(self.uuid, self.registration())

    def client_context(self) -> ssl.SSLContext:
        """What the verifier does: trust the agent's pinned certificate, present a Keylime client cert."""
        ctx = ssl.create_default_context(cadata=self.server_id.cert_pem)
        ctx.check_hostname = False
        ctx.load_cert_chain(str(self.keylime.client_cert), str(self.keylime.client_key))
        return ctx

    def call(self, method: str, path: str, body: bytes | None = None, *,
             ctx: ssl.SSLContext | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, context=ctx or self.client_context(), timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def verifier_state(self) -> dict[str, Any]:
        status, body = self.keylime.request("GET", f"{self.keylime.verifier_url}/v2.2/agents/{self.uuid}")
        assert status == 200, body
        return body["results"]

    def wait_state(self, accept: set[int], *, timeout: float = 60.0) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def reached() -> bool:
            seen.update(self.verifier_state())
            return seen.get("operational_state") in accept

        procs.wait_for(reached, timeout=timeout, interval=0.2,
                       what=f"verifier operational_state in {sorted(accept)} (last: {seen})")
        return seen

    def tenant_add(self, *args: str, check: bool = True) -> Any:
        return self.keylime.tenant("-c", "add", "-u", self.uuid, "-t", "127.0.0.1", "-tp", str(self.port),
                                   *args, check=check)

    def remove(self) -> None:
        self.keylime.tenant("-c", "delete", "-u", self.uuid)
        self.keylime.tenant("-c", "regdelete", "-u", self.uuid)

    def close(self) -> None:
        self.server.stop()
        self.tpm.close()


def start_agent(keylime: Keylime, tcti: str, state_dir: Path, *, uuid: str,
                firmware_log: Path | None = None) -> Agent:
    state_dir.mkdir(parents=True, exist_ok=True)
    tpm = Tpm.open(tcti)
    try:
        ident = tpm_identity.provision(tpm, state_dir)
        key = nk.load_or_create(state_dir)
        port = procs.free_port()
        server_id = tls.load_or_create(state_dir, uuid=uuid, host="127.0.0.1")
        deliveries: list[payload.Delivery] = []
        delivered = threading.Event()

        def on_delivery(d: payload.Delivery) -> None:
            deliveries.append(d)
            delivered.set()

        api = AgentApi(tpm=tpm, identity=ident, uuid=uuid, nk=key,
                       shares=payload.KeyShares(uuid, on_delivery=on_delivery), firmware_log=firmware_log)
        server = AgentServer(api, "127.0.0.1", port, tls.server_context(server_id, keylime.ca_cert)).start()
    except BaseException:
        tpm.close()
        raise
    return Agent(uuid, tpm, ident, api, server, server_id, port, keylime, deliveries, delivered)


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
