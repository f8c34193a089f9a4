"""Bad inputs that need the real event source (root) to reach: no capability, no namespace,
a broker refusing the credentials."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from netns_util import needs_root
from rabbitmq import needs_broker

pytestmark = [pytest.mark.root, needs_root]


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
