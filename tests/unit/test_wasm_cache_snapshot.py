"""Compiled-module cache (hits, corrupt entries, bad modules) and snapshot/restore."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from edgeagent.drivers.hosts.i2c import DelayHost, I2cHost
from edgeagent.errors import DriverError, StateError, WasmError
from edgeagent.wasm import Guest, ModuleCache, Snapshot
from edgeagent.wasm.cache import MAGIC
from edgeagent.wasm.hosts.log import LogHost


def hosts():
    return [I2cHost(), DelayHost(), LogHost("m")]


def test_cache_compiles_once_then_loads_serialized_code(runtime, test_guest, tmp_path):
    data = test_guest("misbehave")
    cache = ModuleCache(tmp_path / "cache")
    m1 = cache.load(runtime, data, name="m")
    assert (cache.stats.compiles, cache.stats.hits) == (1, 0)
    (entry,) = (tmp_path / "cache").iterdir()
    assert entry.name.endswith(f"-{runtime.fingerprint}.cwasm")
    m2 = ModuleCache(tmp_path / "cache").load(runtime, data, name="m")
    fresh = ModuleCache(tmp_path / "cache")
    fresh.load(runtime, data, name="m")
    assert (fresh.stats.compiles, fresh.stats.hits) == (0, 1)
    for m in (m1, m2):
        assert Guest(runtime, m, name="m", hosts=hosts()).call("tick") == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_cache_entry_is_recompiled_not_loaded(runtime, test_guest, tmp_path, damage):
    data = test_guest("misbehave")
    ModuleCache(tmp_path).load(runtime, data, name="m")
    (entry,) = tmp_path.glob("*.cwasm")
    blob = bytearray(entry.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0xFF
    elif damage == "truncate":
        blob = blob[: len(blob) // 3]
    else:
        blob = bytearray(b"not a cache entry")
    entry.write_bytes(bytes(blob))
    cache = ModuleCache(tmp_path)
    m = cache.load(runtime, data, name="m")
    assert (cache.stats.corrupt, cache.stats.compiles, cache.stats.hits) == (1, 1, 0)
    assert entry.read_bytes().startswith(MAGIC)  # rewritten
    assert Guest(runtime, m, name="m", hosts=hosts()).call("tick") == 1
    again = ModuleCache(tmp_path)
    again.load(runtime, data, name="m")
    assert again.stats.hits == 1


def test_different_modules_get_different_entries(runtime, test_guest, tmp_path):
    cache = ModuleCache(tmp_path)
    cache.load(runtime, test_guest("misbehave"), name="a")
    cache.load(runtime, test_guest("no_driver_exports"), name="b")
    assert len(list(tmp_path.glob("*.cwasm"))) == 2


def test_unwritable_cache_dir_only_costs_a_compile(runtime, test_guest, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = ModuleCache(blocker / "sub")
    cache.load(runtime, test_guest("misbehave"), name="m")
    assert cache.stats.compiles == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"^drv: not a WebAssembly module \(no \\0asm magic\)"),
        (b"#!/bin/sh\necho hi\n", r"not a WebAssembly module"),
        (b"\0asm\x0d\x00\x01\x00", r"not a core WebAssembly module \(a component"),
        (b"\0asm\x01\x00\x00\x00\x01\xff", r"^drv: invalid WebAssembly module"),
    ],
)
def test_not_a_wasm_module(runtime, tmp_path, data, message):
    with pytest.raises(WasmError, match=message):
        ModuleCache(tmp_path).load(runtime, data, name="drv")
    assert not list(tmp_path.glob("*.cwasm"))


def test_load_file_errors_name_the_file(runtime, tmp_path):
    with pytest.raises(WasmError, match=r"cannot read .*missing\.wasm"):
        ModuleCache(None).load_file(runtime, tmp_path / "missing.wasm")


def test_snapshot_restore_continues_heap_and_globals(runtime, test_guest, tmp_path):
    module = ModuleCache(None).load(runtime, test_guest("misbehave"), name="m")
    g = Guest(runtime, module, name="m", hosts=hosts())
    for _ in range(3):
        g.call("tick")
    assert g.call("history_sum") == 60
    snap = g.snapshot()
    assert "__stack_pointer" in snap.globals
    path = tmp_path / "m.snap"
    snap.save(path)
    assert oct(path.stat().st_mode & 0o777) != "0o777"
    g.close()

    fresh = Guest(runtime, module, name="m", hosts=hosts(), initialize=False)
    fresh.restore(Snapshot.load(path))
    assert fresh.call("tick") == 4
    assert fresh.call("history_sum") == 100
    # A fresh instance without the snapshot starts from zero.
    assert Guest(runtime, module, name="m", hosts=hosts()).call("tick") == 1


def test_restore_grows_memory_as_needed(runtime, test_guest):
    module = ModuleCache(None).load(runtime, test_guest("misbehave"), name="m")
    g = Guest(runtime, module, name="m", hosts=hosts())
    for _ in range(2000):  # heap growth
        g.call("tick")
    snap = g.snapshot()
    fresh = Guest(runtime, module, name="m", hosts=hosts(), initialize=False)
    small = fresh.memory.size
    fresh.restore(snap)
    assert fresh.memory.size == len(snap.memory) >= small
    assert fresh.call("tick") == 2001


def test_snapshot_of_a_guest_without_stack_pointer_is_refused(runtime, tmp_path):
    import wasmtime

    wat = '(module (memory (export "memory") 1) (global (export "g") (mut i32) (i32.const 1)))'
    module = wasmtime.Module(runtime.engine, wasmtime.wat2wasm(wat))
    g = Guest(runtime, module, name="nosp")
    with pytest.raises(DriverError, match=r"does not export __stack_pointer"):
        g.snapshot()


@pytest.mark.parametrize("damage", [b"junk", "truncate", "flip"])
def test_corrupt_snapshot_file_is_a_state_error(runtime, test_guest, tmp_path, damage):
    module = ModuleCache(None).load(runtime, test_guest("misbehave"), name="m")
    g = Guest(runtime, module, name="m", hosts=hosts())
    data = g.snapshot().to_bytes()
    if damage == "truncate":
        data = data[:-100]
    elif damage == "flip":
        data = data[:-10] + bytes([data[-10] ^ 1]) + data[-9:]
    else:
        data = damage
    path = tmp_path / "bad.snap"
    path.write_bytes(data)
    with pytest.raises(StateError):
        Snapshot.load(path)


def test_snapshot_save_is_atomic(runtime, test_guest, tmp_path):
    module = ModuleCache(None).load(runtime, test_guest("misbehave"), name="m")
    snap = Guest(runtime, module, name="m", hosts=hosts()).snapshot()
    path = tmp_path / "s.snap"
    snap.save(path)
    snap.save(path)
    assert os.listdir(tmp_path) == ["s.snap"]


def test_a_cache_dir_this_user_cannot_write_falls_back_to_the_user_cache(
    runtime, test_guest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: as non-root every driver run warned that /var/lib/edgeagent/cache could not be written.
    from edgeagent.config import load_config
    from edgeagent.drivers import loader

    system = tmp_path / "var-lib-edgeagent"
    system.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == system else real_access(p, m))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    cfg = load_config(None, overrides={"state_dir": system})
    cache = loader.cache_for(cfg)
    assert cache.directory == tmp_path / "home-cache" / "edgeagent" / "wasm"
    with caplog.at_level(logging.DEBUG, logger="edgeagent.wasm.cache"):
        cache.load(runtime, test_guest("misbehave"), name="m")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert cache.path_for(runtime, test_guest("misbehave")).is_file()  # type: ignore[union-attr]


def test_an_unwritable_cache_warns_once_per_process(
    runtime, test_guest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cache = ModuleCache(blocker / "wasm")  # mkdir fails: ENOTDIR
    with caplog.at_level(logging.WARNING, logger="edgeagent.wasm.cache"):
        cache.load(runtime, test_guest("misbehave"), name="one")
        cache.load(runtime, test_guest("looping_driver"), name="two")
    assert len([r for r in caplog.records if "cannot write module cache" in r.message]) == 1
