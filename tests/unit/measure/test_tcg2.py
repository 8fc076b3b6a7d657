"""TCG2 crypto-agile log: structure, replay semantics (StartupLocality, EV_NO_ACTION), and every bad input."""

from __future__ import annotations

import hashlib
import struct

import pytest

from edgeagent.errors import EventLogError
from edgeagent.measure import tcg2
from tests.unit.measure.logs import BANKS, boot_log


def _ext(alg: str, value: bytes, data: bytes) -> bytes:
    return hashlib.new(alg, value + hashlib.new(alg, data).digest()).digest()


def test_hand_assembled_log_parses_field_by_field() -> None:
    # Built with struct here, not with the encoder, so a symmetric encoder/parser bug cannot hide.
    spec = (
        b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 2) + struct.pack("<HHHH", 4, 20, 11, 32)
    )
    spec += b"\x02ab"
    head = struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(spec)) + spec
    d1, d256 = hashlib.sha1(b"sep").digest(), hashlib.sha256(b"sep").digest()
    ev = struct.pack("<III", 7, 4, 2) + struct.pack("<H", 4) + d1 + struct.pack("<H", 11) + d256
    ev += struct.pack("<I", 3) + b"sep"
    log = tcg2.parse(head + ev)
    assert log.spec_id.digest_sizes == ((4, 20), (11, 32))
    assert log.spec_id.vendor_info == b"ab"
    assert log.spec_id.banks == ["sha1", "sha256"]
    (e,) = log.events
    assert (e.pcr_index, e.type_name, e.event, e.number, e.offset) == (
        7,
        "EV_SEPARATOR",
        b"sep",
        1,
        len(head),
    )
    assert e.digest("sha1") == d1 and e.digest("sha256") == d256
    assert tcg2.encode(log) == head + ev


def test_round_trip_and_event_names() -> None:
    log = boot_log()
    again = tcg2.parse(tcg2.encode(log))
    assert again == log
    names = [e.type_name for e in again.events]
    assert names[:3] == ["EV_NO_ACTION", "EV_S_CRTM_VERSION", "EV_EFI_PLATFORM_FIRMWARE_BLOB"]
    assert "unknown(0x00007777)" in names
    assert again.startup_locality == 3


def test_startup_locality_sets_pcr0_initial_value() -> None:
    log = boot_log(locality=3)
    pcr0 = [e for e in log.events if e.pcr_index == 0 and e.extended]
    for alg in BANKS:
        value = bytes(hashlib.new(alg).digest_size - 1) + b"\x03"
        for e in pcr0:
            value = hashlib.new(alg, value + e.digest(alg)).digest()
        assert tcg2.replay(log)[0][alg] == value
    # Without the event PCR 0 starts from zero like every other PCR.
    plain = boot_log(locality=None)
    value = bytes(32)
    for e in [e for e in plain.events if e.pcr_index == 0 and e.extended]:
        value = hashlib.sha256(value + e.digest("sha256")).digest()
    assert tcg2.replay(plain, ["sha256"])[0]["sha256"] == value


def test_no_action_events_are_not_extended_and_unknown_types_are() -> None:
    log = boot_log()
    replayed = tcg2.replay(log, ["sha256"])
    # PCR 1 only has an EV_NO_ACTION event and its separator.
    assert replayed[1]["sha256"] == _ext("sha256", bytes(32), b"\0\0\0\0")
    # PCR 5: separator, then the unknown event type, both extended.
    assert replayed[5]["sha256"] == _ext("sha256", _ext("sha256", bytes(32), b"\0\0\0\0"), b"vendor specific")
    assert log.pcrs == [0, 1, 2, 3, 4, 5, 6, 7, 9]


def test_digest_sizes_come_from_the_spec_id_header() -> None:
    # An algorithm the code does not know (0x00aa, 7 bytes) is parsed by its declared size and skipped.
    spec = tcg2.SpecIdEvent(((0x00AA, 7), (0x000B, 32)))
    ev = tcg2.Event(3, tcg2.EV_ACTION, ((0x00AA, b"1234567"), (0x000B, hashlib.sha256(b"x").digest())), b"x")
    log = tcg2.parse(tcg2.encode(tcg2.EventLog(spec, (ev,))))
    assert log.events[0].digests[0] == (0x00AA, b"1234567")
    assert list(tcg2.replay(log)[3]) == ["sha256"]
    with pytest.raises(EventLogError, match="cannot compute alg_0x00aa"):
        tcg2.replay(log, ["alg_0x00aa"])
    with pytest.raises(EventLogError, match="no sha384 digests"):
        tcg2.replay(log, ["sha384"])


