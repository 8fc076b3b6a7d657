"""The firmware's TCG2 binary event log in the crypto-agile format (TCG PC Client Platform Firmware Profile).

Layout, in the spec's names:

- The first event is a ``TCG_PCR_EVENT`` in the old SHA1 format (PCRIndex 0, EventType EV_NO_ACTION, a
  20-byte zero Digest) whose Event is a ``TCG_EfiSpecIDEvent`` with signature ``"Spec ID Event03\\0"``. Its
  ``digestSizes`` list is the only place that says how long each algorithm's digest is, so later events are
  parsed with those sizes, including algorithms this code does not know.
- Every later event is a ``TCG_PCR_EVENT2``: PCRIndex, EventType, a ``TPML_DIGEST_VALUES`` (count, then
  ``TPMT_HA`` = hashAlg + digest) and EventSize + Event.
- ``EV_NO_ACTION`` events are informational and never extended. One of them, ``"StartupLocality\\0"`` +
  a locality byte, says at which locality TPM2_Startup ran: PCR 0 then starts as ``00..00 || locality``
  instead of all zeros (tpm2-tools 5.4's ``tpm2_eventlog`` gets this wrong; Keylime relies on it).

Unknown event types are kept and named ``unknown(0x........)``; they are replayed like any other event
because the TPM extended them all the same. Any structural problem raises ``EventLogError`` naming the
offset: the parser is fuzzed so that nothing else escapes from it.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from collections.abc import Iterable, Mapping, Sequence

from edgeagent.errors import EventLogError
from edgeagent.measure import algs

# ---------------------------------------------------------------- event types (PC Client FW Profile, 10.4.1)
EV_PREBOOT_CERT = 0x00000000
EV_POST_CODE = 0x00000001
EV_UNUSED = 0x00000002
EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
EV_ACTION = 0x00000005
EV_EVENT_TAG = 0x00000006
EV_S_CRTM_CONTENTS = 0x00000007
EV_S_CRTM_VERSION = 0x00000008
EV_CPU_MICROCODE = 0x00000009
EV_PLATFORM_CONFIG_FLAGS = 0x0000000A
EV_TABLE_OF_DEVICES = 0x0000000B
EV_COMPACT_HASH = 0x0000000C
EV_IPL = 0x0000000D
EV_IPL_PARTITION_DATA = 0x0000000E
EV_NONHOST_CODE = 0x0000000F
EV_NONHOST_CONFIG = 0x00000010
EV_NONHOST_INFO = 0x00000011
EV_OMIT_BOOT_DEVICE_EVENTS = 0x00000012
EV_POST_CODE2 = 0x00000013
EV_EFI_EVENT_BASE = 0x80000000
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
EV_EFI_GPT_EVENT = 0x80000006
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
EV_EFI_HANDOFF_TABLES = 0x80000009
EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
EV_EFI_HANDOFF_TABLES2 = 0x8000000B
EV_EFI_VARIABLE_BOOT2 = 0x8000000C
EV_EFI_GPT_EVENT2 = 0x8000000D
EV_EFI_HCRTM_EVENT = 0x80000010
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2
EV_EFI_SPDM_DEVICE_POLICY = 0x800000E3
EV_EFI_SPDM_DEVICE_AUTHORITY = 0x800000E4

EVENT_TYPE_NAMES: dict[int, str] = {
    value: name for name, value in list(globals().items()) if name.startswith("EV_") and type(value) is int
}

# Event types whose digest the spec defines as the hash of the Event field itself. Only for these can a
# digest be checked against its event data when hunting for the event that makes a replay diverge.
DIGEST_OF_EVENT_DATA = frozenset(
    {EV_SEPARATOR, EV_ACTION, EV_EFI_ACTION, EV_EFI_VARIABLE_DRIVER_CONFIG, EV_EFI_GPT_EVENT}
)

SPEC_ID_SIGNATURE = b"Spec ID Event03\0"
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\0"
MAX_PCR_INDEX = 23  # a PC Client TPM has PCRs 0-23
_TPM_ALG_SHA1 = 0x0004


def event_type_name(event_type: int) -> str:
    return EVENT_TYPE_NAMES.get(event_type, f"unknown(0x{event_type:08x})")


# ---------------------------------------------------------------- structures
@dataclasses.dataclass(frozen=True)
class SpecIdEvent:
    """TCG_EfiSpecIDEvent: the crypto-agile log's header, carried by the first (SHA1-format) event."""

    digest_sizes: tuple[tuple[int, int], ...]  # TCG_EfiSpecIdEventAlgorithmSize: (algorithmId, digestSize)
    platform_class: int = 0  # 0 = client, 1 = server
    spec_version_minor: int = 0
    spec_version_major: int = 2
    spec_errata: int = 0
    uintn_size: int = 2  # 1 = UINT32, 2 = UINT64 (the firmware's UINTN)
    vendor_info: bytes = b""

    @property
    def banks(self) -> list[str]:
        return [algs.alg_name(a) for a, _ in self.digest_sizes]

    def to_bytes(self) -> bytes:
        out = bytearray(SPEC_ID_SIGNATURE)
        out += struct.pack(
            "<IBBBBI",
            self.platform_class,
            self.spec_version_minor,
            self.spec_version_major,
            self.spec_errata,
            self.uintn_size,
            len(self.digest_sizes),
        )
        for alg, size in self.digest_sizes:
            out += struct.pack("<HH", alg, size)
        out += struct.pack("<B", len(self.vendor_info)) + self.vendor_info
        return bytes(out)


