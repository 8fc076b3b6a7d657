"""Fuzzing the binary-log parser: whatever the bytes, the only exception is EventLogError."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeagent.errors import EventLogError
from edgeagent.measure import algs, tcg2
from tests.unit.measure.logs import boot_log

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = tcg2.encode(boot_log())

event_types = st.one_of(st.sampled_from(sorted(tcg2.EVENT_TYPE_NAMES)), st.integers(0, 2**32 - 1))
bank_sets = st.lists(st.sampled_from(sorted(algs.ALG_ID)), min_size=1, max_size=4, unique=True)


@st.composite
def logs(draw: st.DrawFn) -> tcg2.EventLog:
    banks = draw(bank_sets)
    events = []
    if draw(st.booleans()):
        events.append(tcg2.startup_locality_event(draw(st.sampled_from([0, 3, 4]))))
    for _ in range(draw(st.integers(0, 12))):
        etype = draw(event_types)
        if etype == tcg2.EV_NO_ACTION:
            etype = tcg2.EV_IPL
        data = draw(st.binary(max_size=64))
        events.append(tcg2.measurement(draw(st.integers(0, 23)), etype, data, banks))
    vendor = draw(st.binary(max_size=8))
    log = tcg2.build(banks, events)
    return tcg2.EventLog(tcg2.spec_id_event(banks, vendor_info=vendor), log.events)


def _parse_and_replay(data: bytes) -> None:
    try:
        log = tcg2.parse(data)
        tcg2.replay(log)
        for pcr in log.pcrs:
            for bank in log.spec_id.banks:
                if algs.can_hash(bank):
                    tcg2.history(log, pcr, bank)
    except EventLogError:
        pass


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    _parse_and_replay(data)


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_events_after_a_valid_header(tail: bytes) -> None:
    header_len = 32 + struct.unpack_from("<I", VALID, 28)[0]
    _parse_and_replay(VALID[:header_len] + tail)


@SETTINGS
@given(logs(), st.data())
def test_mutated_valid_logs(log: tcg2.EventLog, data: st.DataObject) -> None:
    buf = bytearray(tcg2.encode(log))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "u32", "truncate", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if kind == "flip" and buf:
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "u32" and len(buf) >= pos + 4:
            buf[pos : pos + 4] = struct.pack("<I", data.draw(st.integers(0, 2**32 - 1)))
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del buf[pos : pos + data.draw(st.integers(1, 16))]
    _parse_and_replay(bytes(buf))


@SETTINGS
@given(logs())
def test_round_trip(log: tcg2.EventLog) -> None:
    data = tcg2.encode(log)
    parsed = tcg2.parse(data)
    assert parsed == log
    assert tcg2.encode(parsed) == data


@SETTINGS
@given(logs(), st.data())
def test_truncations_fail_or_yield_a_prefix(log: tcg2.EventLog, data: st.DataObject) -> None:
    buf = tcg2.encode(log)
    cut = data.draw(st.integers(0, len(buf) - 1))
    try:
        shorter = tcg2.parse(buf[:cut])
    except EventLogError:
        return
    # A cut on an event boundary is a valid shorter log: never events that were not there.
    assert shorter.events == log.events[: len(shorter.events)]
    assert len(shorter.events) < len(log.events)
