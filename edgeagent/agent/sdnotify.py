"""The systemd notify protocol (sd_notify(3)), so ``edgeagent agent`` can run as ``Type=notify``.

systemd passes the path of a datagram socket in ``$NOTIFY_SOCKET``; the service tells it, one datagram
per call of newline-separated ``KEY=VALUE`` assignments, that it is ready (``READY=1``: only then do units
ordered after it, such as the kubelet drop-in, start), what it is doing (``STATUS=``), that it reloads or
stops, and that it is alive (``WATCHDOG=1``; without one for ``WatchdogSec=``, systemd kills and restarts
it). An address starting with ``@`` names a socket in the abstract namespace (``@`` stands for a NUL byte).

Outside systemd (a shell, the tests, a container) ``$NOTIFY_SOCKET`` is unset and every call is a no-op that
returns False, so callers need no "am I under systemd" branch.

Threads: every call opens, uses and closes its own socket, so any thread may call (the agent pings the
watchdog from its own thread). With ``NotifyAccess=main`` systemd accepts datagrams from the main PID only:
send from the agent's process, never from a forked child. Stdlib only: it must work before anything else
is importable.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from edgeagent.errors import EdgeAgentError


class NotifyError(EdgeAgentError):
    """``$NOTIFY_SOCKET`` is malformed or the service manager's socket cannot be reached."""

    exit_code = 69  # EX_UNAVAILABLE


def _environ(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _address(value: str) -> str:
    """The ``sendto`` address for ``$NOTIFY_SOCKET``: an absolute path, or ``@name`` (abstract socket)."""
    if value.startswith("@"):
        if len(value) < 2:
            raise NotifyError("NOTIFY_SOCKET is '@': an abstract socket needs a name")
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # systemd >= 254 may also pass vsock:CID:PORT (for VMs); this agent runs on the device itself.
    raise NotifyError(f"NOTIFY_SOCKET {value!r} is neither an absolute path nor an abstract '@name'")


def notify(*assignments: str, env: Mapping[str, str] | None = None) -> bool:
    """Sends ``assignments`` (``"KEY=VALUE"`` each) as one datagram; False (nothing sent) without a socket.

    Raises NotifyError for a malformed ``$NOTIFY_SOCKET``, an assignment with a newline or without ``=``, or a
    socket that refuses the datagram (the service manager gone): the caller decides whether that is fatal.
    """
    value = _environ(env).get("NOTIFY_SOCKET", "")
    if not value:
        return False
    for a in assignments:
        if "\n" in a or "=" not in a:
            raise NotifyError(f"notify assignment {a!r} must be one KEY=VALUE line")
    address = _address(value)
    payload = "\n".join(assignments).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(payload, address)
        except OSError as e:
            raise NotifyError(f"cannot notify systemd at {value}: {e.strerror or e}") from None
    return True


def _status_line(text: str) -> str:
    # STATUS= is one line of the protocol: a newline would start an unintended assignment.
    return "STATUS=" + " ".join(text.splitlines())


def ready(status: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """``READY=1`` (and ``STATUS=``): start-up, or a reload, has finished; dependents may start now."""
    return notify("READY=1", *([_status_line(status)] if status is not None else []), env=env)


def status(text: str, *, env: Mapping[str, str] | None = None) -> bool:
    """``STATUS=text``, shown by ``systemctl status``; newlines in ``text`` become spaces."""
    return notify(_status_line(text), env=env)


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares ``MONOTONIC_USEC`` against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def reloading(*, env: Mapping[str, str] | None = None) -> bool:
    """``RELOADING=1`` with ``MONOTONIC_USEC=``: a reload (SIGHUP) has begun; send ready() when it is done.

    The timestamp lets systemd (``Type=notify-reload``, systemd >= 253) tell this reload from an older one.
    """
    return notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", env=env)


def stopping(*, env: Mapping[str, str] | None = None) -> bool:
    """``STOPPING=1``: shutdown has begun (systemd then shows the unit as deactivating)."""
    return notify("STOPPING=1", env=env)


def watchdog(*, env: Mapping[str, str] | None = None) -> bool:
    """``WATCHDOG=1``: the keep-alive ping; send it every watchdog_interval() seconds while healthy."""
    return notify("WATCHDOG=1", env=env)


def watchdog_timeout(*, env: Mapping[str, str] | None = None) -> float | None:
    """``$WATCHDOG_USEC`` in seconds, or None when no watchdog is armed for this process.

    Like sd_watchdog_enabled(3): None when ``$WATCHDOG_USEC`` is unset, and when ``$WATCHDOG_PID`` is set to
    another process's PID (the variable was inherited by a child, which must not ping for its parent).
    Raises NotifyError for values that are not positive integers.
    """
    e = _environ(env)
    usec_text = e.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    pid_text = e.get("WATCHDOG_PID", "")
    if pid_text:
        try:
            pid = int(pid_text)
        except ValueError:
            raise NotifyError(f"WATCHDOG_PID {pid_text!r} is not a process id") from None
        if pid != os.getpid():
            return None
    try:
        usec = int(usec_text)
    except ValueError:
        raise NotifyError(f"WATCHDOG_USEC {usec_text!r} is not a number of microseconds") from None
    if usec <= 0:
        raise NotifyError(f"WATCHDOG_USEC {usec_text!r} must be positive")
    return usec / 1_000_000


def watchdog_interval(*, env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two watchdog() pings: half of watchdog_timeout(), as sd_watchdog_enabled(3) advises,
    so one late ping does not get the service killed; None when no watchdog is armed for this process."""
    timeout = watchdog_timeout(env=env)
    return None if timeout is None else timeout / 2
