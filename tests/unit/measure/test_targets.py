"""What gets measured, from the real installed package and a configured device layout."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgeagent
from edgeagent.config import AgentConfig
from edgeagent.errors import MeasureError
from edgeagent.measure import targets


def test_real_package_files_sorted_without_caches() -> None:
    cfg = AgentConfig(policies_dir=Path("/nonexistent/p"))
    cfg.drivers.modules_dir = Path("/nonexistent/d")
    cfg.controllers.dir = Path("/nonexistent/c")
    found = targets.collect(cfg)
    assert targets.package_dir() == Path(edgeagent.__file__).resolve().parent
    names = [t.name for t in found]
    assert names == sorted(names) and all(t.component == "package" for t in found)
    assert "edgeagent/__init__.py" in names and "edgeagent/measure/targets.py" in names
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]


def test_layout_names_and_missing_inputs(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "b.wasm").write_bytes(b"b")
    (tmp_path / "d" / "a.wasm").write_bytes(b"a")
    outside = tmp_path / "elsewhere.wasm"
    outside.write_bytes(b"o")
    cfg = AgentConfig(policies_dir=tmp_path / "no-policies")
    cfg.drivers.modules_dir = tmp_path / "d"
    cfg.drivers.modules = [Path("a.wasm"), outside]
    cfg.controllers.dir = tmp_path / "no-controllers"
    found = [(t.component, t.name) for t in targets.collect(cfg) if t.component != "package"]
    assert found == [("driver", str(outside)), ("driver", "drivers/a.wasm"), ("driver", "drivers/sub/b.wasm")]
    cfg.drivers.modules = [Path("missing.wasm")]
    with pytest.raises(MeasureError, match=r"driver module .*missing.wasm does not exist"):
        targets.collect(cfg)
    cfg.drivers.modules = []
    cfg.measure.extra_paths = [tmp_path / "gone"]
    with pytest.raises(MeasureError, match=r"extra measured path .*gone does not exist"):
        targets.collect(cfg)


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(MeasureError, match=r"cannot read .*nothing to measure it"):
        targets.sha256_file(tmp_path / "nothing")
