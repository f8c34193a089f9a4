"""End to end, as root: real conntrack events in a namespace, published to the local RabbitMQ."""

from __future__ import annotations

import json
import time

import pytest
from collector_process import Collector
from netns_util import conntrack_netns, flush_flows, send_udp_flows
from rabbitmq import consume, needs_broker

pytestmark = [pytest.mark.root, needs_broker]

FLOWS = 50


def test_every_new_and_destroy_arrives_once_with_the_contract_properties(
        exchange_and_queue: tuple[str, str]) -> None:
    exchange, queue = exchange_and_queue
    with conntrack_netns("e2e") as netns:
        collector = Collector("--netns", netns, "--amqp-host", "127.0.0.1",
                              "--amqp-exchange", exchange, "--router-id", "testrouter01")
        try:
            collector.wait_for("connected to RabbitMQ")
            collector.wait_listening()
            started_s = time.time()
            send_udp_flows(netns, FLOWS)
            flush_flows(netns)
            messages = consume(queue, 2 * FLOWS)
        finally:
            code = collector.stop()
    assert code == 0, collector.log

    events = [json.loads(m.body) for m in messages]
    assert len(messages) == 2 * FLOWS, collector.log
    new_ids = [e["Id"] for e in events if e["Type"] == "NEW"]
    destroy_ids = [e["Id"] for e in events if e["Type"] == "DESTROY"]
    assert len(new_ids) == len(set(new_ids)) == FLOWS
    assert sorted(new_ids) == sorted(destroy_ids)
    assert {e["Original"]["Layer4"]["Dport"] for e in events} == set(range(20000, 20000 + FLOWS))
    assert len({m.properties.message_id for m in messages}) == 2 * FLOWS
    for message in messages:
        p = message.properties
        assert p.delivery_mode == 2
        assert p.content_type == "application/json"
        assert p.headers == {"router_id": "testrouter01", "sequence": p.headers["sequence"]}
        assert started_s - 5 <= p.timestamp <= time.time() + 5
    assert sorted(m.properties.headers["sequence"] for m in messages) == list(
        range(1, 2 * FLOWS + 1))
    summary = collector.summary()
    assert summary == {"received": 2 * FLOWS, "delivered": 2 * FLOWS, "not_delivered": 0}
