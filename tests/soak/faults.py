"""The faults, injected one after another on a schedule (repeated while the soak lasts), each
announced with the time it started. Every fault is undone before the next one starts, so the
quorum queue always has a majority of its three nodes."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Callable

from rabbitmq import PrivateNode

from soak.cluster import Cluster
from soak.proxy import FaultProxy

NODE_DOWN_S = 15.0  # how long a stopped or killed node stays down
STALL_S = 10.0  # the proxy forwards nothing for this long
DELAY_S = 0.3  # each chunk, each way, for DELAYED_S
DELAYED_S = 15.0
HANDSHAKE_CLOSES = 3  # connection attempts in a row closed after the server's first bytes
GAP_S = 8.0  # between two faults: the collector catches up


class Faults:
    def __init__(self, cluster: Cluster, proxy: FaultProxy, started: float, duration_s: float,
                 say: Callable[[str], None]) -> None:
        self.cluster = cluster
        self.proxy = proxy
        self.started = started
        self.duration_s = duration_s
        self.say = say
        self.injected: Counter[str] = Counter()
        self.without_effect: list[str] = []  # faults that found nothing to act on
        self.current = "none"
        self.error: BaseException | None = None
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-faults", daemon=True)
        self._next_bystander = 0
        self.schedule: list[tuple[str, Callable[[], str]]] = [
            ("node-stop", self.stop_a_bystander_node),
            ("proxy-reset", self.reset_connections),
            ("node-kill", self.kill_the_connected_node),
            ("handshake-close", self.close_during_handshakes),
            ("stall", self.stall),
            ("delay", self.delay),
            ("connected-node-stop", self.stop_the_connected_node),
        ]

    def start(self) -> None:
        self._thread.start()

    def abort(self) -> None:
        """Finish the fault under way (undo it), inject no more."""
        self._abort.set()

    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _run(self) -> None:
        """The whole schedule at least once, then again while time is left."""
        try:
            first_round = True
            while first_round or self.elapsed() < self.duration_s:
                for name, inject in self.schedule:
                    if self._abort.wait(GAP_S) or (
                            not first_round and self.elapsed() >= self.duration_s):
                        return
                    self.current = name
                    self.say(f"{self.elapsed():7.1f} s  fault {name}")
                    what = inject()
                    self.say(f"{self.elapsed():7.1f} s  fault {name} undone: {what}")
                    self.injected[name] += 1
                    self.current = "none"
                first_round = False
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc
            self.say(f"{self.elapsed():7.1f} s  fault injection failed: {exc!r}")
        finally:
            self.current = "none"

    # ---- the faults: each returns what it did, once undone ------------------------------------

    def connected_node(self) -> PrivateNode:
        """The node the collector is connected to now (through the proxy), else the first."""
        ports = self.proxy.connected_upstreams()
        return self.cluster.node_on(ports[0]) if ports else self.cluster.nodes[0]

    def _down_and_up(self, node: PrivateNode, kill: bool) -> str:
        began = time.monotonic()
        if kill:
            node.kill()
        else:
            node.stop()
        self.say(f"{self.elapsed():7.1f} s    {node.name} {'killed' if kill else 'stopped'}")
        self._abort.wait(max(0.0, NODE_DOWN_S - (time.monotonic() - began)))
        node.start()
        self.cluster.wait_until_serving(node)
        return f"{node.name} {'SIGKILLed' if kill else 'stopped'}, up again after " \
               f"{time.monotonic() - began:.1f} s"

    def stop_a_bystander_node(self) -> str:
        connected = self.connected_node()
        others = [node for node in self.cluster.nodes if node is not connected]
        node = others[self._next_bystander % len(others)]
        self._next_bystander += 1
        return self._down_and_up(node, kill=False) + " (not the collector's node)"

    def kill_the_connected_node(self) -> str:
        return self._down_and_up(self.connected_node(), kill=True) + " (the collector's node)"

    def stop_the_connected_node(self) -> str:
        return self._down_and_up(self.connected_node(), kill=False) + " (the collector's node)"

    def _wait_for_a_connection(self, timeout_s: float = 15.0) -> None:
        """A fault on connections needs one to act on (the collector may be reconnecting)."""
        deadline = time.monotonic() + timeout_s
        while not self.proxy.connected_upstreams() and time.monotonic() < deadline:
            time.sleep(0.1)

    def reset_connections(self) -> str:
        self._wait_for_a_connection()
        resets = self.proxy.reset_all()
        if not resets:
            self.without_effect.append("proxy-reset: no connection to reset")
        return f"reset {resets} connection(s)"

    def close_during_handshakes(self) -> str:
        self._wait_for_a_connection()
        closed_before = self.proxy.handshakes_closed
        self.proxy.close_next_handshakes(HANDSHAKE_CLOSES)
        resets = self.proxy.reset_all()
        deadline = time.monotonic() + 30
        while self.proxy.handshake_closes_pending() and time.monotonic() < deadline:
            if self._abort.wait(0.1):
                break
        left = self.proxy.handshake_closes_pending()
        self.proxy.close_next_handshakes(0)
        if left:
            self.without_effect.append(f"handshake-close: {left} of {HANDSHAKE_CLOSES} "
                                       f"connection attempts never came")
        return (f"reset {resets} connection(s), then closed "
                f"{self.proxy.handshakes_closed - closed_before} handshake(s) after the "
                f"server's first bytes" + (f" ({left} attempt(s) never came)" if left else ""))

    def stall(self) -> str:
        self._wait_for_a_connection()
        self.proxy.stall()
        self._abort.wait(STALL_S)
        self.proxy.resume()
        return f"forwarded nothing for {STALL_S:.0f} s"

    def delay(self) -> str:
        self.proxy.delay(DELAY_S)
        self._abort.wait(DELAYED_S)
        self.proxy.delay(0.0)
        return f"delayed every chunk by {DELAY_S * 1000:.0f} ms for {DELAYED_S:.0f} s"
