"""A real NAT on this machine: a device network namespace behind a masquerading router namespace.

    host (cluster side)  PREFIXh0 10.213.97.1/30 ── PREFIXg0 10.213.97.2/30  [PREFIX-gw]
                                                     PREFIXg1 192.168.197.1/24 │ MASQUERADE out of PREFIXg0,
                                                                               │ FORWARD: inbound only for
                                                                               │ established connections
                                                     PREFIXd0 192.168.197.2/24  [PREFIX-dev]

The host gets a route to the device subnet through the router, so a connection attempt from the cluster side
really reaches the NAT and is dropped there (not merely "no route"). Forwarding is switched on inside the
router namespace only (``net.ipv4.ip_forward`` is per namespace); nothing on the host's own interfaces,
routes (beyond the one to the device subnet) or sysctls changes.

The cluster's services listen on the host's loopback; devices reach them as they would a cluster's public
endpoints, through `Relay`s: one in the device namespace on 127.0.0.1:PORT (so URLs and TLS names stay
127.0.0.1) that connects out, through the NAT, to one on the host at 10.213.97.1:PORT, which connects to
127.0.0.1:PORT. The host-side relay records the peers it accepted (the router's masqueraded address).

Threads: each relay has an accept thread (``relay-PORT``) and two copy threads per connection; the
device-side ones live in the device namespace (a thread enters it with setns(2); the threads it starts and the
processes it spawns inherit it). Requires root (iproute2, iptables).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from edgeagent.errors import ConfigError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000

HOST_IP = "10.213.97.1"
ROUTER_OUTER_IP = "10.213.97.2"
ROUTER_INNER_IP = "192.168.197.1"
DEVICE_IP = "192.168.197.2"
DEVICE_SUBNET = "192.168.197.0/24"


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise ConfigError(f"{cmd[0]} is not installed (iproute2/iptables)") from None
    if check and result.returncode != 0:
        raise ConfigError(f"{' '.join(cmd)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def enter(netns: str) -> None:
    """Moves the calling thread into network namespace ``netns`` (/run/netns/NAME)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Runs ``fn`` in a fresh thread inside ``netns`` and returns its result (or raises its exception).
    Threads and processes ``fn`` starts stay in the namespace."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            enter(netns)
            out["value"] = fn()
        except BaseException as e:  # handed to the caller
            out["error"] = e

    t = threading.Thread(target=target, name=f"in-{netns}", daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


class Nat:
    """The namespaces, veths and rules above; `up()` makes them (removing leftovers of a crashed run with
    the same prefix first), `down()` removes all of them."""

    def __init__(self, prefix: str = "push", *, outer: str = "10.213.97.0/30",
                 inner: str = DEVICE_SUBNET) -> None:
        """``outer``: the host-router link's /30 (host .1, router .2); ``inner``: the device subnet (router
        .1, device .2). The defaults are the module's constants; two Nats up at once (e.g. two test runs on
        one machine) need other prefixes and networks, since the host's address and route are per network."""
        self.prefix = prefix
        outer_net, inner_net = ipaddress.ip_network(outer), ipaddress.ip_network(inner)
        self.host_ip, self.router_outer_ip = str(outer_net[1]), str(outer_net[2])
        self.router_inner_ip, self.device_ip = str(inner_net[1]), str(inner_net[2])
        self.device_subnet, self.inner_len = str(inner_net), inner_net.prefixlen
        self.device_ns = f"{prefix}-dev"
        self.router_ns = f"{prefix}-gw"
        self.host_if, self.router_outer_if = f"{prefix}h0", f"{prefix}g0"
        self.router_inner_if, self.device_if = f"{prefix}g1", f"{prefix}d0"

    def up(self) -> Nat:
        self.down()
        ip = ("ip",)
        gw = ("ip", "netns", "exec", self.router_ns)
        dev = ("ip", "netns", "exec", self.device_ns)
        try:
            _run(*ip, "netns", "add", self.router_ns)
            _run(*ip, "netns", "add", self.device_ns)
            _run(*ip, "link", "add", self.host_if, "type", "veth", "peer", "name", self.router_outer_if)
            _run(*ip, "link", "set", self.router_outer_if, "netns", self.router_ns)
            _run(*ip, "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _run(*ip, "link", "set", self.host_if, "up")
            _run(*ip, "route", "add", self.device_subnet, "via", self.router_outer_ip, "dev", self.host_if)
            _run(*gw, "ip", "link", "add", self.router_inner_if, "type", "veth", "peer", "name",
                 self.device_if)
            _run(*gw, "ip", "link", "set", self.device_if, "netns", self.device_ns)
            _run(*gw, "ip", "addr", "add", f"{self.router_outer_ip}/30", "dev", self.router_outer_if)
            _run(*gw, "ip", "addr", "add", f"{self.router_inner_ip}/{self.inner_len}", "dev",
                 self.router_inner_if)
            for link in ("lo", self.router_outer_if, self.router_inner_if):
                _run(*gw, "ip", "link", "set", link, "up")
            _run(*gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            _run(*gw, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", self.router_outer_if,
                 "-j", "MASQUERADE")
            _run(*gw, "iptables", "-A", "FORWARD", "-i", self.router_outer_if, "-o", self.router_inner_if,
                 "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
            _run(*gw, "iptables", "-A", "FORWARD", "-i", self.router_outer_if, "-o", self.router_inner_if,
                 "-j", "DROP")
            _run(*dev, "ip", "addr", "add", f"{self.device_ip}/{self.inner_len}", "dev", self.device_if)
            for link in ("lo", self.device_if):
                _run(*dev, "ip", "link", "set", link, "up")
            _run(*dev, "ip", "route", "add", "default", "via", self.router_inner_ip)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        _run("ip", "route", "del", self.device_subnet, "dev", self.host_if, check=False)
        _run("ip", "link", "del", self.host_if, check=False)
        for ns in (self.device_ns, self.router_ns):
            _run("ip", "netns", "del", ns, check=False)

    def exec_prefix(self) -> list[str]:
        """Command prefix that runs a program inside the device namespace."""
        return ["ip", "netns", "exec", self.device_ns]

    def relay(self, port: int) -> tuple[Relay, Relay]:
        """Makes the host's 127.0.0.1:``port`` reachable from the device at its own 127.0.0.1:``port``,
        through the NAT. Returns (host side, device side); stop both."""
        host = Relay((self.host_ip, port), ("127.0.0.1", port)).start()
        device = in_netns(self.device_ns, lambda: Relay(("127.0.0.1", port), (self.host_ip, port)).start())
        return host, device

    def __enter__(self) -> Nat:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


class Relay:
    """A TCP relay: accepts on ``listen`` and copies both ways to a new connection to ``target``.

    `stop` frees ``listen`` at once (the next device of a test module relays the same ports): it shuts the
    listening socket down, which wakes the accept thread (a bare close leaves a thread blocked in accept(2)
    holding the socket, still listening), and closes every relayed connection (an accepted socket still
    open, e.g. one whose far end never closed, also keeps the address in use)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen, self.target = listen, target
        self.peers: list[str] = []
        """Addresses of the accepted clients, in order."""
        self._sock = socket.create_server(listen, reuse_port=False)
        self._stop = threading.Event()
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> Relay:
        self._thread = threading.Thread(target=self._accept, name=f"relay-{self.listen[1]}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self._sock.accept()
            except OSError:
                return
            self.peers.append(addr[0])
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            pair = _Pair(conn, upstream)
            with self._lock:
                self._pairs = [p for p in self._pairs if not p.closed] + [pair]
            if self._stop.is_set():
                pair.close()
                return
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=pair.copy, args=(a, b), daemon=True).start()


class _Pair:
    """Two sockets copied both ways; closed once both directions ended."""

    def __init__(self, a: socket.socket, b: socket.socket) -> None:
        self.sockets = (a, b)
        self.ended = 0
        self.closed = False
        self.lock = threading.Lock()

    def close(self) -> None:
        """Both sockets, now (the copy threads then end on their error)."""
        with self.lock:
            self.closed = True
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def copy(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with self.lock:
                self.ended += 1
                done = self.ended == 2
                self.closed = self.closed or done
            if done:
                for sock in self.sockets:
                    sock.close()
