"""One connection to one RabbitMQ host, from connecting until it ends.

pika's callbacks are flat methods here, in the order they fire (as in pika's asynchronous
publisher example): `connect`, `on_connection_open`, `open_channel`, `on_channel_open`,
`setup_exchange`, `on_exchange_declareok`, `enable_delivery_confirmations`,
`on_confirms_enabled`, `start_publishing`; then, while the connection lasts, `drain`,
`on_delivery_confirmation` and `on_message_returned`; at the end `on_channel_closed` and
`on_connection_closed`. The book-keeping of every message is the ledger's; what this file adds
is when to publish.

When to publish. The rule that keeps the publisher from stalling: while ready and not paused,
with room in the window and events in the buffer, a drain is pending on the ioloop. Three
things make it hold: a drain that finds the buffer empty registers the buffer's waker (the
next put schedules a drain); a drain that fills the window stops, and every confirm (which
frees room) schedules a drain whatever the buffer holds at that moment; a pause (after a nack
or a return) ends with a timer that drains. tests/test_publish_model.py checks the rule after
every step of random runs.

pika's SelectConnection runs this session's I/O; its ioloop lives on the publisher's thread
only. The other threads reach it through `add_callback_threadsafe` (`wake`, `events_arrived`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import pika  # type: ignore[import-untyped]
import pika.channel  # type: ignore[import-untyped]
import pika.connection  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]
import pika.frame  # type: ignore[import-untyped]
import pika.spec  # type: ignore[import-untyped]

from .amqp_frames import PublishEncoder
from .broker import Refusal, describe
from .buffer import EventBuffer
from .gaps import GAP_TYPE, is_gap, lost_of
from .ledger import Ledger, Message
from .stats import CollectorStats

log = logging.getLogger("conntrack_collector")

# After a nack (a queue full with overflow=reject-publish, an internal error), wait this long.
NACK_RETRY_S = 1.0
# How long new events may wait for others to share their write (see drain_soon), and the
# backlog from which they go out at once.
LINGER_S = 0.002
BACKLOG_EVENTS = 100
# Events that arrive in an empty buffer wait this long for company (unless a backlog builds
# first): each drain costs about 0.9 ms of CPU whatever it carries (this thread's ioloop wakes,
# writes, reads the ack; measured at 60 events/s), so a router's trickle costs ten drains a
# second, not one per event. They wait in the buffer, where the metrics see them.
TRICKLE_LINGER_S = 0.1
# Marks a message whose body is a JSON array of events (opt-in batching); see docs/cli.md.
BATCH_TYPE = "conntrack.events.batch"
CONTENT_TYPE = "application/json"
# The private pika method its own basic_publish ends in: one write for many messages. Checked
# at start-up (bulk_write_available); without it we publish through basic_publish.
BULK_WRITE_METHOD = "_output_marshaled_frames"
# RabbitMQ's words when a message exceeds max_message_size (it closes the channel, 406).
_TOO_LARGE = re.compile(r"message size \d+ is larger than (?:configured )?max size (\d+)")
# Channel.Close codes that, before the exchange is declared, mean it can never be used.
EXCHANGE_REFUSED = (403, 404, 406)  # ACCESS_REFUSED, NOT_FOUND, PRECONDITION_FAILED


def bulk_write_available() -> bool:
    return callable(getattr(pika.connection.Connection, BULK_WRITE_METHOD, None))


@dataclass(frozen=True)
class SessionOptions:
    exchange: str
    router_id: str
    max_in_flight: int
    batch_events: int  # 1: one event per message; more: a JSON array of up to this many
    batch_bytes: int  # the most bytes of a batch's body
    bulk_write: bool  # our own frames, one write per drain; else basic_publish per message
    return_pause_s: float  # after a return (no queue bound), wait this long
    gap_records: bool = False  # publish gap items as gap records (else they only skip numbers)


@dataclass
class SessionResult:
    where: str
    ready_for_s: float | None = None  # None: it never got ready to publish
    failure: BaseException | None = None
    refusal: Refusal | None = None  # an explicit "no": retrying as is will not help
    max_message_bytes: int | None = None  # the broker refused a message over this size


class Session:
    def __init__(self, parameters: pika.ConnectionParameters, options: SessionOptions,
                 ledger: Ledger, buffer: EventBuffer, stats: CollectorStats, *,
                 stopping: Callable[[], bool], closing: Callable[[], bool],
                 refusal_of: Callable[[BaseException], Refusal | None] | None = None,
                 connection_factory: Callable[..., Any] = pika.SelectConnection,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.parameters = parameters
        self.options = options
        self.ledger = ledger
        self.buffer = buffer
        self.stats = stats
        self._stopping = stopping  # flush what is outstanding, then close
        self._closing = closing  # close now
        self._refusal_of = refusal_of or (lambda _exc: None)
        self._connection_factory = connection_factory
        self._clock = clock
        self._wall_clock = wall_clock
        self.result = SessionResult(f"{parameters.host}:{parameters.port}")
        self.connection: Any = None
        self.channel: Any = None
        self._encoder: PublishEncoder | None = None
        self._gap_encoder: PublishEncoder | None = None
        self._exchange_declared = False
        self._ready_at: float | None = None
        self._paused_until = 0.0
        self._pause_timer = False  # an end_pause is pending on the ioloop
        self._drain_scheduled = False  # a scheduled_drain is pending on the ioloop
        self._batched = options.batch_events > 1
        # A batch's body is its events, a comma between each two, and the brackets.
        self._batch_event_bytes = max(1, options.batch_bytes - options.batch_events - 1)

    @property
    def ready(self) -> bool:
        return self._ready_at is not None and self.channel is not None

    @property
    def paused(self) -> bool:
        return self._clock() < self._paused_until

    # ---- the whole session, on the publisher's thread --------------------------------------

    def run(self) -> SessionResult:
        self.connect()
        try:
            self.connection.ioloop.start()
        finally:
            self.finish()
            self.connection.ioloop.close()
        return self.result

    def connect(self) -> None:
        self.stats.connection_state = "connecting"
        self.connection = self._connection_factory(
            self.parameters,
            on_open_callback=self.on_connection_open,
            on_open_error_callback=self.on_connection_open_error,
            on_close_callback=self.on_connection_closed,
        )
        self.connection.add_on_connection_blocked_callback(self.on_connection_blocked)
        self.connection.add_on_connection_unblocked_callback(self.on_connection_unblocked)

    def on_connection_open(self, _connection: Any) -> None:
        self.open_channel()

    def open_channel(self) -> None:
        self.connection.channel(on_open_callback=self.on_channel_open)

    def on_channel_open(self, channel: pika.channel.Channel) -> None:
        self.channel = channel
        channel.add_on_close_callback(self.on_channel_closed)
        channel.add_on_return_callback(self.on_message_returned)
        self.setup_exchange()

    def setup_exchange(self) -> None:
        self.channel.exchange_declare(self.options.exchange, "direct", durable=True,
                                      callback=self.on_exchange_declareok)

    def on_exchange_declareok(self, _frame: Any) -> None:
        self._exchange_declared = True
        self.enable_delivery_confirmations()

    def enable_delivery_confirmations(self) -> None:
        self.channel.confirm_delivery(self.on_delivery_confirmation,
                                      callback=self.on_confirms_enabled)

    def on_confirms_enabled(self, _frame: Any) -> None:
        if self.options.bulk_write:
            def encoder(message_type: str | None) -> PublishEncoder:
                return PublishEncoder(
                    self.channel.channel_number, self.options.exchange, "", mandatory=True,
                    content_type=CONTENT_TYPE, headers={"router_id": self.options.router_id},
                    frame_max=self.connection.params.frame_max, message_type=message_type)
            self._encoder = encoder(BATCH_TYPE if self._batched else None)
            self._gap_encoder = encoder(GAP_TYPE)
        self._ready_at = self._clock()
        self.stats.connections += 1
        self.stats.connection_state = "connected"
        self.stats.connected_host = self.result.where
        log.info("connected to RabbitMQ at %s, exchange %r", self.result.where,
                 self.options.exchange)
        self.start_publishing()

    def start_publishing(self) -> None:
        self.drain()

    # ---- publishing -----------------------------------------------------------------------

    def drain(self) -> None:
        """Publish until the window is full or there is nothing left: what waits to be
        published again first, then new events from the buffer."""
        if not self.ready or self._closing():
            return
        if self.paused:
            self._schedule_end_of_pause()
            return
        room = self.options.max_in_flight - self.ledger.in_flight
        batch: list[tuple[Message, bool]] = []  # (message, published before)
        while room > 0:
            message = self.ledger.next_awaiting()
            if message is None:
                break
            batch.append((message, True))
            room -= 1
        while room > 0:
            # Taking nothing registers the waker: the next put schedules a drain.
            if self._batched:
                events = self.buffer.take(self.options.batch_events,
                                          max_bytes=self._batch_event_bytes,
                                          waker=self.events_arrived)
                if not events:
                    break
            else:
                events = self.buffer.take(room, waker=self.events_arrived)
                if not events:
                    break
            messages = self._messages_of(events)
            batch.extend((message, False) for message in messages)
            room -= len(messages)
        if batch:
            self._publish(batch)
        if self._stopping() and self.ledger.outstanding_messages == 0 and not len(self.buffer):
            log.debug("all events confirmed; closing the connection")
            self.close()

    def _messages_of(self, items: list[bytes]) -> list[Message]:
        """Items taken from the buffer, as messages with their event numbers. A gap item ends
        a batch; it becomes a gap record, or (without --gap-records) only skips its numbers."""
        messages: list[Message] = []
        run: list[bytes] = []
        for item in items:
            if not is_gap(item):
                run.append(item)
                continue
            messages += self._event_messages(run)
            run = []
            if self.options.gap_records:
                messages.append(self.ledger.new_gap(item, lost_of(item)))
            else:
                self.ledger.skip(lost_of(item))
        messages += self._event_messages(run)
        return messages

    def _event_messages(self, events: list[bytes]) -> list[Message]:
        if not events:
            return []
        if self._batched:
            return [self.ledger.new_message(events)]
        return [self.ledger.new_message((event,)) for event in events]

    def _publish(self, batch: list[tuple[Message, bool]]) -> None:
        timestamp_s = int(self._wall_clock())
        if (self._encoder is not None and not self._batched
                and not any(m.gap for m, _ in batch)):
            # The hot path, a message per event: one pass each for the ledger and the frames.
            self.ledger.sent_many(batch)
            id_of = self.ledger.message_id
            data = self._encoder.encode_many([m.events[0] for m, _ in batch],
                                             [id_of(m) for m, _ in batch],
                                             [m.first for m, _ in batch], timestamp_s)
            getattr(self.connection, BULK_WRITE_METHOD)([data])
            return
        frames = []
        for message, again in batch:
            self.ledger.sent(message, again=again)
            message_id = self.ledger.message_id(message)
            extra: dict[str, object]
            if message.gap:
                body, kind, encoder = message.events[0], GAP_TYPE, self._gap_encoder
                extra = {"sequence": message.first}
            elif self._batched:
                body, kind, encoder = message.batch_body(), BATCH_TYPE, self._encoder
                extra = {"events": len(message.events), "sequence": message.first}
            else:
                body, kind, encoder = message.events[0], None, self._encoder
                extra = {"sequence": message.first}
            if encoder is not None:
                frames.append(encoder.encode(body, message_id, timestamp_s, extra))
            else:
                self.channel.basic_publish(
                    self.options.exchange, "", body, mandatory=True,
                    properties=pika.BasicProperties(
                        content_type=CONTENT_TYPE,
                        headers={"router_id": self.options.router_id, **extra},
                        delivery_mode=2, message_id=message_id, timestamp=timestamp_s,
                        type=kind))
        if frames:
            # One write for the whole drain (pika would make three per message); it also
            # counts bytes_sent, as basic_publish would.
            getattr(self.connection, BULK_WRITE_METHOD)([b"".join(frames)])

    def events_arrived(self) -> None:
        """The buffer's waker: called on the reader's thread by the first put after a drain
        found the buffer empty."""
        self._call_threadsafe(self.drain_after_trickle)

    def drain_after_trickle(self) -> None:
        """New events after a lull: a backlog goes out at once, a few wait TRICKLE_LINGER_S
        for company."""
        if len(self.buffer) >= BACKLOG_EVENTS:
            self.drain()
        elif not self._drain_scheduled and self.connection is not None:
            self._drain_scheduled = True
            self.connection.ioloop.call_later(TRICKLE_LINGER_S, self.scheduled_drain)

    def drain_soon(self) -> None:
        """Drain LINGER_S from now rather than at once: at steady rates one drain then takes
        the events of a few milliseconds, with one write, one wake-up and (mostly) one ack for
        all of them instead of one each."""
        if not self._drain_scheduled and self.connection is not None:
            self._drain_scheduled = True
            self.connection.ioloop.call_later(LINGER_S, self.scheduled_drain)

    def scheduled_drain(self) -> None:
        self._drain_scheduled = False
        self.drain()

    def on_delivery_confirmation(self, frame: pika.frame.Method) -> None:
        method: Any = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            refused = self.ledger.nack(method.delivery_tag, method.multiple)
            if refused:
                self.pause(NACK_RETRY_S, f"RabbitMQ nacked {len(refused)} message(s)")
        else:
            confirmed = self.ledger.ack(method.delivery_tag, method.multiple)
            events = [m for m in confirmed if not m.gap]  # gap items are outside the bound
            if events:  # one release for all: what they held is free
                self.buffer.release(sum(len(m.events) for m in events),
                                    sum(m.event_bytes for m in events))
        self.after_confirms()

    def after_confirms(self) -> None:
        """Confirms freed room in the window. A backlog (a burst, a reconnection) goes out at
        once to keep the window full; a few events wait for the next scheduled drain, with
        those that follow them; an empty buffer is drained at once too, so that its waker is
        registered (a window filled exactly by the last take left none)."""
        buffered = len(self.buffer)
        if (buffered == 0 or buffered >= BACKLOG_EVENTS or self.ledger.awaiting
                or self._stopping()):
            self.drain()
        else:
            self.drain_soon()

    def on_message_returned(self, _channel: Any, method: pika.spec.Basic.Return,
                            properties: pika.spec.BasicProperties, _body: bytes) -> None:
        # We publish `mandatory`: a message that no queue took comes back here (before its
        # ack). Like a broker outage, events then wait until a queue is bound.
        if properties.message_id:
            self.ledger.returned(properties.message_id)
        self.pause(self.options.return_pause_s,
                   f"exchange {self.options.exchange!r} routed a message to no queue "
                   f"({method.reply_text})")

    def pause(self, seconds: float, reason: str) -> None:
        """Publish nothing for a while (events wait), then republish first what came back:
        the broker refused it, so sending at once would only spin."""
        now = self._clock()
        if now >= self._paused_until:
            log.warning("%s; holding events, publishing again in %.0f s", reason, seconds)
        self._paused_until = now + seconds
        self._schedule_end_of_pause()

    def _schedule_end_of_pause(self) -> None:
        if not self._pause_timer and self.connection is not None:
            self._pause_timer = True
            self.connection.ioloop.call_later(max(0.0, self._paused_until - self._clock()),
                                              self.end_pause)

    def end_pause(self) -> None:
        self._pause_timer = False
        self.drain()  # still paused (a later pause): it schedules the end again

    # ---- the end ------------------------------------------------------------------------

    def on_channel_closed(self, _channel: Any, exc: Any) -> None:
        self.channel = None
        by_broker = isinstance(exc, pika.exceptions.ChannelClosedByBroker)
        if by_broker and not self._exchange_declared and exc.reply_code in EXCHANGE_REFUSED:
            self.result.refusal = Refusal(
                f"RabbitMQ at {self.result.where} refused exchange {self.options.exchange!r}: "
                f"{exc.reply_text}")
        elif by_broker:
            # Once the exchange is declared, the broker closes a channel over one message
            # (too large, most often): not an exchange problem, and nothing to give up on.
            too_large = _TOO_LARGE.search(str(exc.reply_text))
            if too_large:
                self.result.max_message_bytes = int(too_large[1])
            log.error("RabbitMQ at %s closed the channel: %s (%d); events are held and "
                      "published again%s", self.result.where, exc.reply_text, exc.reply_code,
                      f" in messages under {too_large[1]} bytes (lower --batch-bytes)"
                      if too_large else "")
        if self.result.failure is None and by_broker:
            self.result.failure = exc
        self.close()

    def on_connection_open_error(self, connection: Any, exc: BaseException) -> None:
        self.result.failure = exc
        self.result.refusal = self._refusal_of(exc)
        connection.ioloop.stop()

    def on_connection_closed(self, connection: Any, exc: BaseException) -> None:
        if self.result.failure is None:
            self.result.failure = exc
        self.channel = None
        connection.ioloop.stop()

    def on_connection_blocked(self, _connection: Any, _frame: Any) -> None:
        self.stats.connection_state = "blocked"
        log.warning("RabbitMQ blocked this connection (a resource alarm); events wait in the "
                    "buffer")

    def on_connection_unblocked(self, _connection: Any, _frame: Any) -> None:
        self.stats.connection_state = "connected"
        log.info("RabbitMQ unblocked this connection")

    def finish(self) -> None:
        """The ioloop stopped: what was in flight is published again on the next connection."""
        if self._ready_at is not None:
            self.result.ready_for_s = self._clock() - self._ready_at
        self.channel = None
        self._ready_at = None
        self.ledger.requeue_all()
        self.stats.connection_state = "disconnected"

    # ---- from the controlling thread ------------------------------------------------------

    def wake(self) -> None:
        """Any thread: look at the flags (stopping, closing) and the buffer."""
        self._call_threadsafe(self.on_wake)

    def on_wake(self) -> None:
        if self._closing():
            self.close()
        else:
            self.drain()

    def close(self) -> None:
        connection = self.connection
        if connection is None or connection.is_closing or connection.is_closed:
            return
        try:
            connection.close()
        except pika.exceptions.ConnectionWrongStateError:  # still opening: just stop
            connection.ioloop.stop()

    def _call_threadsafe(self, callback: Callable[[], None]) -> None:
        connection = self.connection
        if connection is not None:
            # Safe on a closed ioloop too (pika makes it a no-op); the loop sees the flags.
            with contextlib.suppress(OSError, RuntimeError):
                connection.ioloop.add_callback_threadsafe(callback)


def log_result(result: SessionResult, outstanding: int, stopping: bool) -> None:
    """One line for how a session ended."""
    if result.ready_for_s is not None and not stopping:
        log.warning("lost the connection to RabbitMQ at %s (%s); %d events waiting",
                    result.where, describe(result.failure) if result.failure else "closed",
                    outstanding)
    elif result.ready_for_s is None and result.failure is not None and result.refusal is None:
        log.info("cannot connect to RabbitMQ at %s: %s", result.where, describe(result.failure))
