"""--metrics-addr: the collector's counters as Prometheus metrics, and numbers that add up."""

from __future__ import annotations

import urllib.request

import pytest
from conntrack_collector.metrics import MetricsAddressError, parse_address, serve_metrics
from conntrack_collector.stats import CollectorStats
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(f"conntrack_collector_{name}", tuple(sorted(labels.items())))]


@pytest.mark.parametrize(("address", "expected"), [
    ("127.0.0.1:9465", ("127.0.0.1", 9465)),
    ("[::1]:9465", ("::1", 9465)),
    (":9465", ("0.0.0.0", 9465)),
    ("localhost:1", ("localhost", 1)),
])
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["9465", "host:", "host:http", "host:70000", "host:-1"])
def test_parse_address_refuses(address: str) -> None:
    with pytest.raises(MetricsAddressError, match="HOST:PORT"):
        parse_address(address)


def test_exports_every_counter_from_the_stats_object() -> None:
    stats = CollectorStats()
    stats.received_by_type.update(NEW=7, DESTROY=5)
    stats.published, stats.republished, stats.confirmed = 10, 2, 9
    stats.nacked, stats.returned = 1, 1
    stats.drop("buffer_full", 2)
    stats.buffer_events, stats.buffer_bytes, stats.in_flight_events = 0, 0, 1
    stats.connection_state, stats.connections = "connected", 3
    stats.confirm_latency_s_sum, stats.confirm_latency_count = 0.5, 4
    stream = {"received": 13, "overruns": 4, "decode_errors": 1, "queued": 1}

    server = serve_metrics("127.0.0.1:0", stats, lambda: stream)
    try:
        samples = scrape(f"http://127.0.0.1:{server.address[1]}/metrics")
    finally:
        server.close()

    assert value(samples, "events_received_total", type="NEW") == 7
    assert value(samples, "events_received_total", type="UPDATE") == 0
    assert value(samples, "events_received_total", type="DESTROY") == 5
    assert value(samples, "events_published_total") == 10
    assert value(samples, "events_republished_total") == 2
    assert value(samples, "events_confirmed_total") == 9
    assert value(samples, "events_nacked_total") == 1
    assert value(samples, "events_returned_total") == 1
    assert value(samples, "events_dropped_total", reason="buffer_full") == 2
    assert value(samples, "events_dropped_total", reason="shutdown") == 0
    assert value(samples, "netlink_overruns_total") == 4
    assert value(samples, "decode_errors_total") == 1
    assert value(samples, "stream_received_total") == 13
    assert value(samples, "stream_queued_events") == 1
    assert value(samples, "buffer_events") == 0
    assert value(samples, "in_flight_events") == 1
    assert value(samples, "publish_confirm_latency_seconds_sum") == 0.5
    assert value(samples, "publish_confirm_latency_seconds_count") == 4
    assert value(samples, "broker_connected") == 1
    assert value(samples, "broker_connection_state", state="connected") == 1
    assert value(samples, "broker_connection_state", state="disconnected") == 0
    assert value(samples, "broker_connections_total") == 3
    assert ("process_resident_memory_bytes", ()) in samples


def test_port_in_use_is_an_oserror() -> None:
    first = serve_metrics("127.0.0.1:0", CollectorStats(), dict)
    try:
        with pytest.raises(OSError):
            serve_metrics(f"127.0.0.1:{first.address[1]}", CollectorStats(), dict)
    finally:
        first.close()
