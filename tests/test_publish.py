"""The buffer and the publisher, fed by a fake event stream (no root needed), publishing to
the shared RabbitMQ on 127.0.0.1:5672 into an exchange and queue of their own."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from conntrack_collector import collector, errors
from conntrack_collector.broker import BrokerSettings
from conntrack_collector.buffer import EVENT_OVERHEAD_BYTES, INDEX_BYTES, EventBuffer
from conntrack_collector.errors import ExitCode
from conntrack_collector.publisher import BATCH_TYPE
from conntrack_collector.stats import CollectorStats
from rabbitmq import consume, declare, delete, needs_broker, unique_name

TEMPLATE = (
    '{{"Timestamp":1764160000123,"Type":"{type}","Id":{id},"Original":{{"Layer3":{{"Protonum":2,'
    '"Protoname":"ipv4","Src":"10.0.0.1","Dst":"10.0.0.2"}},"Layer4":{{"Protonum":17,'
    '"Protoname":"udp","Sport":1,"Dport":2}},"Counter":{{"Packets":0,"Bytes":0}}}},"Reply":'
    '{{"Layer3":{{"Protonum":2,"Protoname":"ipv4","Src":"10.0.0.2","Dst":"10.0.0.1"}},'
    '"Layer4":{{"Protonum":17,"Protoname":"udp","Sport":2,"Dport":1}},"Counter":{{"Packets":0,'
    '"Bytes":0}}}},"UNREPLIED":true,"ASSURED":false}}'
)


def event(i: int) -> bytes:
    return TEMPLATE.format(type="NEW" if i % 2 == 0 else "DESTROY", id=i // 2).encode()


class FakeStream:
    """Gives its events, then waits `linger_s`, then acts as if Ctrl-C was pressed. Counts what
    it hands over by type, as EventStream does."""

    def __init__(self, events: list[bytes], linger_s: float = 0.0) -> None:
        self._events = list(reversed(events))
        self._linger_until: float | None = None
        self._linger_s = linger_s
        self.closed = False
        self.by_type = {"NEW": 0, "UPDATE": 0, "DESTROY": 0}

    def poll_many(self, timeout_s: float, max_events: int) -> list[bytes]:
        """As EventStream's: whatever is there, up to max_events; waits only for the first."""
        event = self.poll(timeout_s)
        events = [] if event is None else [event]
        while self._events and len(events) < max_events:
            events.append(self._events.pop())
        for each in events:
            self.by_type[json.loads(each)["Type"]] += 1
        return events

    def poll(self, timeout_s: float) -> bytes | None:
        if self._events:
            return self._events.pop()
        if self._linger_until is None:
            self._linger_until = time.monotonic() + self._linger_s
        if time.monotonic() < self._linger_until:
            time.sleep(min(timeout_s, 0.05))
            return None
        raise KeyboardInterrupt

    def stop_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def stats(self) -> dict[str, Any]:
        return {"queued": 0, "overruns": 0,
                **{f"delivered_{t.lower()}": n for t, n in self.by_type.items()}}


def settings(exchange: str, *, port: int = 5672, password: str = "guest", batch_events: int = 1,
             shutdown_timeout_s: float = 10.0, max_buffer_events: int = 500_000
             ) -> collector.RunSettings:
    return collector.RunSettings(
        types=("NEW", "DESTROY"), netns=None, nat_only=False, socket_buffer_bytes=1 << 20,
        reliable=False, output="amqp",
        broker=BrokerSettings(hosts=(("127.0.0.1", port),), vhost="/", user="guest",
                              password=password, exchange=exchange, router_id="r0uter0id000",
                              connect_timeout_s=2.0),
        max_buffer_events=max_buffer_events, max_buffer_bytes=10**9, max_in_flight=1000,
        batch_events=batch_events, shutdown_timeout_s=shutdown_timeout_s,
    )


def run(run_settings: collector.RunSettings, stream: FakeStream, stats: CollectorStats
        ) -> ExitCode:
    return collector.run(run_settings, stats, stream_factory=lambda _s: stream,
                         install_signals=False)


# ---- the buffer --------------------------------------------------------------------------------

def test_buffer_drops_the_newest_beyond_its_event_bound_and_counts() -> None:
    stats = CollectorStats()
    buffer = EventBuffer(max_events=3, max_bytes=10**6, stats=stats)
    assert [buffer.put(bytes([i])) for i in range(5)] == [True, True, True, False, False]
    assert stats.dropped_by_reason == {"buffer_full": 2}
    assert buffer.take(10) == [b"\x00", b"\x01", b"\x02"]  # the oldest kept, in order
    assert stats.publish_buffer_events == 0


