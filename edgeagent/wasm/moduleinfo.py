"""What instantiating a module needs to know about it: its imports and exports with their signatures.

wasmtime-py builds several Python objects per import and export type on every ``module.imports`` /
``module.exports`` (~0.2 ms for a small driver: more than a third of a cold start from the cache). A module's
imports and exports never change, so they are read once: kept beside the Module object (weakly: the entry
goes with the module), and stored in the compiled-module cache entry (cache.py) so a process starting from
the cache never asks wasmtime-py for them. Trust: the signatures only decide which host functions the
linker is given; wasmtime still checks every definition's type against the module's import at instantiation.
"""

from __future__ import annotations

import dataclasses
import json
import weakref
from typing import Any

import wasmtime

Signature = tuple[tuple[str, ...], tuple[str, ...]]  # (params, results) as core value type names


@dataclasses.dataclass(frozen=True)
class ModuleInfo:
    imports: tuple[tuple[str, str, Signature | None], ...]  # (module, name, signature; None: not a function)
    exports: tuple[str, ...]
    export_sigs: dict[str, Signature]

    @staticmethod
    def of(module: wasmtime.Module) -> ModuleInfo:
        """The module's info: remembered, else read from wasmtime (and remembered)."""
        info = _KNOWN.get(module)
        if info is None:
            imports = tuple((imp.module, imp.name or "", _signature(imp.type)) for imp in module.imports)
            exports = module.exports
            sigs = {x.name: sig for x in exports if (sig := _signature(x.type)) is not None}
            info = ModuleInfo(imports, tuple(x.name for x in exports), sigs)
            _KNOWN[module] = info
        return info

    def remember(self, module: wasmtime.Module) -> None:
        _KNOWN[module] = self

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "imports": [[m, n, _sig_json(sig)] for m, n, sig in self.imports],
                "exports": list(self.exports),
                "export_sigs": {k: _sig_json(v) for k, v in self.export_sigs.items()},
            },
            separators=(",", ":"),
        ).encode()

    @staticmethod
    def from_json(raw: bytes) -> ModuleInfo:
        """Raises ValueError (or KeyError/TypeError) for anything that is not what to_json wrote."""
        d = json.loads(raw)
        return ModuleInfo(
            tuple((str(m), str(n), _sig_from_json(sig)) for m, n, sig in d["imports"]),
            tuple(str(x) for x in d["exports"]),
            {str(k): s for k, v in d["export_sigs"].items() if (s := _sig_from_json(v)) is not None},
        )


def _signature(ty: object) -> Signature | None:
    if not isinstance(ty, wasmtime.FuncType):
        return None
    return (tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results))


def _sig_json(sig: Signature | None) -> Any:
    return None if sig is None else [list(sig[0]), list(sig[1])]


def _sig_from_json(raw: Any) -> Signature | None:
    if raw is None:
        return None
    params, results = raw
    return (tuple(str(p) for p in params), tuple(str(r) for r in results))


_KNOWN: weakref.WeakKeyDictionary[wasmtime.Module, ModuleInfo] = weakref.WeakKeyDictionary()
