"""The benchmark `make bench` runs: the hard cases first, with default flags, in one run.

Run as root from the repository, with RabbitMQ on 127.0.0.1:5672 (guest/guest):

    python3 bench/bench.py [--targets iterator,sink,rabbitmq] [--scenarios 60/s,10k/s,...]

Three consumers of the same kernel events, each started afresh for each scenario:
  - `iterator`: `EventStream()` (NEW and DESTROY, as_json=True) iterated in a process of its
    own, each event written as a line to a pipe this script reads (the bare iterator);
  - `sink`: the collector (`python -m conntrack_collector --netns NS`, nothing else but where
    to publish) into bench/amqp_sink.py, a minimal AMQP broker that confirms every publish at
    once: what the collector alone can deliver;
  - `rabbitmq`: the collector into the real RabbitMQ at 127.0.0.1:5672, its exchange bound to a
    non-durable queue whose depth is what was delivered; the broker's ceiling (persistent
    messages/s one pipelined publisher gets confirmed, bench_publish.broker_ceiling) is
    measured before and after.
Scenarios, each in a new namespace, NEW and DESTROY interleaved (bench/flood.py --delete:
UDP flows made with sendmmsg, each batch deleted right after by ctnetlink):
  60/s for 10 s (a router's trickle), 10k/s, 50k/s and 100k/s for 3 s, `max` (150k flows as
  fast as one sender makes and deletes them), and `burst`: 200k flows made, then flushed at
  once (`conntrack -F`), listening for NEW and DESTROY throughout.
Offered: flows made plus flows deleted (made minus those still in the table at the end).
Delivered: what reached the consumer once it stopped growing for SETTLE_S. Reported: lost %,
delivered events/s (first event offered to the last delivered), the consumer's CPU per
delivered event (the whole process, utime+stime), its peak RSS (VmHWM), and the load average
when the scenario started (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_publish import Queue, broker_ceiling, conntrack_max, namespace, process_cpu_s

BENCH = Path(__file__).parent
SETTLE_S = 2.0
START_TIMEOUT_S = 30.0
# name: (events/s offered, flows); rate 0 is as fast as possible.
SCENARIOS: dict[str, tuple[float, int]] = {
    "60/s": (60, 300),
    "10k/s": (10_000, 15_000),
    "50k/s": (50_000, 75_000),
    "100k/s": (100_000, 150_000),
    "max": (0, 150_000),
    "burst": (0, 200_000),
}
ITERATOR = r"""
import sys
import conntrack_collector
stream = conntrack_collector.EventStream(netns=sys.argv[1], as_json=True)
print("ready", file=sys.stderr, flush=True)
out = sys.stdout.buffer
for event in stream:
    out.write(event + b"\n")
