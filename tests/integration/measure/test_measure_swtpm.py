"""`measure` and `measure verify` against a real swtpm: segments, recovery, tampering, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edgeagent.cli.main import main
from edgeagent.errors import EventLogError, MeasurementMismatch
from edgeagent.measure import cel, measurer, targets, verify
from edgeagent.tpm import Tpm
from edgeagent.tpm.swtpm import SoftwareTpm
from tests.integration.measure.layout import Device, make_device

pytestmark = pytest.mark.integration


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def independent_replay(log_path: Path, pcr: int = 23) -> bytes:
    """PCR 23's sha256 value from the log's last segment, computed here without edgeagent.measure."""
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    start = max(i for i, r in enumerate(lines) if r["content"].get("type") == "pcr_reset")
    value = bytes(32)
    for r in lines[start:]:
        for d in r["digests"]:
            if d["hashAlg"] == "sha256":
                canonical = json.dumps(r["content"], sort_keys=True, separators=(",", ":")).encode()
                assert d["digest"] == hashlib.sha256(canonical).hexdigest()
                value = hashlib.sha256(value + bytes.fromhex(d["digest"])).digest()
    return value


def test_measure_extends_pcr23_and_logs_every_target(device: Device) -> None:
    cfg = device.config()
    with Tpm.open(device.tcti) as tpm:
        res = measurer.measure(cfg, tpm)
        pcr23 = tpm.pcr_read([23])[23]
    names = {i.name: i.component for i in res.items}
    assert names["edgeagent/measure/tcg2.py"] == "package"
    assert names[str(device.config_file.resolve())] == "config"
    assert names["policies/tmp102.toml"] == "policies"
    assert names["drivers/tmp102.wasm"] == "driver"
    assert names["controllers/labeler.wasm"] == "controller"
    assert names[str(device.extra)] == "extra"
    assert not any(n.endswith(".pyc") or "__pycache__" in n for n in names)
    assert res.new_segment == "new log" and res.measured == len(res.items)
    assert pcr23 == res.pcr_values["sha256"] == independent_replay(res.log_path)
    # The same files again: nothing new is logged or extended.
    with Tpm.open(device.tcti) as tpm:
        again = measurer.measure(cfg, tpm)
        assert tpm.pcr_read([23])[23] == pcr23
    assert again.measured == 0 and again.new_segment is None
    with Tpm.open(device.tcti) as tpm:
        result = verify.verify(cfg, tpm)
    assert result.ok, result.problems
    assert not result.firmware_present
    assert [(r.log, r.pcr, r.match) for r in result.rows] == [("cel", 23, True)]


def test_cli_measure_and_verify(device: Device, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(device.cli("measure", "--json"), capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["pcr"] == 23 and doc["measured"] == len(doc["items"]) > 50
    code, out, err = run_cli(device.cli("measure", "verify"), capsys)
    assert code == 0, err
    assert "cel" in out and "yes" in out
    code, out, _ = run_cli(device.cli("measure"), capsys)
    assert code == 0 and "unchanged" in out


def test_changed_file_is_named(device: Device, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(device.cli("measure"), capsys)[0] == 0
    device.driver.write_bytes(b"\0asm\x01\0\0\0" + b"driver v2 (tampered)")
    code, out, err = run_cli(device.cli("measure", "verify", "--json"), capsys)
    assert code == MeasurementMismatch.exit_code
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "file drivers/tmp102.wasm" in err and "changed after it was measured" in err
    doc = json.loads(out)
    assert doc["ok"] is False and [f["name"] for f in doc["files_changed"]] == ["drivers/tmp102.wasm"]
    # Measuring again logs the new digest; the log and the TPM agree again.
    assert run_cli(device.cli("measure"), capsys)[0] == 0
    assert run_cli(device.cli("measure", "verify"), capsys)[0] == 0
    device.driver.unlink()
    code, _, err = run_cli(device.cli("measure", "verify"), capsys)
    assert code != 0 and "drivers/tmp102.wasm" in err and "gone or unreadable" in err


class CrashingTpm:
    """A real TPM whose process 'dies' (raises) on the n-th extend: the window between log and extend."""

    def __init__(self, tpm: Tpm, crash_at: int) -> None:
        self.tpm = tpm
        self.left = crash_at

    def pcr_banks(self) -> list[str]:
        return self.tpm.pcr_banks()

    def pcr_read(self, indices, bank: str = "sha256") -> dict[int, bytes]:  # type: ignore[no-untyped-def]
        return self.tpm.pcr_read(indices, bank)

    def pcr_reset(self, index: int) -> None:
        self.tpm.pcr_reset(index)

    def pcr_extend(self, index: int, digests) -> None:  # type: ignore[no-untyped-def]
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt("power cut")
        self.tpm.pcr_extend(index, digests)


def test_interrupted_measure_is_rolled_forward(device: Device, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = device.config()
    with Tpm.open(device.tcti) as tpm, pytest.raises(KeyboardInterrupt):
        measurer.measure(cfg, CrashingTpm(tpm, crash_at=5))
    code, _, err = run_cli(device.cli("measure", "verify"), capsys)
    assert code == MeasurementMismatch.exit_code
    assert "record #5" in err and "logged but not extended" in err
    log_before = measurer.log_path(cfg).read_bytes()
    with Tpm.open(device.tcti) as tpm:
        res = measurer.measure(cfg, tpm)
    assert res.rolled_forward > 0 and res.measured == 0
    assert measurer.log_path(cfg).read_bytes() == log_before  # completed from the log, nothing new logged
    assert run_cli(device.cli("measure", "verify"), capsys)[0] == 0


def test_torn_last_record(device: Device, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(device.cli("measure"), capsys)[0] == 0
    path = measurer.log_path(device.config())
    intact = path.read_bytes()
    n_lines = intact.count(b"\n")
    path.write_bytes(intact + b'{"recnum": 999, "pcr": 23, "dig')
    torn = path.read_bytes()
    # a reader reports it in one line and leaves it
    code, _, err = run_cli(device.cli("measure", "verify"), capsys)
    assert code == EventLogError.exit_code
    assert f"line {n_lines + 1}: torn record" in err and err.count("\n") == 1
    assert path.read_bytes() == torn
    # the next writer (the agent's start after a power cut) cuts it off, keeps it beside the log, and goes on
    code, _, _ = run_cli(device.cli("measure"), capsys)
    assert code == 0
    assert path.read_bytes().startswith(intact) and len(cel.parse(path.read_bytes())) >= n_lines
    kept = list(path.parent.glob(path.name + ".torn-*"))
    assert [k.read_bytes() for k in kept] == [b'{"recnum": 999, "pcr": 23, "dig']
    assert run_cli(device.cli("measure", "verify"), capsys)[0] == 0  # the log still explains PCR 23


def test_new_segment_after_tpm_restart(tmp_path: Path, swtpm_template: SoftwareTpm) -> None:
    tpm_proc = swtpm_template.clone(tmp_path / "tpm").start()
    try:
        dev = make_device(tmp_path / "device", tpm_proc.tcti)
        cfg = dev.config()
        with Tpm.open(dev.tcti) as tpm:
            first = measurer.measure(cfg, tpm)
        tpm_proc.stop()  # a reboot, as far as PCR 23 is concerned
        tpm_proc.start()
        cfg.tpm_tcti = tpm_proc.tcti
        with Tpm.open(tpm_proc.tcti) as tpm:
            assert tpm.pcr_read([23])[23] == bytes(32)
            second = measurer.measure(cfg, tpm)
            result = verify.verify(cfg, tpm)
        assert second.new_segment == "PCR was reset"
        assert second.segment_start == first.measured + 1 and second.measured == first.measured
        assert result.ok, result.problems
        records = cel.read_log(first.log_path)
        assert [r.recnum for r in records if r.is_reset] == [0, second.segment_start]  # history kept
    finally:
        tpm_proc.stop()


def test_pcr_extended_behind_the_agents_back(device: Device, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(device.cli("measure"), capsys)[0] == 0
    with Tpm.open(device.tcti) as tpm:
        tpm.pcr_extend(23, {"sha256": hashlib.sha256(b"someone else").digest()})
    code, _, err = run_cli(device.cli("measure", "verify"), capsys)
    assert code == MeasurementMismatch.exit_code and "extended outside the log" in err
    code, _, err = run_cli(device.cli("measure"), capsys)
    assert code == MeasurementMismatch.exit_code and "--new-segment" in err
    assert run_cli(device.cli("measure", "--new-segment"), capsys)[0] == 0
    assert run_cli(device.cli("measure", "verify"), capsys)[0] == 0


def test_reference_policy(device: Device, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ref" / "policy.json"
    code, _, err = run_cli(device.cli("measure", "policy", "--out", str(out)), capsys)
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert doc["components"]["drivers/tmp102.wasm"]["sha256"] == [targets.sha256_file(device.driver)]
    assert run_cli(device.cli("measure"), capsys)[0] == 0
    assert run_cli(device.cli("measure", "verify", "--policy", str(out)), capsys)[0] == 0
    device.extra.write_bytes(b"firmware blob v2")
    assert run_cli(device.cli("measure"), capsys)[0] == 0  # the log and PCR are consistent again ...
    code, _, err = run_cli(device.cli("measure", "verify", "--policy", str(out)), capsys)
    assert code == MeasurementMismatch.exit_code  # ... but the new digest is not in the policy
    assert f"policy: {device.extra} has sha256" in err


def test_two_banks(tmp_path: Path) -> None:
    with SoftwareTpm(tmp_path / "tpm", pcr_banks=("sha1", "sha256")) as tpm_proc:
        dev = make_device(tmp_path / "device", tpm_proc.tcti)
        with Tpm.open(dev.tcti) as tpm:
            res = measurer.measure(dev.config(), tpm)
            result = verify.verify(dev.config(), tpm)
            sha1 = tpm.pcr_read([23], "sha1")[23]
    assert res.banks == ["sha1", "sha256"] and sha1 != bytes(20)
    assert result.ok and sorted(r.bank for r in result.rows) == ["sha1", "sha256"]


def test_bad_config_and_tpm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(["--config", str(tmp_path), "measure"], capsys)  # a directory: unreadable
    assert code == 78 and err.startswith("edgeagent: error: cannot read config file") and err.count("\n") == 1
    code, _, err = run_cli(["--config", str(tmp_path / "nope.toml"), "measure", "verify"], capsys)
    assert code == 78 and "does not exist" in err and err.count("\n") == 1
    bad = tmp_path / "bad.toml"
    bad.write_text("[measure]\npcr = 10\n")
    code, _, err = run_cli(["--config", str(bad), "--tpm", "swtpm:host=127.0.0.1,port=1", "measure"], capsys)
    assert code == 78 and "measure.pcr 10 is not usable" in err
    dev = make_device(tmp_path / "device", "swtpm:host=127.0.0.1,port=1")
    code, _, err = run_cli(dev.cli("measure"), capsys)
    assert code == 3 and err.count("\n") == 1 and "Traceback" not in err
    code, _, err = run_cli(dev.cli("--tpm", "device:/dev/tpmrm-missing", "measure", "verify"), capsys)
    assert code == 3 and err.count("\n") == 1 and "Traceback" not in err


def test_interrupted_segment_start_is_rolled_forward(device: Device) -> None:
    cfg = device.config()
    with Tpm.open(device.tcti) as tpm:
        first = measurer.measure(cfg, tpm)
        # A crash after logging a new segment's reset record, before the reset itself.
        content = {"type": cel.PCR_RESET, "reason": "requested", "boot_id": measurer.boot_id(), "time": "t"}
        with cel.CelLog.open(first.log_path, write=True) as log:
            log.append([cel.make_record(first.measured + 1, 23, content, [])])
        res = measurer.measure(cfg, tpm)
        result = verify.verify(cfg, tpm)
    assert res.rolled_forward == 1 and res.new_segment is None
    assert res.segment_start == first.measured + 1 and res.measured == first.measured
    assert result.ok, result.problems
