"""Wasm controllers against a real kube-apiserver: routing, swapping, grants, watch recovery, isolation.

The probe controller (controllers/testing/probe.c) publishes what it saw (event count, the "probe-seq"
annotations in order, the result of a forbidden request, timer firings) in a ConfigMap, so every assertion
reads the controller's own state back through the API server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from edgeagent.controllers.host import ControllerHost, HostOptions, State
from edgeagent.controllers.manifest import Manifest, load_manifest, parse_manifest
from edgeagent.kube.api import KubeApi, connect
from tests.fixtures import procs

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONTROLLERS = REPO / "controllers"
PROBE = CONTROLLERS / "build" / "testing" / "probe.wasm"
RING = CONTROLLERS / "build" / "ring.wasm"


@pytest.fixture(scope="module", autouse=True)
def guests() -> None:
    subprocess.run(["make", "-s", "-C", str(CONTROLLERS)], check=True)


@pytest.fixture
def core(kube_cluster: Any) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(kube_cluster.client())


@pytest.fixture
def namespace(core: k8s.CoreV1Api) -> Callable[[], str]:
    def make() -> str:
        name = f"ctl-{uuid.uuid4().hex[:8]}"
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
        return name

    return make


@pytest.fixture
def host_factory(kube_cluster: Any, tmp_path: Path) -> Iterator[Callable[..., ControllerHost]]:
    hosts: list[ControllerHost] = []

    def make(
        *manifests: Manifest, swap: bool = True, watch_options: dict[str, Any] | None = None
    ) -> ControllerHost:
        api = KubeApi(connect(kube_cluster.kubeconfig))
        h = ControllerHost(
            api,
            HostOptions(state_dir=tmp_path / f"state{len(hosts)}", swap=swap, status_interval=0.2),
            watch_options=watch_options or {"backoff": (0.1, 1.0)},
        )
        hosts.append(h)
        for m in manifests:
            h.add(m)
        h.start(sync_timeout=30)
        return h

    yield make
    for h in hosts:
        h.stop()


def probe(
    name: str, ns: str, *, idle: float = 30.0, selector: str = "probe-in=true", **extra: Any
) -> Manifest:
    return parse_manifest(
        {
            "name": name,
            "module": str(PROBE),
            "idle_timeout": idle,
            "config": {"namespace": ns, "out": f"out-{name}"},
            "watches": [
                {
                    "version": "v1",
                    "kind": "ConfigMap",
                    "plural": "configmaps",
                    "namespace": ns,
                    "label_selector": selector,
                }
            ],
            "grants": [{"verbs": ["create", "patch"], "resources": ["configmaps"], "namespaces": [ns]}],
            **extra,
        }
    )


def put_input(
    core: k8s.CoreV1Api,
    ns: str,
    name: str = "in",
    *,
    labels: dict[str, str] | None = None,
    **annotations: str,
) -> None:
    labels = {"probe-in": "true"} if labels is None else labels
    meta = k8s.V1ObjectMeta(name=name, labels=labels, annotations=_dashed(annotations))
    core.create_namespaced_config_map(ns, k8s.V1ConfigMap(metadata=meta, data={"x": "1"}))


def annotate(core: k8s.CoreV1Api, ns: str, name: str = "in", **annotations: str) -> None:
    core.patch_namespaced_config_map(name, ns, {"metadata": {"annotations": _dashed(annotations)}})


def _dashed(annotations: dict[str, str]) -> dict[str, str]:
    """probe_seq="1" -> {"probe-seq": "1"}: the probe's annotation names."""
    return {k.replace("_", "-"): v for k, v in annotations.items()}


def out(core: k8s.CoreV1Api, ns: str, controller: str) -> dict[str, str] | None:
    try:
        return core.read_namespaced_config_map(f"out-{controller}", ns).data
    except k8s.ApiException as e:
        if e.status == 404:
            return None
        raise


