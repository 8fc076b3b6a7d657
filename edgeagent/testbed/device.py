"""A simulated device's files, laid out as `make install` lays them out, and its agent configuration
pointed at the loopback cluster side: for `make run`, the benchmarks and the tests.

Modules and policies go into directories the agent measures (so they load), the node-labeler controller is
staged with manifests written for the device's Node, and the configuration is one TOML file.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeagent.errors import EdgeAgentError

SOURCE_TREE = Path(__file__).resolve().parents[2]
LABELER = SOURCE_TREE / "controllers" / "build" / "node-labeler.wasm"


def stage_drivers(target: Path, names: Sequence[str] | None = None) -> Path:
    """Built driver modules (all, or ``names``) into ``target`` (an installed system's modules dir)."""
    target.mkdir(parents=True, exist_ok=True)
    built = {m.stem: m for m in (SOURCE_TREE / "drivers" / "build").glob("*.wasm")}
    for name in names if names is not None else sorted(built):
        if name not in built:
            raise EdgeAgentError(f"driver module {name}.wasm is not built: run `make -C drivers`")
        shutil.copyfile(built[name], target / f"{name}.wasm")
    return target


def stage_policies(target: Path) -> Path:
    """The bundled policies (drivers/*.toml and the rest) into ``target``."""
    shutil.copytree(SOURCE_TREE / "policies", target, dirs_exist_ok=True)
    return target


def labeler_manifest(
    name: str,
    node: str,
    *,
    namespace: str,
    selector: str,
    prefix: str = "device.edgeagent.io/",
    idle_timeout: float = 1.0,
) -> str:
    """A node-labeler controller mirroring ConfigMaps (``selector`` in ``namespace``) into ``node``'s labels;
    it may patch that Node and nothing else."""
    return f'''name = "{name}"
module = "node-labeler.wasm"
memory_limit = "1MiB"
idle_timeout = {idle_timeout}
config = {{ node = "{node}", prefix = "{prefix}" }}

[[watches]]
version = "v1"
kind = "ConfigMap"
plural = "configmaps"
namespace = "{namespace}"
label_selector = "{selector}"

[[grants]]
verbs = ["patch"]
resources = ["nodes"]
resource_names = ["{node}"]
'''


def stage_labelers(target: Path, manifests: Mapping[str, str]) -> Path:
    """The node-labeler module once and one manifest per ``name -> text`` into ``target``."""
    if not LABELER.is_file():
        raise EdgeAgentError(f"{LABELER} missing: run `make -C controllers`")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(LABELER, target / LABELER.name)
    for name, text in manifests.items():
        (target / f"{name}.toml").write_text(text)
    return target


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def agent_config(
    path: Path,
    sections: Mapping[str, Mapping[str, Any]],
    instances: Sequence[Mapping[str, Any]] = (),
    *,
    comment: str = "",
) -> Path:
    """Writes an agent configuration: ``sections`` maps a section name ("" for the top level) to its keys;
    ``instances`` are the [[drivers.instances]] tables."""
    lines = [f"# {comment}"] if comment else []
    lines += [f"{k} = {_toml_value(v)}" for k, v in sections.get("", {}).items()]
    for section, keys in sections.items():
        if section:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
    for inst in instances:
        lines.append("[[drivers.instances]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in inst.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def enroll_section(
    root: Path, keylime: Any, *, port: int, node: str, agent_uuid: str, **overrides: Any
) -> dict[str, Any]:
    """[enroll] for a device under ``root`` enrolling with the testbed's Keylime."""
    return {
        "registrar_url": keylime.registrar_url,
        "agent_port": port,
        "node_name": node,
        "uuid": agent_uuid,
        "keylime_ca": str(keylime.ca_cert),
        "payload_dir": str(root / "run"),
        "kubeconfig": str(root / "kubelet" / "kubeconfig"),
        "certificate_seconds": 3600,
        **overrides,
    }
