"""The fault soak: the collector against a three-node RabbitMQ cluster, through a proxy that
injects faults, with real conntrack events from a namespace, for SOAK_SECONDS (`make soak` runs
it longer). At the end the quorum queue must hold every event the collector counted as
received (duplicates allowed, by message_id), or the event must be in a drop counter whose
reason is a bound that was exceeded; the longest stall must stay under SOAK_MAX_STALL_S.

It prints which fault it injects when, and one summary line."""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from contextlib import ExitStack

import pytest
from collector_process import Collector
from netns_util import free_tcp_port
from rabbitmq import needs_rabbitmq_server, unique_name
from soak.cluster import Cluster, consume_all
from soak.faults import Faults
from soak.monitor import Monitor
from soak.proxy import FaultProxy
from soak.traffic import Traffic, expected_events

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "180"))
MAX_STALL_S = float(os.environ.get("SOAK_MAX_STALL_S", "30"))
# The collector's bound, given explicitly: a buffer_full drop is allowed only if the backlog
# really reached it (the soak's traffic never comes near).
MAX_BUFFER_EVENTS = 500_000
BOUND_REASONS = {"buffer_full"}
CATCH_UP_S = 60.0  # after the traffic stopped: the collector confirms everything, or it stalled

pytestmark = [pytest.mark.root, needs_rabbitmq_server,
              pytest.mark.timeout(SOAK_SECONDS + 900)]

STOP_SUMMARY = re.compile(r"stopped: received (\d+) events, delivered (\d+), not delivered (\d+)"
                          r"(?: \(([^)]*)\))?")


def parse_stop_summary(lines: list[str]) -> tuple[int, int, int, dict[str, int]] | None:
    """received, delivered, not delivered and the drops by reason, from the collector's last
    `stopped: ...` line."""
    for line in reversed(lines):
        match = STOP_SUMMARY.search(line)
        if match:
            reasons = {}
            for item in filter(None, (match[4] or "").split(", ")):
                reason, _, count = item.rpartition(": ")
                reasons[reason] = int(count)
            return int(match[1]), int(match[2]), int(match[3]), reasons
    return None


def event_key(body: bytes) -> tuple[str, str, int]:
    event = json.loads(body)
    return (event["Type"], event["Original"]["Layer3"]["Dst"],
            event["Original"]["Layer4"]["Dport"])


