"""The CLI's contract: one line and an exit code for every project error, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeagent.cli.main import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeagent.cli.main", *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_commands() -> None:
    r = run("--help")
    assert r.returncode == 0
    assert "bench" in r.stdout


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("edgeagent ")


def test_unknown_command_is_usage_error() -> None:
    r = run("no-such-command")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


def test_project_error_becomes_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import typer

    from edgeagent.cli import main as main_mod
    from edgeagent.errors import TpmUnavailable

    def boom(*_a: object, **_k: object) -> None:
        raise TpmUnavailable("no TPM at device:/dev/tpmrm9: No such file or directory")

    monkeypatch.setattr(main_mod, "app", typer.Typer())
    monkeypatch.setattr(typer.Typer, "__call__", boom)
    with pytest.raises(SystemExit) as ei:
        main([])
    assert ei.value.code == TpmUnavailable.exit_code
    err = capsys.readouterr().err
    assert err == "edgeagent: error: no TPM at device:/dev/tpmrm9: No such file or directory\n"


def test_verbose_takes_a_number_as_its_help_shows() -> None:
    # Before: `-v 1` failed with "No such command '1'" although --help shows `--verbose <int>`.
    for args in (("-v", "1"), ("--verbose", "2"), ("--verbose=1",), ("-vv",)):
        r = run(*args, "drivers", "list", "--json")
        assert r.returncode == 0, (args, r.stderr)
    from edgeagent.cli.main import expand_verbosity

    assert expand_verbosity(["-v", "2", "controllers", "restart", "1"]) == ["-v", "-v", "controllers",
                                                                            "restart", "1"]
    assert expand_verbosity(["--state-dir", "3", "-v", "x"]) == ["--state-dir", "3", "-v", "x"]


def test_python_dash_m_edgeagent_runs_the_cli() -> None:
    # Before: "No module named edgeagent.__main__".
    r = subprocess.run([sys.executable, "-m", "edgeagent", "--version"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("edgeagent "), r.stderr
