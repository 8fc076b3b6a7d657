"""`edgeagent bench agent`: what the one on-device service costs, against the processes it replaced.

One run, everything real on loopback, set up as `make run` does (scripts/run-embedded.py): a software TPM,
stock Keylime (verifier + registrar, quoting every ``quote_interval``), etcd + kube-apiserver +
kube-controller-manager and the attestation controller. The device is enrolled once, by the agent itself;
every later process resumes that enrollment (same state directory, same AK, same credential).

Measured, each a case of the report:

- Memory (RSS and PSS from /proc/PID/smaps_rollup, summed over the process tree; a few samples spread over
  the window, the median reported) and idle CPU (utime+stime from /proc/PID/stat, as % of one core) of
  (a) `edgeagent agent` attesting and running three simulated sensor drivers at 1 Hz, and (b) the same plus
  20 controllers (node-labeler, each watching ConfigMaps with its own selector), measured once all are
  swapped to disk.
- The same work as separate processes, as before the agent existed (`edgeagent enroll` resuming and serving,
  one `edgeagent run-driver` per driver, and for (b) `edgeagent controllers run`): (1a) and (1b). They run
  only while the agent is stopped: a software TPM serves one client at a time.
- The floor: a bare interpreter that imports only what the agent cannot do without (tpm2_pytss, wasmtime,
  cryptography.x509, ssl) and sleeps. Targets are "floor + 6 MiB" for (a) and "floor + 14 MiB" for (b): the
  "(a) - floor" and "(b) - floor" cases carry them (each sample minus the floor's median).
- Start -> READY=1 with an existing enrollment (Popen -> the datagram on a NOTIFY_SOCKET this benchmark
  binds, as systemd's ``Type=notify`` sees it), through the console script systemd runs and through the
  lean service process alone; and SIGKILL -> a new process -> READY=1 (systemd's ``Restart=``).

(a) and (b) share one configuration file so that the measured files (PCR 23, which the verifier pins on first
use) never change: (a) points ``controllers.dir`` at an empty directory through EDGEAGENT_CONTROLLERS_DIR,
which measures nothing new. Every start is checked to have measured nothing new.

Threads: the caller's runs the benchmark; a ``bench-notify`` thread receives the notify datagrams (the agent
pings the watchdog every second once NOTIFY_SOCKET is set, and a full socket would block its main loop); the
attestation controller runs its own threads in this process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import edgeagent
from edgeagent.bench.controllers import process_tree
from edgeagent.bench.harness import Case, Report
from edgeagent.config import AgentConfig
from edgeagent.errors import EdgeAgentError
from edgeagent.testbed import device
from edgeagent.testbed.agent_process import AgentProcess, NotifyListener, edgeagent_command, wait_until
from edgeagent.testbed.cluster_side import pin_device

MiB = 1 << 20
DRIVERS = ("bme280", "hts221", "tmp102")
N_CONTROLLERS = 20
NAMESPACE = "edgeagent-bench"
WINDOW = 20.0  # seconds of idle measurement per variant
TARGET_A_MIB = 6.0
TARGET_B_MIB = 14.0
TARGET_CPU_PCT = 1.0
TARGET_READY_S = 1.0
FLOOR_IMPORTS = ("tpm2_pytss", "wasmtime", "cryptography.x509", "ssl")
# What the agent imports, cumulatively, for the import breakdown in the report's meta: the floor's modules,
# then the agent's own in the order the running service loads them (at start, or lazily by its parts).
IMPORT_STEPS = (
    ("ssl", "import ssl"),
    ("cryptography.x509", "import cryptography.x509"),
    ("tpm2_pytss", "import tpm2_pytss"),
    ("wasmtime", "import wasmtime"),
    ("edgeagent.agent.supervisor", "import edgeagent.agent.supervisor"),
    ("edgeagent.tpm.connection", "import edgeagent.tpm.connection"),
    ("edgeagent.measure.measurer", "import edgeagent.measure.measurer"),
    ("edgeagent.attest.enroll", "import edgeagent.attest.enroll"),
    ("edgeagent.drivers.loader", "import edgeagent.drivers.loader"),
    ("edgeagent.controllers.host", "import edgeagent.controllers.host"),
    ("edgeagent.kube.api", "import edgeagent.kube.api"),
    ("yaml (kubeconfig parsing)", "import yaml"),
    ("edgeagent.agent.metrics (prometheus_client)", "import edgeagent.agent.metrics"),
    ("kubernetes.client (for comparison: the agent does not import it)", "import kubernetes.client"),
)
# The agent's own modules on the (a) path, for the "imports only" process of the memory breakdown.
AGENT_IMPORTS = (
    *FLOOR_IMPORTS,
    "edgeagent.agent.supervisor",
    "edgeagent.measure.measurer",
    "edgeagent.attest.enroll",
    "edgeagent.drivers.session",
    "edgeagent.drivers.bundled",
    "edgeagent.controllers.measured",
    "edgeagent.agent.metrics",
    "prometheus_client.exposition",
)


# ---------------------------------------------------------------------------------------------- /proc
def _tree(roots: list[int]) -> list[int]:
    return [p for r in roots for p in process_tree(r)]


def memory(roots: list[int]) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over ``roots`` and their descendants (smaps_rollup)."""
    rss = pss = 0
    for pid in _tree(roots):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


