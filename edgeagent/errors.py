"""The project's exception hierarchy.

Every failure a user can cause or meet (bad input, missing device, unreachable peer) is an ``EdgeAgentError``
whose ``str()`` is one line that names the cause; the CLI prints it as is and exits with ``exit_code``.
Anything else escaping to the CLI is a bug in edgeagent.
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base of every error edgeagent reports to a user."""

    exit_code: int = 1


class ConfigError(EdgeAgentError):
    """The configuration file or an override cannot be read or makes no sense."""

    exit_code = 78  # EX_CONFIG


class StateError(EdgeAgentError):
    """The state directory is unusable or holds something corrupt."""

    exit_code = 74  # EX_IOERR


# ---------------------------------------------------------------- TPM
class TpmError(EdgeAgentError):
    """A TPM operation failed."""

    exit_code = 3


class TpmUnavailable(TpmError):
    """No TPM at the configured TCTI (missing device, swtpm not running)."""


class QuoteVerificationError(TpmError):
    """A quote's signature, nonce, magic/type or PCR digest does not check out."""


# ---------------------------------------------------------------- measurements
class MeasureError(EdgeAgentError):
    """Measuring or replaying failed."""

    exit_code = 4


class EventLogError(MeasureError):
    """An event log is corrupt, truncated, empty or of an unknown format."""


class MeasurementMismatch(MeasureError):
    """A replayed log does not match the TPM, or a measured file changed."""


class ReferencePolicyError(MeasureError):
    """A measurement reference policy is unreadable or malformed."""


# ---------------------------------------------------------------- Wasm guests, hardware
class WasmError(EdgeAgentError):
    """A Wasm module could not be loaded or failed while running."""

    exit_code = 5


class DriverError(WasmError):
    """A driver trapped, looped, broke its ABI or its device failed."""


class PolicyError(EdgeAgentError):
    """A capability policy is malformed."""

    exit_code = 78


class ModelError(EdgeAgentError):
    """A simulated-device model (a TOML register map, an entry point) is unreadable or malformed."""

    exit_code = 78


class BundleError(EdgeAgentError):
    """A driver or controller bundle is malformed, tampered with, unsigned or signed by an unknown key."""

    exit_code = 78


class AccessDenied(EdgeAgentError):
    """A guest asked for a device, address or API verb its policy does not grant."""

    exit_code = 13


class HardwareError(EdgeAgentError):
    """A bus or device failed (NACK, stall, timeout, unplugged)."""

    exit_code = 6


class DeviceDataError(HardwareError):
    """The device answered but a driver's check of its data failed (CRC, chip ID): the driver said so with
    EA_ERR_DATA and a message; the bus is not to blame, and a stream of readings goes on."""


# ---------------------------------------------------------------- attestation, cluster
class AttestationError(EdgeAgentError):
    """Registration, activation or attestation with Keylime failed."""

    exit_code = 7


class ProtocolError(AttestationError):
    """A Keylime wire message is malformed: bad JSON, envelope, base64, blob layout or field."""


class ApiVersionMismatch(ProtocolError):
    """The peer speaks no Keylime API version this side supports."""


class KeyDerivationError(AttestationError):
    """The U and V key shares do not form the key the auth_tag names, or a payload does not decrypt."""


class SignatureError(AttestationError):
    """A signed Keylime message (a revocation notification) does not verify against the expected key."""


class RegistrationError(AttestationError):
    """The Keylime registrar refused a registration or an activation."""


class PeerUnreachable(EdgeAgentError):
    """A remote service (Keylime, kube-apiserver) cannot be reached."""

    exit_code = 69  # EX_UNAVAILABLE


class ClusterError(EdgeAgentError):
    """A Kubernetes API request failed or was refused."""

    exit_code = 8


class CsrRefused(ClusterError):
    """The node's CSR was denied or failed: it will never be signed, a new one must be made."""


class ControllerError(WasmError):
    """A Wasm controller trapped, looped or broke its ABI."""


class ManifestError(PolicyError):
    """A controller manifest is missing, malformed, or names something impossible."""
