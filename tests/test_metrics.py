"""--metrics-addr: the collector's counters as Prometheus metrics, and numbers that add up."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

import pika
import pytest
from collector_process import Collector, collector_command
from conntrack_collector.metrics import MetricsAddressError, parse_address, serve_metrics
from conntrack_collector.stats import CollectorStats, DropReason
from netns_util import (
    conntrack_netns,
    flush_flows,
    free_tcp_port,
    send_udp_flows,
)
from prometheus_client.parser import text_string_to_metric_families
from rabbitmq import SHARED_HOST, SHARED_PORT, needs_broker

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
    stats.reader_stats = lambda: {"delivered_new": 7, "delivered_destroy": 5}
    delivery = stats.delivery  # the ledger's counts: the stats only read them
    delivery.published, delivery.republished, delivery.confirmed = 10, 2, 9
    delivery.nacked, delivery.returned = 1, 1
    stats.drop(DropReason.BUFFER_FULL, 2)
    stats.publish_buffer_events, stats.publish_buffer_bytes, delivery.in_flight_events = 0, 0, 1
    stats.connection_state, stats.connections = "connected", 3
    delivery.confirm_latency_s_sum, delivery.confirm_latency_count = 0.5, 4
    stream = {"received": 13, "overruns": 4, "kernel_dropped": 292, "decode_errors": 1,
              "queued": 1}

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
    assert value(samples, "kernel_dropped_events_total") == 292
    assert value(samples, "decode_errors_total") == 1
    assert value(samples, "stream_received_total") == 13
    assert value(samples, "stream_queued_events") == 1
    assert value(samples, "publish_buffer_events") == 0
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


# End to end: the collector watching a namespace of its own and publishing to the local broker.

BROKER = (SHARED_HOST, SHARED_PORT)
FLOWS = 3000


def message_ids(queue: str, count: int, timeout_s: float = 60.0) -> set[str]:
    connection = pika.BlockingConnection(pika.ConnectionParameters(*BROKER))
    channel = connection.channel()
    ids: set[str] = set()
    deadline = time.monotonic() + timeout_s
    try:
        for _method, properties, _body in channel.consume(queue, auto_ack=True,
                                                          inactivity_timeout=1):
            if properties is not None:
                ids.add(properties.message_id)
            if len(ids) >= count or time.monotonic() > deadline:
                break
        channel.cancel()
    finally:
        connection.close()
    return ids


def total(samples: Samples, name: str) -> float:
    prefixed = f"conntrack_collector_{name}"
    return sum(v for (sample, _labels), v in samples.items() if sample == prefixed)


@pytest.mark.root
@needs_broker
def test_numbers_add_up_while_events_flow(exchange_and_queue: tuple[str, str]) -> None:
    port = free_tcp_port()
    url = f"http://127.0.0.1:{port}/metrics"
    exchange, queue = exchange_and_queue
    with conntrack_netns("metrics") as netns:
        collector = Collector(
            "--netns", netns, "--amqp-host", BROKER[0], "--amqp-exchange", exchange,
            "--metrics-addr", f"127.0.0.1:{port}", "-v")
        try:
            collector.wait_for("listening for")
            during: list[Samples] = [scrape(url)]
            for batch in range(10):
                send_udp_flows(netns, FLOWS // 10, first_port=20000 + batch * (FLOWS // 10))
                during.append(scrape(url))
            flush_flows(netns)
            during.append(scrape(url))
            delivered = message_ids(queue, 2 * FLOWS)
            final = scrape(url)
            deadline = time.monotonic() + 10
            while value(final, "in_flight_events") and time.monotonic() < deadline:
                time.sleep(0.2)  # the last confirms may land just after the messages do
                final = scrape(url)
        finally:
            code = collector.stop()

    assert code == 0, "\n".join(collector.stderr)
    assert len(delivered) == 2 * FLOWS
    # While events flow: counters only grow, and nothing is confirmed before it is received.
    for earlier, later in zip(during, during[1:]):
        for name in ("events_received_total", "events_published_total",
                     "events_confirmed_total", "stream_received_total"):
            assert total(later, name) >= total(earlier, name), name
    for samples in during:
        assert total(samples, "events_confirmed_total") <= total(samples, "stream_received_total")
    assert max(value(s, "publish_buffer_events") + value(s, "in_flight_events") for s in during) > 0
    # At rest: every event received was published once and confirmed, nothing waits or is lost.
    assert value(final, "events_received_total", type="NEW") == FLOWS
    assert value(final, "events_received_total", type="DESTROY") == FLOWS
    received = total(final, "events_received_total")
    assert received == total(final, "stream_received_total") - value(final, "stream_queued_events")
    assert received == (value(final, "events_published_total") + value(final, "publish_buffer_events")
                        + total(final, "events_dropped_total"))
    assert value(final, "events_published_total") == value(final, "events_confirmed_total")
    assert value(final, "events_confirmed_total") == 2 * FLOWS
    assert value(final, "in_flight_events") == 0
    assert total(final, "events_dropped_total") == 0
    assert value(final, "netlink_overruns_total") == 0
    assert value(final, "kernel_dropped_events_total") == 0
    assert value(final, "decode_errors_total") == 0
    assert value(final, "broker_connected") == 1
    assert value(final, "broker_connections_total") == 1
    assert value(final, "publish_confirm_latency_seconds_count") > 0
    assert value(final, "publish_confirm_latency_seconds_sum") > 0
    # -v without a terminal: plain summary lines on stderr, the last one over the whole run.
    assert not any("\x1b" in line for line in collector.stderr)
    summary = [line for line in collector.stderr if " summary: " in line]
    assert f"received={2 * FLOWS} " in summary[-1]
    assert f"confirmed={2 * FLOWS} " in summary[-1]


@pytest.mark.root
def test_numbers_add_up_when_the_broker_is_away() -> None:
    """Nothing listens on the broker port: events fill the buffer, then are dropped, counted."""
    port, dead_broker_port = free_tcp_port(), free_tcp_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with conntrack_netns("metrics-away") as netns:
        collector = Collector(
            "--netns", netns, "--amqp-host", "127.0.0.1", "--amqp-port", str(dead_broker_port),
            "--max-buffer-events", "100", "--shutdown-timeout", "0",
            "--metrics-addr", f"127.0.0.1:{port}")
        try:
            collector.wait_for("listening for")
            send_udp_flows(netns, 300, first_port=20000)
            deadline = time.monotonic() + 20
            samples = scrape(url)
            while total(samples, "events_received_total") < 300 and time.monotonic() < deadline:
                time.sleep(0.1)
                samples = scrape(url)
        finally:
            collector.stop()

    assert total(samples, "events_received_total") == 300
    assert value(samples, "publish_buffer_events") == 100
    assert value(samples, "events_dropped_total", reason="buffer_full") == 200
    assert value(samples, "events_published_total") == 0
    assert value(samples, "broker_connected") == 0
    assert value(samples, "broker_connection_state", state="connected") == 0


def run_collector(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(collector_command(*args), capture_output=True, text=True, timeout=60,
                          check=False)


def test_bad_metrics_address_is_a_usage_error() -> None:
    done = run_collector("--metrics-addr", "9465", "--output", "stdout")

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "--metrics-addr" in done.stderr
    assert "HOST:PORT" in done.stderr


def test_metrics_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_collector("--metrics-addr", f"127.0.0.1:{port}", "--output", "stdout")

    assert done.returncode == 1
    expected = f"conntrack-event-collector: error: --metrics-addr 127.0.0.1:{port}: "
    assert done.stderr.strip().splitlines() == [expected + "Address already in use"]
