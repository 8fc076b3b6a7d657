"""``edgeagent:controller/timer``: one-shot timers that fire ``handle-timer(id)`` on the controller.

Timers live in the host, not in the instance, so they survive a swap: a timer firing for a swapped controller
wakes it like an event does. Setting an id that is pending replaces it.
"""

from __future__ import annotations

from collections.abc import Callable

from edgeagent.wasm.host import I32, HostModule, hostfunc

MAX_DELAY_MS = 7 * 24 * 3600 * 1000


class TimerHost(HostModule):
    interface = "edgeagent:controller/timer"

    def __init__(self, schedule: Callable[[int, float], None], cancel: Callable[[int], None]) -> None:
        super().__init__()
        self._schedule = schedule
        self._cancel = cancel

    @hostfunc("set-timer", params=(I32, I32))
    def set_timer(self, timer_id: int, delay_ms: int) -> None:
        self._schedule(timer_id, min(delay_ms, MAX_DELAY_MS) / 1000.0)

    @hostfunc("cancel-timer", params=(I32,))
    def cancel_timer(self, timer_id: int) -> None:
        self._cancel(timer_id)
