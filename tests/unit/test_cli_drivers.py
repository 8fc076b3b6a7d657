"""`edgeagent run-driver` and `edgeagent drivers list`: output formats and one-line errors with exit codes."""

from __future__ import annotations

import json

import pytest

from edgeagent.cli.main import main


@pytest.fixture
def cli(tmp_path, wasm_build, monkeypatch, capsys):
    monkeypatch.setenv("EDGEAGENT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EDGEAGENT_POLICIES_DIR", str(tmp_path / "policies"))
    monkeypatch.delenv("EDGEAGENT_CONFIG", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as ei:
            main(list(args))
        out, err = capsys.readouterr()
        return ei.value.code, out, err

    return run


def test_run_driver_streams_json_lines(cli):
    code, out, err = cli("run-driver", "bme280", "--sim", "--count", "3", "--interval", "0", "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3
    assert lines[0]["driver"] == "bme280"
    assert set(lines[0]["values"]) == {"temperature", "pressure", "humidity"}
    assert lines[0]["units"]["pressure"] == "hPa"
    assert 900 < lines[0]["values"]["pressure"] < 1100


def test_run_driver_without_a_tty_defaults_to_json_lines(cli):
    code, out, _ = cli("run-driver", "tmp102", "--sim", "--count", "1")
    assert code == 0 and json.loads(out)["values"] == {"temperature": 23.5}


def test_output_driver_shows_what_the_display_holds(cli):
    code, out, _ = cli("run-driver", "hd44780_pcf8574", "--sim", "--count", "1", "--text", "hello\nworld")
    assert code == 0
    row = json.loads(out)
    assert row["written"] == "hello\nworld"
    assert [line.rstrip() for line in row["display"]] == ["hello", "world"]


def test_drivers_list_json(cli):
    code, out, _ = cli("drivers", "list", "--json")
    assert code == 0
    drivers = {d["name"]: d for d in json.loads(out)}
    assert {"tmp102", "hts221", "bme280", "hd44780_pcf8574"} <= set(drivers)
    assert drivers["tmp102"]["grants"] == "i2c-1: 0x48"
    assert "wasi:i2c/i2c" in drivers["bme280"]["interfaces"]
    assert drivers["bme280"]["module"].endswith("bme280.wasm")


def test_drivers_list_table(cli):
    code, out, _ = cli("drivers", "list")
    assert code == 0 and "tmp102" in out and "hd44780_pcf8574" in out


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (
            ["run-driver", "tmp102", "--sim", "--device", "0x49", "--count", "1"],
            13,
            "driver tmp102: init: I2C address 0x49 on sim:/dev/i2c-1 is not granted by its policy",
        ),
        (["run-driver", "nosuch", "--sim"], 5, "unknown driver 'nosuch'"),
        (["run-driver", "tmp102", "--sim", "--device", "1:zz"], 6, "bad I2C device '1:zz'"),
        (["run-driver", "tmp102", "--hardware", "--device", "250:0x48"], 6, "no I2C bus /dev/i2c-250"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(cli, args, exit_code, message):
    code, out, err = cli(*args)
    assert code == exit_code
    assert err.strip().splitlines()[-1] == f"edgeagent: error: {message}" or message in err
    assert "Traceback" not in err and out == ""


def test_not_a_wasm_file(cli, tmp_path):
    bogus = tmp_path / "bogus.wasm"
    bogus.write_bytes(b"\x7fELF\x02\x01\x01")
    policy = tmp_path / "p.toml"
    policy.write_text("[[i2c]]\nbus = 1\naddresses = [0x48]\n")
    code, _, err = cli("run-driver", str(bogus), "--policy", str(policy), "--sim")
    assert code == 5
    assert err.strip() == "edgeagent: error: driver bogus: not a WebAssembly module (no \\0asm magic)"


def test_malformed_policy(cli, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text("[[i2c]]\nbus = 1\naddresses = 0x48\n")
    code, _, err = cli("run-driver", "tmp102", "--policy", str(policy), "--sim")
    assert code == 78
    assert err.strip() == f"edgeagent: error: {policy}: [[i2c]] #1: addresses must be a non-empty list"


def test_trapping_driver_by_path(cli, tmp_path, wasm_build):
    # In a bundle with a (trivial) model: a module by path outside a bundle has no simulated part.
    import shutil

    shutil.copyfile(wasm_build / "tests" / "looping_driver.wasm", tmp_path / "looping_driver.wasm")
    policy = tmp_path / "p.toml"
    policy.write_text("[[i2c]]\nbus = 1\naddresses = [0x10]\n")
    model = 'name = "dummy"\naddress = 0x10\n[[registers]]\nat = 0\nreset = [0]\n'
    (tmp_path / "model.toml").write_text(model)
    (tmp_path / "bundle.toml").write_text(
        '[bundle]\nname = "looping_driver"\nkind = "driver"\nabi = 1\nmodule = "looping_driver.wasm"\n'
        'policy = "p.toml"\nmodel = "model.toml"\n'
    )
    code, _, err = cli("run-driver", str(tmp_path / "looping_driver.wasm"), "--sim", "--count", "1")
    assert code == 5
    assert "edgeagent: error: driver looping_driver: stopped in read: ran past its 50 ms compute limit" in err


def test_a_module_by_path_with_sim_says_it_has_no_simulated_part(cli, tmp_path, wasm_build):
    # Before: it failed later with a misleading "no-acknowledge(address) (ENXIO)".
    policy = tmp_path / "p.toml"
    policy.write_text("[[i2c]]\nbus = 1\naddresses = [0x48]\n")
    code, _, err = cli("run-driver", str(wasm_build / "tmp102.wasm"), "--policy", str(policy), "--sim")
    assert code == 5 and err.count("\n") == 1
    assert err.startswith("edgeagent: error: driver tmp102 has no simulated part (a module outside a bundle")


def test_live_table_shows_channel_units(tmp_path, wasm_build, runtime):
    """Units in brackets are text, not rich markup (``[C]`` used to vanish from the header)."""
    import io

    from rich.console import Console

    from edgeagent.cli.drivers import _table
    from edgeagent.config import AgentConfig
    from edgeagent.drivers.session import open_session

    config = AgentConfig(state_dir=tmp_path / "state", policies_dir=tmp_path / "policies")
    s = open_session("tmp102", config, sim=True, runtime=runtime)
    try:
        buf = io.StringIO()
        Console(file=buf, width=120).print(_table(s, [s.driver.read().to_dict()]))
    finally:
        s.close()
    assert "temperature [C]" in buf.getvalue() and "23.500" in buf.getvalue()


def test_a_simulated_part_answers_only_where_its_straps_allow(cli, tmp_path):
    # Before: the simulated TMP102 answered at whatever address the driver was pointed at.
    policy = tmp_path / "p.toml"
    policy.write_text("[[i2c]]\nbus = 1\naddresses = [0x10, 0x4a]\n")
    code, _, err = cli(
        "run-driver", "tmp102", "--policy", str(policy), "--sim", "-d", "1:0x4a", "-n", "1", "--json"
    )
    assert code == 0, err  # a TMP102 can be strapped to 0x4a
    code, _, err = cli("run-driver", "tmp102", "--policy", str(policy), "--sim", "-d", "1:0x10", "-n", "1")
    assert code == 6 and "no-acknowledge(address)" in err and "0x10" in err
