"""systemd's readiness and watchdog protocol (`Type=notify`), without libsystemd.

The service manager passes a datagram socket in $NOTIFY_SOCKET; "READY=1" tells it the
collector is subscribed to the kernel's events, so units ordered after it start only when no
event can be missed any more; "WATCHDOG=1", sent while the collector's loop keeps taking
events and its publisher publishes what it holds, keeps `WatchdogSec=` from restarting it. Outside systemd every call does nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Callable

from .stats import CollectorStats

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send `message` ("READY=1", "STATUS=...", "STOPPING=1"); False if not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket: a leading NUL byte instead of "@"
        address = "\0" + address[1:]
    import socket  # only under systemd: about 1 MiB that --output stdout needs not otherwise

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False  # readiness is a courtesy to systemd: never a reason to stop collecting
    return True


def watchdog_interval_s() -> float | None:
    """Half of systemd's `WatchdogSec=` for this process, or None when there is no watchdog."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class ReaderProgress:
    """Is the collector's loop still taking events from the reader thread?

    Healthy when nothing waits in the reader's queue (idle is fine) or when events were taken
    since the last look. Events waiting and none taken means the loop is stuck: systemd's
    watchdog should then restart us rather than let the kernel drop events.
    """

    def __init__(self) -> None:
        self._last_delivered = -1

    def healthy(self, stream_stats: Mapping[str, object]) -> bool:
        delivered, queued = stream_stats.get("delivered", 0), stream_stats.get("queued", 0)
        if not isinstance(delivered, int) or not isinstance(queued, int):
            return True  # nothing to judge by
        moved = delivered != self._last_delivered
        self._last_delivered = delivered
        return queued == 0 or moved


class PublisherProgress:
    """Is the publisher publishing what it has, while it can?

    Stalled: connected (not blocked), events in the buffer, none in flight and none waiting
    to be published again (so it is not waiting for the broker, nor pausing after a nack or a
    return), and nothing published since the last look. Any of that otherwise is healthy: an
    idle collector, one waiting for an outage to end, one whose broker is slow to confirm.
    """

    def __init__(self) -> None:
        self._last_published = -1

    def healthy(self, stats: CollectorStats) -> bool:
        published = stats.published + stats.republished
        moved = published != self._last_published
        self._last_published = published
        idle_with_work = (stats.connection_state == "connected" and stats.publish_buffer_events > 0
                          and stats.in_flight_events == 0
                          and stats.awaiting_republish_events == 0)
        return moved or not idle_with_work


class Watchdog:
    """Sends WATCHDOG=1 every `interval_s` while the loop and the publisher are healthy, from
    a daemon thread."""

    def __init__(self, stream_stats: Callable[[], Mapping[str, object]],
                 interval_s: float, stats: CollectorStats | None = None) -> None:
        self._stream_stats = stream_stats
        self._stats = stats
        self._interval_s = interval_s
        self._progress = ReaderProgress()
        self._publisher = PublisherProgress()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            # Both looks every time: each compares with its previous one.
            reader_ok = self._progress.healthy(self._stream_stats())
            publisher_ok = self._stats is None or self._publisher.healthy(self._stats)
            if reader_ok and publisher_ok:
                notify("WATCHDOG=1")
            elif not reader_ok:
                log.warning("events wait in the reader's queue and none were taken for %.0f s: "
                            "not feeding systemd's watchdog", self._interval_s)
            else:
                log.error("connected, events buffered, and none published for %.0f s: the "
                          "publisher is stuck; not feeding systemd's watchdog", self._interval_s)
