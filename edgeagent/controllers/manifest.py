"""A controller's manifest: what it is, what it watches, what it may do, how much it may use.

A manifest is a TOML file (``*.toml``) or, for generated manifests, a JSON file (``*.controller.json``) with
the same keys::

    name = "ring-0"                   # DNS label: status, snapshots and logs are keyed by it
    module = "ring.wasm"              # relative to the manifest's directory
    memory_limit = "1MiB"             # linear memory cap (bytes, or a KiB/MiB/GiB string); default 4 MiB
    idle_timeout = 30.0               # seconds without events before the controller is swapped to disk
    compute_limit_ms = 100            # longest stretch of guest code before it is stopped as looping
    log_lines_per_second = 10         # guest log lines let through per second (bursts of as many); the rest
                                      # are counted and reported as "N log lines suppressed"
    service_account = "ring/ring-0"   # optional: API requests impersonate this ServiceAccount (the host's
                                      # own identity then needs RBAC `impersonate` on serviceaccounts)
    config = { next = "ring-1" }      # handed to the guest's `init` as JSON

    [[watches]]                       # one shared watch per kind in the host, filtered per controller
    group = "edgeagent.io"            # "" for the core group
    version = "v1alpha1"
    kind = "Ring"
    plural = "rings"
    namespace = "ring-0"              # omitted or "": every namespace
    label_selector = "app=ring"       # Kubernetes label selector syntax

    [[grants]]                        # the Kubernetes RBAC PolicyRule's fields, plus where they apply
                                      # (api_groups/apiGroups, resource_names/resourceNames: either spelling)
    verbs = ["get", "patch"]
    api_groups = ["edgeagent.io"]
    resources = ["rings"]             # "rings/status" for a subresource, "*" for any
    resource_names = []               # empty: any name
    namespaces = ["ring-1"]           # ["*"]: any one namespace; omitted: cluster-scoped requests only

Grants are least privilege: nothing is allowed unless a grant names it. The host checks every request against
them before it leaves; with ``service_account`` the API server checks the same request again under that
identity.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeagent.controllers.selector import LabelSelector
from edgeagent.errors import ManifestError

DEFAULT_MEMORY_LIMIT = 4 << 20
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_COMPUTE_LIMIT_MS = 100.0
DEFAULT_LOG_RATE = 10.0  # guest log lines per second (a burst of as many passes); more are counted, reported
# What a controller may ask of the API server. Watching is the host's job (shared watches), not the guest's.
VERBS = frozenset({"get", "list", "create", "update", "patch", "delete", "deletecollection"})
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SIZE = re.compile(r"^\s*(\d+)\s*(|B|KiB|MiB|GiB|K|M|G)\s*$")
# The keys that Kubernetes spells in camelCase (RBAC PolicyRule, LabelSelector): either spelling is accepted.
_CAMEL = {
    "api_groups": "apiGroups",
    "resource_names": "resourceNames",
    "label_selector": "labelSelector",
}
_UNITS = {
    "": 1,
    "B": 1,
    "K": 1 << 10,
    "KiB": 1 << 10,
    "M": 1 << 20,
    "MiB": 1 << 20,
    "G": 1 << 30,
    "GiB": 1 << 30,
}


@dataclasses.dataclass(frozen=True)
class Watch:
    """One kind a controller wants events for, narrowed by namespace and labels."""

    group: str
    version: str
    kind: str
    plural: str
    namespace: str = ""
    label_selector: LabelSelector = dataclasses.field(default_factory=LabelSelector)

    @property
    def kind_key(self) -> tuple[str, str, str]:
        """What the host shares one watch per: (group, version, plural)."""
        return (self.group, self.version, self.plural)

    def matches(self, namespace: str, labels: Mapping[str, str]) -> bool:
        return (not self.namespace or self.namespace == namespace) and self.label_selector.matches(labels)


@dataclasses.dataclass(frozen=True)
class ApiRequestScope:
    """The fields of a request that grants are checked against."""

    verb: str
    group: str
    resource: str  # "configmaps", or "nodes/status" with a subresource
    namespace: str  # "" for cluster-scoped requests
    name: str  # "" for collection requests


@dataclasses.dataclass(frozen=True)
class Grant:
    """An RBAC PolicyRule bound to the namespaces it applies in."""

    verbs: frozenset[str]
    api_groups: frozenset[str]
    resources: frozenset[str]
    resource_names: frozenset[str] = frozenset()
    namespaces: frozenset[str] | None = None  # None: cluster-scoped requests only

    def allows(self, req: ApiRequestScope) -> bool:
        if not ("*" in self.verbs or req.verb in self.verbs):
            return False
        if not ("*" in self.api_groups or req.group in self.api_groups):
            return False
        if not ("*" in self.resources or req.resource in self.resources):
            return False
        if self.resource_names and req.name not in self.resource_names:
            return False
        if self.namespaces is None:
            return req.namespace == ""
        # Namespaced grants never cover "" (cluster-scoped objects, or a list across every namespace).
        return req.namespace != "" and ("*" in self.namespaces or req.namespace in self.namespaces)


@dataclasses.dataclass(frozen=True)
class Manifest:
    name: str
    module: Path
    watches: tuple[Watch, ...]
    grants: tuple[Grant, ...] = ()
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    compute_limit_ms: float = DEFAULT_COMPUTE_LIMIT_MS
    service_account: tuple[str, str] | None = None  # (namespace, name)
    log_lines_per_second: float = DEFAULT_LOG_RATE
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: Path | None = None

    def allows(self, req: ApiRequestScope) -> bool:
        return any(g.allows(req) for g in self.grants)

    @property
    def impersonate_user(self) -> str | None:
        if self.service_account is None:
            return None
        ns, name = self.service_account
        return f"system:serviceaccount:{ns}:{name}"


# ---------------------------------------------------------------- parsing
class _Reader:
    """Typed access to one table of the manifest; every error names the file and the key path."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where}: expected a table, got {type(data).__name__}")
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def _get(self, key: str, required: bool) -> Any:
        self.used.add(key)
        alias = _CAMEL.get(key)
        if alias is not None and alias in self.data:  # RBAC's own spelling (apiGroups) is accepted too
            self.used.add(alias)
            if key in self.data:
                raise ManifestError(f"{self.where}: both {key!r} and {alias!r} given; use one")
            return self.data[alias]
        if key not in self.data:
            if required:
                raise ManifestError(f"{self.where}: missing key {key!r}")
            return None
        return self.data[key]

    def string(self, key: str, *, required: bool = False, default: str = "") -> str:
        v = self._get(key, required)
        if v is None:
            return default
        if not isinstance(v, str):
            raise ManifestError(f"{self.where}: {key} must be a string, got {v!r}")
        return v

    def strs(self, key: str, *, required: bool = False) -> list[str] | None:
        v = self._get(key, required)
        if v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ManifestError(f"{self.where}: {key} must be a list of strings, got {v!r}")
        return list(v)

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        v = self._get(key, False)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ManifestError(f"{self.where}: {key} must be a number, got {v!r}")
        if v <= minimum:
            raise ManifestError(f"{self.where}: {key} must be greater than {minimum:g}, got {v!r}")
        return float(v)

    def size(self, key: str, default: int) -> int:
        v = self._get(key, False)
        if v is None:
            return default
        if isinstance(v, int) and not isinstance(v, bool):
            n = v
        elif isinstance(v, str) and (m := _SIZE.match(v)):
            n = int(m.group(1)) * _UNITS[m.group(2)]
        else:
            raise ManifestError(f"{self.where}: {key} must be bytes or a size like '2MiB', got {v!r}")
        if n < 65536:
            raise ManifestError(f"{self.where}: {key} must be at least 64KiB (one Wasm page), got {v!r}")
        return n

    def tables(self, key: str) -> list[_Reader]:
        v = self._get(key, False)
        if v is None:
            return []
        if not isinstance(v, list):
            raise ManifestError(f"{self.where}: {key} must be a list of tables")
        return [_Reader(item, f"{self.where}: {key}[{i}]") for i, item in enumerate(v)]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ManifestError(f"{self.where}: unknown key {unknown[0]!r}")


