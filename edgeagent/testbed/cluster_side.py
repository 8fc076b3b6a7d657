"""The whole cluster side on loopback: Keylime verifier + registrar, etcd + kube-apiserver +
kube-controller-manager, and the attestation controller leading, as `make run` and the benchmarks use it.

The pieces are the testbed's own launchers; this only wires them the one way a device expects to find them
(the controller acting as Keylime's tenant and webhook receiver) and pins devices as an operator would.
Everything it starts is stopped by ``stop()`` (or leaving the ``with`` block), in reverse order.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from edgeagent.testbed import procs
from edgeagent.testbed.keylime import Keylime, make_settings
from edgeagent.testbed.kube import KubeCluster
from edgeagent.testbed.node import KubeletNode


class ClusterSide:
    def __init__(self, root: Path, ek_ca_certs: Sequence[Path], *, push: bool = False, nodes: bool = False,
                 **controller_settings: Any) -> None:
        """``ek_ca_certs``: the CAs of the TPMs' EK certificates (Keylime's and the controller's trust store);
        ``push``: Keylime's verifier in push mode (API 3.0) and the controller's join endpoint on a free port;
        ``nodes``: the control plane serves real kubelets (see `KubeCluster`, `kubelet`);
        ``controller_settings``: overrides of the attestation controller's Settings. Nothing runs before
        ``start()``."""
        self.root = root
        self.controller_settings = controller_settings
        webhook_port = procs.free_port()
        extra = {"verifier": {"mode": "push", "auto_recover_attestation_failures": "True"}} if push else {}
        if push:
            self.controller_settings = {"join_host": "127.0.0.1", "join_port": procs.free_port(),
                                        **controller_settings}
        settings = make_settings(
            root / "keylime", list(ek_ca_certs), webhook_url=f"https://127.0.0.1:{webhook_port}/revocation",
            extra=extra,
        )
        self.keylime = Keylime(root / "keylime", settings, webhook_port=webhook_port)
        self.cluster = KubeCluster(root / "kube", nodes=nodes)
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
