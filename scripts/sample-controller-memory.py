"""Samples the memory of the attestation controller running as a pod on a test kubelet node (as root, while
tests/integration/node/test_chart.py runs): how the figure in the README's "Installing the cluster side" was
measured.

Every SECONDS it finds the controller's process (its command line names ``attestation-controller`` and
``--registrar-url``; its memory cgroup lies under the node's cgroup root ``/edgeagent-NODE``) and reads:
- RSS and PSS of the process (/proc/PID/status VmRSS, /proc/PID/smaps_rollup Pss);
- the container's working set, as the kubelet counts it: the memory cgroup's usage minus its inactive file
  pages (cgroup v1: memory.usage_in_bytes - total_inactive_file; v2: memory.current - inactive_file).
It prints one line per sample and, on SIGINT/SIGTERM or after --duration, the peak and the last of each.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def controller_pids(node: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        ours = f"/edgeagent-{node}/" in cgroups and b"attestation-controller" in cmd
        if ours and any(a.startswith(b"--registrar-url") for a in cmd):
            found.append(int(entry.name))
    return found


def memory_cgroup(pid: int) -> Path | None:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return CGROUP / "memory" / path.lstrip("/")
        if controllers == "" and not (CGROUP / "memory").exists():  # cgroup v2
            return CGROUP / path.lstrip("/")
    return None


def working_set(cg: Path) -> int:
    stat = dict(ln.split() for ln in (cg / "memory.stat").read_text().splitlines())
    if (cg / "memory.usage_in_bytes").exists():
        usage = int((cg / "memory.usage_in_bytes").read_text())
        inactive = int(stat.get("total_inactive_file", 0))
    else:
        usage = int((cg / "memory.current").read_text())
        inactive = int(stat.get("inactive_file", 0))
    return max(usage - inactive, 0)


def sample(pid: int, node: str) -> dict[str, int]:
    status = dict(
        ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in ln
    )
    out = {"rss": int(status["VmRSS"].split()[0]) * 1024}
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    if rollup.exists():
        for ln in rollup.read_text().splitlines():
            if ln.startswith("Pss:"):
                out["pss"] = int(ln.split()[1]) * 1024
    cg = memory_cgroup(pid)
    if cg is not None and f"/edgeagent-{node}/" in str(cg):  # not yet moved into its container's cgroup: skip
        out["working_set"] = working_set(cg)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--node", default="infra-node", help="the KubeletNode's name (test_chart: infra-node)")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=0.0, help="stop after this long (0: until signalled)")
    args = ap.parse_args()
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    peak: dict[str, int] = {}
    last: dict[str, int] = {}
    t0 = time.monotonic()
    while not stop and (not args.duration or time.monotonic() - t0 < args.duration):
        for pid in controller_pids(args.node):
            try:
                s = sample(pid, args.node)
            except (OSError, KeyError, ValueError):
                continue  # it exited between finding and reading
            last = s
            for k, v in s.items():
                peak[k] = max(peak.get(k, 0), v)
            mib = " ".join(f"{k}={v / 2**20:.1f}MiB" for k, v in s.items())
            print(f"{time.monotonic() - t0:7.1f}s pid {pid} {mib}", flush=True)
        time.sleep(args.seconds)
    for label, d in (("peak", peak), ("last", last)):
        print(label, " ".join(f"{k}={v / 2**20:.1f}MiB" for k, v in d.items()), flush=True)
    return 0 if peak else 1


if __name__ == "__main__":
    sys.exit(main() if os.geteuid() == 0 else "sample-controller-memory: run as root")
