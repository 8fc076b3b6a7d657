"""The Wasm runtime against misbehaving guests: every failure is a DriverError naming the guest and the cause,
and the agent (this process) and other guests keep working."""

from __future__ import annotations

import logging

import pytest

from edgeagent.drivers.hosts.i2c import (
    ERR_ACCESS,
    ERR_ARBITRATION_LOSS,
    ERR_NO_ACK_ADDRESS,
    DelayHost,
    I2cGrant,
    I2cHost,
)
from edgeagent.errors import ControllerError, DriverError
from edgeagent.hw.i2c import ErrorCode
from edgeagent.hw.sim.clock import SimClock
from edgeagent.hw.sim.i2c_bus import SimI2cBus
from edgeagent.hw.sim.tmp102 import Tmp102
from edgeagent.wasm import Guest, HostModule, HostTrap, Limits, ModuleCache, hostfunc
from edgeagent.wasm.host import I32, I64, signed32
from edgeagent.wasm.hosts.log import LogHost, LogLimit


@pytest.fixture
def module(runtime, test_guest):
    def load(name: str):
        return ModuleCache(None).load(runtime, test_guest(name), name=name)

    return load


def converted_tmp102(**kwargs) -> Tmp102:
    """A TMP102 whose first conversion (26 ms after power-on) is done: these guests never wait for it."""
    clock = SimClock(lambda _: None)  # its sleep skips the wait and counts the skipped time
    part = Tmp102(clock=clock.now, **kwargs)
    clock.sleep(0.05)
    return part


def misbehave(runtime, module, *, limits=None, bus=None, addresses=frozenset({0x48})):
    bus = bus or SimI2cBus([converted_tmp102(temperature=25.0)])
    i2c, delay, log = I2cHost(), DelayHost(lambda s: None), LogHost("bad", keep=5, lines_per_second=0)
    handle = i2c.grant(I2cGrant(bus, addresses))
    g = Guest(runtime, module("misbehave"), name="bad", hosts=[i2c, delay, log], limits=limits)
    return g, i2c, handle, delay.new_handle(), log


def test_trap_names_guest_and_reason_and_guest_stays_usable(runtime, module):
    g, *_ = misbehave(runtime, module)
    with pytest.raises(DriverError, match=r"^driver bad: trapped in trap: unreachable"):
        g.call("trap")
    assert g.call("tick") == 1


@pytest.mark.parametrize(
    ("export", "args", "reason"),
    [
        ("div", (1, 0), "integer division by zero"),
        # The C shadow stack (64 KiB, first in memory) overflows below address 0 before wasmtime's own stack.
        ("recurse", (0,), "out-of-bounds memory access"),
    ],
)
def test_traps_map_to_readable_reasons(runtime, module, export, args, reason):
    g, *_ = misbehave(runtime, module)
    with pytest.raises(DriverError, match=f"driver bad: trapped in {export}: {reason}"):
        g.call(export, *args)


def test_infinite_loop_is_stopped_by_the_compute_limit(runtime, module):
    g, *_ = misbehave(runtime, module, limits=Limits(compute_ms=30))
    with pytest.raises(
        DriverError, match=r"driver bad: stopped in spin: ran past its 30 ms compute limit"
    ) as ei:
        g.call("spin")
    assert ei.value.guest == "bad"
    assert g.call("tick") == 1  # the same instance is still callable


def test_loop_over_blocking_host_calls_is_stopped_by_the_call_limit(runtime, module):
    # Epochs count wall-clock time: the compute limit must stay well above how long a loaded CI machine may
    # deschedule this thread between two host calls, or it (not the call limit) stops the loop.
    g, _i2c, _h, delay, _log = misbehave(runtime, module, limits=Limits(compute_ms=200, call_ms=400))
    with pytest.raises(DriverError, match=r"stopped in spin_host: ran past its 400 ms call limit"):
        g.call("spin_host", delay)


def test_memory_bomb_is_capped_by_the_memory_limit(runtime, module):
    g, *_ = misbehave(runtime, module, limits=Limits(memory_bytes=4 << 20))
    pages = g.call("bomb")
    assert pages * 65536 <= 4 << 20
    assert g.memory is not None and g.memory.size <= 4 << 20
    assert g.call("tick") == 1


