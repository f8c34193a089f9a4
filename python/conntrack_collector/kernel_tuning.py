"""`--tune-kernel`: the conntrack sysctls that make events complete, set in the watched namespace.

The `net.netfilter.*` sysctls are per network namespace, so with `--netns` they are written from
a short-lived thread that has entered that namespace: `setns()` moves only the calling thread,
and the thread ends right after, so the rest of the process (the publisher) stays where it is.
Writing a network sysctl needs CAP_NET_ADMIN only; entering another namespace needs
CAP_SYS_ADMIN as well.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

SYSCTL_DIR = Path("/proc/sys/net/netfilter")
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

# name -> wanted value. Why each one:
#   acct: DESTROY events carry packet and byte counters only when accounting is on.
#   timestamp: flows get start and stop times.
#   events: at 2 (the kernel's default, "only while someone listens") a flow created while the
#     collector was not running (restart, upgrade) never produces its DESTROY; 1 always does.
WANTED_SYSCTLS: dict[str, str] = {
    "nf_conntrack_acct": "1",
    "nf_conntrack_timestamp": "1",
    "nf_conntrack_events": "1",
}


class KernelTuningError(Exception):
    """The namespace to tune cannot be entered at all."""


@dataclass(frozen=True)
class SysctlResult:
    name: str
    before: str | None  # None: the sysctl does not exist in this kernel
    after: str | None
    error: str | None = None

    @property
    def changed(self) -> bool:
        return self.error is None and self.before != self.after


def netns_path(netns: str) -> Path:
    """A namespace given as a name under /run/netns, or as a path (as `EventStream` takes it)."""
    return Path(netns) if "/" in netns else NETNS_DIR / netns


def tune_kernel(netns: str | None = None, sysctl_dir: Path = SYSCTL_DIR) -> list[SysctlResult]:
    """Set WANTED_SYSCTLS in `netns` (or the current namespace), logging each change.

    A sysctl that is missing or cannot be written is logged as a warning and the rest go on:
    the collector still runs, with the kernel's own start-up warnings saying what is lost.
    Raises KernelTuningError when `netns` cannot be entered.
    """
    if netns is None:
        results = _apply(sysctl_dir)
    else:
        results = _in_netns(netns_path(netns), lambda: _apply(sysctl_dir))
    where = f" in network namespace {netns}" if netns else ""
    for result in results:
        if result.error is not None:
            log.warning("--tune-kernel: cannot set net.netfilter.%s%s: %s",
                        result.name, where, result.error)
        elif result.changed:
            log.info("--tune-kernel: net.netfilter.%s changed from %s to %s%s",
                     result.name, result.before, result.after, where)
        else:
            log.debug("--tune-kernel: net.netfilter.%s already %s%s",
                      result.name, result.after, where)
    return results


def _apply(sysctl_dir: Path) -> list[SysctlResult]:
    return [_set_one(sysctl_dir / name, wanted) for name, wanted in WANTED_SYSCTLS.items()]


def _set_one(path: Path, wanted: str) -> SysctlResult:
    try:
        before = path.read_text().strip()
    except FileNotFoundError:
        return SysctlResult(path.name, None, None, "not available in this kernel")
    except OSError as err:
        return SysctlResult(path.name, None, None, err.strerror or str(err))
    if before == wanted:
        return SysctlResult(path.name, before, before)
    try:
        path.write_text(wanted)
    except OSError as err:
        reason = err.strerror or str(err)
        if isinstance(err, PermissionError):
            reason += " (needs CAP_NET_ADMIN and a writable /proc/sys)"
        return SysctlResult(path.name, before, before, reason)
    return SysctlResult(path.name, before, path.read_text().strip())


def _in_netns(path: Path, work: Callable[[], list[SysctlResult]]) -> list[SysctlResult]:
    """Run `work` on a thread of its own that has joined the network namespace at `path`."""
    outcome: list[list[SysctlResult]] = []
    failure: list[KernelTuningError] = []

    def run() -> None:
        try:
            _setns(path)
        except KernelTuningError as err:  # raised again on the caller's thread
            failure.append(err)
            return
        outcome.append(work())

    thread = threading.Thread(target=run, name="tune-kernel-netns")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    if not outcome:
        raise KernelTuningError(f"tuning network namespace {path} failed")
    return outcome[0]


def _setns(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KernelTuningError(f"network namespace {path} does not exist") from None
    except OSError as err:
        raise KernelTuningError(f"cannot open network namespace {path}: {err.strerror}") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            hint = " (needs CAP_SYS_ADMIN)" if errno == 1 else ""
            raise KernelTuningError(
                f"cannot enter network namespace {path}: {os.strerror(errno)}{hint}")
    finally:
        os.close(fd)