def wait_out(
    core: k8s.CoreV1Api,
    ns: str,
    controller: str,
    pred: Callable[[dict[str, str]], bool],
    *,
    timeout: float = 20.0,
) -> dict[str, str]:
    seen: dict[str, Any] = {}

    def check() -> bool:
        data = out(core, ns, controller)
        seen["data"] = data
        return data is not None and pred(data)

    try:
        procs.wait_for(check, timeout=timeout, what=f"{controller}'s output")
    except TimeoutError:
        raise AssertionError(f"{controller} published {seen.get('data')}") from None
    return seen["data"]


def seq(n: int, start: int = 0) -> str:
    return ",".join(str(i) for i in range(start, n + 1))


# ------------------------------------------------------------ routing
def test_events_reach_the_right_controller(core, namespace, host_factory) -> None:
    ns_a, ns_b = namespace(), namespace()
    host = host_factory(probe("pa", ns_a), probe("pb", ns_b))
    put_input(core, ns_a, probe_seq="a0")
    put_input(core, ns_a, "unlabelled", labels={}, probe_seq="nope")  # outside pa's label selector
    wait_out(core, ns_a, "pa", lambda d: d["count"] == "1")
    put_input(core, ns_b, probe_seq="b0")
    annotate(core, ns_b, probe_seq="b1")
    wait_out(core, ns_b, "pb", lambda d: d["count"] == "2")
    annotate(core, ns_a, probe_seq="a1")
    data_a = wait_out(core, ns_a, "pa", lambda d: d["count"] == "2")
    host.wait_idle()
    assert data_a["seq"] == "a0,a1"
    assert out(core, ns_b, "pb")["seq"] == "b0,b1"
    assert host.controllers["pa"].stats.events == 2
    assert host.controllers["pb"].stats.events == 2


# ------------------------------------------------------------ swapping
def test_counter_survives_many_swaps(core, namespace, host_factory) -> None:
    ns = namespace()
    host = host_factory(probe("counter", ns, idle=0.05))
    ctl = host.controllers["counter"]
    put_input(core, ns, probe_seq="0")
    wait_out(core, ns, "counter", lambda d: d["count"] == "1")
    rounds = 15
    for i in range(1, rounds + 1):
        procs.wait_for(lambda: ctl.state == State.SWAPPED, timeout=10, what="swap-out")
        annotate(core, ns, probe_seq=str(i))
        wait_out(core, ns, "counter", lambda d, i=i: d["count"] == str(i + 1))
    data = out(core, ns, "counter")
    assert data["seq"] == seq(rounds)
    assert ctl.stats.wakes >= rounds
    assert ctl.stats.swaps >= rounds
    assert host.wake_latencies, "wakes are timed"


def test_no_event_lost_across_a_swap(core, namespace, host_factory) -> None:
    ns = namespace()
    host = host_factory(probe("burst", ns, idle=0.05))
    ctl = host.controllers["burst"]
    put_input(core, ns, probe_seq="0")
    n = 0
    for _burst in range(3):
        procs.wait_for(lambda: ctl.state == State.SWAPPED, timeout=10, what="swap-out")
        wakes = ctl.stats.wakes
        for _ in range(12):  # the first wakes the controller; the rest arrive while it is waking or busy
            n += 1
            annotate(core, ns, probe_seq=str(n))
        wait_out(core, ns, "burst", lambda d, n=n: d["count"] == str(n + 1))
        assert ctl.stats.wakes > wakes
    assert out(core, ns, "burst")["seq"] == seq(n)


def test_timer_wakes_a_swapped_controller(core, namespace, host_factory) -> None:
    ns = namespace()
    host = host_factory(probe("tick", ns, idle=0.05))
    ctl = host.controllers["tick"]
    put_input(core, ns, probe_action="timer")  # handle-timer 200 ms later, long after the 50 ms idle swap
    data = wait_out(core, ns, "tick", lambda d: d["timers"] == "1")
    assert data["count"] == "1"
    assert ctl.stats.timers == 1
    assert ctl.stats.wakes >= 1