def _watch(r: _Reader) -> Watch:
    version = r.string("version", required=True)
    kind = r.string("kind", required=True)
    plural = r.string("plural", required=True)
    for key, value in (("version", version), ("kind", kind), ("plural", plural)):
        if not value:
            raise ManifestError(f"{r.where}: {key} must not be empty")
    selector_text = r.string("label_selector")
    try:
        selector = LabelSelector.parse(selector_text)
    except ValueError as e:
        raise ManifestError(f"{r.where}: label_selector: {e}") from None
    w = Watch(
        group=r.string("group"),
        version=version,
        kind=kind,
        plural=plural,
        namespace=r.string("namespace"),
        label_selector=selector,
    )
    r.done()
    return w


def _grant(r: _Reader) -> Grant:
    verbs = r.strs("verbs", required=True) or []
    bad = sorted(set(verbs) - VERBS - {"*"})
    if bad:
        raise ManifestError(f"{r.where}: unknown verb {bad[0]!r} (one of {', '.join(sorted(VERBS))})")
    resources = r.strs("resources", required=True) or []
    api_groups = r.strs("api_groups")
    namespaces = r.strs("namespaces")
    g = Grant(
        verbs=frozenset(verbs),
        api_groups=frozenset([""] if api_groups is None else api_groups),
        resources=frozenset(resources),
        resource_names=frozenset(r.strs("resource_names") or []),
        namespaces=None if namespaces is None else frozenset(namespaces),
    )
    if not g.verbs or not g.resources:
        raise ManifestError(f"{r.where}: verbs and resources must not be empty")
    r.done()
    return g


