"""``edgeagent measure``: extend every target into the application PCR and log it in the CEL log.

Which PCR (``config.measure.pcr``, default 23)
    Keylime owns PCRs 0-9 and 11-15 (measured boot, replayed against the firmware log and its measured-boot
    policy, which rejects unknown events there), 10 is IMA and 16 is Keylime's NK binding, reset and extended
    by the agent before each quote. PCRs 17-22 belong to dynamic launch (DRTM): on a PC Client TPM they are
    reset and extended only from localities 2-4, which an OS process does not have. PCR 23 is the TCG's
    "application support" PCR: extendable and resettable from locality 0. So the agent's measurements go to
    PCR 23 and are checked with the project's own reference policy (``edgeagent.measure.policy``), outside
    Keylime's measured-boot policy. The price of a resettable PCR: local root can reset it and replay a
    forged log, so PCR 23 shows what the agent measured, not that local root was honest (the same holds
    for IMA's runtime measurements of a kernel root controls). Configuring a PCR in 0-16 is refused.

Segments
    The TPM resets PCR 23 at every boot (TPM2_Startup(CLEAR)), and any process can reset it at locality 0;
    the log lives on disk across both. So the log is a series of *segments*, each opened by a ``pcr_reset``
    record (reason, kernel boot_id, time) after which the agent resets the PCR itself: each segment starts
    from a known zero even if something else extended PCR 23 before the agent ran. Only the last segment
    describes the PCR; earlier ones stay in the file as history. A new segment starts when the log is new,
    when the kernel's boot_id differs from the segment's (a reboot), when the PCR reads zero although the
    segment extended it (reset behind the agent's back, or a restarted software TPM), or on request
    (``--new-segment``). A PCR value the segment cannot explain otherwise (something else extended it) is an
    error: resetting silently would hide it.

Crash consistency: log first, then extend
    Each run hashes every target, appends one record per new or changed file in a single write, fsyncs the
    log, and only then extends the PCR record by record. A crash therefore leaves the TPM at the state
    after some prefix of the segment's records, never ahead of the log. The next run finds that prefix
    (hash chains make it unique) and extends the remaining records ("roll forward"), so the PCR catches up
    with what the log already promised; a pending reset record is rolled forward by resetting. A torn last
    line (a crash inside the write) is reported by readers (``measure verify``) and left alone; the next
    writer (``measure``, the agent at start) moves it to a file beside the log and goes on, since its records
    were never extended (see ``CelLog.cut_torn_tail``). A corrupt complete line still stops everything.

Repeated runs within a segment measure only files whose (name, SHA-256) is not already the latest record
for that name, the way IMA measures a file once until it changes, so restarting the agent does not grow the
log without bound while a changed file is always logged again.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from edgeagent.config import AgentConfig
from edgeagent.errors import ConfigError, MeasureError, MeasurementMismatch
from edgeagent.measure import algs, cel, targets

log = logging.getLogger(__name__)

KEYLIME_RESERVED = range(0, 17)  # 0-9, 11-15 measured boot, 10 IMA, 16 NK binding
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


class PcrTpm(Protocol):
    """The part of ``edgeagent.tpm.Tpm`` measuring needs (a protocol so tests can wrap a real TPM)."""

    def pcr_banks(self) -> list[str]: ...
    def pcr_read(self, indices: Sequence[int], bank: str = "sha256") -> dict[int, bytes]: ...
    def pcr_extend(self, index: int, digests: dict[str, bytes]) -> None: ...
    def pcr_reset(self, index: int) -> None: ...


@dataclasses.dataclass(frozen=True)
class Measured:
    component: str
    name: str
    path: Path
    sha256: str
    recnum: int | None  # None: already measured in this segment with this digest

    @property
    def status(self) -> str:
        return "unchanged" if self.recnum is None else "measured"


@dataclasses.dataclass
class MeasureResult:
    pcr: int
    banks: list[str]
    log_path: Path
    segment_start: int  # recnum of the segment's reset record
    new_segment: str | None  # reason a segment was started by this run
    rolled_forward: int  # records logged by an interrupted run and extended now
    items: list[Measured]
    pcr_values: dict[str, bytes]

    @property
    def measured(self) -> int:
        return sum(1 for i in self.items if i.recnum is not None)


def check_pcr(pcr: int) -> int:
    if pcr in KEYLIME_RESERVED or not 0 <= pcr <= 23:
        raise ConfigError(
            f"measure.pcr {pcr} is not usable: PCRs 0-16 belong to measured boot, IMA and Keylime's key "
            "binding; use 23"
        )
    return pcr


def boot_id() -> str | None:
    """The kernel's random per-boot id: a segment from another boot must not describe this boot's PCR."""
    try:
        return BOOT_ID_PATH.read_text().strip() or None
    except OSError:
        return None


def log_path(config: AgentConfig) -> Path:
    return config.state_path(config.measure.event_log)


def active_banks(tpm: PcrTpm) -> list[str]:
    banks = tpm.pcr_banks()
    missing = [b for b in banks if not algs.can_hash(b)]
    if missing:
        raise MeasureError(f"cannot compute the TPM's {', '.join(missing)} PCR bank digests here")
    return banks


def read_pcr(tpm: PcrTpm, pcr: int, banks: Sequence[str]) -> dict[str, bytes]:
    return {b: tpm.pcr_read([pcr], b)[pcr] for b in banks}


def find_prefix(segment: Sequence[cel.Record], banks: Sequence[str], values: dict[str, bytes]) -> int | None:
    """How many of the segment's records the TPM has applied: the k with replay(segment[:k]) == values."""
    found = None
    for k, state in enumerate(cel.states(segment, banks)):
        if state == values:
            found = k  # a reset record leaves zero twice (before and after it): the later k is the truth
    return found


