"""The measurement reference policy: which SHA-256 digests each measured component may have.

A verifier reads the agent's CEL log (after checking it replays to the quoted PCR) and checks every file
record of the log's last segment against this policy. The format is documented in policies/README.md::

    {"version": 1, "pcr": 23, "hash_alg": "sha256",
     "components": {"edgeagent/cli/main.py": {"component": "package", "sha256": ["<hex>", ...]}, ...}}

Several digests per component let one policy accept more than one release during a rollout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edgeagent.errors import ReferencePolicyError

VERSION = 1
HASH_ALG = "sha256"


@dataclasses.dataclass(frozen=True)
class Allowed:
    component: str
    sha256: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ReferencePolicy:
    pcr: int
    components: Mapping[str, Allowed]
    version: int = VERSION
    hash_alg: str = HASH_ALG

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "pcr": self.pcr,
            "hash_alg": self.hash_alg,
            "components": {
                name: {"component": a.component, "sha256": list(a.sha256)}
                for name, a in sorted(self.components.items())
            },
        }


@dataclasses.dataclass(frozen=True)
class Finding:
    """One way the measurements break the policy: ``unknown`` component, wrong ``digest``, ``missing``."""

    name: str
    kind: str
    detail: str


def from_measurements(pcr: int, measured: Iterable[tuple[str, str, str]]) -> ReferencePolicy:
    """A policy allowing exactly the given ``(component, name, sha256)`` measurements."""
    comps: dict[str, Allowed] = {}
    for component, name, digest in measured:
        prev = comps.get(name)
        if prev is None:
            comps[name] = Allowed(component, (digest,))
        elif digest not in prev.sha256:
            comps[name] = Allowed(component, (*prev.sha256, digest))
    return ReferencePolicy(pcr, comps)


def _is_sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def from_dict(data: Any, *, where: str = "policy") -> ReferencePolicy:
    """Validates a decoded policy. Raises ReferencePolicyError naming the first problem."""
    if not isinstance(data, dict):
        raise ReferencePolicyError(f"{where}: not a JSON object")
    if data.get("version") != VERSION:
        raise ReferencePolicyError(f"{where}: version {data.get('version')!r} is not {VERSION}")
    if data.get("hash_alg", HASH_ALG) != HASH_ALG:
        raise ReferencePolicyError(f"{where}: hash_alg must be {HASH_ALG}")
    pcr = data.get("pcr")
    if type(pcr) is not int or not 0 <= pcr <= 23:
        raise ReferencePolicyError(f"{where}: pcr {pcr!r} is not a PCR index")
    extra = set(data) - {"version", "pcr", "hash_alg", "components"}
    if extra:
        raise ReferencePolicyError(f"{where}: unknown key {sorted(extra)[0]!r}")
    comps = data.get("components")
    if not isinstance(comps, dict):
        raise ReferencePolicyError(f"{where}: components must be an object")
    out: dict[str, Allowed] = {}
    for name, entry in comps.items():
        if not isinstance(entry, dict) or set(entry) != {"component", "sha256"}:
            raise ReferencePolicyError(f"{where}: components[{name!r}] must be {{component, sha256}}")
        digests = entry["sha256"]
        if not isinstance(entry["component"], str) or not isinstance(digests, list) or not digests:
            raise ReferencePolicyError(f"{where}: components[{name!r}] needs a component and a sha256 list")
        if not all(_is_sha256(d) for d in digests):
            raise ReferencePolicyError(f"{where}: components[{name!r}]: a sha256 is not 64 lowercase hex")
        out[name] = Allowed(entry["component"], tuple(digests))
    return ReferencePolicy(pcr, out)


def load(path: Path) -> ReferencePolicy:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ReferencePolicyError(f"cannot read policy {path}: {e.strerror}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ReferencePolicyError(f"policy {path} is not valid JSON: {e}") from None
    return from_dict(data, where=f"policy {path}")


def write(path: Path, policy: ReferencePolicy) -> None:
    """Writes atomically (temp file in the same directory, fsync, rename, fsync the directory), so a
    verifier reading the path sees the old policy or the new one, never half of one."""
    data = (json.dumps(policy.to_dict(), indent=2) + "\n").encode()
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise ReferencePolicyError(f"cannot write policy {path}: {e.strerror}") from None


def check(policy: ReferencePolicy, measured: Mapping[str, tuple[str, str]], *, pcr: int) -> list[Finding]:
    """Checks ``{name: (component, sha256)}`` (the latest measurement of each name) against the policy.

    Every measured name must be in the policy with an allowed digest, and every policy component must have
    been measured: a missing policy file or driver could widen what the agent permits.
    """
    findings: list[Finding] = []
    if pcr != policy.pcr:
        detail = f"measurements are in PCR {pcr}, the policy expects PCR {policy.pcr}"
        findings.append(Finding("", "pcr", detail))
    for name, (_component, digest) in sorted(measured.items()):
        allowed = policy.components.get(name)
        if allowed is None:
            findings.append(Finding(name, "unknown", f"{name} is not in the policy"))
        elif digest not in allowed.sha256:
            findings.append(Finding(name, "digest", f"{name} has sha256 {digest}, not one the policy allows"))
    for name in sorted(set(policy.components) - set(measured)):
        findings.append(Finding(name, "missing", f"{name} is in the policy but was not measured"))
    return findings