# ------------------------------------------------------------ least privilege
def test_request_outside_the_grant_is_denied_before_it_leaves(core, namespace, host_factory, caplog) -> None:
    ns = namespace()
    host = host_factory(probe("nosy", ns))
    with caplog.at_level(logging.WARNING, logger="edgeagent.controllers.k8s"):
        put_input(core, ns, probe_action="forbidden")
        data = wait_out(core, ns, "nosy", lambda d: d["count"] == "1")
    assert data["denied"] == "-1"  # EA_ERR_DENIED, not the API server's 403 or 404
    assert host.controllers["nosy"].stats.denied == 1
    assert "controller nosy: denied: get secrets/anything in kube-system (not in its grants)" in caplog.text


def test_impersonation_lets_the_api_server_enforce_too(core, namespace, host_factory, kube_cluster) -> None:
    ns = namespace()
    core.create_namespaced_service_account(ns, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="probe")))
    host = host_factory(probe("imp", ns, service_account=f"{ns}/probe"))
    ctl = host.controllers["imp"]
    put_input(core, ns, probe_seq="0")
    # The grant allows it, the ServiceAccount's RBAC does not (yet): the API server refuses.
    procs.wait_for(
        lambda: ctl.stats.events == 1 and ctl.stats.errors == 1, timeout=20, what="refused publish"
    )
    assert out(core, ns, "imp") is None
    rbac = k8s.RbacAuthorizationV1Api(kube_cluster.client())
    rule = k8s.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["create", "patch"])
    rbac.create_namespaced_role(ns, k8s.V1Role(metadata=k8s.V1ObjectMeta(name="probe"), rules=[rule]))
    rbac.create_namespaced_role_binding(
        ns,
        k8s.V1RoleBinding(
            metadata=k8s.V1ObjectMeta(name="probe"),
            role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="probe"),
            subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name="probe", namespace=ns)],
        ),
    )
    annotate(core, ns, probe_seq="1")
    data = wait_out(core, ns, "imp", lambda d: d["count"] == "2")
    assert data["seq"] == "0,1"


# ------------------------------------------------------------ watch recovery
def restart_apiserver(kube_cluster: Any, core: k8s.CoreV1Api) -> None:
    kube_cluster.stop_apiserver()
    kube_cluster.start_apiserver()
    core.api_client.rest_client.pool_manager.clear()


def test_expired_watch_is_relisted(core, namespace, host_factory, kube_cluster) -> None:
    ns, elsewhere = namespace(), namespace()
    host = host_factory(probe("relist", ns))
    put_input(core, ns, probe_seq="0")
    wait_out(core, ns, "relist", lambda d: d["count"] == "1")
    (watch,) = host.hub.watches.values()
    assert watch.namespace == ns
    # A write this namespaced watch does not see moves the cluster's revision past the watch's last one; a
    # restarted API server starts its watch cache at the current revision, so resuming from the watch's
    # resourceVersion is answered with 410 Gone, as after any long disconnection.
    put_input(core, elsewhere, labels={})
    restart_apiserver(kube_cluster, core)
    procs.wait_for(
        lambda: watch.stats.gone >= 1 and watch.stats.relists >= 1, timeout=30, what="410 + relist"
    )
    annotate(core, ns, probe_seq="1")
    data = wait_out(core, ns, "relist", lambda d: d["count"] == "2")
    assert data["seq"] == "0,1"  # the relist replayed nothing unchanged and missed nothing


