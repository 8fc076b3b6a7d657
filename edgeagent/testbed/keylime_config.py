"""Keylime 7.14 configuration for a throwaway test deployment, generated in code.

The keylime wheel ships no configuration templates, and a test run must not depend on /etc/keylime, so every
file Keylime reads (verifier, registrar, tenant, ca, logging; named by KEYLIME_*_CONFIG) is written here from
typed settings. Values are chosen for one machine with 2 cores: sqlite, one worker, loopback, free ports.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_VERSION = "2.6"
"""The configuration schema version keylime 7.14 expects in every file's main section."""

COMPONENTS = ("verifier", "registrar", "tenant", "ca", "logging")


@dataclass(frozen=True)
class KeylimeSettings:
    """What a test deployment varies; everything else is fixed by `render`."""

    verifier_port: int
    registrar_port: int
    registrar_tls_port: int
    zmq_port: int
    tpm_cert_store: Path
    """Directory of EK CA certificates the tenant trusts (the swtpm local CA)."""
    webhook_url: str | None = None
    """Where the verifier POSTs signed revocation notifications; None disables the webhook notifier."""
    agent_notifications: bool = True
    """Keylime's "agent" notifier: every revocation POSTed to every agent it polls (so N revocations at once
    are N x N requests); the devices drop their credential on their own. False: the webhook only."""
    quote_interval: float = 2.0
    """Seconds between two integrity quotes of one agent (Keylime's shipped default is 2)."""
    measured_boot_policy_name: str = "accept-all"
    require_ek_cert: bool = True
    log_level: str = "INFO"
    extra: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per-file overrides: {"verifier": {"key": "value"}}, applied last to the file's main section."""


