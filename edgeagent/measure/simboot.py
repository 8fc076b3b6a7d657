"""A simulated measured boot for software TPMs: what firmware would log and extend before the agent runs.

swtpm starts with every PCR zero and no firmware log, so neither ``measure verify`` nor a verifier would
have a boot to check on a machine without a TPM. `firmware_log` builds a small, well-formed TCG2 log
(StartupLocality 0, an S-CRTM version, POST code, EFI actions, and the separators that close PCRs 0-7, the
shape Keylime's ``tpm2_eventlog`` parser expects), and `boot` extends its events into the TPM as firmware
does. Used by ``make run`` on embedded defaults and by tests; never by the agent on a device with real
firmware.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgeagent.measure import tcg2
from edgeagent.measure.measurer import PcrTpm

SEPARATOR = b"\x00\x00\x00\x00"


def firmware_log(
    banks: Sequence[str], *, variant: str = "edgeagent simulated firmware 1.0"
) -> tcg2.EventLog:
    """A log that replays deterministically; ``variant`` changes PCR 0 (to simulate a firmware update)."""
    events = [
        tcg2.startup_locality_event(0),
        tcg2.measurement(0, tcg2.EV_S_CRTM_VERSION, (variant + "\0").encode("utf-16-le"), banks),
        tcg2.measurement(0, tcg2.EV_POST_CODE, b"POST CODE", banks, measured=b"firmware volume 0"),
        tcg2.measurement(1, tcg2.EV_EFI_ACTION, b"Platform configuration", banks),
        tcg2.measurement(4, tcg2.EV_EFI_ACTION, b"Calling EFI Application from Boot Option", banks),
    ]
    events += [tcg2.measurement(pcr, tcg2.EV_SEPARATOR, SEPARATOR, banks) for pcr in range(8)]
    events.append(tcg2.measurement(5, tcg2.EV_EFI_ACTION, b"Exit Boot Services Invocation", banks))
    return tcg2.build(banks, events)


def boot(tpm: PcrTpm, log: tcg2.EventLog) -> int:
    """Extends every event that firmware would extend (not EV_NO_ACTION); returns how many."""
    banks = tpm.pcr_banks()
    n = 0
    for ev in log.events:
        if ev.extended:
            digests = tcg2.digests_by_bank(ev)
            tpm.pcr_extend(ev.pcr_index, {b: digests[b] for b in banks})
            n += 1
    return n


def boot_and_write(tpm: PcrTpm, path: Path) -> int:
    """Simulated boot of a fresh TPM: extends the log's events and writes the binary log to ``path``."""
    log = firmware_log(tuple(tpm.pcr_banks()))
    n = boot(tpm, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tcg2.encode(log))
    return n
