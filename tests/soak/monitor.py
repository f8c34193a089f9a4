"""Watches the collector through its metrics endpoint: the longest stall (events accepted but
not confirmed, and no confirm arriving), the peak backlog, and whether it is still alive."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Callable

SAMPLE_INTERVAL_S = 0.25
SAMPLE = re.compile(r"^conntrack_collector_(\w+?)(?:\{([^}]*)\})? ([0-9.e+-]+)$",
                    re.MULTILINE)


def scrape(port: int) -> dict[str, float]:
    """name or name{labels} -> value, of our own metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {f"{name}{{{labels}}}" if labels else name: float(value)
            for name, labels, value in SAMPLE.findall(text)}


@dataclass
class Stall:
    seconds: float
    started_at_s: float  # since the soak started
    during: str  # the fault and traffic phase at its start
    # Its middle sample: where the waiting events were (buffered, in flight), the connection.
    state: str = ""


class Monitor:
    """`outstanding` = received - confirmed - dropped: everything accepted and not yet done
    (buffered, in flight, waiting to be published again). A stall lasts while that is above 0
    and `confirmed` does not grow."""

    def __init__(self, metrics_port: int, started: float, context: Callable[[], str],
                 alive: Callable[[], bool]) -> None:
        self.metrics_port = metrics_port
        self.alive = alive
        self.started = started
        self.context = context
        self.longest = Stall(0.0, 0.0, "")
        self.peak_outstanding = 0
        self.samples = 0
        self.failed_scrapes = 0
        self.last: dict[str, float] = {}
        self._stall_since: float | None = None
        self._stall_during = ""
        self._stall_states: list[str] = []  # one per sample of the stall under way
        self._confirmed = -1.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._close_stall(time.monotonic())

    def outstanding(self, sample: dict[str, float]) -> int:
        received = sum(v for k, v in sample.items() if k.startswith("events_received_total"))
        dropped = sum(v for k, v in sample.items() if k.startswith("events_dropped_total"))
        return int(received - sample.get("events_confirmed_total", 0) - dropped)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            if not self.alive():  # an exited collector holds nothing: no stall goes on
                self._close_stall(time.monotonic())
                return
            try:
                sample = scrape(self.metrics_port)
            except OSError:
                self.failed_scrapes += 1
                continue
            if "events_confirmed_total" not in sample:
                continue  # not the metrics we know: never counted as a sample
            self.samples += 1
            self.last = sample
            self._observe(time.monotonic(), sample)

    def _observe(self, now: float, sample: dict[str, float]) -> None:
        outstanding = self.outstanding(sample)
        self.peak_outstanding = max(self.peak_outstanding, outstanding)
        confirmed = sample.get("events_confirmed_total", 0)
        progressed = confirmed > self._confirmed
        self._confirmed = confirmed
        if outstanding <= 0 or progressed:
            self._close_stall(now)
            if outstanding > 0:  # a new wait starts at this confirm
                self._stall_since, self._stall_during = now, self.context()
        elif self._stall_since is None:
            self._stall_since, self._stall_during = now, self.context()
        if self._stall_since is not None:
            self._stall_states.append(self._state(sample))

    def _close_stall(self, now: float) -> None:
        if self._stall_since is not None:
            seconds = now - self._stall_since
            if seconds > self.longest.seconds:
                self.longest = Stall(seconds, self._stall_since - self.started,
                                     self._stall_during, self._middle_state())
        self._stall_since = None
        self._stall_states = []

    def _middle_state(self) -> str:
        """Why a stall lasts is best seen halfway through: not while the connection is still
        being remade at its start, nor in the collector's shutdown at its end."""
        states = self._stall_states
        return states[len(states) // 2] if states else ""

    def _state(self, last: dict[str, float]) -> str:
        connected = "connected" if last.get("broker_connected") else "not connected"
        republish = ("" if "awaiting_republish_events" not in last else
                     f"{int(last['awaiting_republish_events'])} to publish again, ")
        buffered = last.get("publish_buffer_events", last.get("buffer_events", 0))
        return (f"{self.outstanding(last)} outstanding: {int(buffered)} buffered, "
                f"{int(last.get('in_flight_events', 0))} in flight, {republish}{connected}")