def test_buffer_bound_in_bytes_counts_each_event_as_the_publisher_will_hold_it() -> None:
    stats = CollectorStats()
    # Each event counts its JSON and its overhead as a Python object once taken.
    buffer = EventBuffer(max_events=100, max_bytes=2 * (5 + EVENT_OVERHEAD_BYTES), stats=stats)
    assert buffer.put(b"12345") and buffer.put(b"12345")
    assert not buffer.put(b"1")
    assert stats.publish_buffer_bytes == 10 and stats.dropped == 1
    # Waiting, they are compact: their JSON and a 4-byte offset each.
    assert buffer.held_bytes == 2 * (5 + INDEX_BYTES)


def test_buffer_bound_counts_what_the_publisher_holds_until_released() -> None:
    """Events taken by the publisher (in flight, waiting to be sent again) are still in
    memory (the bound once forgot them); the bound counts them until the broker confirms them."""
    stats = CollectorStats()
    held = 3 * (100 + EVENT_OVERHEAD_BYTES)
    buffer = EventBuffer(max_events=10, max_bytes=held, stats=stats)
    assert buffer.put_many([b"x" * 100] * 3) == 3
    taken = buffer.take(10)
    assert len(taken) == 3 and len(buffer) == 0
    assert buffer.held_bytes == held
    assert not buffer.put(b"y")  # the publisher still holds the bound's worth
    buffer.release(3, 300)  # confirmed
    assert buffer.held_bytes == 0
    assert buffer.put(b"y")
    assert stats.dropped_by_reason == {"buffer_full": 1}


def test_buffer_put_many_keeps_the_oldest_that_fit() -> None:
    stats = CollectorStats()
    buffer = EventBuffer(max_events=4, max_bytes=10**6, stats=stats)
    assert buffer.put_many([b"a", b"b", b"c"]) == 3
    assert buffer.put_many([b"d", b"e", b"f"]) == 1
    assert buffer.take(10) == [b"a", b"b", b"c", b"d"]
    assert stats.dropped_by_reason == {"buffer_full": 2}


def test_buffer_take_respects_max_bytes_but_takes_at_least_one() -> None:
    buffer = EventBuffer(max_events=100, max_bytes=10**6, stats=CollectorStats())
    buffer.put_many([b"x" * 10, b"y" * 10, b"z" * 30, b"w"])
    assert buffer.take(10, max_bytes=25) == [b"x" * 10, b"y" * 10]
    assert buffer.take(10, max_bytes=25) == [b"z" * 30]  # alone over the bound: still taken
    assert buffer.take(10, max_bytes=25) == [b"w"]


def test_buffer_drop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    buffer = EventBuffer(max_events=1, max_bytes=100, stats=CollectorStats())
    buffer.put(b"a")
    buffer.put(b"b")
    assert "buffer full" in caplog.text


def test_buffer_wakes_the_consumer_once_after_running_dry() -> None:
    buffer = EventBuffer(max_events=10, max_bytes=100, stats=CollectorStats())
    woken: list[int] = []
    assert buffer.take(5, waker=lambda: woken.append(1)) == []
    buffer.put(b"a")
    buffer.put(b"b")
    assert woken == [1]


# ---- publishing ------------------------------------------------------------------------------

