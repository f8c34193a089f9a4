"""Delivery faults, against real brokers: the publisher must never stall with work to do, never
treat a transient failure as fatal, and never drop a backlog over one message the broker refuses.

Each test is the regression test of one defect of issue 8 (numbered as there)."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.frame
import pika.spec
import pytest
from conntrack_collector import collector
from conntrack_collector.exit_codes import ExitCode
from conntrack_collector.stats import CollectorStats
from rabbitmq import consume, declare, delete, needs_broker, unique_name
from test_publish import event, settings


class ScriptedStream:
    """Gives events on a schedule: a list of (delay_s, events) steps. Then waits `observe_s`,
    records what the collector had confirmed by then (before any shutdown can flush it), and
    acts as if Ctrl-C was pressed."""

    def __init__(self, steps: list[tuple[float, list[bytes]]], stats: CollectorStats,
                 observe_s: float) -> None:
        self._pending: list[bytes] = []
        self._steps = list(steps)
        self._stats = stats
        self._next_at = time.monotonic()
        self._observe_s = observe_s
        self._observe_at: float | None = None
        self.confirmed_before_stop: int | None = None

    def poll(self, timeout_s: float) -> bytes | None:
        if self._pending:
            return self._pending.pop(0)
        now = time.monotonic()
        if self._steps:
            delay_s, events = self._steps[0]
            if now >= self._next_at + delay_s:
                self._steps.pop(0)
                self._next_at = now
                self._pending = list(events)
                return self._pending.pop(0) if self._pending else None
            time.sleep(min(timeout_s, 0.01))
            return None
        if self._observe_at is None:
            self._observe_at = now + self._observe_s
        if now < self._observe_at:
            time.sleep(min(timeout_s, 0.05))
            return None
        self.confirmed_before_stop = self._stats.confirmed
        raise KeyboardInterrupt

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"queued": 0, "overruns": 0}


def run(run_settings: collector.RunSettings, stream: Any, stats: CollectorStats) -> ExitCode:
    return collector.run(run_settings, stats, stream_factory=lambda _s: stream,
                         install_signals=False)


@pytest.fixture
def exchange_and_queue() -> Iterator[tuple[str, str]]:
    exchange, queue = unique_name("ex"), unique_name("q")
    declare(exchange, queue)
    yield exchange, queue
    delete(exchange, queue)


# ---- defect 1: the stall at the window's edge ----------------------------------------------

@needs_broker
def test_a_burst_that_fills_the_window_exactly_does_not_stall_what_follows(
        exchange_and_queue: tuple[str, str]) -> None:
    exchange, queue = exchange_and_queue
    stats = CollectorStats()
    burst = [event(i) for i in range(1000)]  # = --max-in-flight
    steps = [(0.0, burst)] + [(0.3, [event(1000 + i)]) for i in range(6)]
    stream = ScriptedStream(steps, stats, observe_s=2.0)
    assert run(settings(exchange), stream, stats) == ExitCode.OK
    assert stream.confirmed_before_stop == 1006, "events sat in the buffer until the stop"
    assert len(consume(queue, 1006, idle_s=0.3)) == 1006


@needs_broker
def test_a_window_of_one_publishes_every_event_of_a_trickle(
        exchange_and_queue: tuple[str, str]) -> None:
    exchange, queue = exchange_and_queue
    stats = CollectorStats()
    steps = [(0.2, [event(i)]) for i in range(5)]
    stream = ScriptedStream(steps, stats, observe_s=1.5)
    run_settings = dataclasses.replace(settings(exchange), max_in_flight=1)
    assert run(run_settings, stream, stats) == ExitCode.OK
    assert stream.confirmed_before_stop == 5, "only the first event of the trickle went out"
    assert len(consume(queue, 5, idle_s=0.3)) == 5


# ---- defect 2: a transient failure taken for a refusal ----------------------------------------

@pytest.fixture
def closes_after_start() -> Iterator[int]:
    """A listener that answers the AMQP protocol header with Connection.Start, then closes:
    what a broker does when it goes down during the handshake (or a proxy with no backend)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port: int = listener.getsockname()[1]
    frame = pika.frame.Method(0, pika.spec.Connection.Start(
        server_properties={"product": "RabbitMQ"}, mechanisms="PLAIN",
        locales="en_US")).marshal()
    stopping = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(8)  # AMQP\x00\x00\x09\x01
                    conn.sendall(frame)
                    conn.recv(4096)  # Connection.StartOk: then hang up
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stopping.set()
    thread.join(2)
    listener.close()


@needs_broker
def test_a_host_that_closes_during_the_handshake_is_skipped_not_fatal(
        exchange_and_queue: tuple[str, str], closes_after_start: int) -> None:
    exchange, queue = exchange_and_queue
    base = settings(exchange)
    broker = dataclasses.replace(
        base.broker, hosts=(("127.0.0.1", closes_after_start), ("127.0.0.1", 5672)))
    stats = CollectorStats()
    steps = [(0.0, [event(i) for i in range(500)])]
    stream = ScriptedStream(steps, stats, observe_s=3.0)
    code = run(dataclasses.replace(base, broker=broker), stream, stats)
    assert code == ExitCode.OK
    assert stats.dropped == 0
    assert stream.confirmed_before_stop == 500
    assert len(consume(queue, 500, idle_s=0.3)) == 500


@needs_broker
def test_a_handshake_closed_without_a_refusal_is_retried_not_fatal(
        closes_after_start: int) -> None:
    # The only host closes during the handshake: retried with backoff until the stop, events
    # held and reported as not delivered at shutdown, never a "refused the credentials" exit.
    base = settings("x", shutdown_timeout_s=0.5)
    broker = dataclasses.replace(base.broker, hosts=(("127.0.0.1", closes_after_start),))
    stats = CollectorStats()
    stream = ScriptedStream([(0.0, [event(i) for i in range(10)])], stats, observe_s=2.0)
    code = run(dataclasses.replace(base, broker=broker), stream, stats)
    assert code == ExitCode.OK
    assert stats.dropped_by_reason == {"shutdown": 10}


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
