"""Driver capability policies: what buses, addresses and USB devices one driver may reach.

A policy is a TOML file (bundled defaults in ``policies/drivers/<driver>.toml``, site policies in
``<policies_dir>/drivers/``)::

    driver = "tmp102"            # optional: the driver this policy is for
    memory-limit-mib = 16        # optional: the guest's linear-memory limit

    [[i2c]]
    bus = 1                      # /dev/i2c-1 (or "i2c-1", "/dev/i2c-1")
    addresses = [0x48]           # 7- or 10-bit addresses the driver may talk to

    [[usb]]
    vid = 0x1209
    pid = 0x0001
    interface = 0                # optional: only this interface may be claimed

Anything not granted is denied: a driver with no ``[[i2c]]`` table reaches no I2C bus. A malformed file is a
PolicyError naming the file and the problem; nothing is ever granted by default on error.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from edgeagent.drivers.hosts.usb import UsbGrant
from edgeagent.errors import PolicyError

_TOP_KEYS = {"driver", "memory-limit-mib", "i2c", "usb", "description"}


@dataclasses.dataclass(frozen=True)
class I2cRule:
    bus: int
    addresses: frozenset[int]


# A USB rule is exactly what the USB host enforces: one type, so the policy and the host cannot drift apart.
UsbRule = UsbGrant


@dataclasses.dataclass(frozen=True)
class Policy:
    source: str
    driver: str | None = None
    i2c: tuple[I2cRule, ...] = ()
    usb: tuple[UsbRule, ...] = ()
    memory_limit_mib: int | None = None
    description: str = ""

    def i2c_addresses(self, bus: int) -> frozenset[int]:
        out: set[int] = set()
        for r in self.i2c:
            if r.bus == bus:
                out |= r.addresses
        return frozenset(out)

    def allows_i2c(self, bus: int, address: int) -> bool:
        return address in self.i2c_addresses(bus)

    def allows_usb(self, vid: int, pid: int, interface: int | None = None) -> bool:
        return any(r.allows(vid, pid, interface) for r in self.usb)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "driver": self.driver,
            "i2c": [
                {"bus": r.bus, "addresses": [f"{a:#04x}" for a in sorted(r.addresses)]} for r in self.i2c
            ],
            "usb": [
                {"vid": f"{r.vid:04x}", "pid": f"{r.pid:04x}", "interface": r.interface} for r in self.usb
            ],
            "memory_limit_mib": self.memory_limit_mib,
        }


def _int(value: Any, what: str, lo: int, hi: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"{where}: {what} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise PolicyError(f"{where}: {what} {value:#x} is out of range ({lo:#x}-{hi:#x})")
    return value


def _bus(value: Any, where: str) -> int:
    if isinstance(value, str):
        s = value.removeprefix("/dev/").removeprefix("i2c-")
        if not s.isdigit():
            raise PolicyError(f"{where}: i2c bus {value!r} is not N, i2c-N or /dev/i2c-N")
        value = int(s)
    return _int(value, "i2c bus", 0, 1 << 20, where)


def parse_policy(data: dict[str, Any], source: str) -> Policy:
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise PolicyError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}")
    driver = data.get("driver")
    if driver is not None and not isinstance(driver, str):
        raise PolicyError(f"{source}: driver must be a string")
    i2c_rules = []
    raw_i2c = data.get("i2c", [])
    if not isinstance(raw_i2c, list):
        raise PolicyError(f"{source}: i2c must be an array of tables ([[i2c]])")
    for n, rule in enumerate(raw_i2c, 1):
        where = f"{source}: [[i2c]] #{n}"
        if not isinstance(rule, dict):
            raise PolicyError(f"{where}: must be a table")
        extra = set(rule) - {"bus", "addresses"}
        if extra:
            raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        if "bus" not in rule or "addresses" not in rule:
            raise PolicyError(f"{where}: needs bus and addresses")
        addrs = rule["addresses"]
        if not isinstance(addrs, list) or not addrs:
            raise PolicyError(f"{where}: addresses must be a non-empty list")
        i2c_rules.append(
            I2cRule(_bus(rule["bus"], where), frozenset(_int(a, "address", 0, 0x3FF, where) for a in addrs))
        )
    usb_rules = []
    raw_usb = data.get("usb", [])
    if not isinstance(raw_usb, list):
        raise PolicyError(f"{source}: usb must be an array of tables ([[usb]])")
    for n, rule in enumerate(raw_usb, 1):
        where = f"{source}: [[usb]] #{n}"
        if not isinstance(rule, dict):
            raise PolicyError(f"{where}: must be a table")
        extra = set(rule) - {"vid", "pid", "interface"}
        if extra:
            raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        if "vid" not in rule or "pid" not in rule:
            raise PolicyError(f"{where}: needs vid and pid")
        iface = rule.get("interface")
        usb_rules.append(
            UsbRule(
                _int(rule["vid"], "vid", 0, 0xFFFF, where),
                _int(rule["pid"], "pid", 0, 0xFFFF, where),
                None if iface is None else _int(iface, "interface", 0, 255, where),
            )
        )
    mem = data.get("memory-limit-mib")
    return Policy(
        source=source,
        driver=driver,
        i2c=tuple(i2c_rules),
        usb=tuple(usb_rules),
        memory_limit_mib=None if mem is None else _int(mem, "memory-limit-mib", 1, 4096, source),
        description=str(data.get("description", "")),
    )


def load_policy(path: Path) -> Policy:
    """Reads and validates a policy file; PolicyError (one line, naming the file) on any problem."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"policy file {path} does not exist") from None
    except OSError as e:
        raise PolicyError(f"cannot read policy file {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PolicyError(f"policy file {path} is not valid TOML: {e}") from None
    return parse_policy(data, str(path))
