"""The imports a driver sees besides the generic log: ``edgeagent:driver/{i2c,delay,usb}`` (see drivers/wit/).

They sit with the drivers, not in `edgeagent.wasm` (the runtime shared with controllers), because they wrap
the hardware backends (`edgeagent.hw`).
"""
