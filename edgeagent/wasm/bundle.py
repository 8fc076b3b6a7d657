"""A guest bundle: one driver or controller as a directory (or a .tar.gz of one) that can be signed, shipped
and installed without the package's help.

Layout (paths inside are relative, as ``bundle.toml`` names them)::

    bundle.toml        the metadata below
    sht31.wasm         the module
    policy.toml        a driver's capability policy, or a controller's manifest (``manifest = ...``)
    model.toml         optional: a driver's simulated part (edgeagent.hw.sim.declarative), or name an entry
                       point of the ``edgeagent.sim_models`` group: ``model = "entry-point:sht31"``
    bundle.sig         the signature (``edgeagent bundle sign``)

``bundle.toml``, every key::

    [bundle]
    name = "sht31"                 # DNS label: the installed directory, `run-driver sht31`, the controller
    kind = "driver"                # "driver" or "controller"
    version = "0.1.0"              # the author's; shown, not interpreted
    abi = 2                        # the driver ABI (drivers/include/edgeagent_i2c.h EA_ABI_VERSION) or the
                                   # controller ABI (1) the module was built for
    module = "sht31.wasm"
    policy = "policy.toml"         # drivers
    manifest = "mirror.toml"       # controllers (its `module` must name the same file, relative to it)
    model = "model.toml"           # drivers, optional
    description = "Sensirion SHT31 humidity and temperature"

    [driver]                       # drivers only
    bus = "i2c"
    default_address = 0x44
    channels = ["temperature:C", "humidity:%RH"]

The signature (``bundle.sig``, JSON) lists the SHA-256 of every other file of the bundle and signs that list
with Ed25519: ``{"format": "edgeagent-bundle-signature/1", "key": KEY_ID, "files": {path: sha256},
"signature": base64}``. A bundle verifies when its key is trusted (a PEM public key under
``<policies>/trusted-keys/``), the signature checks out, and its files are exactly the listed ones with the
listed digests: nothing added, removed or changed.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from edgeagent.errors import BundleError

META = "bundle.toml"
SIGNATURE = "bundle.sig"
SIG_FORMAT = "edgeagent-bundle-signature/1"
KINDS = ("driver", "controller")
KEYS_DIR = "trusted-keys"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_]{0,61}[a-z0-9])?$")
ENTRY_POINT_PREFIX = "entry-point:"


@dataclasses.dataclass(frozen=True)
class BundleMeta:
    name: str
    kind: str
    version: str
    abi: int
    module: str
    policy: str = ""
    manifest: str = ""
    model: str = ""
    description: str = ""
    bus: str = ""
    default_address: int | None = None
    channels: tuple[str, ...] = ()

    def files(self) -> list[str]:
        """The files the metadata names (model only when it is a file, not an entry point)."""
        model = "" if self.model.startswith(ENTRY_POINT_PREFIX) else self.model
        return [META, *(p for p in (self.module, self.policy, self.manifest, model) if p)]


def _rel(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BundleError(f"{where}: {key} must be a non-empty path")
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts:
        raise BundleError(f"{where}: {key} {value!r} must be a relative path inside the bundle")
    return p.as_posix()


def parse_meta(data: Any, *, where: str = META) -> BundleMeta:
    """BundleMeta from decoded TOML; BundleError names the key of the first problem."""
    if not isinstance(data, dict) or not isinstance(data.get("bundle"), dict):
        raise BundleError(f"{where}: missing [bundle] table")
    unknown_top = sorted(set(data) - {"bundle", "driver"})
    if unknown_top:
        raise BundleError(f"{where}: unknown table {unknown_top[0]!r}")
    b = dict(data["bundle"])
    allowed = {"name", "kind", "version", "abi", "module", "policy", "manifest", "model", "description"}
    unknown = sorted(set(b) - allowed)
    if unknown:
        raise BundleError(f"{where}: unknown key bundle.{unknown[0]}")
    name = b.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise BundleError(
            f"{where}: bundle.name must be a DNS label (lowercase letters, digits, '-'), got {name!r}"
        )
    kind = b.get("kind")
    if kind not in KINDS:
        raise BundleError(f"{where}: bundle.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    abi = b.get("abi")
    if not isinstance(abi, int) or isinstance(abi, bool):
        raise BundleError(
            f"{where}: bundle.abi must be an integer (the ABI version the module was built for)"
        )
    version = b.get("version", "")
    if not isinstance(version, str):
        raise BundleError(f"{where}: bundle.version must be a string")
    module = _rel(where, "bundle.module", b.get("module"))
    policy = manifest = ""
    if kind == "driver":
        policy = _rel(where, "bundle.policy", b.get("policy"))
        if "manifest" in b:
            raise BundleError(f"{where}: a driver bundle has a policy, not a manifest")
    else:
        manifest = _rel(where, "bundle.manifest", b.get("manifest"))
        for key in ("policy", "model"):
            if key in b:
                raise BundleError(f"{where}: a controller bundle has no {key}")
    model = b.get("model", "")
    if model and not str(model).startswith(ENTRY_POINT_PREFIX):
        model = _rel(where, "bundle.model", model)
    d = data.get("driver", {})
    if kind == "controller" and d:
        raise BundleError(f"{where}: a controller bundle has no [driver] table")
    if not isinstance(d, dict):
        raise BundleError(f"{where}: [driver] must be a table")
    unknown = sorted(set(d) - {"bus", "default_address", "channels"})
    if unknown:
        raise BundleError(f"{where}: unknown key driver.{unknown[0]}")
    bus = d.get("bus", "i2c" if kind == "driver" else "")
    if kind == "driver" and bus != "i2c":
        raise BundleError(f"{where}: driver.bus must be 'i2c' (USB driver bundles are not supported yet)")
    addr = d.get("default_address")
    if addr is not None and (not isinstance(addr, int) or isinstance(addr, bool) or not 0 <= addr <= 0x3FF):
        raise BundleError(f"{where}: driver.default_address must be an I2C address, got {addr!r}")
    channels = d.get("channels", [])
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise BundleError(f"{where}: driver.channels must be a list of 'name:unit' strings")
    desc = b.get("description", "")
    return BundleMeta(
        name=name,
        kind=kind,
        version=version,
        abi=abi,
        module=module,
        policy=policy,
        manifest=manifest,
        model=str(model),
        description=desc if isinstance(desc, str) else "",
        bus=bus,
        default_address=addr,
        channels=tuple(channels),
    )


def load_meta(directory: Path) -> BundleMeta:
    path = directory / META
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{directory} is not a bundle (no {META})") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot read: {e.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BundleError(f"{path}: not valid TOML: {e}") from None
    meta = parse_meta(data, where=str(path))
    for rel in meta.files():
        if not (directory / rel).is_file():
            raise BundleError(f"bundle {meta.name}: {rel} (named in {META}) is missing")
    return meta


def is_bundle(path: Path) -> bool:
    return (path.is_dir() and (path / META).is_file()) or path.name.endswith((".tar.gz", ".tgz"))


@contextlib.contextmanager
def opened(path: Path) -> Iterator[Path]:
    """The bundle's directory: ``path`` itself, or a .tar.gz unpacked into a temporary one (removed after)."""
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise BundleError(f"bundle {path} does not exist")
    import tarfile  # only to unpack a bundle archive (the agent reads installed bundles)

    with tempfile.TemporaryDirectory(prefix="edgeagent-bundle-") as tmp:
        try:
            with tarfile.open(path, "r:gz") as tar:
                members = tar.getmembers()
                for m in members:  # only plain files and folders, inside the bundle
                    parts = PurePosixPath(m.name).parts
                    if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                        raise BundleError(f"bundle {path}: {m.name!r} is not a plain file inside the bundle")
                tar.extractall(tmp, members=members)  # every member checked above
        except (tarfile.TarError, OSError, EOFError) as e:
            raise BundleError(f"bundle {path}: not a readable .tar.gz: {e}") from None
        root = Path(tmp)
        entries = list(root.iterdir())
        if not (root / META).is_file() and len(entries) == 1 and entries[0].is_dir():
            root = entries[0]  # packed as a top-level folder
        yield root


