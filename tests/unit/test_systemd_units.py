"""The systemd units, sysusers/tmpfiles entries and `make install`, checked with systemd's own tools.

`systemd-analyze verify` runs against a root made by `make install-files` (plus the host's stock units, so
sysinit.target and friends resolve, and stubs for /bin/kill and kubelet), `systemd-analyze security
--offline=yes` against the unit files, `systemd-sysusers`/`systemd-tmpfiles --root` against the installed
entries. The exposure ceilings are configuration checks: a later edit that weakens a unit fails here.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
HOST_UNITS = Path("/lib/systemd/system")
# Ceilings for `systemd-analyze security --offline=yes` (0 safe .. 10 exposed). Before hardening 7.6 and 7.3;
# the targets were 2.5 and 1.5; reached (systemd 252) 1.3 and 0.4. The ceilings sit just above what is reached
# so that dropping any one directive of weight >= 0.2 fails here.
EXPOSURE_CEILING = {"edgeagent.service": 1.4, "edgeagent-measure.service": 0.5}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: install systemd (apt-get install systemd) to check the units")
    return path


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False)


def make_install_files(destdir: Path, *args: str) -> None:
    r = run("make", "-s", "-C", REPO, "install-files", f"DESTDIR={destdir}", *args)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    make_install_files(root)
    return root


def mode(p: Path) -> int:
    return p.stat().st_mode & 0o7777


# ---------------------------------------------------------------- exposure
@pytest.mark.parametrize("unit", sorted(EXPOSURE_CEILING))
def test_exposure_stays_under_its_ceiling(unit: str) -> None:
    r = run(tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", UNITS / unit)
    m = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", r.stdout)
    assert m, f"no exposure line in systemd-analyze output:\n{r.stdout}\n{r.stderr}"
    assert float(m.group(1)) <= EXPOSURE_CEILING[unit], (
        f"{unit} exposure {m.group(1)} > {EXPOSURE_CEILING[unit]}: a directive was weakened\n{r.stdout}"
    )


def directives(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (UNITS / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_agent_unit_keeps_what_its_function_needs() -> None:
    d = directives("edgeagent.service")
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["ExecStart"] == ["/usr/bin/edgeagent --config /etc/edgeagent/agent.toml agent"]
    # wasmtime maps JIT code executable: see test_wasmtime_cannot_run_under_wx below.
    assert "MemoryDenyWriteExecute" not in d
    # /proc/stat (Keylime's boot time) and /proc/sys/kernel/random/boot_id must stay readable.
    assert "ProcSubset" not in d
    assert "PrivateDevices" not in d and "PrivateNetwork" not in d
    assert d["DeviceAllow"] == ["/dev/tpmrm0 rw", "char-i2c rw", "char-usb_device rw"]
    assert d["RuntimeDirectoryMode"] == ["0750"]


def test_measure_unit_has_no_network_and_only_the_tpm() -> None:
    d = directives("edgeagent-measure.service")
    assert d["PrivateNetwork"] == ["yes"] and d["RestrictAddressFamilies"] == ["none"]
    assert d["DeviceAllow"] == ["/dev/tpmrm0 rw"] and d["DevicePolicy"] == ["closed"]


def test_wasmtime_cannot_run_under_wx() -> None:
    """Why edgeagent.service has no MemoryDenyWriteExecute=: under the kernel's W^X (PR_SET_MDWE, the same
    rule systemd enforces with seccomp) wasmtime cannot make compiled code executable. If a future wasmtime
    can, this fails: then add MemoryDenyWriteExecute=yes to the unit."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(66, 0, 0, 0, 0) < 0:  # PR_GET_MDWE: Linux >= 6.3
        pytest.skip(f"this kernel has no PR_SET_MDWE (errno {ctypes.get_errno()}): cannot probe W^X")
    probe = (
        "import ctypes, wasmtime\n"
        "assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0\n"  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        "wasmtime.Module(wasmtime.Engine(), '(module (func (export \"f\")))')\n"
    )
    r = run(sys.executable, "-c", probe)
    assert r.returncode != 0 and "unable to make memory executable" in r.stderr, r.stderr


# ---------------------------------------------------------------- verify
def test_units_verify_in_an_installed_root(installed: Path, tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    root = tmp_path / "root"
    shutil.copytree(installed, root, symlinks=True)
    # The host's stock units (sysinit.target, network-online.target, ...) and stubs for the other binaries.
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    stub = "#!/bin/sh\nexit 0\n"
    for b in ("bin/kill", "usr/bin/kubelet"):
        (root / b).parent.mkdir(parents=True, exist_ok=True)
        (root / b).write_text(stub)
        (root / b).chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/system/kubelet.service").write_text("[Service]\nExecStart=/usr/bin/kubelet\n")
    for units in (
        ["edgeagent-measure.service"],
        ["edgeagent.service"],
        ["kubelet.service", "edgeagent-kubelet.path"],
    ):
        r = run(analyze, "verify", f"--root={root}", *units)
        # verify exits 0 on unknown keys and bad values ("..., ignoring."): any output is a finding.
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), f"{units}:\n{r.stdout}{r.stderr}"


