"""Loss seen on the stream, as root, against the local RabbitMQ: a real kernel loss (a tiny
socket buffer, a burst) becomes gap records whose Lost is what the kernel dropped, and the
`sequence` headers of the events show the holes the gap records fill."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from collector_process import Collector
from conntrack_collector.gaps import GAP_TYPE
from netns_util import conntrack_netns, send_udp_flows
from rabbitmq import consume, needs_broker

pytestmark = [pytest.mark.root, needs_broker]

BURST_FLOWS = 20_000
COMPLETENESS_DOC = Path(__file__).resolve().parent.parent / "docs" / "completeness.md"


def doc_example() -> dict[str, Any]:
    """The consumer example of docs/completeness.md, run as a module that is not __main__."""
    code = COMPLETENESS_DOC.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {"__name__": "completeness_example"}
    exec(compile(code, str(COMPLETENESS_DOC), "exec"), namespace)  # noqa: S102 - our own doc
    return namespace


def test_kernel_loss_is_a_gap_record_and_a_hole_in_the_sequence(
        exchange_and_queue: tuple[str, str]) -> None:
    exchange, queue = exchange_and_queue
    with conntrack_netns("gaps") as netns:
        collector = Collector("--netns", netns, "--amqp-host", "127.0.0.1",
                              "--amqp-exchange", exchange, "--router-id", "gaprouter001",
                              "--events", "NEW", "--buffer-size", "4096", "--gap-records")
        try:
            collector.wait_for("connected to RabbitMQ")
            collector.wait_listening()
            send_udp_flows(netns, BURST_FLOWS)
            collector.wait_for("the kernel dropped", timeout_s=10)  # the warning
            code = collector.stop()
            messages = consume(queue, 1, idle_s=2.0)
        finally:
            collector.stop()  # a no-op once stopped
    assert code == 0, collector.log

    dropped = re.search(r"the kernel dropped (\d+) event", collector.log.splitlines()[-1])
    assert dropped, collector.log
    kernel_dropped = int(dropped[1])
    assert kernel_dropped > 0

    gaps = [m for m in messages if m.properties.type == GAP_TYPE]
    events = [m for m in messages if m.properties.type is None]
    assert len(gaps) + len(events) == len(messages)
    for m in messages:
        assert m.properties.headers["router_id"] == "gaprouter001"
        assert m.properties.delivery_mode == 2
    records = [json.loads(m.body) for m in gaps]
    assert {(r["Type"], r["Where"]) for r in records} == {("GAP", "kernel")}
    assert all(r["From"] <= r["To"] for r in records)
    # Lost matches the kernel's drop counter, and every NEW the kernel made is accounted for.
    assert sum(r["Lost"] for r in records) == kernel_dropped
    assert len(events) + kernel_dropped == BURST_FLOWS
    # The event numbers have holes, and the gap records fill them exactly.
    numbers = sorted(m.properties.headers["sequence"] for m in events)
    assert numbers[-1] - numbers[0] + 1 > len(numbers), "no hole in the event numbers"
    lost_numbers = [m.properties.headers["sequence"] + i
                    for m, r in zip(gaps, records) for i in range(r["Lost"])]
    assert sorted(numbers + lost_numbers) == list(range(1, BURST_FLOWS + 1))
    # The documented consumer says the same.
    example = doc_example()
    for m in messages:
        example["account"](m.properties, m.body)
    (run,) = example["runs"].values()
    assert (run.upto, run.lost, run.missing()) == (BURST_FLOWS, kernel_dropped, 0)