def test_fault_soak(netns: str, capsys: pytest.CaptureFixture[str]) -> None:
    def say(line: str) -> None:
        with capsys.disabled():
            print(f"soak: {line}", flush=True)

    exchange, queue = unique_name("soak-ex"), unique_name("soak-q")
    failures: list[str] = []
    with ExitStack() as stack:
        say(f"{SOAK_SECONDS:.0f} s of faults; starting three private RabbitMQ nodes")
        cluster = stack.enter_context(Cluster(3))
        cluster.declare_quorum_queue(exchange, queue)
        proxy = stack.enter_context(FaultProxy([node.port for node in cluster.nodes]))
        metrics_port = free_tcp_port()
        hosts = ",".join(f"127.0.0.1:{port}" for port in proxy.ports)
        collector = Collector("--netns", netns, "--amqp-host", hosts, "--amqp-exchange", exchange,
                              "--metrics-addr", f"127.0.0.1:{metrics_port}",
                              "--max-buffer-events", str(MAX_BUFFER_EVENTS))
        stack.callback(collector.stop)  # on any failure below: the process never outlives us
        collector.wait_for("connected to RabbitMQ", 60)

        started = time.monotonic()
        traffic = Traffic(netns)
        faults = Faults(cluster, proxy, started, SOAK_SECONDS, say)
        monitor = Monitor(metrics_port, started,
                          lambda: f"fault {faults.current}, traffic {traffic.phase}",
                          lambda: collector.process.poll() is None)
        stack.callback(monitor.stop)
        stack.callback(traffic.stop)
        stack.callback(faults.join, 300)
        stack.callback(faults.abort)
        monitor.start()
        traffic.start()
        faults.start()

        exited_early = False
        while faults.running():
            if collector.process.poll() is not None:
                exited_early = True
                say(f"{time.monotonic() - started:7.1f} s  the collector exited "
                    f"({collector.process.returncode}); no more faults")
                faults.abort()
                break
            time.sleep(0.5)
        faults.join(300)
        traffic.stop()
        offered = 2 * traffic.flows
        say(f"{time.monotonic() - started:7.1f} s  traffic stopped: {traffic.flows} flows, "
            f"{offered} events offered; waiting for the confirms")
        deadline = time.monotonic() + CATCH_UP_S
        while time.monotonic() < deadline and collector.process.poll() is None:
            last = monitor.last
            received = sum(v for k, v in last.items() if k.startswith("events_received_total"))
            if received >= offered and monitor.outstanding(last) == 0:
                break
            time.sleep(0.5)
        code = collector.stop(timeout_s=60)
        monitor.stop()
        elapsed = time.monotonic() - started
        messages = consume_all(cluster.serving_node().port, queue)

    if faults.error is not None:
        failures.append(f"fault injection failed: {faults.error!r}")
    if exited_early:
        failures.append(f"the collector exited during the soak, code {code}")
    elif code != 0:
        failures.append(f"the collector's exit code after SIGTERM: {code}")
    summary = parse_stop_summary(collector.stderr)
    if summary is None:
        failures.append("no stop summary line on the collector's stderr")
        summary = (0, 0, 0, {})
    received, delivered, not_delivered, drops = summary

    bodies: dict[str, bytes] = {}
    conflicting = 0
    for message_id, body in messages:
        if bodies.setdefault(message_id, body) != body:
            conflicting += 1
    unique = len(bodies)
    duplicates = len(messages) - unique
    keys = Counter(event_key(body) for body in bodies.values())
    expected = set(expected_events(traffic.flows))
    missing_offered = len(expected - set(keys))
    unexpected = sum(n for key, n in keys.items() if key not in expected)
    lost = received - not_delivered - unique

    injected = sum(faults.injected.values())
    kinds = ", ".join(f"{name} {n}" for name, n in faults.injected.items())
    reasons = ", ".join(f"{reason}: {n}" for reason, n in drops.items())
    stall = monitor.longest
    say(f"SUMMARY faults {injected} ({kinds}); events offered {offered}, received {received}, "
        f"delivered {unique} (unique in the queue; confirmed {delivered}), duplicates "
        f"{duplicates}, dropped {not_delivered} ({reasons or 'none'}), lost {max(lost, 0)}; "
        f"max stall {stall.seconds:.1f} s (from {stall.started_at_s:.0f} s, {stall.during}; "
        f"last seen {stall.state or 'nothing waiting'}); "
        f"{elapsed:.0f} s, exit {code}")

    if not_delivered != sum(drops.values()):
        failures.append(f"not delivered {not_delivered} but the reasons add up to "
                        f"{sum(drops.values())}")
    for reason, n in drops.items():
        if reason not in BOUND_REASONS:
            failures.append(f"{n} event(s) dropped for {reason!r}, which is not a bound")
        elif monitor.peak_outstanding < MAX_BUFFER_EVENTS:
            failures.append(f"{n} event(s) dropped for {reason!r} though the backlog peaked at "
                            f"{monitor.peak_outstanding} of {MAX_BUFFER_EVENTS} events")
    if lost > 0:
        failures.append(f"{lost} event(s) counted as received are neither in the queue nor "
                        f"in a drop counter")
    if unique > received:
        failures.append(f"{unique} distinct messages in the queue, more than the {received} "
                        f"events received")
    if unique < delivered:
        failures.append(f"the broker confirmed {delivered} events but the queue holds {unique}")
    if conflicting:
        failures.append(f"{conflicting} message_id(s) repeated with a different body")
    if missing_offered or unexpected:
        failures.append(f"of {offered} events offered, {missing_offered} are not in the queue "
                        f"({unexpected} unexpected events there)")
    if stall.seconds > MAX_STALL_S:
        failures.append(f"a stall of {stall.seconds:.1f} s (limit {MAX_STALL_S:.0f} s), from "
                        f"{stall.started_at_s:.0f} s into the soak, {stall.during}")
    log_tail = "\n".join(collector.stderr[-60:])
    assert not failures, "\n".join(failures) + "\n--- the collector's log (tail):\n" + log_tail