def _list(values: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _bool(value: bool) -> str:
    return "True" if value else "False"


def render(s: KeylimeSettings) -> dict[str, dict[str, dict[str, str]]]:
    """{file: {section: {key: value}}} for every Keylime component."""
    # Options Keylime's durable-attestation and transparency-log code reads even when the feature is off.
    durable_off = {
        "durable_attestation_import": "",
        "persistent_store_url": "",
        "transparency_log_url": "",
        "time_stamp_authority_url": "",
        "time_stamp_authority_certs_path": "",
        "persistent_store_format": "json",
        "persistent_store_encoding": "",
        "transparency_log_sign_algo": "sha256",
    }
    notifications = (["agent"] if s.agent_notifications else []) + (["webhook"] if s.webhook_url else [])
    verifier = {
        "version": CONFIG_VERSION,
        "uuid": "default",
        "ip": "127.0.0.1",
        "port": str(s.verifier_port),
        "registrar_ip": "127.0.0.1",
        "registrar_port": str(s.registrar_tls_port),
        "enable_agent_mtls": "True",
        # `generate` makes the verifier create the Keylime CA (cv_ca) in KEYLIME_DIR on first start.
        "tls_dir": "generate",
        "server_key": "default",
        "server_key_password": "",
        "server_cert": "default",
        "cert_subject_alternative_names": "",
        "trusted_client_ca": "default",
        "client_key": "default",
        "client_key_password": "",
        "client_cert": "default",
        "trusted_server_ca": "default",
        "authorization_provider": "simple",
        "database_url": "sqlite",
        "database_pool_sz_ovfl": "5,10",
        "auto_migrate_db": "True",
        "num_workers": "1",
        "max_workers": "1",
        "exponential_backoff": "True",
        "retry_interval": "1",
        "max_retries": "5",
        # Whole seconds as an integer: push mode (7.14.3) reads it with getint() and fails on "2.0".
        "quote_interval": str(int(s.quote_interval)) if float(s.quote_interval).is_integer()
        else str(s.quote_interval),
        "max_upload_size": "104857600",
        "request_timeout": "10.0",
        "measured_boot_policy_name": s.measured_boot_policy_name,
        "measured_boot_imports": "[]",
        "measured_boot_evaluate": "once",
        "severity_labels": '["info", "notice", "warning", "error", "critical", "alert", "emergency"]',
        "severity_policy": '[{"event_id": ".*", "severity_label" : "emergency"}]',
        "ignore_tomtou_errors": "False",
        **durable_off,
        "signed_attributes": "",
        "require_allow_list_signatures": "False",
        "mode": "pull",
        "challenge_lifetime": "1800",
        "verification_timeout": "0",
        "session_create_rate_limit_per_ip": "50",
        "session_create_rate_limit_window_ip": "60",
        "session_create_rate_limit_per_agent": "15",
        "session_create_rate_limit_window_agent": "60",
        "session_lifetime": "180",
        "extend_token_on_attestation": "True",
        "auto_recover_attestation_failures": "False",
        "shutdown_drain_timeout": "2",
    }
    revocations = {
        "enabled_revocation_notifications": _list(notifications),
        "zmq_ip": "127.0.0.1",
        "zmq_port": str(s.zmq_port),
        "webhook_url": s.webhook_url or "",
    }
    registrar = {
        "version": CONFIG_VERSION,
        "ip": "127.0.0.1",
        "port": str(s.registrar_port),
        "tls_port": str(s.registrar_tls_port),
        # `default` reuses the verifier's cv_ca: the verifier must have started once before.
        "tls_dir": "default",
        "server_key": "default",
        "server_key_password": "",
        "server_cert": "default",
        "cert_subject_alternative_names": "",
        "trusted_client_ca": "default",
        "authorization_provider": "simple",
        "database_url": "sqlite",
        "database_pool_sz_ovfl": "5,10",
        "max_workers": "1",
        "auto_migrate_db": "True",
        **durable_off,
        "signed_attributes": "ek_tpm,aik_tpm,ekcert",
        "tpm_identity": "default",
        "malformed_cert_action": "warn",
    }
    tenant = {
        "version": CONFIG_VERSION,
        "verifier_ip": "127.0.0.1",
        "verifier_port": str(s.verifier_port),
        "registrar_ip": "127.0.0.1",
        "registrar_port": str(s.registrar_tls_port),
        "tls_dir": "default",
        "enable_agent_mtls": "True",
        "client_key": "default",
        "client_key_password": "",
        "client_cert": "default",
        "trusted_server_ca": "default",
        "tpm_cert_store": str(s.tpm_cert_store),
        "max_payload_size": "1048576",
        "accept_tpm_hash_algs": _list(["sha512", "sha384", "sha256"]),
        "accept_tpm_encryption_algs": _list(["ecc", "rsa"]),
        "accept_tpm_signing_algs": _list(["ecschnorr", "rsassa", "ecdsa"]),
        "exponential_backoff": "True",
        "retry_interval": "1",
        "max_retries": "5",
        "request_timeout": "30",
        "require_ek_cert": _bool(s.require_ek_cert),
        "ek_check_script": "",
        "mb_refstate": "",
    }
    ca = {
        "version": CONFIG_VERSION,
        "password": "default",
        "cert_country": "US",
        "cert_ca_name": "edgeagent test Keylime CA",
        "cert_state": "MA",
        "cert_locality": "Lexington",
        "cert_organization": "edgeagent-tests",
        "cert_org_unit": "53",
        "cert_ca_lifetime": "30",
        "cert_lifetime": "30",
        "cert_bits": "2048",
        "cert_crl_dist": "http://127.0.0.1:1/crl",
    }
    logging_conf = {
        "logging": {"version": CONFIG_VERSION},
        "loggers": {"keys": "root,keylime"},
        "handlers": {"keys": "consoleHandler"},
        "formatters": {"keys": "formatter"},
        "formatter_formatter": {
            "format": "%(asctime)s.%(msecs)03d - %(name)s - %(levelname)s - %(message)s",
            "datefmt": "%H:%M:%S",
        },
        "logger_root": {"level": s.log_level, "handlers": "consoleHandler"},
        "handler_consoleHandler": {
            "class": "StreamHandler",
            "level": s.log_level,
            "formatter": "formatter",
            "args": "(sys.stdout,)",
        },
        "logger_keylime": {"level": s.log_level, "qualname": "keylime", "handlers": ""},
    }
    files = {
        "verifier": {"verifier": verifier, "revocations": revocations},
        "registrar": {"registrar": registrar},
        "tenant": {"tenant": tenant},
        "ca": {"ca": ca},
        "logging": logging_conf,
    }
    for component, overrides in s.extra.items():
        files[component][component].update(overrides)
    return files


def write(settings: KeylimeSettings, etc: Path) -> dict[str, Path]:
    """Writes one `<component>.conf` per component into ``etc``; returns the KEYLIME_*_CONFIG mapping."""
    etc.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for component, sections in render(settings).items():
        # Interpolation off: logging format strings contain '%(' which Keylime reads raw.
        parser = configparser.RawConfigParser()
        parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case (handler names)
        for section, values in sections.items():
            parser[section] = values
        path = etc / f"{component}.conf"
        with path.open("w") as fh:
            parser.write(fh)
        paths[component] = path
    return paths
