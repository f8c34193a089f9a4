"""Against RabbitMQ nodes of the test's own, as root with real events: a broker outage, a
failover to the next host of the list, and TLS. Every event must arrive (duplicates allowed)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
from collector_process import Collector
from netns_util import conntrack_netns, flush_flows, send_udp_flows
from rabbitmq import (
    consume,
    declare,
    free_port,
    make_certificates,
    needs_rabbitmq_server,
    private_node,
    unique_name,
)
from traffic_flows import FlowMaker, event_keys, expected_ports

pytestmark = [pytest.mark.root, needs_rabbitmq_server]


def assert_all_arrived(keys: set[tuple[str, int, int]], flows: int, log: str) -> None:
    for kind in ("NEW", "DESTROY"):
        ports = {port for t, _id, port in keys if t == kind}
        missing = expected_ports(flows) - ports
        assert not missing, f"{len(missing)} {kind} events missing of {flows}:\n{log}"


def test_broker_outage_of_15_s_loses_nothing() -> None:
    exchange, queue = unique_name("ex"), unique_name("q")
    with private_node() as node, conntrack_netns("outage") as netns:
        declare(exchange, queue, port=node.port, durable=True)
        collector = Collector("--netns", netns, "--amqp-host", f"127.0.0.1:{node.port}",
                              "--amqp-exchange", exchange)
        try:
            collector.wait_for("connected to RabbitMQ")
            with FlowMaker(netns) as flows:
                time.sleep(2)
                node.stop()
                stopped_at = time.monotonic()
                time.sleep(max(0.0, 15 - (time.monotonic() - stopped_at)))
                node.start()
                time.sleep(2)
            flush_flows(netns)
            messages = consume(queue, 2 * flows.flows, port=node.port, timeout_s=90)
        finally:
            code = collector.stop()
    assert code == 0, collector.log
    assert "lost the connection" in collector.log
    assert_all_arrived(event_keys(messages), flows.flows, collector.log)
    ids = [m.properties.message_id for m in messages]
    assert len(set(ids)) == len(event_keys(messages))  # a duplicate repeats its message_id
    assert collector.summary()["not_delivered"] == 0


def test_failover_to_the_next_host_loses_nothing() -> None:
    exchange, queue = unique_name("ex"), unique_name("q")
    with private_node() as first, private_node() as second, conntrack_netns("failover") as netns:
        for node in (first, second):
            declare(exchange, queue, port=node.port, durable=True)
        hosts = f"127.0.0.1:{first.port},127.0.0.1:{second.port}"
        collector = Collector("--netns", netns, "--amqp-host", hosts, "--amqp-exchange", exchange)
        try:
            collector.wait_for(f"connected to RabbitMQ at 127.0.0.1:{first.port}")
            with FlowMaker(netns) as flows:
                time.sleep(2)
                first.stop()
                collector.wait_for(f"connected to RabbitMQ at 127.0.0.1:{second.port}", 30)
                time.sleep(2)
            flush_flows(netns)
            time.sleep(1)
            first.start()  # to read what it had confirmed before it went away
            messages = consume(queue, 1, port=first.port, timeout_s=10)
            messages += consume(queue, 2 * flows.flows - len(messages), port=second.port,
                                timeout_s=60)
        finally:
            code = collector.stop()
    assert code == 0, collector.log
    assert_all_arrived(event_keys(messages), flows.flows, collector.log)


@pytest.fixture(scope="module")
def certificates() -> dict[str, Path]:
    # Not under pytest's tmp_path: the broker runs as the rabbitmq user and must read them.
    return make_certificates(Path(tempfile.mkdtemp(prefix="ctc-certs-")))


def test_tls_with_the_right_ca_publishes_and_with_a_wrong_ca_refuses(
        certificates: dict[str, Path]) -> None:
    exchange, queue = unique_name("ex"), unique_name("q")
    tls_port = free_port()
    files = {"cacert": certificates["ca.pem"], "cert": certificates["server.pem"],
             "key": certificates["server.key"]}
    with private_node(tls_port=tls_port, tls_files=files) as node, \
            conntrack_netns("tls") as netns:
        declare(exchange, queue, port=node.port)
        tls_args = ["--amqp-host", "localhost", "--amqp-port", str(tls_port),
                    "--amqp-exchange", exchange, "--amqp-crt", str(certificates["client.pem"]),
                    "--amqp-key", str(certificates["client.key"])]

        collector = Collector("--netns", netns, "--amqp-ca", str(certificates["ca.pem"]),
                              *tls_args)
        try:
            collector.wait_for("connected to RabbitMQ")
            send_udp_flows(netns, 10)
            flush_flows(netns)
            messages = consume(queue, 20, port=node.port)
        finally:
            assert collector.stop() == 0, collector.log
        assert_all_arrived(event_keys(messages), 10, collector.log)

        wrong = Collector("--netns", netns, "--amqp-ca", str(certificates["wrong-ca.pem"]),
                          *tls_args)
        code = wrong.process.wait(60)
        wrong.stop()
    assert code == 1, wrong.log
    last = wrong.stderr[-1]
    assert last.startswith("conntrack-event-collector: error: TLS:"), wrong.log
    assert "failed verification" in last and "wrong-ca.pem" in last
    assert "Traceback" not in wrong.log
