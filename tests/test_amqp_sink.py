"""bench/amqp_sink.py, the benchmark's instant-ack broker: pika's publisher gets through its
handshake and every publish is confirmed and counted. (The benchmark itself is not a test.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pika

SINK = Path(__file__).parent.parent / "bench" / "amqp_sink.py"


def test_the_sink_confirms_and_counts_every_publish() -> None:
    sink = subprocess.Popen([sys.executable, str(SINK)], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline().split()[1])
        connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        channel = connection.channel()
        channel.exchange_declare("ex", "direct", durable=True)
        channel.confirm_delivery()
        for i in range(50):  # raises if a publish is not confirmed
            channel.basic_publish("ex", "", b'{"n":%d}' % i, mandatory=True)
        connection.close()
        while (line := sink.stdout.readline()) and line.split() != ["published", "50"]:
            pass
        assert line.split() == ["published", "50"]
    finally:
        sink.kill()
        sink.wait()
