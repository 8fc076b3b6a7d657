"""X.509 certificates built with `cryptography`: self-signed ones (the agent's TLS identity, the revocation
key's carrier), CAs and the leaves they issue (the test clusters' PKI). One builder, so every certificate the
project makes has the same defaults: SHA-256, a random serial, notBefore backdated a little for clock skew.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import NameOID

BACKDATE = dt.timedelta(minutes=5)
"""How far notBefore lies before now: a peer whose clock is a little behind still accepts the certificate."""


def name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    """O=... (each organization, e.g. Kubernetes groups), then CN."""
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def build(
    subject: x509.Name | str,
    *,
    signer: CertificateIssuerPrivateKeyTypes,
    public_key: CertificatePublicKeyTypes | None = None,
    issuer: x509.Name | None = None,
    lifetime: dt.timedelta = dt.timedelta(days=1),
    backdate: dt.timedelta = BACKDATE,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    ca: bool | None = None,
    extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    """A certificate for ``public_key`` (default: the signer's own, i.e. self-signed) signed by ``signer``.

    ``issuer`` defaults to ``subject`` (self-signed). Validity: ``not_before`` (default now - ``backdate``)
    to ``not_after`` (default now + ``lifetime``). ``ca`` adds a critical BasicConstraints (None: none);
    ``extensions`` are (extension, critical) pairs, added in order.
    """
    subject_name = name(subject) if isinstance(subject, str) else subject
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name)
        .issuer_name(issuer or subject_name)
        .public_key(public_key or signer.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - backdate)
        .not_valid_after(not_after or now + lifetime)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())