def cpu_seconds(roots: list[int]) -> float:
    """utime + stime of ``roots`` and their descendants (dead threads included: /proc/PID/stat sums them)."""
    ticks = 0
    for pid in _tree(roots):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
    return ticks / os.sysconf("SC_CLK_TCK")


def kinds(roots: list[int]) -> dict[str, float]:
    """Where the resident memory is (MiB, summed over the tree): anonymous (heap, Python objects, stacks,
    Wasm memories) against file-backed (library code and data the process has touched: clean pages the
    kernel can drop and read back, shared with any process that maps the same file)."""
    keys = {"Rss": "rss", "Anonymous": "anonymous", "Pss_Anon": "pss_anon", "Pss_File": "pss_file"}
    out = dict.fromkeys(keys.values(), 0.0)
    for pid in _tree(roots):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    name, _, rest = line.partition(":")
                    if name in keys:
                        out[keys[name]] += int(rest.split()[0]) * 1024 / MiB
        except OSError:
            continue
    out["file"] = out["rss"] - out["anonymous"]
    return {k: round(v, 2) for k, v in out.items()}


@dataclasses.dataclass
class Window:
    rss: list[float]  # MiB per sample
    pss: list[float]
    cpu: list[float]  # % of one core per sub-window
    cpu_total: float  # % of one core over the whole window
    load: tuple[float, float]  # 1-minute load average before and after
    kinds: dict[str, float] = dataclasses.field(default_factory=dict)  # at the window's end (see kinds())


def measure_window(roots: list[int], *, window: float, samples: int, parts: int) -> Window:
    """Memory ``samples`` times spread over ``window`` seconds, CPU over ``parts`` equal sub-windows."""
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    events = sorted(
        [(window * (i + 0.5) / samples, "mem") for i in range(samples)]
        + [(window * (j + 1) / parts, "cpu") for j in range(parts)]
    )
    rss: list[float] = []
    pss: list[float] = []
    cpu: list[float] = []
    c_start = c_last = cpu_seconds(roots)
    t_last = time.monotonic()
    for at, kind in events:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if kind == "mem":
            r, p = memory(roots)
            rss.append(r / MiB)
            pss.append(p / MiB)
        else:
            c, t = cpu_seconds(roots), time.monotonic()
            cpu.append(100.0 * (c - c_last) / (t - t_last))
            c_last, t_last = c, t
    total = 100.0 * (c_last - c_start) / (t_last - t0)
    return Window(rss, pss, cpu, total, (load0, os.getloadavg()[0]), kinds(roots))


