"""Guest bundles without a TPM: pack, sign, verify, and what install refuses (tampered, unknown key, unsigned,
wrong ABI, broken model or manifest), each as one line; then a driver installed from a bundle runs by name
with its own simulated part. The bundles are the out-of-tree examples (examples/), copied and built outside
the repository with their own Makefiles. Measuring into the TPM: tests/integration/test_thirdparty_bundles.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def edgeagent_script(where: Path) -> Path:
    """An `edgeagent` command for the Makefiles, running this checkout."""
    script = where / "edgeagent"
    script.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m edgeagent "$@"\n')
    script.chmod(0o755)
    return script


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example driver and controller, copied out of the repository and built with their Makefiles."""
    root = tmp_path_factory.mktemp("thirdparty")
    script = edgeagent_script(root)
    out = {"edgeagent": script}
    for name in ("sht31-driver", "configmap-mirror"):
        d = root / name
        shutil.copytree(EXAMPLES / name, d, ignore=shutil.ignore_patterns("build", "dist"))
        subprocess.run(["make", "-s", "-C", str(d), f"EDGEAGENT={script}"], check=True, timeout=300)
        out[name] = d
    subprocess.run([str(script), "bundle", "keygen", str(root / "keys" / "dev.key")], check=True, timeout=60)
    subprocess.run(
        [str(script), "bundle", "keygen", str(root / "keys" / "other.key")], check=True, timeout=60
    )
    out["key"] = root / "keys" / "dev.key"
    out["other_key"] = root / "keys" / "other.key"
    return out


@pytest.fixture
def device(tmp_path: Path, built: dict[str, Path]) -> Path:
    """A device's config: its own state, policies (trusting dev.key), drivers and controllers directories."""
    (tmp_path / "policies" / "trusted-keys").mkdir(parents=True)
    shutil.copyfile(built["key"].with_name("dev.key.pub"), tmp_path / "policies" / "trusted-keys" / "dev.pub")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\npolicies_dir = "{tmp_path / "policies"}"\n'
        f'[drivers]\nmodules_dir = "{tmp_path / "drivers"}"\n'
        f'[controllers]\ndir = "{tmp_path / "controllers"}"\n'
    )
    return config


