"""systemd's readiness protocol (`Type=notify`), without a libsystemd dependency.

The service manager passes a datagram socket in $NOTIFY_SOCKET; "READY=1" tells it the
collector is subscribed to the kernel's events, so units ordered after it start only when no
event can be missed any more. Outside systemd (no $NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send `message` ("READY=1", "STATUS=...", "STOPPING=1"); False if not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket: a leading NUL byte instead of "@"
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False  # readiness is a courtesy to systemd: never a reason to stop collecting
    return True
