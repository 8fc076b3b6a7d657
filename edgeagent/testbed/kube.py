"""A real Kubernetes control plane on loopback: etcd + kube-apiserver (+ kube-controller-manager), 1.36 (the
default) or 1.20 (`EDGEAGENT_KUBE=1.20`).

`KubeCluster` runs on 127.0.0.1 free ports with a throwaway PKI: the cluster CA (serves the API), a separate
CSR signing CA for kube-controller-manager with a short `--cluster-signing-duration` (`signing_duration`,
1 h by default), an admin user (O=system:masters) in `kubeconfig` (client certificate) and, with
``admin_token=True``, a static bearer token for the same group (`token`, `token_kubeconfig`). The API server
trusts client certificates from both CAs, so a certificate signed through the CSR API authenticates.
`start(controller_manager=False)` gives a bare API server (no CSR signing) for what needs only the API.

kube-controller-manager runs only the controllers the project's tests rely on: CSR signing and cleaning,
bootstrap tokens, service-account tokens, namespace deletion. Not `csrapproving`: it would auto-approve
kubelet CSRs that the admin user creates, and approval is what the attestation controller decides.

Binaries: `make kube-current` (scripts/build-kubernetes-current.sh) caches 1.36.5 with its own etcd 3.6 in
the same bin dir; `make kube` (scripts/build-kubernetes.sh) caches 1.20.2, whose etcd is Debian's etcd-server
(3.4), for `EDGEAGENT_KUBE=1.20`. Which flags a
component gets follows the version its binary reports (`binary_version`), not the variable, so a flag that a
release removed (`--insecure-port`, kube-controller-manager's `--port`, klog's `--logtostderr`) is passed only
to the releases that still have it.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from edgeagent.errors import ConfigError
from edgeagent.kube import kubeconfig as kubeconfig_file
from edgeagent.testbed import kube_pki, procs

KUBE_RELEASES = {"1.20": "1.20.2", "1.36": "1.36.5"}
"""Releases the testbed runs, by the minor version `EDGEAGENT_KUBE` names; each has its own build script."""
KUBE_BUILD = {"1.20": "make kube (scripts/build-kubernetes.sh)",
              "1.36": "make kube-current (scripts/build-kubernetes-current.sh)"}
DEFAULT_KUBE = "1.36"
KUBE_VERSION = KUBE_RELEASES[DEFAULT_KUBE]
"""The release run when `EDGEAGENT_KUBE` is unset."""
KCM_CONTROLLERS = ("csrsigning", "csrcleaner", "bootstrapsigner", "tokencleaner", "serviceaccount-token",
                   "serviceaccount", "namespace")
NODE_KCM_CONTROLLERS = ("nodelifecycle", "taint-eviction-controller", "podgc", "garbagecollector",
                        "deployment", "replicaset", "endpointslice", "persistentvolume-binder",
                        "pvc-protection", "root-ca-cert-publisher")
"""Added when the cluster serves real kubelets (``nodes=True``): Node health, eviction of the pods of a node
tainted NoExecute (its own controller since 1.29; part of nodelifecycle before), and what running workloads
from a chart needs (Deployments, owner-based garbage collection, the kube-root-ca.crt ConfigMap, claims that
can be deleted: pvc-protection removes their finalizer once no pod uses them)."""


def kube_release() -> str:
    """The release selected by `EDGEAGENT_KUBE` (a minor version such as ``1.20``), 1.36 when unset."""
    minor = os.environ.get("EDGEAGENT_KUBE", "").strip() or DEFAULT_KUBE
    if minor not in KUBE_RELEASES:
        raise ConfigError(f"EDGEAGENT_KUBE={minor!r}: the testbed runs {', '.join(sorted(KUBE_RELEASES))}")
    return minor


def kube_bin_dir() -> Path:
    cache = Path(os.environ.get("EDGEAGENT_CACHE", Path.home() / ".cache" / "edgeagent"))
    return cache / f"kubernetes-{KUBE_RELEASES[kube_release()]}" / "bin"


def binary_version(exe: Path) -> tuple[int, int]:
    """(major, minor) that a Kubernetes binary reports with ``--version`` ("Kubernetes v1.36.5")."""
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        raise ConfigError(f"{exe}: cannot run: {exc}") from exc
    match = re.search(r"Kubernetes v(\d+)\.(\d+)", out.stdout + out.stderr)
    if match is None:
        raise ConfigError(f"{exe} --version: no Kubernetes version in {out.stdout.strip()!r}")
    return int(match[1]), int(match[2])


class KubeCluster:
    """etcd, kube-apiserver and kube-controller-manager as process groups, with their PKI on disk."""

    def __init__(self, root: Path, *, signing_duration: str = "1h", admin_token: bool = False,
                 nodes: bool = False, audit_policy: str | None = None,
                 extra_ips: tuple[str, ...] = ()) -> None:
        """``nodes``: serve real kubelets too: kube-scheduler, the node lifecycle and taint eviction
        controllers, and the API server's kubelet client (by node InternalIP, with its own certificate);
        ``audit_policy``: an audit Policy (YAML) the API server logs by, as JSON lines to ``audit_log``;
        ``extra_ips``: more addresses in the API server's certificate (it still listens on loopback only: a
        relay on such an address, e.g. a node bridge's, lets pods on that node's network reach it)."""
        self.root = root
        self.audit_policy = audit_policy
        self.audit_log = root / "logs" / "audit.log"
        self.extra_ips = extra_ips
        self.nodes = nodes
        self.scheduler: subprocess.Popen | None = None
        self.signing_duration = signing_duration
        self.token: str | None = secrets.token_hex(16) if admin_token else None
        """Static bearer token of an admin (group system:masters), when asked for."""
        self.token_kubeconfig: Path | None = None
        self.pki_dir = root / "pki"
        self.logs = root / "logs"
        self.etcd_port = procs.free_port()
        self.etcd_peer_port = procs.free_port()
        self.api_port = procs.free_port()
        self.etcd: subprocess.Popen | None = None
        self.apiserver: subprocess.Popen | None = None
        self.kcm: subprocess.Popen | None = None
        self.startup_seconds: dict[str, float] = {}
        self.bin_dir = kube_bin_dir()
        self.version: tuple[int, int] | None = None
        """(major, minor) of kube-apiserver, known once it has been probed (`start_apiserver`)."""
        self._write_pki()

    # ------------------------------------------------------------ PKI and kubeconfigs
    def _write_pki(self) -> None:
        d = self.pki_dir
        d.mkdir(parents=True, exist_ok=True)
        self.ca = kube_pki.make_ca("edgeagent-test-cluster-ca")
        self.signing = kube_pki.make_ca("edgeagent-test-csr-signer")
        serving = kube_pki.issue(
            self.ca, "kube-apiserver", server=True, ips=["127.0.0.1", "10.0.0.1", *self.extra_ips],
            dns=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"])
        admin = kube_pki.issue(self.ca, "edgeagent-test-admin", orgs=["system:masters"], client=True)
        kcm = kube_pki.issue(self.ca, "system:kube-controller-manager", orgs=["system:masters"], client=True)
        # The API server's client for kubelets (logs, exec): the kubelet trusts the cluster CA for clients
        # and authorizes this user through a SubjectAccessReview (system:masters may do anything).
        kube_pki.issue(self.ca, "kube-apiserver-kubelet-client", orgs=["system:masters"], client=True).write(
            d / "apiserver-kubelet-client.crt", d / "apiserver-kubelet-client.key")
        scheduler = kube_pki.issue(self.ca, "system:kube-scheduler", client=True)
        self.ca.write(d / "ca.crt", d / "ca.key")
        self.signing.write(d / "signing-ca.crt", d / "signing-ca.key")
        serving.write(d / "apiserver.crt", d / "apiserver.key")
        admin.write(d / "admin.crt", d / "admin.key")
        (d / "client-ca.crt").write_bytes(self.ca.cert_pem + self.signing.cert_pem)
        sa_key = kube_pki.new_key()
        (d / "sa.key").touch(mode=0o600)
        (d / "sa.key").write_bytes(kube_pki.key_pem(sa_key))
        (d / "sa.pub").write_bytes(kube_pki.public_pem(sa_key))
        self.admin = admin
        self.kubeconfig = self.write_kubeconfig(self.root / "admin.kubeconfig", admin.cert_pem, admin.key_pem,
                                                user="admin")
        self.kcm_kubeconfig = self.write_kubeconfig(self.root / "kcm.kubeconfig", kcm.cert_pem, kcm.key_pem,
                                                    user="kube-controller-manager")
        self.scheduler_kubeconfig = self.write_kubeconfig(self.root / "scheduler.kubeconfig",
                                                          scheduler.cert_pem, scheduler.key_pem,
                                                          user="kube-scheduler")
        if self.token is not None:
            tokens = d / "tokens.csv"
            tokens.touch(mode=0o600)
            tokens.write_text(f'{self.token},testbed-admin,testbed-admin,"system:masters"\n')
            self.token_kubeconfig = kubeconfig_file.write(self.root / "token.kubeconfig", {
                "apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": "testbed", "cluster": {
                    "server": self.api_url,
                    "certificate-authority-data": base64.b64encode(self.ca.cert_pem).decode()}}],
                "users": [{"name": "admin", "user": {"token": self.token}}],
                "contexts": [{"name": "admin@testbed", "context": {"cluster": "testbed", "user": "admin"}}],
                "current-context": "admin@testbed",
            })

    def write_kubeconfig(self, path: Path, cert_pem: bytes, key_pem: bytes, *, user: str) -> Path:
        """A kubeconfig for this cluster with the given client credentials (e.g. a signed node cert)."""
        config = kubeconfig_file.render(server=self.api_url, ca_pem=self.ca.cert_pem, cert_pem=cert_pem,
                                        key_pem=key_pem, user=user)
        return kubeconfig_file.write(path, config)

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def ca_cert(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def signing_ca(self) -> Path:
        """The CA kube-controller-manager signs CSRs with (kubelet client certificates chain to it)."""
        return self.pki_dir / "signing-ca.crt"

    def client(self, kubeconfig: Path | None = None) -> k8s_client.ApiClient:
        """An official-client ApiClient as the admin user (or as the user of ``kubeconfig``)."""
        return k8s_config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    # ------------------------------------------------------------ lifecycle
    def start(self, *, controller_manager: bool = True) -> KubeCluster:
        """Starts the components in order; if one fails, those already running are stopped again."""
        try:
            self.start_etcd()
            self.start_apiserver()
            if controller_manager:
                self.start_controller_manager()
            if self.nodes:
                self.start_scheduler()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> KubeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.scheduler is not None:
            procs.stop(self.scheduler)
            self.scheduler = None
        self.stop_controller_manager()
        self.stop_apiserver()
        if self.etcd is not None:
            procs.stop(self.etcd)
            self.etcd = None

    def start_etcd(self, *, timeout: float = 30.0) -> None:
        # A current release brings its own etcd (3.6) in its bin dir; 1.20 runs Debian's etcd-server (3.4).
        etcd = str(self.bin_dir / "etcd") if (self.bin_dir / "etcd").exists() else shutil.which("etcd")
        if etcd is None:
            raise ConfigError("etcd missing: run scripts/install-system-deps.sh (Debian etcd-server)")
        t0 = time.perf_counter()
        client_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        log = self.logs / "etcd.log"
        self.etcd = procs.start(
            [etcd, "--name", "default", "--data-dir", self.root / "etcd",
             "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", f"default={peer_url}", "--log-level", "warn"],
            log=log)
        procs.wait_port(self.etcd_port, timeout=timeout, proc=self.etcd, log=log)
        procs.wait_for(lambda: self._http_ok(f"{client_url}/health"), timeout=timeout, interval=0.05,
                       what="etcd /health")
        self.startup_seconds["etcd"] = time.perf_counter() - t0

    def start_apiserver(self, *, timeout: float = 60.0) -> None:
        exe = self._binary("kube-apiserver")
        version = self.version = binary_version(exe)
        t0 = time.perf_counter()
        d = self.pki_dir
        log = self.logs / "kube-apiserver.log"
        self.apiserver = procs.start(
            [exe,
             f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
             "--bind-address=127.0.0.1", f"--secure-port={self.api_port}",
             # The insecure port left in 1.24; before that it must be switched off explicitly.
             *(["--insecure-port=0"] if version < (1, 24) else []),
             "--advertise-address=127.0.0.1",
             f"--tls-cert-file={d / 'apiserver.crt'}", f"--tls-private-key-file={d / 'apiserver.key'}",
             f"--client-ca-file={d / 'client-ca.crt'}",
             *([f"--token-auth-file={d / 'tokens.csv'}"] if self.token is not None else []),
             "--service-account-issuer=https://kubernetes.default.svc",
             f"--service-account-key-file={d / 'sa.pub'}",
             f"--service-account-signing-key-file={d / 'sa.key'}",
             "--authorization-mode=Node,RBAC", "--enable-bootstrap-token-auth",
             "--service-cluster-ip-range=10.0.0.0/24",
             f"--cert-dir={self.root / 'apiserver-certs'}",
             *self._kubelet_client_flags(),
             *self._audit_flags(),
             *self._log_flags(version), "--v=1"],
            log=log)
        procs.wait_port(self.api_port, timeout=timeout, proc=self.apiserver, log=log)
        procs.wait_for(self._api_ready, timeout=timeout, interval=0.1, what="kube-apiserver /readyz")
        self.startup_seconds["kube-apiserver"] = time.perf_counter() - t0
        if self.kcm is not None and version >= (1, 30):
            # A restarted API server (the tests do it to force relists): 1.36's controller-manager informers
            # back off further at every restart, so a CSR approved after the second one was signed 12 s later
            # and after a few more not within 30 s (measured here). A real control plane restarts its
            # controller-manager with its API server; so does this one. 1.20's keeps running: it recovers,
            # but not at once (its informers back off too: after three restarts a CSR was signed 19 s after
            # its approval, measured here; after one, at once).
            self.stop_controller_manager()
            self.start_controller_manager(timeout=timeout)

    def stop_apiserver(self) -> None:
        if self.apiserver is not None:
            procs.stop(self.apiserver)
            self.apiserver = None

    def start_controller_manager(self, *, timeout: float = 60.0) -> None:
        exe = self._binary("kube-controller-manager")
        version = binary_version(exe)
        t0 = time.perf_counter()
        d = self.pki_dir
        log = self.logs / "kube-controller-manager.log"
        self.kcm = procs.start(
            [exe,
             f"--kubeconfig={self.kcm_kubeconfig}",
             f"--controllers={','.join(self._kcm_controllers(version))}",
             # A node that stops reporting is marked NotReady within seconds rather than 40-50 s.
             *(["--node-monitor-period=1s", "--node-monitor-grace-period=10s"] if self.nodes else []),
             f"--cluster-signing-cert-file={d / 'signing-ca.crt'}",
             f"--cluster-signing-key-file={d / 'signing-ca.key'}",
             f"--cluster-signing-duration={self.signing_duration}",
             f"--service-account-private-key-file={d / 'sa.key'}",
             f"--root-ca-file={d / 'ca.crt'}",
             "--use-service-account-credentials=false",
             "--leader-elect=false", "--secure-port=0",
             # The insecure port (--port) left in 1.24.
             *(["--port=0"] if version < (1, 24) else []),
             *self._log_flags(version), "--v=2"],
            log=log)
        # No port to probe (--secure-port=0): ready once the kubelet-client signer's informer has synced.
        procs.wait_for(lambda: self._kcm_signer_synced(log), timeout=timeout, interval=0.1,
                       what="kube-controller-manager's CSR signer")
        self.startup_seconds["kube-controller-manager"] = time.perf_counter() - t0

    def stop_controller_manager(self) -> None:
        if self.kcm is not None:
            procs.stop(self.kcm)
            self.kcm = None

    def start_scheduler(self, *, timeout: float = 60.0) -> None:
        """kube-scheduler, so pods are placed as in a real cluster (a cordoned node gets nothing new)."""
        exe = self._binary("kube-scheduler")
        t0 = time.perf_counter()
        log = self.logs / "kube-scheduler.log"
        port = procs.free_port()
        kc = self.scheduler_kubeconfig
        self.scheduler = procs.start(
            [exe, f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
             f"--authorization-kubeconfig={kc}",
             "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={port}",
             f"--cert-dir={self.root / 'scheduler-certs'}", "--v=1"],
            log=log)
        procs.wait_port(port, timeout=timeout, proc=self.scheduler, log=log)
        self.startup_seconds["kube-scheduler"] = time.perf_counter() - t0

    def _kcm_controllers(self, version: tuple[int, int]) -> list[str]:
        names = list(KCM_CONTROLLERS)
        if self.nodes:
            # Before 1.29 NoExecute eviction was part of nodelifecycle.
            names += [c for c in NODE_KCM_CONTROLLERS
                      if c != "taint-eviction-controller" or version >= (1, 29)]
        return names

    def _audit_flags(self) -> list[str]:
        if self.audit_policy is None:
            return []
        policy = self.root / "audit-policy.yaml"
        policy.write_text(self.audit_policy)
        self.audit_log.parent.mkdir(parents=True, exist_ok=True)
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json", "--audit-log-maxsize=0"]

    def _kubelet_client_flags(self) -> list[str]:
        if not self.nodes:
            return []
        d = self.pki_dir
        # By InternalIP: by Hostname the API server would look the node's name up in DNS (off the machine).
        return ["--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={d / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={d / 'apiserver-kubelet-client.key'}"]

    # ------------------------------------------------------------ probes
    @staticmethod
    def _log_flags(version: tuple[int, int]) -> list[str]:
        # klog's own flags (--logtostderr, --log-dir, ...) were removed from the components in 1.26; logging
        # to stderr is the default since.
        return ["--logtostderr=true"] if version < (1, 26) else []

    def _binary(self, name: str) -> Path:
        exe = self.bin_dir / name
        if not exe.exists():
            raise ConfigError(f"{exe} missing: run `{KUBE_BUILD[kube_release()]}`")
        return exe

    def admin_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        return ctx

    def _api_ready(self) -> bool:
        if self.apiserver is not None and self.apiserver.poll() is not None:
            raise RuntimeError(f"kube-apiserver exited with {self.apiserver.returncode}: see "
                               f"{self.logs / 'kube-apiserver.log'}")
        return self._http_ok(f"{self.api_url}/readyz", self.admin_ssl_context())

    @staticmethod
    def _http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _kcm_signer_synced(self, log: Path) -> bool:
        """Whether kube-controller-manager's kubelet-client CSR signer has synced its informer, from its log.

        1.20 names the signer on the line. 1.36's text log says "Caches are synced" without a name, so
        there: the kubelet-client signer has started waiting, and as many waits have ended as
        were begun (each "Waiting for caches to sync" is followed by one "Caches are synced" once done).
        """
        if self.kcm is not None and self.kcm.poll() is not None:
            raise RuntimeError(f"kube-controller-manager exited with {self.kcm.returncode}: see {log}")
        content = log.read_text(errors="replace") if log.exists() else ""
        if "Caches are synced for certificate-csrsigning-kubelet-client" in content:
            return True
        started = '"Starting certificate controller" name="csrsigning-kubelet-client"' in content
        waits = content.count('"Waiting for caches to sync"')
        return started and content.count('"Caches are synced"') >= waits