def ea(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "edgeagent", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def one_line_error(r: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert r.returncode == code, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("edgeagent: error: ") and text in r.stderr, (
        r.stderr
    )


def pack(built: dict[str, Path], name: str, out: Path, *, key: str = "key") -> Path:
    r = ea("bundle", "pack", str(built[name]), "-o", str(out), *(["--key", str(built[key])] if key else []))
    assert r.returncode == 0, r.stderr
    return out


def test_a_signed_driver_bundle_installs_and_runs_by_name_with_its_own_model(
    built: dict[str, Path], device: Path, tmp_path: Path
) -> None:
    bundle = pack(built, "sht31-driver", tmp_path / "dist" / "sht31.tar.gz")
    r = ea("-c", str(device), "bundle", "verify", str(bundle))
    assert r.returncode == 0 and "driver bundle sht31: signed by trusted key" in r.stdout, r.stderr
    r = ea("-c", str(device), "drivers", "install", str(bundle), "--no-measure")
    assert r.returncode == 0 and "installed driver sht31 0.1.0 (signed by" in r.stdout, r.stderr
    assert (tmp_path / "drivers" / "sht31" / "build" / "sht31.wasm").is_file()
    r = ea("-c", str(device), "run-driver", "sht31", "--sim", "-n", "2", "-i", "0", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["values"]["temperature"] == pytest.approx(22.5, abs=0.01)
        assert row["values"]["humidity"] == pytest.approx(41.0, abs=0.01)
    r = ea("-c", str(device), "drivers", "list", "--json")
    (listed,) = [d for d in json.loads(r.stdout) if d["name"] == "sht31"]
    assert listed["bundle"] == {"version": "0.1.0", "abi": 2, "model": "model.toml"}
    # a second install replaces the first
    r = ea("-c", str(device), "drivers", "install", str(bundle), "--no-measure")
    assert r.returncode == 0 and "replacing the previous version" in r.stdout


def test_a_simulated_part_enforces_the_datasheet_wait_and_its_address(
    built: dict[str, Path], tmp_path: Path
) -> None:
    d = tmp_path / "sht31"
    shutil.copytree(built["sht31-driver"], d)
    r = ea("run-driver", str(d), "--sim", "-n", "1", "--device", "1:0x45", "--json")  # the other strap
    assert r.returncode == 0, r.stderr
    policy = tmp_path / "wide.toml"
    policy.write_text("[[i2c]]\nbus = 1\naddresses = [0x46]\n")
    r = ea("run-driver", str(d), "--sim", "-n", "1", "--device", "1:0x46", "--policy", str(policy))
    one_line_error(r, 6, "init failed: no-acknowledge(address)")  # no SHT31 can sit at 0x46
    subprocess.run(
        [
            "make",
            "-s",
            "-B",
            "-C",
            str(d),
            f"EDGEAGENT={built['edgeagent']}",
            "CFLAGS=-O2 -DSHT31_FORGET_THE_WAIT",
        ],
        check=True,
        timeout=300,
    )
    r = ea("run-driver", str(d), "--sim", "-n", "1")
    one_line_error(r, 6, "read failed: no-acknowledge(address) (sht31: conversion in progress)")


def test_tampered_unknown_key_unsigned_and_malformed_bundles_are_refused_in_one_line(
    built: dict[str, Path], device: Path, tmp_path: Path
) -> None:
    def unpacked(name: str, *, key: str = "key", edit: tuple[str, str, str] | None = None) -> Path:
        src = tmp_path / f"src-{name}"
        if src.exists():
            shutil.rmtree(src)
        shutil.copytree(built["sht31-driver"], src)
        if edit is not None:
            f, old, new = edit
            text = (src / f).read_text()
            assert old in text
            (src / f).write_text(text.replace(old, new))
        return pack({**built, "sht31-driver": src}, "sht31-driver", tmp_path / name, key=key)

    good = unpacked("good")
    (good / "policy.toml").write_text(
        (good / "policy.toml").read_text() + "\n[[i2c]]\nbus = 2\naddresses = [0x10]\n"
    )
    one_line_error(
        ea("-c", str(device), "drivers", "install", str(good)), 78, "policy.toml changed after signing"
    )
    added = unpacked("added")
    (added / "extra.txt").write_text("x")
    one_line_error(
        ea("-c", str(device), "drivers", "install", str(added)), 78, "extra.txt was added after signing"
    )
    other = unpacked("other", key="other_key")
    one_line_error(ea("-c", str(device), "drivers", "install", str(other)), 78, "which is not trusted")
    unsigned = unpacked("unsigned", key="")
    one_line_error(ea("-c", str(device), "drivers", "install", str(unsigned)), 78, "is not signed")
    r = ea("-c", str(device), "drivers", "install", str(unsigned), "--allow-unsigned", "--no-measure")
    assert r.returncode == 0 and "(UNSIGNED)" in r.stdout, r.stderr
    abi = unpacked("abi", edit=("bundle.toml", "abi = 2", "abi = 9"))
    one_line_error(
        ea("-c", str(device), "drivers", "install", str(abi)),
        78,
        "built for driver ABI 9, this agent speaks 1 and 2",
    )
    model = unpacked("model", edit=("model.toml", "conversion_ms = 15.0", 'conversion_ms = "soon"'))
    one_line_error(
        ea("-c", str(device), "drivers", "install", str(model)),
        78,
        "conversion_ms must be a number",
    )
    taken = unpacked("taken", edit=("bundle.toml", 'name = "sht31"', 'name = "tmp102"'))
    one_line_error(
        ea("-c", str(device), "drivers", "install", str(taken)), 78, "that name is a bundled driver's"
    )
    kind = ea("-c", str(device), "controllers", "install", str(good), "--no-measure")
    one_line_error(kind, 78, "bundle sht31 is a driver bundle, not a controller one")
    with tarfile.open(tmp_path / "broken.tar.gz", "w:gz") as tar:
        tar.add(good / "policy.toml", arcname="policy.toml")
    one_line_error(
        ea("-c", str(device), "drivers", "install", str(tmp_path / "broken.tar.gz")), 78, "no bundle.toml"
    )


def test_a_controller_bundle_installs_where_the_host_loads_it(
    built: dict[str, Path], device: Path, tmp_path: Path
) -> None:
    bundle = pack(built, "configmap-mirror", tmp_path / "mirror.tar.gz")
    r = ea("-c", str(device), "controllers", "install", str(bundle), "--no-measure")
    assert r.returncode == 0 and "installed controller configmap-mirror" in r.stdout, r.stderr
    from edgeagent.controllers.manifest import load_manifest, manifest_paths

    (path,) = manifest_paths(tmp_path / "controllers")  # bundle.toml beside it is not taken for a manifest
    m = load_manifest(path)
    assert (
        m.name == "configmap-mirror"
        and m.module == tmp_path / "controllers" / "configmap-mirror" / "build" / "mirror.wasm"
    )
    assert m.grants[0].api_groups == frozenset({""}) and str(m.watches[0].label_selector) == "mirror=yes"
