"""The publisher's scheduling against a model, with hypothesis and no broker: a real Session,
ledger and buffer on a fake pika connection (tests/fake_pika.py) whose callbacks and timers run
when the test says. Random interleavings of puts, drains (callbacks, timers), acks and nacks
(single and multiple), returns, connections lost, reconnections and a stop; after every step:

- every accepted event is in exactly one place: buffered, in flight, awaiting republish,
  confirmed; every refused one is dropped with a reason;
- connected, with room in the window and events to publish, a publish is pending on the
  ioloop: the publisher cannot stall (it once did, at the window's edge);
- nothing confirmed is sent again; the window is never exceeded;
- every message's `sequence` header is the number of its first event in the order received
  (lost events, refused by the buffer or dropped by the kernel, take numbers too), the same
  when it is published again; at the end, the events delivered and the gap records (with
  gap_records) cover every number once.

At the end of every run the broker acks whatever comes, and everything accepted must be
confirmed."""

from __future__ import annotations

import json

import pika.frame
import pika.spec
import pytest
from conntrack_collector.broker import Refusal
from conntrack_collector.buffer import EventBuffer
from conntrack_collector.gaps import GAP_TYPE, KERNEL, gap_record
from conntrack_collector.ledger import Ledger
from conntrack_collector.publisher import after_round
from conntrack_collector.session import BATCH_TYPE, Session, SessionOptions, SessionResult
from conntrack_collector.stats import CollectorStats
from fake_pika import FakeChannel, FakeConnection
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

PARAMETERS = pika.ConnectionParameters("fake-broker", 5672)


def confirm(tag: int, multiple: bool, nack: bool = False) -> pika.frame.Method:
    method = pika.spec.Basic.Nack if nack else pika.spec.Basic.Ack
    return pika.frame.Method(1, method(delivery_tag=tag, multiple=multiple))


