"""The delivery ledger against a model, with hypothesis: random interleavings of sends,
republishes, acks and nacks (single and multiple, for tags that exist or not), returns,
channels lost and batches split; after every step, every event handed to the ledger is in
exactly one place (in flight, awaiting republish, confirmed), the counts agree, and nothing
confirmed is ever sent again."""

from __future__ import annotations

from collections import OrderedDict

from conntrack_collector.ledger import Ledger, Message
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule


class LedgerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.ledger = Ledger(id_prefix="test", clock=lambda: self.now)
        self.next_event = 0
        self.accepted: set[bytes] = set()
        self.confirmed: list[bytes] = []  # in the order confirmed; each at most once
        self.in_flight: OrderedDict[int, Message] = OrderedDict()  # the model's own book
        self.returned: set[int] = set()  # tags returned, their ack still to come
        self.last_tag = 0

    # ---- sending --------------------------------------------------------------------------

    @rule(n=st.integers(1, 4))
    def send_new(self, n: int) -> None:
        events = [b"e%d" % (self.next_event + i) for i in range(n)]
        self.next_event += n
        self.accepted.update(events)
        message = self.ledger.new_message(events)
        self._sent(message, again=False)

    @rule(n=st.integers(1, 3))
    def lose(self, n: int) -> None:
        """n events lost before the ledger saw them: their numbers are skipped."""
        self.next_event += n
        self.ledger.skip(n)

    @rule()
    def send_again(self) -> None:
        message = self.ledger.next_awaiting()
        if message is None:
            assert self.ledger.awaiting == 0
            return
        assert not set(message.events) & set(self.confirmed), "a confirmed event sent again"
        self._sent(message, again=True)

    @rule(sizes=st.lists(st.integers(1, 3), min_size=1, max_size=4), again=st.integers(0, 3))
    def send_many(self, sizes: list[int], again: int) -> None:
        """One drain: up to `again` messages waiting to be republished, then new ones, sent at
        once (sent_many, the publisher's hot path)."""
        batch: list[tuple[Message, bool]] = []
        for _ in range(again):
            message = self.ledger.next_awaiting()
            if message is None:
                break
            assert not set(message.events) & set(self.confirmed), "a confirmed event sent again"
            batch.append((message, True))
        for n in sizes:
            events = [b"e%d" % (self.next_event + i) for i in range(n)]
            self.next_event += n
            self.accepted.update(events)
            batch.append((self.ledger.new_message(events), False))
        counts = self.ledger.counts
        before = (counts.published, counts.republished)
        self.ledger.sent_many(batch)
        assert counts.published - before[0] == sum(len(m.events) for m, a in batch if not a)
        assert counts.republished - before[1] == sum(len(m.events) for m, a in batch if a)
        for message, _again in batch:  # tags count up from 1, in the batch's order
            self.last_tag += 1
            self.in_flight[self.last_tag] = message
        assert [m for _t, m in self.ledger.in_flight_messages()] == list(self.in_flight.values())

    def _sent(self, message: Message, *, again: bool) -> None:
        before = self.ledger.counts.republished if again else self.ledger.counts.published
        tag = self.ledger.sent(message, again=again)
        after = self.ledger.counts.republished if again else self.ledger.counts.published
        assert after - before == len(message.events)
        assert tag == self.last_tag + 1  # tags count up from 1 on each channel
        self.last_tag = tag
        self.in_flight[tag] = message

    # ---- the broker -----------------------------------------------------------------------

    def _taken(self, tag: int, multiple: bool) -> list[int]:
        if multiple:
            return [t for t in self.in_flight if t <= tag]
        return [tag] if tag in self.in_flight else []

    @rule(data=st.data(), multiple=st.booleans())
    def ack(self, data: st.DataObject, multiple: bool) -> None:
        tag = data.draw(st.integers(0, self.last_tag + 1))
        self.now += 0.001
        expected = []
        for t in self._taken(tag, multiple):
            message = self.in_flight.pop(t)
            if t in self.returned:
                self.returned.discard(t)
            else:
                expected.append(message)
        confirmed = self.ledger.ack(tag, multiple)
        assert confirmed == expected
        for message in confirmed:
            assert not set(message.events) & set(self.confirmed), "confirmed twice"
            self.confirmed.extend(message.events)

    @rule(data=st.data(), multiple=st.booleans())
    def nack(self, data: st.DataObject, multiple: bool) -> None:
        tag = data.draw(st.integers(0, self.last_tag + 1))
        expected = [self.in_flight.pop(t) for t in self._taken(tag, multiple)]
        for t in self._taken(tag, multiple):
            self.returned.discard(t)
        assert self.ledger.nack(tag, multiple) == expected

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data())
    def returned_then_acked_later(self, data: st.DataObject) -> None:
        tag = data.draw(st.sampled_from(list(self.in_flight)))
        assert self.ledger.returned(self.ledger.message_id(self.in_flight[tag]))
        self.returned.add(tag)

    @rule()
    def return_of_a_stranger(self) -> None:
        assert not self.ledger.returned("someone-else-7")
        assert not self.ledger.returned("test-notanumber")

    @rule()
    def channel_lost(self) -> None:
        before = self.ledger.awaiting_messages()
        lost = list(self.in_flight.values())
        assert self.ledger.requeue_all() == len(lost)
        # What was in flight goes first, in its order, before what already waited.
        assert self.ledger.awaiting_messages() == lost + before
        self.in_flight.clear()
        self.returned.clear()
        self.last_tag = 0

    @rule(max_body_bytes=st.integers(1, 40))
    def split_waiting_batches(self, max_body_bytes: int) -> None:
        before = [e for m in self.ledger.awaiting_messages() for e in m.events]
        self.ledger.split_awaiting(max_body_bytes)
        after = self.ledger.awaiting_messages()
        assert [e for m in after for e in m.events] == before  # same events, same order
        for message in after:
            assert len(message.events) == 1 or len(message.batch_body()) <= max_body_bytes

    # ---- after every step -----------------------------------------------------------------

    @invariant()
    def every_event_is_in_exactly_one_place(self) -> None:
        in_flight = [e for _tag, m in self.ledger.in_flight_messages() for e in m.events]
        awaiting = [e for m in self.ledger.awaiting_messages() for e in m.events]
        places = in_flight + awaiting + self.confirmed
        assert len(places) == len(set(places)), "an event in two places"
        assert set(places) == self.accepted, "an event lost"

    @invariant()
    def each_message_is_numbered_by_its_first_event(self) -> None:
        """`sequence` (Message.first) is its first event's number, whatever happened to it:
        published again, split, its channel lost (event eK is number K + 1)."""
        messages = [m for _tag, m in self.ledger.in_flight_messages()]
        for message in messages + self.ledger.awaiting_messages():
            assert message.first == int(message.events[0][1:]) + 1

    @invariant()
    def the_book_is_the_models(self) -> None:
        assert [tag for tag, _m in self.ledger.in_flight_messages()] == list(self.in_flight)
        assert self.ledger.in_flight == len(self.in_flight)

    @invariant()
    def counts_agree(self) -> None:
        counts = self.ledger.counts
        in_flight = sum(len(m.events) for _tag, m in self.ledger.in_flight_messages())
        awaiting = sum(len(m.events) for m in self.ledger.awaiting_messages())
        assert counts.in_flight_events == in_flight
        assert counts.awaiting_events == awaiting
        assert counts.confirmed == len(self.confirmed)
        assert self.ledger.outstanding_events == len(self.accepted) - len(self.confirmed)
        assert counts.published == len(self.accepted)
        assert counts.confirm_latency_count == counts.messages_confirmed


LedgerModel.TestCase.settings = settings(max_examples=1000, stateful_step_count=40,
                                         deadline=None)
test_ledger_model = LedgerModel.TestCase


def test_message_ids_are_stable_and_unique_per_process() -> None:
    a, b = Ledger(), Ledger()
    m = a.new_message([b"x"])
    assert a.message_id(m) == a.message_id(m) and a.message_id(m) != b.message_id(m)