def test_history_gives_the_value_after_each_event() -> None:
    log = boot_log()
    steps = tcg2.history(log, 0, "sha256")
    assert [e.type_name for e, _ in steps] == [
        "EV_S_CRTM_VERSION",
        "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        "EV_SEPARATOR",
    ]
    assert steps[-1][1] == tcg2.replay(log)[0]["sha256"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"", "empty"),
        (lambda b: b[:3], "truncated at offset 0"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:-7], "truncated"),
        (lambda b: struct.pack("<I", 1) + b[4:], "first event must be EV_NO_ACTION in PCR 0"),
        (lambda b: b[:8] + b"\x01" + b[9:], "zero digest"),
        (lambda b: b[:32] + b"Spec ID Event02\0" + b[48:], "not a crypto-agile"),
    ],
)
def test_corrupt_logs_raise_event_log_error(mutate, message: str) -> None:
    with pytest.raises(EventLogError, match=message):
        tcg2.parse(mutate(tcg2.encode(boot_log())))


def test_sha1_only_log_is_refused() -> None:
    legacy = (
        struct.pack("<II", 0, tcg2.EV_S_CRTM_VERSION)
        + hashlib.sha1(b"v").digest()
        + struct.pack("<I", 1)
        + b"v"
    )
    with pytest.raises(EventLogError, match="first event must be EV_NO_ACTION"):
        tcg2.parse(legacy)


def _log_with(*events: tcg2.Event) -> bytes:
    return tcg2.encode(tcg2.build(("sha256",), events))


def test_structural_errors_name_the_event() -> None:
    sep = tcg2.measurement(0, tcg2.EV_SEPARATOR, b"\0" * 4, ("sha256",))
    with pytest.raises(EventLogError, match=r"event #2 .*StartupLocality event after PCR 0"):
        tcg2.parse(_log_with(sep, tcg2.startup_locality_event(3)))
    with pytest.raises(EventLogError, match="second StartupLocality"):
        tcg2.parse(_log_with(tcg2.startup_locality_event(0), tcg2.startup_locality_event(3)))
    with pytest.raises(EventLogError, match="not a TPM locality"):
        tcg2.parse(_log_with(tcg2.startup_locality_event(7)))
    with pytest.raises(EventLogError, match="PCR index 24 out of range"):
        tcg2.parse(_log_with(tcg2.measurement(24, tcg2.EV_IPL, b"x", ("sha256",))))
    two = tcg2.Event(1, tcg2.EV_IPL, ((11, bytes(32)), (11, bytes(32))), b"")
    with pytest.raises(EventLogError, match="2 digests, the Spec ID event declares 1"):
        tcg2.parse(_log_with(two))
    sha1_digest = tcg2.Event(1, tcg2.EV_IPL, ((4, bytes(20)),), b"")
    with pytest.raises(EventLogError, match="sha1 digest not declared"):
        tcg2.parse(_log_with(sha1_digest))


def test_missing_bank_digest_is_named_at_replay() -> None:
    partial = tcg2.Event(2, tcg2.EV_IPL, ((11, bytes(32)),), b"only sha256")
    log = tcg2.parse(tcg2.encode(tcg2.build(BANKS, [partial])))
    assert tcg2.replay(log, ["sha256"])
    with pytest.raises(EventLogError, match=r"event #1 \(EV_IPL, PCR 2.*no sha1 digest"):
        tcg2.replay(log)


def test_spec_id_errors() -> None:
    good = tcg2.spec_id_event(["sha256"])
    bad_size = tcg2.SpecIdEvent(((11, 20),))
    with pytest.raises(EventLogError, match="sha256 digest size 20, the registry says 32"):
        tcg2.parse(tcg2.encode(tcg2.EventLog(bad_size, ())))
    twice = tcg2.SpecIdEvent(((11, 32), (11, 32)))
    with pytest.raises(EventLogError, match="listed twice"):
        tcg2.parse(tcg2.encode(tcg2.EventLog(twice, ())))
    none = tcg2.SpecIdEvent(())
    with pytest.raises(EventLogError, match="numberOfAlgorithms 0"):
        tcg2.parse(tcg2.encode(tcg2.EventLog(none, ())))
    assert tcg2.parse(tcg2.encode(tcg2.EventLog(good, ()))).events == ()
    with pytest.raises(EventLogError, match="unknown hash algorithm"):
        tcg2.spec_id_event(["md5"])
