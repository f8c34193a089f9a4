"""Throw-away network namespaces with conntrack switched on, for the root-only tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import pytest

# Root-only tests carry both: the "root" marker selects them, this skips them without root.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

# In a fresh namespace the kernel tracks nothing until a rule uses conntrack. Datagrams are
# dropped on input, after conntrack saw them, so each one is a flow and none gets an ICMP reply.
NFT_RULES = """
table inet ctc {
    chain out { type filter hook output priority 0; ct state new counter; }
    chain in { type filter hook input priority 0; udp dport 20000-60000 drop; }
}
"""


def run(*argv: str, input_text: str | None = None) -> str:
    done = subprocess.run(argv, input=input_text, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


@contextmanager
def conntrack_netns(prefix: str) -> Iterator[str]:
    """A new namespace named ctc-<prefix>-<random>, lo up and tracked; removed afterwards."""
    name = f"ctc-{prefix}-{uuid.uuid4().hex[:6]}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "netns", "exec", name, "nft", "-f", "-", input_text=NFT_RULES)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def send_udp_flows(netns: str, count: int, first_port: int = 20000) -> None:
    """`count` new UDP flows inside `netns`, one datagram each, to ports `first_port` and up
    of 127.0.0.1; past port 59999 they go on at 20000 of 127.0.0.2, and so on."""
    script = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for n in range({first_port - 20000}, {first_port - 20000 + count}):\n"
        "    s.sendto(b'x', ('127.0.0.%d' % (1 + n // 40000), 20000 + n % 40000))\n"
    )
    run("ip", "netns", "exec", netns, "python3", "-c", script)


def flush_flows(netns: str) -> None:
    """Remove every flow of `netns`: one DESTROY event each."""
    subprocess.run(["ip", "netns", "exec", netns, "conntrack", "-F"],
                   capture_output=True, check=False)


def sysctl_in(netns: str, name: str) -> str:
    return run("ip", "netns", "exec", netns, "cat", f"/proc/sys/net/netfilter/{name}").strip()


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Collector:
    """`conntrack-event-collector` running in the background; its output collected by line."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, cwd="/")
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.stdout),
                             daemon=True),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.stderr),
                             daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(pipe: IO[bytes] | None, lines: list[str]) -> None:
        assert pipe is not None
        for line in pipe:
            lines.append(line.decode(errors="replace").rstrip("\n"))

    def wait_for(self, text: str, timeout_s: float = 20.0) -> None:
        """Until a line of stderr contains `text`; fails if the collector exits first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(text in line for line in self.stderr):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        raise AssertionError(f"no {text!r} on stderr; exit={self.proc.poll()}\n"
                             + "\n".join(self.stderr))

    def wait_for_stdout_lines(self, count: int, timeout_s: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while len(self.stdout) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.stdout)

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, then its exit code (killed after `timeout_s`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=5)
        return code


def collector_command(*args: str) -> list[str]:
    """The collector as this interpreter runs it (the installed package, or PYTHONPATH's)."""
    return [os.path.realpath(sys.executable), "-m", "conntrack_collector", *args]
