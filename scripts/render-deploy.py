"""`make deploy`: the plain manifests in deploy/ rendered from the chart (deploy/chart/edgeagent), so they
are never kept by hand. Values: the chart's ci/lint-values.yaml (placeholders for the API server URL and the
EK CA) with the TLS Secret supplied by the user (a generated one would differ at every render). A test
renders them again and compares (tests/unit/cloud/test_deploy.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "chart" / "edgeagent"
NAMESPACE = "edgeagent-system"
HEADER = "# Rendered from deploy/chart/edgeagent by scripts/render-deploy.py (`make deploy`): do not edit.\n"
FILES = {  # file -> kinds it holds (Namespace: made here, helm creates it with --create-namespace)
    "namespace.yaml": ("Namespace",),
    "crd.yaml": ("CustomResourceDefinition",),
    "rbac.yaml": ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"),
    "deployment.yaml": (
        "Deployment/edgeagent-attestation-controller",
        "Service/edgeagent-attestation-webhook",
        "Service/edgeagent-join",
        "ConfigMap/edgeagent-ek-ca",
    ),
    "keylime.yaml": (
        "ConfigMap/keylime-config",
        "ConfigMap/keylime-probe",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
    ),
    "networkpolicy.yaml": ("NetworkPolicy",),
}


def helm() -> str:
    cache = Path(os.environ.get("EDGEAGENT_CACHE", Path.home() / ".cache" / "edgeagent"))
    exe = cache / "helm-4.3.2" / "helm"
    if not exe.exists():
        raise SystemExit(f"render-deploy: {exe} missing: run `make helm`")
    return str(exe)


def render() -> dict[str, str]:
    out = subprocess.run(
        [
            helm(),
            "template",
            "edgeagent",
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--include-crds",
            "--values",
            str(CHART / "ci" / "lint-values.yaml"),
            "--set",
            "keylime.tls.existingSecret=edgeagent-keylime-tls",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HELM_CACHE_HOME": "/tmp/helm-render"},
    )
    if out.returncode != 0:
        raise SystemExit(f"render-deploy: helm template: {out.stderr.strip()}")
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    docs.insert(
        0,
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "edgeagent"}},
        },
    )
    files: dict[str, list[dict]] = {name: [] for name in FILES}
    for doc in docs:
        key = f"{doc['kind']}/{doc['metadata']['name']}"
        target = next((f for f, kinds in FILES.items() if key in kinds), None) or next(
            (f for f, kinds in FILES.items() if doc["kind"] in kinds), None
        )
        if target is None:
            raise SystemExit(f"render-deploy: no file for {key}")
        files[target].append(doc)
    return {name: HEADER + yaml.safe_dump_all(d, sort_keys=False, width=120) for name, d in files.items()}


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    for name, text in render().items():
        path = ROOT / "deploy" / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(
            f"render-deploy: deploy/{', deploy/'.join(stale)} differ from the chart: run `make deploy`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
