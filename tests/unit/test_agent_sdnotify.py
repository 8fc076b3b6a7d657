"""sdnotify against a real AF_UNIX datagram listener (a path in a tmp dir, and an abstract name), the way
systemd receives them: the exact bytes of each datagram are checked."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeagent.agent import sdnotify


class Listener:
    """A bound SOCK_DGRAM socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket

    def receive(self) -> bytes:
        self.sock.settimeout(5.0)  # a deadline for a datagram that must already be queued, not a timing check
        return self.sock.recv(4096)

    def empty(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        return False


@pytest.fixture
def path_listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield Listener(sock, str(path))


@pytest.fixture
def abstract_listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    name = f"edgeagent-test-{os.getpid()}-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield Listener(sock, "@" + name)


def test_ready_status_stopping_watchdog_are_exact_datagrams(path_listener: Listener) -> None:
    assert sdnotify.ready() is True
    assert path_listener.receive() == b"READY=1"
    assert sdnotify.ready("serving attestation on :9002")
    assert path_listener.receive() == b"READY=1\nSTATUS=serving attestation on :9002"
    assert sdnotify.status("enrolling\nwaiting for the payload")
    assert path_listener.receive() == b"STATUS=enrolling waiting for the payload"
    assert sdnotify.stopping()
    assert path_listener.receive() == b"STOPPING=1"
    assert sdnotify.watchdog()
    assert path_listener.receive() == b"WATCHDOG=1"
    assert path_listener.empty()


def test_abstract_socket_name(abstract_listener: Listener) -> None:
    assert sdnotify.ready("up")
    assert abstract_listener.receive() == b"READY=1\nSTATUS=up"


def test_reloading_carries_the_monotonic_clock_in_usec(path_listener: Listener) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = path_listener.receive().split(b"\n")
    assert lines[0] == b"RELOADING=1"
    assert len(lines) == 2 and lines[1].startswith(b"MONOTONIC_USEC=")
    assert before <= int(lines[1].removeprefix(b"MONOTONIC_USEC=")) <= after


def test_any_thread_may_notify(path_listener: Listener) -> None:
    t = threading.Thread(target=sdnotify.watchdog)
    t.start()
    t.join()
    assert path_listener.receive() == b"WATCHDOG=1"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False


@pytest.mark.parametrize("value", ["relative/sock", "@", "vsock:2:1234"])
def test_malformed_socket_is_one_clear_error(value: str) -> None:
    with pytest.raises(sdnotify.NotifyError, match="NOTIFY_SOCKET"):
        sdnotify.ready(env={"NOTIFY_SOCKET": value})


def test_unreachable_socket_raises(tmp_path: Path) -> None:
    with pytest.raises(sdnotify.NotifyError, match=r"cannot notify systemd at .*gone"):
        sdnotify.ready(env={"NOTIFY_SOCKET": str(tmp_path / "gone")})


def test_an_assignment_cannot_smuggle_a_second_line(path_listener: Listener) -> None:
    with pytest.raises(sdnotify.NotifyError, match="one KEY=VALUE line"):
        sdnotify.notify("STATUS=x\nREADY=1")
    with pytest.raises(sdnotify.NotifyError):
        sdnotify.notify("READY")
    assert path_listener.empty()


def test_watchdog_interval_is_half_the_timeout_for_this_process() -> None:
    pid = str(os.getpid())
    assert sdnotify.watchdog_timeout(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 30.0
    assert sdnotify.watchdog_interval(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 15.0
    # WATCHDOG_PID is optional (older systemd, or a manager that does not set it).
    assert sdnotify.watchdog_interval(env={"WATCHDOG_USEC": "2000000"}) == 1.0


def test_no_watchdog_when_unset_or_meant_for_another_process() -> None:
    assert sdnotify.watchdog_interval(env={}) is None
    assert sdnotify.watchdog_timeout(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None


@pytest.mark.parametrize(
    "env",
    [{"WATCHDOG_USEC": "soon"}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "5", "WATCHDOG_PID": "me"}],
)
def test_bad_watchdog_variables_are_one_clear_error(env: dict[str, str]) -> None:
    with pytest.raises(sdnotify.NotifyError, match="WATCHDOG_"):
        sdnotify.watchdog_interval(env=env)
