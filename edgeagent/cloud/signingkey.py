"""The key that signs the join endpoint's revocation answers, kept in a Secret the controller owns.

A push-mode device gets the certificate of this key in its join material and later acts on a revocation
answer only if its signature verifies with it (`edgeagent.attest.enroll`). The key must therefore outlive
any one controller process: were it made in memory, a restarted controller (or the other replica taking
over the lease) would sign with a key no enrolled device holds, and those devices would refuse every
revocation until their renewal was refused. So it lives in one Secret (``SECRET_NAME`` in the controller's
namespace), made on first use with a single create: when two replicas race, the API server accepts one
create and the loser (409) reads the winner's key, so every replica signs with the same key. The controller
never updates or deletes it (RBAC: get on this one name; create, which Kubernetes cannot restrict by name).

One key for every push-mode device, not one per enrollment: a revocation names its agent and a device acts
only on one naming itself, so a shared key lets no device be revoked by another's answer; and one small
Secret scales to any number of devices, where a key per device in one Secret would hit its 1 MiB limit
at a few hundred. Deleting the Secret rotates the key, and devices enrolled before then refuse revocation
answers until they enroll again: do not delete it.

Threads: `SigningKey.get` may be called from any thread (reconciles, join requests); one lock makes the
first read-or-create happen once per process.
"""

from __future__ import annotations

import base64
import threading

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client as k8s

from edgeagent.errors import ClusterError, ConfigError
from edgeagent.kube import errors as kube_errors

SECRET_NAME = "edgeagent-join-signing-key"
KEY_FIELD = "revocation-key.pem"
"""PKCS#8 PEM of the RSA key in the Secret's data."""


class SigningKey:
    """The controller's revocation-answer key, read from (or created in) ``namespace/name`` once."""

    def __init__(self, api: k8s.ApiClient, namespace: str, name: str = SECRET_NAME) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self._key: rsa.RSAPrivateKey | None = None
        self._lock = threading.Lock()

    def get(self) -> rsa.RSAPrivateKey:
        """The key; raises ClusterError when the API server cannot be asked, ConfigError when the Secret
        holds something that is not an RSA key (replacing it would silently break every device)."""
        with self._lock:
            if self._key is None:
                self._key = self._read() or self._create()
            return self._key

    def _read(self) -> rsa.RSAPrivateKey | None:
        read = k8s.CoreV1Api(self.api).read_namespaced_secret
        where = f"{self.namespace}/{self.name}"
        secret = kube_errors.call(f"read Secret {where}", read, self.name, self.namespace, ok=(404,))
        if secret is None:
            return None
        data = (secret.data or {}).get(KEY_FIELD)
        try:
            key = serialization.load_pem_private_key(base64.b64decode(data or ""), password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"Secret {self.namespace}/{self.name} has no RSA private key in {KEY_FIELD}: "
                              "restore it from a backup (a new key would not verify on enrolled devices)")
        return key

    def _create(self) -> rsa.RSAPrivateKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        body = k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace,
                                      labels={"app.kubernetes.io/part-of": "edgeagent"}),
            type="Opaque",
            immutable=True,
            data={KEY_FIELD: base64.b64encode(pem).decode()},
        )
        create = k8s.CoreV1Api(self.api).create_namespaced_secret
        made = kube_errors.call(f"create Secret {self.namespace}/{self.name}", create, self.namespace, body,
                                ok=(409,))
        if made is not None:
            return key
        existing = self._read()  # another replica created it first: its key is the one
        if existing is None:
            raise ClusterError(f"Secret {self.namespace}/{self.name} made by another replica, then deleted")
        return existing
