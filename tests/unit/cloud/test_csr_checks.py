"""The approver's checks that come before the TPM quote: each bad CSR is denied with its own reason.

The quote-based binding itself is checked against a real swtpm AK in
tests/integration/cloud/test_enrollment.py.
"""

from __future__ import annotations

import json
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeagent.cloud import crd
from edgeagent.cloud.csr import Approver, CsrView, NonceLedger
from edgeagent.protocol import nodebinding

NODE = "edge1"
UUID = "agent-1"


def _csr_pem(cn: str, orgs: list[str]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def _view(
    *,
    cn: str = f"system:node:{NODE}",
    orgs: list[str] | None = None,
    user: str = "system:bootstrap:abcdef",
    groups: tuple[str, ...] = ("system:bootstrappers",),
    nonce: str | None = None,
    signer: str = nodebinding.KUBELET_SIGNER,
    usages: tuple[str, ...] = nodebinding.KUBELET_USAGES,
    expiration: int | None = None,
    annotation: str | None = "default",
) -> CsrView:
    if annotation == "default":
        annotation = json.dumps(
            {"agentUUID": UUID, "nonce": nonce or nodebinding.make_nonce(), "quote": "rAAA:BBB:CCC"}
        )
    return CsrView(
        name="edgeagent-edge1-1",
        signer=signer,
        request_pem=_csr_pem(cn, ["system:nodes"] if orgs is None else orgs),
        usages=usages,
        username=user,
        groups=groups,
        annotations={} if annotation is None else {nodebinding.BINDING_ANNOTATION: annotation},
        expiration_seconds=expiration,
    )


def _edgenode(**status: object) -> crd.EdgeNode:
    base = {"phase": "Attested", "attested": True, "bootstrapTokenID": "abcdef"}
    return crd.EdgeNode(NODE, crd.EdgeNodeSpec(agent_uuid=UUID, ek_cert_sha256="ab" * 32), {**base, **status})


@pytest.fixture
def approver() -> Approver:
    def unreachable(_: str) -> None:
        raise AssertionError("checks before the quote must not reach Keylime")

    return Approver(
        registrar_agent=unreachable,
        verifier_state=unreachable,
        check_ek=unreachable,
        max_lifetime=3600,
        max_binding_age=300,
    )


@pytest.mark.parametrize(
    ("view", "reason"),
    [
        (dict(signer="kubernetes.io/kube-apiserver-client"), "WrongSigner"),
        (dict(cn="system:node:other"), "BadSubject"),
        (dict(orgs=["system:masters"]), "BadSubject"),
        (dict(orgs=["system:nodes", "system:masters"]), "BadSubject"),
        (dict(usages=("digital signature", "client auth", "server auth")), "BadUsages"),
        (dict(expiration=7200), "LifetimeTooLong"),
        (dict(user="system:bootstrap:zzzzzz"), "WrongRequester"),
        (dict(user="system:node:other", groups=("system:nodes",)), "WrongRequester"),
        (dict(user="system:node:edge1", groups=("system:authenticated",)), "WrongRequester"),
        (dict(annotation=None), "NoBinding"),
        (dict(annotation="{not json"), "BadBinding"),
        (dict(annotation=json.dumps({"agentUUID": UUID, "nonce": 5, "quote": "r"})), "BadBinding"),
        (
            dict(
                annotation=json.dumps(
                    {"agentUUID": "agent-2", "nonce": nodebinding.make_nonce(), "quote": "r"})
            ),
            "WrongAgent",
        ),
        (dict(nonce="abcdefghij0123456789"), "BadBinding"),
        # made when the test runs, not at collection (a long suite would move them back into the window)
        (dict(nonce=lambda: nodebinding.make_nonce(time.time() - 301)), "StaleBinding"),
        (dict(nonce=lambda: nodebinding.make_nonce(time.time() + 600)), "StaleBinding"),
    ],
)
def test_denied_before_the_quote(approver: Approver, view: dict, reason: str) -> None:
    view = {k: v() if callable(v) else v for k, v in view.items()}
    decision = approver.decide(_view(**view), _edgenode())
    assert not decision.approve
    assert decision.reason == reason, decision.message


def test_not_attested_nodes_get_nothing(approver: Approver) -> None:
    for status in ({"phase": "Unattested", "attested": False}, {"phase": "Pending", "attested": False}):
        decision = approver.decide(_view(), _edgenode(**status))
        assert (decision.approve, decision.reason) == (False, "NotAttested")


def test_binding_older_than_the_last_accepted_is_a_replay(approver: Approver) -> None:
    old = nodebinding.make_nonce(time.time() - 60)
    decision = approver.decide(_view(nonce=old), _edgenode(bindingTime=int(time.time()) - 10))
    assert decision.reason == "ReplayedBinding"
    same = nodebinding.make_nonce()
    decision = approver.decide(_view(nonce=same), _edgenode(bindingTime=int(time.time()), bindingNonce=same))
    assert decision.reason == "ReplayedBinding"


def test_renewal_by_the_node_itself_passes_the_requester_check(approver: Approver) -> None:
    view = _view(user=f"system:node:{NODE}", groups=("system:nodes", "system:authenticated"))
    with pytest.raises(AssertionError, match="must not reach Keylime"):
        approver.decide(view, _edgenode())  # got past every local check: next is the registrar


def test_nonce_ledger() -> None:
    ledger = NonceLedger(max_age=10)
    assert ledger.claim("n1", now=100)
    assert not ledger.claim("n1", now=101)
    assert ledger.claim("n1", now=200)  # forgotten long after it could pass the age check anyway
