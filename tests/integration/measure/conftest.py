"""Fixtures for measurement tests: a device layout on a fresh swtpm, and a frozen copy of the package."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgeagent.measure import targets
from edgeagent.tpm.swtpm import SoftwareTpm
from tests.integration.measure.layout import Device, make_device


@pytest.fixture
def device(tmp_path: Path, fresh_swtpm: SoftwareTpm) -> Device:
    return make_device(tmp_path / "device", fresh_swtpm.tcti)


@pytest.fixture(autouse=True)
def package_snapshot(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Measures a copy of the edgeagent package taken at test start.

    The real package directory is a working tree other work may edit while a test runs; a file changing
    between `measure` and `verify` would (rightly) fail verification. test_targets checks the real directory.
    """
    src = targets.package_dir()
    dst = tmp_path_factory.mktemp("pkg") / "edgeagent"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    monkeypatch.setattr(targets, "package_dir", lambda: dst)
    return dst
