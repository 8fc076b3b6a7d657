"""`edgeagent run-driver` as a user runs it: the console script in its own process, output on pipes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EDGEAGENT = Path(sys.executable).parent / "edgeagent"


def run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EDGEAGENT_STATE_DIR": str(tmp_path / "state"),
        "EDGEAGENT_POLICIES_DIR": str(tmp_path / "policies"),
    }
    env.pop("EDGEAGENT_CONFIG", None)
    return subprocess.run([str(EDGEAGENT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_sensor_readings_stream_as_json_lines_and_the_cache_is_written(tmp_path, wasm_build):
    p = run(["run-driver", "hts221", "--sim", "--count", "2", "--interval", "0"], tmp_path)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["driver"] for r in rows] == ["hts221", "hts221"]
    assert rows[0]["values"]["humidity"] == pytest.approx(45.0, abs=0.1)
    assert list((tmp_path / "state" / "cache" / "wasm").glob("*.cwasm"))


@pytest.mark.parametrize(
    ("guest", "exit_code", "message"),
    [
        ("looping_driver", 5, "driver looping_driver: stopped in read: ran past its 50 ms compute limit"),
        ("unknown_import", 5, "driver unknown_import: imports unknown function env.mystery"),
        ("no_driver_exports", 5, "driver no_driver_exports: does not export ea_abi_version, ea_buffer, init"),
    ],
)
def test_bad_driver_is_one_line_on_stderr(tmp_path, wasm_build, guest, exit_code, message):
    # As a third party ships it: a bundle directory with the module, its policy and a simulated part (a
    # module given by path alone has no simulated part, and --sim says so first).
    bundle = tmp_path / guest
    bundle.mkdir()
    shutil.copyfile(wasm_build / "tests" / f"{guest}.wasm", bundle / f"{guest}.wasm")
    (bundle / "policy.toml").write_text("[[i2c]]\nbus = 1\naddresses = [0x10]\n")
    (bundle / "model.toml").write_text(
        'name = "dummy"\naddress = 0x10\n\n[[registers]]\nat = 0x00\nreset = [0x00]\n'
    )
    (bundle / "bundle.toml").write_text(
        f'[bundle]\nname = "{guest}"\nkind = "driver"\nversion = "0.1.0"\nabi = 1\nmodule = "{guest}.wasm"\n'
        'policy = "policy.toml"\nmodel = "model.toml"\n\n[driver]\nbus = "i2c"\ndefault_address = 0x10\n'
        'channels = ["value:1"]\n'
    )
    p = run(["run-driver", str(bundle), "--sim", "--count", "1"], tmp_path)
    assert p.returncode == exit_code
    (line,) = p.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"edgeagent: error: {message}")
    assert p.stdout == ""
