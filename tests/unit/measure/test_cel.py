"""CEL-JSON log: records, durability rules, and the torn/corrupt lines that must never be accepted."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.errors import EventLogError
from edgeagent.measure import cel

BANKS = ("sha1", "sha256")


def _file(i: int) -> dict[str, str]:
    return {
        "type": cel.FILE,
        "component": "package",
        "name": f"edgeagent/m{i}.py",
        "path": f"/x/m{i}.py",
        "sha256": hashlib.sha256(str(i).encode()).hexdigest(),
    }


def _reset(reason: str = "new log") -> dict[str, str | None]:
    return {"type": cel.PCR_RESET, "reason": reason, "boot_id": "b1", "time": "2026-01-01T00:00:00+00:00"}


def _records(n: int) -> list[cel.Record]:
    out = [cel.make_record(0, 23, _reset(), [])]
    out += [cel.make_record(i, 23, _file(i), BANKS) for i in range(1, n + 1)]
    return out


def _write(path: Path, records: list[cel.Record]) -> None:
    with cel.CelLog.open(path, write=True) as log:
        log.append(records)


def test_record_format_is_cel_json(tmp_path: Path) -> None:
    path = tmp_path / "state" / "m.cel.jsonl"
    _write(path, _records(2))
    lines = path.read_text().splitlines()
    obj = json.loads(lines[1])
    assert list(obj) == ["recnum", "pcr", "digests", "content_type", "content"]
    assert obj["recnum"] == 1 and obj["pcr"] == 23 and obj["content_type"] == "edgeagent"
    assert [d["hashAlg"] for d in obj["digests"]] == ["sha1", "sha256"]
    # The extended digest binds the canonical content (name and file digest together).
    canonical = json.dumps(obj["content"], sort_keys=True, separators=(",", ":")).encode()
    assert obj["digests"][1]["digest"] == hashlib.sha256(canonical).hexdigest()
    assert json.loads(lines[0])["digests"] == []


def test_append_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "m.cel.jsonl"
    records = _records(3)
    _write(path, records[:2])
    _write(path, records[2:])
    got = cel.read_log(path)
    assert got == records
    assert [r.line for r in got] == [1, 2, 3, 4]
    assert cel.read_log(tmp_path / "absent.jsonl") == []


def test_torn_last_record_is_detected_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "m.cel.jsonl"
    _write(path, _records(3))
    good = path.read_bytes()
    torn_line = cel.make_record(4, 23, _file(4), BANKS).to_json().encode()
    for cut in (1, len(torn_line) // 2, len(torn_line)):  # even complete JSON without its newline is torn
        path.write_bytes(good + torn_line[:cut])
        before = path.read_bytes()
        with pytest.raises(EventLogError, match=r"line 5: torn record .* 4 records before it are intact"):
            cel.read_log(path)
        assert path.read_bytes() == before  # nothing rewritten
        assert cel.parse(before[: len(good)]) == _records(3)  # nothing earlier lost


def test_a_writer_cuts_a_torn_tail_and_keeps_it_beside_the_log(tmp_path: Path) -> None:
    path = tmp_path / "m.cel.jsonl"
    _write(path, _records(3))
    good = path.read_bytes()
    torn = cel.make_record(4, 23, _file(4), BANKS).to_json().encode()[:40]
    path.write_bytes(good + torn)
    with cel.CelLog.open(path, write=False) as reader, pytest.raises(EventLogError, match="torn record"):
        reader.read()  # readers report it and leave it
    with cel.CelLog.open(path, write=True) as writer:
        side = writer.cut_torn_tail()
        assert side is not None and side.parent == tmp_path and side.name.startswith("m.cel.jsonl.torn-")
        assert writer.read() == _records(3)
        assert writer.cut_torn_tail() is None  # nothing more to cut
    assert path.read_bytes() == good and side.read_bytes() == torn  # nothing lost
    assert side.stat().st_mode & 0o777 == 0o600


def test_a_torn_only_line_is_cut_to_an_empty_log_and_a_complete_log_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "m.cel.jsonl"
    path.write_bytes(b'{"recnum": 0, "pc')
    with cel.CelLog.open(path, write=True) as writer:
        assert writer.cut_torn_tail() is not None
        assert writer.read() == []
    _write(path, _records(2))
    before = path.read_bytes()
    with cel.CelLog.open(path, write=True) as writer:
        assert writer.cut_torn_tail() is None
    assert path.read_bytes() == before


def test_garbage_last_line_with_newline(tmp_path: Path) -> None:
    path = tmp_path / "m.cel.jsonl"
    _write(path, _records(1))
    path.write_bytes(path.read_bytes() + b'{"recnum": 2, "pc\n')
    with pytest.raises(EventLogError, match="line 3: torn or corrupt last record"):
        cel.read_log(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "line 2: corrupt record"),
        (b"[]", "line 2: not a CEL record"),
        (
            b'{"recnum": 5, "pcr": 23, "digests": [], "content_type": "x", "content": {}}',
            "recnum 5, expected 1",
        ),
        (b'{"recnum": 1, "pcr": 24, "digests": [], "content_type": "x", "content": {}}', "pcr 24"),
        (
            b'{"recnum": 1, "pcr": 23, "digests": [{"hashAlg": "sha256", "digest": "00"}], '
            b'"content_type": "x", "content": {}}',
            "sha256 digest is not 32 bytes",
        ),
        (
            b'{"recnum": 1, "pcr": 23, "digests": [{"hashAlg": "md5", "digest": "00"}], '
            b'"content_type": "x", "content": {}}',
            "unknown or repeated hashAlg 'md5'",
        ),
        (b"\xff\xfe", "line 2: corrupt record"),
    ],
)
def test_corrupt_middle_line_is_named(tmp_path: Path, line: bytes, message: str) -> None:
    records = _records(2)
    data = (records[0].to_json() + "\n").encode() + line + b"\n" + (records[2].to_json() + "\n").encode()
    with pytest.raises(EventLogError, match=message):
        cel.parse(data, name="log")


def test_replay_and_segments() -> None:
    records = _records(2)
    second = [cel.make_record(3, 23, _reset("reboot"), []), cel.make_record(4, 23, _file(9), BANKS)]
    allr = records + second
    assert cel.segment(allr, 23) == second
    value = bytes(32)
    for r in second:
        for alg, d in r.digests:
            if alg == "sha256":
                value = hashlib.sha256(value + d).digest()
    assert cel.replay(allr, ["sha256"])[23]["sha256"] == value
    assert cel.replay(cel.segment(allr, 23), ["sha256"]) == cel.replay(allr, ["sha256"])
    states = list(cel.states(second, ["sha256"]))
    assert len(states) == 3 and states[-1]["sha256"] == value
    with pytest.raises(EventLogError, match="no sha384 digest"):
        cel.replay(allr, ["sha384"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_parser_raises_only_event_log_error(data: bytes) -> None:
    with contextlib.suppress(EventLogError):
        cel.parse(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.binary(min_size=1, max_size=8))
def test_mutated_logs_raise_only_event_log_error(pos: int, junk: bytes) -> None:
    data = "".join(r.to_json() + "\n" for r in _records(3)).encode()
    pos %= len(data)
    with contextlib.suppress(EventLogError):
        cel.parse(data[:pos] + junk + data[pos + len(junk) :])