class PublisherModel(RuleBasedStateMachine):
    @initialize(max_in_flight=st.integers(1, 4), batch_events=st.sampled_from([1, 3]),
                buffer_events=st.integers(2, 12), gap_records=st.booleans(),
                bulk_write=st.booleans())
    def setup(self, max_in_flight: int, batch_events: int, buffer_events: int,
              gap_records: bool, bulk_write: bool) -> None:
        self.now = 0.0
        self.stats = CollectorStats()
        self.buffer = EventBuffer(buffer_events, 10**6, self.stats)
        self.ledger = Ledger(id_prefix="model", clock=lambda: self.now)
        self.options = SessionOptions(
            exchange="ex", router_id="r", max_in_flight=max_in_flight,
            batch_events=batch_events, batch_bytes=4 << 20, bulk_write=bulk_write,
            return_pause_s=5.0, gap_records=gap_records)
        self.stopping = False
        self.session: Session | None = None
        self.connection: FakeConnection | None = None
        self.received = 0  # events numbered: accepted, refused, lost by the kernel
        self.kernel_lost = 0
        self.accepted: set[bytes] = set()
        self.delivered: set[bytes] = set()  # the broker confirmed them (and routed them)
        self.delivered_ids: set[str] = set()
        self.delivered_gaps: dict[int, int] = {}  # sequence: Lost, of gap records delivered
        self.sequence_of: dict[str, int] = {}  # message_id: its sequence header, once seen
        self.seen_published = 0
        self.reconnect()

    # ---- the collector's side ---------------------------------------------------------------

    @rule(n=st.integers(1, 5))
    def put(self, n: int) -> None:
        for _ in range(n):
            event = b'{"n":%d}' % self.received
            self.received += 1
            if self.buffer.put(event):  # the waker, when registered, fires in here
                self.accepted.add(event)

    @rule(n=st.integers(1, 3))
    def kernel_loss(self, n: int) -> None:
        """The kernel dropped n events: their numbers go to a gap item, where we are."""
        self.received += n
        self.kernel_lost += n
        self.buffer.put_gap(gap_record(n, KERNEL, 0, 0))

    @rule()
    def run_callbacks(self) -> None:
        if self.connection is not None:
            self.connection.ioloop.run_callbacks()
        self._check_ended()

    @rule()
    def fire_timer(self) -> None:
        if self.connection is None:
            return
        at = self.connection.ioloop.next_timer_at()
        if at is not None:
            self.now = max(self.now, at)
            self.connection.ioloop.run_next_timer()
        self._check_ended()

    @rule()
    def reconnect(self) -> None:
        if self.session is not None:
            return  # connected already
        def clock() -> float:  # the fake ioloop's clock is the model's
            return self.now
        self.session = Session(
            PARAMETERS, self.options, self.ledger, self.buffer, self.stats,
            stopping=lambda: self.stopping, closing=lambda: False,
            connection_factory=lambda *a, **k: FakeConnection(*a, clock=clock, **k),
            clock=clock, wall_clock=lambda: 1_764_160_000.0)
        self.session.connect()
        self.connection = self.session.connection
        self.seen_published = 0
        self.connection.open()  # channel, exchange, confirms: at once; then a first drain
        self._check_ended()

    @rule()
    def stop(self) -> None:
        self.stopping = True
        if self.session is not None:
            self.session.wake()

    # ---- the broker's side ------------------------------------------------------------------

    def _channel(self) -> FakeChannel | None:
        if self.connection is None or self.connection.closed:
            return None
        return self.connection.channel_

    def _pick(self, data: st.DataObject) -> tuple[FakeChannel, int] | None:
        channel = self._channel()
        if channel is None or not channel.unconfirmed:
            return None
        return channel, data.draw(st.sampled_from(sorted(channel.unconfirmed)))

    def _confirmed_tags(self, channel: FakeChannel, tag: int, multiple: bool) -> list[int]:
        return [t for t in sorted(channel.unconfirmed) if t <= tag] if multiple else [tag]

    @rule(data=st.data(), multiple=st.booleans())
    def ack(self, data: st.DataObject, multiple: bool) -> None:
        picked = self._pick(data)
        if picked is None:
            return
        channel, tag = picked
        self._ack(channel, tag, multiple)

    def _ack(self, channel: FakeChannel, tag: int, multiple: bool) -> None:
        for t in self._confirmed_tags(channel, tag, multiple):
            published = channel.unconfirmed.pop(t)
            if not published.returned and published.type == GAP_TYPE:
                assert published.sequence is not None
                self.delivered_gaps[published.sequence] = json.loads(published.body)["Lost"]
            elif not published.returned:
                self.delivered.update(self._events_of(published.body))
                self.delivered_ids.add(published.message_id)
        assert self.session is not None
        self.session.on_delivery_confirmation(confirm(tag, multiple))
        self._check_ended()

    @rule(data=st.data(), multiple=st.booleans())
    def nack(self, data: st.DataObject, multiple: bool) -> None:
        picked = self._pick(data)
        if picked is None:
            return
        channel, tag = picked
        for t in self._confirmed_tags(channel, tag, multiple):
            channel.unconfirmed.pop(t)
        assert self.session is not None
        self.session.on_delivery_confirmation(confirm(tag, multiple, nack=True))
        self._check_ended()

    @rule(data=st.data())
    def return_unroutable(self, data: st.DataObject) -> None:
        # No queue bound: the broker returns the message, then acks it (in that order).
        picked = self._pick(data)
        if picked is None:
            return
        channel, tag = picked
        published = channel.unconfirmed[tag]
        published.returned = True
        assert self.session is not None
        self.session.on_message_returned(
            channel, pika.spec.Basic.Return(312, "NO_ROUTE", "ex", ""),
            pika.BasicProperties(message_id=published.message_id), published.body)
        self._ack(channel, tag, False)

    @rule()
    def lose_connection(self) -> None:
        if self.connection is not None and not self.connection.closed:
            self.connection.lose()
        self._check_ended()

    def _check_ended(self) -> None:
        """The ioloop stopped (connection closed or lost): the session ends, as in run()."""
        if self.session is not None and self.connection is not None \
                and self.connection.ioloop.stopped:
            self.session.finish()
            self.connection.ioloop.close()
            self.session = None

    def _events_of(self, body: bytes) -> list[bytes]:
        if self.options.batch_events == 1:
            return [body]
        return [json.dumps(e, separators=(",", ":")).encode() for e in json.loads(body)]

    # ---- after every step -------------------------------------------------------------------

    @invariant()
    def every_event_is_in_exactly_one_place(self) -> None:
        if not hasattr(self, "ledger"):
            return
        in_flight = [e for _tag, m in self.ledger.in_flight_messages() if not m.gap
                     for e in m.events]
        awaiting = [e for m in self.ledger.awaiting_messages() if not m.gap for e in m.events]
        places = in_flight + awaiting + sorted(self.delivered)
        assert len(places) == len(set(places)), "an event in two places"
        assert set(places) <= self.accepted
        assert self.buffer.events_held + len(places) == len(self.accepted), "an event lost"
        assert self.ledger.counts.confirmed == len(self.delivered)
        dropped = self.stats.dropped_by_reason
        assert self.received == (len(self.accepted) + dropped.get("buffer_full", 0)
                                 + self.kernel_lost)
        assert set(dropped) <= {"buffer_full"}

    @invariant()
    def a_publish_is_pending_whenever_there_is_room_and_work(self) -> None:
        session = getattr(self, "session", None)
        if session is None or not session.ready or self.connection is None:
            return
        room = self.ledger.in_flight < self.options.max_in_flight
        work = len(self.buffer) > 0 or self.ledger.awaiting > 0
        if room and work:
            assert self.connection.ioloop.pending(), (
                f"stalled: {len(self.buffer)} buffered, {self.ledger.awaiting} awaiting, "
                f"{self.ledger.in_flight}/{self.options.max_in_flight} in flight, "
                "nothing scheduled")

    @invariant()
    def nothing_confirmed_is_sent_again_and_the_window_holds(self) -> None:
        connection = getattr(self, "connection", None)
        if connection is None:
            return
        for published in connection.published[self.seen_published:]:
            assert published.message_id not in self.delivered_ids, "a confirmed message sent again"
            assert published.sequence == self.sequence_of.setdefault(
                published.message_id, published.sequence), "a message republished renumbered"
            if published.type == GAP_TYPE:
                assert self.options.gap_records
                continue
            if self.options.batch_events > 1:
                assert len(json.loads(published.body)) == published.events
            first = self._events_of(published.body)[0]
            assert published.sequence == json.loads(first)["n"] + 1, "numbered out of order"
        self.seen_published = len(connection.published)
        assert self.ledger.in_flight <= self.options.max_in_flight
        channel = self._channel()
        if channel is not None and self.session is not None:
            assert len(channel.unconfirmed) == self.ledger.in_flight

    def teardown(self) -> None:
        """The broker comes back and acks everything: all that was accepted gets delivered,
        and after a stop the connection is closed once it is."""
        if not hasattr(self, "ledger"):
            return
        self.buffer.put_gap(None)  # at stop: the gap of the last events refused, if any
        for _ in range(10_000):
            if self.session is None:
                self.reconnect()
            assert self.connection is not None
            channel = self._channel()
            if channel is not None and channel.unconfirmed:
                self._ack(channel, min(channel.unconfirmed), False)
            elif self.connection.ioloop.callbacks:
                self.run_callbacks()
            elif self.connection.ioloop.next_timer_at() is not None:
                self.fire_timer()
            else:
                break
        assert len(self.buffer) == 0 and self.ledger.outstanding_messages == 0, (
            f"never delivered: {len(self.buffer)} buffered, {self.ledger.awaiting} awaiting, "
            f"{self.ledger.in_flight} in flight")
        assert self.delivered == self.accepted
        numbers = [json.loads(e)["n"] + 1 for e in self.delivered]
        if self.options.gap_records:
            numbers += [s + i for s, lost in self.delivered_gaps.items() for i in range(lost)]
            assert sorted(numbers) == list(range(1, self.received + 1)), "a hole in the numbers"
        else:
            assert not self.delivered_gaps
        if self.stopping:
            assert self.connection is not None and self.connection.closed