# ---------------------------------------------------------------------------------------------- processes
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEAGENT_") and k != "NOTIFY_SOCKET"}
    env.update(extra)
    return env


def _spawn(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Signals ``proc``, waits, then kills its group (whatever it left behind)."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


class Agent(AgentProcess):
    """The agent with NOTIFY_SOCKET pointing at the benchmark's listener, timed to its READY=1."""

    def __init__(self, cfg: Path, sock: Path, log: Path, notify: NotifyListener) -> None:
        super().__init__(cfg, sock, log, env={"NOTIFY_SOCKET": str(notify.path)})
        self.notify = notify
        self.started_at = 0.0

    def start(self, *, lean: bool = False, env: dict[str, str] | None = None) -> Agent:
        self.started_at = time.monotonic()
        super().start(lean=lean, env=env)
        return self

    def wait_steady(self) -> None:
        """Until the agent's first heap trim after its start (supervisor.TRIM_AFTER_START) has run: the
        memory of an agent that has been up a while, not its start-up peak."""
        from edgeagent.agent.supervisor import TRIM_AFTER_START

        delay = self.started_at + TRIM_AFTER_START + 2.0 - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def start_timed(
        self, *, lean: bool = False, env: dict[str, str] | None = None, timeout: float = 60.0
    ) -> float:
        """Spawns the agent; seconds from Popen to its READY=1 datagram."""
        mark = self.notify.mark()
        t0 = time.perf_counter()
        self.start(lean=lean, env=env)
        try:
            at, _ = self.notify.wait("READY=1", after=mark, timeout=timeout, proc=self.proc)
        except EdgeAgentError as e:
            raise EdgeAgentError(f"{e}; agent log: {self.log}") from None
        return at - t0

    def sigkill_restart(self, *, timeout: float = 60.0) -> float:
        """SIGKILL, then at once a new process; seconds from the kill to the new one's READY=1."""
        old = self.proc
        assert old is not None
        mark = self.notify.mark()
        t0 = time.perf_counter()
        os.kill(old.pid, signal.SIGKILL)
        self.start()
        try:
            at, _ = self.notify.wait("READY=1", after=mark, timeout=timeout, proc=self.proc)
            return at - t0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(old.pid, signal.SIGKILL)
            old.wait(10)


# ---------------------------------------------------------------------------------------------- staging
def _source_root() -> Path:
    return Path(edgeagent.__file__).resolve().parent.parent


def stage(root: Path, node: str) -> tuple[Path, Path, Path]:
    """Driver modules, their policies, and 20 controllers (one node-labeler module, 20 manifests)."""
    manifests = {
        f"labeler-{i:02d}": device.labeler_manifest(
            f"labeler-{i:02d}",
            node,
            namespace=NAMESPACE,
            selector=f"edgeagent.io/bench-labels-{i:02d}=true",
            prefix=f"bench-{i:02d}.edgeagent.io/",
        )
        for i in range(N_CONTROLLERS)
    }
    return (
        device.stage_drivers(root / "drivers", DRIVERS),
        device.stage_policies(root / "policies"),
        device.stage_labelers(root / "controllers", manifests),
    )


def write_config(root: Path, node: str, tcti: str, keylime: Any, port: int, metrics_port: int) -> Path:
    drivers, policies, controllers = stage(root, node)
    return device.agent_config(
        root / "agent.toml",
        {
            "": {"state_dir": str(root / "state"), "policies_dir": str(policies), "tpm_tcti": tcti},
            "measure": {"firmware_log": str(root / "no-firmware-log")},
            "drivers": {"modules_dir": str(drivers)},
            "controllers": {"dir": str(controllers)},
            "enroll": device.enroll_section(
                root,
                keylime,
                port=port,
                node=node,
                agent_uuid=f"{node}-agent",
                retry_timeout=60,
                certificate_timeout=120,
            ),
            "agent": {
                "socket": str(root / "agent.sock"),
                "metrics_port": metrics_port,
                "restart_backoff": 0.5,
                "restart_backoff_max": 5.0,
            },
        },
        [{"name": d, "driver": d, "interval": 1.0, "sim": "true"} for d in DRIVERS],
        comment="edgeagent bench agent: the device's configuration, pointed at the loopback testbed",
    )


# ---------------------------------------------------------------------------------------------- floor
def _floor_code(imports: tuple[str, ...], work: str = "") -> str:
    return f"import {', '.join(imports)}, sys, time\n{work}\nprint('ready', flush=True); time.sleep(3600)"


# The floor doing the least any such agent does with those libraries, so that the code pages they run are
# resident in it too (the plain floor only maps them): a wasmtime Engine configured as the agent's, one
# serialized module deserialized, instantiated with a host function and called; an EC key, a self-signed
# certificate and one TLS 1.3 handshake over loopback. No TPM command: the only TPM is the agent's.
WORK_WAT = """(module (import "h" "f" (func $f (param i32) (result i32))) (memory (export "memory") 1)
  (func (export "run") (param i32) (result i32) (call $f (local.get 0))))"""


def _engine_config_code() -> str:
    return (
        "cfg = wasmtime.Config(); cfg.epoch_interruption = True; cfg.memory_may_move = False\n"
        "cfg.memory_reservation = 1 << 32; cfg.cranelift_opt_level = 'speed'\n"
        "engine = wasmtime.Engine(cfg)\n"
    )


def serialized_work_module(path: Path) -> Path:
    """WORK_WAT compiled by an engine configured as the agent's, serialized (the agent loads its drivers so,
    from its module cache): the working floor deserializes it and never runs the compiler."""
    import wasmtime

    scope: dict[str, Any] = {"wasmtime": wasmtime}
    exec(_engine_config_code(), scope)  # our own constant code, shared with the floor process
    path.write_bytes(wasmtime.Module(scope["engine"], bytes(wasmtime.wat2wasm(WORK_WAT))).serialize())
    return path


def _work_code(cwasm: Path) -> str:
    return _engine_config_code() + f"""
import socket, ssl, tempfile, threading, datetime, os, ipaddress
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
module = wasmtime.Module.deserialize(engine, open({str(cwasm)!r}, 'rb').read())
store = wasmtime.Store(engine); store.set_epoch_deadline(1000)
ty = wasmtime.FuncType([wasmtime.ValType.i32()], [wasmtime.ValType.i32()])
inst = wasmtime.Instance(store, module, [wasmtime.Func(store, ty, lambda x: x + 1)])
assert inst.exports(store)['run'](store, 1) == 2
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, '127.0.0.1')])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
    .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]), False)
    .sign(key, hashes.SHA256()))
d = tempfile.mkdtemp()
open(os.path.join(d, 'c.pem'), 'wb').write(cert.public_bytes(serialization.Encoding.PEM))
open(os.path.join(d, 'k.pem'), 'wb').write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server.load_cert_chain(os.path.join(d, 'c.pem'), os.path.join(d, 'k.pem'))
client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); client.load_verify_locations(os.path.join(d, 'c.pem'))
lsock = socket.create_server(('127.0.0.1', 0))
def serve():
    conn, _ = lsock.accept()
    with server.wrap_socket(conn, server_side=True) as s:
        s.sendall(s.recv(5))
t = threading.Thread(target=serve); t.start()
with client.wrap_socket(socket.create_connection(lsock.getsockname()), server_hostname='127.0.0.1') as c:
    c.sendall(b'hello'); assert c.recv(5) == b'hello'
t.join(); lsock.close()
for f in os.listdir(d): os.unlink(os.path.join(d, f))
os.rmdir(d)
"""


def measure_floor(
    *, samples: int, imports: tuple[str, ...] = FLOOR_IMPORTS, work: str = ""
) -> tuple[list[float], list[float], dict[str, float]]:
    """RSS and PSS (MiB) of a sleeping interpreter that imported only ``imports`` (the floor's modules by
    default) and ran ``work`` (see _work_code), and its kinds() at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _floor_code(imports, work)], stdout=subprocess.PIPE, env=_env()
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise EdgeAgentError("the floor process did not start")
        time.sleep(0.5)
        rss, pss = [], []
        for _ in range(samples):
            r, p = memory([proc.pid])
            rss.append(r / MiB)
            pss.append(p / MiB)
            time.sleep(0.1)
        return rss, pss, kinds([proc.pid])
    finally:
        proc.kill()
        proc.wait()


def import_breakdown() -> list[dict[str, Any]]:
    """RSS of a fresh interpreter after each of IMPORT_STEPS, cumulatively: where the agent's memory goes."""
    code = (
        "import json, sys\n"
        "def rss():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmRSS:'): return int(line.split()[1]) * 1024\n"
        "out = [('python', rss())]\n"
        f"for label, stmt in {list(IMPORT_STEPS)!r}:\n"
        "    try:\n"
        "        exec(stmt)\n"
        "    except ImportError as e:\n"
        "        out.append((label + ' (not importable: ' + str(e) + ')', rss())); continue\n"
        "    out.append((label, rss()))\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120, check=False
    )
    if res.returncode != 0:
        return [{"error": res.stderr.strip().splitlines()[-1:] or ["?"]}]
    steps = json.loads(res.stdout)
    out, prev = [], 0
    for label, rss in steps:
        added = round((rss - prev) / MiB, 2)
        out.append({"import": label, "rss_mib": round(rss / MiB, 2), "added_mib": added})
        prev = rss
    return out


# ---------------------------------------------------------------------------------------------- run
def run(config: AgentConfig, *, repeat: int, window: float = WINDOW) -> Report:
    """``window``: seconds of idle measurement per variant (the smoke test passes a short one)."""
    from edgeagent.testbed import procs
    from edgeagent.testbed.cluster_side import ClusterSide
    from edgeagent.tpm import Tpm
    from edgeagent.tpm import identity as tpm_identity
    from edgeagent.tpm.swtpm import SoftwareTpm

    samples = max(3, min(repeat, 10))  # memory samples per window
    parts = max(1, min(samples, 4))  # CPU sub-windows per window
    n_start = max(3, min(repeat, 8))
    n_kill = max(3, min(repeat, 5))
    report = Report("agent")
    report.meta.update(
        {
            "load_before": os.getloadavg(),
            "python": platform.python_version(),
            "wasmtime": importlib.metadata.version("wasmtime"),
            "window_s": window,
            "memory_samples_per_window": samples,
            "cpu_subwindows": parts,
            "drivers": list(DRIVERS),
            "controllers": N_CONTROLLERS,
        }
    )
    mem: dict[str, Window] = {}
    ready: dict[str, list[float]] = {"cli": [], "lean": [], "kill": []}
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeagent-bench-agent-")))
        template = SoftwareTpm(root / "swtpm-template").setup()
        tpm = template.clone(root / "swtpm").start()
        stack.callback(tpm.stop)
        with Tpm.open(tpm.tcti) as t:
            ek_cert = tpm_identity.load_ek(t).cert
        if ek_cert is None:
            raise EdgeAgentError("the software TPM has no EK certificate")
        side = stack.enter_context(ClusterSide(root, [template.ca_cert]))
        keylime, api = side.keylime, side.api
        report.meta["quote_interval_s"] = keylime.settings.quote_interval
        report.meta["startup_s"] = side.startup_seconds

        node = f"bench-agent-{uuidlib.uuid4().hex[:6]}"
        port = procs.free_port()
        _operator(api, node, ek_cert, port)
        stack.callback(lambda: keylime.tenant("-c", "delete", "-u", f"{node}-agent"))
        stack.callback(lambda: keylime.tenant("-c", "regdelete", "-u", f"{node}-agent"))
        cfg = write_config(root, node, tpm.tcti, keylime, port, procs.free_port())
        empty = root / "no-controllers"
        empty.mkdir()
        notify = NotifyListener(root / "notify.sock")
        stack.callback(notify.close)
        agent = Agent(cfg, root / "agent.sock", root / "agent.log", notify)
        stack.callback(agent.stop)

        # enrolled once: register, attested, credential; controllers up and swapped
        t0 = time.monotonic()
        agent.start_timed(timeout=120)
        agent.wait_status(
            lambda s: s["attestation"].get("credential_expiry"), timeout=180, what="the node credential"
        )
        report.meta["enroll_s"] = round(time.monotonic() - t0, 2)
        agent.stop()

        # start -> READY, with the enrollment on disk: the console script, and the lean process alone
        for _ in range(n_start):
            for kind in ("cli", "lean"):
                ready[kind].append(agent.start_timed(lean=kind == "lean"))
                _check_nothing_new(agent)
                agent.stop()

        # SIGKILL -> restart -> READY (what systemd's Restart= gives); the last one runs on as (b)
        agent.start_timed()
        for _ in range(n_kill):
            _check_nothing_new(agent)
            _settle_agent(agent, controllers=None)  # killed while running, not while starting
            ready["kill"].append(agent.sigkill_restart())
        _settle_agent(agent, controllers=N_CONTROLLERS)
        agent.wait_steady()
        mem["b"] = measure_window([agent.pid], window=window, samples=samples, parts=parts)
        _check_attested(agent)
        agent.stop()

        # (a): no controllers (an empty controllers dir: nothing new to measure)
        agent.start_timed(env={"EDGEAGENT_CONTROLLERS_DIR": str(empty)})
        _check_nothing_new(agent)
        _settle_agent(agent, controllers=0)
        agent.wait_steady()
        mem["a"] = measure_window([agent.pid], window=window, samples=samples, parts=parts)
        _check_attested(agent)
        agent.stop()

        # (1a) and (1b): the same work as separate processes, as before the agent existed
        mem.update(_separate_processes(root, cfg, window=window, samples=samples, parts=parts))
        floor_rss, floor_pss, floor_kinds = measure_floor(samples=samples)
        work = _work_code(serialized_work_module(root / "floor-work.cwasm"))
        working_rss, working_pss, working_kinds = measure_floor(samples=samples, work=work)
        _, _, imports_kinds = measure_floor(samples=1, imports=AGENT_IMPORTS)
        report.meta["memory_kinds_mib"] = {
            "floor": floor_kinds,
            "working floor": working_kinds,
            "imports only (the agent's modules, nothing run)": imports_kinds,
            **{k: w.kinds for k, w in mem.items()},
        }
        report.meta["imports"] = import_breakdown()
        report.meta["load_during"] = {k: w.load for k, w in mem.items()}
        report.meta["cpu_whole_window_pct"] = {k: round(w.cpu_total, 3) for k, w in mem.items()}
    report.meta["load_after"] = os.getloadavg()
    _cases(report, mem, floor_rss, floor_pss, ready)
    _working_floor_cases(report, mem, working_rss, working_pss)
    return report


def _working_floor_cases(
    report: Report, mem: dict[str, Window], working_rss: list[float], working_pss: list[float]
) -> None:
    """What the agent adds over the working floor (the floor that also ran its libraries once): the part of
    the memory the agent's own design decides. No target of the issue is attached to these."""
    name = "working floor: the floor + one Wasm instance called + one TLS handshake"
    report.add(Case(f"{name}, RSS", working_rss, unit="MiB"))
    report.add(Case(f"{name}, PSS", working_pss, unit="MiB"))
    for key, label in (("a", "(a) agent"), ("b", f"(b) agent + {N_CONTROLLERS} controllers")):
        for kind, values, fl in (("RSS", mem[key].rss, working_rss), ("PSS", mem[key].pss, working_pss)):
            report.add(_minus(f"{label} - working floor, {kind}", values, fl, f"the working floor's {kind}"))


def _minus(name: str, values: list[float], base: list[float], what: str, target: float | None = None) -> Case:
    """Each sample of ``values`` minus the median of ``base`` (MiB)."""
    m = statistics.median(base)
    return Case(name, [v - m for v in values], unit="MiB", target=target,
                note=f"each sample minus {what} median ({m:.2f} MiB)")


def _operator(api: Any, node: str, ek_cert: bytes, port: int) -> None:
    """The cluster side as an operator sets it up: the Node, the EdgeNode pinning the EK, a namespace."""
    from kubernetes import client as k8s

    pin_device(api, node, ek_cert=ek_cert, agent_uuid=f"{node}-agent", agent_address=f"127.0.0.1:{port}")
    with contextlib.suppress(k8s.exceptions.ApiException):
        k8s.CoreV1Api(api).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))


