"""Real traffic for the tests: run as a script inside a namespace (`ip netns exec NS python3
traffic.py KIND...`), or imported (the qemu guests of cross/ do). Each kind makes one complete,
answered flow on loopback."""

from __future__ import annotations

import socket
import struct
import sys
import threading

# Below the UDP ports netns_util drops on input (20000-60000), so UDP flows get replies;
# the client binds one too, as an ephemeral port would be in that range.
PORT = 5001
TIMEOUT_S = 5


def tcp(family: int, host: str) -> tuple[int, int]:
    """One answered TCP connection; returns its (source port, destination port)."""
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.settimeout(TIMEOUT_S)
        server.bind((host, PORT))
        server.listen()

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(conn.recv(100).upper())

        thread = threading.Thread(target=answer)
        thread.start()
        with socket.create_connection((host, PORT), timeout=TIMEOUT_S) as client:
            sport = client.getsockname()[1]
            client.sendall(b"hello conntrack")
            client.recv(100)
        thread.join()
    return sport, PORT


def udp(family: int, host: str) -> tuple[int, int]:
    """One UDP datagram and its answer; returns the flow's (source port, destination port)."""
    with socket.socket(family, socket.SOCK_DGRAM) as server, socket.socket(
        family, socket.SOCK_DGRAM
    ) as client:
        server.settimeout(TIMEOUT_S)
        client.settimeout(TIMEOUT_S)
        server.bind((host, PORT + 1))
        client.bind((host, PORT + 2))
        client.sendto(b"ping", (host, PORT + 1))
        data, peer = server.recvfrom(100)
        server.sendto(data, peer)
        client.recvfrom(100)
    return PORT + 2, PORT + 1


def checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def icmp() -> None:
    header = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"conntrack-test"
    packet = header[:2] + struct.pack("!H", checksum(header)) + header[4:]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(2)
        s.sendto(packet, ("127.0.0.1", 0))
        s.recvfrom(200)  # our own request first, then the kernel's reply
        s.recvfrom(200)


def icmpv6() -> None:
    # The kernel fills in the ICMPv6 checksum of raw sockets.
    packet = struct.pack("!BBHHH", 128, 0, 0, 0x4343, 1) + b"conntrack-test"
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        s.settimeout(2)
        s.sendto(packet, ("::1", 0))
        s.recvfrom(200)


KINDS = {
    "tcp4": lambda: tcp(socket.AF_INET, "127.0.0.1"),
    "tcp6": lambda: tcp(socket.AF_INET6, "::1"),
    "udp4": lambda: udp(socket.AF_INET, "127.0.0.1"),
    "udp6": lambda: udp(socket.AF_INET6, "::1"),
    "icmp": icmp,
    "icmpv6": icmpv6,
}

if __name__ == "__main__":
    for kind in sys.argv[1:]:
        KINDS[kind]()
