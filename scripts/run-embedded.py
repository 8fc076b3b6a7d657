"""`make run`: the whole story of one device, on a machine with no TPM, no sensors and no cluster.

Everything is real and on loopback: a software TPM (swtpm, EK certificate from a local CA, kept in
.state/embedded/ so the device keeps its EK across runs) with a simulated firmware measured boot; stock
Keylime 7.14 (verifier + registrar) and etcd + kube-apiserver + kube-controller-manager + kube-scheduler
from the local testbed; the attestation controller; and on the device `edgeagent agent`, the service systemd
runs, with Wasm drivers reading simulated sensors and a Wasm controller (node-labeler) talking to the API
server as the attested node, and a real kubelet (containerd, runc, CNI bridge) joining with the kubeconfig
the agent wrote, running a pod. Without root (or containerd) there is no kubelet: the demo registers the
Node object itself and says why.

The story: measured -> registered -> attested -> credential issued -> the kubelet joins, Node Ready, a pod
runs -> sensor readings, an LCD write -> the
controller sleeping on disk and waking on a ConfigMap change -> a measured driver module is swapped and the
agent reloaded -> Keylime fails the quote: access withdrawn, Node cordoned and tainted, the pod evicted, the
device drops its credential, controllers stop -> the module restored and the device rebooted -> the same AK
attested again, a new credential, the kubelet back, a pod runs again, controllers back. Then everything is
torn down. On a terminal the agent's status is shown
live; otherwise each step is a plain log line.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".state" / "embedded"
NAME = "edge-demo"
NAMESPACE = "edgeagent-system"
LABELS = "device-labels"
console = Console()
TTY = console.is_terminal


class Story:
    """The beats of the demo, with the time each was seen; rendered live or logged."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.beats: list[tuple[float, str]] = []
        self.status: dict[str, Any] | None = None
        self.live: Live | None = None

    def beat(self, text: str) -> None:
        t = time.monotonic() - self.t0
        self.beats.append((t, text))
        if self.live is None:
            console.print(f"[{t:6.1f} s] {text}", highlight=False)
        self.refresh()

    def view(self) -> Group:
        from edgeagent.cli.agent import status_renderables

        t = Table(title="the story so far", title_justify="left", show_header=False, box=None)
        t.add_column(justify="right", style="dim")
        t.add_column()
        for at, text in self.beats[-14:]:
            t.add_row(f"{at:6.1f} s", text)
        parts: list[Any] = [t]
        if self.status is not None:
            parts += ["", *status_renderables(self.status)]
        return Group(*parts)

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.view())


