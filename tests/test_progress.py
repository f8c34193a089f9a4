"""-v: periodic summary lines (machine-friendly, no colours) and the live display's content."""

from __future__ import annotations

import io
import logging
import time

import pytest
from conntrack_collector.progress import Progress, Snapshot, live_table, summary_line
from conntrack_collector.stats import CollectorStats
from rich.console import Console


def test_summary_line_has_rates_buffer_and_drops() -> None:
    earlier = Snapshot(at_s=10.0, received=100, published=90, republished=0, confirmed=80)
    now = Snapshot(at_s=12.0, received=300, published=290, republished=3, confirmed=280,
                   dropped_by_reason={"buffer_full": 4, "shutdown": 0}, publish_buffer_events=6,
                   publish_buffer_bytes=3000, in_flight_events=10, overruns=2, kernel_dropped=292,
                   decode_errors=1,
                   connection_state="connected")

    assert summary_line(earlier, now) == (
        "received=300 (100.0/s) confirmed=280 (100.0/s) published=290 republished=3"
        " buffer=6 events/3000 bytes in_flight=10 dropped=4 (buffer_full:4)"
        " overruns=2 kernel_dropped=292 decode_errors=1 broker=connected"
    )


def test_lines_are_logged_periodically_and_once_at_stop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="conntrack_collector.progress")
    stats = CollectorStats()
    progress = Progress(stats, lambda: {"overruns": 0}, interval_s=0.1)
    progress.start()
    stats.reader_stats = lambda: {"delivered_new": 50}
    time.sleep(0.35)
    progress.stop()

    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) >= 3
    assert all("\x1b" not in line for line in lines)  # no colours or cursor codes in logs
    assert lines[-1].startswith("summary: received=50 ")


def test_live_table_shows_the_same_numbers() -> None:
    now = Snapshot(at_s=1.0, received=1234, published=1200, republished=0, confirmed=1100,
                   dropped_by_reason={"buffer_full": 7}, connection_state="blocked")
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(live_table(None, now))
    text = console.file.getvalue()  # type: ignore[attr-defined]

    for expected in ("1,234", "1,100", "buffer_full: 7", "blocked"):
        assert expected in text
