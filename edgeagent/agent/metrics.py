"""The agent's Prometheus endpoint: every figure comes from the status snapshot `edgeagent status` shows.

A collector reads the supervisor's status at scrape time instead of keeping a second set of counters that
could drift from it. The HTTP server is prometheus-client's (a daemon thread it starts), bound to loopback by
default: sensor readings are the device's data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry


class AgentCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        s = self.status()
        yield from _phases(s)
        yield from _attestation(s.get("attestation") or {})
        yield from _drivers(s.get("drivers") or [])
        yield from _controllers(s.get("controllers") or {})


def _phases(s: dict[str, Any]) -> Iterator[Metric]:
    g = GaugeMetricFamily(
        "edgeagent_phase_state", "1 for the state each phase is in", labels=["phase", "state"]
    )
    for phase, state in (s.get("phases") or {}).items():
        if state:
            g.add_metric([phase, str(state)], 1)
    yield g
    yield GaugeMetricFamily(
        "edgeagent_up_seconds", "Seconds since the agent started", value=s.get("uptime", 0)
    )


def _attestation(a: dict[str, Any]) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "edgeagent_quotes_served", "Quotes the agent API gave the verifier", value=a.get("quotes_served", 0)
    )
    yield CounterMetricFamily(
        "edgeagent_credential_renewals", "Node certificates renewed", value=a.get("renewals", 0)
    )
    left = a.get("credential_seconds_left")
    g = GaugeMetricFamily(
        "edgeagent_credential_expiry_seconds",
        "Seconds until the node certificate expires (absent without one)",
    )
    if left is not None:
        g.add_metric([], left)
    yield g


def _drivers(drivers: list[dict[str, Any]]) -> Iterator[Metric]:
    reading = GaugeMetricFamily(
        "edgeagent_driver_reading",
        "Latest reading of a driver's channel",
        labels=["driver", "channel", "unit"],
    )
    ops = CounterMetricFamily(
        "edgeagent_driver_operations", "Readings taken and writes done", labels=["driver"]
    )
    errors = CounterMetricFamily(
        "edgeagent_driver_errors", "Failed readings, refusals and traps", labels=["driver"]
    )
    restarts = CounterMetricFamily(
        "edgeagent_driver_restarts", "Driver restarts after a failure", labels=["driver"]
    )
    for d in drivers:
        name = d["name"]
        latest = d.get("latest") or {}
        units = latest.get("units") or {}
        for channel, value in (latest.get("values") or {}).items():
            reading.add_metric([name, channel, units.get(channel, "")], value)
        ops.add_metric([name], d.get("readings", 0))
        errors.add_metric([name], d.get("errors", 0))
        restarts.add_metric([name], d.get("restarts", 0))
    yield from (reading, ops, errors, restarts)


def _controllers(c: dict[str, Any]) -> Iterator[Metric]:
    families = {
        key: CounterMetricFamily(f"edgeagent_controller_{key}", help_, labels=["controller"])
        for key, help_ in (
            ("events", "Watch events delivered"),
            ("wakes", "Restores from a snapshot"),
            ("swaps", "Swaps to disk"),
            ("restarts", "Restarts after a trap"),
        )
    }
    active = GaugeMetricFamily(
        "edgeagent_controller_active",
        "1 while instantiated, 0 while swapped or failed",
        labels=["controller"],
    )
    for ctl in c.get("controllers") or []:
        for key, fam in families.items():
            fam.add_metric([ctl["name"]], ctl.get(key, 0))
        active.add_metric([ctl["name"]], 1 if ctl.get("state") == "active" else 0)
    yield from families.values()
    yield active
    wakes = c.get("wake_latency_s") or []
    g = GaugeMetricFamily(
        "edgeagent_controller_wake_latency_seconds",
        "Median wake latency (event received -> controller running) of the last 100 wakes",
    )
    if wakes:
        g.add_metric([], _median(wakes))
    yield g


def _median(values: list[float]) -> float:
    """statistics.median without the module (it loads decimal and fractions: 0.3 MiB for one number)."""
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def serve(status: Callable[[], dict[str, Any]], address: str, port: int) -> Any:
    """Starts the endpoint (thread ``metrics``); returns the server (``shutdown()`` stops it)."""
    from prometheus_client.exposition import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(status))
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server
