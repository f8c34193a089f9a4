"""Delivery faults, against real brokers: the publisher must never stall with work to do, never
treat a transient failure as fatal, and never drop a backlog over one message the broker refuses.

Each test is the regression test of one defect, seen failing before its fix."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.frame
import pika.spec
import pytest
from conntrack_collector import collector
from conntrack_collector import session as session_module
from conntrack_collector.broker import BrokerSettings
from conntrack_collector.buffer import EventBuffer
from conntrack_collector.errors import ExitCode
from conntrack_collector.publisher import BATCH_TYPE, DEFAULT_BATCH_BYTES, Publisher
from conntrack_collector.stats import CollectorStats
from rabbitmq import (
    consume,
    declare,
    needs_broker,
    needs_rabbitmq_server,
    private_node,
    unique_name,
)
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

    def stop_reading(self) -> None:
        pass

    def poll_many(self, timeout_s: float, max_events: int) -> list[bytes]:
        """As EventStream's: whatever is there, up to max_events; waits only for the first."""
        event = self.poll(timeout_s)
        events = [] if event is None else [event]
        while self._pending and len(events) < max_events:
            events.append(self._pending.pop(0))
        return events

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"queued": 0, "overruns": 0}


def run(run_settings: collector.RunSettings, stream: Any, stats: CollectorStats) -> ExitCode:
    return collector.run(run_settings, stats, stream_factory=lambda _s: stream,
                         install_signals=False)


# ---- the stall at the window's edge ---------------------------------------------------------

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


# ---- a transient failure taken for a refusal ------------------------------------------------

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


@needs_broker
def test_an_explicit_refusal_from_every_host_before_any_success_is_one_clear_error(
        closes_after_start: int) -> None:
    # A virtual host that does not exist: the broker closes the handshake with 530 NOT_ALLOWED.
    # The first host only hangs up (transient); the second refuses: a configuration that never
    # worked, one line, exit 1.
    base = settings("x")
    vhost = unique_name("vhost")
    broker = dataclasses.replace(base.broker, vhost=vhost,
                                 hosts=(("127.0.0.1", closes_after_start), ("127.0.0.1", 5672)))
    stats = CollectorStats()
    stream = ScriptedStream([], stats, observe_s=30.0)
    with pytest.raises(collector.Error) as info:
        run(dataclasses.replace(base, broker=broker), stream, stats)
    assert info.value.code == ExitCode.ERROR
    assert f"RabbitMQ at 127.0.0.1:5672 denied access to virtual host {vhost!r}" in str(info.value)
    assert "NOT_ALLOWED" in str(info.value)


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