def _segment_reason(
    records: Sequence[cel.Record],
    segment: Sequence[cel.Record],
    values: dict[str, bytes],
    current_boot: str | None,
) -> str | None:
    if not segment or not segment[0].is_reset:
        return "new log" if not records else "log has no segment for this PCR"
    seg_boot = segment[0].content.get("boot_id")
    if current_boot and seg_boot and seg_boot != current_boot:
        return "reboot"
    extended = any(r.digests for r in segment)
    if extended and all(v == algs.zero(b) for b, v in values.items()):
        return "PCR was reset"
    return None


def measure(
    config: AgentConfig,
    tpm: PcrTpm,
    *,
    new_segment: bool = False,
    only: Sequence[targets.Target] | None = None,
) -> MeasureResult:
    """Measures every target (or ``only``) into ``config.measure.pcr`` and logs it; see the module docstring.

    Raises ConfigError for a reserved PCR, MeasureError for an unreadable target, EventLogError for a
    corrupt log (a torn last line is cut off and kept beside it), MeasurementMismatch when the PCR holds a
    value the log cannot explain.
    """
    pcr = check_pcr(config.measure.pcr)
    todo = list(targets.collect(config) if only is None else only)
    hashed = [(t, targets.sha256_file(t.path)) for t in todo]  # before touching log or TPM
    banks = active_banks(tpm)
    path = log_path(config)
    with cel.CelLog.open(path, write=True) as celog:
        side = celog.cut_torn_tail()
        if side is not None:
            log.warning(
                "event log %s ended in a torn record (a crash while it was written; never extended): cut "
                "back to its last complete record, the torn bytes kept in %s", path, side,
            )
        records = celog.read()
        segment = cel.segment(records, pcr)
        values = read_pcr(tpm, pcr, banks)
        reason = "requested" if new_segment else _segment_reason(records, segment, values, boot_id())
        rolled = 0
        if reason is None:
            rolled = _recover(tpm, pcr, segment, banks, values, path)
        else:
            content = {
                "type": cel.PCR_RESET,
                "reason": reason,
                "boot_id": boot_id(),
                "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            }
            start = cel.make_record(len(records), pcr, content, [])
            celog.append([start])
            tpm.pcr_reset(pcr)
            log.info("PCR %d: new log segment at record #%d (%s)", pcr, start.recnum, reason)
            records.append(start)
            segment = [start]
        latest = {
            r.content.get("name"): r.content.get("sha256")
            for r in segment
            if r.kind == cel.FILE and r.digests
        }
        new: list[cel.Record] = []
        items: list[Measured] = []
        for t, sha in hashed:
            if latest.get(t.name) == sha:
                items.append(Measured(t.component, t.name, t.path, sha, None))
                continue
            content = {
                "type": cel.FILE,
                "component": t.component,
                "name": t.name,
                "path": str(t.path),
                "sha256": sha,
            }
            rec = cel.make_record(len(records) + len(new), pcr, content, banks)
            new.append(rec)
            items.append(Measured(t.component, t.name, t.path, sha, rec.recnum))
        if new:
            celog.append(new)  # durable before any extend: the log is never behind the TPM
            for rec in new:
                tpm.pcr_extend(pcr, dict(rec.digests))
        values = read_pcr(tpm, pcr, banks)
    return MeasureResult(pcr, banks, path, segment[0].recnum, reason, rolled, items, values)


def _recover(
    tpm: PcrTpm,
    pcr: int,
    segment: Sequence[cel.Record],
    banks: Sequence[str],
    values: dict[str, bytes],
    path: Path,
) -> int:
    """Rolls forward what an interrupted run logged but did not apply; returns how many records that was."""
    k = find_prefix(segment, banks, values)
    if k is None:
        if len(segment) == 1 and segment[0].is_reset:  # crashed between logging the reset and doing it
            tpm.pcr_reset(pcr)
            return 1
        raise MeasurementMismatch(
            f"PCR {pcr} holds a value its event log {path} (segment from record #{segment[0].recnum}) does "
            "not explain: something else extended it; `edgeagent measure --new-segment` resets it and starts "
            "a new segment"
        )
    pending = [r for r in segment[k:] if r.digests or r.is_reset]
    for rec in pending:
        if rec.is_reset:
            tpm.pcr_reset(pcr)
        else:
            tpm.pcr_extend(pcr, dict(rec.digests))
    if pending:
        log.warning("PCR %d: extended %d records an interrupted run had logged", pcr, len(pending))
    return len(pending)
