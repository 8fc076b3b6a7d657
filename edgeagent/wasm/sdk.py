"""Where the guest SDK's C headers are, for builds outside the edgeagent tree (`edgeagent sdk include`)."""

from __future__ import annotations

from pathlib import Path

from edgeagent.errors import ConfigError

SOURCE_TREE = Path(__file__).resolve().parents[2]
HEADERS = {"driver": ("drivers", "edgeagent_i2c.h"), "controller": ("controllers", "edgeagent_controller.h")}


def include_dir(kind: str) -> Path:
    """The directory holding the driver (``edgeagent_i2c.h``, ``edgeagent_usb.h``) or controller
    (``edgeagent_controller.h``) header: the checkout's, or /usr/share/edgeagent/include/KIND of a packaged
    install. ConfigError when neither has it."""
    folder, header = HEADERS[kind]
    for d in (SOURCE_TREE / folder / "include", Path("/usr/share/edgeagent/include") / kind):
        if (d / header).is_file():
            return d
    raise ConfigError(f"the {kind} SDK header {header} is not installed (looked in {SOURCE_TREE / folder})")
