"""Publishing to RabbitMQ with publisher confirms, on a thread of its own.

The reader loop only ever calls `EventBuffer.put`; this thread takes events from that buffer
and keeps up to `max_in_flight` messages published but not yet confirmed (pipelined: never one
round trip per message). A message is done only when the broker acks it. A nacked or returned
message, and every message still unconfirmed when a connection ends, is published again with
the same `message_id` (at least once; consumers drop duplicates by message_id).

pika's SelectConnection runs the broker I/O; its ioloop lives on this thread only. The other
threads reach it through `add_callback_threadsafe`.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from typing import Any, NamedTuple

import pika  # type: ignore[import-untyped]
import pika.channel  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]
import pika.frame  # type: ignore[import-untyped]
import pika.spec  # type: ignore[import-untyped]

from .amqp_frames import PublishEncoder
from .broker import (
    BrokerSettings,
    Credentials,
    connection_parameters,
    credentials_refused,
    describe,
    fatal_connect_error,
    tls_context,
)
from .buffer import EventBuffer
from .stats import CollectorStats

log = logging.getLogger("conntrack_collector")

# A connection lost sooner than this after it got ready is retried with backoff, not at once.
STABLE_CONNECTION_S = 5.0
# After a nack (a queue full with overflow=reject-publish, an internal error), wait this long.
NACK_RETRY_S = 1.0
# How long new events may wait for others to share their write (see _drain_soon), and the
# backlog from which they go out at once.
LINGER_S = 0.002
BACKLOG_EVENTS = 100
# Marks a message whose body is a JSON array of events (opt-in batching); see docs/cli.md.
BATCH_TYPE = "conntrack.events.batch"


class Message(NamedTuple):
    seq: int  # message_id is f"{prefix}-{seq}": stable across republishing
    body: bytes
    events: int  # 1, or the number of events in a batch
    published_at: float  # time.monotonic() of the latest publish, for the confirm latency


class Publisher:
    def __init__(
        self,
        settings: BrokerSettings,
        buffer: EventBuffer,
        stats: CollectorStats,
        *,
        max_in_flight: int = 1000,
        batch_events: int = 1,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 10.0,
        credentials: Credentials | None = None,
    ) -> None:
        self.settings = settings
        self._buffer = buffer
        self._stats = stats
        self._max_in_flight = max_in_flight
        self._batch_events = batch_events
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._tls = tls_context(settings)
        # Given (Vault): asked before each connection attempt, told when the broker refused
        # them, and a refusal is then retried. Without: the settings' user, a refusal is fatal.
        self._credentials = credentials
        self._refused = False  # the last attempt's credentials were refused
        # A per-process random prefix makes `prefix-seq` unique across restarts and routers.
        self._id_prefix = secrets.token_hex(8)
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="amqp-publisher", daemon=True)

        # Owned by the publisher thread.
        self._connection: pika.SelectConnection | None = None
        self._channel: pika.channel.Channel | None = None
        self._ready = False  # channel open, exchange declared, confirms on
        self._delivery_tag = 0
        self._in_flight: OrderedDict[int, Message] = OrderedDict()
        self._retry: deque[Message] = deque()  # republished before anything new
        self._retry_events = 0
        self._encoder: PublishEncoder | None = None
        self._returned: set[str] = set()  # message_ids returned, awaiting their ack
        self._paused_until = 0.0  # after a return or a nack: wait before publishing again
        self._session_failed: BaseException | None = None
        self._ready_since = 0.0
        self._drain_scheduled = False  # a _scheduled_drain is pending on the ioloop

        # Shared with the controlling thread.
        self._stopping = threading.Event()  # flush, then close
        self._closed = threading.Event()  # give up now
        self._wakeup = threading.Event()  # cuts a reconnect backoff short
        self.fatal_error: str | None = None

    # ---- the controlling thread's interface -------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def outstanding(self) -> int:
        """Events accepted but not yet confirmed: buffered, waiting to be republished, in flight."""
        return len(self._buffer) + self._retry_events + self._stats.in_flight_events

    def stop(self, timeout_s: float) -> bool:
        """Publish what is buffered, wait for its confirms for at most timeout_s, then close.
        True when everything accepted was confirmed."""
        self._stopping.set()
        self._wake()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._closed.set()
            self._wake()
            self._thread.join(5.0)
        return self.outstanding() == 0

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _wake(self) -> None:
        """Any thread: make the publisher thread look at the buffer and its flags."""
        self._wakeup.set()
        connection = self._connection
        if connection is not None:
            # Safe on a closed ioloop too (pika makes it a no-op); the run loop sees the flags.
            with contextlib.suppress(OSError):
                connection.ioloop.add_callback_threadsafe(self._on_wake)

    # ---- the publisher thread -----------------------------------------------------------------

    def _run(self) -> None:
        delay_s = self._reconnect_min_s
        try:
            while not self._closed.is_set() and not self._done():
                connected = False
                self._refused = False
                user_password = self._credentials.current() if self._credentials else None
                for parameters in connection_parameters(self.settings, self._tls,
                                                        user_password):
                    if self._closed.is_set():
                        break
                    connected = self._session(parameters)
                    if self.fatal_error or connected or self._refused:
                        break
                if self.fatal_error:
                    return
                if connected and time.monotonic() - self._ready_since >= STABLE_CONNECTION_S:
                    delay_s = self._reconnect_min_s
                    continue  # lost a connection that worked: try again at once
                if self._done() or self._closed.is_set():
                    break
                # No host answered, or the broker keeps closing us right after we connect:
                # either way, back off rather than spin.
                why = ("the connection did not last" if connected else
                       "RabbitMQ refused the credentials" if self._refused else
                       "no RabbitMQ host answered")
                log.warning("%s; retrying in %.1f s (%d events waiting)",
                            why, delay_s, self.outstanding())
                self._wakeup.clear()
                self._wakeup.wait(delay_s)
                delay_s = min(delay_s * 2, self._reconnect_max_s)
        except Exception as exc:  # a bug: the main loop reports it in one line and exits
            log.debug("publisher failed", exc_info=True)
            self.fatal_error = f"publisher failed: {exc!r}"
        finally:
            self._stats.connection_state = "disconnected"

    def _done(self) -> bool:
        return self._stopping.is_set() and self.outstanding() == 0

    def _session(self, parameters: pika.ConnectionParameters) -> bool:
        """One connection, from connecting until it ends. True when it got ready to publish."""
        where = f"{parameters.host}:{parameters.port}"
        self._stats.connection_state = "connecting"
        self._session_failed = None
        got_ready = False

        def on_open(connection: pika.SelectConnection) -> None:
            connection.channel(on_open_callback=on_channel_open)

        def on_open_error(connection: pika.SelectConnection, exc: BaseException) -> None:
            self._session_failed = exc
            connection.ioloop.stop()

        def on_closed(connection: pika.SelectConnection, exc: BaseException) -> None:
            if self._session_failed is None:
                self._session_failed = exc
            connection.ioloop.stop()

        def on_channel_open(channel: pika.channel.Channel) -> None:
            self._channel = channel
            self._delivery_tag = 0
            channel.add_on_close_callback(on_channel_closed)
            channel.add_on_return_callback(self._on_return)
            channel.exchange_declare(
                self.settings.exchange, "direct", durable=True, callback=on_declared
            )

        def on_declared(_frame: pika.frame.Method) -> None:
            assert self._channel is not None
            self._channel.confirm_delivery(self._on_confirm, callback=on_confirming)

        def on_confirming(_frame: pika.frame.Method) -> None:
            nonlocal got_ready
            assert self._channel is not None
            self._encoder = PublishEncoder(
                self._channel.channel_number, self.settings.exchange, "", mandatory=True,
                content_type="application/json", headers={"router_id": self.settings.router_id},
                frame_max=connection.params.frame_max,
                message_type=BATCH_TYPE if self._batch_events > 1 else None)
            got_ready = True
            self._ready = True
            self._ready_since = time.monotonic()
            self._paused_until = 0.0  # a pause's timer died with the old connection
            self._drain_scheduled = False  # and so did a scheduled drain
            self._stats.connections += 1
            self._stats.connection_state = "connected"
            self._stats.connected_host = where
            log.info("connected to RabbitMQ at %s, exchange %r", where, self.settings.exchange)
            self._drain()

        def on_channel_closed(channel: pika.channel.Channel, exc: BaseException) -> None:
            self._ready = False
            self._channel = None
            if isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code in (
                403, 406,  # ACCESS_REFUSED, PRECONDITION_FAILED: the exchange can never work
            ):
                self.fatal_error = (
                    f"RabbitMQ at {where} refused exchange {self.settings.exchange!r}: "
                    f"{exc.reply_text}"
                )
            connection = self._connection
            if connection is not None and connection.is_open:
                connection.close()

        connection = pika.SelectConnection(
            parameters,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_closed,
        )
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        self._connection = connection
        try:
            connection.ioloop.start()
        finally:
            self._connection = None
            self._channel = None
            self._encoder = None
            self._ready = False
            self._requeue_in_flight()
            connection.ioloop.close()
        failure = self._session_failed
        if (failure is not None and not got_ready and self._credentials is not None
                and credentials_refused(failure)):
            self._refused = True  # not fatal: the provider fetches others for the next attempt
            self._credentials.refused()
        elif failure is not None and self.fatal_error is None and not got_ready:
            self.fatal_error = fatal_connect_error(failure, parameters.host, parameters.port,
                                                   self.settings, parameters.credentials.username)
        if got_ready and not self._done():
            log.warning("lost the connection to RabbitMQ at %s (%s); %d events waiting",
                        where, describe(failure) if failure else "closed", self.outstanding())
        elif not got_ready and failure is not None and self.fatal_error is None \
                and not self._refused:
            log.info("cannot connect to RabbitMQ at %s: %s", where, describe(failure))
        self._stats.connection_state = "disconnected"
        return got_ready

    def _requeue_in_flight(self) -> None:
        """Unconfirmed at disconnect: republish first, in their original order."""
        if self._in_flight:
            self._retry.extendleft(reversed(self._in_flight.values()))
            self._retry_events += self._stats.in_flight_events
            self._in_flight.clear()
            self._stats.in_flight_events = 0
        self._returned.clear()

    def _on_wake(self) -> None:
        if self._closed.is_set():
            self._close_connection()
        else:
            self._drain()

    def _close_connection(self) -> None:
        connection = self._connection
        if connection is None or connection.is_closing or connection.is_closed:
            return
        try:
            connection.close()
        except pika.exceptions.ConnectionWrongStateError:  # still opening: just stop
            connection.ioloop.stop()

    def _drain(self) -> None:
        """Publish until the window is full or there is nothing left; called whenever
        something changes (ready, confirms arrived, new events, a pause ended)."""
        channel, connection, encoder = self._channel, self._connection, self._encoder
        if channel is None or connection is None or encoder is None or not self._ready:
            return
        now = time.monotonic()
        if now < self._paused_until:
            return
        timestamp_s = int(time.time())
        frames: list[bytes] = []
        room = self._max_in_flight - len(self._in_flight)
        while room > 0 and self._retry:
            message = self._retry.popleft()
            self._retry_events -= message.events
            frames.append(self._encode(encoder, message._replace(published_at=now), timestamp_s))
            self._stats.republished += message.events
            room -= 1
        while room > 0:
            if self._batch_events > 1:
                events = self._buffer.take(self._batch_events, waker=self._wake_soon)
                if not events:
                    break
                self._seq += 1
                body = b"[" + b",".join(events) + b"]"
                frames.append(self._encode(encoder, Message(self._seq, body, len(events), now),
                                           timestamp_s))
                self._stats.published += len(events)
                room -= 1
            else:
                events = self._buffer.take(room, waker=self._wake_soon)
                if not events:
                    break
                for body in events:
                    self._seq += 1
                    frames.append(self._encode(encoder, Message(self._seq, body, 1, now),
                                               timestamp_s))
                self._stats.published += len(events)
                room -= len(events)
        if frames:
            # One write for the whole drain (pika would make three per message). A private
            # pika method, the one its own basic_publish ends in; it also counts bytes_sent.
            connection._output_marshaled_frames([b"".join(frames)])
        if self._stopping.is_set() and self.outstanding() == 0:
            log.debug("all events confirmed; closing the connection")
            self._close_connection()

    def _wake_soon(self) -> None:
        """The buffer calls this (on the reader's thread) when events arrive after it ran dry."""
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.ioloop.add_callback_threadsafe(self._drain_soon)

    def _drain_soon(self) -> None:
        """Drain LINGER_S from now rather than at once: at steady rates one drain then takes
        the events of a few milliseconds, with one write, one wake-up and (mostly) one ack for
        all of them instead of one each."""
        connection = self._connection
        if connection is not None and not self._drain_scheduled:
            self._drain_scheduled = True
            connection.ioloop.call_later(LINGER_S, self._scheduled_drain)

    def _scheduled_drain(self) -> None:
        self._drain_scheduled = False
        self._drain()

    def _encode(self, encoder: PublishEncoder, message: Message, timestamp_s: int) -> bytes:
        """The frames of one message, now counted as in flight under the next delivery tag."""
        self._delivery_tag += 1
        self._in_flight[self._delivery_tag] = message
        self._stats.in_flight_events += message.events
        return encoder.encode(
            message.body, f"{self._id_prefix}-{message.seq}", timestamp_s,
            {"events": message.events} if self._batch_events > 1 else None)

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method: Any = frame.method
        nacked = isinstance(method, pika.spec.Basic.Nack)
        tag: int = method.delivery_tag
        if method.multiple:
            done = []
            while self._in_flight:
                first = next(iter(self._in_flight))
                if first > tag:
                    break
                done.append(self._in_flight.popitem(last=False)[1])
        else:
            one = self._in_flight.pop(tag, None)
            done = [one] if one is not None else []
        now = time.monotonic()
        stats = self._stats
        for message in done:
            stats.in_flight_events -= message.events
            message_id = f"{self._id_prefix}-{message.seq}" if self._returned else ""
            if nacked or message_id in self._returned:
                self._returned.discard(message_id)
                self._retry.append(message)
                self._retry_events += message.events
                if nacked:
                    stats.nacked += message.events
            else:
                stats.confirmed += message.events
                stats.messages_confirmed += 1
                stats.confirm_latency_s_sum += now - message.published_at
                stats.confirm_latency_count += 1
        if nacked:
            self._pause(NACK_RETRY_S, f"RabbitMQ nacked {len(done)} message(s)")
        # A backlog (a burst, a reconnection) goes out at once to keep the window full; a few
        # events wait for the next scheduled drain, with those that follow them.
        if len(self._buffer) >= BACKLOG_EVENTS or self._retry or self._stopping.is_set():
            self._drain()
        elif len(self._buffer):
            self._drain_soon()

    def _on_return(self, channel: pika.channel.Channel, method: pika.spec.Basic.Return,
                   properties: pika.spec.BasicProperties, body: bytes) -> None:
        # We publish `mandatory`: a message that no queue took comes back here (before its ack).
        # Like a broker outage, events then wait in the buffer until a queue is bound.
        if properties.message_id:
            self._returned.add(properties.message_id)
        self._stats.returned += 1
        self._pause(self._reconnect_max_s / 2,
                    f"exchange {self.settings.exchange!r} routed a message to no queue "
                    f"({method.reply_text})")

    def _pause(self, seconds: float, reason: str) -> None:
        """Publish nothing for a while (events wait in the buffer), then republish first what
        came back: the broker refused it, so sending at once would only spin."""
        now = time.monotonic()
        if now >= self._paused_until:
            log.warning("%s; holding events, publishing again in %.0f s", reason, seconds)
        self._paused_until = now + seconds
        connection = self._connection
        if connection is not None:
            connection.ioloop.call_later(seconds, self._drain)

    def _on_blocked(self, _connection: Any, _frame: Any) -> None:
        self._stats.connection_state = "blocked"
        log.warning("RabbitMQ blocked this connection (a resource alarm); events wait in the "
                    "buffer")

    def _on_unblocked(self, _connection: Any, _frame: Any) -> None:
        self._stats.connection_state = "connected"
        log.info("RabbitMQ unblocked this connection")