def _check_nothing_new(agent: Agent) -> None:
    """A start that measured a new file would change PCR 23 and get the device revoked: stop here instead."""
    s = agent.wait_status(lambda s: s["measure"]["state"] == "measured", timeout=30, what="the measurement")
    if s["measure"]["new"]:
        raise EdgeAgentError(f"bench agent: a start measured {s['measure']['new']} new files into PCR 23")


def _settle_agent(agent: Agent, *, controllers: int | None) -> None:
    """Serving, every driver reading, and every controller swapped to disk (None: controllers not checked)."""

    def settled(s: dict[str, Any]) -> bool:
        drivers_ok = len(s["drivers"]) == len(DRIVERS) and all(
            d["state"] == "running" and d["readings"] > 1 for d in s["drivers"]
        )
        ctl = s["controllers"].get("controllers", [])
        if controllers is None:
            ctl_ok = True
        elif controllers:
            ctl_ok = len(ctl) == controllers and all(c["state"] == "swapped" for c in ctl)
        else:
            ctl_ok = not ctl
        return bool(s["attestation"]["phase"] == "serving" and drivers_ok and ctl_ok)

    agent.wait_status(settled, timeout=120, what=f"drivers reading and {controllers} controllers swapped")


def _check_attested(agent: Agent) -> None:
    s = agent.try_status()
    if s is None or s["attestation"].get("revoked") or s["attestation"]["phase"] != "serving":
        raise EdgeAgentError(f"bench agent: the device is no longer attested: {s and s['attestation']}")


