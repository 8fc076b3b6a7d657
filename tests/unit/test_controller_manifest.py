"""Controller manifests and label selectors: parsing, validation messages, grant checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeagent.controllers.manifest import (
    DEFAULT_MEMORY_LIMIT,
    ApiRequestScope,
    load_manifest,
    manifest_paths,
    parse_manifest,
)
from edgeagent.controllers.selector import LabelSelector
from edgeagent.errors import ManifestError

GOOD = """
name = "ring-0"
module = "ring.wasm"
memory_limit = "2MiB"
idle_timeout = 1.5
service_account = "ring/ring-0"
config = { next = "ring-1" }

[[watches]]
group = "edgeagent.io"
version = "v1alpha1"
kind = "Ring"
plural = "rings"
namespace = "ring-0"
label_selector = "app=ring, tier in (a,b)"

[[grants]]
verbs = ["get", "patch"]
api_groups = ["edgeagent.io"]
resources = ["rings", "rings/status"]
resource_names = ["ring"]
namespaces = ["ring-1"]

[[grants]]
verbs = ["patch"]
resources = ["nodes"]
"""


def base(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": "c1",
        "module": "c.wasm",
        "watches": [{"version": "v1", "kind": "ConfigMap", "plural": "configmaps"}],
    }
    d.update(over)
    return d


def test_full_manifest(tmp_path: Path) -> None:
    p = tmp_path / "ring.toml"
    p.write_text(GOOD)
    m = load_manifest(p)
    assert m.name == "ring-0"
    assert m.module == tmp_path / "ring.wasm"
    assert m.memory_limit == 2 << 20
    assert m.idle_timeout == 1.5
    assert m.impersonate_user == "system:serviceaccount:ring:ring-0"
    assert m.config == {"next": "ring-1"}
    (w,) = m.watches
    assert w.kind_key == ("edgeagent.io", "v1alpha1", "rings")
    assert w.matches("ring-0", {"app": "ring", "tier": "a"})
    assert not w.matches("ring-0", {"app": "ring", "tier": "c"})
    assert not w.matches("ring-9", {"app": "ring", "tier": "a"})


def test_defaults() -> None:
    m = parse_manifest(base())
    assert m.memory_limit == DEFAULT_MEMORY_LIMIT
    assert m.grants == ()
    assert m.service_account is None and m.impersonate_user is None
    assert m.watches[0].group == "" and m.watches[0].namespace == ""


def scope(verb: str, group: str, resource: str, namespace: str = "", name: str = "") -> ApiRequestScope:
    return ApiRequestScope(verb, group, resource, namespace, name)


def test_grants_are_least_privilege(tmp_path: Path) -> None:
    p = tmp_path / "ring.toml"
    p.write_text(GOOD)
    m = load_manifest(p)
    assert m.allows(scope("patch", "edgeagent.io", "rings", "ring-1", "ring"))
    assert m.allows(scope("get", "edgeagent.io", "rings/status", "ring-1", "ring"))
    assert not m.allows(scope("delete", "edgeagent.io", "rings", "ring-1", "ring"))  # verb
    assert not m.allows(scope("patch", "edgeagent.io", "rings", "ring-2", "ring"))  # namespace
    assert not m.allows(scope("patch", "edgeagent.io", "rings", "ring-1", "other"))  # name
    assert not m.allows(scope("patch", "", "rings", "ring-1", "ring"))  # group
    assert not m.allows(scope("list", "edgeagent.io", "rings", "", ""))  # cluster-wide
    assert m.allows(scope("patch", "", "nodes", "", "edge1"))  # cluster-scoped grant
    assert not m.allows(scope("patch", "", "nodes", "default", "edge1"))
    assert not parse_manifest(base()).allows(scope("get", "", "configmaps", "x", "y"))  # no grants: nothing


def test_wildcards() -> None:
    m = parse_manifest(
        base(grants=[{"verbs": ["*"], "api_groups": ["*"], "resources": ["*"], "namespaces": ["*"]}])
    )
    assert m.allows(scope("delete", "apps", "deployments", "any", "x"))
    assert not m.allows(scope("get", "", "nodes", "", "n"))  # "*" namespaces still means namespaced requests


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"name": "Bad_Name"}, "is not a DNS label"),
        ({"name": 5}, "name must be a string"),
        ({"module": ""}, "module must not be empty"),
        ({"watches": []}, "at least one entry in [[watches]]"),
        ({"watches": [{"version": "v1", "kind": "ConfigMap"}]}, "watches[0]: missing key 'plural'"),
        (
            {"watches": [{"version": "v1", "kind": "X", "plural": "xs", "label_selector": "a in ("}]},
            "label_selector",
        ),
        (
            {"watches": [{"version": "v1", "kind": "X", "plural": "xs", "namespaces": "x"}]},
            "unknown key 'namespaces'",
        ),
        ({"grants": [{"verbs": ["watch"], "resources": ["pods"]}]}, "unknown verb 'watch'"),
        ({"grants": [{"verbs": ["get"]}]}, "grants[0]: missing key 'resources'"),
        ({"grants": [{"verbs": [], "resources": ["pods"]}]}, "must not be empty"),
        ({"grants": [{"verbs": "get", "resources": ["pods"]}]}, "verbs must be a list of strings"),
        ({"memory_limit": "lots"}, "memory_limit must be bytes or a size"),
        ({"memory_limit": 1000}, "at least 64KiB"),
        ({"idle_timeout": 0}, "idle_timeout must be greater than 0"),
        ({"idle_timeout": "soon"}, "idle_timeout must be a number"),
        ({"service_account": "nope"}, "service_account must be 'namespace/name'"),
        ({"config": "x"}, "config must be a table"),
        ({"extra": 1}, "unknown key 'extra'"),
    ],
)
def test_malformed_manifests_name_the_problem(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match="manifest") as err:
        parse_manifest(base(**over))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_required_keys() -> None:
    with pytest.raises(ManifestError, match="missing key 'name'"):
        parse_manifest({"module": "x.wasm"})
    with pytest.raises(ManifestError, match="expected a table"):
        parse_manifest(["not", "a", "table"])


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ManifestError, match=r"bad.toml: not valid TOML"):
        load_manifest(bad)
    badj = tmp_path / "bad.controller.json"
    badj.write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(badj)


def test_json_manifest_and_discovery(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(GOOD)
    sub = tmp_path / "b"
    sub.mkdir()
    (sub / "b.controller.json").write_text(json.dumps(base(name="b")))
    (sub / "crd.json").write_text("{}")  # not a manifest
    paths = manifest_paths(tmp_path)
    assert paths == [tmp_path / "a.toml", sub / "b.controller.json"]
    assert load_manifest(paths[1]).module == sub / "c.wasm"
    with pytest.raises(ManifestError, match="does not exist"):
        manifest_paths(tmp_path / "nope")


def test_shipped_manifests_parse() -> None:
    root = Path(__file__).resolve().parents[2] / "controllers"
    names = {load_manifest(p).name for p in manifest_paths(root)}
    assert {"ring-0", "node-labeler"} <= names


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("", {}, True),
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a!=b", {"a": "b"}, False),
        ("a", {"a": ""}, True),
        ("!a", {"a": "x"}, False),
        ("a in (x, y),b notin (z)", {"a": "y", "b": "q"}, True),
        ("a in (x,y)", {"a": "z"}, False),
        ("example.com/role=edge,!legacy", {"example.com/role": "edge"}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.parse(selector).matches(labels) is expected


@pytest.mark.parametrize("bad", ["a in ()", "=b", "a b", "a in (x", "a=b=c"])
def test_bad_label_selectors(bad: str) -> None:
    with pytest.raises(ValueError):
        LabelSelector.parse(bad)
