"""A device layout for measurement tests: config file, policies, Wasm modules, an extra file, a state dir."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgeagent.config import AgentConfig, load_config


@dataclasses.dataclass
class Device:
    root: Path
    config_file: Path
    tcti: str
    extra: Path
    driver: Path

    def config(self) -> AgentConfig:
        return load_config(self.config_file, env={})

    def cli(self, *args: str) -> list[str]:
        return ["--config", str(self.config_file), *args]


def make_device(root: Path, tcti: str) -> Device:
    for d in ("policies", "drivers", "controllers", "state"):
        (root / d).mkdir(parents=True)
    (root / "policies" / "tmp102.toml").write_text('device = "/dev/i2c-1"\naddresses = [0x48]\n')
    driver = root / "drivers" / "tmp102.wasm"
    driver.write_bytes(b"\0asm\x01\0\0\0" + b"driver v1")
    (root / "controllers" / "labeler.wasm").write_bytes(b"\0asm\x01\0\0\0" + b"controller v1")
    extra = root / "extra.bin"
    extra.write_bytes(b"firmware blob v1")
    config_file = root / "agent.toml"
    config_file.write_text(
        f'state_dir = "{root / "state"}"\n'
        f'tpm_tcti = "{tcti}"\n'
        f'policies_dir = "{root / "policies"}"\n'
        "[measure]\n"
        f'extra_paths = ["{extra}"]\n'
        f'firmware_log = "{root / "absent-firmware-log"}"\n'
        "[drivers]\n"
        f'modules_dir = "{root / "drivers"}"\n'
        'modules = ["tmp102.wasm"]\n'
        "[controllers]\n"
        f'dir = "{root / "controllers"}"\n'
    )
    return Device(root, config_file, tcti, extra, driver)
