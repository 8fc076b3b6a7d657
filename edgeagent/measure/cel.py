"""The agent's own event log: TCG Canonical Event Log (CEL), JSON encoding, one record per line.

Each line is one CEL-JSON record with the spec's field names::

    {"recnum": 7, "pcr": 23, "digests": [{"hashAlg": "sha256", "digest": "<hex>"}],
     "content_type": "edgeagent", "content": {...}}

``recnum`` counts from 0 with no gap over the whole file. ``digests`` holds one digest per PCR bank that was
extended; an empty list means the record was logged but not extended. edgeagent's records use the content
type ``"edgeagent"`` (a project content type, in the way systemd logs ``"systemd"`` records); its
``content.type`` is one of:

- ``"file"``: ``{component, name, path, sha256}``. The digest extended into each bank is that bank's hash of
  the record's canonical content (``content_bytes``), so the PCR binds the file's name and SHA-256 together.
- ``"pcr_reset"``: ``{reason, boot_id, time}``, no digests. The PCR was reset to zero here: it starts a log
  *segment*, and only the last segment describes the PCR's current value.

Durability: records are appended with ``O_APPEND`` and the file is fsynced before the caller extends a PCR
(the parent directory too when the file is created), so a record can exist without its extend, never the
other way round. A line cut short by a crash (no trailing newline, or not JSON) is reported as an
``EventLogError`` naming the line: never repaired, never skipped, never rewritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeagent.errors import EventLogError
from edgeagent.measure import algs

CONTENT_TYPE = "edgeagent"
FILE = "file"
PCR_RESET = "pcr_reset"
_FIELDS = ("recnum", "pcr", "digests", "content_type", "content")


@dataclasses.dataclass(frozen=True)
class Record:
    """One CEL record. ``line`` (1-based) locates it in its file for error messages."""

    recnum: int
    pcr: int
    digests: tuple[tuple[str, bytes], ...]  # (hashAlg, digest)
    content_type: str
    content: Mapping[str, Any]
    line: int = dataclasses.field(default=0, compare=False)

    @property
    def kind(self) -> str | None:
        """``content.type`` of an edgeagent record, None for other content types."""
        if self.content_type != CONTENT_TYPE:
            return None
        kind = self.content.get("type")
        return kind if isinstance(kind, str) else None

    @property
    def is_reset(self) -> bool:
        return self.kind == PCR_RESET

    def digest(self, bank: str) -> bytes | None:
        for alg, d in self.digests:
            if alg == bank:
                return d
        return None

    def describe(self) -> str:
        what = self.content.get("name") if self.kind == FILE else self.kind or self.content_type
        where = f", line {self.line}" if self.line else ""
        return f"record #{self.recnum} ({what}{where})"

    def to_json(self) -> str:
        return json.dumps(
            {
                "recnum": self.recnum,
                "pcr": self.pcr,
                "digests": [{"hashAlg": a, "digest": d.hex()} for a, d in self.digests],
                "content_type": self.content_type,
                "content": self.content,
            },
            separators=(",", ":"),
            ensure_ascii=True,
        )


def content_bytes(content: Mapping[str, Any]) -> bytes:
    """The canonical form of a record's content, whose hash is what an ``edgeagent`` record extends."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def make_record(recnum: int, pcr: int, content: Mapping[str, Any], banks: Sequence[str]) -> Record:
    """An edgeagent record extending H_bank(content_bytes(content)) into each bank (none: not extended)."""
    data = content_bytes(content)
    return Record(recnum, pcr, tuple((b, algs.digest(b, data)) for b in banks), CONTENT_TYPE, dict(content))


