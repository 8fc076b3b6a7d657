"""The cluster side verifies quotes with `cryptography` alone: the in-cluster controller image has no libtss2.

Importing it must not load tpm2-pytss (whose import needs libtss2's shared libraries), so a change that pulls
the TPM connection into the cloud package fails here, not in the cluster.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CLUSTER_MODULES = ("edgeagent.cloud.controller", "edgeagent.cloud.tenant", "edgeagent.cloud.csr",
                   "edgeagent.tpm.quote", "edgeagent.protocol.keylime", "edgeagent.protocol.nodebinding")


@pytest.mark.parametrize("module", CLUSTER_MODULES)
def test_importing_the_cluster_side_does_not_load_tpm2_pytss(module: str) -> None:
    code = (f"import sys, {module}\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'tpm2_pytss')\n"
            "print(','.join(loaded))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} loads {out.stdout.strip()}"


def test_the_device_side_still_loads_it() -> None:
    """The check above can fail: the TPM connection does load tpm2-pytss."""
    code = "import sys, edgeagent.tpm.connection\nprint('tpm2_pytss' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
