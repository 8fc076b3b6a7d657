"""Is this the TPM the cluster expects? The EK certificate against the vendor CA store and the EdgeNode pin.

Keylime's registrar accepts any EK; deciding which TPM may become which node is the tenant's job, so the
controller does it before it adds an agent to the verifier. Two independent checks, both required:
- the EK certificate chains to a certificate in the configured vendor CA store (a directory of PEM/DER
  files: the TPM manufacturers' roots and intermediates, or the swtpm local CA in tests);
- the EK matches the EdgeNode's pin: sha256 of the EK certificate DER (`ekCertSHA256`), or of the EK
  TPM2B_PUBLIC (`ekPublicSHA256`) for TPMs without a certificate.
A TPM without an EK certificate passes only an `ekPublicSHA256` pin, and only if `require_ek_cert` is off.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from edgeagent.errors import AttestationError, ConfigError


class EkRejected(AttestationError):
    """The EK is not trusted for this EdgeNode (untrusted CA, wrong pin, no certificate)."""


@dataclass(frozen=True)
class EkVerdict:
    """The accepted EK's fingerprints and the CA that vouched for it (None: pinned public key only)."""

    ek_cert_sha256: str | None
    ek_public_sha256: str
    issuer: str | None


def load_ca_store(path: Path) -> list[x509.Certificate]:
    """Every certificate in a file or directory (PEM bundles or DER files)."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    certs: list[x509.Certificate] = []
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read EK CA store {f}: {e.strerror}") from None
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                certs.extend(x509.load_pem_x509_certificates(data))
            else:
                certs.append(x509.load_der_x509_certificate(data))
        except ValueError:
            continue  # READMEs, keys and other files that often sit next to vendor certificates
    if not certs:
        raise ConfigError(f"EK CA store {path} holds no certificate")
    return certs


def trusted_issuer(cert: x509.Certificate, store: list[x509.Certificate]) -> str:
    """The subject of the store certificate that signed ``cert``; raises EkRejected if none did.

    Every certificate in the store is a trust anchor (vendor intermediates included), as in Keylime's
    `tpm_cert_store`. Validity periods are not enforced: EK certificates routinely outlive their issuers'
    notAfter and TCG guidance (and Keylime's tenant) accept them.
    """
    for ca in store:
        if cert.issuer != ca.subject:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return ca.subject.rfc4514_string()
    raise EkRejected(f"EK certificate issuer {cert.issuer.rfc4514_string()!r} is not in the EK CA store")


def check(
    *,
    ek_tpm: bytes,
    ekcert_der: bytes | None,
    store: list[x509.Certificate],
    pin_cert_sha256: str | None,
    pin_public_sha256: str | None,
    require_ek_cert: bool = True,
) -> EkVerdict:
    """Accepts the EK only if it chains to the store (when it has a certificate) and matches the pin."""
    if not pin_cert_sha256 and not pin_public_sha256:
        raise EkRejected("the EdgeNode pins no EK (spec.ekCertSHA256 or spec.ekPublicSHA256)")
    public_sha = hashlib.sha256(ek_tpm).hexdigest()
    cert_sha: str | None = None
    issuer: str | None = None
    if ekcert_der is None:
        if require_ek_cert:
            raise EkRejected("the TPM presented no EK certificate and one is required")
        if not pin_public_sha256:
            raise EkRejected("the TPM has no EK certificate and the EdgeNode pins only a certificate")
    else:
        try:
            cert = x509.load_der_x509_certificate(ekcert_der)
        except ValueError:
            raise EkRejected("EK certificate is not valid DER") from None
        issuer = trusted_issuer(cert, store)
        cert_sha = hashlib.sha256(ekcert_der).hexdigest()
        _check_cert_key_is_ek(cert, ek_tpm)
    if pin_cert_sha256 and not (cert_sha and hmac.compare_digest(cert_sha, pin_cert_sha256.lower())):
        raise EkRejected(f"EK certificate sha256 {cert_sha or '(none)'} is not the pinned {pin_cert_sha256}")
    if pin_public_sha256 and not hmac.compare_digest(public_sha, pin_public_sha256.lower()):
        raise EkRejected(f"EK public sha256 {public_sha} is not the pinned {pin_public_sha256}")
    return EkVerdict(cert_sha, public_sha, issuer)


def _check_cert_key_is_ek(cert: x509.Certificate, ek_tpm: bytes) -> None:
    """The certificate must certify the EK the agent registered, or a genuine cert could front any key."""
    from edgeagent.tpm import attest

    try:
        ek = attest.parse_public(ek_tpm)
    except attest.StructureError as e:
        raise EkRejected(f"registered EK is not a TPM2B_PUBLIC: {e}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, spki) != ek.key.public_bytes(der, spki):
        raise EkRejected("EK certificate certifies a different key than the registered EK")
