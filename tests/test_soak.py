"""The fault soak: the collector against a three-node RabbitMQ cluster, through a proxy that
injects faults, with real conntrack events from a namespace, for SOAK_SECONDS (`make soak` runs
it longer). At the end the quorum queue must hold every event the collector counted as
received (duplicates allowed, by message_id), or the event must be in a drop counter whose
reason is a bound that was exceeded; the longest stall must stay under SOAK_MAX_STALL_S.

It prints which fault it injects when, and one summary line (see soak/report.py)."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack

import pytest
from collector_process import Collector
from netns_util import free_tcp_port
from rabbitmq import needs_rabbitmq_server, unique_name
from soak.cluster import Cluster, consume_all
from soak.faults import Faults
from soak.monitor import Monitor
from soak.proxy import FaultProxy
from soak.report import Outcome, parse_stop_summary
from soak.traffic import Traffic

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "180"))
MAX_STALL_S = float(os.environ.get("SOAK_MAX_STALL_S", "30"))
# The collector's bound, given explicitly: a buffer_full drop is allowed only if the backlog
# really reached it (the soak's traffic never comes near).
MAX_BUFFER_EVENTS = 500_000
CATCH_UP_S = 60.0  # after the traffic stopped: the collector confirms everything, or it stalled

pytestmark = [pytest.mark.root, needs_rabbitmq_server, pytest.mark.timeout(SOAK_SECONDS + 900)]


def test_fault_soak(netns: str, capsys: pytest.CaptureFixture[str]) -> None:
    def say(line: str) -> None:
        with capsys.disabled():  # live, also under pytest's capture
            print(f"soak: {line}", flush=True)

    exchange, queue = unique_name("soak-ex"), unique_name("soak-q")
    with ExitStack() as stack:  # unwinds on any failure: collector, proxy, nodes, in that order
        say(f"{SOAK_SECONDS:.0f} s of faults; starting three private RabbitMQ nodes")
        cluster = stack.enter_context(Cluster(3))
        cluster.declare_quorum_queue(exchange, queue)
        proxy = stack.enter_context(FaultProxy([node.port for node in cluster.nodes]))
        metrics_port = free_tcp_port()
        collector = Collector(
            "--netns", netns, "--amqp-exchange", exchange,
            "--amqp-host", ",".join(f"127.0.0.1:{port}" for port in proxy.ports),
            "--metrics-addr", f"127.0.0.1:{metrics_port}",
            "--max-buffer-events", str(MAX_BUFFER_EVENTS))
        stack.callback(collector.stop)
        collector.wait_for("connected to RabbitMQ", 60)

        started = time.monotonic()
        traffic = Traffic(netns)
        faults = Faults(cluster, proxy, started, SOAK_SECONDS, say)
        monitor = Monitor(metrics_port, started,
                          lambda: f"fault {faults.current}, traffic {traffic.phase}",
                          lambda: collector.process.poll() is None)
        for undo in (monitor.stop, traffic.stop, lambda: faults.join(300), faults.abort):
            stack.callback(undo)
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
        say(f"{time.monotonic() - started:7.1f} s  traffic stopped: {traffic.flows} flows, "
            f"{2 * traffic.flows} events offered; waiting for the confirms")
        wait_for_confirms(monitor, 2 * traffic.flows, collector)
        code = collector.stop(timeout_s=60)
        monitor.stop()
        elapsed_s = time.monotonic() - started
        messages = consume_all(cluster.serving_node().port, queue)

    outcome = Outcome(
        flows=traffic.flows, messages=messages, stop=parse_stop_summary(collector.stderr),
        exit_code=code, exited_early=exited_early, injected=faults.injected,
        scheduled=[name for name, _ in faults.schedule],
        faults_without_effect=faults.without_effect, fault_error=faults.error,
        stall=monitor.longest, metric_samples=monitor.samples,
        peak_outstanding=monitor.peak_outstanding,
        max_buffer_events=MAX_BUFFER_EVENTS, max_stall_s=MAX_STALL_S, elapsed_s=elapsed_s)
    say(outcome.summary_line())
    failures = outcome.failures()
    assert not failures, ("\n".join(failures) + "\n--- the collector's log (tail):\n"
                          + "\n".join(collector.stderr[-60:]))


def wait_for_confirms(monitor: Monitor, offered: int, collector: Collector) -> None:
    """Until the collector received all `offered` events and has none outstanding, it exited,
    or CATCH_UP_S passed (a stall: the monitor measures it)."""
    deadline = time.monotonic() + CATCH_UP_S
    while time.monotonic() < deadline and collector.process.poll() is None:
        last = monitor.last
        received = sum(v for k, v in last.items() if k.startswith("events_received_total"))
        if received >= offered and monitor.outstanding(last) == 0:
            return
        time.sleep(0.5)