def test_api_server_restart_is_survived(core, namespace, host_factory, kube_cluster) -> None:
    ns = namespace()
    host = host_factory(probe("phoenix", ns, idle=0.05))
    ctl = host.controllers["phoenix"]
    put_input(core, ns, probe_seq="0")
    wait_out(core, ns, "phoenix", lambda d: d["count"] == "1")
    procs.wait_for(lambda: ctl.state == State.SWAPPED, timeout=10, what="swap-out")
    (watch,) = host.hub.watches.values()
    errors = watch.stats.errors
    kube_cluster.stop_apiserver()
    try:
        procs.wait_for(lambda: watch.stats.errors > errors, timeout=20, what="the watch noticing")
    finally:
        kube_cluster.start_apiserver()
    core.api_client.rest_client.pool_manager.clear()
    annotate(core, ns, probe_seq="1")  # possibly before the watch is back: then the relist delivers it
    annotate(core, ns, probe_seq="2")
    data = wait_out(core, ns, "phoenix", lambda d: d["count"] == "3", timeout=40)
    assert data["seq"] == "0,1,2"
    assert ctl.state != State.FAILED


# ------------------------------------------------------------ isolation
def test_trapping_and_looping_controllers_are_stopped_and_the_others_go_on(
    core, namespace, host_factory
) -> None:
    ns_t, ns_l, ns_ok = namespace(), namespace(), namespace()
    host = host_factory(probe("trapper", ns_t), probe("looper", ns_l), probe("healthy", ns_ok))
    put_input(core, ns_t, probe_action="trap")
    put_input(core, ns_l, probe_action="loop")
    trapper, looper = host.controllers["trapper"], host.controllers["looper"]
    procs.wait_for(
        lambda: trapper.state == State.FAILED and looper.state == State.FAILED,
        timeout=20,
        what="both stopped",
    )
    assert "trapped in handle-event: unreachable" in trapper.stats.last_error
    assert "compute limit" in looper.stats.last_error
    put_input(core, ns_ok, probe_seq="0")
    annotate(core, ns_t, probe_seq="after")
    data = wait_out(core, ns_ok, "healthy", lambda d: d["count"] == "1")
    assert data["seq"] == "0"
    procs.wait_for(lambda: trapper.stats.dropped == 1, timeout=10, what="dropped event")
    status = {c["name"]: c for c in host.status()["controllers"]}
    assert status["trapper"]["state"] == "failed" and status["healthy"]["state"] != "failed"


# ------------------------------------------------------------ shipped controllers
# ------------------------------------------------------------ the ring over its custom resource
RING_GROUP, RING_VERSION, RING_PLURAL = "edgeagent.io", "v1alpha1", "rings"


@pytest.fixture(scope="module")
def ring_crd(kube_cluster: Any) -> None:
    """Installs controllers/ring/ring-crd.json and waits until the API server serves Rings."""
    client = kube_cluster.client()
    ext = k8s.ApiextensionsV1Api(client)
    crd = json.loads((CONTROLLERS / "ring" / "ring-crd.json").read_text())
    try:
        ext.create_custom_resource_definition(crd)
    except k8s.ApiException as e:
        if e.status != 409:
            raise
    custom = k8s.CustomObjectsApi(client)

    def served() -> bool:
        conds = ext.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions or []
        if not any(c.type == "Established" and c.status == "True" for c in conds):
            return False
        try:
            custom.list_cluster_custom_object(RING_GROUP, RING_VERSION, RING_PLURAL, limit=1)
        except k8s.ApiException:
            return False
        return True

    procs.wait_for(served, timeout=30, what="the Ring CRD established")


@pytest.fixture
def custom(kube_cluster: Any, ring_crd: None) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(kube_cluster.client())


def create_ring(custom: k8s.CustomObjectsApi, ns: str, nonce: str = "") -> None:
    body = {
        "apiVersion": f"{RING_GROUP}/{RING_VERSION}",
        "kind": "Ring",
        "metadata": {"name": "ring"},
        "spec": {"nonce": nonce} if nonce else {},  # the client sends "" as null: refused
    }
    custom.create_namespaced_custom_object(RING_GROUP, RING_VERSION, ns, RING_PLURAL, body)


def ring_nonce(custom: k8s.CustomObjectsApi, ns: str) -> str:
    obj = custom.get_namespaced_custom_object(RING_GROUP, RING_VERSION, ns, RING_PLURAL, "ring")
    return str((obj.get("spec") or {}).get("nonce", ""))


