"""``edgeagent measure verify``: replay the firmware log and the agent's CEL log against the TPM's PCRs.

A mismatch alone says little, so each problem names what it can:

- firmware log: an event whose digest is not the hash of its own data, for the event types where the spec
  defines it so (``tcg2.DIGEST_OF_EVENT_DATA``); or, when the TPM holds the value of a prefix of the PCR's
  events, the first event after that prefix (logged but never extended);
- CEL log: a record whose digests are not the hashes of its content (the log was edited); a record logged
  but not extended (an interrupted ``measure``); and, independently of the PCR, every measured file whose
  current SHA-256 differs from its latest record: the file changed after it was measured.

``VerifyResult.problems`` lists them in log order, firmware first; the first is "the first diverging event".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from edgeagent.config import AgentConfig
from edgeagent.errors import EventLogError, MeasureError
from edgeagent.measure import algs, cel, measurer, policy, targets, tcg2


@dataclasses.dataclass(frozen=True)
class Row:
    log: str  # "firmware" | "cel"
    pcr: int
    bank: str
    events: int
    expected: bytes
    actual: bytes

    @property
    def match(self) -> bool:
        return self.expected == self.actual


@dataclasses.dataclass(frozen=True)
class FileCheck:
    component: str
    name: str
    path: Path
    recorded: str
    current: str | None  # None: the file is gone or unreadable

    @property
    def changed(self) -> bool:
        return self.current != self.recorded


@dataclasses.dataclass
class VerifyResult:
    firmware_log: Path
    firmware_present: bool
    cel_log: Path
    rows: list[Row]
    files: list[FileCheck]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.match for r in self.rows)


# ---------------------------------------------------------------- firmware log
def firmware_rows(
    log: tcg2.EventLog, tpm: measurer.PcrTpm, banks: Sequence[str]
) -> tuple[list[Row], list[str]]:
    """One row per (PCR, bank) the log extends, and the problems explaining each mismatch."""
    usable = [b for b in banks if b in log.spec_id.banks and algs.can_hash(b)]
    if not usable:
        raise EventLogError(
            f"the firmware event log has digests for {', '.join(log.spec_id.banks)}, the TPM's active banks "
            f"are {', '.join(banks)}: nothing to compare"
        )
    expected = tcg2.replay(log, usable)
    counts: dict[int, int] = {}
    for ev in log.events:
        if ev.extended:
            counts[ev.pcr_index] = counts.get(ev.pcr_index, 0) + 1
    rows: list[Row] = []
    problems: list[tuple[int, str]] = []  # (event number, text) so problems come out in log order
    for bank in usable:
        actual = tpm.pcr_read(sorted(expected), bank)
        for pcr in sorted(expected):
            row = Row("firmware", pcr, bank, counts[pcr], expected[pcr][bank], actual[pcr])
            rows.append(row)
            if not row.match:
                problems.append(_firmware_divergence(log, pcr, bank, row.actual))
    return rows, [text for _, text in sorted(set(problems))]


def _firmware_divergence(log: tcg2.EventLog, pcr: int, bank: str, actual: bytes) -> tuple[int, str]:
    steps = tcg2.history(log, pcr, bank)
    for ev, _ in steps:
        if ev.event_type in tcg2.DIGEST_OF_EVENT_DATA and ev.digest(bank) != algs.digest(bank, ev.event):
            return ev.number, f"firmware log {ev.describe()}: {bank} digest is not the hash of its event data"
    if actual == tcg2.initial_value(log, pcr, bank) and steps:
        ev = steps[0][0]
        return ev.number, f"firmware log {ev.describe()}: PCR {pcr} ({bank}) was never extended by the TPM"
    for i, (_ev, value) in enumerate(steps[:-1]):
        if value == actual:
            nxt = steps[i + 1][0]
            return nxt.number, (
                f"firmware log {nxt.describe()}: the TPM's PCR {pcr} ({bank}) stops before this event"
            )
    first = steps[0][0] if steps else None
    return (first.number if first else 0), (
        f"firmware log: PCR {pcr} ({bank}) does not replay to the TPM's value; no single event can be named"
    )


# ---------------------------------------------------------------- CEL log
def cel_checks(
    records: Sequence[cel.Record], pcr: int, tpm: measurer.PcrTpm, banks: Sequence[str], path: Path
) -> tuple[list[Row], list[FileCheck], list[str]]:
    segment = cel.segment(records, pcr)
    if not any(r.digests for r in segment):
        return [], [], [f"no measurements in {path} for PCR {pcr}: run `edgeagent measure` first"]
    problems: list[str] = []
    for rec in segment:
        if rec.content_type == cel.CONTENT_TYPE and rec.digests:
            data = cel.content_bytes(rec.content)
            bad = [a for a, d in rec.digests if algs.can_hash(a) and d != algs.digest(a, data)]
            if bad:
                problems.append(f"CEL {rec.describe()}: {bad[0]} digest is not the hash of its content")
    expected = cel.replay(segment, banks)[pcr]
    actual = measurer.read_pcr(tpm, pcr, banks)
    events = sum(1 for r in segment if r.digests)
    rows = [Row("cel", pcr, b, events, expected[b], actual[b]) for b in banks]
    if any(not r.match for r in rows):
        k = measurer.find_prefix(segment, banks, actual)
        if k is not None and k < len(segment):
            pending = next((r for r in segment[k:] if r.digests), segment[k])
            problems.append(
                f"CEL {pending.describe()}: logged but not extended into PCR {pcr} (an interrupted measure: "
                "`edgeagent measure` completes it)"
            )
        elif not problems:
            problems.append(
                f"CEL: PCR {pcr} holds a value no prefix of the log's segment (from record "
                f"#{segment[0].recnum}) explains: it was extended outside the log"
            )
    latest: dict[str, cel.Record] = {}
    for rec in segment:
        if rec.kind == cel.FILE and rec.digests:
            latest[str(rec.content.get("name"))] = rec
    files: list[FileCheck] = []
    for name, rec in latest.items():
        file_path = Path(str(rec.content.get("path")))
        try:
            current: str | None = targets.sha256_file(file_path)
        except MeasureError:  # the file is gone or unreadable, which is a change too
            current = None
        component = str(rec.content.get("component"))
        check = FileCheck(component, name, file_path, str(rec.content.get("sha256")), current)
        files.append(check)
        if check.changed:
            now = "is gone or unreadable" if current is None else f"now has sha256 {current}"
            where = "" if name == str(file_path) else f" ({file_path})"
            problems.append(
                f"file {name}{where} changed after it was measured (CEL record #{rec.recnum}, line "
                f"{rec.line}): recorded sha256 {check.recorded}, it {now}"
            )
    return rows, files, problems


def verify(
    config: AgentConfig,
    tpm: measurer.PcrTpm,
    *,
    firmware_log: Path | None = None,
    reference: policy.ReferencePolicy | None = None,
) -> VerifyResult:
    """Replays both logs against the TPM.

    The configured firmware log (by default the kernel's sysfs file) may be absent (no measured-boot
    firmware, a VM, this test machine): that is reported, not failed. A log passed as ``firmware_log``
    must exist. Any log that exists must parse. With a ``reference`` policy, the latest measurement of
    each file is checked against it too. Raises EventLogError for unreadable or malformed logs.
    """
    pcr = measurer.check_pcr(config.measure.pcr)
    banks = measurer.active_banks(tpm)
    fw_path = firmware_log or config.measure.firmware_log
    rows: list[Row] = []
    problems: list[str] = []
    # The configured log may be missing (no measured-boot firmware); one passed explicitly must be there.
    fw_present = firmware_log is not None or fw_path.exists()
    if fw_present:
        try:
            data = fw_path.read_bytes()
        except OSError as e:
            raise EventLogError(f"cannot read firmware event log {fw_path}: {e.strerror}") from None
        try:
            fw_rows, fw_problems = firmware_rows(tcg2.parse(data), tpm, banks)
        except EventLogError as e:
            raise EventLogError(f"firmware event log {fw_path}: {e}") from None
        rows += fw_rows
        problems += fw_problems
    path = measurer.log_path(config)
    cel_rows, files, cel_problems = cel_checks(cel.read_log(path), pcr, tpm, banks, path)
    problems += cel_problems
    if reference is not None:
        measured = {f.name: (f.component, f.recorded) for f in files}
        problems += [f"policy: {f.detail}" for f in policy.check(reference, measured, pcr=pcr)]
    return VerifyResult(fw_path, fw_present, path, rows + cel_rows, files, problems)
