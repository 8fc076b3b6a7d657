"""`edgeagent dev cluster up|down|env`: the testbed's local control plane (etcd + kube-apiserver +
kube-controller-manager, see ``testbed.kube``) as a long-lived thing a developer starts once and points
kubectl and `edgeagent controllers run` at; optionally a software TPM (swtpm) and stock Keylime (verifier +
registrar trusting that TPM's EK CA) for the attestation side.

The components run as process groups of their own that outlive the command that started them; ``cluster.json``
in the cluster's directory records their process-group ids and the kubeconfig, so `down` and `env` work from
any later process. A record whose processes are gone counts as down.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from edgeagent.errors import StateError
from edgeagent.testbed.kube import KubeCluster

RECORD = "cluster.json"


def default_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "edgeagent" / "dev-cluster"


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(root: Path) -> dict[str, Any] | None:
    """The running cluster's record, or None when none runs from ``root``."""
    try:
        record = json.loads((root / RECORD).read_text())
    except (OSError, ValueError):
        return None
    pgids = record.get("pgids", {})
    if not isinstance(pgids, dict) or not pgids or not all(_alive(int(p)) for p in pgids.values()):
        return None
    return dict(record)


def up(
    root: Path, *, controller_manager: bool = True, tpm: bool = False, keylime: bool = False
) -> dict[str, Any]:
    """Starts the control plane in ``root`` (or returns the record of the one already running there), with a
    swtpm (``tpm``) and Keylime (``keylime``, implies ``tpm``) when asked."""
    running = status(root)
    if running is not None:
        return running
    if (root / RECORD).exists():
        down(root)  # a partly dead one: clear it before starting afresh
    root.mkdir(parents=True, exist_ok=True)
    cluster = KubeCluster(root / f"run-{int(time.time())}")
    cluster.start(controller_manager=controller_manager)
    procs = {
        "etcd": cluster.etcd,
        "kube-apiserver": cluster.apiserver,
        "kube-controller-manager": cluster.kcm,
    }
    env: dict[str, str] = {"KUBECONFIG": str(cluster.kubeconfig)}
    extra: dict[str, Any] = {}
    try:
        if tpm or keylime:
            from edgeagent.tpm.swtpm import SoftwareTpm

            swtpm = SoftwareTpm(cluster.root / "swtpm").start()
            procs["swtpm"] = swtpm._proc
            env["EDGEAGENT_TPM"] = swtpm.tcti
        if keylime:
            from edgeagent.testbed.keylime import Keylime, make_settings

            kl = Keylime(cluster.root / "keylime", make_settings(cluster.root / "keylime", [swtpm.ca_cert]))
            kl.start()
            procs["keylime-verifier"], procs["keylime-registrar"] = kl.verifier_proc, kl.registrar_proc
            env["EDGEAGENT_ENROLL_REGISTRAR_URL"] = kl.registrar_url
            env["EDGEAGENT_ENROLL_KEYLIME_CA"] = str(kl.cv_ca / "cacert.crt")
            extra["keylime"] = {
                "verifier": kl.verifier_url,
                "registrar": kl.registrar_url,
                "cv_ca": str(kl.cv_ca),
            }
    except BaseException:
        for p in procs.values():
            if p is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        raise
    record = {
        "env": env,
        **extra,
        "kubeconfig": str(cluster.kubeconfig),
        "server": cluster.api_url,
        "version": ".".join(map(str, cluster.version or ())),
        "logs": str(cluster.logs),
        "pgids": {name: p.pid for name, p in procs.items() if p is not None},
        "started": time.time(),
    }
    try:
        (root / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    except OSError as e:
        cluster.stop()
        raise StateError(f"cannot write {root / RECORD}: {e.strerror}") from None
    return record


def down(root: Path, *, timeout: float = 15.0) -> bool:
    """Stops the cluster running from ``root``; False when none was recorded there."""
    try:
        record = json.loads((root / RECORD).read_text())
    except (OSError, ValueError):
        return False
    pgids = [int(p) for p in dict(record.get("pgids", {})).values()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in pgids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + timeout
        while any(_alive(p) for p in pgids) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not any(_alive(p) for p in pgids):
            break
    (root / RECORD).unlink(missing_ok=True)
    return True
