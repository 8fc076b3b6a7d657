"""Registers the bundled component drivers (drivers/components, built to drivers/build/components) with the
driver registry (loaded by registry._load_extensions).

Each is the same part as a core-module driver, built as a WASI 0.2 component against the proposals' WIT: the
C ones with wit-bindgen (``<part>_component``), the Rust one with wit-bindgen's Rust generator
(``<part>_rust``). They share the core drivers' simulated parts and, through their own policy files, grants.
"""

from __future__ import annotations

from edgeagent.drivers import registry

COMPONENT_I2C_INTERFACES = (
    "wasi:i2c/i2c@0.2.0-draft",
    "wasi:i2c/delay@0.2.0-draft",
    "edgeagent:driver/log@0.1.0",
)

_BUILT_FROM = {
    "hts221_component": ("hts221", "C, wit-bindgen"),
    "bme280_component": ("bme280", "C, wit-bindgen"),
    "bme280_rust": ("bme280", "Rust, wasm32-wasip2"),
}

for _name, (_core, _how) in _BUILT_FROM.items():
    _base = registry.REGISTRY[_core]
    registry.register(
        registry.DriverInfo(
            _name,
            _base.kind,
            "i2c",
            f"{_base.description} (WASI 0.2 component: {_how})",
            COMPONENT_I2C_INTERFACES,
            _base.default_address,
            _base.sim_model,
            module_file=f"components/{_name}.wasm",
        )
    )

registry.register(
    registry.DriverInfo(
        "usb_echo_component",
        "usb",
        "usb",
        "USB echo device: bulk, interrupt and control ping (WASI 0.2 component on component:usb@0.2.1, C)",
        (
            "component:usb/device@0.2.1",
            "component:usb/transfers@0.2.1",
            "component:usb/usb-hotplug@0.2.1",
            "edgeagent:driver/log@0.1.0",
        ),
        module_file="components/usb_echo_component.wasm",
    )
)
