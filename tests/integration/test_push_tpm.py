"""The TPM pieces of push mode against real swtpms: MakeCredential in software (the cluster side's, no
libtss2) opened by TPM2_ActivateCredential, and refused by any other TPM or AK; TPM2_Certify of the AK by
itself (Keylime's proof of possession), checked by our pure verifier."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeagent.protocol import push
from edgeagent.tpm import Tpm, provision
from edgeagent.tpm.credential import CredentialError, make_credential
from edgeagent.tpm.swtpm import SoftwareTpm

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def other_swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftwareTpm]:
    """A TPM of its own (its own EK), not a clone of the session's template."""
    tpm = SoftwareTpm(tmp_path_factory.mktemp("push-other-swtpm")).setup()
    tpm.start()
    try:
        yield tpm
    finally:
        tpm.stop()


def test_software_make_credential_opens_only_in_its_tpm(
    swtpm: SoftwareTpm, other_swtpm: SoftwareTpm, tmp_path: Path
) -> None:
    secret = os.urandom(32)
    with Tpm.open(swtpm.tcti) as tpm:
        ident = provision(tpm, tmp_path / "mine")
        blob = make_credential(ident.ek_public, ident.ak_name, secret)
        assert tpm.activate_credential(ident, blob) == secret
        # the same EK, another AK name: the integrity HMAC does not verify
        other_ak = make_credential(ident.ek_public, b"\x00\x0b" + bytes(32), secret)
        with pytest.raises(CredentialError, match="refused"):
            tpm.activate_credential(ident, other_ak)
    with Tpm.open(other_swtpm.tcti) as tpm:
        theirs = provision(tpm, tmp_path / "theirs")
        assert theirs.ek_public != ident.ek_public
        with pytest.raises(CredentialError, match="refused"):
            tpm.activate_credential(theirs, blob)


def test_make_credential_refuses_what_it_cannot_protect(swtpm: SoftwareTpm, tmp_path: Path) -> None:
    with Tpm.open(swtpm.tcti) as tpm:
        ident = provision(tpm, tmp_path)
    with pytest.raises(CredentialError, match="1-64 bytes"):
        make_credential(ident.ek_public, ident.ak_name, b"x" * 65)
    with pytest.raises(CredentialError, match="not AES-CFB"):
        make_credential(ident.ak_public, ident.ak_name, b"x")  # a signing key, not a storage key
    with pytest.raises(CredentialError, match="EK public area"):
        make_credential(b"\x00\x04junk", ident.ak_name, b"x")


def test_certify_self_is_keylimes_proof_of_possession(swtpm: SoftwareTpm, tmp_path: Path) -> None:
    challenge = os.urandom(16)
    with Tpm.open(swtpm.tcti) as tpm:
        ident = provision(tpm, tmp_path)
        message, signature = tpm.certify_ak(ident, challenge)
    push.verify_pop(ident.ak_public, message, signature, challenge)
    with pytest.raises(push.PushError, match="challenge"):
        push.verify_pop(ident.ak_public, message, signature, os.urandom(16))
    with pytest.raises(push.PushError, match="signature"):
        push.verify_pop(ident.ak_public, message, signature[:-1] + bytes([signature[-1] ^ 1]), challenge)


def test_join_material_sealed_for_another_tpm_does_not_open(
    swtpm: SoftwareTpm, other_swtpm: SoftwareTpm, tmp_path: Path
) -> None:
    """The cluster side's seal (pure) and the device's open (ActivateCredential, then AES-GCM)."""
    from edgeagent.attest.push import open_join
    from edgeagent.tpm import attest

    with Tpm.open(other_swtpm.tcti) as tpm:
        theirs = provision(tpm, tmp_path / "theirs")
        for_them = push.seal(agent_id="a1", ek_public=theirs.ek_public,
                             ak_name=attest.object_name(theirs.ak_public), material=b"join material")
        assert open_join(tpm, theirs, for_them) == b"join material"
    with Tpm.open(swtpm.tcti) as tpm:
        mine = provision(tpm, tmp_path / "mine")
        with pytest.raises(CredentialError, match="refused"):
            open_join(tpm, mine, for_them)
        # the name the registrar computes from the registered AK is the name the TPM checks
        assert attest.object_name(mine.ak_public) == mine.ak_name
