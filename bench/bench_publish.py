"""End-to-end benchmark: conntrack events/s from a namespace into RabbitMQ.

Run as root, with RabbitMQ on 127.0.0.1:5672 (guest/guest), from the repository:

    python3 bench/bench_publish.py            # the full run, about 3 minutes
    python3 bench/bench_publish.py --quick    # shorter phases, a smaller burst

It measures, in the same run:
  1. the broker's ingest ceiling: one publisher, 1000 confirms in flight, persistent messages of
     one event's size into a non-durable queue; twice: with pika's basic_publish (the minimal
     publisher anyone would write; its own CPU may limit it) and with the collector's bulk frame
     encoder (so what remains is the broker);
  2. the collector (`python -m conntrack_collector --netns ...`) with `--events NEW` at offered
     rates of 1k, 5k and 10k flows/s (one NEW event each, one message each);
  3. a burst: 200k flows made beforehand, then `conntrack -F`: 200k DESTROY events at the
     kernel's pace (`--events DESTROY --reliable`), one message per event; then the same burst
     with `--batch-events 100`.
For each phase: events offered and delivered (messages in the queue, or events in the batches),
delivered events/s (from the first event offered to the last one in the queue), collector CPU
microseconds per event (utime+stime of the whole process, the Rust reader thread included), the
collector's peak RSS (VmHWM), the broker's CPU per event and how busy the machine was.

Flows are UDP datagrams from one socket to 127.0.0.x on varying ports, dropped by an nft `input`
rule after conntrack saw them (no reply, no ICMP). The host's nf_conntrack_max is raised for the
burst and put back afterwards.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pika

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
CONNTRACK_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
NFT_RULES = """
table inet bench {
    chain out { type filter hook output priority 0; ct state new counter; }
    chain in { type filter hook input priority 0; udp dport 20000-59999 drop; }
}
"""
SAMPLE_EVENT = (
    b'{"Timestamp":1764160000123,"Type":"NEW","Id":3436760956,"Original":{"Layer3":'
    b'{"Protonum":2,"Protoname":"ipv4","Src":"127.0.0.1","Dst":"127.0.0.1"},"Layer4":'
    b'{"Protonum":17,"Protoname":"udp","Sport":34277,"Dport":20001},"Counter":{"Packets":0,'
    b'"Bytes":0}},"Reply":{"Layer3":{"Protonum":2,"Protoname":"ipv4","Src":"127.0.0.1","Dst":'
    b'"127.0.0.1"},"Layer4":{"Protonum":17,"Protoname":"udp","Sport":20001,"Dport":34277},'
    b'"Counter":{"Packets":0,"Bytes":0}},"UNREPLIED":true,"ASSURED":false}'
)
# Runs inside the namespace: `count` flows at `rate` flows/s (0: as fast as possible).
FLOW_SENDER = r"""
import socket, sys, time
count, rate, first = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
start = time.monotonic()
for i in range(first, first + count):
    if rate and i % 100 == 0:
        ahead = (i - first) / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    s.sendto(b"x", ("127.0.%d.%d" % (i // 40000 // 250, 1 + i // 40000 % 250), 20000 + i % 40000))
"""


@dataclass
class Phase:
    name: str
    offered_events: int
    offered_per_s: float
    delivered_events: int
    lost_events: int
    delivered_per_s: float
    cpu_us_per_event: float
    peak_rss_mib: float
    broker_cpu_us_per_event: float  # the broker's share, to see who had the CPU
    machine_busy_pct: float  # both cores, over the phase


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def broker_pid() -> int:
    """The shared broker's Erlang VM, whose CPU we report beside ours."""
    out = sh("rabbitmqctl", "-q", "eval", "list_to_integer(os:getpid()).")
    return int(out.strip())


def sh(*argv: str, input_text: str | None = None) -> str:
    done = subprocess.run(argv, input=input_text, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


@contextmanager
def namespace() -> Iterator[str]:
    name = f"ctc-bench-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", name, "nft", "-f", "-", input_text=NFT_RULES)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@contextmanager
def conntrack_max(at_least: int) -> Iterator[None]:
    before = CONNTRACK_MAX.read_text().strip()
    if int(before) < at_least:
        CONNTRACK_MAX.write_text(str(at_least))
    try:
        yield
    finally:
        CONNTRACK_MAX.write_text(before)


def flush(netns: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "conntrack", "-F"], capture_output=True,
                   check=False)


def send_flows(netns: str, count: int, rate: float, first: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", FLOW_SENDER,
                             str(count), str(rate), str(first)])


class Queue:
    """A non-durable queue bound to the exchange; counts what arrives."""

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange
        self.name = f"ctc-bench-{uuid.uuid4().hex[:8]}"
        self.connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
        self.channel = self.connection.channel()
        self.channel.exchange_declare(exchange, "direct", durable=True)
        self.channel.queue_declare(self.name, durable=False)
        self.channel.queue_bind(self.name, exchange, "")

    def depth(self) -> int:
        count: int = self.channel.queue_declare(self.name, passive=True).method.message_count
        return count

    def purge(self) -> None:
        self.channel.queue_purge(self.name)

    def count_batched_events(self) -> int:
        """Drain the queue, summing the `events` header of each batch message."""
        events = 0
        while True:
            method, properties, _body = self.channel.basic_get(self.name, auto_ack=True)
            if method is None:
                return events
            events += int((properties.headers or {}).get("events", 1))

    def close(self) -> None:
        self.channel.queue_delete(self.name)
        self.channel.exchange_delete(self.exchange)
        self.connection.close()


def broker_ceiling(messages: int, bulk: bool) -> float:
    """Persistent messages/s that one pipelined publisher (1000 in flight) gets confirmed.
    bulk=False: pika's basic_publish, the minimal publisher anyone would write (its own CPU,
    ~17 us a message, may be what limits it); bulk=True: the collector's frame encoder, one
    write per 1000 messages, so what remains is the broker's ceiling."""
    from conntrack_collector.amqp_frames import PublishEncoder

    exchange = f"ctc-bench-ceiling-{uuid.uuid4().hex[:8]}"
    queue = Queue(exchange)
    state = {"sent": 0, "acked": 0, "start": 0.0, "end": 0.0}
    properties = pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                      headers={"router_id": "bench"})
    encoders: list[PublishEncoder] = []

    def pump(channel: Any) -> None:
        frames = []
        while state["sent"] - state["acked"] < 1000 and state["sent"] < messages:
            state["sent"] += 1
            if bulk:
                frames.append(encoders[0].encode(SAMPLE_EVENT, f"c-{state['sent']}",
                                                 int(time.time())))
            else:
                properties.message_id = f"c-{state['sent']}"
                properties.timestamp = int(time.time())
                channel.basic_publish(exchange, "", SAMPLE_EVENT, properties)
        if frames:
            channel.connection._output_marshaled_frames([b"".join(frames)])

    def on_confirm(channel: Any, frame: Any) -> None:
        tag = frame.method.delivery_tag
        state["acked"] = tag if frame.method.multiple else state["acked"] + 1
        if state["acked"] >= messages:
            state["end"] = time.perf_counter()
            channel.connection.close()
            return
        pump(channel)

    def on_channel(channel: Any) -> None:
        encoders.append(PublishEncoder(
            channel.channel_number, exchange, "", mandatory=False,
            content_type="application/json", headers={"router_id": "bench"},
            frame_max=channel.connection.params.frame_max))

        def go(_frame: Any) -> None:
            state["start"] = time.perf_counter()
            pump(channel)
        channel.confirm_delivery(lambda frame: on_confirm(channel, frame), callback=go)

    connection = pika.SelectConnection(
        pika.ConnectionParameters("127.0.0.1"),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, _e: c.ioloop.stop())
    connection.ioloop.start()
    rate = messages / (state["end"] - state["start"])
    queue.close()
    return rate


