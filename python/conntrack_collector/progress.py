"""With `-v`: what the collector is doing, while it does it.

Not attached to a terminal (a service, a pipe), a one-line summary is logged every
`interval_s`: machine-friendly, to stderr through logging, no colours. Attached to a terminal, a
live rich display of the same numbers replaces the lines. Both read the one `CollectorStats`
object and the event stream's `stats()`, as the metrics exporter does.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from .stats import CollectorStats

if TYPE_CHECKING:  # rich is imported for the live display only: it costs start-up time
    from rich.live import Live
    from rich.table import Table

    from .metrics import StreamStats

log = logging.getLogger(__name__)

SUMMARY_INTERVAL_S = 10.0
LIVE_REFRESH_PER_S = 2.0
# Rates on the live display are averaged over this window, so they do not flicker.
LIVE_RATE_WINDOW_S = 5.0


@dataclass(frozen=True)
class Snapshot:
    """The numbers shown, read at one moment."""

    at_s: float  # time.monotonic()
    received: int
    published: int
    republished: int
    confirmed: int
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    publish_buffer_events: int = 0
    publish_buffer_bytes: int = 0
    in_flight_events: int = 0
    overruns: int = 0
    kernel_dropped: int = 0
    decode_errors: int = 0
    connection_state: str = ""

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_reason.values())


def take_snapshot(stats: CollectorStats, stream_stats: StreamStats) -> Snapshot:
    stream = stream_stats()

    def stream_int(key: str) -> int:
        value = stream.get(key, 0)
        return value if isinstance(value, int) else 0

    return Snapshot(
        at_s=time.monotonic(),
        received=stats.received,
        published=stats.published,
        republished=stats.republished,
        confirmed=stats.confirmed,
        dropped_by_reason={str(reason): n for reason, n in stats.dropped_by_reason.items()},
        publish_buffer_events=stats.publish_buffer_events,
        publish_buffer_bytes=stats.publish_buffer_bytes,
        in_flight_events=stats.in_flight_events,
        overruns=stream_int("overruns"),
        kernel_dropped=stream_int("kernel_dropped"),
        decode_errors=stream_int("decode_errors"),
        connection_state=stats.connection_state,
    )


def rate_per_s(earlier: Snapshot | None, later: Snapshot, attribute: str) -> float:
    if earlier is None or later.at_s <= earlier.at_s:
        return 0.0
    delta: int = getattr(later, attribute) - getattr(earlier, attribute)
    return delta / (later.at_s - earlier.at_s)


def summary_line(earlier: Snapshot | None, now: Snapshot) -> str:
    """One line, `key=value` pairs: easy to read, easy to grep and to parse."""
    drops = ",".join(f"{reason}:{n}" for reason, n in sorted(now.dropped_by_reason.items()) if n)
    return (
        f"received={now.received} ({rate_per_s(earlier, now, 'received'):.1f}/s)"
        f" confirmed={now.confirmed} ({rate_per_s(earlier, now, 'confirmed'):.1f}/s)"
        f" published={now.published} republished={now.republished}"
        f" buffer={now.publish_buffer_events} events/{now.publish_buffer_bytes} bytes"
        f" in_flight={now.in_flight_events}"
        f" dropped={now.dropped}{f' ({drops})' if drops else ''}"
        f" overruns={now.overruns} kernel_dropped={now.kernel_dropped}"
        f" decode_errors={now.decode_errors}"
        f" broker={now.connection_state}"
    )


def live_table(earlier: Snapshot | None, now: Snapshot) -> Table:
    from rich.table import Table

    table = Table(title="conntrack-event-collector", title_justify="left", show_header=False,
                  box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    table.add_row("received", f"{now.received:,}",
                  f"{rate_per_s(earlier, now, 'received'):,.1f}/s")
    table.add_row("confirmed", f"{now.confirmed:,}",
                  f"{rate_per_s(earlier, now, 'confirmed'):,.1f}/s")
    table.add_row("published", f"{now.published:,}", f"again: {now.republished:,}")
    table.add_row("buffer", f"{now.publish_buffer_events:,}",
                  f"events, {now.publish_buffer_bytes:,} bytes")
    table.add_row("in flight", f"{now.in_flight_events:,}", "")
    drops = ", ".join(f"{reason}: {n:,}" for reason, n in sorted(now.dropped_by_reason.items()))
    style = "red" if now.dropped or now.kernel_dropped else ""
    table.add_row("dropped", f"[{style}]{now.dropped:,}[/]" if style else f"{now.dropped:,}",
                  drops)
    table.add_row("kernel dropped", f"{now.kernel_dropped:,}",
                  f"overruns: {now.overruns:,}, decode errors: {now.decode_errors:,}")
    broker_style = "green" if now.connection_state == "connected" else "yellow"
    table.add_row("broker", f"[{broker_style}]{now.connection_state}[/]", "")
    return table


def live_display_possible(events_to_stdout: bool) -> bool:
    """A live display needs stderr on a terminal, and stdout not sharing it with the events."""
    if os.environ.get("TERM") == "dumb" or not sys.stderr.isatty():
        return False
    return not (events_to_stdout and sys.stdout.isatty())


class Progress:
    """Periodic summary lines, or a live display; `start()` once, `stop()` once."""

    def __init__(
        self,
        stats: CollectorStats,
        stream_stats: StreamStats,
        *,
        live: bool = False,
        interval_s: float = SUMMARY_INTERVAL_S,
    ) -> None:
        self._stats = stats
        self._stream_stats = stream_stats
        self._live_wanted = live
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None
        self._recent: deque[Snapshot] = deque()
        self._first: Snapshot | None = None
        self._redirected: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []

    def start(self) -> None:
        self._first = take_snapshot(self._stats, self._stream_stats)
        if self._live_wanted:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(get_renderable=self._render, console=Console(stderr=True),
                              refresh_per_second=LIVE_REFRESH_PER_S)
            self._live.start()
            self._route_log_lines_above_the_display()
        else:
            self._thread = threading.Thread(target=self._log_lines, name="progress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the display and log a last summary over the whole run."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._live is not None:
            self._live.stop()
            self._restore_log_handlers()
        log.info("summary: %s", summary_line(self._first, take_snapshot(self._stats,
                                                                         self._stream_stats)))

    def _log_lines(self) -> None:
        earlier = self._first
        while not self._stopping.wait(self._interval_s):
            now = take_snapshot(self._stats, self._stream_stats)
            log.info("%s", summary_line(earlier, now))
            earlier = now

    def _render(self) -> Table:
        now = take_snapshot(self._stats, self._stream_stats)
        self._recent.append(now)
        while len(self._recent) > 2 and now.at_s - self._recent[0].at_s > LIVE_RATE_WINDOW_S:
            self._recent.popleft()
        earlier = self._recent[0] if len(self._recent) > 1 else None
        return live_table(earlier, now)

    def _route_log_lines_above_the_display(self) -> None:
        # Live swaps sys.stderr for a proxy that prints above the display, but logging
        # handlers made earlier still hold the real stderr and would tear the display.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.__stderr__:
                self._redirected.append((handler, sys.__stderr__))
                handler.setStream(sys.stderr)

    def _restore_log_handlers(self) -> None:
        for handler, stream in self._redirected:
            handler.setStream(stream)
        self._redirected.clear()