@dataclasses.dataclass(frozen=True)
class Event:
    """TCG_PCR_EVENT2. ``number`` (0 is the Spec ID event) and ``offset`` locate it in its log."""

    pcr_index: int
    event_type: int
    digests: tuple[tuple[int, bytes], ...]  # TPML_DIGEST_VALUES as (hashAlg, digest), in log order
    event: bytes
    number: int = dataclasses.field(default=0, compare=False)
    offset: int = dataclasses.field(default=0, compare=False)

    @property
    def type_name(self) -> str:
        return event_type_name(self.event_type)

    @property
    def extended(self) -> bool:
        """EV_NO_ACTION events are logged but never extended into a PCR."""
        return self.event_type != EV_NO_ACTION

    def digest(self, bank: str) -> bytes | None:
        alg = algs.ALG_ID.get(bank)
        for a, d in self.digests:
            if a == alg:
                return d
        return None

    def describe(self) -> str:
        return f"event #{self.number} ({self.type_name}, PCR {self.pcr_index}, offset {self.offset})"


@dataclasses.dataclass(frozen=True)
class EventLog:
    spec_id: SpecIdEvent
    events: tuple[Event, ...]  # the TCG_PCR_EVENT2s after the Spec ID event

    @functools.cached_property
    def startup_locality(self) -> int:
        """The locality TPM2_Startup ran at, from the StartupLocality event (0 when there is none)."""
        for ev in self.events:
            if ev.event_type == EV_NO_ACTION and ev.event.startswith(STARTUP_LOCALITY_SIGNATURE):
                return ev.event[len(STARTUP_LOCALITY_SIGNATURE)]
        return 0

    @property
    def pcrs(self) -> list[int]:
        """PCRs some event extends."""
        return sorted({ev.pcr_index for ev in self.events if ev.extended})