def _separate_processes(
    root: Path, cfg: Path, *, window: float, samples: int, parts: int
) -> dict[str, Window]:
    """`edgeagent enroll` (resuming: it skips to serving) + one `run-driver` per driver, then + `controllers
    run`; measured the way the agent is."""
    from edgeagent.controllers.host import host_alive, read_status

    base = [*edgeagent_command(), "--config", str(cfg)]
    logs = root / "separate"
    logs.mkdir()
    started: list[subprocess.Popen[bytes]] = []
    try:
        enroll = _spawn([*base, "enroll", "--json"], logs / "enroll.log", _env())
        started.append(enroll)

        def enrolled() -> bool:
            if enroll.poll() is not None:
                raise EdgeAgentError(f"`edgeagent enroll` exited with {enroll.returncode}; see {logs}")
            return '"ak_name"' in (logs / "enroll.log").read_text(errors="replace")

        wait_until(enrolled, timeout=120, what="`edgeagent enroll` to resume and serve")
        for d in DRIVERS:
            argv = [*base, "run-driver", d, "--sim", "--interval", "1", "--count", "100000000", "--json"]
            started.append(_spawn(argv, logs / f"{d}.log", _env()))

        def reading() -> bool:
            for p in started:
                if p.poll() is not None:
                    raise EdgeAgentError(f"a baseline process exited with {p.returncode}; see {logs}")
            return all(len((logs / f"{d}.log").read_bytes().splitlines()) >= 2 for d in DRIVERS)

        wait_until(reading, timeout=120, what="every run-driver to read")
        out = {"1a": measure_window([p.pid for p in started], window=window, samples=samples, parts=parts)}

        kubeconfig = root / "kubelet" / "kubeconfig"
        ctl = _spawn(
            [*base, "controllers", "run", str(root / "controllers"), "--kubeconfig", str(kubeconfig)],
            logs / "controllers.log",
            _env(),
        )
        started.append(ctl)
        state_dir = root / "state"

        def swapped() -> bool:
            if ctl.poll() is not None:
                raise EdgeAgentError(f"`edgeagent controllers run` exited with {ctl.returncode}; see {logs}")
            try:
                st = read_status(state_dir)
            except EdgeAgentError:
                return False
            c = st.get("controllers", [])
            return (
                host_alive(st)
                and st.get("pid") == ctl.pid
                and len(c) == N_CONTROLLERS
                and all(x["state"] == "swapped" for x in c)
            )

        wait_until(swapped, timeout=120, what="`controllers run` to swap its 20 controllers")
        out["1b"] = measure_window([p.pid for p in started], window=window, samples=samples, parts=parts)
        return out
    finally:
        for p in reversed(started):
            _stop(p)