"""


@dataclass
class Row:
    target: str
    scenario: str
    load_1min: float
    offered: int
    offered_per_s: float
    delivered: int
    lost_pct: float
    delivered_per_s: float
    cpu_us_per_event: float
    peak_rss_mib: float


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Consumer:
    """A process that takes the namespace's events; `delivered()` counts what it delivered."""

    process: subprocess.Popen[Any]

    def delivered(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Iterator(Consumer):
    def __init__(self, netns: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", ITERATOR, netns],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.process.stderr is not None
        seen = []  # start-up warnings (kernel settings), then "ready"
        while (line := self.process.stderr.readline()).strip() != b"ready":
            seen.append(line)
            if not line:
                raise SystemExit(f"iterator did not start: {b''.join(seen)!r}")
        self.lines = 0
        threading.Thread(target=self._count, daemon=True).start()

    def _count(self) -> None:
        assert self.process.stdout is not None
        while chunk := self.process.stdout.read1(1 << 20):
            self.lines += chunk.count(b"\n")

    def delivered(self) -> int:
        return self.lines


class Collector(Consumer):
    """The collector with default flags but where to publish."""

    def __init__(self, netns: str, *where: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "conntrack_collector", "--netns", netns, *where],
            stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not any("connected to RabbitMQ" in line for line in self.lines):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit("collector did not start:\n" + "\n".join(self.lines))
            time.sleep(0.05)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip())

    def stop(self) -> None:
        super().stop()
        time.sleep(0.2)
        print("    collector:", self.lines[-1] if self.lines else "", flush=True)


class Sink:
    """bench/amqp_sink.py, for the whole run."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(BENCH / "amqp_sink.py")],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline().split()[1])
        self.published = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.published = int(line.split()[1])

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


class SinkCollector(Collector):
    def __init__(self, netns: str, sink: Sink) -> None:
        self.sink = sink
        self.before = sink.published
        super().__init__(netns, "--amqp-host", "127.0.0.1", "--amqp-port", str(sink.port))

    def delivered(self) -> int:
        return self.sink.published - self.before


class RabbitCollector(Collector):
    def __init__(self, netns: str) -> None:
        exchange = f"ctc-bench-{uuid.uuid4().hex[:8]}"
        self.queue = Queue(exchange)
        super().__init__(netns, "--amqp-host", "127.0.0.1", "--amqp-exchange", exchange)

    def delivered(self) -> int:
        return self.queue.depth()

    def stop(self) -> None:
        super().stop()
        self.queue.close()


def remaining_flows(netns: str) -> int:
    done = subprocess.run(["ip", "netns", "exec", netns, "conntrack", "-C"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def offer(netns: str, scenario: str) -> tuple[int, float]:
    """Makes the scenario's events; returns (events offered, seconds it took)."""
    rate, flows = SCENARIOS[scenario]
    flood = [sys.executable, str(BENCH / "flood.py"), str(flows)]
    start = time.monotonic()
    if scenario == "burst":
        subprocess.run(["ip", "netns", "exec", netns, *flood], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", netns, "conntrack", "-F"], check=True,
                       capture_output=True)
    else:
        subprocess.run(["ip", "netns", "exec", netns, *flood, "--delete", "--rate", str(rate)],
                       check=True, capture_output=True)
    seconds = time.monotonic() - start
    return 2 * flows - remaining_flows(netns), seconds


def run_scenario(target: str, scenario: str, sink: Sink | None) -> Row:
    load = os.getloadavg()[0]
    with namespace() as netns:
        consumer: Consumer
        if target == "iterator":
            consumer = Iterator(netns)
        elif target == "sink":
            assert sink is not None
            consumer = SinkCollector(netns, sink)
        else:
            consumer = RabbitCollector(netns)
        try:
            pid = consumer.process.pid
            cpu_before = process_cpu_s(pid)
            started = time.monotonic()
            offered, offered_s = offer(netns, scenario)
            # Delivered: once it stops growing for SETTLE_S; CPU read at the last growth.
            last, last_change, cpu_at_last = -1, time.monotonic(), cpu_before
            while time.monotonic() - last_change < SETTLE_S:
                count = consumer.delivered()
                if count != last:
                    last, last_change, cpu_at_last = count, time.monotonic(), process_cpu_s(pid)
                time.sleep(0.05)
            rss = peak_rss_mib(pid)
        finally:
            consumer.stop()
    delivered = max(last, 0)
    return Row(
        target=target, scenario=scenario, load_1min=round(load, 1), offered=offered,
        offered_per_s=round(offered / offered_s), delivered=delivered,
        lost_pct=round(100 * (offered - delivered) / max(offered, 1), 1),
        delivered_per_s=round(delivered / max(last_change - started, 1e-9)),
        cpu_us_per_event=round((cpu_at_last - cpu_before) * 1e6 / max(delivered, 1), 1),
        peak_rss_mib=round(rss, 1))


def table(rows: list[Row]) -> str:
    header = ("| target | scenario | load | offered | offered/s | delivered | lost | delivered/s "
              "| CPU us/event | peak RSS MiB |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.target} | {r.scenario} | {r.load_1min} | {r.offered} | {r.offered_per_s} "
              f"| {r.delivered} | {r.lost_pct} % | {r.delivered_per_s} | {r.cpu_us_per_event} "
              f"| {r.peak_rss_mib} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="iterator,sink,rabbitmq")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "bench.json")
    args = parser.parse_args()
    targets = args.targets.split(",")
    scenarios = args.scenarios.split(",")
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}")

    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if "rabbitmq" in targets:
        results["ceiling_before"] = round(broker_ceiling(100_000, bulk=True))
        print(f"broker ceiling before: {results['ceiling_before']} msgs/s", flush=True)
    rows: list[Row] = []
    sink = Sink() if "sink" in targets else None
    try:
        with conntrack_max(max(flows for _rate, flows in SCENARIOS.values()) + 50_000):
            for target in targets:
                for scenario in scenarios:
                    rows.append(run_scenario(target, scenario, sink))
                    print(f"  {rows[-1]}", flush=True)
    finally:
        if sink is not None:
            sink.close()
    if "rabbitmq" in targets:
        results["ceiling_after"] = round(broker_ceiling(100_000, bulk=True))
        print(f"broker ceiling after: {results['ceiling_after']} msgs/s", flush=True)
    results["rows"] = [asdict(r) for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print()
    print(table(rows))
    for key in ("ceiling_before", "ceiling_after"):
        if key in results:
            print(f"broker {key.replace('_', ' ')}: {results[key]} persistent msgs/s")


if __name__ == "__main__":
    main()
