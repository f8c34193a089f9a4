"""Our bulk frame encoder writes exactly the bytes pika's basic_publish would."""

from __future__ import annotations

import pika
import pytest
from conntrack_collector.amqp_frames import PublishEncoder
from pika import frame as pika_frame
from pika import spec


def pika_bytes(channel: int, exchange: str, body: bytes, properties: spec.BasicProperties,
               mandatory: bool, frame_max: int) -> bytes:
    """What pika's Connection._send_message marshals for one basic_publish."""
    parts = [
        pika_frame.Method(channel, spec.Basic.Publish(exchange=exchange, routing_key="",
                                                      mandatory=mandatory)).marshal(),
        pika_frame.Header(channel, len(body), properties).marshal(),
    ]
    step = frame_max - 8
    for start in range(0, len(body), step):
        parts.append(pika_frame.Body(channel, body[start:start + step]).marshal())
    return b"".join(parts)


@pytest.mark.parametrize("body_bytes", [0, 1, 470, 131_064, 131_065, 400_000])
def test_single_event_message(body_bytes: int) -> None:
    body = b"x" * body_bytes
    encoder = PublishEncoder(3, "conntrack", "", mandatory=True, content_type="application/json",
                             headers={"router_id": "0123456789ab"}, frame_max=131_072)
    properties = pika.BasicProperties(
        delivery_mode=2, content_type="application/json", headers={"router_id": "0123456789ab"},
        message_id="5f1e2d3c4b5a6978-42", timestamp=1_764_160_000)
    assert encoder.encode(body, "5f1e2d3c4b5a6978-42", 1_764_160_000) == pika_bytes(
        3, "conntrack", body, properties, True, 131_072)


def test_batch_message_with_type_and_event_count() -> None:
    encoder = PublishEncoder(1, "ex", "", mandatory=False, content_type="application/json",
                             headers={"router_id": "r"}, frame_max=4096,
                             message_type="conntrack.events.batch")
    properties = pika.BasicProperties(
        delivery_mode=2, content_type="application/json",
        headers={"router_id": "r", "events": 100}, message_id="p-1", timestamp=7,
        type="conntrack.events.batch")
    body = b"[" + b",".join([b"{}"] * 100) + b"]"
    assert encoder.encode(body, "p-1", 7, {"events": 100}) == pika_bytes(
        1, "ex", body, properties, False, 4096)


@pytest.mark.parametrize("frame_max", [4096, 131_072])
def test_many_messages_at_once_are_the_bytes_of_each(frame_max: int) -> None:
    encoder = PublishEncoder(2, "conntrack", "", mandatory=True, content_type="application/json",
                             headers={"router_id": "0123456789ab"}, frame_max=frame_max)
    bodies = [b"", b"{}", b"x" * 470, b"y" * 10_000]
    ids = [f"5f1e2d3c4b5a6978-{n}" for n in (1, 22, 333, 4444)]
    sequences = [1, 2**31 - 1, 2**31, 10**12]  # pika's int is 32-bit while it fits
    assert encoder.encode_many(bodies, ids, sequences, 1_764_160_000) == b"".join(
        encoder.encode(body, message_id, 1_764_160_000, {"sequence": sequence})
        for body, message_id, sequence in zip(bodies, ids, sequences))
