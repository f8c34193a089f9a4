"""As many new UDP flows as one core can make: `python3 flood.py COUNT`, run inside a namespace.

sendmmsg(2) sends a batch of datagrams per system call (through ctypes: Python's socket module
lacks it), each to a new (address, port), so each is a new conntrack flow. The flows match
bench_publish.FLOW_SENDER's numbering: 127.0.a.b, ports 20000-59999, dropped on input.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

BATCH = 1024
libc = ctypes.CDLL(None, use_errno=True)


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]


def address(flow: int) -> bytes:
    """sockaddr_in of flow number `flow`."""
    host = bytes([127, 0, flow // 40000 // 250, 1 + flow // 40000 % 250])
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", 20000 + flow % 40000) + host + bytes(8)


def main() -> None:
    count = int(sys.argv[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    payload = ctypes.create_string_buffer(b"x", 1)
    iov = Iovec(ctypes.cast(payload, ctypes.c_void_p), 1)
    names = (ctypes.c_char * 16 * BATCH)()
    messages = (Mmsghdr * BATCH)()
    for i in range(BATCH):
        messages[i].hdr = Msghdr(ctypes.cast(names[i], ctypes.c_void_p), 16, ctypes.pointer(iov), 1,
                                 None, 0, 0)
    sent = 0
    while sent < count:
        batch = min(BATCH, count - sent)
        for i in range(batch):
            ctypes.memmove(names[i], address(sent + i), 16)
        done = libc.sendmmsg(sock.fileno(), messages, batch, 0)
        if done < 0:
            raise OSError(ctypes.get_errno(), "sendmmsg")
        sent += done


if __name__ == "__main__":
    main()
