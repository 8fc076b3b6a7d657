"""A real Kubernetes worker on this machine: containerd (Debian), runc, the CNI bridge plugin and a kubelet
(the testbed's current release) that joins the cluster with a kubeconfig the device's agent wrote.

What it takes to run a kubelet inside a test without touching the host (each learnt the hard way):
- A mount namespace (``unshare --mount``) holds containerd, its shims and the kubelet (``nsenter``-ed into
  it): tmpfs over /run, /var/log and /var/lib, so the fixed paths the kubelet and containerd write
  (/var/lib/kubelet/device-plugins, /var/log/containers, /run/containerd/s) never reach the host, and the
  kubelet's root dir bind-mounted from the node's own directory (so the test can look at it). The kernel
  settings the kubelet writes at start (vm.overcommit_memory, kernel.panic, ...) are bind-mounted files in
  that namespace, so the host's stay as they are.
- containerd with ``restrict_oom_score_adj`` (this VM lacks CAP_SYS_RESOURCE: without it every sandbox fails
  with "can't get final child's PID from pipe"), its root, state, socket and pod network namespaces under the
  node's directory, cgroupfs, and the locally built pause image as the sandbox image.
- A Linux bridge of the node's own (a unique name, an address from 10.2xx.y.0/24, not a gateway: no forwarding
  and no NAT, so pods reach the node and nothing beyond). The kubelet refuses a loopback node IP; the bridge's
  address is the node IP and the kubelet's serving address.
- The kubelet under a cgroup root of its own (``/edgeagent-NAME`` in every hierarchy), cgroup v1 allowed
  (``failCgroupV1: false``: this machine's kernel runs v1, which 1.35+ refuses by default), no iptables
  chains, status every second, eviction thresholds off (the host's disk is not the test's), x509 client auth
  with the cluster CA and webhook authorization.
- No registry: the pause and busybox images are OCI archives built here (`images`) and imported with ``ctr``.

`stop` kills the kubelet, every process in the node's cgroups, the shims and containerd, removes the cgroups
and the bridge: nothing is left on the host but the node's directory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

from edgeagent.errors import ConfigError
from edgeagent.testbed import images, procs

CGROUP_ROOT = Path("/sys/fs/cgroup")
_SYSCTLS = {  # what the kubelet sets at start (setupKernelTunables), as files bind-mounted in its namespace
    "vm/overcommit_memory": "1", "vm/panic_on_oom": "0", "kernel/panic": "10", "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000", "kernel/keys/root_maxbytes": "25000000",
}
DEBIAN_PACKAGES = "containerd runc containernetworking-plugins busybox-static iptables"


def unavailable() -> str | None:
    """Why a `KubeletNode` cannot run on this machine, in a few words, or None when it can."""
    from edgeagent.testbed.kube import kube_bin_dir

    if os.geteuid() != 0:
        return "a kubelet node needs root (a mount namespace, a bridge, cgroups)"
    for exe in ("containerd", "runc", "ctr", "unshare", "nsenter", "ip"):
        if shutil.which(exe) is None:
            return f"{exe} missing (scripts/install-system-deps.sh: {DEBIAN_PACKAGES})"
    if not (kube_bin_dir() / "kubelet").exists():
        return "no kubelet build (make kube-current)"
    return None


def _which(name: str, *extra: str) -> str:
    for candidate in (shutil.which(name), *extra):
        if candidate and Path(candidate).exists():
            return candidate
    raise ConfigError(f"{name} missing: run scripts/install-system-deps.sh (Debian: {DEBIAN_PACKAGES})")


def _used_subnets() -> set[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=False).stdout
    nets: set[ipaddress.IPv4Network] = set()
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            nets.add(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return nets


def pick_subnet() -> ipaddress.IPv4Network:
    """A free 10.2xx.y.0/24 for a node's bridge (picked first when the cluster must know the node IP)."""
    used = _used_subnets()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free 10.2xx.y.0/24 subnet for the node's bridge")