@needs_broker
def test_every_event_is_published_once_with_the_contract_properties(
        exchange_and_queue: tuple[str, str]) -> None:
    exchange, queue = exchange_and_queue
    count = 3000
    stats = CollectorStats()
    code = run(settings(exchange), FakeStream([event(i) for i in range(count)]), stats)
    assert code == ExitCode.OK
    messages = consume(queue, count, idle_s=0.5)
    assert sorted(m.body for m in messages) == sorted(event(i) for i in range(count))
    ids = {m.properties.message_id for m in messages}
    assert len(ids) == count
    # `sequence`: each event's number in the order received, 1 up, no hole.
    assert sorted(m.properties.headers["sequence"] for m in messages) == list(range(1, count + 1))
    by_sequence = {m.properties.headers["sequence"]: m.body for m in messages}
    assert [by_sequence[n + 1] for n in range(count)] == [event(i) for i in range(count)]
    for m in messages[:10]:
        assert m.properties.delivery_mode == 2
        assert m.properties.content_type == "application/json"
        assert m.properties.headers == {"router_id": "r0uter0id000",
                                        "sequence": m.properties.headers["sequence"]}
        assert abs(m.properties.timestamp - time.time()) < 60
    assert stats.confirmed == stats.published == count
    assert stats.received_by_type == {"NEW": count // 2, "UPDATE": 0, "DESTROY": count // 2}
    assert stats.dropped == 0 and stats.in_flight_events == 0


@needs_broker
def test_batching_puts_many_events_in_one_json_array(exchange_and_queue: tuple[str, str]) -> None:
    exchange, queue = exchange_and_queue
    count = 5000
    stats = CollectorStats()
    run(settings(exchange, batch_events=100), FakeStream([event(i) for i in range(count)]), stats)
    messages = consume(queue, 1, idle_s=1.0)
    assert len(messages) < count / 10
    events: list[dict[str, Any]] = []
    numbers: list[int] = []
    for m in messages:
        assert m.properties.type == BATCH_TYPE
        assert m.properties.content_type == "application/json"
        batch = json.loads(m.body)
        first = m.properties.headers["sequence"]
        assert m.properties.headers == {"router_id": "r0uter0id000", "events": len(batch),
                                        "sequence": first}
        numbers.extend(range(first, first + len(batch)))
        events.extend(batch)
    assert sorted(numbers) == list(range(1, count + 1))  # batches' numbers: contiguous
    assert sorted((e["Type"], e["Id"]) for e in events) == sorted(
        (json.loads(event(i))["Type"], json.loads(event(i))["Id"]) for i in range(count))
    assert stats.confirmed == count


@needs_broker
def test_events_wait_while_no_queue_is_bound_then_arrive(exchange_and_queue: tuple[str, str]
                                                         ) -> None:
    # Published `mandatory`: what no queue takes comes back and is published again later.
    exchange, queue = exchange_and_queue
    delete(exchange, queue)
    stats = CollectorStats()
    stream = FakeStream([event(i) for i in range(20)], linger_s=8.0)

    def bind_later() -> None:
        time.sleep(1.5)
        declare(exchange, queue)

    binder = threading.Thread(target=bind_later)
    binder.start()
    run(settings(exchange), stream, stats)
    binder.join()
    messages = consume(queue, 20, idle_s=0.5)
    assert sorted({m.body for m in messages}) == sorted(event(i) for i in range(20))
    assert stats.returned > 0
    assert stats.confirmed == 20


@needs_broker
def test_unreachable_broker_reports_what_was_not_delivered(caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    caplog.set_level("INFO")
    stats = CollectorStats()
    code = run(settings("x", port=1, shutdown_timeout_s=1.0),
               FakeStream([event(i) for i in range(10)]), stats)
    assert code == ExitCode.OK
    assert stats.dropped_by_reason == {"shutdown": 10}
    assert "received 10 events, delivered 0, not delivered 10 (shutdown: 10)" in caplog.text


@needs_broker
def test_refused_credentials_are_one_clear_error() -> None:
    with pytest.raises(errors.Error) as info:
        run(settings("x", password="wrong"), FakeStream([], linger_s=30), CollectorStats())
    assert info.value.code == ExitCode.ERROR
    assert "refused the credentials of user 'guest'" in str(info.value)


@needs_broker
def test_exchange_of_another_type_is_one_clear_error() -> None:
    exchange = unique_name("fanout")
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    connection.channel().exchange_declare(exchange, "fanout", durable=True)
    try:
        with pytest.raises(errors.Error) as info:
            run(settings(exchange), FakeStream([event(0)], linger_s=30), CollectorStats())
        assert f"refused exchange {exchange!r}" in str(info.value)
        assert "PRECONDITION_FAILED" in str(info.value)
    finally:
        connection.channel().exchange_delete(exchange)
        connection.close()


@needs_broker
def test_nacked_messages_are_published_again_until_the_broker_takes_them() -> None:
    # A queue that holds 10 messages and nacks more (overflow=reject-publish), emptied slowly.
    import pika

    exchange, queue = unique_name("ex"), unique_name("q")
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    channel = connection.channel()
    channel.exchange_declare(exchange, "direct", durable=True)
    channel.queue_declare(queue, arguments={"x-max-length": 10, "x-overflow": "reject-publish"})
    channel.queue_bind(queue, exchange, "")
    got: list[bytes] = []

    def drain_slowly() -> None:
        consumer = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
        ch = consumer.channel()
        deadline = time.monotonic() + 30
        while len(got) < 40 and time.monotonic() < deadline:
            method, _properties, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                time.sleep(0.2)
            else:
                got.append(body)
        consumer.close()

    reader = threading.Thread(target=drain_slowly)
    reader.start()
    stats = CollectorStats()
    try:
        run(settings(exchange), FakeStream([event(i) for i in range(40)], linger_s=1.0), stats)
        reader.join()
    finally:
        channel.queue_delete(queue)
        channel.exchange_delete(exchange)
        connection.close()
    assert stats.nacked > 0
    assert sorted(set(got)) == sorted(event(i) for i in range(40))
    assert stats.confirmed == 40


@needs_broker
def test_a_failing_reader_is_one_error_after_delivering_what_it_read(
        exchange_and_queue: tuple[str, str]) -> None:
    exchange, queue = exchange_and_queue

    class Failing(FakeStream):
        def poll(self, timeout_s: float) -> bytes | None:
            if not self._events:
                raise OSError("netlink socket gone")
            return super().poll(timeout_s)

    stats = CollectorStats()
    with pytest.raises(errors.Error, match="reading conntrack events failed: netlink socket"):
        run(settings(exchange), Failing([event(i) for i in range(5)]), stats)
    assert stats.confirmed == 5
    assert len(consume(queue, 5, idle_s=0.2)) == 5