def set_ring_nonce(custom: k8s.CustomObjectsApi, ns: str, nonce: str) -> None:
    custom.patch_namespaced_custom_object(
        RING_GROUP, RING_VERSION, ns, RING_PLURAL, "ring", {"spec": {"nonce": nonce}}
    )


def ring_manifests(names: list[str], *, idle: float = 0.1) -> list[Manifest]:
    """The shipped ring.toml per stop: controller i watches the Ring in names[i], patches names[i+1]."""
    shipped = load_manifest(CONTROLLERS / "ring" / "ring.toml")
    (watch,) = shipped.watches
    (grant,) = shipped.grants
    out = []
    for i, ns in enumerate(names):
        nxt = names[(i + 1) % len(names)]
        out.append(
            parse_manifest(
                {
                    "name": f"ring-{i}",
                    "module": str(shipped.module),
                    "idle_timeout": idle,
                    "config": {**shipped.config, "next": nxt},
                    "watches": [
                        {
                            "group": watch.group,
                            "version": watch.version,
                            "kind": watch.kind,
                            "plural": watch.plural,
                            "namespace": ns,
                        }
                    ],
                    "grants": [
                        {
                            "verbs": sorted(grant.verbs),
                            "api_groups": sorted(grant.api_groups),
                            "resources": sorted(grant.resources),
                            "resource_names": sorted(grant.resource_names),
                            "namespaces": [nxt],
                        }
                    ],
                }
            )
        )
    return out


def test_ring_carries_a_nonce_around_its_custom_resource(custom, namespace, host_factory) -> None:
    names = [namespace() for _ in range(3)]
    for ns in names:
        create_ring(custom, ns)
    host = host_factory(*ring_manifests(names))
    assert [w.kind for w in host.hub.watches.values()] == ["rings.edgeagent.io"]  # one shared watch
    for round_ in range(1, 4):
        procs.wait_for(
            lambda: all(c.state == State.SWAPPED for c in host.controllers.values()),
            timeout=10,
            what="the ring asleep",
        )
        set_ring_nonce(custom, names[0], f"n-{round_}")
        procs.wait_for(
            lambda r=round_: [ring_nonce(custom, ns) for ns in names] == [f"n-{r}"] * 3,
            timeout=20,
            what="a round",
        )
        host.wait_idle()
    assert all(c.stats.errors == 0 and c.stats.denied == 0 for c in host.controllers.values())
    assert all(c.stats.wakes >= 1 for c in host.controllers.values())
    # Each controller forwarded each nonce once: the round ends where it started, no ping-pong.
    assert all(c.stats.events <= 2 * 3 + 1 for c in host.controllers.values())


def test_custom_resource_watch_survives_410(
    core, custom, namespace, host_factory, kube_cluster
) -> None:
    ns, elsewhere = namespace(), namespace()
    create_ring(custom, ns)
    create_ring(custom, elsewhere)
    manifest = parse_manifest(
        {
            "name": "ring-solo",
            "module": str(RING),
            "idle_timeout": 0.1,
            "config": {"next": elsewhere},
            "watches": [
                {
                    "group": RING_GROUP,
                    "version": RING_VERSION,
                    "kind": "Ring",
                    "plural": RING_PLURAL,
                    "namespace": ns,
                }
            ],
            "grants": [
                {
                    "verbs": ["patch"],
                    "api_groups": [RING_GROUP],
                    "resources": [RING_PLURAL],
                    "namespaces": [elsewhere],
                }
            ],
        }
    )
    host = host_factory(manifest)
    (watch,) = host.hub.watches.values()
    assert watch.kind == "rings.edgeagent.io" and watch.namespace == ns
    set_ring_nonce(custom, ns, "before")
    procs.wait_for(lambda: ring_nonce(custom, elsewhere) == "before", timeout=20, what="forwarded")
    # Writes this namespaced watch does not see move the revision on; the restarted API server's watch cache
    # starts at the current revision, so resuming from the watch's resourceVersion is answered 410 Gone.
    core.create_namespaced_config_map(elsewhere, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="bump")))
    restart_apiserver(kube_cluster, core)
    custom.api_client.rest_client.pool_manager.clear()
    procs.wait_for(
        lambda: watch.stats.gone >= 1 and watch.stats.relists >= 1, timeout=30, what="410 + relist"
    )
    set_ring_nonce(custom, ns, "after")
    procs.wait_for(lambda: ring_nonce(custom, elsewhere) == "after", timeout=20, what="forwarded after 410")
    assert host.controllers["ring-solo"].stats.errors == 0


