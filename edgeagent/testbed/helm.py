"""helm (v4, `make helm`) against the testbed's cluster: installs the chart in deploy/chart/edgeagent."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from edgeagent.errors import ConfigError

HELM_VERSION = "4.3.2"
CHART = Path(__file__).resolve().parents[2] / "deploy" / "chart" / "edgeagent"


def helm_binary() -> Path:
    cache = Path(os.environ.get("EDGEAGENT_CACHE", Path.home() / ".cache" / "edgeagent"))
    exe = cache / f"helm-{HELM_VERSION}" / "helm"
    if not exe.exists():
        raise ConfigError(f"{exe} missing: run `make helm`")
    return exe


class HelmError(ConfigError):
    """helm exited non-zero; the message is its last error line."""


class Helm:
    def __init__(self, kubeconfig: Path, root: Path) -> None:
        self.kubeconfig = kubeconfig
        self.root = root  # helm's own cache/config/data dirs: nothing in the user's home
        self.exe = helm_binary()

    def run(self, *args: str, timeout: float = 300) -> str:
        env = {**os.environ, "HELM_CACHE_HOME": str(self.root / "cache"),
               "HELM_CONFIG_HOME": str(self.root / "config"), "HELM_DATA_HOME": str(self.root / "data"),
               "KUBECONFIG": str(self.kubeconfig)}
        proc = subprocess.run([str(self.exe), *args], capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
            raise HelmError(f"helm {args[0]}: {' '.join(lines[-3:]) if lines else proc.returncode}")
        return proc.stdout

    def values_file(self, name: str, values: dict[str, Any]) -> Path:
        path = self.root / f"{name}-values.json"  # JSON is YAML
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=1))
        return path

    def install(self, release: str, namespace: str, values: dict[str, Any], *, upgrade: bool = False,
                wait: str | None = "120s") -> str:
        """``wait``: helm's --timeout for the release to be ready; None: return once the objects exist (for
        releases that are meant not to become ready)."""
        verb = ["upgrade", release] if upgrade else ["install", release]
        waiting = ["--wait", "--timeout", wait] if wait is not None else []
        return self.run(*verb, str(CHART), "--namespace", namespace, "--create-namespace",
                        "--values", str(self.values_file(release, values)), *waiting)

    def uninstall(self, release: str, namespace: str) -> str:
        return self.run("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "120s")
