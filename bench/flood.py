"""New UDP flows, as many as one core makes, and optionally their deletion: run inside a namespace.

    python3 flood.py COUNT                          # COUNT flows, as fast as possible
    python3 flood.py COUNT --delete [--rate EV_S]   # NEW and DESTROY interleaved

sendmmsg(2) sends a batch of datagrams per system call (through ctypes: Python's socket module
lacks it), each to a new (address, port), so each is a new conntrack flow. The flows match
bench_publish.FLOW_SENDER's numbering: 127.0.a.b, ports 20000-59999, dropped on input.

With --delete, each batch of flows made is deleted right after by ctnetlink
(IPCTNL_MSG_CT_DELETE, all the batch's requests in one datagram), so NEW and DESTROY events
alternate in batches; --rate paces the two together at that many events/s (0: as fast as
possible). Prints one JSON line: flows made, delete requests sent, seconds.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import socket
import struct
import time

BATCH = 1024
libc = ctypes.CDLL(None, use_errno=True)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_DELETE = 2
NLM_F_REQUEST = 1
NLA_F_NESTED = 0x8000
CTA_TUPLE_ORIG, CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]


def host(flow: int) -> bytes:
    return bytes([127, 0, flow // 40000 // 250, 1 + flow // 40000 % 250])


def port(flow: int) -> int:
    return 20000 + flow % 40000


def address(flow: int) -> bytes:
    """sockaddr_in of flow number `flow`."""
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port(flow)) + host(flow) + bytes(8)


def attr(kind: int, payload: bytes) -> bytes:
    padded = payload + bytes(-len(payload) % 4)
    return struct.pack("=HH", 4 + len(payload), kind) + padded


def delete_request(flow: int, sport: int, seq: int) -> bytes:
    """The ctnetlink request that deletes flow `flow` (from 127.0.0.1:sport)."""
    tuple_ip = attr(CTA_TUPLE_IP | NLA_F_NESTED,
                    attr(CTA_IP_V4_SRC, bytes([127, 0, 0, 1])) + attr(CTA_IP_V4_DST, host(flow)))
    tuple_proto = attr(CTA_TUPLE_PROTO | NLA_F_NESTED,
                       attr(CTA_PROTO_NUM, bytes([socket.IPPROTO_UDP]))
                       + attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
                       + attr(CTA_PROTO_DST_PORT, struct.pack("!H", port(flow))))
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + attr(CTA_TUPLE_ORIG | NLA_F_NESTED,
                                                            tuple_ip + tuple_proto)
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST, seq, 0) + body


class Sender:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        self.sock.bind(("127.0.0.1", 0))
        self.sport = self.sock.getsockname()[1]
        self.payload = ctypes.create_string_buffer(b"x", 1)
        self.iov = Iovec(ctypes.cast(self.payload, ctypes.c_void_p), 1)
        self.names = (ctypes.c_char * 16 * BATCH)()
        self.messages = (Mmsghdr * BATCH)()
        for i in range(BATCH):
            self.messages[i].hdr = Msghdr(ctypes.cast(self.names[i], ctypes.c_void_p), 16,
                                          ctypes.pointer(self.iov), 1, None, 0, 0)

    def send(self, addresses: bytes, first: int, count: int) -> None:
        """Flows first .. first+count-1 (count <= BATCH), their sockaddrs made beforehand."""
        sent = 0
        while sent < count:
            chunk = addresses[16 * (first + sent):16 * (first + count)]
            ctypes.memmove(self.names, chunk, len(chunk))
            done = libc.sendmmsg(self.sock.fileno(), self.messages, count - sent, 0)
            if done < 0:
                raise OSError(ctypes.get_errno(), "sendmmsg")
            sent += done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("count", type=int)
    parser.add_argument("--delete", action="store_true", help="delete each batch after it")
    parser.add_argument("--rate", type=float, default=0.0, help="events/s (NEW+DESTROY); 0: max")
    args = parser.parse_args()
    sender = Sender()
    deleter = None
    if args.delete:
        deleter = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        deleter.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    # Paced: batches small enough for about 100 of them a second.
    per_event = 2 if args.delete else 1
    batch = BATCH if not args.rate else max(1, min(BATCH, int(args.rate / per_event / 100)))
    # Everything the loop sends is made first, so the loop only slices and sends.
    addresses = b"".join(address(i) for i in range(args.count))
    requests = b""
    if deleter is not None:
        requests = b"".join(delete_request(i, sender.sport, i) for i in range(args.count))
    size = len(requests) // max(1, args.count)  # every request has the same length
    start = time.monotonic()
    made = deleted = 0
    while made < args.count:
        n = min(batch, args.count - made)
        sender.send(addresses, made, n)
        if deleter is not None:
            deleter.send(requests[size * made:size * (made + n)])
            deleted += n
        made += n
        if args.rate:
            ahead = made * per_event / args.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    print(json.dumps({"flows": made, "deletes": deleted, "seconds": time.monotonic() - start}),
          flush=True)


if __name__ == "__main__":
    main()