# ---------------------------------------------------------------- parsing
class _Reader:
    """Bounds-checked little-endian reads; every shortfall is an EventLogError naming the offset."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.buf) - self.pos:
            raise EventLogError(
                f"event log truncated at offset {self.pos}: {what} needs {n} bytes, "
                f"{len(self.buf) - self.pos} left"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos


def _parse_spec_id(data: bytes, offset: int) -> SpecIdEvent:
    if not data.startswith(SPEC_ID_SIGNATURE):
        raise EventLogError(
            f"not a crypto-agile TCG2 event log: the first event is not a Spec ID Event03 (starts with "
            f"{data[:16]!r}; a SHA1-only log?)"
        )
    r = _Reader(data)
    r.take(16, "Spec ID signature")
    platform_class = r.u32("platformClass")
    minor, major = r.u8("specVersionMinor"), r.u8("specVersionMajor")
    errata, uintn = r.u8("specErrata"), r.u8("uintnSize")
    count = r.u32("numberOfAlgorithms")
    where = f"Spec ID event at offset {offset}"
    if count == 0 or count > r.left // 4:
        raise EventLogError(f"{where}: numberOfAlgorithms {count} does not fit the event")
    sizes: list[tuple[int, int]] = []
    for _ in range(count):
        alg, size = r.u16("algorithmId"), r.u16("digestSize")
        if any(a == alg for a, _ in sizes):
            raise EventLogError(f"{where}: algorithm {algs.alg_name(alg)} listed twice")
        known = algs.TPM_ALG.get(alg)
        if known is not None and known[1] != size:
            raise EventLogError(f"{where}: {known[0]} digest size {size}, the registry says {known[1]}")
        if size == 0:
            raise EventLogError(f"{where}: {algs.alg_name(alg)} digest size 0")
        sizes.append((alg, size))
    vendor = r.take(r.u8("vendorInfoSize"), "vendorInfo")
    if r.left:
        raise EventLogError(f"{where}: {r.left} bytes after vendorInfo")
    return SpecIdEvent(tuple(sizes), platform_class, minor, major, errata, uintn, vendor)


def parse(buf: bytes) -> EventLog:
    """Parses a whole log. Raises EventLogError for an empty, truncated, SHA1-only or malformed log."""
    if not buf:
        raise EventLogError("event log is empty")
    r = _Reader(bytes(buf))
    # TCG_PCR_EVENT (SHA1 format) carrying TCG_EfiSpecIDEvent.
    pcr, etype = r.u32("PCRIndex"), r.u32("EventType")
    sha1 = r.take(20, "Digest")
    if pcr != 0 or etype != EV_NO_ACTION or any(sha1):
        raise EventLogError(
            "not a crypto-agile TCG2 event log: the first event must be EV_NO_ACTION in PCR 0 with a zero "
            f"digest (got {event_type_name(etype)} in PCR {pcr})"
        )
    spec_offset = r.pos
    spec_id = _parse_spec_id(r.take(r.u32("EventSize"), "Spec ID event"), spec_offset)
    sizes = dict(spec_id.digest_sizes)
    events: list[Event] = []
    pcr0_extended = False
    locality_seen = False
    while r.left:
        offset, number = r.pos, len(events) + 1
        where = f"event #{number} at offset {offset}"
        pcr, etype, count = r.u32("PCRIndex"), r.u32("EventType"), r.u32("TPML_DIGEST_VALUES.count")
        if pcr > MAX_PCR_INDEX:
            raise EventLogError(f"{where}: PCR index {pcr} out of range 0-{MAX_PCR_INDEX}")
        if count > len(sizes):
            raise EventLogError(f"{where}: {count} digests, the Spec ID event declares {len(sizes)}")
        digests: list[tuple[int, bytes]] = []
        for _ in range(count):
            alg = r.u16("hashAlg")
            if alg not in sizes:
                raise EventLogError(f"{where}: {algs.alg_name(alg)} digest not declared by the Spec ID event")
            if any(a == alg for a, _ in digests):
                raise EventLogError(f"{where}: two {algs.alg_name(alg)} digests")
            digests.append((alg, r.take(sizes[alg], f"{algs.alg_name(alg)} digest")))
        data = r.take(r.u32("EventSize"), "Event")
        ev = Event(pcr, etype, tuple(digests), data, number, offset)
        if etype == EV_NO_ACTION and data.startswith(STARTUP_LOCALITY_SIGNATURE):
            _check_startup_locality(ev, where, pcr0_extended=pcr0_extended, seen=locality_seen)
            locality_seen = True
        elif etype != EV_NO_ACTION and pcr == 0:
            pcr0_extended = True
        events.append(ev)
    return EventLog(spec_id, tuple(events))


def _check_startup_locality(ev: Event, where: str, *, pcr0_extended: bool, seen: bool) -> None:
    if len(ev.event) != len(STARTUP_LOCALITY_SIGNATURE) + 1:
        raise EventLogError(f"{where}: StartupLocality event of {len(ev.event)} bytes, expected 17")
    if ev.pcr_index != 0:
        raise EventLogError(f"{where}: StartupLocality event logged for PCR {ev.pcr_index}, not PCR 0")
    if seen:
        raise EventLogError(f"{where}: a second StartupLocality event")
    if pcr0_extended:
        raise EventLogError(f"{where}: StartupLocality event after PCR 0 was already extended")
    if ev.event[-1] > 4:
        raise EventLogError(f"{where}: StartupLocality {ev.event[-1]} is not a TPM locality (0-4)")


# ---------------------------------------------------------------- replay
def _replay_banks(log: EventLog, banks: Iterable[str] | None) -> list[str]:
    declared = log.spec_id.banks
    if banks is None:
        return [b for b in declared if algs.can_hash(b)]
    out = list(banks)
    for b in out:
        if b not in declared:
            raise EventLogError(f"event log has no {b} digests (it declares {', '.join(declared)})")
        if not algs.can_hash(b):
            raise EventLogError(f"cannot compute {b} here to replay the event log")
    return out


def initial_value(log: EventLog, pcr: int, bank: str) -> bytes:
    """A PCR's value before the first event: zero, except PCR 0 which holds the startup locality."""
    value = bytearray(algs.zero(bank))
    if pcr == 0:
        value[-1] = log.startup_locality
    return bytes(value)


