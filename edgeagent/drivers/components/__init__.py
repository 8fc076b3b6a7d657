"""Component drivers: WASI 0.2 components speaking the proposals' WIT (``wasi:i2c``, ``component:usb``).

The hosts here serve the interfaces to ``edgeagent.wasm.component.ComponentGuest``; ``i2c_driver`` wraps a
component exporting ``edgeagent:driver/i2c-driver`` so ``run-driver`` and the agent treat it
like a core driver.
"""
