"""The delivery ledger: every message from its first publish until the broker confirms it.

It knows nothing of pika or of threads: the session tells it what happened (`sent`, `ack`,
`nack`, `returned`, `requeue_all` when a connection or channel ends) and asks it what to send
again (`next_awaiting`). A message is at every moment in exactly one place: in flight (sent on
the current channel, under a delivery tag, not yet confirmed), awaiting republish (nacked,
returned, or in flight when its channel ended), or confirmed (counted, forgotten). Nothing
confirmed is ever sent again, and nothing leaves the ledger unconfirmed.

The counts live here, in `counts`; the stats and the metrics only read them.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, NamedTuple


class Message(NamedTuple):
    """One AMQP message: one event, a batch (a JSON array) of several, or a gap record."""

    seq: int  # message_id is f"{prefix}-{seq}": stable across republishing
    events: tuple[bytes, ...]  # a gap record: its body, alone
    first: int = 0  # the `sequence` header: its first event's number (a gap: the first lost)
    gap: bool = False

    @property
    def event_count(self) -> int:
        """Events it carries: what the counts count (a gap record carries none)."""
        return 0 if self.gap else len(self.events)

    @property
    def event_bytes(self) -> int:
        return sum(map(len, self.events))

    def batch_body(self) -> bytes:
        return b"[" + b",".join(self.events) + b"]"


class Flight(NamedTuple):
    message: Message
    sent_at: float  # the clock's time of this publish, for the confirm latency


@dataclass
class DeliveryCounts:
    """In events, not messages (a batch counts its events), unless the name says messages."""

    published: int = 0  # first publish of an event
    republished: int = 0  # published again after a nack, a return or a lost connection
    confirmed: int = 0  # acked by the broker: delivered
    nacked: int = 0
    returned: int = 0
    messages_confirmed: int = 0
    gap_records_confirmed: int = 0
    in_flight_events: int = 0
    awaiting_events: int = 0  # nacked, returned or unconfirmed at a disconnect: sent again first
    # Publish-to-confirm latency, summed over confirmed messages.
    confirm_latency_s_sum: float = 0.0
    confirm_latency_count: int = 0


class Ledger:
    def __init__(self, id_prefix: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # A per-process random prefix makes `prefix-seq` unique across restarts and routers.
        # os.urandom is what secrets.token_hex reads, without the hashlib (OpenSSL) it imports.
        self.id_prefix = id_prefix or os.urandom(8).hex()
        self.counts = DeliveryCounts()
        self._clock = clock
        self._seq = 0
        self._next_event = 1  # the number of the next event taken (see gaps.py)
        self._tag = 0  # the last delivery tag used on the current channel
        self._in_flight: OrderedDict[int, Flight] = OrderedDict()
        self._awaiting: deque[Message] = deque()
        self._returned: set[int] = set()  # seqs the broker returned, their ack still to come

    # ---- what there is ----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Messages (not events) in flight: what the window `--max-in-flight` bounds."""
        return len(self._in_flight)

    @property
    def awaiting(self) -> int:
        """Messages waiting to be published again."""
        return len(self._awaiting)

    @property
    def outstanding_events(self) -> int:
        """Events handed to the ledger and not yet confirmed."""
        return self.counts.in_flight_events + self.counts.awaiting_events

    @property
    def outstanding_messages(self) -> int:
        """Messages not yet confirmed, gap records included."""
        return len(self._in_flight) + len(self._awaiting)

    def in_flight_messages(self) -> list[tuple[int, Message]]:
        """(delivery tag, message) of what is in flight, oldest first."""
        return [(tag, flight.message) for tag, flight in self._in_flight.items()]

    def awaiting_messages(self) -> list[Message]:
        return list(self._awaiting)

    def message_id(self, message: Message) -> str:
        return f"{self.id_prefix}-{message.seq}"

    # ---- sending ----------------------------------------------------------------------------

    def new_message(self, events: Sequence[bytes]) -> Message:
        """A message of events taken from the buffer, with the next sequence number; its
        events take the next event numbers."""
        self._seq += 1
        first, self._next_event = self._next_event, self._next_event + len(events)
        return Message(self._seq, tuple(events), first)

    def new_gap(self, body: bytes, lost: int) -> Message:
        """A gap record for `lost` events: they take the next event numbers."""
        self._seq += 1
        first, self._next_event = self._next_event, self._next_event + lost
        return Message(self._seq, (body,), first, gap=True)

    def skip(self, lost: int) -> None:
        """`lost` events lost, with no gap record: their numbers are left out all the same."""
        self._next_event += lost

    def next_awaiting(self) -> Message | None:
        """The oldest message waiting to be published again (to be passed to `sent`)."""
        if not self._awaiting:
            return None
        message = self._awaiting.popleft()
        self.counts.awaiting_events -= message.event_count
        return message

    def sent(self, message: Message, *, again: bool = False) -> int:
        """The message was written on the current channel; returns its delivery tag."""
        self._tag += 1
        self._in_flight[self._tag] = Flight(message, self._clock())
        n = message.event_count
        self.counts.in_flight_events += n
        if again:
            self.counts.republished += n
        else:
            self.counts.published += n
        return self._tag

    def sent_many(self, batch: Sequence[tuple[Message, bool]]) -> None:
        """`sent` for each (message, again) in order, at one time: one drain's messages."""
        now = self._clock()
        in_flight, tag = self._in_flight, self._tag
        first = again_events = 0
        for message, again in batch:
            tag += 1
            in_flight[tag] = Flight(message, now)
            n = message.event_count
            if again:
                again_events += n
            else:
                first += n
        self._tag = tag
        counts = self.counts
        counts.in_flight_events += first + again_events
        counts.published += first
        counts.republished += again_events

    # ---- what the broker said ---------------------------------------------------------------

    def ack(self, tag: int, multiple: bool) -> list[Message]:
        """Basic.Ack: returns the messages now confirmed. A message the broker returned before
        acking it reached no queue: it waits to be published again instead."""
        now = self._clock()
        confirmed = []
        for flight in self._take(tag, multiple):
            message = flight.message
            if message.seq in self._returned:
                self._returned.discard(message.seq)
                self._await(message)
                continue
            confirmed.append(message)
            counts = self.counts
            counts.gap_records_confirmed += message.gap
            counts.confirmed += message.event_count
            counts.messages_confirmed += 1
            counts.confirm_latency_s_sum += now - flight.sent_at
            counts.confirm_latency_count += 1
        return confirmed

    def nack(self, tag: int, multiple: bool) -> list[Message]:
        """Basic.Nack: returns the messages that now wait to be published again."""
        refused = [flight.message for flight in self._take(tag, multiple)]
        for message in refused:
            self._returned.discard(message.seq)
            self.counts.nacked += message.event_count
            self._await(message)
        return refused

    def returned(self, message_id: str) -> bool:
        """Basic.Return (published mandatory, routed to no queue): its ack follows. False for a
        message_id that is not ours or not in flight."""
        prefix, _, seq_text = message_id.rpartition("-")
        if prefix != self.id_prefix or not (seq_text.isascii() and seq_text.isdigit()):
            return False
        seq = int(seq_text)
        for flight in self._in_flight.values():
            if flight.message.seq == seq:
                self._returned.add(seq)
                self.counts.returned += flight.message.event_count
                return True
        return False

    def requeue_all(self) -> int:
        """The channel or the connection ended: what was in flight is published again first,
        in its original order, and delivery tags start again at 1. Returns the messages."""
        flights = list(self._in_flight.values())
        self._in_flight.clear()
        self._returned.clear()
        self._tag = 0
        self.counts.in_flight_events = 0
        for flight in reversed(flights):
            self._awaiting.appendleft(flight.message)
            self.counts.awaiting_events += flight.message.event_count
        return len(flights)

    def split_awaiting(self, max_body_bytes: int) -> int:
        """Split the batches waiting to be published again whose body exceeds max_body_bytes
        (the broker refused such a message) into batches under it, with new sequence numbers:
        the broker never accepted the big one. Returns how many messages were split."""
        split = 0
        kept: deque[Message] = deque()
        for message in self._awaiting:
            if message.event_count < 2 or len(message.batch_body()) <= max_body_bytes:
                kept.append(message)
                continue
            split += 1
            part: list[bytes] = []
            size = 2  # the brackets
            first = message.first  # the parts keep their events' numbers
            for event in message.events:
                if part and size + len(event) + 1 > max_body_bytes:
                    kept.append(self._part(part, first))
                    first += len(part)
                    part, size = [], 2
                part.append(event)
                size += len(event) + 1
            kept.append(self._part(part, first))
        self._awaiting = kept
        return split

    def _part(self, events: list[bytes], first: int) -> Message:
        self._seq += 1
        return Message(self._seq, tuple(events), first)

    def _take(self, tag: int, multiple: bool) -> list[Flight]:
        if not multiple:
            flight = self._in_flight.pop(tag, None)
            taken = [flight] if flight is not None else []
        else:
            taken = []
            while self._in_flight:
                first = next(iter(self._in_flight))
                if first > tag:
                    break
                taken.append(self._in_flight.popitem(last=False)[1])
        for flight in taken:
            self.counts.in_flight_events -= flight.message.event_count
        return taken

    def _await(self, message: Message) -> None:
        self._awaiting.append(message)
        self.counts.awaiting_events += message.event_count
