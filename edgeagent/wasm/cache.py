"""The compiled-module cache: ``Module.serialize()`` output keyed by the module's sha256 and the engine.

Compiling a driver takes ~15 ms; loading its serialized code ~0.1 ms. Entries are named
``<sha256(module)>-<engine fingerprint>.cwasm`` (the fingerprint covers the wasmtime version and the engine
settings, which serialized code depends on). wasmtime trusts serialized code blindly (deserializing garbage is
undefined behaviour), so each entry carries a sha256 of its payload, checked before ``Module.deserialize``: a
corrupt or truncated entry is recompiled and replaced, never loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
from pathlib import Path

import wasmtime

from edgeagent.errors import WasmError
from edgeagent.wasm.engine import Runtime
from edgeagent.wasm.moduleinfo import ModuleInfo

log = logging.getLogger(__name__)

MAGIC = b"EAWC2\n"  # then sha256(rest), u32 length of the ModuleInfo JSON, the JSON, the serialized module
WASM_MAGIC = b"\0asm"
CORE_VERSION = b"\x01\x00\x00\x00"
COMPONENT_LAYER = b"\x0d\x00\x01\x00"  # version 0xd, layer 1: a component (a core module is 01 00 00 00)


@dataclasses.dataclass
class CacheStats:
    hits: int = 0
    compiles: int = 0
    corrupt: int = 0


def check_wasm(data: bytes, name: str) -> None:
    """Rejects what is obviously not a core Wasm module, with a message a user can act on."""
    if not data.startswith(WASM_MAGIC):
        raise WasmError(f"{name}: not a WebAssembly module (no \\0asm magic)")
    if data[4:8] != CORE_VERSION:
        raise WasmError(
            f"{name}: not a core WebAssembly module (a component or unknown version "
            f"{data[4:8].hex()}); drivers are wasm32-wasi core modules"
        )


def is_component(data: bytes) -> bool:
    """Whether ``data`` is a component (rather than a core module): the preamble's version/layer word.

    Here rather than in component.py so that asking does not load wasmtime's component bindings."""
    return data[:4] == WASM_MAGIC and data[4:8] == COMPONENT_LAYER


def is_component_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return is_component(f.read(8))
    except OSError:
        return False


def compile_module(runtime: Runtime, data: bytes, name: str) -> wasmtime.Module:
    check_wasm(data, name)
    try:
        return wasmtime.Module(runtime.engine, data)
    except wasmtime.WasmtimeError as e:
        first = str(e).strip().splitlines()
        raise WasmError(f"{name}: invalid WebAssembly module: {first[0] if first else e}") from None


def usable_directory(preferred: Path) -> Path | None:
    """``preferred`` if this process can create and write it, else the user's cache
    ($XDG_CACHE_HOME or ~/.cache, /edgeagent/wasm), else None (compile every time, quietly).

    Why: a non-root user running a driver against the default state directory (/var/lib/edgeagent, root's)
    would otherwise be warned on every run that the cache cannot be written.
    """

    def writable(d: Path) -> bool:
        probe = d
        while not probe.exists():
            if probe.parent == probe:
                return False
            probe = probe.parent
        return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)

    if writable(preferred):
        return preferred
    home = os.environ.get("XDG_CACHE_HOME") or (
        str(Path.home() / ".cache") if Path.home() != Path("/") else ""
    )
    fallback = Path(home) / "edgeagent" / "wasm" if home else None
    if fallback is not None and writable(fallback):
        log.debug("module cache %s is not writable; using %s", preferred, fallback)
        return fallback
    log.debug("module cache %s is not writable and no user cache is; compiling every time", preferred)
    return None


_UNWRITABLE: set[Path] = set()


class ModuleCache:
    """Serialized compiled modules under ``directory`` (created 0700 on first write)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.stats = CacheStats()

    def path_for(self, runtime: Runtime, data: bytes) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{hashlib.sha256(data).hexdigest()}-{runtime.fingerprint}.cwasm"

    def load(self, runtime: Runtime, data: bytes, *, name: str) -> wasmtime.Module:
        """The compiled module for ``data``: from the cache when a valid entry exists, else compiled (and
        stored).

        Raises WasmError (naming ``name``) for bytes that are not a valid core module. A cache directory that
        cannot be written only costs the next start a compile; it is logged, not raised.
        """
        check_wasm(data, name)
        path = self.path_for(runtime, data)
        if path is not None:
            module = self._read(runtime, path, name)
            if module is not None:
                self.stats.hits += 1
                return module
        module = compile_module(runtime, data, name)
        self.stats.compiles += 1
        if path is not None:
            self._write(path, module)
        return module

    def load_file(self, runtime: Runtime, path: Path, *, name: str | None = None) -> wasmtime.Module:
        name = name or path.stem
        try:
            data = path.read_bytes()
        except OSError as e:
            raise WasmError(f"{name}: cannot read {path}: {e.strerror}") from None
        return self.load(runtime, data, name=name)

    def _read(self, runtime: Runtime, path: Path, name: str) -> wasmtime.Module | None:
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("module cache entry %s unreadable (%s); recompiling", path, e.strerror)
            return None
        head = len(MAGIC) + 32
        rest = blob[head:]
        info: ModuleInfo | None = None
        if (
            blob.startswith(MAGIC)
            and len(rest) > 4
            and hashlib.sha256(rest).digest() == blob[len(MAGIC) : head]
        ):
            n = int.from_bytes(rest[:4], "little")
            with contextlib.suppress(ValueError, KeyError, TypeError):
                info = ModuleInfo.from_json(rest[4 : 4 + n])
        if info is None and blob.startswith(b"EAWC") and not blob.startswith(MAGIC):
            log.debug("module cache entry %s for %s has an older format; recompiling", path.name, name)
            return None
        if info is None:
            self.stats.corrupt += 1
            log.warning("module cache entry %s for %s is corrupt; recompiling", path.name, name)
            return None
        payload = rest[4 + n :]
        try:
            module = wasmtime.Module.deserialize(runtime.engine, payload)
        except wasmtime.WasmtimeError as e:  # e.g. written by an engine with other settings
            self.stats.corrupt += 1
            log.warning(
                "module cache entry %s for %s rejected (%s); recompiling",
                path.name,
                name,
                str(e).splitlines()[0] if str(e) else e,
            )
            return None
        info.remember(module)
        return module

    def _write(self, path: Path, module: wasmtime.Module) -> None:
        info = ModuleInfo.of(module).to_json()
        payload = len(info).to_bytes(4, "little") + info + bytes(module.serialize())
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(tmp, "wb") as f:
                f.write(MAGIC + hashlib.sha256(payload).digest() + payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            # Once per directory and process: a cache that cannot be written costs compile time, nothing else.
            level = logging.DEBUG if path.parent in _UNWRITABLE else logging.WARNING
            _UNWRITABLE.add(path.parent)
            log.log(level, "cannot write module cache entry %s: %s", path, e.strerror)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