def bundle_files(directory: Path) -> dict[str, str]:
    """Every regular file below ``directory`` except the signature: relative path -> sha256."""
    out: dict[str, str] = {}
    for p in sorted(directory.rglob("*")):
        if p.is_symlink():
            raise BundleError(f"bundle {directory}: {p.relative_to(directory)} is a symbolic link")
        if p.is_file():
            rel = p.relative_to(directory).as_posix()
            if rel != SIGNATURE:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------------- keys and signatures
def _crypto() -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def key_id(public_key: Any) -> str:
    """The first 16 hex digits of the SHA-256 of the raw 32-byte Ed25519 public key."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key(private_path: Path) -> tuple[Path, str]:
    """Writes a new Ed25519 private key (PEM, 0600) and its public key beside it (``.pub``)."""
    serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pub_path = private_path.with_name(private_path.name + ".pub")
    if private_path.exists():
        raise BundleError(f"{private_path} already exists; not overwriting a key")
    try:
        private_path.parent.mkdir(parents=True, exist_ok=True)
        with open(private_path, "xb", opener=lambda p, f: os.open(p, f, 0o600)) as f:
            f.write(pem)
        pub_path.write_bytes(pub)
    except OSError as e:
        raise BundleError(f"cannot write {private_path}: {e.strerror}") from None
    return pub_path, key_id(key.public_key())


def _load_private(path: Path) -> Any:
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise BundleError(f"signing key {path}: cannot read: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise BundleError(f"signing key {path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BundleError(f"signing key {path}: not an Ed25519 key")
    return key


def _signed_bytes(key: str, files: dict[str, str]) -> bytes:
    return json.dumps(
        {"format": SIG_FORMAT, "key": key, "files": files}, sort_keys=True, separators=(",", ":")
    ).encode()


def sign(directory: Path, private_key: Path) -> str:
    """Signs the bundle in ``directory`` (writes ``bundle.sig``); returns the key id."""
    load_meta(directory)
    key = _load_private(private_key)
    kid = key_id(key.public_key())
    files = bundle_files(directory)
    sig = key.sign(_signed_bytes(kid, files))
    doc = {"format": SIG_FORMAT, "key": kid, "files": files, "signature": base64.b64encode(sig).decode()}
    try:
        (directory / SIGNATURE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise BundleError(f"cannot write {directory / SIGNATURE}: {e.strerror}") from None
    return kid


def trusted_keys(keys_dir: Path) -> dict[str, Any]:
    """Key id -> Ed25519 public key, from every PEM file in ``keys_dir`` (none when it does not exist)."""
    serialization, ed25519 = _crypto()
    out: dict[str, Any] = {}
    if not keys_dir.is_dir():
        return out
    for p in sorted(keys_dir.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.suffix.lower() in (".md", ".txt"):
            continue
        try:
            key = serialization.load_pem_public_key(p.read_bytes())
        except (OSError, ValueError) as e:
            raise BundleError(f"trusted key {p}: not a PEM public key ({e})") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise BundleError(f"trusted key {p}: not an Ed25519 public key")
        out[key_id(key)] = key
    return out


def verify(directory: Path, keys_dir: Path) -> str:
    """Checks the signature of the bundle in ``directory`` against the keys in ``keys_dir``; returns the
    signer's key id. BundleError (one line) for an unsigned, tampered or unknown-key bundle."""
    from cryptography.exceptions import InvalidSignature

    meta = load_meta(directory)
    sig_path = directory / SIGNATURE
    if not sig_path.is_file():
        raise BundleError(
            f"bundle {meta.name} is not signed (no {SIGNATURE}); sign it with `edgeagent bundle sign`, "
            "or install with --allow-unsigned"
        )
    try:
        doc = json.loads(sig_path.read_text())
        kid, files, signature = doc["key"], doc["files"], base64.b64decode(doc["signature"], validate=True)
        if doc.get("format") != SIG_FORMAT or not isinstance(files, dict) or not isinstance(kid, str):
            raise ValueError("unknown format")
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise BundleError(f"bundle {meta.name}: {SIGNATURE} is malformed ({e})") from None
    keys = trusted_keys(keys_dir)
    key = keys.get(kid)
    if key is None:
        raise BundleError(
            f"bundle {meta.name}: signed by key {kid}, which is not trusted (no such key in {keys_dir})"
        )
    try:
        key.verify(signature, _signed_bytes(kid, files))
    except InvalidSignature:
        raise BundleError(
            f"bundle {meta.name}: the signature does not verify (bundle.sig altered?)"
        ) from None
    actual = bundle_files(directory)
    for rel in sorted(set(files) | set(actual)):
        if rel not in actual:
            raise BundleError(f"bundle {meta.name}: {rel} is signed but missing")
        if rel not in files:
            raise BundleError(f"bundle {meta.name}: {rel} was added after signing")
        if files[rel] != actual[rel]:
            raise BundleError(f"bundle {meta.name}: {rel} changed after signing (tampered?)")
    return kid


def pack(source: Path, out: Path, *, private_key: Path | None = None) -> BundleMeta:
    """Copies the files ``source/bundle.toml`` names into ``out`` (a directory, or a .tar.gz when ``out``
    ends so), signing them with ``private_key`` if given."""
    meta = load_meta(source)
    with tempfile.TemporaryDirectory(prefix="edgeagent-pack-") as tmp:
        stage = Path(tmp) / meta.name
        for rel in meta.files():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, stage / rel)
        if private_key is not None:
            sign(stage, private_key)
        try:
            if out.name.endswith((".tar.gz", ".tgz")):
                out.parent.mkdir(parents=True, exist_ok=True)
                import tarfile

                with tarfile.open(out, "w:gz") as tar:
                    tar.add(stage, arcname=meta.name)
            else:
                if out.exists():
                    shutil.rmtree(out)
                shutil.copytree(stage, out)
        except OSError as e:
            raise BundleError(f"cannot write {out}: {e.strerror}") from None
    return meta