PublisherModel.TestCase.settings = settings(
    max_examples=1000, stateful_step_count=40, deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink])
test_publisher_model = PublisherModel.TestCase


@pytest.mark.parametrize("bulk_write", [False, True])
def test_batch_messages_carry_their_type_and_event_count(bulk_write: bool) -> None:
    # Through basic_publish, and through the frame encoder (parsed back by pika's decoder).
    model = PublisherModel()
    model.setup(max_in_flight=2, batch_events=3, buffer_events=10, gap_records=False,
                bulk_write=bulk_write)
    model.put(5)
    model.run_callbacks()  # the waker's callback: a drain
    model.fire_timer()
    assert model.connection is not None
    channel = model.connection.channel_
    assert channel is not None
    assert [p.events for p in channel.unconfirmed.values()] == [3, 2]
    assert {p.type for p in channel.unconfirmed.values()} == {BATCH_TYPE}
    assert [json.loads(p.body) for p in channel.unconfirmed.values()] == [
        [{"n": 0}, {"n": 1}, {"n": 2}], [{"n": 3}, {"n": 4}]]
    assert [p.sequence for p in channel.unconfirmed.values()] == [1, 4]


@pytest.mark.parametrize("bulk_write", [False, True])
def test_a_gap_ends_a_batch_and_takes_the_numbers_of_what_was_lost(bulk_write: bool) -> None:
    model = PublisherModel()
    model.setup(max_in_flight=4, batch_events=3, buffer_events=10, gap_records=True,
                bulk_write=bulk_write)
    model.put(2)
    model.kernel_loss(5)
    model.put(2)
    model.run_callbacks()
    model.fire_timer()
    assert model.connection is not None and model.connection.channel_ is not None
    published = list(model.connection.channel_.unconfirmed.values())
    assert [(p.type, p.sequence) for p in published] == [
        (BATCH_TYPE, 1), (GAP_TYPE, 3), (BATCH_TYPE, 8)]
    assert json.loads(published[1].body) == {"Type": "GAP", "Lost": 5, "Where": "kernel",
                                             "From": 0, "To": 0}
    assert [json.loads(p.body) for p in (published[0], published[2])] == [
        [{"n": 0}, {"n": 1}], [{"n": 7}, {"n": 8}]]


