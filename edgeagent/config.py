"""The agent's configuration: read once into a typed object.

Sources, later wins: built-in defaults (embedded device), the TOML file (``--config``, default
``/etc/edgeagent/agent.toml``; a missing default file is fine, a missing explicit one is not), environment
variables ``EDGEAGENT_<KEY>`` for top-level keys and ``EDGEAGENT_<SECTION>_<KEY>`` for section keys, and
finally command-line options.

To add a section: add a dataclass with defaults for every field and a field of that type on ``AgentConfig``.
Types are coerced from TOML/env (str, int, float, bool, Path, list[str], list[Path]); unknown keys are errors,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeagent.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/edgeagent/agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/edgeagent")
DEFAULT_TCTI = "device:/dev/tpmrm0"
ENV_PREFIX = "EDGEAGENT_"


@dataclasses.dataclass
class MeasureConfig:
    """What ``edgeagent measure`` measures and where the logs live."""

    # PCR 23 is the TCG "application support" PCR: resettable, outside Keylime's measured-boot (0-9, 11-15),
    # IMA (10) and NK-binding (16) PCRs; see docs in edgeagent/measure.
    pcr: int = 23
    # Event log of the agent's own measurements (CEL-JSON). Relative paths are under the state dir.
    event_log: Path = Path("measurements.cel.jsonl")
    firmware_log: Path = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
    # Extra files or directories to measure besides the package, the config file and policies_dir.
    extra_paths: list[Path] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TpmConfig:
    """TPM identity choices."""

    ek_type: str = "rsa"  # rsa | ecc
    ak_type: str = "rsa"  # rsa (RSASSA-SHA256) | ecc (ECDSA P-256)


@dataclasses.dataclass
class DriverInstance:
    """One driver the agent service runs: a module bound to one device, read on a schedule.

    ``[[drivers.instances]]`` tables; ``name`` and ``driver`` are required, ``name`` unique.
    """

    # The instance's name: metrics labels, `edgeagent status`, the local API's /v1/drivers/NAME.
    name: str = ""
    # A bundled driver name (`edgeagent drivers list`) or a path to a .wasm module.
    driver: str = ""
    # The capability grant; empty: the bundled driver's own policy (a module given by path needs one).
    policy: Path | None = None
    # I2C: BUS:ADDRESS (e.g. "1:0x76"); USB: VID:PID. Empty: the first the policy grants.
    device: str = ""
    # Seconds between two readings of a sensor (output drivers are only written to).
    interval: float = 1.0
    # "auto": the simulated part when the machine has no such bus or device; "true" / "false" to force.
    sim: str = "auto"
    # Optional JSON-lines file every reading is appended to (relative: under the state dir).
    readings_log: Path | None = None


@dataclasses.dataclass
class DriversConfig:
    """Where Wasm drivers and their policies come from, and which ones the agent service runs."""

    modules_dir: Path = Path("/usr/lib/edgeagent/drivers")
    modules: list[Path] = dataclasses.field(default_factory=list)
    instances: list[DriverInstance] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ControllersConfig:
    """Where Wasm controllers come from and how their host runs them (`controllers run` and the agent)."""

    dir: Path = Path("/usr/lib/edgeagent/controllers")
    # NAMESPACE/NAME of a ConfigMap holding manifests and modules (reloaded when it changes); empty: none.
    configmap: str = ""
    # The API server credential; empty: the agent uses the node's (enroll.kubeconfig), `controllers run`
    # $KUBECONFIG, ~/.kube/config or the in-cluster service account.
    kubeconfig: Path | None = None
    # Snapshot idle controllers to disk and drop their instances.
    swap: bool = True
    # Refuse a module whose digest differs from the one `edgeagent measure` extended into the TPM.
    verify: bool = True
    # Threads that run controller calls.
    workers: int = 2
    # At most this many controllers instantiated at once (the least recently used is swapped out); 0: no cap.
    max_active: int = 16


@dataclasses.dataclass
class AgentSection:
    """The agent service (`edgeagent agent`): what it runs and where it reports."""

    # Attest with Keylime and keep the node credential. false: a device with drivers/controllers only.
    enroll: bool = True
    # The local API (Unix socket, HTTP/JSON): `edgeagent status` and programs on the device use it.
    socket: Path = Path("/run/edgeagent/agent.sock")
    # The socket is 0660 and owned by this group (if it exists); its members may read and write outputs.
    socket_group: str = "edgeagent"
    # The Prometheus endpoint; port 0: none. Keep it on loopback: readings are the device's data.
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 9102
    # A crashed driver, controller host or enrollment is restarted after this many seconds, doubled per
    # consecutive failure up to restart_backoff_max.
    restart_backoff: float = 1.0
    restart_backoff_max: float = 60.0


@dataclasses.dataclass
class EnrollConfig:
    """``edgeagent enroll``: where Keylime and the agent API are, and where the node credential goes."""

    # pull: Keylime's verifier connects to the agent's mTLS API (it must be reachable); push: Keylime's push
    # model (API 3.0, experimental in Keylime 7.14), for devices behind NAT: the agent opens no port, it
    # pushes its quotes to the verifier and fetches its join material from the attestation controller.
    mode: str = "pull"
    # The Keylime registrar's plain-HTTP agent port (registration and AK activation are unauthenticated).
    registrar_url: str = "http://127.0.0.1:8890"
    # push: the Keylime verifier (HTTPS; its certificate must chain to keylime_ca).
    verifier_url: str = "https://127.0.0.1:8881"
    # push: the attestation controller's join endpoint (its --join-port; HTTPS checked against keylime_ca,
    # or plain HTTP: the join material is sealed to this TPM either way).
    join_url: str = "https://127.0.0.1:8444"
    # push: longest wait between two attempts to reach an unreachable verifier (the wait doubles from 1 s).
    push_backoff_max: float = 30.0
    # The agent's mTLS API: the address it listens on is also the one it registers (the verifier pulls).
    agent_host: str = "127.0.0.1"
    agent_port: int = 9002
    # Empty: the host name. The node's Kubernetes name, and the EdgeNode it enrolls as.
    node_name: str = ""
    # Empty: derived from the EK (stable across reinstalls of the agent on the same TPM).
    uuid: str = ""
    # The Keylime CA (cv_ca/cacert.crt): only clients with certificates from it may call the agent API.
    keylime_ca: Path = Path("/var/lib/keylime/cv_ca/cacert.crt")
    # Where the decrypted U/V payload (join material) lands; a tmpfs by default, so it dies with the boot.
    payload_dir: Path = Path("/run/edgeagent")
    kubeconfig: Path = Path("/var/lib/edgeagent/kubelet/kubeconfig")
    # The verifier's revocation certificate: signed revocation notifications are acted on only with it.
    revocation_cert: Path | None = None
    # Seconds to keep retrying an unreachable registrar / API server before giving up; 0: forever.
    retry_timeout: float = 300.0
    # Seconds to wait for the payload (the cloud side adds the agent to the verifier); 0: forever.
    payload_timeout: float = 0.0
    # Seconds to wait for the CSR to be approved and signed.
    certificate_timeout: float = 600.0
    # Requested lifetime of the node's client certificate (spec.expirationSeconds; honoured by k8s >= 1.22).
    # Short by default: it bounds how long a revoked device's credential stays usable; renewed while attested.
    certificate_seconds: int = 3600
    # While serving, the node certificate is renewed once this fraction of its lifetime (from when it was
    # stored to its expiry) has passed.
    renew_fraction: float = 0.667
    # Seconds before retrying a refused or failed renewal (doubled per failure up to 300); also the least
    # time between two renewals.
    renew_retry: float = 10.0


@dataclasses.dataclass
class AgentConfig:
    """Everything the agent reads from its configuration."""

    state_dir: Path = DEFAULT_STATE_DIR
    tpm_tcti: str = DEFAULT_TCTI
    policies_dir: Path = Path("/etc/edgeagent/policies")
    tpm: TpmConfig = dataclasses.field(default_factory=TpmConfig)
    measure: MeasureConfig = dataclasses.field(default_factory=MeasureConfig)
    drivers: DriversConfig = dataclasses.field(default_factory=DriversConfig)
    controllers: ControllersConfig = dataclasses.field(default_factory=ControllersConfig)
    enroll: EnrollConfig = dataclasses.field(default_factory=EnrollConfig)
    agent: AgentSection = dataclasses.field(default_factory=AgentSection)
    # The file this configuration was read from, if any (it is measured too).
    source: Path | None = None

    def state_path(self, p: Path) -> Path:
        """Resolves ``p`` relative to the state dir, so configs can name files inside it briefly."""
        return p if p.is_absolute() else self.state_dir / p


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value == "" and len(args) < len(typing.get_args(tp)):
            return None  # an optional path left empty, e.g. `policy = ""`: not set
        return _coerce(value, args[0], where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if dataclasses.is_dataclass(item):  # an array of tables: [[section.key]]
            if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
                raise ConfigError(f"{where}: expected an array of tables ([[...]])")
            out = []
            for i, table in enumerate(value):
                obj = item()  # type: ignore[operator]  # item is a dataclass type with defaults
                _apply(obj, table, f"{where}[{i}]")
                out.append(obj)
            return out
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_coerce(v, item, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        try:
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value).expanduser()
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type")  # pragma: no cover - a programming error


def _apply(obj: Any, data: Mapping[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj) if f.name != "source"}
    for key, value in data.items():
        attr = key.replace("-", "_")
        if attr not in names:
            raise ConfigError(f"{where}: unknown key {key!r}")
        current = getattr(obj, attr)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: [{key}] must be a table")
            _apply(current, value, f"{where} [{key}]")
        else:
            setattr(obj, attr, _coerce(value, hints[attr], f"{where}: {key}"))


def _env_overrides(cfg: AgentConfig, env: Mapping[str, str]) -> None:
    sections = {f.name for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == "EDGEAGENT_CONFIG":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        for section in sections:
            if key.startswith(section + "_"):
                _apply(cfg, {section: {key[len(section) + 1 :]: value}}, f"environment {name}")
                break
        else:
            if key == "tpm":  # EDGEAGENT_TPM is the TCTI, like --tpm
                key = "tpm_tcti"
            # Other EDGEAGENT_* variables (used by scripts, e.g. EDGEAGENT_CACHE) are not config keys.
            if key in {f.name for f in dataclasses.fields(cfg)} - sections - {"source"}:
                _apply(cfg, {key: value}, f"environment {name}")


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Reads the configuration.

    Raises ConfigError when an explicitly named file is missing or unreadable, is not valid TOML, or holds an
    unknown key or a value of the wrong type.
    """
    env = os.environ if env is None else env
    cfg = AgentConfig()
    explicit = path is not None or "EDGEAGENT_CONFIG" in env
    if path is None:
        path = Path(env.get("EDGEAGENT_CONFIG", DEFAULT_CONFIG_PATH))
    if explicit or path.exists():
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        _apply(cfg, data, str(path))
        cfg.source = path
    _env_overrides(cfg, env)
    if overrides:
        _apply(cfg, {k: v for k, v in overrides.items() if v is not None}, "command line")
    validate(cfg, str(path) if cfg.source is not None else "configuration")
    return cfg


