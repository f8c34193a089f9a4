"""--tune-kernel: sets the conntrack sysctls, logs each change, and only in the watched namespace."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from collector_process import Collector
from conntrack_collector.kernel_tuning import KernelTuningError, tune_kernel
from netns_util import (
    conntrack_netns,
    flush_flows,
    run,
    send_udp_flows,
    sysctl_in,
)

SYSCTLS = ("nf_conntrack_acct", "nf_conntrack_timestamp", "nf_conntrack_events")


def fake_sysctls(tmp_path: Path, **values: str) -> Path:
    for name, value in values.items():
        (tmp_path / name).write_text(value + "\n")
    return tmp_path


def test_sets_what_is_off_and_logs_each_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="conntrack_collector.kernel_tuning")
    sysctl_dir = fake_sysctls(tmp_path, nf_conntrack_acct="0", nf_conntrack_timestamp="1",
                              nf_conntrack_events="2")

    results = tune_kernel(sysctl_dir=sysctl_dir)

    assert {r.name: (r.before, r.after) for r in results} == {
        "nf_conntrack_acct": ("0", "1"),
        "nf_conntrack_timestamp": ("1", "1"),
        "nf_conntrack_events": ("2", "1"),
    }
    assert [r.name for r in results if r.changed] == ["nf_conntrack_acct", "nf_conntrack_events"]
    assert all((sysctl_dir / name).read_text().strip() == "1" for name in SYSCTLS)
    changes = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert changes == [
        "--tune-kernel: net.netfilter.nf_conntrack_acct changed from 0 to 1",
        "--tune-kernel: net.netfilter.nf_conntrack_events changed from 2 to 1",
    ]


def test_missing_sysctl_is_a_warning_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sysctl_dir = fake_sysctls(tmp_path, nf_conntrack_acct="0", nf_conntrack_events="1")

    results = tune_kernel(sysctl_dir=sysctl_dir)

    assert (sysctl_dir / "nf_conntrack_acct").read_text().strip() == "1"
    missing = [r for r in results if r.error]
    assert [r.name for r in missing] == ["nf_conntrack_timestamp"]
    assert "nf_conntrack_timestamp" in caplog.text
    assert "not available in this kernel" in caplog.text


@pytest.mark.root
def test_applies_inside_the_namespace_only() -> None:
    host_before = {name: Path("/proc/sys/net/netfilter", name).read_text() for name in SYSCTLS}
    with conntrack_netns("tune") as netns:
        for name in ("nf_conntrack_acct", "nf_conntrack_timestamp"):
            run("ip", "netns", "exec", netns, "sysctl", "-qw", f"net.netfilter.{name}=0")
        run("ip", "netns", "exec", netns, "sysctl", "-qw", "net.netfilter.nf_conntrack_events=2")

        results = tune_kernel(netns=netns)

        assert all(r.error is None for r in results)
        assert {name: sysctl_in(netns, name) for name in SYSCTLS} == dict.fromkeys(SYSCTLS, "1")
    host_after = {name: Path("/proc/sys/net/netfilter", name).read_text() for name in SYSCTLS}
    assert host_after == host_before


@pytest.mark.root
def test_unknown_namespace_is_a_clear_error() -> None:
    with pytest.raises(KernelTuningError, match="ctc-no-such-ns does not exist"):
        tune_kernel(netns="ctc-no-such-ns")


@pytest.mark.root
def test_command_tunes_the_watched_namespace_so_a_restart_loses_no_destroy() -> None:
    host_before = {name: Path("/proc/sys/net/netfilter", name).read_text() for name in SYSCTLS}
    with conntrack_netns("tune-cli") as netns:
        run("ip", "netns", "exec", netns, "sysctl", "-qw", "net.netfilter.nf_conntrack_events=2")
        first = Collector("--netns", netns, "--tune-kernel", "--output", "stdout")
        first.wait_for("listening for")
        assert first.stop() == 0
        # The collector is away (a restart): at nf_conntrack_events=2 these flows would never
        # produce their DESTROY.
        send_udp_flows(netns, 3, first_port=32000)
        second = Collector("--netns", netns, "--output", "stdout")
        try:
            second.wait_for("listening for")
            flush_flows(netns)
            lines = second.wait_for_stdout_lines(3)
        finally:
            second.stop()

        assert {name: sysctl_in(netns, name) for name in SYSCTLS} == dict.fromkeys(SYSCTLS, "1")
    changes = [line for line in first.stderr if "--tune-kernel:" in line]
    assert any(f"nf_conntrack_events changed from 2 to 1 in network namespace {netns}" in line
               for line in changes), first.stderr
    # Tuned before the stream opened: none of its start-up warnings about these settings.
    assert not any("nf_conntrack_events=2" in line for line in first.stderr)
    destroyed = sorted(json.loads(line)["Original"]["Layer4"]["Dport"] for line in lines
                       if json.loads(line)["Type"] == "DESTROY")
    assert destroyed == [32000, 32001, 32002]
    host_after = {name: Path("/proc/sys/net/netfilter", name).read_text() for name in SYSCTLS}
    assert host_after == host_before
