"""The one owned ESAPI connection to the TPM.

A raw TPM (swtpm, /dev/tpm0) has no resource manager: it holds 3 transient objects and 3 sessions, and
swtpm serves one client at a time. So the agent owns exactly one connection, serialises every command
behind an RLock, flushes whatever a crashed predecessor left loaded when it opens, keeps few objects loaded
and flushes sessions in ``finally``. Everything else in edgeagent.tpm works through `Tpm.locked`.

TSS errors become project errors here: a connection that cannot be made or is lost is `TpmUnavailable`
(with the cause: no such device, permission, nothing listening), any other failure `TpmError` naming the
operation.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

# ESYS logs every failed command on stderr (e.g. probing an NV index that does not exist). The agent reports
# errors itself; TSS2_LOG must be set before the TSS libraries are loaded.
os.environ.setdefault("TSS2_LOG", "all+none")

from tpm2_pytss import ESAPI, ESYS_TR, TPM2_CAP, TPM2_HC, TPM2_RC, TPM2_SU, TSS2_Exception

from edgeagent.errors import TpmError, TpmUnavailable
from edgeagent.tpm import esys
from edgeagent.tpm.pcr import check_indices

if TYPE_CHECKING:
    from edgeagent.tpm.identity import Identity
    from edgeagent.tpm.quote import Quote

# TSS2 response codes carry their layer in bits 16-23; the TCTI layer means the transport failed.
_TSS2_LAYER_MASK = 0xFF0000
_TSS2_TCTI_LAYER = 10 << 16


def _tcti_parts(tcti: str) -> tuple[str, dict[str, str], str]:
    """Splits "name:conf" into the TCTI name, its key=value pairs and the raw conf."""
    name, _, conf = tcti.partition(":")
    pairs = dict(p.partition("=")[::2] for p in conf.split(",") if "=" in p)
    return name, pairs, conf


def _why_unreachable(tcti: str) -> str:
    """A one-line cause for a TCTI that cannot be opened, found by looking where it points."""
    name, pairs, conf = _tcti_parts(tcti)
    if name == "device":
        path = Path(conf or "/dev/tpm0")
        if not path.exists():
            return f"TPM device {path} does not exist"
        if not os.access(path, os.R_OK | os.W_OK):
            return f"no permission to open TPM device {path} (need read/write, e.g. group tss)"
        return f"cannot open TPM device {path} (busy or not a TPM)"
    if name in ("swtpm", "mssim"):
        host = pairs.get("host", "localhost")
        try:
            port = int(pairs.get("port", "2321"))
        except ValueError:
            return f"bad port in TCTI {tcti!r}"
        try:
            with socket.create_connection((host, port), timeout=1.0):
                pass
        except OSError as e:
            cause = "connection refused" if e.errno == errno.ECONNREFUSED else (e.strerror or str(e))
            return f"no {name} reachable at {host}:{port} ({cause})"
        return f"{name} at {host}:{port} refused the TPM session (another client connected?)"
    return f"cannot open TCTI {tcti!r}"


def tss_error(what: str, e: TSS2_Exception, tcti: str = "") -> TpmError:
    """Maps a TSS error to the project error for ``what`` (e.g. "quote"), one line."""
    if (e.rc & _TSS2_LAYER_MASK) == _TSS2_TCTI_LAYER:
        where = f" at {tcti}" if tcti else ""
        return TpmUnavailable(f"lost connection to the TPM{where} during {what}: {e}")
    return TpmError(f"TPM {what} failed: {e} (rc 0x{e.rc:x})")


class Tpm:
    """The agent's connection to its TPM. Use `Tpm.open` (also a context manager)."""

    def __init__(self, esapi: ESAPI, tcti: str) -> None:
        self._esapi: ESAPI | None = esapi
        self.tcti = tcti
        self.lock = threading.RLock()
        self._banks: list[str] | None = None
        # Objects this connection keeps loaded, so a second provision reuses them instead of filling the
        # TPM's few object slots: EKs by template name, AKs by (EK name, AK name).
        self.loaded_eks: dict[str, Any] = {}
        self.loaded_aks: dict[tuple[bytes, bytes], ESYS_TR] = {}

    # ------------------------------------------------------------ lifetime
    @classmethod
    def open(cls, tcti: str) -> Tpm:
        """Connects, starts the TPM if nobody has, and flushes leftover transient objects and sessions.

        Raises TpmUnavailable (missing device, unreachable swtpm) or TpmError.
        """
        try:
            esapi = ESAPI(tcti)
        except TSS2_Exception:
            raise TpmUnavailable(_why_unreachable(tcti)) from None
        tpm = cls(esapi, tcti)
        try:
            tpm._startup()
            tpm.flush_leftovers()
        except BaseException:
            tpm.close()
            raise
        return tpm

    def close(self) -> None:
        """Flushes what this connection loaded and closes it; idempotent."""
        with self.lock:
            esapi, self._esapi = self._esapi, None
            if esapi is None:
                return
            handles = [*self.loaded_aks.values(), *(ek.handle for ek in self.loaded_eks.values())]
            self.loaded_aks.clear()
            self.loaded_eks.clear()
            for h in handles:
                with contextlib.suppress(TSS2_Exception):
                    esapi.flush_context(h)
            with contextlib.suppress(TSS2_Exception):
                esapi.close()

    def __enter__(self) -> Tpm:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def locked(self, what: str) -> Iterator[ESAPI]:
        """The ESAPI context under the lock; TSS errors inside become TpmError/TpmUnavailable for ``what``."""
        with self.lock:
            if self._esapi is None:
                raise TpmError(f"TPM {what}: the connection is closed")
            try:
                yield self._esapi
            except TSS2_Exception as e:
                raise tss_error(what, e, self.tcti) from None

    def _startup(self) -> None:
        with self.locked("startup") as ectx:
            try:
                ectx.get_capability(TPM2_CAP.TPM_PROPERTIES, 0x100, 1)
            except TSS2_Exception as e:
                # A simulator fresh from power-on needs TPM2_Startup; firmware does it on real machines.
                if (e.rc & 0xFFF) != TPM2_RC.INITIALIZE:
                    raise
                ectx.startup(TPM2_SU.CLEAR)

    def _handles(self, ectx: ESAPI, first: int) -> list[int]:
        out: list[int] = []
        more = True
        while more:
            more, data = ectx.get_capability(TPM2_CAP.HANDLES, first, 64)
            got = [int(data.data.handles[i]) for i in range(data.data.handles.count)]
            out += got
            if not got:
                break
            first = got[-1] + 1
        return out

    def flush_leftovers(self) -> int:
        """Flushes loaded transient objects and sessions this connection does not own; returns how many."""
        with self.locked("flush of leftover objects") as ectx:
            ours = {ectx.tr_get_tpm_handle(h) for h in self.loaded_aks.values()}
            ours |= {ectx.tr_get_tpm_handle(ek.handle) for ek in self.loaded_eks.values()}
            leftovers = [h for h in self._handles(ectx, TPM2_HC.TRANSIENT_FIRST) if h not in ours]
            leftovers += self._handles(ectx, TPM2_HC.LOADED_SESSION_FIRST)
            for h in leftovers:
                tr = ectx.tr_from_tpmpublic(h)
                ectx.flush_context(tr)
            return len(leftovers)

    # ------------------------------------------------------------ PCRs
    def pcr_banks(self) -> list[str]:
        """The active PCR banks (hash names such as "sha256"), in the TPM's order."""
        if self._banks is None:
            with self.locked("read of PCR banks") as ectx:
                _, data = ectx.get_capability(TPM2_CAP.PCRS, 0, 1)
                self._banks = esys.active_banks(data.data.assignedPCR)
        return list(self._banks)

    def pcr_read(self, indices: Iterable[int], bank: str = "sha256") -> dict[int, bytes]:
        """Reads PCRs of one bank; raises TpmError for an inactive bank or an out-of-range index."""
        wanted = check_indices(indices)
        self._check_bank(bank)
        with self.locked(f"PCR read ({bank})") as ectx:
            return esys.read(ectx, wanted, bank)

    def pcr_extend(self, index: int, digests: Mapping[str, bytes]) -> None:
        """Extends one PCR; ``digests`` maps bank name -> digest and must cover every active bank."""
        check_indices([index])
        values = esys.digest_values(digests, self.pcr_banks())
        with self.locked(f"PCR {index} extend") as ectx:
            ectx.pcr_extend(esys.pcr_handle(index), values)

    def pcr_reset(self, index: int) -> None:
        """Resets a resettable PCR (16 and 23 at locality 0 on a PC-client TPM)."""
        check_indices([index])
        with self.locked(f"PCR {index} reset") as ectx:
            try:
                ectx.pcr_reset(esys.pcr_handle(index))
            except TSS2_Exception as e:
                if (e.rc & _TSS2_LAYER_MASK) == _TSS2_TCTI_LAYER:
                    raise
                raise TpmError(f"PCR {index} cannot be reset at this locality: {e}") from None

    def _check_bank(self, bank: str) -> None:
        banks = self.pcr_banks()
        if bank not in banks:
            active = ", ".join(banks) or "none"
            raise TpmError(f"PCR bank {bank!r} is not active on this TPM (active: {active})")

    # ------------------------------------------------------------ attestation
    def quote(self, identity: Identity, nonce: bytes, pcrs: list[int], bank: str = "sha256") -> Quote:
        """A TPM2_Quote by the identity's AK over ``pcrs`` of ``bank`` with ``nonce`` as qualifying data."""
        self._check_bank(bank)
        return esys.take_quote(self, identity, nonce, pcrs, bank)

    def certify_ak(self, identity: Identity, qualifying_data: bytes) -> tuple[bytes, bytes]:
        """TPM2_Certify of the AK by itself: (TPMS_ATTEST, TPMT_SIGNATURE); Keylime's push-mode PoP."""
        return esys.certify_self(self, identity, qualifying_data)

    def activate_credential(self, identity: Identity, credential_blob: bytes) -> bytes:
        """The secret of a tpm2-tools credential blob (0xBADCC0DE) made for the identity's EK and AK name."""
        from edgeagent.tpm import identity as _identity  # it imports this module

        return _identity.activate_credential(self, identity, credential_blob)
