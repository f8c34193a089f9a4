"""Flows made in the background while a broker goes away, and what their events should be."""

from __future__ import annotations

import json
import threading
import time

from netns_util import send_udp_flows
from rabbitmq import Received


class FlowMaker:
    """Makes `batch` new UDP flows (distinct destination ports) every `interval_s`."""

    def __init__(self, netns: str, batch: int = 20, interval_s: float = 0.25) -> None:
        self.netns = netns
        self.batch = batch
        self.interval_s = interval_s
        self.flows = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and 20000 + self.flows + self.batch < 60000:
            send_udp_flows(self.netns, self.batch, first_port=20000 + self.flows)
            self.flows += self.batch
            self._stop.wait(self.interval_s)

    def __enter__(self) -> FlowMaker:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.flows


def event_keys(messages: list[Received]) -> set[tuple[str, int, int]]:
    """(Type, Id, destination port) of every event: duplicates collapse."""
    keys = set()
    for message in messages:
        body = json.loads(message.body)
        for event in body if isinstance(body, list) else [body]:
            keys.add((event["Type"], event["Id"], event["Original"]["Layer4"]["Dport"]))
    return keys


def expected_ports(flows: int) -> set[int]:
    return set(range(20000, 20000 + flows))


def wait_until(predicate: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.2)
    return False
