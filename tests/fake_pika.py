"""Just enough of pika's SelectConnection for a Session to run on, without a broker or a
thread: an ioloop whose callbacks and timers run when the test says, a channel that opens at
once and records what is published (basic_publish: one delivery tag per message, as a broker
counts them)."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import pika.exceptions
import pika.frame
import pika.spec


class FakeIOLoop:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.callbacks: list[Callable[[], None]] = []
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.stopped = False
        self.closed = False

    def add_callback_threadsafe(self, callback: Callable[[], None]) -> None:
        if not self.closed:  # pika's is a no-op on a closed ioloop
            self.callbacks.append(callback)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> object:
        heapq.heappush(self.timers, (self._clock() + delay_s, next(self._order), callback))
        return object()

    def pending(self) -> bool:
        return bool(self.callbacks or self.timers) and not self.stopped

    def run_callbacks(self) -> None:
        while self.callbacks and not self.stopped:
            self.callbacks.pop(0)()

    def next_timer_at(self) -> float | None:
        return self.timers[0][0] if self.timers and not self.stopped else None

    def run_next_timer(self) -> None:
        if self.timers and not self.stopped:
            _at, _n, callback = heapq.heappop(self.timers)
            callback()

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.closed = True


@dataclass
class Published:
    tag: int
    message_id: str
    body: bytes
    events: int
    type: str | None = None
    returned: bool = False  # the broker returned it (no queue): acked, but not delivered
    sequence: int | None = None  # the header: its first event's number


@dataclass
class FakeChannel:
    connection: FakeConnection
    channel_number: int = 1
    on_close: list[Callable[..., None]] = field(default_factory=list)
    on_return: list[Callable[..., None]] = field(default_factory=list)
    on_confirm: Callable[[Any], None] | None = None
    unconfirmed: dict[int, Published] = field(default_factory=dict)
    last_tag: int = 0

    def add_on_close_callback(self, callback: Callable[..., None]) -> None:
        self.on_close.append(callback)

    def add_on_return_callback(self, callback: Callable[..., None]) -> None:
        self.on_return.append(callback)

    def exchange_declare(self, _exchange: str, _kind: str, *, durable: bool,
                         callback: Callable[[Any], None]) -> None:
        assert durable
        callback(None)

    def confirm_delivery(self, on_confirm: Callable[[Any], None], *,
                         callback: Callable[[Any], None]) -> None:
        self.on_confirm = on_confirm
        callback(None)

    def basic_publish(self, exchange: str, routing_key: str, body: bytes, *,
                      properties: Any, mandatory: bool) -> None:
        assert mandatory and routing_key == "" and properties.delivery_mode == 2
        self.record(body, properties)

    def record(self, body: bytes, properties: Any) -> None:
        assert not self.connection.closed, "published on a closed connection"
        self.last_tag += 1
        events = properties.headers.get("events", 1)
        self.unconfirmed[self.last_tag] = Published(self.last_tag, properties.message_id, body,
                                                    events, properties.type,
                                                    sequence=properties.headers.get("sequence"))
        self.connection.published.append(self.unconfirmed[self.last_tag])


class FakeConnection:
    """Built by the Session as it would build pika.SelectConnection."""

    def __init__(self, parameters: Any, *, on_open_callback: Callable[[Any], None],
                 on_open_error_callback: Callable[[Any, BaseException], None],
                 on_close_callback: Callable[[Any, BaseException], None],
                 clock: Callable[[], float]) -> None:
        self.params = parameters
        self.ioloop = FakeIOLoop(clock)
        self.on_open = on_open_callback
        self.on_open_error = on_open_error_callback
        self.on_close = on_close_callback
        self.published: list[Published] = []
        self.channel_: FakeChannel | None = None
        self.closed = False
        self.is_closing = False

    @property
    def is_closed(self) -> bool:
        return self.closed

    @property
    def is_open(self) -> bool:
        return not self.closed

    def add_on_connection_blocked_callback(self, _callback: Callable[..., None]) -> None:
        pass

    def add_on_connection_unblocked_callback(self, _callback: Callable[..., None]) -> None:
        pass

    def channel(self, *, on_open_callback: Callable[[FakeChannel], None]) -> None:
        self.channel_ = FakeChannel(self)
        on_open_callback(self.channel_)

    def open(self) -> None:
        self.on_open(self)

    def _output_marshaled_frames(self, frames: list[bytes]) -> None:
        """The bulk write (the session's own frames): parsed with pika's frame decoder, each
        message recorded as basic_publish records it."""
        data = b"".join(frames)
        pos, properties, size, body = 0, None, 0, b""
        assert self.channel_ is not None
        while pos < len(data):
            consumed, frame = pika.frame.decode_frame(data[pos:])
            assert frame is not None, "a frame cut short"
            pos += consumed
            if isinstance(frame, pika.frame.Method):
                assert isinstance(frame.method, pika.spec.Basic.Publish) and frame.method.mandatory
                properties, body = None, b""
            elif isinstance(frame, pika.frame.Header):
                properties, size = frame.properties, frame.body_size
                assert properties.delivery_mode == 2
            elif isinstance(frame, pika.frame.Body):
                body += frame.fragment
            if properties is not None and len(body) == size:
                self.channel_.record(body, properties)
                properties = None

    def lose(self) -> None:
        """The TCP connection is gone (a broker killed, a reset)."""
        self._closed_with(pika.exceptions.StreamLostError("Transport indicated EOF"))

    def close(self) -> None:
        self._closed_with(pika.exceptions.ConnectionClosedByClient(200, "Normal shutdown"))

    def _closed_with(self, exc: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        if self.channel_ is not None:
            for callback in self.channel_.on_close:
                callback(self.channel_, exc)
        self.on_close(self, exc)
