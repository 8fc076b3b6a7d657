"""Configuration: file, env overrides, command-line overrides, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeagent.config import AgentConfig, load_config
from edgeagent.errors import ConfigError


def test_defaults_when_default_file_is_absent(tmp_path: Path) -> None:
    # EDGEAGENT_CACHE is a script variable, not a config key: ignored.
    cfg = load_config(env={"EDGEAGENT_CACHE": "/tmp/x"})
    assert isinstance(cfg, AgentConfig)
    assert cfg.measure.pcr == 23
    assert cfg.state_dir == Path("/var/lib/edgeagent")


def test_file_env_and_overrides_layer_in_order(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(
        'state_dir = "/srv/a"\ntpm_tcti = "device:/dev/tpm0"\n[measure]\npcr = 22\nextra_paths = ["/opt/x"]\n'
    )
    cfg = load_config(
        f,
        env={"EDGEAGENT_MEASURE_PCR": "21", "EDGEAGENT_TPM": "swtpm:port=1"},
        overrides={"state_dir": Path("/srv/b"), "tpm_tcti": None},
    )
    assert cfg.measure.pcr == 21
    assert cfg.measure.extra_paths == [Path("/opt/x")]
    assert cfg.tpm_tcti == "swtpm:port=1"
    assert cfg.state_dir == Path("/srv/b")
    assert cfg.source == f
    assert cfg.state_path(Path("measurements.cel.jsonl")) == Path("/srv/b/measurements.cel.jsonl")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("state_dir = ", "not valid TOML"),
        ("bogus = 1", "unknown key 'bogus'"),
        ("[measure]\npcr = 'x'", "expected an integer"),
        ("measure = 3", "must be a table"),
        ("[measure]\nnope = 1", "unknown key 'nope'"),
        ("[enroll]\nmode = 'poll'", "enroll.mode must be pull or push, got 'poll'"),
        ("[tpm]\nak_type = 'ecc'\n[enroll]\nmode = 'push'", "push needs tpm.ak_type = rsa"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(f, env={})
    assert needle in str(ei.value)
    assert "\n" not in str(ei.value)


def test_explicit_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", env={})
    d = tmp_path / "dir.toml"
    d.mkdir()
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(d, env={})


def test_bad_env_override_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="EDGEAGENT_MEASURE_PCR"):
        load_config(env={"EDGEAGENT_MEASURE_PCR": "twenty"})