def wait(story: Story, agent: Any, pred: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    """Polls ``pred`` (refreshing the live status) until it holds; SystemExit with a line if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        story.status = agent.try_status() if agent is not None else story.status
        story.refresh()
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"make run: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def stage(run: Path) -> tuple[Path, Path, Path]:
    """The device's files as `make install` lays them out: modules, controllers, policies (all measured)."""
    from edgeagent.testbed import device

    manifest = device.labeler_manifest(
        "node-labeler", NAME, namespace=NAMESPACE, selector="edgeagent.io/node-labels=true"
    )
    return (
        device.stage_drivers(run / "drivers"),
        device.stage_labelers(run / "controllers", {"node-labeler": manifest}),
        device.stage_policies(run / "policies"),
    )


def write_config(run: Path, keylime: Any, port: int, dirs: tuple[Path, Path, Path]) -> Path:
    from edgeagent.testbed import device

    drivers, controllers, policies = dirs
    sensors = [
        {"name": n, "driver": d, "interval": 1.0, "sim": "true"}
        for n, d in (("climate", "bme280"), ("temp", "tmp102"))
    ]
    return device.agent_config(
        run / "agent.toml",
        {
            "": {"state_dir": str(run / "state"), "policies_dir": str(policies)},
            "measure": {"firmware_log": str(run / "binary_bios_measurements")},
            "drivers": {"modules_dir": str(drivers)},
            "controllers": {"dir": str(controllers)},
            "enroll": device.enroll_section(run, keylime, port=port, node=NAME, agent_uuid=f"{NAME}-agent"),
            "agent": {
                "socket": str(run / "agent.sock"),
                "metrics_port": 0,
                "restart_backoff": 0.5,
                "restart_backoff_max": 5.0,
            },
        },
        [*sensors, {"name": "lcd", "driver": "hd44780_pcf8574", "sim": "true"}],
        comment="`make run`: embedded defaults, pointed at the loopback testbed",
    )


def firmware_boot(tpm: Any, run: Path) -> int:
    from edgeagent.measure import simboot
    from edgeagent.tpm import Tpm

    with Tpm.open(tpm.tcti) as t:
        return simboot.boot_and_write(t, run / "binary_bios_measurements")


def main() -> int:
    from kubernetes import client as k8s

    from edgeagent.cloud import crd
    from edgeagent.testbed import procs, worker
    from edgeagent.testbed.agent_process import AgentProcess
    from edgeagent.testbed.cluster_side import ClusterSide, labels_configmap
    from edgeagent.testbed.node import unavailable
    from edgeagent.tpm import Tpm
    from edgeagent.tpm import identity as tpm_identity
    from edgeagent.tpm.swtpm import SoftwareTpm

    story = Story()
    no_kubelet = unavailable()
    WORK.mkdir(parents=True, exist_ok=True)
    run = WORK / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    with contextlib.ExitStack() as stack:
        template = SoftwareTpm(WORK / "swtpm-template")
        if not template.is_set_up:
            template.setup()
        tpm = template.clone(run / "swtpm").start()
        stack.callback(tpm.stop)
        with Tpm.open(tpm.tcti) as t:
            ek_cert = tpm_identity.load_ek(t).cert
        assert ek_cert is not None
        n = firmware_boot(tpm, run)
        story.beat(
            f"device powered on: software TPM, simulated firmware measured boot ({n} events, PCRs 0-7)"
        )

        t0 = time.monotonic()
        side = stack.enter_context(ClusterSide(run, [template.ca_cert], nodes=no_kubelet is None))
        keylime, cluster, api = side.keylime, side.cluster, side.api
        release = ".".join(map(str, cluster.version or ()))
        story.beat(
            f"cluster side up in {time.monotonic() - t0:.1f} s: Keylime 7.14 verifier + registrar, "
            f"etcd + kube-apiserver + kube-controller-manager{' + kube-scheduler' if cluster.nodes else ''} "
            f"{release}, the attestation controller"
        )

        core = k8s.CoreV1Api(api)
        port = procs.free_port()
        # with a kubelet the Node is registered by it; without one, the demo registers the object in its place
        side.pin_device(NAME, ek_cert=ek_cert, agent_uuid=f"{NAME}-agent", agent_address=f"127.0.0.1:{port}",
                        register_node=no_kubelet is not None)
        labels_configmap(api, NAMESPACE, LABELS, {"zone": "lab"})
        story.beat(
            f"operator: EdgeNode {NAME} pins the device's EK (sha256 "
            f"{hashlib.sha256(ek_cert).hexdigest()[:16]}…); a ConfigMap of labels for it"
        )

        dirs = stage(run)
        cfg = write_config(run, keylime, port, dirs)
        agent = AgentProcess(cfg, run / "agent.sock", run / "agent.log", tcti=tpm.tcti)
        stack.callback(agent.stop)
        live = Live(story.view(), console=console, refresh_per_second=4) if TTY else None
        if live is not None:
            stack.enter_context(live)
            story.live = live
        agent.start()
        story.beat("device: `edgeagent agent` started (the service systemd runs)")
        s = wait(
            story, agent, lambda: (story.status or {}).get("ready") and story.status, "the agent to be ready"
        )
        story.beat(f"measured {s['measure']['files']} files into PCR 23; attestation served to the verifier")
        s = wait(
            story,
            agent,
            lambda: (story.status or {}).get("attestation", {}).get("credential_expiry") and story.status,
            "the node credential",
        )
        steps = s["attestation"]["steps"]
        story.beat(
            f"registered with Keylime, attested ({steps.get('attest', {}).get('seconds', 0):.1f} s), "
            f"node credential issued: system:node:{NAME}, expires {s['attestation']['credential_expiry']}"
        )
        kubelet = None
        if no_kubelet is None:
            kubelet = side.kubelet(run / "node", NAME, Path(s["attestation"]["kubeconfig"]))
            stack.callback(kubelet.stop)
            t_kubelet = time.monotonic()
            kubelet.start()
            wait(story, agent, lambda: worker.node_ready(core, NAME), "the Node to be Ready")
            info = core.read_node(NAME).status.node_info
            story.beat(
                f"kubelet {info.kubelet_version} on {info.container_runtime_version} started with the "
                f"agent's kubeconfig: Node {NAME} Ready {time.monotonic() - t_kubelet:.1f} s later"
            )
            core.create_namespaced_pod("default", worker.pod("hello", NAME))
            wait(story, agent, lambda: worker.pod_phase(core, "hello") == "Running", "the pod to run")
            log = wait(story, agent, lambda: core.read_namespaced_pod_log("hello", "default").strip(),
                       "the pod's log")
            story.beat(f"pod hello (busybox, built here) running on the attested node; its log: {log!r}")
        else:
            story.beat(f"no kubelet in this run ({no_kubelet}): the demo registered the Node object itself")
        s = wait(
            story,
            agent,
            lambda: (
                all(d["readings"] > 0 for d in (story.status or {}).get("drivers", []) if d["name"] != "lcd")
                and story.status
            ),
            "sensor readings",
        )
        climate = next(d for d in s["drivers"] if d["name"] == "climate")["latest"]
        story.beat(
            "Wasm drivers reading the simulated sensors: "
            + ", ".join(f"{k} {v:.1f} {climate['units'][k]}" for k, v in climate["values"].items())
        )
        agent.client.write("lcd", "attested :)")
        story.beat("program on the device: `edgeagent output lcd 'attested :)'` through the local API")

        def node_labels() -> dict[str, str]:
            return {k: v for k, v in (core.read_node(NAME).metadata.labels or {}).items() if "edgeagent" in k}

        wait(story, agent, lambda: node_labels().get("device.edgeagent.io/zone") == "lab", "the first labels")
        story.beat("Wasm controller node-labeler, as the attested node, labelled the Node: zone=lab")
        wait(
            story,
            agent,
            lambda: any(
                c["state"] == "swapped"
                for c in (story.status or {}).get("controllers", {}).get("controllers", [])
            ),
            "the controller to sleep",
        )
        story.beat("node-labeler idle: snapshot on disk, instance dropped")
        core.patch_namespaced_config_map(LABELS, NAMESPACE, {"data": {"zone": "lab", "rack": "r7"}})
        wait(
            story,
            agent,
            lambda: node_labels().get("device.edgeagent.io/rack") == "r7",
            "the woken controller",
        )
        lat = (story.status or {}).get("controllers", {}).get("wake_latency_s") or [0.0]
        story.beat(
            f"ConfigMap changed: node-labeler woke in {lat[-1] * 1000:.1f} ms, labelled rack=r7, "
            "and went back to sleep"
        )

        # what someone copying the credential off the device would hold: usable until it expires, RBAC aside
        node_dir = run / "state" / "node"
        copied = cluster.write_kubeconfig(
            run / "copied.kubeconfig",
            (node_dir / "node.crt").read_bytes(),
            (node_dir / "node.key").read_bytes(),
            user=f"system:node:{NAME}",
        )
        as_copy = k8s.CoreV1Api(cluster.client(copied))

        def copy_denied() -> bool:
            try:
                as_copy.list_namespaced_config_map(NAMESPACE, _request_timeout=5)
            except k8s.exceptions.ApiException as e:
                return e.status == 403
            return False

        module = dirs[0] / "tmp102.wasm"
        original = module.read_bytes()
        shutil.copyfile(ROOT / "drivers" / "build" / "hts221.wasm", module)
        agent.send(signal.SIGHUP)
        story.beat(
            "TAMPER: drivers/tmp102.wasm replaced by another module; SIGHUP re-measures it into PCR 23"
        )
        t_tamper = time.monotonic()
        wait(
            story, agent, lambda: (story.status or {}).get("attestation", {}).get("revoked"), "the revocation"
        )
        en = wait(
            story,
            agent,
            lambda: (e := crd.EdgeNodes(api).get(NAME)) and e.phase == "Unattested" and e,
            "the EdgeNode to be unattested",
        )
        node = core.read_node(NAME)
        taints = [f"{t.key}:{t.effect}" for t in node.spec.taints or []]
        denied = wait(story, agent, copy_denied, "the node's grants to be withdrawn")
        story.beat(
            f"Keylime failed the quote; {time.monotonic() - t_tamper:.1f} s after the tamper: EdgeNode "
            f"{en.phase} (the approver refuses renewals), node's RBAC grant withdrawn (a copy of its "
            f"credential gets {'403' if denied else '?'}), Node cordoned={node.spec.unschedulable} "
            f"tainted {taints}"
        )
        wait(
            story,
            agent,
            lambda: (story.status or {}).get("controllers", {}).get("state") == "waiting for credential",
            "the controllers to stop",
        )
        story.beat(
            "device: signed revocation from the verifier -> credential dropped, controllers stopped "
            "(state saved); drivers keep reading"
        )
        if kubelet is not None:
            node_ = kubelet
            wait(story, agent, lambda: worker.pod_phase(core, "hello") is None and not node_.container_pids(),
                 "the pod to be evicted")
            story.beat(
                f"the NoExecute taint evicted pod hello: its containers stopped and the pod deleted "
                f"{time.monotonic() - t_tamper:.1f} s after the tamper"
            )

        module.write_bytes(original)
        if kubelet is not None:
            kubelet.stop_kubelet()
        agent.stop()
        tpm.stop()
        tpm.start()
        firmware_boot(tpm, run)
        agent.tcti = tpm.tcti
        story.beat("RESTORE: module restored, device rebooted (TPM reset, firmware boot again)")
        ak = s["attestation"]["ak_name"]
        agent.start()
        t_boot = time.monotonic()
        s = wait(
            story,
            agent,
            lambda: (
                (story.status or {}).get("attestation", {}).get("credential_expiry")
                and not story.status["attestation"]["revoked"]
                and story.status
            ),
            "the new credential",
        )
        story.beat(
            f"same AK ({'yes' if s['attestation']['ak_name'] == ak else 'NO'}), attested again, a new "
            f"credential {time.monotonic() - t_boot:.1f} s after boot"
        )
        if kubelet is not None:
            kubelet.start_kubelet()  # edgeagent-kubelet.path: once the credential exists
        wait(story, agent, lambda: not core.read_node(NAME).spec.unschedulable, "the Node to be uncordoned")
        if kubelet is not None:
            wait(story, agent, lambda: worker.node_ready(core, NAME), "the Node to be Ready again")
            core.create_namespaced_pod("default", worker.pod("hello-again", NAME, message="back in service"))
            wait(story, agent, lambda: worker.pod_phase(core, "hello-again") == "Running", "the new pod")
            story.beat("kubelet restarted with the new credential: Node Ready and schedulable, "
                       "pod hello-again running")
        wait(
            story,
            agent,
            lambda: (story.status or {}).get("controllers", {}).get("state") == "running",
            "the controllers",
        )
        story.beat("access back: Node uncordoned and untainted; node-labeler resumed from its snapshot")
        time.sleep(1.5 if TTY else 0)
        story.status = agent.try_status()
        story.refresh()
        if live is not None:
            live.stop()
            story.live = None
        elif story.status is not None:
            from edgeagent.cli.agent import render_status

            render_status(story.status)
        console.print(f"the story took {time.monotonic() - story.t0:.1f} s; stopping everything")
    console.print(
        f"done in {time.monotonic() - story.t0:.1f} s: nothing left running (agent log: {run / 'agent.log'})"
    )
    return 0


if __name__ == "__main__":
    from edgeagent.errors import EdgeAgentError

    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except EdgeAgentError as e:  # everything started was stopped on the way out
        print(f"make run: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