def test_malloc_bomb_traps_inside_the_guest_only(runtime, module):
    # wasi-libc aborts when sbrk cannot grow memory: the guest traps, the host is untouched.
    g, *_ = misbehave(runtime, module, limits=Limits(memory_bytes=8 << 20))
    with pytest.raises(DriverError, match=r"trapped in malloc_bomb: unreachable"):
        g.call("malloc_bomb")
    assert g.memory is not None and g.memory.size <= 8 << 20


def test_guest_whose_memory_minimum_exceeds_the_limit_fails_to_instantiate(runtime, module):
    with pytest.raises(DriverError, match=r"^driver huge: cannot be instantiated"):
        Guest(runtime, module("huge_memory"), name="huge", limits=Limits(memory_bytes=16 << 20))


def test_unknown_import_is_named(runtime, module):
    with pytest.raises(DriverError, match=r"driver odd: imports unknown function env\.mystery"):
        Guest(runtime, module("unknown_import"), name="odd")


def test_import_with_wrong_signature_is_named(runtime, module):
    with pytest.raises(
        DriverError, match=r"import wasi:i2c/i2c\.\[method\]i2c\.read has type \(i32, i32\) -> \(i32\)"
    ):
        Guest(runtime, module("wrong_signature"), name="sig", hosts=[I2cHost()])


def test_missing_required_exports_are_named(runtime, module):
    with pytest.raises(DriverError, match=r"does not export ea_abi_version, init"):
        Guest(
            runtime,
            module("no_driver_exports"),
            name="nd",
            required_exports=["hello", "ea_abi_version", "init"],
        )


def test_calling_a_missing_export(runtime, module):
    g = Guest(runtime, module("no_driver_exports"), name="nd")
    with pytest.raises(DriverError, match=r"has no exported function 'nope'"):
        g.call("nope")
    assert g.call("hello") == 42


def test_bad_guest_pointer_traps_with_a_clear_reason(runtime, module):
    g, _i2c, handle, *_ = misbehave(runtime, module)
    with pytest.raises(
        DriverError, match=r"trapped in bad_pointer: guest buffer 0xfffffff0\+32 is outside its memory"
    ):
        g.call("bad_pointer", handle)


def test_invalid_handle_traps(runtime, module):
    g, *_ = misbehave(runtime, module)
    with pytest.raises(DriverError, match=r"trapped in read_word: invalid handle 99"):
        g.call("read_word", 99, 0x48, 0)


def test_unknown_transaction_op_kind_traps(runtime, module):
    g, _i2c, handle, *_ = misbehave(runtime, module)
    with pytest.raises(DriverError, match=r"operation 0 has unknown kind 7"):
        g.call("bad_txn", handle)


def test_i2c_register_read_write_read_and_transaction(runtime, module):
    g, _i2c, handle, *_ = misbehave(runtime, module)
    expected = (round(25.0 / 0.0625) << 4) & 0xFFFF
    assert g.call("read_word", handle, 0x48, 0) == expected
    assert g.call("read_word_txn", handle, 0x48, 0) == expected
    assert g.call("read_word_txn", handle, 0x48, 1) == 0x60A0


def test_denied_address_is_an_access_error_seen_by_the_guest(runtime, module):
    bus = SimI2cBus([Tmp102(), Tmp102(0x49)])
    g, i2c, handle, *_ = misbehave(runtime, module, bus=bus)
    before = bus.transactions
    assert g.call("read_word", handle, 0x49, 0) == ERR_ACCESS
    assert g.call("read_word_txn", handle, 0x49, 0) == ERR_ACCESS
    assert bus.transactions == before  # the bus was never touched
    assert [d.address for d in i2c.denials] == [0x49, 0x49]


def test_nack_and_injected_bus_errors_reach_the_guest_as_error_codes(runtime, module):
    bus = SimI2cBus([Tmp102()])
    g, _i2c, handle, *_ = misbehave(runtime, module, bus=bus, addresses=frozenset({0x48, 0x4A}))
    assert g.call("read_word", handle, 0x4A, 0) == ERR_NO_ACK_ADDRESS
    bus.inject(0x48, ErrorCode.ARBITRATION_LOSS)
    assert g.call("read_word_txn", handle, 0x48, 0) == ERR_ARBITRATION_LOSS
    assert g.call("read_word", handle, 0x48, 1) == 0x60A0  # the next transaction works again


