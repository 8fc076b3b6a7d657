"""A throwaway etcd + kube-apiserver on loopback for benchmarks that need a real API server.

The smallest control plane the controller benchmark needs: no controller-manager, a static admin token
(``--token-auth-file``), the serving certificate kube-apiserver generates for itself in ``--cert-dir`` (the
kubeconfig trusts exactly that file). Binaries: kube-apiserver from ``make kube``
(``$EDGEAGENT_CACHE/kubernetes-1.20.2/bin``), etcd from Debian's etcd-server.

The test suite's ``kube_cluster`` fixture (tests/fixtures/kube.py) is the full version with a PKI and
kube-controller-manager; this one exists because benchmarks run from the installed package, without tests/.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeagent.errors import EdgeAgentError, PeerUnreachable

KUBE_VERSION = "1.20.2"


def kube_bin_dir() -> Path:
    cache = Path(os.environ.get("EDGEAGENT_CACHE", Path.home() / ".cache" / "edgeagent"))
    return cache / f"kubernetes-{KUBE_VERSION}" / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """etcd and kube-apiserver as process groups under ``root``; ``kubeconfig`` is an admin kubeconfig."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.etcd: subprocess.Popen[bytes] | None = None
        self.apiserver: subprocess.Popen[bytes] | None = None
        self.api_port = _free_port()
        self.kubeconfig = root / "admin.kubeconfig"
        self.token = secrets.token_hex(16)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, timeout: float = 60.0) -> None:
        """Raises EdgeAgentError when a binary is missing, PeerUnreachable when a process does not come up."""
        etcd = shutil.which("etcd")
        apiserver = kube_bin_dir() / "kube-apiserver"
        if etcd is None:
            raise EdgeAgentError("etcd is not installed (Debian etcd-server; scripts/install-system-deps.sh)")
        if not apiserver.exists():
            raise EdgeAgentError(f"{apiserver} missing: run `make kube` (scripts/build-kubernetes.sh)")
        self.root.mkdir(parents=True, exist_ok=True)
        etcd_port, peer_port = _free_port(), _free_port()
        client_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
        self.etcd = self._spawn(
            [
                etcd,
                "--data-dir",
                str(self.root / "etcd"),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                f"default={peer_url}",
                "--log-level",
                "warn",
            ],
            "etcd",
        )
        self._wait(lambda: self._http_ok(f"{client_url}/health"), timeout, "etcd", self.etcd)
        key = ec.generate_private_key(ec.SECP256R1())
        sa_key, sa_pub = self.root / "sa.key", self.root / "sa.pub"
        sa_key.touch(mode=0o600)
        sa_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        sa_pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        tokens = self.root / "tokens.csv"
        tokens.touch(mode=0o600)
        tokens.write_text(f'{self.token},bench-admin,bench-admin,"system:masters"\n')
        certs = self.root / "certs"
        self.apiserver = self._spawn(
            [
                str(apiserver),
                f"--etcd-servers={client_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                "--insecure-port=0",
                "--advertise-address=127.0.0.1",
                f"--cert-dir={certs}",
                f"--token-auth-file={tokens}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--logtostderr=true",
                "--v=0",
            ],
            "kube-apiserver",
        )
        self._wait(
            lambda: (certs / "apiserver.crt").exists() and self._api_ready(),
            timeout,
            "kube-apiserver",
            self.apiserver,
        )
        self._write_kubeconfig(certs / "apiserver.crt")

    def _write_kubeconfig(self, ca: Path) -> None:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "bench",
                    "cluster": {
                        "server": f"https://127.0.0.1:{self.api_port}",
                        "certificate-authority": str(ca),
                    },
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "admin"}}],
            "current-context": "bench",
        }
        self.kubeconfig.touch(mode=0o600)
        self.kubeconfig.write_text(json.dumps(cfg, indent=2))  # JSON is valid kubeconfig YAML

    def stop(self) -> None:
        for proc in (self.apiserver, self.etcd):
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.apiserver = self.etcd = None

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            return subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        finally:
            log.close()

    def _wait(self, ready: object, timeout: float, name: str, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise PeerUnreachable(
                    f"{name} exited with {proc.returncode}; see {self.root / (name + '.log')}"
                )
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.1)
        raise PeerUnreachable(f"{name} not ready after {timeout:.0f} s; see {self.root / (name + '.log')}")

    def _api_ready(self) -> bool:
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.root / "certs" / "apiserver.crt"))
        req = urllib.request.Request(
            f"https://127.0.0.1:{self.api_port}/readyz", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False
