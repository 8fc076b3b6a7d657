"""``edgeagent:controller/log``: the drivers' leveled, rate-limited log import, for controllers."""

from __future__ import annotations

from edgeagent.wasm.hosts.log import LogHost


class ControllerLogHost(LogHost):
    interface = "edgeagent:controller/log"