class KubeletNode:
    """containerd + kubelet as one worker node named ``name``, joining with ``kubeconfig``.

    Threads: none of its own; the processes are process groups (containerd's mount namespace is the first's).
    """

    def __init__(self, root: Path, *, name: str, kubeconfig: Path, cluster_ca: Path, bin_dir: Path,
                 bootstrap: bool = False, subnet: ipaddress.IPv4Network | None = None) -> None:
        """``bootstrap``: ``kubeconfig`` is a bootstrap credential, as with kubeadm's TLS bootstrapping: the
        kubelet makes its own key and asks for a certificate through the standard kubelet CSR flow (which
        the attestation controller must refuse: that key is not bound to the TPM)."""
        self.root = root
        self.bootstrap = bootstrap
        self.name = name
        self.kubeconfig = kubeconfig
        self.cluster_ca = cluster_ca
        self.kubelet_exe = bin_dir / "kubelet"
        self.logs = root / "logs"
        self.bridge = f"ea{random.getrandbits(32):08x}"[:15]
        self.subnet = subnet or pick_subnet()  # the bridge's; its first address is the node IP
        self.node_ip = str(self.subnet.network_address + 1)
        self.cgroup = f"edgeagent-{name}"
        self.containerd_sock = root / "containerd" / "containerd.sock"
        self.kubelet_port = procs.free_port()
        self.healthz_port = procs.free_port()
        self.containerd: subprocess.Popen | None = None
        self.kubelet: subprocess.Popen | None = None
        self.startup_seconds: dict[str, float] = {}

    # ------------------------------------------------------------ lifecycle
    def start(self, *, timeout: float = 60.0, wait_healthy: bool = True) -> KubeletNode:
        """Bridge, containerd (images imported), kubelet; on failure what was started is stopped again.
        ``wait_healthy=False`` returns once the kubelet runs (a bootstrapping kubelet serves nothing before
        it has a certificate)."""
        if not self.kubelet_exe.exists():
            raise ConfigError(f"{self.kubelet_exe} missing: run `make kube-current`")
        try:
            self.start_network()
            self.start_containerd(timeout=timeout)
            self.start_kubelet(timeout=timeout, wait_healthy=wait_healthy)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> KubeletNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_containerd(self, *, timeout: float = 60.0) -> None:
        t0 = time.perf_counter()
        containerd = _which("containerd")
        _which("runc")
        cni_bin = Path("/usr/lib/cni")
        if not (cni_bin / "bridge").exists():
            raise ConfigError(f"{cni_bin}/bridge missing: run scripts/install-system-deps.sh")
        pause, busybox = images.pause_image(), images.busybox_image()
        for d in ("containerd/root", "containerd/state", "cni/conf", "cni/data", "kubelet", "pod-logs",
                  "sysctl"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "cni/conf/10-edgeagent.conflist").write_text(json.dumps(self._cni_config(), indent=1))
        config = self.root / "containerd/config.toml"
        config.write_text(self._containerd_config(pause.name, cni_bin))
        for key, value in _SYSCTLS.items():
            (self.root / "sysctl" / key.replace("/", ".")).write_text(value + "\n")
        self.containerd = procs.start(
            ["unshare", "--mount", "--propagation", "private", "--", "bash", "-euc", self._namespace_script(),
             "node-namespace", containerd, str(config)],
            log=self.logs / "containerd.log")
        procs.wait_for(self._containerd_ready, timeout=timeout, interval=0.05, what="containerd's socket")
        for image in (pause, busybox):
            self.ctr("images", "import", "--no-unpack=false", str(image.archive))
        self.startup_seconds["containerd"] = time.perf_counter() - t0

    def start_kubelet(self, *, timeout: float = 60.0, wait_healthy: bool = True) -> None:
        """Starts the kubelet in containerd's mount namespace; returns once its health check answers."""
        if self.containerd is None:
            raise RuntimeError("containerd is not running")
        t0 = time.perf_counter()
        config = self.root / "kubelet-config.yaml"
        config.write_text(json.dumps(self._kubelet_config(), indent=1))
        for hierarchy in self._hierarchies():
            path = hierarchy / self.cgroup
            path.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":  # a new cpuset is empty until given its parent's CPUs and nodes
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (path / f).write_text((hierarchy / f).read_text())
        log = self.logs / "kubelet.log"
        credential = [f"--kubeconfig={self.kubeconfig}"]
        if self.bootstrap:
            credential = [f"--bootstrap-kubeconfig={self.kubeconfig}",
                          "--kubeconfig=/var/lib/kubelet/kubeconfig", "--cert-dir=/var/lib/kubelet/pki"]
        self.kubelet = procs.start(
            ["nsenter", f"--target={self.containerd.pid}", "--mount", "--",
             str(self.kubelet_exe), f"--config={config}", *credential,
             f"--hostname-override={self.name}", f"--node-ip={self.node_ip}", "--root-dir=/var/lib/kubelet",
             "--v=2"],
            log=log)
        if not wait_healthy:
            return
        procs.wait_for(lambda: self._kubelet_healthy(log), timeout=timeout, interval=0.05,
                       what="the kubelet's /healthz")
        self.startup_seconds["kubelet"] = time.perf_counter() - t0

    def stop_kubelet(self) -> None:
        if self.kubelet is not None:
            procs.stop(self.kubelet)
            self.kubelet = None

    def stop(self) -> None:
        """Everything the node started, whatever state it is in; safe to call twice."""
        self.stop_kubelet()
        self._kill_cgroup_processes()
        self._kill_shims()
        if self.containerd is not None:
            procs.stop(self.containerd)
            self.containerd = None
        self._remove_cgroups()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)

    # ------------------------------------------------------------ tools
    def ctr(self, *args: str, timeout: float = 60.0) -> str:
        """``ctr`` against this node's containerd, in the Kubernetes namespace; its stdout."""
        run = subprocess.run(
            ["nsenter", f"--target={self._ns_pid()}", "--mount", "--", "ctr",
             f"--address={self.containerd_sock}", "--namespace=k8s.io", *args],
            capture_output=True, text=True, timeout=timeout, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {run.stderr.strip()}")
        return run.stdout

    def running_containers(self) -> list[str]:
        """IDs of the containers (sandboxes included) whose task is RUNNING in containerd."""
        out = self.ctr("tasks", "list")
        return [line.split()[0] for line in out.splitlines()[1:] if line.split()[-1:] == ["RUNNING"]]

    def container_pids(self) -> list[int]:
        """Every process in the node's pod cgroups (the containers' and the sandboxes')."""
        pids: set[int] = set()
        for hierarchy in self._hierarchies(("pids", "memory")):
            for procs_file in (hierarchy / self.cgroup).rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs_file.read_text().split())
        return sorted(pids)

    # ------------------------------------------------------------ internals
    def _ns_pid(self) -> int:
        if self.containerd is None:
            raise RuntimeError("containerd is not running")
        return self.containerd.pid

    def _namespace_script(self) -> str:
        """The new mount namespace's first process: the mounts, then exec containerd ($1 exe, $2 config)."""
        r = self.root
        binds = "\n".join(
            f"mount --bind {r / 'sysctl' / k.replace('/', '.')} /proc/sys/{k}" for k in _SYSCTLS)
        return f"""
mount -t tmpfs -o mode=0755 edgeagent-run /run
mount -t tmpfs -o mode=0755 edgeagent-log /var/log
mkdir -p /var/log/containers /var/log/pods
mount -t tmpfs -o mode=0755 edgeagent-lib /var/lib
mkdir -p /var/lib/kubelet
mount --bind {r / 'kubelet'} /var/lib/kubelet
{binds}
exec "$1" --config "$2"
"""

    def _containerd_config(self, sandbox_image: str, cni_bin: Path) -> str:
        r = self.root
        return f"""version = 2
root = "{r / 'containerd/root'}"
state = "{r / 'containerd/state'}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{self.containerd_sock}"
[ttrpc]
  address = "{r / 'containerd/containerd.sock.ttrpc'}"
[debug]
  level = "warn"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{r / 'containerd/runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{r / 'cni/conf'}"
"""

    def _cni_config(self) -> dict[str, object]:
        hosts = list(self.subnet.hosts())
        return {
            "cniVersion": "1.0.0", "name": "edgeagent-node",
            "plugins": [{
                "type": "bridge", "bridge": self.bridge, "isGateway": False, "ipMasq": False,
                "ipam": {"type": "host-local", "dataDir": str(self.root / "cni/data"),
                         "ranges": [[{"subnet": str(self.subnet), "rangeStart": str(hosts[9]),
                                      "rangeEnd": str(hosts[-1])}]]},
            }, {"type": "loopback"}],
        }

    def _kubelet_config(self) -> dict[str, object]:
        """The device's shipped configuration (etc/kubelet-config.yaml, so the kubelet checks it: it refuses
        unknown fields) with what a node inside a test needs on top."""
        import yaml

        from edgeagent.testbed.device import SOURCE_TREE

        shipped = yaml.safe_load((SOURCE_TREE / "etc" / "kubelet-config.yaml").read_text())
        return shipped | {
            "address": self.node_ip, "port": self.kubelet_port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.healthz_port,
            "authentication": shipped["authentication"] | {"x509": {"clientCAFile": str(self.cluster_ca)}},
            "containerRuntimeEndpoint": f"unix://{self.containerd_sock}",
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{self.cgroup}", "failCgroupV1": False,
            "failSwapOn": False, "makeIPTablesUtilChains": False, "protectKernelDefaults": False,
            "nodeStatusUpdateFrequency": "1s", "nodeStatusReportFrequency": "1s", "syncFrequency": "5s",
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "0%", "imagefs.available": "0%",
                             "nodefs.inodesFree": "0%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "podLogsDir": str(self.root / "pod-logs"), "resolvConf": "", "staticPodPath": "",
            # Only to show that the kubelet's own CSR flow is refused (the shipped file turns it off).
            "rotateCertificates": self.bootstrap,
        }

    def _hierarchies(self, names: tuple[str, ...] | None = None) -> list[Path]:
        wanted = names or ("cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer",
                           "systemd", "hugetlb", "net_cls", "net_prio", "perf_event")
        return [CGROUP_ROOT / n for n in wanted if (CGROUP_ROOT / n / "cgroup.procs").exists()]

    def _containerd_ready(self) -> bool:
        if self.containerd is not None and self.containerd.poll() is not None:
            log = self.logs / "containerd.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise RuntimeError(f"containerd exited with {self.containerd.returncode}:\n{tail}")
        return self.containerd_sock.exists()

    def _kubelet_healthy(self, log: Path) -> bool:
        import urllib.error
        import urllib.request

        if self.kubelet is not None and self.kubelet.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"kubelet exited with {self.kubelet.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.healthz_port}/healthz", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start_network(self) -> None:
        """The node's bridge with its address (the node IP); `start` does it first."""
        for cmd in (["ip", "link", "add", self.bridge, "type", "bridge"],
                    ["ip", "addr", "add", f"{self.node_ip}/{self.subnet.prefixlen}", "dev", self.bridge],
                    ["ip", "link", "set", self.bridge, "up"]):
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if run.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)}: {run.stderr.strip()}")

    def _kill_cgroup_processes(self) -> None:
        for _ in range(50):
            pids = self.container_pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def _kill_shims(self) -> None:
        """containerd-shim-runc-v2 processes of this node (they leave containerd's session by design)."""
        marker = str(self.containerd_sock).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if b"containerd-shim" in cmdline and marker in cmdline:
                    os.kill(int(proc.name), signal.SIGKILL)

    def _remove_cgroups(self) -> None:
        for hierarchy in self._hierarchies():
            top = hierarchy / self.cgroup
            if not top.exists():
                continue
            subdirs = (p for p in top.rglob("*") if p.is_dir())
            for d in sorted(subdirs, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
