"""Benchmark: conntrack events/s the iterator takes from the kernel, beside `conntrack -E`.

Run as root from the repository (`make bench`, about 4 minutes):

    python3 bench/bench_iterator.py [--rates 10000,20000,50000,100000,0] [--burst 200000]

Each phase offers UDP flows at a fixed rate for 2 s (or, at rate 0, `--max-flows` flows as
fast as bench/flood.py's sendmmsg makes them) inside a namespace of its own, and counts the NEW events that reach the consumer:
  - `dict`: `EventStream(("NEW",))` in its own process, iterating dicts;
  - `json`: the same with `as_json=True` (the publisher's fast path);
  - `conntrack`: `conntrack -E -e NEW -o timestamp,extended,id --buffer-size 15000000` writing
    to a pipe, read by this script (the reference's way, its buffer size).
Then a burst: `--burst` flows made while each consumer listens for DESTROY, flushed at once
with `conntrack -F`; ours with and without `reliable=True`.
For each: events offered and delivered, lost, delivered events/s, the consumer's CPU per 1000
events (the whole process: our reader thread included) and its peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_publish import conntrack_max, flush, namespace, process_cpu_s, send_flows

PHASE_S = 2.0
QUIET_S = 2.0

# The consumer, in its own process so its CPU and memory are its own.
ITERATOR_CONSUMER = r"""
import json, resource, sys, time
import conntrack_collector
netns, types, as_json, reliable, quiet_s = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1", float(sys.argv[5])
stream = conntrack_collector.EventStream(types.split(","), netns=netns, as_json=as_json, reliable=reliable)
print("ready", flush=True)
count, first, last = 0, None, None
while True:
    event = stream.poll(quiet_s if count else 60.0)
    if event is None:
        break
    last = time.monotonic()
    first = first or last
    count += 1
usage = resource.getrusage(resource.RUSAGE_SELF)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"count": count, "seconds": (last - first) if count > 1 else 0.0,
                  "cpu_s": usage.ru_utime + usage.ru_stime,
                  "peak_rss_kib": int(status["VmHWM"].split()[0]), "stats": stream.stats()}))
