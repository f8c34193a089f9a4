"""systemd readiness and watchdog: the datagrams, and when the watchdog is fed."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from conntrack_collector.sd_notify import (
    PublisherProgress,
    ReaderProgress,
    notify,
    watchdog_interval_s,
)
from conntrack_collector.stats import CollectorStats


def test_notify_sends_to_the_socket_systemd_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        assert notify("READY=1")
        assert receiver.recv(100) == b"READY=1"


def test_notify_outside_systemd_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    assert not notify("READY=1")  # never an error: readiness is a courtesy


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    ("30000000", None, 15.0),
    ("30000000", "self", 15.0),
    ("30000000", "1", None),  # meant for another process
    ("0", None, None),
    (None, None, None),
])
def test_watchdog_interval_is_half_of_watchdog_sec(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec),
                        ("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert watchdog_interval_s() == expected


def test_watchdog_is_fed_while_the_loop_takes_events() -> None:
    progress = ReaderProgress()
    assert progress.healthy({"delivered": 0, "queued": 0})  # idle
    assert progress.healthy({"delivered": 0, "queued": 0})  # still idle: fine
    assert progress.healthy({"delivered": 50, "queued": 900})  # busy, but taking events
    assert not progress.healthy({"delivered": 50, "queued": 900})  # events wait, none taken
    assert progress.healthy({"delivered": 51, "queued": 900})


def test_watchdog_is_not_fed_while_the_publisher_sits_on_events_it_could_publish() -> None:
    # The stall at the window's edge: connected, events buffered, nothing in flight or published.
    stats = CollectorStats()
    progress = PublisherProgress()
    assert progress.healthy(stats)  # idle
    stats.connection_state, stats.publish_buffer_events = "connected", 6
    stats.delivery.published = 1000
    assert progress.healthy(stats)  # it published since the last look
    assert not progress.healthy(stats)  # stuck: 6 buffered, none in flight, none published
    stats.delivery.in_flight_events = 1000
    assert progress.healthy(stats)  # waiting for a slow broker's confirms is not stuck
    stats.delivery.in_flight_events, stats.delivery.awaiting_events = 0, 10
    assert progress.healthy(stats)  # nor a pause after a nack or a return
    stats.delivery.awaiting_events, stats.connection_state = 0, "disconnected"
    assert progress.healthy(stats)  # nor an outage
    stats.connection_state = "connected"
    assert not progress.healthy(stats)
    stats.delivery.published += 6
    assert progress.healthy(stats)
