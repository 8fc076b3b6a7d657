"""The agent API's TLS identity and server context.

Keylime pins the agent's server certificate: the agent sends it to the registrar as ``mtls_cert`` and the
verifier and tenant trust exactly that certificate when they connect. So it is self-signed, created once and
kept (key 0600): a new certificate after a restart would make the verifier refuse the agent until it
re-registers. Clients must present a certificate from the Keylime CA (``cv_ca/cacert.crt``): the verifier and
tenant do, nobody else may ask for quotes or push key shares.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeagent import certs
from edgeagent.attest.secrets import read_private, write_private
from edgeagent.errors import ConfigError, StateError

CERT_FILE = "agent-tls.crt"
KEY_FILE = "agent-tls.key"
CERT_DAYS = 3650


@dataclasses.dataclass(frozen=True)
class ServerIdentity:
    cert_path: Path
    key_path: Path
    cert_pem: str


def _names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    return names


def load_or_create(directory: Path, *, uuid: str, host: str) -> ServerIdentity:
    """The agent's server certificate for ``host`` (IP SAN), created the first time; kept while it matches."""
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    cert_raw, key_raw = read_private(cert_path), read_private(key_path)
    if cert_raw is not None and key_raw is not None:
        try:
            cert = x509.load_pem_x509_certificate(cert_raw)
        except ValueError:
            raise StateError(f"{cert_path} is not a PEM certificate; remove it to make a new one") from None
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        subject = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if all(n in san for n in _names(host)) and subject and subject[0].value == uuid:
            return ServerIdentity(cert_path, key_path, cert_raw.decode("ascii"))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs.build(uuid, signer=key, lifetime=dt.timedelta(days=CERT_DAYS), ca=False,
                       extensions=[(x509.SubjectAlternativeName(_names(host)), False)])
    write_private(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    write_private(cert_path, pem)
    return ServerIdentity(cert_path, key_path, pem.decode("ascii"))


def server_context(identity: ServerIdentity, client_ca: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context that requires a client certificate issued by ``client_ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(str(identity.cert_path), str(identity.key_path))
    except (OSError, ssl.SSLError) as e:
        raise StateError(f"cannot load the agent TLS certificate {identity.cert_path}: {e}") from None
    try:
        ctx.load_verify_locations(cafile=str(client_ca))
    except FileNotFoundError:
        raise ConfigError(f"Keylime CA {client_ca} does not exist (enroll.keylime_ca)") from None
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load the Keylime CA {client_ca}: {e}") from None
    return ctx
