"""A minimal AMQP 0-9-1 broker that confirms every publish at once and keeps nothing.

    python3 bench/amqp_sink.py [--port 0]

Prints `port N` once listening, then `published N` (the Basic.Publish count over all
connections) whenever it grew, at most every 50 ms. What a publisher delivers into it is then
limited by the publisher alone: the benchmark's "collector into a sink that acks at once".

It speaks just enough of the protocol for pika's publishers: the handshake (Start, Tune, Open;
any credentials), Channel.Open, Exchange/Queue declares and binds, Confirm.Select, then a
Basic.Ack for every Basic.Publish, sent as soon as the read that carried it is parsed (one
`multiple` ack for all the publishes of that read: each is confirmed at once, without a
frame per message). Bodies are skipped unread.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import threading
import time

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_MAX = 131072
_head = struct.Struct(">BHI")
_method = struct.Struct(">HH")


def shortstr(text: str) -> bytes:
    data = text.encode()
    return bytes([len(data)]) + data


def longstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def table(items: dict[str, object]) -> bytes:
    out = b""
    for key, value in items.items():
        out += shortstr(key)
        if isinstance(value, bool):
            out += b"t" + bytes([value])
        elif isinstance(value, dict):
            out += b"F" + table(value)
        else:
            out += b"S" + longstr(str(value).encode())
    return longstr(out)


def method_frame(channel: int, class_id: int, method_id: int, payload: bytes = b"") -> bytes:
    body = _method.pack(class_id, method_id) + payload
    return _head.pack(FRAME_METHOD, channel, len(body)) + body + bytes([FRAME_END])


CAPABILITIES = {"publisher_confirms": True, "basic.nack": True, "exchange_exchange_bindings": True,
                "consumer_cancel_notify": True, "connection.blocked": True,
                "authentication_failure_close": True}
START = method_frame(0, 10, 10, b"\x00\x09" + table(
    {"product": "ctc-bench-sink", "version": "0", "capabilities": CAPABILITIES})
    + longstr(b"PLAIN AMQPLAIN") + longstr(b"en_US"))
TUNE = method_frame(0, 10, 30, struct.pack(">HIH", 2047, FRAME_MAX, 0))
# Replies by (class, method); the no-wait bit of declares and Confirm.Select is not looked at:
# pika sets it on none of them.
REPLIES = {
    (10, 40): (10, 41, shortstr("")),  # Connection.Open -> Open-Ok
    (20, 10): (20, 11, longstr(b"")),  # Channel.Open -> Open-Ok
    (40, 10): (40, 11, b""),  # Exchange.Declare -> Declare-Ok
    (50, 20): (50, 21, b""),  # Queue.Bind -> Bind-Ok
    (85, 10): (85, 11, b""),  # Confirm.Select -> Select-Ok
    (20, 40): (20, 41, b""),  # Channel.Close -> Close-Ok
}


class Counter:
    def __init__(self) -> None:
        self.published = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.published += n


def serve(conn: socket.socket, counter: Counter) -> None:
    """One connection, until the client closes it."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    data = bytearray()
    while len(data) < 8:
        chunk = conn.recv(8 - len(data))
        if not chunk:
            return
        data += chunk
    if bytes(data[:8]) != PROTOCOL_HEADER:
        conn.sendall(PROTOCOL_HEADER)
        return
    conn.sendall(START)
    tags: dict[int, int] = {}  # per channel: the last delivery tag
    pending = bytearray()
    unpack_head, unpack_method = _head.unpack_from, _method.unpack_from
    while True:
        chunk = conn.recv(1 << 20)
        if not chunk:
            return
        pending += chunk
        out = []
        published: dict[int, int] = {}
        pos, end = 0, len(pending)
        while end - pos >= 7:
            kind, channel, size = unpack_head(pending, pos)
            if end - pos < size + 8:
                break
            if kind == FRAME_METHOD:
                key = unpack_method(pending, pos + 7)
                if key == (60, 40):  # Basic.Publish
                    published[channel] = published.get(channel, 0) + 1
                elif key == (10, 11):  # Start-Ok
                    out.append(TUNE)
                elif key == (10, 50):  # Connection.Close
                    conn.sendall(b"".join(out) + method_frame(0, 10, 51))
                    return
                elif key in REPLIES:
                    class_id, method_id, payload = REPLIES[key]
                    out.append(method_frame(channel, class_id, method_id, payload))
                    if key == (20, 10):
                        tags[channel] = 0
                elif key == (50, 10):  # Queue.Declare: the name back, empty
                    name_len = pending[pos + 13]
                    name = bytes(pending[pos + 14:pos + 14 + name_len]).decode()
                    out.append(method_frame(channel, 50, 11, shortstr(name) + bytes(8)))
            pos += size + 8
        del pending[:pos]
        for channel, n in published.items():
            tags[channel] = tags.get(channel, 0) + n
            out.append(method_frame(channel, 60, 80, struct.pack(">QB", tags[channel], 1)))
            counter.add(n)
        if out:
            conn.sendall(b"".join(out))


def report(counter: Counter) -> None:
    last = -1
    while True:
        time.sleep(0.05)
        if counter.published != last:
            last = counter.published
            print(f"published {last}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", args.port))
    print(f"port {listener.getsockname()[1]}", flush=True)
    counter = Counter()
    threading.Thread(target=report, args=(counter,), daemon=True).start()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, counter), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
