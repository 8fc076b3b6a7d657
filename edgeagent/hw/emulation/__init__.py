"""Kernel device emulation with umockdev: simulated parts behind real /dev nodes.

Unmodified smbus2 and pyusb/libusb talk to ``/dev/i2c-N`` and ``/dev/bus/usb/BBB/DDD`` through umockdev's
LD_PRELOAD library; the ioctls land in Python handlers (``usbdevfs``, ``i2cdev``) that drive the same device
models as the in-process simulators (edgeagent.hw.sim). This is how the real library stacks are tested end to
end, hot-plug included, on a machine without the hardware.

Layout:
- ``server``: the emulator process (run under umockdev-wrapper: umockdev sends uevents only from a preloaded
  process). It builds the testbed, attaches the handlers and obeys JSON-line commands on stdin (plug, unplug,
  halt an endpoint, wait for a pending transfer, stats).
- ``client``: `Emulator`, the controlling side used by tests and benchmarks: starts the server, runs programs
  under the testbed (LD_PRELOAD + UMOCKDEV_DIR) and reads their JSON result. It never imports GI.
- ``usbdevfs`` / ``i2cdev``: the ioctl handlers (import GI; loaded only inside the server).
"""
