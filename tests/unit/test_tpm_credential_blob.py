"""tpm2-tools credential blobs (what Keylime's registrar sends) and the CLI's PCR lists, without a TPM."""

from __future__ import annotations

import struct

import pytest
import typer

from edgeagent.cli.tpm import parse_pcr_list
from edgeagent.tpm.credential import CredentialError, parse_tools_credential


def blob(credential: bytes, secret: bytes, *, magic: int = 0xBADCC0DE, version: int = 1) -> bytes:
    return (struct.pack(">II", magic, version) + struct.pack(">H", len(credential)) + credential
            + struct.pack(">H", len(secret)) + secret)


def test_parses_credential_and_secret() -> None:
    assert parse_tools_credential(blob(b"C" * 70, b"S" * 256)) == (b"C" * 70, b"S" * 256)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "header"),
    (blob(b"C", b"S", magic=0xDEADBEEF), "magic"),
    (blob(b"C", b"S", version=2), "version"),
    (blob(b"C" * 70, b"S" * 256)[:-1], "truncated in secret"),
    (blob(b"C" * 70, b"S" * 256)[:20], "truncated in credentialBlob"),
    (blob(b"C", b"S") + b"x", "trailing"),
])
def test_malformed_blobs_are_credential_errors(data: bytes, message: str) -> None:
    with pytest.raises(CredentialError, match=message):
        parse_tools_credential(data)


@pytest.mark.parametrize(
    ("text", "want"), [("0", [0]), ("16,0-2", [0, 1, 2, 16]), ("0-7, 7,23", [*range(8), 23])]
)
def test_pcr_lists(text: str, want: list[int]) -> None:
    assert parse_pcr_list(text) == want


@pytest.mark.parametrize("text", ["", "a", "1-", "1,,x", "3-1x"])
def test_bad_pcr_lists(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_pcr_list(text)