def test_verify_reports_a_broken_unit(installed: Path, tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive is reported."""
    root = tmp_path / "root"
    shutil.copytree(installed, root, symlinks=True)
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    (root / "bin").mkdir(exist_ok=True)
    (root / "bin/kill").write_text("#!/bin/sh\n")
    (root / "bin/kill").chmod(0o755)
    unit = root / "usr/lib/systemd/system/edgeagent.service"
    unit.write_text(unit.read_text().replace("ProtectClock=yes", "ProtectClok=yes"))
    r = run(tool("systemd-analyze"), "verify", f"--root={root}", "edgeagent.service")
    assert "Unknown key 'ProtectClok'" in r.stderr


# ---------------------------------------------------------------- sysusers, tmpfiles
def test_sysusers_and_tmpfiles_entries(installed: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(installed, root, symlinks=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\ntss:x:110:\n")
    r = run(tool("systemd-sysusers"), f"--root={root}")
    assert r.returncode == 0, r.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    user = passwd["edgeagent"]
    assert int(user[2]) < 1000 and user[5] == "/var/lib/edgeagent" and user[6].endswith("nologin")
    assert groups["edgeagent"][2] == user[3]
    assert groups["tss"][2] == "110", "an existing group is left alone"
    for g in ("tss", "i2c", "plugdev"):
        assert "edgeagent" in groups[g][3].split(","), g
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles must chown to edgeagent: run as root to check the tmpfiles entries")
    r = run(tool("systemd-tmpfiles"), f"--root={root}", "--create")
    assert r.returncode == 0, r.stderr
    state = (root / "var/lib/edgeagent").stat()
    assert mode(root / "var/lib/edgeagent") == 0o700 and state.st_uid == int(user[2])
    assert mode(root / "etc/edgeagent") == 0o755 and (root / "etc/edgeagent").stat().st_uid == 0


# ---------------------------------------------------------------- make install
def test_install_tree_and_modes(installed: Path) -> None:
    lib = installed / "usr/lib/edgeagent"
    wrapper = installed / "usr/bin/edgeagent"
    assert mode(wrapper) == 0o755
    assert "exec /usr/lib/edgeagent/venv/bin/python -m edgeagent.cli.entry" in wrapper.read_text()
    units = installed / "usr/lib/systemd/system"
    for name in (
        "edgeagent.service",
        "edgeagent-measure.service",
        "edgeagent-kubelet.path",
        "kubelet.service.d/edgeagent.conf",
    ):
        assert mode(units / name) == 0o644, name
    assert (units / "edgeagent.service").read_text() == (UNITS / "edgeagent.service").read_text()
    for name in ("sysusers.d/edgeagent.conf", "tmpfiles.d/edgeagent.conf"):
        assert mode(installed / "usr/lib" / name) == 0o644
    drivers = sorted(p.name for p in (lib / "drivers").iterdir())
    assert (
        drivers == sorted(p.name for p in (REPO / "drivers/build").glob("*.wasm"))
        and "tmp102.wasm" in drivers
    )
    assert all(mode(p) == 0o644 for p in (lib / "drivers").iterdir())
    manifests = sorted((lib / "controllers").glob("*.toml"))
    assert manifests, "no controller manifests installed"
    for manifest in manifests:
        module = re.search(r'^module = "([^"]+)"', manifest.read_text(), re.M)
        assert module and "/" not in module.group(1), manifest
        assert (lib / "controllers" / module.group(1)).is_file(), f"{manifest.name} names a missing module"
    assert not list((lib / "controllers").glob("probe*")), "test controllers are not installed"
    policies = installed / "etc/edgeagent/policies"
    assert mode(policies / "drivers/tmp102.toml") == 0o644
    assert (policies / "drivers/tmp102.toml").read_text() == (
        REPO / "policies/drivers/tmp102.toml"
    ).read_text()


def test_install_with_prefix(tmp_path: Path) -> None:
    make_install_files(tmp_path, "PREFIX=/opt/edge")
    unit = (tmp_path / "opt/edge/lib/systemd/system/edgeagent.service").read_text()
    assert "ExecStart=/opt/edge/bin/edgeagent --config" in unit
    assert "/opt/edge/lib/edgeagent/venv/bin/python" in (tmp_path / "opt/edge/bin/edgeagent").read_text()
    assert (tmp_path / "opt/edge/lib/edgeagent/drivers/tmp102.wasm").is_file()
    assert (tmp_path / "etc/edgeagent/policies/drivers/tmp102.toml").is_file()


def test_install_adds_the_default_config_but_never_overwrites_site_files(tmp_path: Path) -> None:
    default = tmp_path / "agent.toml"
    default.write_text('state_dir = "/var/lib/edgeagent"\n')
    fresh = tmp_path / "fresh"
    make_install_files(fresh, f"CONFIG_SRC={default}")
    assert (fresh / "etc/edgeagent/agent.toml").read_text() == default.read_text()
    assert mode(fresh / "etc/edgeagent/agent.toml") == 0o644
    shipped_kubelet = (REPO / "etc/kubelet-config.yaml").read_text()
    assert (fresh / "etc/edgeagent/kubelet-config.yaml").read_text() == shipped_kubelet

    site = tmp_path / "site"
    (site / "etc/edgeagent/policies/drivers").mkdir(parents=True)
    (site / "etc/edgeagent/agent.toml").write_text("# site config\n")
    (site / "etc/edgeagent/kubelet-config.yaml").write_text("# site kubelet\n")
    (site / "etc/edgeagent/policies/drivers/tmp102.toml").write_text("# site policy\n")
    make_install_files(site, f"CONFIG_SRC={default}")
    assert (site / "etc/edgeagent/agent.toml").read_text() == "# site config\n"
    assert (site / "etc/edgeagent/kubelet-config.yaml").read_text() == "# site kubelet\n"
    assert (site / "etc/edgeagent/policies/drivers/tmp102.toml").read_text() == "# site policy\n"
    assert (site / "etc/edgeagent/policies/drivers/bme280.toml").is_file(), "absent policies are added"

    none = tmp_path / "none"
    make_install_files(none, f"CONFIG_SRC={tmp_path / 'absent.toml'}")
    assert not (none / "etc/edgeagent/agent.toml").exists()