def test_host_exception_becomes_a_driver_error_with_the_cause(runtime, module):
    class Broken:
        name = "broken"

        def transaction(self, address, ops):
            raise RuntimeError("backend bug")

        def close(self):
            pass

    g, _i2c, handle, *_ = misbehave(runtime, module, bus=Broken())
    with pytest.raises(DriverError, match=r"host function failed: RuntimeError: backend bug") as ei:
        g.call("read_word", handle, 0x48, 0)
    assert isinstance(ei.value.__cause__, RuntimeError)
    assert g.call("tick") == 1


def test_log_host_tags_lines_with_the_guest_name(runtime, module, caplog):
    g, *_rest, log = misbehave(runtime, module)
    with caplog.at_level("INFO", logger="edgeagent.guest.bad"):
        g.call("say")
    assert log.lines[-1][1] == "hello from misbehave"
    assert any(
        r.name == "edgeagent.guest.bad" and "hello from misbehave" in r.message for r in caplog.records
    )


def test_other_guests_keep_working_after_one_misbehaves(runtime, module):
    good, _i2c, handle, *_ = misbehave(runtime, module)
    bad, *_ = misbehave(runtime, module, limits=Limits(compute_ms=20))
    for export in ("trap", "spin"):
        with pytest.raises(DriverError):
            bad.call(export)
        assert good.call("read_word", handle, 0x48, 1) == 0x60A0


def test_error_class_and_kind_are_configurable(runtime, module):
    g = Guest(
        runtime,
        module("misbehave"),
        name="ctl",
        kind="controller",
        error_class=ControllerError,
        hosts=[I2cHost(), DelayHost(), LogHost("ctl")],
    )
    with pytest.raises(ControllerError, match=r"^controller ctl: trapped in trap"):
        g.call("trap")


def test_closed_guest_cannot_be_called(runtime, module):
    g = Guest(runtime, module("no_driver_exports"), name="nd")
    g.close()
    with pytest.raises(DriverError, match="is closed"):
        g.call("hello")


class Echo(HostModule):
    interface = "test:echo/echo"

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    @hostfunc("echo", params=(I32, I64), results=(I64,))
    def echo(self, a: int, b: int) -> int:
        self.seen.append((a, b))
        return b

    @hostfunc("fail", params=(I32,), results=(I32,))
    def fail(self, x: int) -> int:
        raise HostTrap(f"bad value {x}")


def test_hostfunc_spec_validation():
    with pytest.raises(ValueError, match="unknown value type"):
        hostfunc("x", params=("i8",))
    with pytest.raises(ValueError, match="at most one result"):
        hostfunc("x", results=(I32, I32))
    assert signed32(0xFFFFFFFF) == -1 and signed32(5) == 5
    assert {s.name for s in Echo._specs} == {"echo", "fail"}


def test_plain_read_and_write_imports(runtime, module):
    g, _i2c, handle, *_ = misbehave(runtime, module)
    assert g.call("pointer_read", handle, 0x48, 1) == 0x60A0
    assert g.call("pointer_read", handle, 0x4C, 1) == ERR_ACCESS


def test_host_memory_access_follows_memory_grow(runtime, module):
    g, *_ = misbehave(runtime, module)
    mem = g.memory
    assert mem is not None
    before = mem.size
    base = mem._base
    addr = g.call("grow", 4)
    assert addr == before
    mem.write(addr + 4 * 65536 - 4, b"\x01\x02\x03\x04")  # beyond the cached size: refreshed, not refused
    assert mem.read(addr + 4 * 65536 - 4, 4) == b"\x01\x02\x03\x04"
    assert mem.size == before + 4 * 65536
    assert mem._base == base  # memory_may_move = False: the cached base stays valid
    with pytest.raises(HostTrap, match="outside its memory"):
        mem.read(mem.size - 2, 4)


ECHO_WAT = """
(module
  (import "test:echo/echo" "echo" (func $echo (param i32 i64) (result i64)))
  (import "test:echo/echo" "fail" (func $fail (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (param i32 i64) (result i64) (call $echo (local.get 0) (local.get 1)))
  (func (export "boom") (result i32) (call $fail (i32.const 7)))
  (func (export "f64") (param f64) (result f64) (f64.mul (local.get 0) (f64.const 2))))
"""