"""


@dataclass
class Result:
    phase: str
    consumer: str
    offered: int
    offered_per_s: float
    delivered: int
    lost: int
    delivered_per_s: float
    cpu_ms_per_1000: float
    peak_rss_mib: float
    overruns: int


def run_iterator(netns: str, types: str, as_json: bool, reliable: bool,
                 make_events: callable[[], tuple[int, float]]) -> dict[str, float]:  # type: ignore[valid-type]
    consumer = subprocess.Popen(
        [sys.executable, "-c", ITERATOR_CONSUMER, netns, types, "1" if as_json else "0",
         "1" if reliable else "0", str(QUIET_S)],
        stdout=subprocess.PIPE, text=True,
    )
    assert consumer.stdout is not None
    assert consumer.stdout.readline().strip() == "ready"
    offered, offered_per_s = make_events()
    report = json.loads(consumer.stdout.readline())
    consumer.wait()
    return {"offered": offered, "offered_per_s": offered_per_s, "delivered": report["count"],
            "seconds": report["seconds"], "cpu_s": report["cpu_s"],
            "peak_rss_kib": report["peak_rss_kib"], "overruns": report["stats"]["overruns"]}


def run_conntrack_tool(netns: str, event: str,
                       make_events: callable[[], tuple[int, float]]) -> dict[str, float]:  # type: ignore[valid-type]
    tool = subprocess.Popen(
        ["ip", "netns", "exec", netns, "conntrack", "-E", "-e", event, "-o",
         "timestamp,extended,id", "--buffer-size", "15000000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1 << 16,
    )
    assert tool.stdout is not None
    marker = f"[{event}]"
    seen: list[float] = []  # receive times of the matching lines

    def read_pipe() -> None:
        # Read as the reference did, from the start: a full pipe would stall the tool.
        assert tool.stdout is not None
        for line in tool.stdout:
            if marker in line:
                seen.append(time.monotonic())

    reader = threading.Thread(target=read_pipe, daemon=True)
    reader.start()
    time.sleep(1.0)  # no readiness signal: give it time to subscribe
    offered, offered_per_s = make_events()
    while True:  # until no line has come for QUIET_S
        count = len(seen)
        time.sleep(QUIET_S)
        if len(seen) == count or tool.poll() is not None:
            break
    count = len(seen)
    first, last = (seen[0], seen[-1]) if seen else (0.0, 0.0)
    cpu_s = process_cpu_s(tool.pid)
    status = dict(line.split(":", 1)
                  for line in Path(f"/proc/{tool.pid}/status").read_text().splitlines())
    tool.terminate()
    tool.wait(timeout=10)
    assert tool.stderr is not None
    errors = tool.stderr.read()
    return {"offered": offered, "offered_per_s": offered_per_s, "delivered": count,
            "seconds": last - first, "cpu_s": cpu_s,
            "peak_rss_kib": int(status["VmHWM"].split()[0]),
            "overruns": errors.count("ENOBUFS")}


def offer_at_rate(netns: str, rate: float, max_flows: int) -> callable[[], tuple[int, float]]:  # type: ignore[valid-type]
    count = int(rate * PHASE_S) if rate else max_flows

    def make() -> tuple[int, float]:
        start = time.monotonic()
        if rate:
            send_flows(netns, count, rate, 0).wait()
        else:
            flood(netns, count)
        return count, count / (time.monotonic() - start)

    return make


def offer_burst(netns: str, flows: int) -> callable[[], tuple[int, float]]:  # type: ignore[valid-type]
    def make() -> tuple[int, float]:
        flood(netns, flows)
        start = time.monotonic()
        flush(netns)
        return flows, flows / (time.monotonic() - start)

    return make


def flood(netns: str, count: int) -> None:
    """`count` flows as fast as sendmmsg makes them (bench/flood.py)."""
    subprocess.run(["ip", "netns", "exec", netns, sys.executable,
                    str(Path(__file__).with_name("flood.py")), str(count)], check=True)


def as_result(phase: str, consumer: str, raw: dict[str, float]) -> Result:
    delivered = int(raw["delivered"])
    return Result(
        phase=phase, consumer=consumer, offered=int(raw["offered"]),
        offered_per_s=round(raw["offered_per_s"]), delivered=delivered,
        lost=int(raw["offered"]) - delivered,
        delivered_per_s=round(delivered / raw["seconds"]) if raw["seconds"] else 0,
        cpu_ms_per_1000=round(raw["cpu_s"] * 1e6 / max(delivered, 1), 1),
        peak_rss_mib=round(raw["peak_rss_kib"] / 1024, 1), overruns=int(raw["overruns"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="10000,20000,50000,100000,0",
                        help="offered flows/s per phase, 0 = as fast as possible")
    parser.add_argument("--burst", type=int, default=200_000, help="flows in the burst (0: none)")
    parser.add_argument("--max-flows", type=int, default=600_000,
                        help="flows of the rate-0 phase: enough to outlast the socket buffers")
    parser.add_argument("--out", type=Path, default=Path("bench/results/iterator.json"))
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    results: list[Result] = []
    with conntrack_max(max(args.burst, args.max_flows) + 50_000):
        for rate in rates:
            phase = f"{int(rate)}/s" if rate else "max"
            for consumer in ("dict", "json", "conntrack"):
                with namespace() as netns:
                    offer = offer_at_rate(netns, rate, args.max_flows)
                    if consumer == "conntrack":
                        raw = run_conntrack_tool(netns, "NEW", offer)
                    else:
                        raw = run_iterator(netns, "NEW", consumer == "json", False, offer)
                    flush(netns)
                results.append(as_result(phase, consumer, raw))
                print(results[-1], flush=True)
        if args.burst:
            phase = f"burst {args.burst}"
            for consumer in ("dict", "json", "dict reliable", "conntrack"):
                with namespace() as netns:
                    offer = offer_burst(netns, args.burst)
                    if consumer == "conntrack":
                        raw = run_conntrack_tool(netns, "DESTROY", offer)
                    else:
                        raw = run_iterator(netns, "DESTROY", consumer == "json",
                                           "reliable" in consumer, offer)
                results.append(as_result(phase, consumer, raw))
                print(results[-1], flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(r) for r in results], indent=1))
    print("\n| phase | consumer | offered | offered/s | delivered | lost | delivered/s "
          "| CPU ms/1000 ev | peak RSS MiB | overruns |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.phase} | {r.consumer} | {r.offered} | {r.offered_per_s} | {r.delivered} "
              f"| {r.lost} | {r.delivered_per_s} | {r.cpu_ms_per_1000} | {r.peak_rss_mib} "
              f"| {r.overruns} |")


if __name__ == "__main__":
    main()
