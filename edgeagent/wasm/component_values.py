"""Typed-value conversion for component calls, with each function's types read once.

wasmtime-py converts a component value by walking its type through the C API on every call (a ``FuncType``
per call, ``valtype_from_ptr`` for every parameter, every list element type and every variant case, and a
variant's case classes recomputed per value); that walk is most of a host call's cost. Here a ``Codec`` is
built once per function type from wasmtime-py's type objects and keeps what the walk would find; the
conversions themselves are wasmtime-py's, except ``list<u8>``, which moves as one block (the C API represents
it as one ``wasmtime_component_val_t`` per byte) instead of a Python loop over elements.

Values are wasmtime-py's (bytes for ``list<u8>``, ``Record``, ``Variant``, str for enums, ...), so code
written against wasmtime-py's API sees no difference.
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Callable
from typing import Any

from wasmtime import _ffi as ffi
from wasmtime import component as wc
from wasmtime.component._types import Record, Variant

_VAL = ffi.wasmtime_component_val_t
_STRIDE = ctypes.sizeof(_VAL)
_OF = _VAL.of.offset
_U8 = ffi.WASMTIME_COMPONENT_U8.value
_BOOL = ffi.WASMTIME_COMPONENT_BOOL
_RESULT = ffi.WASMTIME_COMPONENT_RESULT

Lift = Callable[[Any], Any]
Lower = Callable[[Any, Any, Any], None]


@dataclasses.dataclass(frozen=True)
class Err:
    """The err case of a WIT ``result``, as a host function returns it (the ok case is the plain value)."""

    value: Any = None


class Codec:
    """``lift(c)``: a C value (``wasmtime_component_val_t``) -> Python, taking ownership of what it holds.
    ``lower(store, value, ptr)``: Python -> the C value at ``ptr``. ``classes``: the Python types a value of
    this type can be (for untagged variants, as wasmtime-py decides them)."""

    __slots__ = ("classes", "lift", "lower")

    def __init__(self, lift: Lift, lower: Lower, classes: set[type]) -> None:
        self.lift = lift
        self.lower = lower
        self.classes = classes


def codec(ty: Any) -> Codec:
    """The codec of a wasmtime-py ValType."""
    if isinstance(ty, wc.ListType):
        element = ty.element
        if isinstance(element, wc.U8):
            return Codec(_lift_bytes, _lower_bytes, {bytes})
        return _list(codec(element))
    if isinstance(ty, wc.RecordType):
        return _record([(name, codec(t)) for name, t in ty.fields])
    if isinstance(ty, wc.TupleType):
        return _tuple([codec(t) for t in ty.elements])
    if isinstance(ty, wc.VariantType | wc.OptionType | wc.ResultType):
        return _variant(ty)
    classes: set[type] = set()
    ty.add_classes(classes)
    return Codec(ty.convert_from_c, ty.convert_to_c, classes)


# ------------------------------------------------------------------------------------------- list<u8>
class _RawList(ctypes.Structure):
    """A ``wasmtime_component_vallist_t`` read as plain integers (no ctypes pointer objects)."""

    _fields_ = (("size", ctypes.c_size_t), ("data", ctypes.c_void_p))


_LIST_OFF = _OF  # the list is the value's payload


def _raw_fn(name: str, *argtypes: Any) -> Any:
    """A C function of wasmtime's library taking plain addresses (its own function object: wasmtime-py's,
    typed with pointer classes, would need a ctypes pointer object built per call)."""
    fn = ffi.dll[name]
    fn.argtypes = list(argtypes)
    fn.restype = None
    return fn


_vallist_new_uninit = _raw_fn("wasmtime_component_vallist_new_uninit", ctypes.c_void_p, ctypes.c_size_t)
_vallist_delete = _raw_fn("wasmtime_component_vallist_delete", ctypes.c_void_p)
_KINDS_U8 = bytes((_U8,)) * 4096  # the elements' kind bytes, for lists up to 4 KiB (see _lower_bytes)
_LIST = ffi.WASMTIME_COMPONENT_LIST


def _lift_bytes(c: Any) -> bytes:
    raw = _RawList.from_address(ctypes.addressof(c) + _LIST_OFF)
    n = raw.size
    try:
        if not n:
            return b""
        return ctypes.string_at(raw.data or 0, n * _STRIDE)[_OF::_STRIDE]
    finally:
        _vallist_delete(ctypes.addressof(c) + _LIST_OFF)


def _lower_bytes(store: Any, val: Any, ptr: Any) -> None:
    if not isinstance(val, bytes | bytearray | memoryview):
        raise TypeError("expected bytes value")
    data = val if val.__class__ is bytes else bytes(val)  # (a memoryview's len counts items, not bytes)
    n = len(data)
    out = ptr.contents
    at = ctypes.addressof(out) + _LIST_OFF
    _vallist_new_uninit(at, n)
    if n:
        # Straight into the C array: each element's kind byte and its u8 (a u8 element's other bytes are not
        # read).
        elements = _RawList.from_address(at).data or 0
        view = memoryview((ctypes.c_ubyte * (n * _STRIDE)).from_address(elements)).cast("B")
        view[0::_STRIDE] = _KINDS_U8[:n] if n <= len(_KINDS_U8) else bytes((_U8,)) * n
        view[_OF::_STRIDE] = data
    out.kind = _LIST


# ------------------------------------------------------------------------------------------- containers
def _list(element: Codec) -> Codec:
    def lift(c: Any) -> list[Any]:
        lst = c.of.list
        try:
            out = []
            for i in range(lst.size):
                item = lst.data[i]
                out.append(element.lift(item))
                item.kind = _BOOL
                item.of.boolean = False
            return out
        finally:
            ffi.wasmtime_component_vallist_delete(ctypes.byref(lst))

    def lower(store: Any, val: Any, ptr: Any) -> None:
        if not isinstance(val, list):
            raise TypeError("expected list value")
        raw = ffi.wasmtime_component_vallist_t()
        ffi.wasmtime_component_vallist_new_uninit(raw, len(val))
        i = 0
        try:
            for e in val:
                element.lower(store, e, ctypes.pointer(raw.data[i]))
                i += 1
        except BaseException:
            for j in range(i, len(val)):
                raw.data[j].kind = _BOOL
                raw.data[j].of.boolean = False
            ffi.wasmtime_component_vallist_delete(ctypes.byref(raw))
            raise
        ptr.contents.kind = ffi.WASMTIME_COMPONENT_LIST
        ptr.contents.of.list = raw

    return Codec(lift, lower, {list})


def _record(fields: list[tuple[str, Codec]]) -> Codec:
    names = [(name, ffi.str_to_capi, c) for name, c in fields]

    def lift(c: Any) -> Record:
        rec = c.of.record
        try:
            out = Record()
            for i, (name, _, fc) in enumerate(names):
                raw = rec.data[i]
                setattr(out, name, fc.lift(raw.val))
                raw.val.kind = _BOOL
                raw.val.of.boolean = False
            return out
        finally:
            ffi.wasmtime_component_valrecord_delete(ctypes.byref(rec))

    def lower(store: Any, val: Any, ptr: Any) -> None:
        raw = ffi.wasmtime_component_valrecord_t()
        ffi.wasmtime_component_valrecord_new_uninit(raw, len(names))
        i = 0
        try:
            for name, to_capi, fc in names:
                fc.lower(store, getattr(val, name), ctypes.pointer(raw.data[i].val))
                raw.data[i].name = to_capi(name)
                i += 1
        except BaseException:
            for j in range(i, len(names)):
                raw.data[j].val.kind = _BOOL
                raw.data[j].val.of.boolean = False
            ffi.wasmtime_component_valrecord_delete(ctypes.byref(raw))
            raise
        ptr.contents.kind = ffi.WASMTIME_COMPONENT_RECORD
        ptr.contents.of.record = raw

    return Codec(lift, lower, {Record})


def _tuple(elements: list[Codec]) -> Codec:
    def lift(c: Any) -> tuple[Any, ...]:
        tup = c.of.tuple
        try:
            out = []
            for i, ec in enumerate(elements):
                raw = tup.data[i]
                out.append(ec.lift(raw))
                raw.kind = _BOOL
                raw.of.boolean = False
            return tuple(out)
        finally:
            ffi.wasmtime_component_valtuple_delete(ctypes.byref(tup))

    def lower(store: Any, val: Any, ptr: Any) -> None:
        if not isinstance(val, tuple) or len(val) != len(elements):
            raise TypeError("expected a tuple of the right length")
        raw = ffi.wasmtime_component_valtuple_t()
        ffi.wasmtime_component_valtuple_new_uninit(raw, len(elements))
        i = 0
        try:
            for ec, v in zip(elements, val, strict=True):
                ec.lower(store, v, ctypes.pointer(raw.data[i]))
                i += 1
        except BaseException:
            for j in range(i, len(elements)):
                raw.data[j].kind = _BOOL
                raw.data[j].of.boolean = False
            ffi.wasmtime_component_valtuple_delete(ctypes.byref(raw))
            raise
        ptr.contents.kind = ffi.WASMTIME_COMPONENT_TUPLE
        ptr.contents.of.tuple = raw

    return Codec(lift, lower, {tuple})


# ------------------------------------------------------------------------------------------- variants
def _variant(ty: Any) -> Codec:
    """variant, option and result: wasmtime-py's _lower/_lift with the cases, their codecs and whether the
    variant is tagged (a ``Variant``) or not (the payload alone) decided once."""
    cases = [(name, codec(t) if t is not None else None) for name, t in ty._cases()]
    tagged = ty._tagged()
    kind = (
        "result"
        if isinstance(ty, wc.ResultType)
        else "option"
        if isinstance(ty, wc.OptionType)
        else "variant"
    )
    by_name = dict(cases)
    classes: set[type] = {Variant} if tagged else set()
    if not tagged:
        for _, cc in cases:
            classes |= {object} if cc is None else cc.classes
    case_classes = [(name, cc, tuple(cc.classes) if cc is not None else ()) for name, cc in cases]

    def payload_in(val: Any) -> tuple[str, Any]:
        """The case name and the payload of a Python value."""
        if val.__class__ is Err:  # a host function's err case, whatever the ok and err types
            return "err", val.value
        if kind == "result" and tagged and not isinstance(val, Variant):
            return "ok", val
        if tagged:
            if not isinstance(val, Variant):
                raise TypeError("expected Variant type")
            return val.tag, val.payload
        for name, cc, cls in case_classes:
            if cc is None:
                if val is None:
                    return name, None
            elif isinstance(val, cls):
                return name, val
        raise ValueError("value not valid for this variant")

    def lower_payload(store: Any, name: str, payload: Any) -> Any:
        if name not in by_name:
            raise ValueError(f"no case {name!r} in this variant")
        cc = by_name[name]
        if cc is None:
            return None
        raw = _VAL()
        cc.lower(store, payload, ctypes.pointer(raw))
        return ffi.wasmtime_component_val_new(ctypes.byref(raw))

    def lift_payload(name: str, ptr: Any) -> Any:
        cc = by_name[name]
        if cc is None:
            return Variant(name) if tagged else None
        value = cc.lift(ptr.contents)
        ptr.contents.kind = _BOOL
        ptr.contents.of.boolean = False
        ffi.wasmtime_component_val_delete(ptr)
        return Variant(name, value) if tagged else value

    if kind == "result":

        def lower(store: Any, val: Any, ptr: Any) -> None:
            name, payload = payload_in(val)
            raw = lower_payload(store, name, payload)
            out = ptr.contents
            out.kind = _RESULT
            res = out.of.result
            res.is_ok = name == "ok"
            res.val = raw

        def lift(c: Any) -> Any:
            return lift_payload("ok" if c.of.result.is_ok else "err", c.of.result.val)

    elif kind == "option":

        def lower(store: Any, val: Any, ptr: Any) -> None:
            name, payload = payload_in(val)
            ptr.contents.kind = ffi.WASMTIME_COMPONENT_OPTION
            ptr.contents.of.option = lower_payload(store, name, payload)

        def lift(c: Any) -> Any:
            return lift_payload("some" if c.of.option else "none", c.of.option)

    else:

        def lower(store: Any, val: Any, ptr: Any) -> None:
            name, payload = payload_in(val)
            raw = lower_payload(store, name, payload)
            ptr.contents.kind = ffi.WASMTIME_COMPONENT_VARIANT
            ptr.contents.of.variant.discriminant = ffi.str_to_capi(name)
            ptr.contents.of.variant.val = raw

        def lift(c: Any) -> Any:
            tag = ffi.to_str(c.of.variant.discriminant)
            ffi.wasm_byte_vec_delete(ctypes.byref(c.of.variant.discriminant))
            return lift_payload(tag, c.of.variant.val)

    return Codec(lift, lower, classes)