@pytest.mark.parametrize("bulk_write", [False, True])
def test_a_message_per_event_carries_its_number_around_a_gap(bulk_write: bool) -> None:
    # The hot path (a message per event, frames written in one pass) and pika's own.
    model = PublisherModel()
    model.setup(max_in_flight=8, batch_events=1, buffer_events=10, gap_records=True,
                bulk_write=bulk_write)
    model.put(2)
    model.kernel_loss(5)
    model.put(2)
    model.run_callbacks()
    model.fire_timer()
    assert model.connection is not None and model.connection.channel_ is not None
    published = list(model.connection.channel_.unconfirmed.values())
    assert [(p.type == GAP_TYPE, p.sequence) for p in published] == [
        (False, 1), (False, 2), (True, 3), (False, 8), (False, 9)]


# ---- the loop's decision after a round over the hosts ------------------------------------------

REFUSED = [Refusal("RabbitMQ at h:5672 refused the credentials of user 'u'", credentials=True)]


@pytest.mark.parametrize(("ready_for_s", "refusals", "ever_ready", "expected"), [
    (60.0, [], True, "again"),  # a connection that worked was lost: reconnect at once
    (60.0, REFUSED, True, "again"),  # an earlier host refused, a later one worked for long
    (1.0, [], True, "backoff"),  # closed right after it got ready: do not spin
    (None, [], False, "backoff"),  # nobody answered (or hung up during the handshake)
    (None, [], True, "backoff"),
    (None, REFUSED, False, "fatal"),  # refused, and it never worked: a wrong configuration
    (None, REFUSED, True, "backoff"),  # refused after it worked: rotated credentials, retried
])
def test_after_a_round_only_a_refusal_of_what_never_worked_is_fatal(
        ready_for_s: float | None, refusals: list[Refusal], ever_ready: bool,
        expected: str) -> None:
    ready = None if ready_for_s is None else SessionResult("h:5672", ready_for_s=ready_for_s)
    assert after_round(ready, refusals, ever_ready) == expected