# ---------------------------------------------------------------- parsing
def _record(obj: Any, where: str) -> Record:
    if not isinstance(obj, dict) or set(obj) != set(_FIELDS):
        raise EventLogError(f"{where}: not a CEL record (needs exactly {', '.join(_FIELDS)})")
    recnum, pcr, digests, ctype, content = (obj[f] for f in _FIELDS)
    if type(recnum) is not int or recnum < 0:
        raise EventLogError(f"{where}: recnum {recnum!r} is not a non-negative integer")
    if type(pcr) is not int or not 0 <= pcr <= 23:
        raise EventLogError(f"{where}: pcr {pcr!r} is not a PCR index 0-23")
    if not isinstance(ctype, str) or not isinstance(content, dict):
        raise EventLogError(f"{where}: content_type must be a string and content an object")
    if not isinstance(digests, list):
        raise EventLogError(f"{where}: digests must be a list")
    out: list[tuple[str, bytes]] = []
    for d in digests:
        if not isinstance(d, dict) or set(d) != {"hashAlg", "digest"}:
            raise EventLogError(f"{where}: a digest must be {{hashAlg, digest}}")
        alg, hexd = d["hashAlg"], d["digest"]
        if alg not in algs.DIGEST_SIZE or any(a == alg for a, _ in out):
            raise EventLogError(f"{where}: unknown or repeated hashAlg {alg!r}")
        try:
            raw = bytes.fromhex(hexd) if isinstance(hexd, str) else None
        except ValueError:
            raw = None
        if raw is None or len(raw) != algs.DIGEST_SIZE[alg]:
            raise EventLogError(f"{where}: {alg} digest is not {algs.DIGEST_SIZE[alg]} bytes of hex")
        out.append((alg, raw))
    return Record(recnum, pcr, tuple(out), ctype, content)


def parse(data: bytes, *, name: str = "event log") -> list[Record]:
    """Parses a whole CEL-JSON log. A torn or corrupt line raises EventLogError naming its line number."""
    records: list[Record] = []
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # a well-formed log ends with a newline: tail is empty
    for i, raw in enumerate(complete, start=1):
        where = f"{name} line {i}"
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            last = i == len(complete) and not tail
            kind = "torn or corrupt last record" if last else "corrupt record"
            raise EventLogError(f"{where}: {kind} (not a JSON object: {e}); the log is left as is") from None
        rec = _record(obj, where)
        if rec.recnum != len(records):
            raise EventLogError(f"{where}: recnum {rec.recnum}, expected {len(records)}")
        records.append(dataclasses.replace(rec, line=i))
    if tail:
        raise EventLogError(
            f"{name} line {len(complete) + 1}: torn record (no newline at the end: a write was interrupted); "
            f"the log is left as is, the {len(records)} records before it are intact"
        )
    return records


# ---------------------------------------------------------------- replay
def segment(records: Sequence[Record], pcr: int) -> list[Record]:
    """The records of ``pcr`` since its last reset record (all of them when there is none)."""
    mine = [r for r in records if r.pcr == pcr]
    for i in range(len(mine) - 1, -1, -1):
        if mine[i].is_reset:
            return mine[i:]
    return mine


def replay(records: Iterable[Record], banks: Sequence[str]) -> dict[int, dict[str, bytes]]:
    """``{pcr: {bank: value}}`` for every PCR a record touches; a reset record zeroes its PCR.

    Raises EventLogError when an extended record lacks one of ``banks``.
    """
    pcrs: dict[int, dict[str, bytes]] = {}
    for rec in records:
        if rec.is_reset or rec.pcr not in pcrs:
            pcrs[rec.pcr] = {b: algs.zero(b) for b in banks}
        if not rec.digests:
            continue
        state = pcrs[rec.pcr]
        for b in banks:
            d = rec.digest(b)
            if d is None:
                raise EventLogError(f"{rec.describe()} has no {b} digest")
            state[b] = algs.extend(b, state[b], d)
    return pcrs


def states(records: Sequence[Record], banks: Sequence[str]) -> Iterator[dict[str, bytes]]:
    """The PCR value (per bank) before the first record, then after each one: ``len(records) + 1`` states."""
    state = {b: algs.zero(b) for b in banks}
    yield dict(state)
    for rec in records:
        if rec.is_reset:
            state = {b: algs.zero(b) for b in banks}
        elif rec.digests:
            for b in banks:
                d = rec.digest(b)
                if d is None:
                    raise EventLogError(f"{rec.describe()} has no {b} digest")
                state[b] = algs.extend(b, state[b], d)
        yield dict(state)