def test_node_labeler_publishes_and_removes_labels(core, kube_cluster, host_factory) -> None:
    node = f"edge-{uuid.uuid4().hex[:6]}"
    core.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=node)))
    try:
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name="edgeagent-system")))
    except k8s.ApiException as e:
        if e.status != 409:
            raise
    shipped = load_manifest(CONTROLLERS / "node-labeler" / "node-labeler.toml")
    raw = {
        "name": shipped.name,
        "module": str(shipped.module),
        "idle_timeout": 0.1,
        "config": {**shipped.config, "node": node},
        "watches": [
            {
                "version": "v1",
                "kind": "ConfigMap",
                "plural": "configmaps",
                "namespace": "edgeagent-system",
                "label_selector": str(shipped.watches[0].label_selector),
            }
        ],
        "grants": [{"verbs": ["patch"], "resources": ["nodes"], "resource_names": [node]}],
    }
    host = host_factory(parse_manifest(raw))
    meta = k8s.V1ObjectMeta(name=f"labels-{node}", labels={"edgeagent.io/node-labels": "true"})
    core.create_namespaced_config_map(
        "edgeagent-system", k8s.V1ConfigMap(metadata=meta, data={"sensor": "tmp102", "firmware": "1.2.3"})
    )

    def labels() -> dict[str, str]:
        return {
            k: v
            for k, v in (core.read_node(node).metadata.labels or {}).items()
            if k.startswith("device.edgeagent.io/")
        }

    procs.wait_for(
        lambda: labels() == {"device.edgeagent.io/sensor": "tmp102", "device.edgeagent.io/firmware": "1.2.3"},
        timeout=20,
        what="labels",
    )
    core.replace_namespaced_config_map(
        f"labels-{node}", "edgeagent-system", k8s.V1ConfigMap(metadata=meta, data={"sensor": "tmp102"})
    )
    procs.wait_for(lambda: labels() == {"device.edgeagent.io/sensor": "tmp102"}, timeout=20, what="removal")
    assert host.controllers["node-labeler"].stats.errors == 0


