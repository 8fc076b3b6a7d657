"""The TPM layer against a real swtpm: connection, PCRs, identity, quotes, credential activation, errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss import TPM2_HC

from edgeagent.cli.main import main
from edgeagent.errors import QuoteVerificationError, StateError, TpmError, TpmUnavailable
from edgeagent.tpm import Quote, Tpm, attest, provision, verify_quote
from edgeagent.tpm.credential import CredentialError
from edgeagent.tpm.pcr import extend_digest
from edgeagent.tpm.swtpm import SoftwareTpm

pytestmark = pytest.mark.integration


def _loaded(tpm: Tpm, first: int) -> int:
    with tpm.locked("probe") as ectx:
        return len(tpm._handles(ectx, first))


# ---------------------------------------------------------------- connection
def test_open_reports_banks_and_reads_pcrs(swtpm: SoftwareTpm) -> None:
    with Tpm.open(swtpm.tcti) as tpm:
        assert tpm.pcr_banks() == ["sha256"]
        values = tpm.pcr_read(range(24))
        assert sorted(values) == list(range(24))
        assert all(len(v) == 32 for v in values.values())


def test_extend_and_reset_follow_the_spec(fresh_swtpm: SoftwareTpm) -> None:
    digest = hashlib.sha256(b"edgeagent").digest()
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        before = tpm.pcr_read([23])[23]
        tpm.pcr_extend(23, {"sha256": digest})
        assert tpm.pcr_read([23])[23] == extend_digest(before, digest)
        tpm.pcr_reset(23)
        assert tpm.pcr_read([23])[23] == bytes(32)


@pytest.mark.parametrize(
    ("digests", "message"),
    [
        ({}, "missing sha256"),
        ({"sha256": b"short"}, "must be 32 bytes"),
        ({"sha256": bytes(32), "sha1": bytes(20)}, "'sha1' is not active"),
    ],
)
def test_extend_rejects_bad_digests(swtpm: SoftwareTpm, digests: dict[str, bytes], message: str) -> None:
    with Tpm.open(swtpm.tcti) as tpm, pytest.raises(TpmError, match=message):
        tpm.pcr_extend(23, digests)


def test_bad_pcr_requests_are_project_errors(swtpm: SoftwareTpm) -> None:
    with Tpm.open(swtpm.tcti) as tpm:
        with pytest.raises(TpmError, match="cannot be reset"):
            tpm.pcr_reset(0)
        with pytest.raises(TpmError, match="out of range"):
            tpm.pcr_read([24])
        with pytest.raises(TpmError, match="not active"):
            tpm.pcr_read([0], bank="sha1")


def test_leftover_objects_and_sessions_are_flushed_at_open(fresh_swtpm: SoftwareTpm) -> None:
    from tpm2_pytss import ESAPI, ESYS_TR, TPM2_ALG, TPM2_SE, TPM2B_PUBLIC, TPMT_SYM_DEF

    # A crashed predecessor: a loaded primary key and an open session, connection gone without flushing.
    crashed = ESAPI(fresh_swtpm.tcti)
    crashed.create_primary(None, TPM2B_PUBLIC.parse("ecc256"), ESYS_TR.OWNER)
    crashed.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC,
                               TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
    crashed.close()
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        assert _loaded(tpm, TPM2_HC.TRANSIENT_FIRST) == 0
        assert _loaded(tpm, TPM2_HC.LOADED_SESSION_FIRST) == 0


def test_missing_device_is_unavailable() -> None:
    with pytest.raises(TpmUnavailable, match="/dev/tpmrm9 does not exist"):
        Tpm.open("device:/dev/tpmrm9")


def test_stopped_swtpm_is_unavailable(fresh_swtpm: SoftwareTpm) -> None:
    tcti = fresh_swtpm.tcti
    fresh_swtpm.stop()
    with pytest.raises(TpmUnavailable, match="connection refused"):
        Tpm.open(tcti)


# ---------------------------------------------------------------- identity
def test_provision_twice_keeps_the_ak_name(swtpm: SoftwareTpm, tmp_path: Path) -> None:
    with Tpm.open(swtpm.tcti) as tpm:
        first = provision(tpm, tmp_path)
    with Tpm.open(swtpm.tcti) as tpm:  # a restart: EK re-derived, AK reloaded from the state dir
        second = provision(tpm, tmp_path)
    assert first.ak_name == second.ak_name and first.ak_public == second.ak_public
    assert first.ek_public == second.ek_public
    assert first.algorithms == {"hash": "sha256", "enc": "rsa", "sign": "rsassa"}
    for name in ("ak.pub", "ak.priv"):
        assert stat.S_IMODE((tmp_path / "tpm" / name).stat().st_mode) == 0o600


def test_ek_certificate_chains_to_the_local_ca(swtpm: SoftwareTpm, tmp_path: Path) -> None:
    with Tpm.open(swtpm.tcti) as tpm:
        ident = provision(tpm, tmp_path)
    assert ident.ek_cert is not None
    cert = x509.load_der_x509_certificate(ident.ek_cert)  # trimmed to the DER: no NV padding left
    assert cert.public_bytes(serialization.Encoding.DER) == ident.ek_cert
    ca = x509.load_pem_x509_certificate(swtpm.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    ek_key = attest.parse_public(ident.ek_public).key
    assert cert.public_key().public_numbers() == ek_key.public_numbers()


def test_ecc_ek_and_ecc_ak(swtpm: SoftwareTpm, tmp_path: Path) -> None:
    with Tpm.open(swtpm.tcti) as tpm:
        ident = provision(tpm, tmp_path, ek_type="ecc", ak_type="ecc")
    assert ident.algorithms == {"hash": "sha256", "enc": "ecc", "sign": "ecdsa"}
    assert ident.ek_cert is None  # swtpm_setup issues no certificate for the P-256 EK (only RSA-2048, P-384)
    assert isinstance(attest.parse_public(ident.ak_public).key, ec.EllipticCurvePublicKey)


def test_persisted_ak_of_another_type_is_refused(swtpm: SoftwareTpm, tmp_path: Path) -> None:
    with Tpm.open(swtpm.tcti) as tpm:
        provision(tpm, tmp_path, ak_type="ecc")
        with pytest.raises(StateError, match="is ecc, not rsa"):
            provision(tpm, tmp_path, ak_type="rsa")


def test_persisted_ak_under_another_ek_is_refused(swtpm: SoftwareTpm, tmp_path: Path) -> None:
    with Tpm.open(swtpm.tcti) as tpm:
        provision(tpm, tmp_path, ek_type="rsa", ak_type="ecc")
        with pytest.raises(StateError, match="does not load under this TPM's EK"):
            provision(tpm, tmp_path, ek_type="ecc", ak_type="ecc")


def test_corrupt_persisted_ak_is_a_state_error(swtpm: SoftwareTpm, tmp_path: Path) -> None:
    with Tpm.open(swtpm.tcti) as tpm:
        provision(tpm, tmp_path, ak_type="ecc")
    (tmp_path / "tpm" / "ak.pub").write_bytes(b"\x00\x10garbage")
    with Tpm.open(swtpm.tcti) as tpm, pytest.raises(StateError, match="corrupt"):
        provision(tpm, tmp_path, ak_type="ecc")


# ---------------------------------------------------------------- quotes
@pytest.mark.parametrize("ak_type", ["rsa", "ecc"])
def test_quote_verifies_and_tampering_is_caught(
    fresh_swtpm: SoftwareTpm, tmp_path: Path, ak_type: str
) -> None:
    nonce = b"0123456789abcdefghij"
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        ident = provision(tpm, tmp_path, ak_type=ak_type)
        tpm.pcr_extend(16, {"sha256": hashlib.sha256(b"nk pem").digest()})
        quote = tpm.quote(ident, nonce, [0, 1, 2, 16, 23, 10, 3, 4, 5, 6])
        assert quote.pcr_values == tpm.pcr_read([0, 1, 2, 3, 4, 5, 6, 10, 16, 23])
    assert quote.pcr_values[16] == extend_digest(bytes(32), hashlib.sha256(b"nk pem").digest())
    verify_quote(quote, ident.ak_public, nonce)
    assert Quote.from_keylime_string(quote.keylime_string()) == quote

    with pytest.raises(QuoteVerificationError, match="nonce"):
        verify_quote(quote, ident.ak_public, b"0123456789abcdefghiX")
    values = dict(quote.pcr_values)
    values[16] = bytes(32)
    with pytest.raises(QuoteVerificationError, match="PCR digest"):
        verify_quote(dataclasses.replace(quote, pcr_values=values), ident.ak_public, nonce)
    sig = bytearray(quote.signature)
    sig[-5] ^= 0x80
    with pytest.raises(QuoteVerificationError, match="signature"):
        verify_quote(dataclasses.replace(quote, signature=bytes(sig)), ident.ak_public, nonce)


def test_quote_rejects_bad_requests(swtpm: SoftwareTpm, tmp_path: Path) -> None:
    with Tpm.open(swtpm.tcti) as tpm:
        ident = provision(tpm, tmp_path, ak_type="ecc")
        with pytest.raises(TpmError, match="nonce"):
            tpm.quote(ident, b"x" * 65, [0])
        with pytest.raises(TpmError, match="not active"):
            tpm.quote(ident, b"n", [0], bank="sha1")


# ---------------------------------------------------------------- credential activation
def test_activate_credential_round_trip(swtpm: SoftwareTpm, tmp_path: Path) -> None:
    from tpm2_pytss import TPM2B_NAME, TPM2B_PUBLIC
    from tpm2_pytss.utils import credential_to_tools, make_credential

    challenge = b"K" * 32
    with Tpm.open(swtpm.tcti) as tpm:
        ident = provision(tpm, tmp_path)
        ek_public, _ = TPM2B_PUBLIC.unmarshal(ident.ek_public)
        blob = bytes(credential_to_tools(*make_credential(ek_public, challenge, TPM2B_NAME(ident.ak_name))))
        assert blob[:4] == b"\xba\xdc\xc0\xde"
        assert tpm.activate_credential(ident, blob) == challenge

        other_name = b"\x00\x0b" + hashlib.sha256(b"another AK").digest()
        wrong = bytes(credential_to_tools(*make_credential(ek_public, challenge, TPM2B_NAME(other_name))))
        with pytest.raises(CredentialError, match="refused"):
            tpm.activate_credential(ident, wrong)
        # Sessions are flushed even when activation fails: the TPM's 3 session slots stay free.
        assert _loaded(tpm, TPM2_HC.LOADED_SESSION_FIRST) == 0


# ---------------------------------------------------------------- CLI
def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


@pytest.fixture
def cli_base(swtpm: SoftwareTpm, tmp_path: Path) -> list[str]:
    config = tmp_path / "agent.toml"
    config.write_text("")
    return ["--config", str(config), "--state-dir", str(tmp_path / "state"), "--tpm", swtpm.tcti]


def test_cli_provision_info_quote(cli_base: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli([*cli_base, "tpm", "provision", "--json"], capsys)
    assert code == 0
    first = json.loads(out)
    assert first["ak"]["created"] is True
    code, out, _ = _cli([*cli_base, "tpm", "provision", "--json"], capsys)
    again = json.loads(out)
    assert again["ak"]["created"] is False and again["ak"]["name"] == first["ak"]["name"]

    code, out, _ = _cli([*cli_base, "tpm", "info", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["pcr_banks"] == ["sha256"]
    assert info["ak"]["name"] == first["ak"]["name"]
    assert info["ek"]["certificate"]["issuer"] == "CN=swtpm-localca"

    code, out, _ = _cli([*cli_base, "tpm", "quote", "--nonce", "abcdefghij0123456789", "--pcrs", "0-2,16",
                         "--json"], capsys)
    quote = json.loads(out)
    assert code == 0 and quote["verified"] is True and sorted(quote["pcrs"], key=int) == ["0", "1", "2", "16"]
    assert Quote.from_keylime_string(quote["keylime_quote"]).pcr_values[16].hex() == quote["pcrs"]["16"]

    code, out, _ = _cli([*cli_base, "tpm", "info"], capsys)
    assert code == 0 and "EK cert issuer" in out and "AK name" in out


def test_cli_bad_pcr_index_is_one_line(cli_base: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli([*cli_base, "tpm", "quote", "--pcrs", "24"], capsys)
    assert code == TpmError.exit_code
    assert err.strip() == "edgeagent: error: PCR index 24 out of range 0-23"


def test_cli_missing_device_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "edgeagent.cli.main", "--config", str(config), "--state-dir", str(tmp_path),
         "--tpm", "device:/dev/tpmrm9", "tpm", "info"], capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == TpmUnavailable.exit_code
    assert done.stderr.strip() == "edgeagent: error: TPM device /dev/tpmrm9 does not exist"
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_cli_stopped_swtpm_is_one_line(fresh_swtpm: SoftwareTpm, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("")
    tcti = fresh_swtpm.tcti
    fresh_swtpm.stop()
    code, out, err = _cli(["--config", str(config), "--state-dir", str(tmp_path), "--tpm", tcti, "tpm",
                           "provision"], capsys)
    assert code == TpmUnavailable.exit_code and out == ""
    assert len(err.strip().splitlines()) == 1 and "connection refused" in err and "Traceback" not in err
