"""Placeholder: replaced by the systemd branch's implementation at merge."""

from __future__ import annotations

import os
import socket
import time


def _send(msg: str) -> bool:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(msg.encode(), addr)
    return True


def ready() -> bool:
    return _send("READY=1")


def status(text: str) -> bool:
    return _send(f"STATUS={text}")


def reloading() -> bool:
    return _send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping() -> bool:
    return _send("STOPPING=1")


def watchdog() -> bool:
    return _send("WATCHDOG=1")


def watchdog_interval() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    return int(usec) / 1e6 if usec else None
