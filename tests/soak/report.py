"""What the soak found: the collector's stop summary, the queue's messages, the faults and the
stall, judged against the delivery guarantee and put in one summary line."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

from soak.monitor import Stall
from soak.traffic import expected_events

# Drops are allowed only for a bound, and only if the backlog really reached it.
BOUND_REASONS = {"buffer_full"}

STOP_SUMMARY = re.compile(r"stopped: received (\d+) events, delivered (\d+), not delivered (\d+)"
                          r"(?: \(([^)]*)\))?")


@dataclass
class StopSummary:
    """The collector's last line: `stopped: received N events, delivered M, not delivered K
    (reason: n, ...)`."""

    received: int
    delivered: int
    not_delivered: int
    drops: dict[str, int]


def parse_stop_summary(lines: list[str]) -> StopSummary | None:
    for line in reversed(lines):
        match = STOP_SUMMARY.search(line)
        if match:
            drops = {}
            for item in filter(None, (match[4] or "").split(", ")):
                reason, _, count = item.rpartition(": ")
                drops[reason] = int(count)
            return StopSummary(int(match[1]), int(match[2]), int(match[3]), drops)
    return None


def event_key(body: bytes) -> tuple[str, str, int]:
    """(Type, destination address, destination port): one flow's NEW or DESTROY."""
    event = json.loads(body)
    return (event["Type"], event["Original"]["Layer3"]["Dst"],
            event["Original"]["Layer4"]["Dport"])


@dataclass
class Outcome:
    flows: int  # offered: each makes a NEW and a DESTROY
    messages: list[tuple[str, bytes]]  # (message_id, body) as consumed from the queue
    stop: StopSummary | None
    exit_code: int
    exited_early: bool
    injected: Counter[str]
    scheduled: list[str]
    faults_without_effect: list[str]
    fault_error: BaseException | None
    stall: Stall
    metric_samples: int  # the stall is measured only if the collector's metrics were read
    peak_outstanding: int
    max_buffer_events: int
    max_stall_s: float
    elapsed_s: float
    bodies: dict[str, bytes] = field(init=False)
    conflicting: int = field(init=False)  # one message_id, two different bodies

    def __post_init__(self) -> None:
        self.bodies, self.conflicting = {}, 0
        for message_id, body in self.messages:
            if self.bodies.setdefault(message_id, body) != body:
                self.conflicting += 1

    @property
    def offered(self) -> int:
        return 2 * self.flows

    @property
    def duplicates(self) -> int:
        return len(self.messages) - len(self.bodies)

    @property
    def lost(self) -> int:
        """Counted as received, neither in the queue nor in a drop counter."""
        stop = self.stop or StopSummary(0, 0, 0, {})
        return max(0, stop.received - stop.not_delivered - len(self.bodies))

    def summary_line(self) -> str:
        stop = self.stop or StopSummary(0, 0, 0, {})
        kinds = ", ".join(f"{name} {n}" for name, n in self.injected.items())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in stop.drops.items()) or "none"
        stall = self.stall
        return (f"SUMMARY faults {sum(self.injected.values())} ({kinds}); events offered "
                f"{self.offered}, received {stop.received}, delivered {len(self.bodies)} "
                f"(unique in the queue; confirmed {stop.delivered}), duplicates "
                f"{self.duplicates}, dropped {stop.not_delivered} ({reasons}), lost {self.lost}; "
                f"max stall {stall.seconds:.1f} s (from {stall.started_at_s:.0f} s, "
                f"{stall.during}; halfway {stall.state or 'not sampled'}); "
                f"{self.elapsed_s:.0f} s, exit {self.exit_code}")

    def failures(self) -> list[str]:
        found = self._run_failures()
        stop = self.stop
        if stop is None:
            return [*found, "no stop summary line on the collector's stderr"]
        unique = len(self.bodies)
        if stop.not_delivered != sum(stop.drops.values()):
            found.append(f"not delivered {stop.not_delivered}, but the reasons add up to "
                         f"{sum(stop.drops.values())}")
        for reason, n in stop.drops.items():
            if reason not in BOUND_REASONS:
                found.append(f"{n} event(s) dropped for {reason!r}, which is not a bound")
            elif self.peak_outstanding < self.max_buffer_events:
                found.append(f"{n} event(s) dropped for {reason!r} though the backlog peaked "
                             f"at {self.peak_outstanding} of {self.max_buffer_events} events")
        if self.lost:
            found.append(f"{self.lost} event(s) counted as received are neither in the queue "
                         f"nor in a drop counter")
        if unique > stop.received:
            found.append(f"{unique} distinct messages in the queue, more than the "
                         f"{stop.received} events received")
        if unique < stop.delivered:
            found.append(f"the broker confirmed {stop.delivered} events, the queue holds {unique}")
        if self.conflicting:
            found.append(f"{self.conflicting} message_id(s) repeated with a different body")
        found += self._offered_failures()
        if self.metric_samples == 0:
            found.append("the collector's metrics were never read: no stall was measured")
        if self.stall.seconds > self.max_stall_s:
            found.append(f"a stall of {self.stall.seconds:.1f} s (limit {self.max_stall_s:.0f} "
                         f"s) from {self.stall.started_at_s:.0f} s into the soak, "
                         f"{self.stall.during}; halfway {self.stall.state}")
        return found

    def _run_failures(self) -> list[str]:
        found = []
        if self.fault_error is not None:
            found.append(f"fault injection failed: {self.fault_error!r}")
        if self.exited_early:
            return [*found, f"the collector exited during the soak, code {self.exit_code}"]
        if self.exit_code != 0:
            found.append(f"the collector's exit code after SIGTERM: {self.exit_code}")
        found += [f"fault without effect: {what}" for what in self.faults_without_effect]
        found += [f"fault {name} never injected" for name in self.scheduled
                  if not self.injected[name]]
        return found

    def _offered_failures(self) -> list[str]:
        """End to end: each flow's two events in the queue, once each (a second copy under
        another message_id could not be told from a new event by consumers)."""
        keys = Counter(event_key(body) for body in self.bodies.values())
        expected = set(expected_events(self.flows))
        missing = len(expected - set(keys))
        unexpected = sum(n for key, n in keys.items() if key not in expected)
        copies = sum(n - 1 for n in keys.values() if n > 1)
        found = []
        if missing or unexpected:
            found.append(f"of {self.offered} events offered, {missing} are not in the queue "
                         f"({unexpected} unexpected events there)")
        if copies:
            found.append(f"{copies} event(s) in the queue again under another message_id")
        return found
