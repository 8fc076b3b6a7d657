"""The console script's fast path to the lean service process."""

from __future__ import annotations

import pytest

from edgeagent.cli.entry import _agent_argv


@pytest.mark.parametrize(
    ("args", "lean"),
    [
        (["agent"], []),
        (["--config", "/etc/a.toml", "agent"], ["--config", "/etc/a.toml"]),
        (
            ["-c", "a.toml", "--tpm=swtpm:port=1", "-vv", "agent"],
            ["--config", "a.toml", "--tpm", "swtpm:port=1", "-v", "-v"],
        ),
        (["--state-dir", "/s", "--verbose", "agent"], ["--state-dir", "/s", "-v"]),
    ],
)
def test_agent_goes_to_the_lean_process(args, lean):
    assert _agent_argv(args) == lean


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["agent", "--help"],
        ["--help"],
        ["status"],
        ["--config"],
        ["agent", "extra"],
        ["--version", "agent"],
        ["bench", "agent"],
    ],
)
def test_everything_else_goes_to_the_cli(args):
    assert _agent_argv(args) is None