# ------------------------------------------------------------ the command line
def test_cli_run_and_list(core, namespace, kube_cluster, tmp_path) -> None:
    ns = namespace()
    ctl_dir, state = tmp_path / "ctl", tmp_path / "state"
    ctl_dir.mkdir()
    manifest = {
        "name": "cli-probe",
        "module": str(PROBE),
        "idle_timeout": 0.2,
        "config": {"namespace": ns, "out": "out-cli-probe"},
        "watches": [
            {
                "version": "v1",
                "kind": "ConfigMap",
                "plural": "configmaps",
                "namespace": ns,
                "label_selector": "probe-in=true",
            }
        ],
        "grants": [{"verbs": ["create", "patch"], "resources": ["configmaps"], "namespaces": [ns]}],
    }
    (ctl_dir / "probe.controller.json").write_text(json.dumps(manifest))
    (ctl_dir / "broken.toml").write_text('name = "broken"\n')  # reported, the good one still runs
    base = [sys.executable, "-m", "edgeagent.cli.main", "--state-dir", str(state), "controllers"]

    def listed() -> dict[str, Any]:
        r = subprocess.run([*base, "list", "--json"], capture_output=True, text=True, timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 else {}

    proc = procs.start(
        [*base, "run", str(ctl_dir), "--kubeconfig", str(kube_cluster.kubeconfig)], log=tmp_path / "run.log"
    )
    try:
        procs.wait_for(lambda: listed().get("host_running", False), timeout=30, what="the host's status")
        put_input(core, ns, probe_seq="0")
        wait_out(core, ns, "cli-probe", lambda d: d["count"] == "1")
        procs.wait_for(lambda: listed()["controllers"][0]["state"] == "swapped", timeout=30, what="swap-out")
        data = listed()
        (c,) = data["controllers"]
        assert c["name"] == "cli-probe" and c["events"] == 1 and c["swaps"] >= 1
        assert "missing key 'module'" in data["failed_loads"][0]["error"]
    finally:
        procs.stop(proc)
    assert proc.returncode == 0, (tmp_path / "run.log").read_text()
    assert listed()["host_running"] is False


def test_cli_runs_controllers_from_a_configmap_and_reloads_them(
    core, namespace, kube_cluster, tmp_path
) -> None:
    ns = namespace()
    state = tmp_path / "state"

    def bundle(out_name: str, module: bytes) -> k8s.V1ConfigMap:
        manifest = {
            "name": "cm-probe",
            "module": "probe.wasm",
            "config": {"namespace": ns, "out": out_name},
            "watches": [
                {
                    "version": "v1",
                    "kind": "ConfigMap",
                    "plural": "configmaps",
                    "namespace": ns,
                    "label_selector": "probe-in=true",
                }
            ],
            "grants": [{"verbs": ["create", "patch"], "resources": ["configmaps"], "namespaces": [ns]}],
        }
        return k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(name="controllers"),
            data={"probe.controller.json": json.dumps(manifest)},
            binary_data={"probe.wasm": base64.b64encode(module).decode()},
        )

    core.create_namespaced_config_map(ns, bundle("out-cm-probe", PROBE.read_bytes()))
    base = [sys.executable, "-m", "edgeagent.cli.main", "--state-dir", str(state), "controllers"]

    def listed() -> dict[str, Any]:
        r = subprocess.run([*base, "list", "--json"], capture_output=True, text=True, timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 else {}

    proc = procs.start(
        [*base, "run", "--configmap", f"{ns}/controllers", "--kubeconfig", str(kube_cluster.kubeconfig)],
        log=tmp_path / "run.log",
    )
    try:
        procs.wait_for(lambda: listed().get("host_running", False), timeout=30, what="the host's status")
        put_input(core, ns, probe_seq="0")
        wait_out(core, ns, "cm-probe", lambda d: d["count"] == "1")
        annotate(core, ns, probe_seq="1")
        wait_out(core, ns, "cm-probe", lambda d: d["seq"] == "0,1")
        (c,) = listed()["controllers"]
        assert c["origin"] == f"configmap {ns}/controllers" and c["module"] == "controllers/probe.wasm"

        # A new config: a fresh instance, which gets the current input as ADDED (its first list).
        core.replace_namespaced_config_map("controllers", ns, bundle("out-cm-probe2", PROBE.read_bytes()))
        data = wait_out(core, ns, "cm-probe2", lambda d: d["count"] == "1")
        assert data["seq"] == "1"
        # A new module (same code plus a custom section): fresh again, under its new digest.
        patched = PROBE.read_bytes() + b"\0\x05\x04note"
        core.replace_namespaced_config_map("controllers", ns, bundle("out-cm-probe", patched))
        procs.wait_for(
            lambda: [x["sha256"] for x in listed()["controllers"]] == [hashlib.sha256(patched).hexdigest()],
            timeout=30,
            what="the reloaded module",
        )
        annotate(core, ns, probe_seq="2")
        # Fresh state: "1,2" (the resync's ADDED, then the change) or "2" (the resync saw it), never "0,1,2".
        wait_out(core, ns, "cm-probe", lambda d: d["seq"] in ("1,2", "2"))
        # Deleting the ConfigMap stops its controllers; the host goes on.
        core.delete_namespaced_config_map("controllers", ns)
        procs.wait_for(lambda: listed()["controllers"] == [], timeout=30, what="the controllers removed")
    finally:
        procs.stop(proc)
    assert proc.returncode == 0, (tmp_path / "run.log").read_text()


def test_cli_refuses_a_missing_configmap(namespace, kube_cluster, tmp_path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeagent.cli.main",
            "--state-dir",
            str(tmp_path),
            "controllers",
            "run",
            "--configmap",
            f"{namespace()}/absent",
            "--kubeconfig",
            str(kube_cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_custom_resource_watch_gets_bookmarks_and_follows_their_resource_version(
    custom, namespace, kube_cluster
) -> None:
    """1.20's watch cache sends a BOOKMARK 2 s before a watch's timeoutSeconds (custom resources included):
    the shared watch counts it and resumes from its resourceVersion, not from its last object's."""
    from edgeagent.kube.watch import SharedWatch, Subscription

    ns, other = namespace(), namespace()
    create_ring(custom, ns)
    (watch,) = ring_manifests([ns])[0].watches
    seen: list[str] = []
    sw = SharedWatch(
        KubeApi(connect(kube_cluster.kubeconfig)),
        RING_GROUP,
        RING_VERSION,
        RING_PLURAL,
        namespace=ns,
        timeout_seconds=(4, 4),
        backoff=(0.1, 0.5),
    )
    sw.add([Subscription(watch, lambda ev: seen.append(ev.type))])
    sw.start()
    try:
        assert sw.synced.wait(20)
        procs.wait_for(lambda: seen == ["ADDED"], timeout=10, what="the Ring listed")
        listed = int(sw.resource_version or 0)
        create_ring(custom, other)  # moves the store's resourceVersion; this watch sees no object for it
        try:
            procs.wait_for(lambda: sw.stats.bookmarks >= 1, timeout=40, what="a BOOKMARK")
        except TimeoutError as e:
            raise AssertionError(f"{e}; {sw.stats}") from None
        procs.wait_for(
            lambda: int(sw.resource_version or 0) > listed, timeout=15, what="a bookmark's resourceVersion"
        )
        assert seen == ["ADDED"] and sw.stats.errors == 0 and sw.stats.relists == 0
    finally:
        sw.stop()


def test_node_labeler_retries_until_the_node_is_registered(core, kube_cluster, host_factory) -> None:
    """On a device the labeler starts with the credential, a moment before the kubelet registers the Node:
    the first patch gets 404 and is retried from a timer until the Node exists (not dropped)."""
    node = f"edge-{uuid.uuid4().hex[:6]}"
    try:
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name="edgeagent-system")))
    except k8s.ApiException as e:
        if e.status != 409:
            raise
    shipped = load_manifest(CONTROLLERS / "node-labeler" / "node-labeler.toml")
    raw = {
        "name": shipped.name,
        "module": str(shipped.module),
        "idle_timeout": 0.1,
        "config": {**shipped.config, "node": node},
        "watches": [
            {
                "version": "v1",
                "kind": "ConfigMap",
                "plural": "configmaps",
                "namespace": "edgeagent-system",
                "label_selector": str(shipped.watches[0].label_selector),
            }
        ],
        "grants": [{"verbs": ["patch"], "resources": ["nodes"], "resource_names": [node]}],
    }
    host = host_factory(parse_manifest(raw))
    meta = k8s.V1ObjectMeta(name=f"labels-{node}", labels={"edgeagent.io/node-labels": "true"})
    body = k8s.V1ConfigMap(metadata=meta, data={"zone": "lab"})
    core.create_namespaced_config_map("edgeagent-system", body)
    controller = host.controllers["node-labeler"]
    procs.wait_for(lambda: controller.stats.events >= 1, timeout=20, what="the ConfigMap event")
    core.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=node)))
    procs.wait_for(
        lambda: (core.read_node(node).metadata.labels or {}).get("device.edgeagent.io/zone") == "lab",
        timeout=20,
        what="the retried patch to label the Node registered later",
    )
    assert controller.stats.errors == 0
