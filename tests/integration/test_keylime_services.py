"""The Keylime test deployment is real and reachable: both services answer /version, mTLS is enforced."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

import pytest

from edgeagent.protocol import keylime as protocol
from tests.fixtures.keylime import Keylime

pytestmark = pytest.mark.integration


def test_verifier_and_registrar_answer_version(keylime: Keylime) -> None:
    for url in (keylime.verifier_url, keylime.registrar_url, keylime.registrar_tls_url):
        env = protocol.parse_envelope(keylime.get(f"{url}/version"))
        assert env.code == 200
        versions = protocol.parse_version_results(env.results)
        # the agent and these services share a 2.x version, so pull-mode attestation can be negotiated
        assert protocol.negotiate_api_version(protocol.AGENT_API_VERSIONS, versions).startswith("2.")


def test_verifier_admin_api_requires_a_keylime_client_certificate(keylime: Keylime) -> None:
    anonymous = ssl.create_default_context(cafile=str(keylime.ca_cert))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{keylime.verifier_url}/v2.6/agents/", context=anonymous, timeout=5).read()
    assert refused.value.code == 403
    status, body = keylime.request("GET", f"{keylime.verifier_url}/v2.6/agents/")
    assert status == 200
    assert isinstance(protocol.parse_envelope(body).results["uuids"], list)


def test_generated_files_are_where_the_fixture_says(keylime: Keylime) -> None:
    for path in (keylime.ca_cert, keylime.client_cert, keylime.client_key):
        assert path.is_file(), path
    store = keylime.settings.tpm_cert_store
    assert any(store.iterdir())
    assert keylime.settings.webhook_url == f"http://127.0.0.1:{keylime.webhook_port}/revocation"


def test_tenant_helper_reaches_the_verifier(keylime: Keylime) -> None:
    result = keylime.tenant("-c", "cvlist")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "uuids" in result.stdout + result.stderr
