"""A device that becomes a real Kubernetes worker: its agent (`edgeagent agent`, enrolling with the testbed's
Keylime and attestation controller) and, once the agent has written the node's kubeconfig, a kubelet on a
containerd of its own (`node.KubeletNode`), as the systemd path unit starts it on a device.

Shared by the real-worker tests and `edgeagent bench enroll --kubelet` so both run the same steps.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from edgeagent.testbed import device, procs
from edgeagent.testbed.node import KubeletNode

MEASURED_FILE = "app.conf"
"""A file the agent measures into PCR 23 (``measure.extra_paths``): changing it is the tests' tamper."""
BUSYBOX = "edgeagent.local/busybox:1.35"


def write_config(root: Path, keylime: Any, *, node: str, port: int, certificate_seconds: int = 3600) -> Path:
    """The agent's configuration for a worker device under ``root``: attestation and the node credential
    only (no drivers or controllers: the worker's story is the kubelet's)."""
    (root / MEASURED_FILE).write_text("mode = production\n")
    return device.agent_config(
        root / "agent.toml",
        {
            "": {"state_dir": str(root / "state"),
                 "policies_dir": str(device.stage_policies(root / "policies"))},
            "measure": {"firmware_log": str(root / "no-firmware-log"),
                        "extra_paths": [str(root / MEASURED_FILE)]},
            "enroll": device.enroll_section(root, keylime, port=port, node=node, agent_uuid=f"{node}-agent",
                                            retry_timeout=60, certificate_timeout=60,
                                            certificate_seconds=certificate_seconds),
            "agent": {"socket": str(root / "agent.sock"), "metrics_port": 0, "restart_backoff": 0.2,
                      "restart_backoff_max": 2.0},
        },
        comment="a worker device: attestation and the kubelet's credential",
    )


def kubeconfig_path(root: Path) -> Path:
    """Where `write_config`'s agent writes the kubelet's kubeconfig (``enroll.kubeconfig``)."""
    return root / "kubelet" / "kubeconfig"


def node_ready(core: Any, name: str) -> bool:
    """Whether Node ``name`` exists and reports Ready=True (``core``: a CoreV1Api)."""
    from kubernetes.client.exceptions import ApiException

    try:
        node = core.read_node(name)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))


def pod(name: str, node: str, *, message: str = "hello from an attested node") -> dict[str, Any]:
    """A busybox pod for ``node`` (by its hostname label, so the scheduler still decides, and a cordoned node
    gets nothing), that logs ``message`` and exits at once on SIGTERM (busybox's sh as PID 1 would ignore it
    and wait out the grace period)."""
    script = f"echo {message}; trap 'exit 0' TERM; while true; do sleep 1 & wait; done"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "edgeagent-worker-test"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
                            "command": ["sh", "-c", script]}],
        },
    }


def pod_phase(core: Any, name: str, namespace: str = "default") -> str | None:
    """The pod's phase, or None once it is gone."""
    from kubernetes.client.exceptions import ApiException

    try:
        return str(core.read_namespaced_pod(name, namespace).status.phase)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def wait_node_ready(core: Any, name: str, *, timeout: float = 60.0) -> None:
    procs.wait_for(lambda: node_ready(core, name), timeout=timeout, interval=0.05, what=f"Node {name} Ready")


def stop_quietly(node: KubeletNode | None) -> None:
    if node is not None:
        with contextlib.suppress(Exception):
            node.stop()
