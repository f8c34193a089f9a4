"""`--metrics-addr HOST:PORT`: the collector's counters as Prometheus metrics.

Nothing is counted twice: at each scrape the exporter reads the one `CollectorStats` object the
reader and the publisher keep, and the event stream's own `stats()`. So the numbers of one scrape
come from the same place as the log lines and the live display.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from .stats import EVENT_TYPES, CollectorStats, DropReason

PREFIX = "conntrack_collector"
# Shown even at 0, so an alert on them works before the first drop ever happens.
CONNECTION_STATES = ("disconnected", "connecting", "connected", "blocked")

StreamStats = Callable[[], Mapping[str, object]]
"""`EventStream.stats`: a dict with at least received, overruns, kernel_dropped, decode_errors,
queued."""


class MetricsAddressError(ValueError):
    """`--metrics-addr` is not HOST:PORT."""


def parse_address(address: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT`, or `:PORT` for every interface; port 0 picks a free one."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise MetricsAddressError(f"expected HOST:PORT, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port_text)  # ":PORT": every interface


class CollectorMetrics(Collector):
    """Builds the metric families from the stats at each scrape."""

    def __init__(self, stats: CollectorStats, stream_stats: StreamStats) -> None:
        self._stats = stats
        self._stream_stats = stream_stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        received = CounterMetricFamily(
            f"{PREFIX}_events_received", "Events read from the kernel, by type.", labels=["type"])
        for event_type in EVENT_TYPES:
            received.add_metric([event_type], stats.received_by_type.get(event_type, 0))
        yield received

        yield _counter("events_published", "Events published for the first time.",
                       stats.published)
        yield _counter("events_republished",
                       "Events published again after a nack, a return or a lost connection.",
                       stats.republished)
        yield _counter("events_confirmed", "Events the broker confirmed: delivered.",
                       stats.confirmed)
        yield _counter("events_nacked", "Events the broker refused (published again).",
                       stats.nacked)
        yield _counter("events_returned", "Events the broker returned (published again).",
                       stats.returned)

        dropped = CounterMetricFamily(
            f"{PREFIX}_events_dropped", "Events lost by the collector, by reason.",
            labels=["reason"])
        for reason in DropReason:
            dropped.add_metric([reason.value], stats.dropped_by_reason.get(reason, 0))
        yield dropped

        stream = self._stream_stats()
        yield _counter("stream_received",
                       "Events the reader thread decoded (received + stream_queued_events).",
                       _int(stream, "received"))
        yield _counter("netlink_overruns",
                       "Times the socket reported ENOBUFS (once per overrun, however many events "
                       "it cost; never with --reliable): see kernel_dropped_events for events.",
                       _int(stream, "overruns"))
        yield _counter("kernel_dropped_events",
                       "Events the kernel could not queue for us, its socket buffer full (the "
                       "socket's drops counter, both modes; with --reliable DESTROYs among them "
                       "are sent again, so an upper bound).",
                       _int(stream, "kernel_dropped"))
        yield _counter("decode_errors", "Kernel messages that could not be decoded (skipped).",
                       _int(stream, "decode_errors"))
        yield _counter("stream_filtered_by_fallback",
                       "Events the accept/ignore rules left out in userspace, after the kernel's "
                       "socket filter let them through (what that filter drops is never seen).",
                       _int(stream, "filtered_by_fallback"))
        yield _gauge("stream_queued_events",
                     "Events decoded by the reader thread, not yet taken by the collector.",
                     _int(stream, "queued"))

        yield _gauge("publish_buffer_events", "Events waiting to be published.", stats.publish_buffer_events)
        yield _gauge("publish_buffer_bytes", "Bytes of the events waiting to be published.",
                     stats.publish_buffer_bytes)
        yield _gauge("in_flight_events", "Events published and not yet confirmed.",
                     stats.in_flight_events)
        yield _gauge("awaiting_republish_events",
                     "Events nacked, returned or unconfirmed at a disconnect, to be published "
                     "again.", stats.awaiting_republish_events)

        yield SummaryMetricFamily(
            f"{PREFIX}_publish_confirm_latency_seconds",
            "Time from publishing a message to the broker's confirm.",
            count_value=stats.delivery.confirm_latency_count,
            sum_value=stats.delivery.confirm_latency_s_sum)

        state = GaugeMetricFamily(
            f"{PREFIX}_broker_connection_state",
            "1 for the broker connection's current state, 0 for the others.", labels=["state"])
        for name in sorted(set(CONNECTION_STATES) | {stats.connection_state}):
            state.add_metric([name], 1.0 if name == stats.connection_state else 0.0)
        yield state
        yield _gauge("broker_connected", "1 while connected to a broker.",
                     1 if stats.connection_state == "connected" else 0)
        yield _counter("broker_connections", "Successful connections to a broker.",
                       stats.connections)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def _int(values: Mapping[str, object], key: str) -> int:
    value = values.get(key, 0)
    return value if isinstance(value, int) else 0


@dataclass
class MetricsServer:
    address: tuple[str, int]
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def make_registry(stats: CollectorStats, stream_stats: StreamStats) -> CollectorRegistry:
    """Our metrics plus the process's own (CPU, memory, open files) and the interpreter's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CollectorMetrics(stats, stream_stats))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def serve_metrics(address: str, stats: CollectorStats, stream_stats: StreamStats) -> MetricsServer:
    """Serve /metrics on `address` (HOST:PORT) from a daemon thread until `close()`.

    Raises MetricsAddressError for a malformed address, OSError when it cannot be bound.
    """
    host, port = parse_address(address)
    server, thread = start_http_server(port, host, make_registry(stats, stream_stats))
    bound_port: int = server.server_port
    return MetricsServer((host, bound_port), server, thread)
