"""`--tune-kernel`: the conntrack sysctls that make events complete, set in the watched namespace.

The Rust core does the work (which sysctls and why: `TUNED_SYSCTLS` in rust/kernel.rs), on a
thread of its own that has entered the namespace, as the reader does; this module decides what
to log. Writing a network sysctl needs CAP_NET_ADMIN only; entering another namespace needs
CAP_SYS_ADMIN as well.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from . import _native

log = logging.getLogger(__name__)


class KernelTuningError(Exception):
    """The namespace to tune cannot be entered at all; `usage`: because it is not one (a
    bad --netns), rather than for want of a capability."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


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
    return Path(_native.netns_path(netns))


def tune_kernel(netns: str | None = None, sysctl_dir: Path | None = None) -> list[SysctlResult]:
    """Set the conntrack sysctls in `netns` (or the current namespace), logging each change.

    A sysctl that is missing or cannot be written is logged as a warning and the rest go on:
    the collector still runs, with the kernel's own start-up warnings saying what is lost.
    Raises KernelTuningError when `netns` cannot be entered.
    """
    try:
        tuned = _native.tune_kernel(netns, sysctl_dir)
    except FileNotFoundError:
        where = netns_path(netns or "")
        raise KernelTuningError(f"network namespace {where} does not exist",
                                usage=True) from None
    except OSError as err:  # PermissionError: entering needs CAP_SYS_ADMIN
        raise KernelTuningError(f"cannot enter network namespace {netns}: {err}") from None
    except ValueError as err:  # "PATH is not a network namespace"
        raise KernelTuningError(str(err), usage=True) from None
    results = [SysctlResult(*one) for one in tuned]
    place = f" in network namespace {netns}" if netns else ""
    for result in results:
        if result.error is not None:
            log.warning("--tune-kernel: cannot set net.netfilter.%s%s: %s",
                        result.name, place, result.error)
        elif result.changed:
            log.info("--tune-kernel: net.netfilter.%s changed from %s to %s%s",
                     result.name, result.before, result.after, place)
        else:
            log.debug("--tune-kernel: net.netfilter.%s already %s%s",
                      result.name, result.after, place)
    return results
