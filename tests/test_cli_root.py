"""Bad inputs that need the real event source (root) to reach: no capability, no namespace,
a broker refusing the credentials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from collector_process import Collector
from netns_util import conntrack_netns, flush_flows, send_udp_flows
from rabbitmq import needs_broker

pytestmark = pytest.mark.root


def collector(*argv: str, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "conntrack_collector", *argv],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **(env or {})})


def last_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    return stderr.strip().splitlines()[-1]


def test_without_cap_net_admin_one_line_and_exit_77() -> None:
    # Root without CAP_NET_ADMIN: the capability, not the uid, is what the kernel checks.
    done = collector("--output", "stdout", prefix=(
        "setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"))
    assert done.returncode == 77
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "needs CAP_NET_ADMIN" in lines[0]


def test_missing_network_namespace_is_a_usage_error() -> None:
    done = collector("--output", "stdout", "--netns", "ctc-no-such-namespace")
    assert done.returncode == 2, done.stderr
    assert "ctc-no-such-namespace" in last_line(done.stderr)


@needs_broker
def test_refused_credentials_one_line_and_non_zero_exit() -> None:
    done = collector("--amqp-host", "127.0.0.1", env={"OWP_AMQP_PASSWORD": "wrong"})
    assert done.returncode == 1, done.stderr
    assert last_line(done.stderr) == (
        "conntrack-event-collector: error: RabbitMQ at 127.0.0.1:5672 refused the credentials "
        "of user 'guest'")
    assert "wrong" not in done.stderr


def test_output_stdout_is_one_json_object_per_line() -> None:
    with conntrack_netns("stdout") as netns:
        collector = Collector("--netns", netns, "--output", "stdout")
        try:
            collector.wait_listening()
            send_udp_flows(netns, 3)
            flush_flows(netns)
            time.sleep(0.5)
        finally:
            code = collector.stop(signal.SIGINT)
        lines = collector.stdout
    assert code == 0, collector.log
    events = [json.loads(line) for line in lines]
    assert sorted(e["Type"] for e in events) == ["DESTROY"] * 3 + ["NEW"] * 3
    assert list(events[0]) == ["Timestamp", "Type", "Id", "Original", "Reply", "UNREPLIED",
                               "ASSURED"]
    assert collector.summary() == {"received": 6, "delivered": 0, "not_delivered": 0}