class SwitchableCredentials:
    """A credentials provider as a secrets store would be: the test changes the password, as
    a rotation would; `refused()` is counted."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.refusals = 0

    def current(self) -> tuple[str, str]:
        return self.user, self.password

    def refused(self) -> None:
        self.refusals += 1


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout


needs_rabbitmqctl = pytest.mark.skipif(shutil.which("rabbitmqctl") is None,
                                       reason="needs rabbitmqctl for the shared broker")


@pytest.fixture
def broker_user() -> Iterator[str]:
    user = unique_name("user")
    rabbitmqctl("add_user", user, "one")
    rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    yield user
    with contextlib.suppress(subprocess.CalledProcessError):
        rabbitmqctl("delete_user", user)


@pytest.mark.root  # rabbitmqctl reads the Erlang cookie
@needs_broker
@needs_rabbitmqctl
def test_credentials_refused_after_publishing_are_retried_not_fatal(
        exchange_and_queue: tuple[str, str], broker_user: str,
        caplog: pytest.LogCaptureFixture) -> None:
    # Credentials rotated under a running collector: it keeps its events, says so loudly,
    # asks its provider for new credentials after each refusal, and delivers once they work.
    exchange, queue = exchange_and_queue
    base = settings(exchange)
    broker = dataclasses.replace(base.broker, user=broker_user, password="one")
    stats = CollectorStats()
    buffer = EventBuffer(10_000, 10**8, stats)
    credentials = SwitchableCredentials(broker_user, "one")
    publisher = Publisher(broker, buffer, stats, credentials=credentials,
                          reconnect_min_s=0.2, reconnect_max_s=0.5)
    publisher.start()
    try:
        buffer.put(event(0))
        assert wait_until(lambda: stats.confirmed == 1, 10)
        rabbitmqctl("change_password", broker_user, "two")
        for line in rabbitmqctl("list_connections", "pid", "user").splitlines():
            pid, _, user = line.partition("\t")
            if user.strip() == broker_user:
                rabbitmqctl("close_connection", pid, "credentials rotated")
        for i in range(1, 11):
            buffer.put(event(i))
        assert wait_until(lambda: credentials.refusals >= 2, 15), caplog.text
        assert publisher.fatal_error is None and publisher.alive()
        assert publisher.outstanding() == 10
        credentials.password = "two"
        assert wait_until(lambda: stats.confirmed == 11, 15), caplog.text
    finally:
        assert publisher.stop(5.0)
    assert "refused the credentials" in caplog.text
    assert len(consume(queue, 11, idle_s=0.3)) == 11


# ---- a message larger than the broker accepts -----------------------------------------------

def deliver_backlog(broker: BrokerSettings, count: int, **options: Any) -> CollectorStats:
    """A backlog of `count` events (as after an outage), then the publisher starts; stopped
    once all are confirmed, a fatal error, or 30 s."""
    stats = CollectorStats()
    buffer = EventBuffer(10**6, 10**9, stats)
    for i in range(count):
        buffer.put(event(i))
    publisher = Publisher(broker, buffer, stats, **options)
    publisher.start()
    wait_until(lambda: stats.confirmed >= count or publisher.fatal_error is not None, 30)
    assert publisher.fatal_error is None
    assert publisher.stop(5.0)
    return stats


@pytest.mark.root
@needs_rabbitmq_server
def test_batches_are_capped_below_the_brokers_message_size_limit_and_never_dropped() -> None:
    # RabbitMQ 4's default max_message_size, on a node of our own. 40,000 events of ~470 bytes
    # would be one 18 MB message with --batch-events 100000: on 39301bb the broker closed the
    # channel, reported as "refused exchange", fatal, the backlog dropped.
    exchange, queue = unique_name("ex"), unique_name("q")
    count = 40_000
    expected = {(json.loads(event(i))["Type"], i // 2) for i in range(count)}
    with private_node(extra_config=("max_message_size = 16777216",)) as node:
        declare(exchange, queue, port=node.port)
        broker = settings(exchange, port=node.port).broker
        stats = deliver_backlog(broker, count, batch_events=100_000)
        assert stats.confirmed == count and stats.dropped == 0
        messages = consume(queue, 1, port=node.port, idle_s=1.0)
        assert sum(len(json.loads(m.body)) for m in messages) == count
        assert max(len(m.body) for m in messages) <= DEFAULT_BATCH_BYTES

        # A cap above what this broker takes: the broker closes the channel over one message.
        # Not an exchange problem, and no reason to give up: the collector keeps the events,
        # lowers its cap to the limit the broker named, and delivers them.
        stats = deliver_backlog(broker, count, batch_events=100_000, batch_bytes=64 << 20)
        assert stats.confirmed == count and stats.dropped == 0
        messages = consume(queue, 1, port=node.port, idle_s=1.0)
        assert {(e["Type"], e["Id"]) for m in messages for e in json.loads(m.body)} == expected
        assert max(len(m.body) for m in messages) <= 16 << 20


# ---- pika's private bulk write ------------------------------------------------------------

@needs_broker
@pytest.mark.parametrize("bulk_write", [True, False], ids=["bulk-write", "basic_publish"])
@pytest.mark.parametrize("batch_events", [1, 50])
def test_both_publish_paths_deliver_with_the_contract_properties(
        exchange_and_queue: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, bulk_write: bool, batch_events: int) -> None:
    # The fast path writes our own frames through a private pika method; without it (a future
    # pika), basic_publish must deliver the same messages.
    if not bulk_write:
        monkeypatch.setattr(session_module, "BULK_WRITE_METHOD", "_no_such_method_in_pika")
    exchange, queue = exchange_and_queue
    count = 1200
    stats = CollectorStats()
    stream = ScriptedStream([(0.0, [event(i) for i in range(count)])], stats, observe_s=1.0)
    caplog.set_level("INFO")
    assert run(settings(exchange, batch_events=batch_events), stream, stats) == ExitCode.OK
    assert ("falling back to basic_publish" in caplog.text) is not bulk_write
    messages = consume(queue, 1, idle_s=0.5)
    bodies = ([json.dumps(e, separators=(",", ":")).encode() for m in messages
               for e in json.loads(m.body)] if batch_events > 1 else [m.body for m in messages])
    assert sorted(bodies) == sorted(event(i) for i in range(count))
    assert len({m.properties.message_id for m in messages}) == len(messages)
    for m in messages:
        assert m.properties.delivery_mode == 2
        assert m.properties.content_type == "application/json"
        if batch_events > 1:
            assert m.properties.type == BATCH_TYPE
            assert m.properties.headers == {"router_id": "r0uter0id000",
                                            "events": len(json.loads(m.body)),
                                            "sequence": m.properties.headers["sequence"]}
        else:
            assert m.properties.type is None
            assert m.properties.headers == {"router_id": "r0uter0id000",
                                            "sequence": m.properties.headers["sequence"]}
    assert stats.confirmed == count
