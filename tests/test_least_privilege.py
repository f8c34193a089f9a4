"""The collector runs as an ordinary user holding CAP_NET_ADMIN alone, and says so without it.

The collector is started inside the test's namespace (`ip netns exec`) rather than with
`--netns`: entering a namespace needs CAP_SYS_ADMIN, which is exactly what we do not grant.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from collector_process import Collector
from netns_util import (
    flush_flows,
    run,
    send_udp_flows,
    sysctl_in,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)"),
]

CAP_NET_ADMIN_MASK = 1 << 12
FLOWS = 5


def drop_to_nobody(*, cap_net_admin: bool) -> list[str]:
    """setpriv: user nobody, no groups, and CAP_NET_ADMIN (or nothing) in every set."""
    caps = "-all,+net_admin" if cap_net_admin else "-all"
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            f"--inh-caps={caps}", f"--bounding-set={caps}"]
    if cap_net_admin:
        argv.append("--ambient-caps=+net_admin")
    return [*argv, "--"]


def closed_ancestors(paths: list[str]) -> dict[Path, set[str]]:
    """For each path, its highest ancestor that other users cannot enter, and the entry in it
    that leads to the path (e.g. /root -> {".pyenv"} for an interpreter under /root)."""
    closed: dict[Path, set[str]] = {}
    for path in map(Path, paths):
        for parent in reversed(path.parents):
            if parent.stat().st_mode & 0o001 == 0:
                closed.setdefault(parent, set()).add(path.relative_to(parent).parts[0])
                break
    return closed


def interpreter_exposed(stash: Path) -> list[str]:
    """A command prefix that opens the interpreter's folders to other users, in a mount
    namespace of its own: CI runs as root with Python under /root, closed to user nobody.
    Each closed folder is covered by an empty world-readable tmpfs into which the entries we
    need are bind-mounted back; nothing changes outside that mount namespace."""
    needed = [sys.executable, os.path.realpath(sys.executable), sys.prefix, sys.base_prefix,
              *(p for p in sys.path if p and Path(p).exists())]
    q = shlex.quote
    script = ["set -e", f"mount -t tmpfs tmpfs {q(str(stash))}"]
    for number, (folder, entries) in enumerate(closed_ancestors(needed).items()):
        kept = []
        for entry in sorted(entries):
            source = folder / entry
            keep = stash / f"{number}-{entry}"
            make = "mkdir" if source.is_dir() else "touch"
            script += [f"{make} {q(str(keep))}", f"mount --bind {q(str(source))} {q(str(keep))}"]
            kept.append((make, source, keep))
        script.append(f"mount -t tmpfs -o mode=755 tmpfs {q(str(folder))}")
        for make, source, keep in kept:
            script += [f"{make} {q(str(source))}", f"mount --bind {q(str(keep))} {q(str(source))}"]
    script.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private",
            "sh", "-c", "\n".join(script), "expose"]


def unprivileged_collector(netns: str, stash: Path, *, cap_net_admin: bool,
                           args: tuple[str, ...] = ()) -> Collector:
    stash.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent",
           "LANG": "C.UTF-8"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return Collector("--output", "stdout", *args, env=env, inherit_env=False, wrapper=[
        "ip", "netns", "exec", netns, *interpreter_exposed(stash),
        *drop_to_nobody(cap_net_admin=cap_net_admin)])


def capabilities_of(pid: int) -> dict[str, str]:
    status = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)


def test_events_as_nobody_with_cap_net_admin_only(netns: str, tmp_path: Path) -> None:
    run("ip", "netns", "exec", netns, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=0")
    collector = unprivileged_collector(netns, tmp_path / "stash", cap_net_admin=True,
                                       args=("--tune-kernel",))
    try:
        collector.wait_for("listening for")
        status = capabilities_of(collector.process.pid)
        assert status["Uid"].split()[:2] == [str(65534)] * 2
        assert int(status["CapEff"], 16) == CAP_NET_ADMIN_MASK
        assert int(status["CapBnd"], 16) == CAP_NET_ADMIN_MASK

        send_udp_flows(netns, FLOWS, first_port=31000)
        flush_flows(netns)
        lines = collector.wait_for_stdout_lines(2 * FLOWS)
    finally:
        code = collector.stop()

    events = [json.loads(line) for line in lines]
    ours = [(e["Type"], e["Original"]["Layer4"]["Dport"]) for e in events
            if 31000 <= e["Original"]["Layer4"]["Dport"] < 31000 + FLOWS]
    assert sorted(ours) == sorted(
        [("NEW", p) for p in range(31000, 31000 + FLOWS)]
        + [("DESTROY", p) for p in range(31000, 31000 + FLOWS)])
    assert code == 0, "\n".join(collector.stderr)
    # --tune-kernel needed no more than CAP_NET_ADMIN either.
    assert sysctl_in(netns, "nf_conntrack_acct") == "1"
    assert any("nf_conntrack_acct changed from 0 to 1" in line for line in collector.stderr)


def test_without_the_capability_a_clear_error(netns: str, tmp_path: Path) -> None:
    collector = unprivileged_collector(netns, tmp_path / "stash", cap_net_admin=False)
    code = collector.process.wait(timeout=30)
    collector.stop()

    assert code not in (0, None)
    errors = [line for line in collector.stderr if "error" in line.lower()]
    assert len(errors) == 1, collector.stderr
    assert "CAP_NET_ADMIN" in errors[0]
    assert not any("Traceback" in line for line in collector.stderr)


def test_another_namespace_needs_cap_sys_admin_and_says_so(netns: str, tmp_path: Path) -> None:
    """Why the service files put the whole collector in the namespace instead (docs/deploy.md)."""
    collector = unprivileged_collector(netns, tmp_path / "stash", cap_net_admin=True,
                                       args=("--netns", netns))
    code = collector.process.wait(timeout=30)
    collector.stop()

    assert code not in (0, None)
    assert len(collector.stderr) == 1, collector.stderr
    assert "CAP_SYS_ADMIN" in collector.stderr[0]
