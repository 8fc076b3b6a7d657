"""The whole cluster side on loopback: Keylime verifier + registrar, etcd + kube-apiserver +
kube-controller-manager, and the attestation controller leading, as `make run` and the benchmarks use it.

The pieces are the testbed's own launchers; this only wires them the one way a device expects to find them
(the controller acting as Keylime's tenant and webhook receiver) and pins devices as an operator would.
Everything it starts is stopped by ``stop()`` (or leaving the ``with`` block), in reverse order.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from edgeagent.errors import EdgeAgentError
from edgeagent.testbed import procs
from edgeagent.testbed.keylime import Keylime, make_settings
from edgeagent.testbed.kube import KubeCluster
from edgeagent.testbed.node import KubeletNode

CONTROLLER_USER = "edgeagent-attestation-controller"
"""The controller's user (client certificate CN) and leader identity when it runs as a process."""


class ClusterSide:
    def __init__(self, root: Path, ek_ca_certs: Sequence[Path], *, push: bool = False, nodes: bool = False,
                 controller_process: bool = False, keylime_settings: dict[str, Any] | None = None,
                 audit_users: Sequence[str] = (), **controller_settings: Any) -> None:
        """``ek_ca_certs``: the CAs of the TPMs' EK certificates (Keylime's and the controller's trust store);
        ``push``: Keylime's verifier in push mode (API 3.0) and the controller's join endpoint on a free port;
        ``nodes``: the control plane serves real kubelets (see `KubeCluster`, `kubelet`);
        ``controller_process``: the controller runs as its image does (`python -m edgeagent.cli.cluster`, a
        process of its own, as user CONTROLLER_USER), not in this process (``controller`` is then None);
        ``keylime_settings``: overrides of `KeylimeSettings` (e.g. quote_interval);
        ``audit_users``: the API server writes an audit log of these users' requests (``cluster.audit_log``);
        ``controller_settings``: overrides of the attestation controller's Settings. Nothing runs before
        ``start()``."""
        self.root = root
        self.controller_settings = controller_settings
        self.controller_process = controller_process
        self.controller_proc: subprocess.Popen[bytes] | None = None
        webhook_port = procs.free_port()
        extra = {"verifier": {"mode": "push", "auto_recover_attestation_failures": "True"}} if push else {}
        keylime_settings = dict(keylime_settings or {})
        for section, keys in keylime_settings.pop("extra", {}).items():
            extra[section] = {**extra.get(section, {}), **keys}
        if push:
            self.controller_settings = {"join_host": "127.0.0.1", "join_port": procs.free_port(),
                                        **controller_settings}
        settings = make_settings(
            root / "keylime", list(ek_ca_certs), webhook_url=f"https://127.0.0.1:{webhook_port}/revocation",
            extra=extra, **keylime_settings,
        )
        self.keylime = Keylime(root / "keylime", settings, webhook_port=webhook_port)
        from edgeagent.testbed.fleet import audit_policy

        self.cluster = KubeCluster(root / "kube", nodes=nodes,
                                   audit_policy=audit_policy(audit_users) if audit_users else None)
        self.controller: Any = None
        self.api: Any = None
        self.startup_seconds: dict[str, float] = {}
        self._stack = contextlib.ExitStack()

    def start(self, *, timeout: float = 30.0) -> ClusterSide:
        from edgeagent.cloud.controller import Controller, Settings

        keylime, cluster = self.keylime, self.cluster
        try:
            self._stack.callback(keylime.stop)
            keylime.start()
            self._stack.callback(cluster.stop)
            cluster.start()
            self.api = cluster.client()
            values: dict[str, Any] = dict(
                registrar_url=keylime.registrar_tls_url,
                verifier_url=keylime.verifier_url,
                keylime_ca_dir=keylime.cv_ca,
                ek_ca_store=keylime.settings.tpm_cert_store,
                api_server_url=cluster.api_url,
                api_server_ca_pem=cluster.ca_cert.read_text(),
                credential_lifetime=3600,
                install_crd=True,
                webhook_host="127.0.0.1",
                webhook_port=keylime.webhook_port,
                # Keylime's notifier trusts its own CA: serve the verifier's certificate, require its client's
                webhook_cert=keylime.cv_ca / "server-cert.crt",
                webhook_key=keylime.cv_ca / "server-private.pem",
                webhook_client_ca=keylime.ca_cert,
                lease_duration=4.0,
                renew_deadline=3.0,
                retry_period=0.5,
                reactivate_interval=1.0,
            )
            values.update(self.controller_settings)
            if self.controller_process:
                self._start_controller_process(values, timeout=timeout)
            else:
                self.controller = controller = Controller(self.api, Settings(**values))
                self._stack.callback(controller.stop)
                controller.start()
                procs.wait_for(
                    controller.elector.is_leader, timeout=timeout, what="the attestation controller to lead"
                )
            self.startup_seconds = {**keylime.startup_seconds, **cluster.startup_seconds}
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stack.close()

    def _start_controller_process(self, values: dict[str, Any], *, timeout: float) -> None:
        """The controller as the chart runs it, with the options `values` maps to (those the CLI has)."""
        from edgeagent.testbed import kube_pki

        cert = kube_pki.issue(self.cluster.ca, CONTROLLER_USER, orgs=["system:masters"], client=True)
        kubeconfig = self.cluster.write_kubeconfig(self.root / "controller.kubeconfig", cert.cert_pem,
                                                   cert.key_pem, user=CONTROLLER_USER)
        argv = [
            sys.executable, "-m", "edgeagent.cli.cluster", "attestation-controller",
            "--registrar-url", values["registrar_url"], "--verifier-url", values["verifier_url"],
            "--keylime-ca-dir", str(values["keylime_ca_dir"]), "--ek-ca-store", str(values["ek_ca_store"]),
            "--kubeconfig", str(kubeconfig), "--api-server-url", values["api_server_url"],
            "--api-server-ca", str(self.cluster.ca_cert),
            "--webhook-listen", f"{values['webhook_host']}:{values['webhook_port']}",
            "--webhook-cert", str(values["webhook_cert"]), "--webhook-key", str(values["webhook_key"]),
            "--credential-lifetime", str(max(600, int(values["credential_lifetime"]))),
            "--poll-interval", str(values.get("poll_interval", 1.0)),
            "--identity", CONTROLLER_USER, "--install-crd",
        ]
        if values.get("join_port"):
            argv += ["--join-listen", f"{values['join_host']}:{values['join_port']}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEAGENT_")}
        self.controller_proc = proc = procs.start(argv, log=self.root / "controller.log", env=env)
        self._stack.callback(procs.stop, proc)
        procs.wait_for(lambda: self._lease_holder() == CONTROLLER_USER or proc.poll() is not None,
                       timeout=timeout, interval=0.1, what="the attestation controller to lead")
        if proc.poll() is not None:
            raise EdgeAgentError(f"the attestation controller exited with {proc.returncode}; "
                                 f"see {self.root / 'controller.log'}")

    def _lease_holder(self) -> str | None:
        from kubernetes import client as k8s

        try:
            lease = k8s.CoordinationV1Api(self.api).read_namespaced_lease(
                "edgeagent-attestation-controller", "kube-system")
        except k8s.exceptions.ApiException:
            return None
        return lease.spec.holder_identity if lease.spec else None

    def __enter__(self) -> ClusterSide:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def kubelet(self, root: Path, name: str, kubeconfig: Path, *, bootstrap: bool = False) -> KubeletNode:
        """A worker node (containerd + kubelet, not started) joining as ``name`` with the device's
        ``kubeconfig`` (``bootstrap``: as a bootstrap credential, see `KubeletNode`); needs ``nodes=True``."""
        return KubeletNode(root, name=name, kubeconfig=kubeconfig, cluster_ca=self.cluster.ca_cert,
                           bin_dir=self.cluster.bin_dir, bootstrap=bootstrap)

    def pin_device(self, name: str, **kwargs: Any) -> None:
        pin_device(self.api, name, **kwargs)

    def forget_device(self, name: str, agent_uuid: str) -> None:
        """Removes what ``pin_device`` and the enrollment left on the cluster side (EdgeNode, Keylime)."""
        from edgeagent.cloud import crd

        crd.EdgeNodes(self.api).delete(name)
        self.keylime.tenant("-c", "delete", "-u", agent_uuid)
        self.keylime.tenant("-c", "regdelete", "-u", agent_uuid)