def test_fast_path_values_cross_unsigned_and_wide(runtime):
    import wasmtime

    echo = Echo()
    g = Guest(
        runtime, wasmtime.Module(runtime.engine, wasmtime.wat2wasm(ECHO_WAT)), name="echo", hosts=[echo]
    )
    assert g.call("run", -1, -2) == -2  # results come back signed, as the Wasm value
    assert echo.seen == [(0xFFFFFFFF, 0xFFFFFFFFFFFFFFFE)]  # host functions see unsigned integers
    assert g.call("run", 5, 1 << 40) == 1 << 40
    assert g.call("f64", 1.25) == 2.5
    with pytest.raises(DriverError, match=r"driver echo: trapped in boom: bad value 7"):
        g.call("boom")
    with pytest.raises(TypeError):
        g.call("run", 1)


class Words(HostModule):
    """All-i32 host functions: the word-view callback path every project host module uses."""

    interface = "test:words/words"

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    @hostfunc("sub", params=(I32, I32), results=(I32,))
    def sub(self, a: int, b: int) -> int:
        self.seen.append((a, b))
        return a - b  # may be negative or above 2**31: the guest gets it modulo 2**32

    @hostfunc("poke", params=(I32,))
    def poke(self, ptr: int) -> None:
        self.memory.write_u32(ptr, 0xDEADBEEF)


WORDS_WAT = """
(module
  (import "test:words/words" "sub" (func $sub (param i32 i32) (result i32)))
  (import "test:words/words" "poke" (func $poke (param i32)))
  (memory (export "memory") 1)
  (func (export "sub") (param i32 i32) (result i32) (call $sub (local.get 0) (local.get 1)))
  (func (export "poke") (param i32) (result i32) (call $poke (local.get 0)) (i32.load (local.get 0)))
  (func (export "nothing")))
"""


def test_all_i32_host_functions_cross_as_unsigned_words(runtime):
    import wasmtime

    words = Words()
    g = Guest(
        runtime, wasmtime.Module(runtime.engine, wasmtime.wat2wasm(WORDS_WAT)), name="words", hosts=[words]
    )
    assert g.call("sub", 1, 9) == -8  # the host's -8 reaches the guest as the i32 -8
    assert g.call("sub", -1, 0) == -1
    assert g.call("sub", 7, 2) == 5
    assert words.seen == [(1, 9), (0xFFFFFFFF, 0), (7, 2)]  # unsigned on the host side
    assert g.call("poke", 64) == signed32(0xDEADBEEF)
    assert g.call("nothing") is None
    sub = g.bind("sub")
    assert sub(10, 3) == 7 and sub(0, 1) == -1
    with pytest.raises(DriverError, match="trapped in poke: guest buffer 0x10000\\+4 is outside its memory"):
        g.call("poke", 65536)
    g.close()
    with pytest.raises(DriverError, match="is closed"):
        sub(1, 2)


def test_guest_memory_bounds_and_helpers(runtime, module):
    g, *_ = misbehave(runtime, module)
    mem = g.memory
    assert mem is not None
    top = mem.size
    mem.write(100, b"abcdef")
    assert mem.read(100, 6) == b"abcdef" and mem.read(100, 0) == b""
    mem.write_at_most(200, b"0123456789", 4)  # a 4-byte guest buffer receives 4 bytes, not 10
    assert mem.read(200, 6) == b"0123\x00\x00"
    assert mem.read_checking(100, 3, 200, 4) == b"abc"
    with pytest.raises(HostTrap, match="outside its memory"):
        mem.read_checking(100, 3, top - 2, 4)  # the output buffer is checked too
    with pytest.raises(HostTrap, match="negative"):
        mem.read(-1, 2)
    with pytest.raises(HostTrap, match="outside its memory"):
        mem.write(top - 1, b"xy")
    mem.write_u32(300, -2)
    assert mem.read_u32(300) == 0xFFFFFFFE
    mem.write_u64(308, 1 << 40)
    assert mem.read_u64(308) == 1 << 40
    import struct

    mem.write(400, struct.pack("<3d", 1.5, -2.0, 1e300))
    assert mem.read_f64_array(400, 3) == [1.5, -2.0, 1e300]
    assert mem.read_f64_array(400, 0) == []
    with pytest.raises(HostTrap, match="outside its memory"):
        mem.read_f64_array(top - 8, 2)


