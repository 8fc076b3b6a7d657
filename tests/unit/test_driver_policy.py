"""Driver capability policies: valid files, and every malformed one a one-line PolicyError."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeagent.drivers.policy import load_policy
from edgeagent.errors import PolicyError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.toml"
    p.write_text(text)
    return p


def test_bundled_policies_load():
    names = sorted(p.stem for p in (ROOT / "policies" / "drivers").glob("*.toml"))
    assert {"tmp102", "hts221", "bme280", "hd44780_pcf8574"} <= set(names)
    for n in names:
        load_policy(ROOT / "policies" / "drivers" / f"{n}.toml")


def test_full_policy(tmp_path):
    p = load_policy(
        write(
            tmp_path,
            """
driver = "x"
memory-limit-mib = 8
[[i2c]]
bus = "/dev/i2c-1"
addresses = [0x48, 0x49]
[[i2c]]
bus = 1
addresses = [0x50]
[[i2c]]
bus = "i2c-3"
addresses = [0x10]
[[usb]]
vid = 0x1209
pid = 0x0001
interface = 0
[[usb]]
vid = 0x0781
pid = 0x5567
""",
        )
    )
    assert p.driver == "x" and p.memory_limit_mib == 8
    assert p.i2c_addresses(1) == {0x48, 0x49, 0x50}
    assert p.allows_i2c(3, 0x10) and not p.allows_i2c(3, 0x48) and not p.allows_i2c(2, 0x48)
    assert p.allows_usb(0x1209, 0x0001, 0) and not p.allows_usb(0x1209, 0x0001, 1)
    assert p.allows_usb(0x0781, 0x5567, 3) and not p.allows_usb(0x0781, 0x5568)
    assert p.to_dict()["i2c"][0] == {"bus": 1, "addresses": ["0x48", "0x49"]}


def test_empty_policy_grants_nothing(tmp_path):
    p = load_policy(write(tmp_path, ""))
    assert not p.i2c and not p.usb and not p.allows_i2c(1, 0x48)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[i2c]\nbus=1", "is not valid TOML"),
        ("i2c = 5", "i2c must be an array of tables"),
        ("[[i2c]]\naddresses = [0x48]", "needs bus and addresses"),
        ("[[i2c]]\nbus = 1\naddresses = []", "addresses must be a non-empty list"),
        ("[[i2c]]\nbus = 1\naddresses = [0x400]", r"address 0x400 is out of range"),
        ("[[i2c]]\nbus = 1\naddresses = ['0x48']", "address must be an integer"),
        ("[[i2c]]\nbus = 'spi0'\naddresses = [1]", "is not N, i2c-N or /dev/i2c-N"),
        ("[[i2c]]\nbus = 1\naddresses = [1]\nspeed = 5", r"unknown key\(s\) speed"),
        ("[[usb]]\nvid = 0x1209", "needs vid and pid"),
        ("[[usb]]\nvid = 0x12090\npid = 1", "vid 0x12090 is out of range"),
        ("[[usb]]\nvid = 1\npid = true", "pid must be an integer"),
        ("[[usb]]\nvid = 1\npid = 2\ninterface = 300", "interface 0x12c is out of range"),
        ("allow_all = true", r"unknown key\(s\) allow_all"),
        ("driver = 5", "driver must be a string"),
        ("memory-limit-mib = 0", "memory-limit-mib 0x0 is out of range"),
    ],
)
def test_malformed_policy_is_a_policy_error(tmp_path, text, message):
    with pytest.raises(PolicyError, match=message) as ei:
        load_policy(write(tmp_path, text))
    assert "\n" not in str(ei.value)
    assert str(tmp_path / "p.toml") in str(ei.value)


def test_missing_and_non_utf8_policy(tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "nope.toml")
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(p)
