"""SIGTERM and SIGINT while events flow: every event read is delivered or reported."""

from __future__ import annotations

import signal
import time

import pytest
from collector_process import Collector
from netns_util import conntrack_netns, flush_flows, send_udp_flows
from rabbitmq import consume, declare, delete, needs_broker, unique_name
from traffic_flows import event_keys

pytestmark = [pytest.mark.root, needs_broker]


def test_sigterm_while_publishing_delivers_or_reports_every_event() -> None:
    exchange, queue = unique_name("ex"), unique_name("q")
    declare(exchange, queue)
    try:
        with conntrack_netns("sigterm") as netns:
            collector = Collector("--netns", netns, "--amqp-host", "127.0.0.1",
                                  "--amqp-exchange", exchange)
            try:
                collector.wait_for("connected to RabbitMQ")
                send_udp_flows(netns, 2000)
                flush_flows(netns)
                collector.send(signal.SIGTERM)  # while the DESTROYs are still being published
            finally:
                code = collector.stop()
            summary = collector.summary()
            messages = consume(queue, summary["delivered"], timeout_s=30)
    finally:
        delete(exchange, queue)
    assert code == 0, collector.log
    assert summary["received"] == summary["delivered"] + summary["not_delivered"]
    assert len(event_keys(messages)) >= summary["delivered"]
    assert summary["received"] > 0


def test_sigterm_with_the_broker_away_reports_every_event_not_delivered() -> None:
    with conntrack_netns("away") as netns:
        collector = Collector("--netns", netns, "--amqp-host", "127.0.0.1:1",
                              "--shutdown-timeout", "1")
        try:
            collector.wait_listening()
            send_udp_flows(netns, 20)
            flush_flows(netns)
            time.sleep(1)
        finally:
            code = collector.stop(signal.SIGTERM)
    assert code == 0, collector.log
    assert collector.summary() == {"received": 40, "delivered": 0, "not_delivered": 40}
    assert "shutdown: 40" in collector.log


def test_a_second_ctrl_c_exits_at_once_with_130() -> None:
    with conntrack_netns("ctrlc") as netns:
        collector = Collector("--netns", netns, "--amqp-host", "127.0.0.1:1",
                              "--shutdown-timeout", "60")
        try:
            collector.wait_listening()
            send_udp_flows(netns, 5)
            time.sleep(0.5)
            collector.send(signal.SIGINT)
            collector.wait_for("stopping: waiting up to 60 s")
            started = time.monotonic()
            collector.send(signal.SIGINT)
            code = collector.process.wait(10)
        finally:
            collector.stop()
    assert code == 130
    assert time.monotonic() - started < 5
    assert "second SIGINT: exiting now; 5 event(s) not delivered" in collector.log
