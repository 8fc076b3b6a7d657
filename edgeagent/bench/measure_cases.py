"""Measurement benchmark cases, added to the `tpm` area's report by edgeagent.bench.tpm.

- replay of a generated 1,000-event TCG2 log (parse + replay of both banks; target <= 20 ms median): what
  `measure verify` and a verifier do with a firmware log of typical size;
- read + replay of a 1,000-record CEL log: the agent's own log after many restarts with changed files;
- a cold `measure` of the agent's own package: a new log (so a reset and a new segment), every file hashed,
  one fsynced append, one extend per file.

The cold-measure case resets and extends ``config.measure.pcr`` on the TPM it is given: run it against a
software TPM, never against a device whose PCR 23 a running agent relies on.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from edgeagent.bench.harness import Case, Report, timeit
from edgeagent.config import AgentConfig
from edgeagent.measure import cel, measurer, targets, tcg2

LOG_EVENTS = 1000


def tcg2_log(n: int = LOG_EVENTS, banks: tuple[str, ...] = ("sha1", "sha256")) -> bytes:
    """A firmware-like log: StartupLocality, then ``n`` events over PCRs 0-9 with typical payload sizes."""
    types = [
        tcg2.EV_EFI_BOOT_SERVICES_APPLICATION,
        tcg2.EV_EFI_VARIABLE_DRIVER_CONFIG,
        tcg2.EV_SEPARATOR,
        tcg2.EV_EFI_ACTION,
        tcg2.EV_IPL,
    ]
    events = [tcg2.startup_locality_event(0)]
    for i in range(n - 1):
        data = f"event {i} ".encode() * (1 + i % 8)
        events.append(tcg2.measurement(i % 10, types[i % len(types)], data, banks))
    return tcg2.encode(tcg2.build(banks, events))


def cel_log(path: Path, n: int, banks: list[str], pcr: int) -> None:
    content = {"type": cel.PCR_RESET, "reason": "bench", "boot_id": None, "time": "1970-01-01T00:00:00+00:00"}
    records = [cel.make_record(0, pcr, content, [])]
    for i in range(1, n):
        content = {
            "type": cel.FILE,
            "component": "package",
            "name": f"edgeagent/m{i}.py",
            "path": f"/usr/lib/edgeagent/m{i}.py",
            "sha256": f"{i:064x}",
        }
        records.append(cel.make_record(i, pcr, content, banks))
    with cel.CelLog.open(path, write=True) as log:
        log.append(records)


def add_cases(report: Report, config: AgentConfig, tpm: measurer.PcrTpm, *, repeat: int) -> None:
    data = tcg2_log()

    def replay_tcg2() -> None:
        tcg2.replay(tcg2.parse(data))

    report.add(
        Case(
            f"replay TCG2 log, {LOG_EVENTS:,} events (sha1+sha256)",
            timeit(replay_tcg2, repeat=repeat),
            target=0.020,
            note=f"{len(data):,} bytes; parse + replay",
        )
    )

    banks = measurer.active_banks(tpm)
    pcr = measurer.check_pcr(config.measure.pcr)
    with tempfile.TemporaryDirectory(prefix="edgeagent-bench-") as tmp:
        path = Path(tmp) / "bench.cel.jsonl"
        cel_log(path, LOG_EVENTS, banks, pcr)

        def replay_cel() -> None:
            cel.replay(cel.segment(cel.read_log(path), pcr), banks)

        report.add(
            Case(
                f"replay CEL log, {LOG_EVENTS:,} records ({'+'.join(banks)})",
                timeit(replay_cel, repeat=repeat),
                note=f"{path.stat().st_size:,} bytes; read + replay",
            )
        )

        package = [t for t in targets.collect(config) if t.component == "package"]
        runs = iter(range(10**9))

        def cold_measure() -> None:
            state = Path(tmp) / f"state-{next(runs)}"
            cfg = dataclasses.replace(config, state_dir=state)
            cfg.measure = dataclasses.replace(config.measure, event_log=Path("measurements.cel.jsonl"))
            measurer.measure(cfg, tpm, only=package)

        samples = timeit(cold_measure, repeat=max(3, min(repeat, 10)))
        report.add(
            Case(
                "cold measure of the agent's package",
                samples,
                note=f"{len(package)} files: hash, log (fsync), reset + extend PCR {pcr}",
            )
        )