SIM_CHOICES = ("auto", "true", "false")


def validate(cfg: AgentConfig, where: str) -> None:
    """Checks what a type cannot say (required keys, unique names, ranges); ConfigError names the key."""
    seen: set[str] = set()
    for i, inst in enumerate(cfg.drivers.instances):
        at = f"{where}: drivers.instances[{i}]"
        if not inst.name:
            raise ConfigError(f"{at}: name is required")
        if not inst.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{at}: name {inst.name!r} may hold only letters, digits, '-' and '_'")
        if inst.name in seen:
            raise ConfigError(f"{at}: name {inst.name!r} is used twice")
        seen.add(inst.name)
        if not inst.driver:
            raise ConfigError(f"{at} ({inst.name}): driver is required")
        if not inst.interval > 0:
            raise ConfigError(f"{at} ({inst.name}): interval must be > 0 seconds, got {inst.interval}")
        if inst.sim not in SIM_CHOICES:
            choices = ", ".join(SIM_CHOICES)
            raise ConfigError(f"{at} ({inst.name}): sim must be one of {choices}, got {inst.sim!r}")
    ctl = cfg.controllers
    if cfg.enroll.mode not in ("pull", "push"):
        raise ConfigError(f"{where}: enroll.mode must be pull or push, got {cfg.enroll.mode!r}")
    if cfg.enroll.mode == "push" and (cfg.tpm.ak_type != "rsa" or cfg.tpm.ek_type != "rsa"):
        # Keylime 7.14.3 checks the session's proof of possession as RSASSA whatever the AK, and the join
        # material is sealed with MakeCredential to an RSA EK
        raise ConfigError(f"{where}: enroll.mode = push needs tpm.ak_type = rsa and tpm.ek_type = rsa")
    if ctl.configmap and ctl.configmap.count("/") != 1:
        raise ConfigError(f"{where}: controllers.configmap must be NAMESPACE/NAME, got {ctl.configmap!r}")
    if ctl.workers < 1 or ctl.max_active < 0:
        raise ConfigError(f"{where}: controllers.workers must be >= 1 and controllers.max_active >= 0")
    if not 0 <= cfg.agent.metrics_port < 65536:
        raise ConfigError(f"{where}: agent.metrics_port {cfg.agent.metrics_port} is not a TCP port (0: none)")
    if not 0 < cfg.agent.restart_backoff <= cfg.agent.restart_backoff_max:
        raise ConfigError(f"{where}: agent.restart_backoff must be > 0 and <= agent.restart_backoff_max")