def pin_device(
    api: Any,
    name: str,
    *,
    ek_cert: bytes,
    agent_uuid: str,
    agent_address: str,
    register_node: bool = True,
    **spec: Any,
) -> None:
    """What an operator does for a new device: an EdgeNode pinning its EK certificate (``spec``: more
    EdgeNodeSpec fields, e.g. boot_pcrs); ``register_node`` also creates the Node object as a kubelet
    registers it (no kubelet runs here)."""
    from kubernetes import client as k8s

    from edgeagent.cloud import crd

    if register_node:
        k8s.CoreV1Api(api).create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=name)))
    crd.EdgeNodes(api).create(
        name,
        crd.EdgeNodeSpec(
            agent_uuid=agent_uuid,
            ek_cert_sha256=hashlib.sha256(ek_cert).hexdigest(),
            agent_address=agent_address,
            **spec,
        ),
    )


def labels_configmap(api: Any, namespace: str, name: str, data: dict[str, str]) -> None:
    """A ConfigMap the node-labeler controller mirrors into Node labels (its namespace created if needed)."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(api)
    try:
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    except k8s.exceptions.ApiException as e:
        if e.status != 409:
            raise
    core.create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(name=name, labels={"edgeagent.io/node-labels": "true"}), data=data
        ),
    )