def test_log_lines_beyond_the_rate_are_counted_and_reported_as_suppressed(runtime, module, caplog):
    # Before: lines beyond the rate vanished without a trace; now the next line that passes says how many.
    limit = LogLimit(rate=1.0, burst=3)
    log = LogHost("chatty", keep=20, limit=limit)
    g = Guest(runtime, module("misbehave"), name="chatty", hosts=[I2cHost(), DelayHost(), log])
    with caplog.at_level(logging.INFO, logger="edgeagent.guest.chatty"):
        for _ in range(10):  # one burst, far faster than 1/s: 3 pass, 7 are suppressed
            g.call("say")
        assert [t for _, t in log.lines] == ["hello from misbehave"] * 3 and log.dropped == 7
        limit._tokens = 1.0  # the budget refilled (as one second later), without sleeping
        g.call("say")
    texts = [t for _, t in log.lines]
    assert texts[-2:] == ["7 log lines suppressed (rate limit 1/s)", "hello from misbehave"]
    assert any("7 log lines suppressed" in r.message for r in caplog.records)


IDLE_WAT = """
(module
  (func (export "quick") (result i32) (i32.const 1))
  (func (export "spin") (loop $l (br $l))))
"""

START_SPIN_WAT = """
(module
  (func $spin (loop $l (br $l)))
  (start $spin))
"""


def _paused(rt) -> bool:
    return rt.paused and not rt.inflight


def test_the_epoch_ticker_sleeps_while_no_guest_runs_and_wakes_for_every_call():
    """An idle agent must not wake 100 times a second, yet every call keeps its compute limit -- including
    the first call after a pause, a loop in a start function, and calls racing the ticker's pause."""
    import threading

    import wasmtime

    from edgeagent.testbed.procs import wait_for
    from edgeagent.wasm import Runtime

    rt = Runtime(tick=0.005)
    try:
        mod = wasmtime.Module(rt.engine, wasmtime.wat2wasm(IDLE_WAT))
        g = Guest(rt, mod, name="idle", limits=Limits(compute_ms=20))
        wait_for(lambda: _paused(rt), timeout=10, what="the ticker to pause with no call in flight")
        epoch = rt.epoch
        threading.Event().wait(0.1)  # twenty ticks' worth of idleness
        assert rt.epoch == epoch and not rt.ticking
        for _ in range(5):  # each loop starts from a paused ticker and is still stopped
            wait_for(lambda: _paused(rt), timeout=10, what="the ticker to pause again")
            with pytest.raises(DriverError, match="stopped in spin: ran past its 20 ms compute limit"):
                g.call("spin")
            assert g.call("quick") == 1
        spin = g.bind("spin")
        wait_for(lambda: _paused(rt), timeout=10, what="the ticker to pause")
        with pytest.raises(DriverError, match="ran past its 20 ms compute limit"):
            spin()
        assert rt.epoch > epoch
        wait_for(lambda: _paused(rt), timeout=10, what="the ticker to pause")
        with pytest.raises(DriverError, match="trapped while starting"):
            Guest(rt, wasmtime.Module(rt.engine, wasmtime.wat2wasm(START_SPIN_WAT)), name="start")
        assert not rt.inflight

        # Quick calls from several threads race the ticker pausing and waking; a loop after each burst must
        # still be stopped (a lost wake-up would hang it here for ever).
        others = [Guest(rt, mod, name=f"q{i}") for i in range(3)]
        stop = threading.Event()

        def hammer(guest: Guest) -> None:
            while not stop.is_set():
                guest.call("quick")
                threading.Event().wait(0.0005)

        threads = [threading.Thread(target=hammer, args=(o,)) for o in others]
        for t in threads:
            t.start()
        try:
            for _ in range(20):
                with pytest.raises(DriverError, match="compute limit"):
                    g.call("spin")
        finally:
            stop.set()
            for t in threads:
                t.join()
        wait_for(lambda: _paused(rt), timeout=10, what="the ticker to pause after the burst")
    finally:
        rt.close()
