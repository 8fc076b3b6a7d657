"""Throwaway PKI for the test Kubernetes cluster, made with `cryptography`.

ECDSA P-256 keys throughout: kube-apiserver and kube-controller-manager 1.20 accept them, and they are made in
milliseconds (RSA-2048 costs ~50 ms each). Testbed-only: a real cluster brings its own CA.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgeagent import certs

_VALIDITY = datetime.timedelta(days=2)
_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Issued:
    """A key and its certificate; `cert_pem`/`key_pem` as PEM bytes."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    def write(self, cert_path: Path, key_path: Path) -> None:
        cert_path.write_bytes(self.cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key_pem)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def make_ca(cn: str) -> Issued:
    key = new_key()
    usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False)
    cert = certs.build(cn, signer=key, backdate=_SKEW, lifetime=_VALIDITY, ca=True, extensions=[
        (usage, True), (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)])
    return Issued(key, cert)


def issue(ca: Issued, cn: str, *, orgs: Sequence[str] = (), server: bool = False, client: bool = False,
          ips: Sequence[str] = (), dns: Sequence[str] = ()) -> Issued:
    """A leaf certificate from ``ca`` for a TLS server (with SANs) and/or a client (CN = user, O = groups)."""
    key = new_key()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    usage = x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
                          content_commitment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False)
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (usage, True), (x509.ExtendedKeyUsage(usages), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False)]
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    sans += [x509.DNSName(d) for d in dns]
    if sans:
        extensions.append((x509.SubjectAlternativeName(sans), False))
    cert = certs.build(certs.name(cn, orgs), signer=ca.key, public_key=key.public_key(),
                       issuer=ca.cert.subject, backdate=_SKEW, lifetime=_VALIDITY, ca=False,
                       extensions=extensions)
    return Issued(key, cert)


def csr_pem(key: ec.EllipticCurvePrivateKey, cn: str, orgs: Sequence[str] = ()) -> bytes:
    """A PKCS#10 request, as a kubelet (or `edgeagent enroll`) sends to the CSR API."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(certs.name(cn, orgs))
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)
