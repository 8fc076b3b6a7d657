"""The Wasm runtime shared by drivers and controllers.

Guests are wasm32-wasi core modules (reactor style). The runtime gives each guest its own Store with a memory
limit and an epoch deadline, calls its exports and serves its imports through the wasmtime C API's
``*_unchecked`` entry points (a host call costs well under 1 us instead of ~8 us on wasmtime-py's generic
path).

Using it
========
::

    from edgeagent.wasm import Runtime, ModuleCache, Guest, Limits

    runtime = Runtime.default()                      # one Engine + epoch ticker thread per process
    cache = ModuleCache(state_dir / "cache" / "wasm")
    module = cache.load(runtime, wasm_bytes, name="tmp102")   # WasmError: not Wasm, corrupt, ...
    hosts = [I2cHost(grants), DelayHost(), LogHost("tmp102")]
    guest = Guest(runtime, module, name="tmp102", hosts=hosts,
                  limits=Limits(memory_bytes=16 << 20), required_exports=["init", "read"])
    rc = guest.call("init", 1, 1, 0x48)              # ints/floats in, one value (or None) out
    value = guest.memory.read(ptr, 8)               # bounds-checked, no copy through wasmtime-py
    snap = guest.snapshot()                          # edgeagent.wasm.snapshot.Snapshot
    guest.close()

Every failure of a guest comes out as ``error_class`` (``DriverError`` by default, ``ControllerError`` for
controllers) whose message names the guest and the cause, e.g. ``driver tmp102: trapped: unreachable`` or
``driver spin: stopped: ran past its 50 ms compute limit``. The guest's Store is unusable after a trap only if
its own state is broken; the agent itself never is.

Writing a host module (the API edgeagent.drivers.hosts' I2C and USB hosts are written against)
===============================================================================================
A host module is a subclass of ``edgeagent.wasm.host.HostModule`` implementing one WIT interface.
``interface``
is the import module name the guest uses (the WIT interface name, e.g. ``"wasi:i2c/i2c"``,
``"component:usb/device"``). Each method decorated with ``@hostfunc`` becomes one import::

    from edgeagent.wasm.host import HostModule, HostTrap, hostfunc, I32, I64

    class EchoHost(HostModule):
        interface = "example:echo/echo"

        def __init__(self, device):          # per-guest state: handles, grants, the backend
            super().__init__()
            self.device = device

        @hostfunc("[method]device.send", params=(I32, I32, I32), results=(I32,), blocking=True)
        def send(self, handle: int, ptr: int, length: int) -> int:
            data = self.memory.read(ptr, length)     # bytes; HostTrap if ptr/len is outside guest memory
            try:
                n = self.device.send(data)
            except OSError:
                return ERR_IO                         # errors are values the guest sees, never exceptions
            self.memory.write_u32(out_ptr, n)        # write results into guest-allocated buffers
            return 0

Rules:

- Names. Import names follow the component model's canonical names for the WIT item: a free function keeps its
  WIT name (``delay-ns``), a resource method is ``[method]<resource>.<name>``, a constructor
  ``[constructor]<resource>``, a drop ``[resource-drop]<resource>``. ``hostfunc(...,
  module="other:pkg/iface")``
  overrides the import module for one function. Resources cross as i32 handles the host allocates (see
  ``HandleTable`` in edgeagent.wasm.host).
- Types. ``params``/``results`` are core value types: ``I32``, ``I64``, ``F32``, ``F64``; at most one result.
  i32/i64 arguments arrive as **unsigned** Python ints (pointers and lengths are unsigned); a signed value is
  ``edgeagent.wasm.host.signed32(x)``. Return an int/float for one result, ``None`` for none.
- Lists and strings cross as (ptr, len) pairs in guest memory: the guest allocates, the host reads/writes
  through
  ``self.memory`` (a ``GuestMemory``: ``read(ptr, n)``, ``write(ptr, data)``, ``read_u32/write_u32``,
  ``read_u64/write_u64``, ``size``, and ``address(ptr, n)``: the checked host address, to hand a guest buffer
  to C code such as libusb without a copy). Every access is bounds-checked against the guest's current memory
  size; an
  out-of-bounds pointer raises ``HostTrap`` (the guest traps, the error names it). No copy goes through
  wasmtime-py: the memory's base address is cached (engines are built with ``memory_may_move = False`` so
  growth
  never moves it) and the size is re-read when an access looks out of bounds (i.e. after ``memory.grow``).
- Errors. A WIT ``result<T, error-code>`` is returned as an i32: ``0`` for ok (or a non-negative count), a
  negative number for the error-code variant case (the numbering is the interface's, documented in its C
  header
  under drivers/include/). A device failing is an error *value*; it never raises.
  ``raise HostTrap("reason")`` for a guest breaking the ABI (bad handle, bad pointer): the guest traps and the
  caller gets ``error_class("driver NAME: trapped: reason")``. Any other exception escaping a host function
  is a
  host bug: it also traps the guest, and the caller gets ``error_class`` whose ``__cause__`` is the exception.
- ``blocking=True`` marks a function that may wait on I/O or sleep: time spent in it does not count against
  the guest's compute limit (the epoch deadline is re-armed when it returns, if an epoch tick passed since it
  was last armed), but it does count against the per-call wall-clock limit (``Limits.call_ms``).
- ``self.guest`` (the ``Guest``; ``.name``) and ``self.memory`` are set by the runtime when the guest is
  instantiated, before any host function can run. One HostModule instance serves one guest.
- Register nothing globally: pass the instances in ``Guest(..., hosts=[...])``. An import that no host module
  (and not WASI preview 1) provides is a load error naming the import.

Modules: engine (Runtime, Limits), cache (ModuleCache), fastcall (the ctypes fast path, GuestMemory),
host (HostModule API), guest (Guest), moduleinfo (imports/exports read once per module), snapshot
(Snapshot), hosts/log (the generic log import). The driver hosts (i2c, delay, usb) wrap hardware and live
in `edgeagent.drivers.hosts`; the controller hosts in `edgeagent.controllers.hosts`.
"""

from __future__ import annotations

from edgeagent.wasm.cache import ModuleCache
from edgeagent.wasm.engine import Limits, Runtime
from edgeagent.wasm.fastcall import GuestMemory
from edgeagent.wasm.guest import Guest
from edgeagent.wasm.host import F32, F64, I32, I64, HandleTable, HostModule, HostTrap, hostfunc, signed32
from edgeagent.wasm.snapshot import Snapshot

__all__ = [
    "F32",
    "F64",
    "I32",
    "I64",
    "Guest",
    "GuestMemory",
    "HandleTable",
    "HostModule",
    "HostTrap",
    "Limits",
    "ModuleCache",
    "Runtime",
    "Snapshot",
    "hostfunc",
    "signed32",
]