def parse_manifest(data: Any, *, source: Path | None = None, base: Path | None = None) -> Manifest:
    """Builds a Manifest from decoded TOML/JSON; ManifestError names the file and key of the first problem."""
    where = f"manifest {source}" if source else "manifest"
    r = _Reader(data, where)
    name = r.string("name", required=True)
    if not _NAME.match(name):
        raise ManifestError(f"{where}: name {name!r} is not a DNS label (lowercase letters, digits, '-')")
    module_text = r.string("module", required=True)
    if not module_text:
        raise ManifestError(f"{where}: module must not be empty")
    module = Path(module_text)
    if not module.is_absolute():
        module = (base or Path(".")) / module
    watches = tuple(_watch(w) for w in r.tables("watches"))
    if not watches:
        raise ManifestError(f"{where}: a controller needs at least one entry in [[watches]]")
    grants = tuple(_grant(g) for g in r.tables("grants"))
    sa_text = r.string("service_account")
    service_account: tuple[str, str] | None = None
    if sa_text:
        ns, sep, sa = sa_text.partition("/")
        if not sep or not _NAME.match(ns) or not sa:
            raise ManifestError(f"{where}: service_account must be 'namespace/name', got {sa_text!r}")
        service_account = (ns, sa)
    config = r._get("config", False)
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise ManifestError(f"{where}: config must be a table")
    m = Manifest(
        name=name,
        module=module,
        watches=watches,
        grants=grants,
        memory_limit=r.size("memory_limit", DEFAULT_MEMORY_LIMIT),
        idle_timeout=r.number("idle_timeout", DEFAULT_IDLE_TIMEOUT),
        compute_limit_ms=r.number("compute_limit_ms", DEFAULT_COMPUTE_LIMIT_MS),
        service_account=service_account,
        log_lines_per_second=r.number("log_lines_per_second", DEFAULT_LOG_RATE),
        config=dict(config),
        source=source,
    )
    r.done()
    return m


def load_manifest(path: Path) -> Manifest:
    """Reads a ``.toml`` or ``.json`` manifest; ManifestError for unreadable, undecodable or invalid files."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ManifestError(f"manifest {path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ManifestError(f"manifest {path}: not valid {kind}: {e}") from None
    return parse_manifest(data, source=path, base=path.parent)


def manifest_paths(directory: Path) -> list[Path]:
    """The manifests in ``directory`` and its immediate subdirectories (one controller per folder is common).

    TOML manifests are ``*.toml``; JSON ones ``*.controller.json``, so a CRD or data file next to a controller
    is not mistaken for a manifest.
    """
    if not directory.is_dir():
        raise ManifestError(f"controller directory {directory} does not exist")
    found: list[Path] = []
    for pattern in ("*.toml", "*.controller.json", "*/*.toml", "*/*.controller.json"):
        # bundle.toml: an installed bundle's metadata (edgeagent.wasm.bundle), beside its manifest
        found.extend(p for p in directory.glob(pattern) if p.is_file() and p.name != "bundle.toml")
    return sorted(set(found))
