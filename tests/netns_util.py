"""Throw-away network namespaces with conntrack switched on, for the root-only tests."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

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


def ctnetlink_listeners(netns: str) -> int:
    """NETLINK_NETFILTER (12) sockets in `netns` that joined multicast groups: event listeners
    (ours and `conntrack -E`'s). /proc/net/netlink lists the sockets of the reader's namespace."""
    rows = [line.split() for line in run("ip", "netns", "exec", netns, "cat",
                                          "/proc/net/netlink").splitlines()[1:]]
    return sum(1 for row in rows if len(row) > 3 and row[1] == "12" and int(row[3], 16) != 0)


def wait_for_listeners(netns: str, count: int, timeout_s: float = 20.0) -> None:
    """Until `count` event listeners have subscribed in `netns` (a flow made before a listener
    subscribes produces no event for it)."""
    deadline = time.monotonic() + timeout_s
    while ctnetlink_listeners(netns) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} conntrack event listeners in {netns} "
                                 f"after {timeout_s} s")
        time.sleep(0.05)


def netlink_drops(netns: str) -> int:
    """The kernel's Drops column of the event listeners in `netns` (/proc/net/netlink): what it
    could not queue on them, read independently of the socket's owner."""
    rows = [line.split() for line in run("ip", "netns", "exec", netns, "cat",
                                          "/proc/net/netlink").splitlines()[1:]]
    return sum(int(row[8]) for row in rows
               if len(row) > 8 and row[1] == "12" and int(row[3], 16) != 0)
