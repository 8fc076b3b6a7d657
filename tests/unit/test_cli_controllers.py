"""`edgeagent controllers list/run`: rendering the status file, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeagent.cli.main import main


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


STATUS = {
    "pid": 999999999,  # no such process: the host is gone
    "started": 0.0,
    "updated": 1.0,
    "running": True,
    "swap": True,
    "controllers": [
        {
            "name": "ring-0",
            "state": "swapped",
            "memory_bytes": 0,
            "snapshot_bytes": 131072,
            "events": 12,
            "timers": 0,
            "wakes": 5,
            "swaps": 6,
            "denied": 0,
            "errors": 0,
            "dropped": 0,
            "last_error": "",
        },
        {
            "name": "nosy",
            "state": "failed",
            "memory_bytes": 0,
            "snapshot_bytes": 0,
            "events": 1,
            "timers": 0,
            "wakes": 0,
            "swaps": 0,
            "denied": 1,
            "errors": 0,
            "dropped": 0,
            "last_error": "controller nosy: trapped in handle-event: unreachable [x]",
        },
    ],
    "failed_loads": [{"source": "bad.toml", "error": "manifest bad.toml: missing key 'name'"}],
    "watches": [],
    "wake_latency_s": [],
}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    (d / "controllers").mkdir(parents=True)
    (d / "controllers" / "status.json").write_text(json.dumps(STATUS))
    return d


def test_list_json(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--state-dir", str(state_dir), "controllers", "list", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["host_running"] is False
    assert [c["state"] for c in data["controllers"]] == ["swapped", "failed"]
    assert data["failed_loads"][0]["source"] == "bad.toml"


def test_list_table(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--state-dir", str(state_dir), "controllers", "list")
    assert code == 0
    assert "host NOT running" in out
    assert "ring-0" in out and "swapped" in out and "128 KiB" in out
    assert "unreachable" in out and "[x]" in out  # error text is not taken for markup
    assert "missing key 'name'" in out


def test_list_without_a_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "--state-dir", str(tmp_path), "controllers", "list")
    assert code == 74
    assert err.count("\n") == 1 and "no controller status" in err


def test_run_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "--state-dir", str(tmp_path), "controllers", "run", str(tmp_path / "nope"))
    assert code == 78 and "does not exist" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(capsys, "--state-dir", str(tmp_path), "controllers", "run", str(empty))
    assert code == 5 and "no controller manifests" in err
    (empty / "c.toml").write_text('name = "c"\n')
    code, _, err = cli(
        capsys,
        "--state-dir",
        str(tmp_path),
        "controllers",
        "run",
        str(empty),
        "--kubeconfig",
        str(tmp_path / "absent.kubeconfig"),
    )
    assert code == 78 and "kubeconfig" in err and err.count("\n") == 1


def test_console_script_error_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "edgeagent.cli.main", "--state-dir", str(tmp_path), "controllers", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 74
    assert r.stderr.startswith("edgeagent: error: no controller status") and "Traceback" not in r.stderr