def _cases(
    report: Report,
    mem: dict[str, Window],
    floor_rss: list[float],
    floor_pss: list[float],
    ready: dict[str, list[float]],
) -> None:
    label = {
        "a": "(a) agent: attesting + 3 drivers",
        "b": f"(b) agent: (a) + {N_CONTROLLERS} controllers swapped",
        "1a": "(1a) separate: enroll + 3 run-driver",
        "1b": "(1b) separate: (1a) + controllers run",
    }
    floor = {"RSS": "floor: python + " + "/".join(FLOOR_IMPORTS) + ", RSS", "PSS": ""}
    floor["PSS"] = floor["RSS"][: -len("RSS")] + "PSS"
    report.add(Case(floor["RSS"], floor_rss, unit="MiB"))
    report.add(Case(floor["PSS"], floor_pss, unit="MiB"))
    targets = {"a": TARGET_A_MIB, "b": TARGET_B_MIB}
    for key in ("a", "b"):
        w = mem[key]
        for kind, values, fl in (("RSS", w.rss, floor_rss), ("PSS", w.pss, floor_pss)):
            report.add(
                Case(
                    f"{label[key]}, {kind}",
                    values,
                    unit="MiB",
                    baseline=floor[kind],
                    note=f"target: floor + {targets[key]:g} MiB (the '- floor' case)",
                )
            )
            minus = _minus(f"{label[key]} - floor, {kind}", values, fl, f"the floor's {kind}", targets[key])
            report.add(minus)
    for key in ("1a", "1b"):
        w = mem[key]
        note = "RSS summed: pages the processes share are counted once per process"
        report.add(Case(f"{label[key]}, RSS", w.rss, unit="MiB", note=note))
        report.add(Case(f"{label[key]}, PSS", w.pss, unit="MiB"))
    for key, base in (("a", "1a"), ("b", "1b")):
        report.add(
            Case(
                f"{label[key]} vs {label[base][:4]}, PSS",
                mem[key].pss,
                unit="MiB",
                baseline=f"{label[base]}, PSS",
                note="one process against the separate processes doing the same work",
            )
        )
    for key in ("a", "b", "1a", "1b"):
        w = mem[key]
        report.add(
            Case(
                f"idle CPU {label[key]}",
                w.cpu,
                unit="%",
                target=TARGET_CPU_PCT if key in ("a", "b") else None,
                note=f"% of one core per sub-window; whole window {w.cpu_total:.3f} %",
            )
        )
    report.add(
        Case(
            "start -> READY=1 (edgeagent agent, enrolled)",
            ready["cli"],
            target=TARGET_READY_S,
            note="Popen of the console script systemd runs -> READY=1 datagram",
        )
    )
    report.add(
        Case(
            "start -> READY=1 (python -m edgeagent.agent)",
            ready["lean"],
            note="the service process alone, without the CLI that execs into it",
        )
    )
    report.add(
        Case(
            "SIGKILL -> new process -> READY=1",
            ready["kill"],
            target=TARGET_READY_S,
            note="kill -9, the console script spawned at once, its READY=1",
        )
    )
