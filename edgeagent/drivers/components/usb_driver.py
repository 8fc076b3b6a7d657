"""A component USB echo driver (world ``usb-echo-driver``: imports component:usb@0.2.1, exports
``edgeagent:components/usb-echo``), driven like the core ``UsbEchoWasm`` so ``run-driver``'s USB session and
the benchmark take either: ``init()``, ``ping(kind, size)``, ``close()``. Errors name the driver and the
operation: a policy denial is AccessDenied, a device failure HardwareError (with the host's detail), a trap or
a limit DriverError."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from wasmtime.component import Component

from edgeagent.drivers.components.usb import ComponentUsb
from edgeagent.drivers.hosts.usb import UsbGrant
from edgeagent.errors import AccessDenied, DriverError, EdgeAgentError, HardwareError
from edgeagent.hw import usb
from edgeagent.wasm.component import ComponentGuest
from edgeagent.wasm.engine import Limits, Runtime
from edgeagent.wasm.hosts.component_log import ComponentLogHost

ECHO_INTERFACE = "edgeagent:components/usb-echo@0.1.0"
PING_KINDS = {"bulk": 0, "interrupt": 1, "control": 2}
MAX_PING = 512  # c/usb_echo_component.c's buffers


class ComponentUsbEcho:
    def __init__(
        self,
        component: Component,
        *,
        name: str = "usb_echo_component",
        runtime: Runtime,
        backend: usb.UsbBackend,
        grants: Iterable[UsbGrant],
        limits: Limits | None = None,
    ) -> None:
        self.name = name
        self.usb = ComponentUsb(backend, grants, name=name)
        self.log = ComponentLogHost(name, keep=20)
        self.guest = ComponentGuest(
            runtime,
            component,
            name=name,
            hosts=[*self.usb.hosts(), self.log],
            limits=limits,
            exports=ECHO_INTERFACE,
            required_exports=("init", "ping"),
        )
        self._ops = {k: f"{k} ping" for k in PING_KINDS}

    def error(self, op: str, code: str) -> EdgeAgentError:
        if code == "access":
            what = self.usb.denials[-1].what if self.usb.denials else "a device"
            return AccessDenied(f"driver {self.name}: {op}: access denied by policy to {what}")
        if op.endswith("ping") and code == "other":
            return HardwareError(f"driver {self.name}: {op}: the echo came back different")
        last = self.usb.last_error
        detail = (
            f" ({last.detail})" if last is not None and last.code.wit_name == code and last.detail else ""
        )
        return HardwareError(f"driver {self.name}: {op}: usb {code}{detail}")

    def _check(self, op: str, result: Any) -> Any:
        if isinstance(result, str):  # the err case of result<_, libusb-error> (an enum: a str)
            raise self.error(op, result)
        return result

    def init(self) -> None:
        self._check("init", self.guest.call("init"))

    def ping(self, kind: str, size: int) -> int:
        if not 1 <= size <= MAX_PING:
            raise DriverError(f"driver {self.name}: ping size {size} is outside 1-{MAX_PING} bytes")
        got = self.guest.call("ping", PING_KINDS[kind], size)
        return got if got.__class__ is int else int(self._check(self._ops[kind], got))

    def close(self) -> None:
        self.guest.close()
        self.usb.close()

    def __enter__(self) -> ComponentUsbEcho:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
