"""EK checks: the certificate must chain to the vendor store, certify the registered EK, and match the pin."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edgeagent import certs
from edgeagent.cloud import ekcheck
from edgeagent.cloud.ekcheck import EkRejected
from edgeagent.errors import ConfigError


def tpm2b_public_rsa(key: rsa.RSAPublicKey) -> bytes:
    """TPM2B_PUBLIC of an RSA-2048 storage key (the EK template's shape), marshalled per TPM 2.0 Part 2."""
    modulus = key.public_numbers().n.to_bytes(256, "big")
    area = struct.pack(">HHI", 0x0001, 0x000B, 0x000300B2) + struct.pack(">H", 0)
    area += struct.pack(">HHH", 0x0006, 128, 0x0043) + struct.pack(">HHI", 0x0010, 2048, 0)
    area += struct.pack(">H", len(modulus)) + modulus
    return struct.pack(">H", len(area)) + area


def _ca(cn: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, certs.build(cn, signer=key, ca=True)


def _ek_cert(ca_key: rsa.RSAPrivateKey, ca: x509.Certificate, ek: rsa.RSAPublicKey) -> bytes:
    cert = certs.build(x509.Name([]), signer=ca_key, public_key=ek, issuer=ca.subject)
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def world() -> dict:
    ca_key, ca = _ca("Vendor EK Root")
    rogue_key, rogue = _ca("Vendor EK Root")  # same name, different key: a lookalike
    ek = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return {
        "ca": ca,
        "ek_tpm": tpm2b_public_rsa(ek),
        "cert": _ek_cert(ca_key, ca, ek),
        "rogue_cert": _ek_cert(rogue_key, rogue, ek),
        "other_key_cert": _ek_cert(ca_key, ca, other),
    }


def _check(w: dict, der: bytes | None, **pins: str | None) -> ekcheck.EkVerdict:
    return ekcheck.check(
        ek_tpm=w["ek_tpm"],
        ekcert_der=der,
        store=[w["ca"]],
        pin_cert_sha256=pins.get("cert"),
        pin_public_sha256=pins.get("public"),
        require_ek_cert=pins.get("require", True) is not False,
    )


def test_trusted_and_pinned(world: dict) -> None:
    v = _check(world, world["cert"], cert=hashlib.sha256(world["cert"]).hexdigest())
    assert v.issuer == "CN=Vendor EK Root"
    assert v.ek_public_sha256 == hashlib.sha256(world["ek_tpm"]).hexdigest()


def test_public_key_pin(world: dict) -> None:
    _check(world, world["cert"], public=hashlib.sha256(world["ek_tpm"]).hexdigest())


def test_not_pinned(world: dict) -> None:
    with pytest.raises(EkRejected, match="pins no EK"):
        _check(world, world["cert"])
    with pytest.raises(EkRejected, match="is not the pinned"):
        _check(world, world["cert"], cert="00" * 32)


def test_untrusted_ca_even_with_the_same_name(world: dict) -> None:
    with pytest.raises(EkRejected, match="not in the EK CA store"):
        _check(world, world["rogue_cert"], cert=hashlib.sha256(world["rogue_cert"]).hexdigest())


def test_certificate_for_another_key(world: dict) -> None:
    with pytest.raises(EkRejected, match="different key"):
        _check(world, world["other_key_cert"], cert=hashlib.sha256(world["other_key_cert"]).hexdigest())


def test_missing_certificate(world: dict) -> None:
    with pytest.raises(EkRejected, match="no EK certificate"):
        _check(world, None, public=hashlib.sha256(world["ek_tpm"]).hexdigest())
    # allowed only with a public-key pin and require_ek_cert off
    v = ekcheck.check(
        ek_tpm=world["ek_tpm"],
        ekcert_der=None,
        store=[world["ca"]],
        pin_cert_sha256=None,
        pin_public_sha256=hashlib.sha256(world["ek_tpm"]).hexdigest(),
        require_ek_cert=False,
    )
    assert v.issuer is None


def test_garbage_certificate(world: dict) -> None:
    with pytest.raises(EkRejected, match="not valid DER"):
        _check(world, b"\x30\x03junk", cert="00" * 32)


def test_ca_store_loading(tmp_path: Path, world: dict) -> None:
    (tmp_path / "root.pem").write_bytes(world["ca"].public_bytes(serialization.Encoding.PEM))
    (tmp_path / "root.der").write_bytes(world["ca"].public_bytes(serialization.Encoding.DER))
    (tmp_path / "README").write_text("vendor roots")
    assert len(ekcheck.load_ca_store(tmp_path)) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no certificate"):
        ekcheck.load_ca_store(empty)
