"""The firmware TCG2 log on swtpm: a generated boot log is replayed into a fresh TPM (simulated measured boot;
this machine has no /sys/kernel/security/tpm0), then `measure verify` checks it, and every bad variant."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from edgeagent.errors import EventLogError, MeasurementMismatch
from edgeagent.measure import tcg2
from edgeagent.tpm import Tpm
from tests.integration.measure.layout import Device
from tests.integration.measure.test_measure_swtpm import run_cli
from tests.unit.measure.logs import boot_log

pytestmark = pytest.mark.integration


def simulate_boot(tcti: str, log: tcg2.EventLog) -> int:
    """What firmware does: extend every non-EV_NO_ACTION event into the TPM. Returns how many."""
    n = 0
    with Tpm.open(tcti) as tpm:
        banks = tpm.pcr_banks()
        for ev in log.events:
            if ev.extended:
                digests = tcg2.digests_by_bank(ev)
                tpm.pcr_extend(ev.pcr_index, {b: digests[b] for b in banks})
                n += 1
    return n


@pytest.fixture
def booted(device: Device, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Device, Path]:
    log = boot_log(("sha1", "sha256"), locality=0)
    simulate_boot(device.tcti, log)
    path = tmp_path / "binary_bios_measurements"
    path.write_bytes(tcg2.encode(log))
    assert run_cli(device.cli("measure"), capsys)[0] == 0
    return device, path


def test_replayed_boot_verifies(booted: tuple[Device, Path], capsys: pytest.CaptureFixture[str]) -> None:
    device, path = booted
    code, out, err = run_cli(device.cli("measure", "verify", "--firmware-log", str(path), "--json"), capsys)
    assert code == 0, err
    doc = json.loads(out)
    fw = [(r["pcr"], r["events"]) for r in doc["rows"] if r["log"] == "firmware"]
    # PCR 5 holds an event type the parser does not know: still replayed, still matching.
    assert fw == [(0, 3), (1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 1), (7, 2), (9, 1)]
    assert all(r["match"] for r in doc["rows"]) and doc["firmware_log"]["present"]
    code, out, _ = run_cli(device.cli("measure", "verify", "--firmware-log", str(path)), capsys)
    assert code == 0 and "firmware" in out


def _rewrite(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    log = tcg2.parse(path.read_bytes())
    path.write_bytes(tcg2.encode(dataclasses.replace(log, events=tuple(change(list(log.events))))))


def test_tampered_event_is_named(booted: tuple[Device, Path], capsys: pytest.CaptureFixture[str]) -> None:
    device, path = booted

    def tamper(events: list[tcg2.Event]) -> list[tcg2.Event]:
        i = next(i for i, e in enumerate(events) if e.event_type == tcg2.EV_SEPARATOR and e.pcr_index == 3)
        events[i] = dataclasses.replace(
            events[i], digests=tuple((a, bytes(len(d))) for a, d in events[i].digests)
        )
        return events

    _rewrite(path, tamper)
    code, out, err = run_cli(device.cli("measure", "verify", "--firmware-log", str(path)), capsys)
    assert code == MeasurementMismatch.exit_code and err.count("\n") == 1
    assert "firmware log event #9 (EV_SEPARATOR, PCR 3" in err and "not the hash of its event data" in err
    assert "NO" in out


def test_event_the_tpm_never_saw_is_named(
    booted: tuple[Device, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    device, path = booted
    extra = tcg2.measurement(4, tcg2.EV_EFI_BOOT_SERVICES_APPLICATION, b"\x02" * 40, ("sha1", "sha256"))
    _rewrite(path, lambda evs: [*evs, dataclasses.replace(extra, number=len(evs) + 1)])
    code, _, err = run_cli(device.cli("measure", "verify", "--firmware-log", str(path)), capsys)
    assert code == MeasurementMismatch.exit_code
    assert "event #17 (EV_EFI_BOOT_SERVICES_APPLICATION, PCR 4" in err and "stops before this event" in err


def test_startup_locality_matters(device: Device, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # swtpm starts at locality 0: a log claiming StartupLocality 3 cannot replay to its PCR 0.
    simulate_boot(device.tcti, boot_log(("sha256",), locality=0))
    path = tmp_path / "log.bin"
    path.write_bytes(tcg2.encode(boot_log(("sha256",), locality=3)))
    assert run_cli(device.cli("measure"), capsys)[0] == 0
    code, out, err = run_cli(device.cli("measure", "verify", "--firmware-log", str(path), "--json"), capsys)
    assert code == MeasurementMismatch.exit_code and "PCR 0 (sha256)" in err
    mismatched = [r["pcr"] for r in json.loads(out)["rows"] if not r["match"]]
    assert mismatched == [0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "event log is empty"),
        (b"\x00\x00\x00\x00\x03\x00", "truncated at offset 4"),
        ("truncate", "truncated"),
        ("sha1-only", "first event must be EV_NO_ACTION"),
        (b"\xff" * 300, "first event must be EV_NO_ACTION"),
    ],
)
def test_bad_firmware_logs(
    device: Device, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | str, message: str
) -> None:
    good = tcg2.encode(boot_log(("sha256",)))
    data = {"truncate": good[:-5], "sha1-only": b"\0\0\0\0\x08\0\0\0" + bytes(20) + b"\x01\0\0\0v"}.get(
        content, content
    )
    path = tmp_path / "fw.bin"
    path.write_bytes(data)  # type: ignore[arg-type]
    assert run_cli(device.cli("measure"), capsys)[0] == 0
    code, out, err = run_cli(device.cli("measure", "verify", "--firmware-log", str(path)), capsys)
    assert code == EventLogError.exit_code
    assert err.startswith(f"edgeagent: error: firmware event log {path}: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err and out == ""


def test_missing_firmware_log_named_explicitly(
    device: Device, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(device.cli("measure"), capsys)[0] == 0
    code, _, err = run_cli(device.cli("measure", "verify", "--firmware-log", str(tmp_path / "none")), capsys)
    assert code == EventLogError.exit_code and "cannot read firmware event log" in err
