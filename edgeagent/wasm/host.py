"""The host-module API: how Python code implements a guest's imports (see the package docstring)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from edgeagent.wasm.fastcall import GuestMemory
    from edgeagent.wasm.guest import Guest

# Core value types, named as in the Wasm spec's text format.
I32 = "i32"
I64 = "i64"
F32 = "f32"
F64 = "f64"
VALTYPES = (I32, I64, F32, F64)


class HostTrap(Exception):
    """Raised by a host function when the guest broke the ABI: the guest traps with this reason."""


def signed32(x: int) -> int:
    """The signed reading of an i32 that arrived unsigned."""
    return x - (1 << 32) if x & 0x80000000 else x


@dataclasses.dataclass(frozen=True)
class HostFuncSpec:
    name: str
    params: tuple[str, ...]
    results: tuple[str, ...]
    blocking: bool
    module: str | None
    attr: str


def hostfunc(
    name: str,
    *,
    params: tuple[str, ...] = (),
    results: tuple[str, ...] = (),
    blocking: bool = False,
    module: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Marks a HostModule method as the import ``name`` of the module's interface."""
    for t in (*params, *results):
        if t not in VALTYPES:
            raise ValueError(f"hostfunc {name}: unknown value type {t!r}")
    if len(results) > 1:
        raise ValueError(f"hostfunc {name}: at most one result")

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn._hostfunc = HostFuncSpec(name, tuple(params), tuple(results), blocking, module, fn.__name__)  # type: ignore[attr-defined]
        return fn

    return mark


class HostModule:
    """One WIT interface implemented in Python, instantiated once per guest.

    Subclasses set ``interface`` (the import module name) and decorate methods with ``@hostfunc``.
    ``guest`` and ``memory`` are bound by the runtime before the guest can call anything.
    """

    interface: str = ""
    _specs: tuple[HostFuncSpec, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs: dict[str, HostFuncSpec] = {}
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                spec = getattr(value, "_hostfunc", None)
                if isinstance(spec, HostFuncSpec):
                    specs[spec.attr] = spec
        cls._specs = tuple(specs.values())

    def __init__(self) -> None:
        self._guest: Guest | None = None
        self._memory: GuestMemory | None = None

    @property
    def guest(self) -> Guest:
        if self._guest is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a guest")
        return self._guest

    @property
    def memory(self) -> GuestMemory:
        if self._memory is None:
            raise HostTrap("the guest exports no memory")
        return self._memory

    def bind(self, guest: Guest, memory: GuestMemory | None) -> None:
        """Called by the runtime once the instance exists (before ``_initialize`` runs)."""
        self._guest = guest
        self._memory = memory

    def imports(self) -> Iterator[tuple[str, HostFuncSpec, Callable[..., Any]]]:
        """(module, spec, bound method) for each import this host provides."""
        for spec in self._specs:
            yield spec.module or self.interface, spec, getattr(self, spec.attr)


T = TypeVar("T")


class HandleTable(Generic[T]):
    """Resource handles as the guest sees them: small non-zero i32s mapped to host objects.

    Handle 0 is never issued, so a zero-initialised guest variable is never a valid handle.
    """

    def __init__(self) -> None:
        self._items: dict[int, T] = {}
        self._next = 1

    def add(self, item: T) -> int:
        h = self._next
        self._next += 1
        self._items[h] = item
        return h

    def get(self, handle: int) -> T:
        try:
            return self._items[handle]
        except KeyError:
            raise HostTrap(f"invalid handle {handle}") from None

    def remove(self, handle: int) -> T:
        try:
            return self._items.pop(handle)
        except KeyError:
            raise HostTrap(f"invalid handle {handle}") from None

    @property
    def mapping(self) -> dict[int, T]:
        """The live handle -> object dict, for hot paths that look up with ``.get`` (None: not a handle)."""
        return self._items

    def __contains__(self, handle: int) -> bool:
        return handle in self._items

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> list[T]:
        return list(self._items.values())
