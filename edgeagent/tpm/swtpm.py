"""A software TPM (swtpm) with an EK certificate from a throwaway local CA, served on free loopback ports.

Used by the test fixtures and by the embedded-default ``make run``: both need a TPM that behaves like a real
one as seen by a verifier, i.e. whose EK carries a certificate chaining to a CA the verifier can be given
(``ca_cert``). ``swtpm_setup`` creates the TPM state and asks ``swtpm_localca`` (configured by files this
class writes) to issue the EK certificates into NV (RSA-2048 at 0x1c00002, ECC P-384 at 0x1c00016).

The state directory is reused when it already holds a TPM, so the EK (and any AK persisted against it)
survives restarts; `clone` copies a prepared state so many short-lived TPMs do not each pay for
``swtpm_setup``. The server runs in its own process group and `stop` kills that group.

The swtpm TCTI always talks to the control channel on ``port + 1``; raw swtpm serves one client connection
at a time and has no resource manager.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from edgeagent.errors import TpmUnavailable

SWTPM = "swtpm"
SWTPM_SETUP = "swtpm_setup"
SWTPM_LOCALCA = "swtpm_localca"
LOCALCA_OPTIONS = Path("/etc/swtpm-localca.options")
# File swtpm keeps a TPM 2.0's permanent state in; its presence means the state is set up.
PERMALL = "tpm2-00.permall"


def _free_port_pair(host: str) -> int:
    """A port P with P and P+1 free a moment ago (the TCTI insists the control port is P+1)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind((host, port + 1))
            except OSError:
                continue
        return port
    raise TpmUnavailable(f"no free pair of loopback ports on {host} for swtpm")


class SoftwareTpm:
    """One swtpm instance: its state, its local CA, its server process.

    ``workdir`` holds ``state/`` (the TPM), ``ca/`` (the local CA and the swtpm_setup/localca configs) and
    ``swtpm.log``. Raises TpmUnavailable with the tool's output when swtpm_setup or swtpm fail.
    """

    def __init__(self, workdir: Path, *, host: str = "127.0.0.1", pcr_banks: tuple[str, ...] = ("sha256",),
                 ca_dir: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.pcr_banks = pcr_banks
        self.state_dir = self.workdir / "state"
        self.ca_dir = Path(ca_dir) if ca_dir is not None else self.workdir / "ca"
        self.log = self.workdir / "swtpm.log"
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ state
    @property
    def ca_cert(self) -> Path:
        """The local CA's certificate: the trust anchor for this TPM's EK certificate."""
        return self.ca_dir / "issuercert.pem"

    @property
    def is_set_up(self) -> bool:
        return (self.state_dir / PERMALL).exists()

    def setup(self) -> SoftwareTpm:
        """Creates the TPM state with EK certificates unless it already exists (idempotent)."""
        if self.is_set_up:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        localca_conf = self.ca_dir / "localca.conf"
        localca_conf.write_text(
            f"statedir = {self.ca_dir}\n"
            f"signingkey = {self.ca_dir / 'signkey.pem'}\n"
            f"issuercert = {self.ca_cert}\n"
            f"certserial = {self.ca_dir / 'certserial'}\n"
        )
        setup_conf = self.ca_dir / "setup.conf"
        setup_conf.write_text(
            f"create_certs_tool = {shutil.which(SWTPM_LOCALCA) or '/usr/bin/' + SWTPM_LOCALCA}\n"
            f"create_certs_tool_config = {localca_conf}\n"
            f"create_certs_tool_options = {LOCALCA_OPTIONS}\n"
            f"active_pcr_banks = {','.join(self.pcr_banks)}\n"
        )
        cmd = [
            SWTPM_SETUP, "--tpm2", "--tpmstate", str(self.state_dir), "--config", str(setup_conf),
            "--create-ek-cert", "--lock-nvram", "--overwrite", "--pcr-banks", ",".join(self.pcr_banks),
        ]
        try:
            # swtpm_setup looks for user config under XDG_CONFIG_HOME; keep it inside the workdir.
            env = dict(os.environ, XDG_CONFIG_HOME=str(self.workdir / "xdg"))
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
        except FileNotFoundError:
            raise TpmUnavailable(f"{SWTPM_SETUP} is not installed (apt install swtpm-tools)") from None
        if done.returncode != 0 or not self.is_set_up:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise TpmUnavailable(f"{SWTPM_SETUP} failed ({done.returncode}): {tail[0]}")
        return self

    def clone(self, workdir: Path) -> SoftwareTpm:
        """A new SoftwareTpm whose state is a copy of this (stopped or never started) one, same EK and CA."""
        if not self.is_set_up:
            self.setup()
        other = SoftwareTpm(workdir, host=self.host, pcr_banks=self.pcr_banks, ca_dir=self.ca_dir)
        other.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for f in self.state_dir.iterdir():
            if f.is_file() and not f.name.startswith(".lock"):
                shutil.copy2(f, other.state_dir / f.name)
        return other

    # ------------------------------------------------------------ server
    @property
    def tcti(self) -> str:
        if self.port is None:
            raise TpmUnavailable("the software TPM is not running")
        return f"swtpm:host={self.host},port={self.port}"

    @property
    def pid(self) -> int | None:
        """The swtpm process (its own process group), while this object runs one."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, *, timeout: float = 20.0) -> SoftwareTpm:
        """Sets up (if needed) and serves the TPM; PCRs start from a fresh TPM2_Startup(CLEAR)."""
        if self.running:
            return self
        self.setup()
        last = ""
        for _ in range(3):  # a free port can be taken between probing and binding it
            port = _free_port_pair(self.host)
            if self._spawn(port, timeout):
                self.port = port
                return self
            last = (self.log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"])[0]
        raise TpmUnavailable(f"swtpm did not start: {last}")

    def _spawn(self, port: int, timeout: float) -> bool:
        cmd = [
            SWTPM, "socket", "--tpm2", "--tpmstate", f"dir={self.state_dir}",
            "--server", f"type=tcp,port={port},bindaddr={self.host}",
            "--ctrl", f"type=tcp,port={port + 1},bindaddr={self.host}",
            "--flags", "not-need-init,startup-clear",
        ]
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            try:
                self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True)
            except FileNotFoundError:
                raise TpmUnavailable(f"{SWTPM} is not installed (apt install swtpm)") from None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            # Probe the control channel: a probe on the server port would occupy swtpm's only client slot.
            with contextlib.suppress(OSError), socket.create_connection((self.host, port + 1), timeout=0.5):
                return True
            time.sleep(0.02)
        self.stop()
        raise TpmUnavailable(f"swtpm not listening on {self.host}:{port + 1} after {timeout:.0f}s")

    def stop(self, *, timeout: float = 10.0) -> None:
        """Terminates the server's process group (TERM, then KILL); the state stays for a later start."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def __enter__(self) -> SoftwareTpm:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