# ---------------------------------------------------------------- the file
class CelLog:
    """An open CEL-JSON log file under an advisory lock.

    Writers hold ``LOCK_EX`` from reading the log to their last extend, so two ``measure`` runs cannot
    interleave records; readers hold ``LOCK_SH`` so they never mistake a record being written for a torn one.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: Path, *, write: bool) -> Iterator[CelLog]:
        """Opens (a writer creates it, with its directory) and locks the log. Raises EventLogError."""
        try:
            if write:
                path.parent.mkdir(parents=True, exist_ok=True)
                created = not path.exists()
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
                if created:
                    _fsync_dir(path.parent)
            else:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise EventLogError(f"cannot open event log {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            yield cls(path, fd)
        finally:
            os.close(fd)

    def read(self) -> list[Record]:
        size = os.fstat(self._fd).st_size
        chunks: list[bytes] = []
        pos = 0
        while pos < size:
            chunk = os.pread(self._fd, size - pos, pos)
            if not chunk:
                break
            chunks.append(chunk)
            pos += len(chunk)
        return parse(b"".join(chunks), name=str(self.path))

    def cut_torn_tail(self) -> Path | None:
        """A writer's repair of a crash inside ``append``: a last line without its newline is moved out of the
        log (to ``<log>.torn-<unix time>`` beside it, so nothing is lost) and the log cut back to its last
        complete record. Returns where the tail went, or None when there was none.

        Why this is safe: ``append`` fsyncs before any of its records is extended, so a torn line's records
        never reached the TPM; cutting them leaves the log at a state the PCR can be at (the complete lines
        written in the same call are rolled forward like any record logged and not yet extended). A
        corrupt *complete* line is not touched here: that is not a crash, and stays an error for a person.
        Only a writer (``LOCK_EX``) calls this; readers keep reporting the torn line and leave it."""
        size = os.fstat(self._fd).st_size
        if size == 0 or os.pread(self._fd, 1, size - 1) == b"\n":
            return None
        start = max(0, size - (1 << 20))  # a record is a few hundred bytes: the last MiB holds its start
        data = os.pread(self._fd, size - start, start)
        nl = data.rfind(b"\n")
        keep = start + nl + 1 if nl >= 0 else 0
        if nl < 0 and start > 0:
            raise EventLogError(f"{self.path}: no complete record in its last MiB; the log is left as is")
        side = self.path.with_name(f"{self.path.name}.torn-{int(time.time())}")
        try:
            fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data[keep - start :])
                os.fsync(fd)
            finally:
                os.close(fd)
            os.ftruncate(self._fd, keep)
            os.fsync(self._fd)
            _fsync_dir(self.path.parent)
        except OSError as e:
            raise EventLogError(f"cannot cut the torn last record of {self.path}: {e.strerror}") from None
        return side

    def append(self, records: Sequence[Record]) -> None:
        """Appends ``records`` in one write and fsyncs: when this returns they survive a crash.

        A write that fails part way (a full disk) is undone: the log is cut back to where it ended, so it
        never keeps half a record for the next reader to trip over (this process holds the log's lock).
        """
        data = "".join(r.to_json() + "\n" for r in records).encode()
        view = memoryview(data)
        try:
            end = os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as e:
            raise EventLogError(f"cannot append to event log {self.path}: {e.strerror}") from None
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            os.fsync(self._fd)
        except OSError as e:
            try:
                os.ftruncate(self._fd, end)
                os.fsync(self._fd)
            except OSError:
                pass  # the torn tail is then detected by the next read, and left for a person to judge
            raise EventLogError(f"cannot append to event log {self.path}: {e.strerror}") from None


def read_log(path: Path) -> list[Record]:
    """All records of the log at ``path``; a missing file is an empty log."""
    if not path.exists():
        return []
    with CelLog.open(path, write=False) as log:
        return log.read()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
