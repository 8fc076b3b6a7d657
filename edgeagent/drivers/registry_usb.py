"""Registers the bundled Wasm USB drivers with the driver registry (loaded by registry._load_extensions)."""

from __future__ import annotations

from edgeagent.drivers import registry

USB_INTERFACES = (
    "component:usb/device",
    "component:usb/transfers",
    "component:usb/usb-hotplug",
    "edgeagent:driver/log",
)

registry.register(
    registry.DriverInfo(
        "usb_echo",
        "usb",
        "usb",
        "USB echo device: bulk, interrupt and control ping (latency benchmark)",
        USB_INTERFACES,
    )
)
registry.register(
    registry.DriverInfo(
        "usb_storage",
        "usb",
        "usb",
        "USB mass storage: bulk-only transport + SCSI block read/write",
        USB_INTERFACES,
    )
)