def measure_ceilings() -> dict[str, int]:
    ceilings = {"pika": round(broker_ceiling(100_000, bulk=False)),
                "bulk": round(broker_ceiling(100_000, bulk=True))}
    print(f"broker ceiling: {ceilings['pika']} persistent msgs/s with pika's basic_publish, "
          f"{ceilings['bulk']} with bulk frames", flush=True)
    return ceilings


class Collector:
    def __init__(self, netns: str, exchange: str, *extra: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "conntrack_collector", "--netns", netns,
             "--amqp-host", "127.0.0.1", "--amqp-exchange", exchange, *extra],
            stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 30
        while not any("connected to RabbitMQ" in line for line in self.lines):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit("collector did not start:\n" + "\n".join(self.lines))
            time.sleep(0.05)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip())

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        print("   collector:", self.lines[-1] if self.lines else "", flush=True)


def run_phase(name: str, netns: str, collector: Collector, queue: Queue, flows: int,
              rate: float, batched: bool, burst: bool = False, settle_s: float = 3.0) -> Phase:
    """Offered: `flows` NEW events at `rate` flows/s; or, burst=True, the DESTROY events of
    `flows` flows made beforehand (with no NEW subscribed) and flushed at once."""
    if burst:
        send_flows(netns, flows, 0, 0).wait()
        time.sleep(1)
    queue.purge()
    cpu_before = collector.cpu_s()
    broker = broker_pid()
    broker_before = process_cpu_s(broker)
    machine_before = machine_ticks()
    started = time.monotonic()
    if burst:
        flush(netns)
    else:
        send_flows(netns, flows, rate, 0).wait()
    offered_s = time.monotonic() - started
    # Delivered: what the queue holds once it stops growing for settle_s. CPU is read at the
    # last growth, so the idle settle time does not count.
    delivered, last_count = 0, -1
    last_change = time.monotonic()
    at_last_change = (last_change, cpu_before, broker_before, machine_before)
    while time.monotonic() - last_change < settle_s:
        if batched:
            delivered += queue.count_batched_events()
            count = delivered
        else:
            count = queue.depth()
        if count != last_count:
            last_count, last_change = count, time.monotonic()
            at_last_change = (last_change, collector.cpu_s(), process_cpu_s(broker),
                              machine_ticks())
        time.sleep(0.05)
    delivered = last_count
    done_at, cpu_after, broker_after, machine_after = at_last_change
    cpu_s = cpu_after - cpu_before
    broker_s = broker_after - broker_before
    busy_pct = 100 * (machine_after[0] - machine_before[0]) / max(
        1, machine_after[1] - machine_before[1])
    flush(netns)
    phase = Phase(
        name=name, offered_events=flows, offered_per_s=round(flows / offered_s),
        delivered_events=delivered, lost_events=flows - delivered,
        delivered_per_s=round(delivered / (done_at - started)),
        cpu_us_per_event=round(cpu_s / max(delivered, 1) * 1e6, 1),
        peak_rss_mib=round(collector.peak_rss_mib(), 1),
        broker_cpu_us_per_event=round(broker_s / max(delivered, 1) * 1e6, 1),
        machine_busy_pct=round(busy_pct))
    print(f"   {phase}", flush=True)
    return phase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases, 50k burst")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    seconds = 3 if args.quick else 10
    burst = 50_000 if args.quick else 200_000

    # The ceiling is measured before and after the collector's phases: on a shared machine it
    # moves, and the collector is compared with the mean of the two.
    results: dict[str, Any] = {"ceiling_before": measure_ceilings()}
    phases: list[Phase] = []
    runs: list[tuple[str, tuple[str, ...], list[tuple[str, int, float, bool]]]] = [
        ("NEW events, one per message", ("--events", "NEW"),
         [(f"{rate} flows/s", rate * seconds, rate, False) for rate in (1000, 5000, 10_000)]),
        ("burst, one event per message", ("--events", "DESTROY", "--reliable"),
         [(f"burst of {burst} DESTROYs", burst, 0, True)]),
        ("burst, batches", ("--events", "DESTROY", "--reliable", "--batch-events", "100"),
         [(f"burst of {burst} DESTROYs, 100 per message", burst, 0, True)]),
    ]
    with namespace() as netns, conntrack_max(2 * burst + 100_000):
        for title, extra, steps in runs:
            print(f"collector {' '.join(extra)}: {title}", flush=True)
            exchange = f"ctc-bench-{uuid.uuid4().hex[:8]}"
            queue = Queue(exchange)
            collector = Collector(netns, exchange, *extra)
            try:
                for name, flows, rate, burst_step in steps:
                    phases.append(run_phase(name, netns, collector, queue, flows, rate,
                                            batched="--batch-events" in extra, burst=burst_step))
            finally:
                collector.stop()
                queue.close()
    results["ceiling_after"] = measure_ceilings()
    results["phases"] = [asdict(p) for p in phases]
    for kind in ("pika", "bulk"):
        mean = (results["ceiling_before"][kind] + results["ceiling_after"][kind]) / 2
        for phase in results["phases"]:
            if phase["name"].startswith("burst of") and "per message" not in phase["name"]:
                share = round(100 * phase["delivered_per_s"] / mean)
                print(f"one message per event: {share} % of the mean {kind} ceiling ({mean:.0f}/s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
