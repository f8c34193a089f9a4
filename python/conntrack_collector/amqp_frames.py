"""Basic.Publish frames, encoded in bulk.

pika's `basic_publish` marshals the method, header and body frames through several layers and
hands each frame to its own `send()`: about 17 us and 3 system calls per message here, most of
the collector's CPU. Everything in our messages is fixed per channel except the body, the
message_id, the timestamp and, for batches, one header, so we encode the frames directly
(the bytes are those pika would send: tests/test_publish_frames.py compares them) and write all
the messages of one drain with a single call.
"""

from __future__ import annotations

import struct

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_END = b"\xce"
BASIC_CLASS = 60
BASIC_PUBLISH = 40
# Content header property flags (AMQP 0-9-1, Basic class), in their wire order.
FLAG_CONTENT_TYPE = 1 << 15
FLAG_HEADERS = 1 << 13
FLAG_DELIVERY_MODE = 1 << 12
FLAG_MESSAGE_ID = 1 << 7
FLAG_TIMESTAMP = 1 << 6
FLAG_TYPE = 1 << 5

_frame_head = struct.Struct(">BHI")
_header_sizes = struct.Struct(">HHQH")  # class, weight, body size, property flags
# A header frame's head and the start of its payload, in one.
_header_start = struct.Struct(">BHIHHQH")
_SEQUENCE_KEY = b"\x08sequence"  # the shortstr of the per-message header's name


def shortstr(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 255:
        raise ValueError(f"AMQP short string longer than 255 bytes: {text[:40]!r}...")
    return bytes([len(data)]) + data


def table(items: dict[str, object]) -> bytes:
    """An AMQP field table of str and int values, encoded as pika encodes them."""
    encoded = table_entries(items)
    return struct.pack(">I", len(encoded)) + encoded


def table_entries(items: dict[str, object]) -> bytes:
    """A field table's entries, without its length: entries of two dicts, one after the other,
    are those of the merged dict (keys apart)."""
    pieces = []
    for key, value in items.items():
        pieces.append(shortstr(key))
        if isinstance(value, str):
            data = value.encode("utf-8")
            pieces.append(b"S" + struct.pack(">I", len(data)) + data)
        elif isinstance(value, int) and -(2**31) <= value < 2**31:
            pieces.append(b"I" + struct.pack(">i", value))
        elif isinstance(value, int):
            pieces.append(b"l" + struct.pack(">q", value))
        else:
            raise TypeError(f"header {key!r}: only str and int values are encoded here")
    return b"".join(pieces)


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _frame_head.pack(kind, channel, len(payload)) + payload + FRAME_END


class PublishEncoder:
    """The frames of one persistent JSON message on one channel, to one exchange."""

    def __init__(self, channel: int, exchange: str, routing_key: str, *, mandatory: bool,
                 content_type: str, headers: dict[str, object], frame_max: int,
                 message_type: str | None = None) -> None:
        self.channel = channel
        self._max_body_frame = frame_max - 8  # frame head (7) and frame end (1)
        self._method = frame(
            FRAME_METHOD, channel,
            struct.pack(">HHH", BASIC_CLASS, BASIC_PUBLISH, 0) + shortstr(exchange)
            + shortstr(routing_key) + bytes([1 if mandatory else 0]))
        self._flags = (FLAG_CONTENT_TYPE | FLAG_HEADERS | FLAG_DELIVERY_MODE | FLAG_MESSAGE_ID
                       | FLAG_TIMESTAMP | (FLAG_TYPE if message_type else 0))
        self._content_type = shortstr(content_type)
        self._static_entries = table_entries(headers)
        self._static_headers = table(headers)
        self._type = shortstr(message_type) if message_type else b""
        # The header frame's properties before the message_id, when no header is added.
        self._static_properties = self._content_type + self._static_headers + b"\x02"

    def encode(self, body: bytes, message_id: str, timestamp_s: int,
               extra_headers: dict[str, object] | None = None) -> bytes:
        if extra_headers:  # after the static ones, as pika encodes {**headers, **extra}
            entries = self._static_entries + table_entries(extra_headers)
            headers = struct.pack(">I", len(entries)) + entries
        else:
            headers = self._static_headers
        payload = b"".join((
            _header_sizes.pack(BASIC_CLASS, 0, len(body), self._flags),
            self._content_type, headers, b"\x02", shortstr(message_id),
            struct.pack(">Q", timestamp_s), self._type,
        ))
        parts = [self._method, frame(FRAME_HEADER, self.channel, payload)]
        step = self._max_body_frame
        for start in range(0, len(body), step):
            parts.append(frame(FRAME_BODY, self.channel, body[start:start + step]))
        return b"".join(parts)

    def encode_many(self, bodies: list[bytes], message_ids: list[str], sequences: list[int],
                    timestamp_s: int) -> bytes:
        """The frames of many messages, each with the static headers and its `sequence`, one
        after the other: the same bytes as `encode(body, id, ts, {"sequence": n})` of each,
        without its per-call work (the publisher's hot path: a message per event)."""
        channel, step, end = self.channel, self._max_body_frame, FRAME_END
        method, content_type = self._method, self._content_type
        static_entries = self._static_entries
        tail = struct.pack(">Q", timestamp_s) + self._type
        pack_header = _header_start.pack
        pack_head = _frame_head.pack
        flags = self._flags
        parts: list[bytes] = []
        append = parts.append
        for body, message_id, sequence in zip(bodies, message_ids, sequences):
            mid = message_id.encode()
            if len(mid) > 255:
                raise ValueError(f"AMQP short string longer than 255 bytes: {message_id[:40]!r}...")
            # As pika encodes an int: 32-bit while it fits.
            entry = _SEQUENCE_KEY + (b"I" + struct.pack(">i", sequence) if sequence < 2**31
                                     else b"l" + struct.pack(">q", sequence))
            headers_size = struct.pack(">I", len(static_entries) + len(entry))
            properties = b"".join((content_type, headers_size, static_entries, entry, b"\x02"))
            size = len(body)
            append(method)
            append(pack_header(FRAME_HEADER, channel, 14 + len(properties) + 1 + len(mid)
                               + len(tail), BASIC_CLASS, 0, size, flags))
            append(properties)
            append(bytes((len(mid),)))
            append(mid)
            append(tail)
            append(end)
            if size <= step:
                if size:
                    append(pack_head(FRAME_BODY, channel, size))
                    append(body)
                    append(end)
            else:
                for start in range(0, size, step):
                    append(frame(FRAME_BODY, channel, body[start:start + step]))
        return b"".join(parts)