def replay(log: EventLog, banks: Iterable[str] | None = None) -> dict[int, dict[str, bytes]]:
    """The PCR values the log says the TPM holds: ``{pcr: {bank: value}}`` for every extended PCR.

    ``banks`` defaults to every algorithm the Spec ID event declares that hashlib can compute. Raises
    EventLogError when an extended event lacks a digest for a replayed bank.
    """
    names = _replay_banks(log, banks)
    ids = [algs.ALG_ID[b] for b in names]
    pcrs: dict[int, dict[str, bytes]] = {}
    for ev in log.events:
        if ev.event_type == EV_NO_ACTION:
            continue
        state = pcrs.get(ev.pcr_index)
        if state is None:
            state = pcrs[ev.pcr_index] = {b: initial_value(log, ev.pcr_index, b) for b in names}
        found = dict(ev.digests)
        for bank, alg in zip(names, ids, strict=True):
            d = found.get(alg)
            if d is None:
                raise EventLogError(f"{ev.describe()} has no {bank} digest")
            state[bank] = algs.extend(bank, state[bank], d)
    return pcrs


def history(log: EventLog, pcr: int, bank: str) -> list[tuple[Event, bytes]]:
    """Each event extended into ``pcr`` with the PCR's value after it: where a replay can be cut short."""
    _replay_banks(log, [bank])
    value = initial_value(log, pcr, bank)
    out: list[tuple[Event, bytes]] = []
    for ev in log.events:
        if ev.pcr_index != pcr or not ev.extended:
            continue
        d = ev.digest(bank)
        if d is None:
            raise EventLogError(f"{ev.describe()} has no {bank} digest")
        value = algs.extend(bank, value, d)
        out.append((ev, value))
    return out


# ---------------------------------------------------------------- encoding (tests, the embedded demo)
def spec_id_event(banks: Sequence[str], *, vendor_info: bytes = b"") -> SpecIdEvent:
    """A client-platform Spec ID event (spec version 2.0, UINT64 UINTN) declaring ``banks``."""
    for b in banks:
        if b not in algs.ALG_ID:
            raise EventLogError(f"unknown hash algorithm {b!r}")
    return SpecIdEvent(tuple((algs.ALG_ID[b], algs.DIGEST_SIZE[b]) for b in banks), vendor_info=vendor_info)


def measurement(
    pcr: int, event_type: int, data: bytes, banks: Sequence[str], *, measured: bytes | None = None
) -> Event:
    """An event whose digests are the hashes of ``measured`` (default: the event data itself)."""
    payload = data if measured is None else measured
    return Event(pcr, event_type, tuple((algs.ALG_ID[b], algs.digest(b, payload)) for b in banks), data)


def startup_locality_event(locality: int) -> Event:
    return Event(0, EV_NO_ACTION, (), STARTUP_LOCALITY_SIGNATURE + bytes([locality]))


def build(banks: Sequence[str], events: Iterable[Event]) -> EventLog:
    """A log declaring ``banks``; events are numbered (offsets are known only once encoded)."""
    evs = tuple(dataclasses.replace(ev, number=i) for i, ev in enumerate(events, start=1))
    return EventLog(spec_id_event(banks), evs)


def encode(log: EventLog) -> bytes:
    """The binary log: the SHA1-format Spec ID event, then each TCG_PCR_EVENT2. ``parse`` inverts it."""
    spec = log.spec_id.to_bytes()
    out = bytearray(struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec)) + spec)
    for ev in log.events:
        out += struct.pack("<III", ev.pcr_index, ev.event_type, len(ev.digests))
        for alg, d in ev.digests:
            out += struct.pack("<H", alg) + d
        out += struct.pack("<I", len(ev.event)) + ev.event
    return bytes(out)


def digests_by_bank(ev: Event) -> Mapping[str, bytes]:
    """The event's digests keyed by bank name, as ``Tpm.pcr_extend`` takes them."""
    return {algs.alg_name(a): d for a, d in ev.digests}
