"""Start-up and idle memory: what the collector costs while nothing happens.

Run as root from the repository, with RabbitMQ on 127.0.0.1:5672 (guest/guest):

    .venv/bin/python bench/bench_idle.py [--idle-s 10] [--version-runs 15] [--no-site-pth]

- `version`: `python -m conntrack_collector version` run --version-runs times: median (best)
  wall time; and as many runs that say their own peak RSS (VmHWM) as they exit, the largest
  of which is given (a child's ru_maxrss would not do: it counts the parent it was forked
  from).
- The collector idle, twice: `--output stdout`, and publishing to RabbitMQ with default flags;
  each `--netns` a namespace of its own made for the run (`ip netns add`), so that no event
  comes. After it says it listens (and, publishing, that it is connected) it idles --idle-s
  seconds; then VmRSS and VmHWM, the CPU it used while idle, and where the resident memory
  is, from /proc/PID/smaps (see `breakdown`).
`--no-site-pth` runs Python with -S and the site-packages folders on PYTHONPATH: the same
modules, without the .pth files site would run first (a machine's own, which the collector
does not need, can cost MiBs in every Python process).
"""

from __future__ import annotations

import argparse
import os
import re
import site
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

READY_TIMEOUT_S = 30.0
MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")
MALLOC_ARENA_BYTES = 64 << 20  # glibc's per-thread heaps are 64 MiB reservations, aligned
# `python -m conntrack_collector version`, and its VmHWM on stderr at exit.
VERSION_PEAK = """
import atexit, runpy, sys
atexit.register(lambda: sys.stderr.write(next(
    line for line in open("/proc/self/status") if line.startswith("VmHWM:"))))
sys.argv[1:] = ["version"]
runpy.run_module("conntrack_collector", run_name="__main__", alter_sys=True)
"""


def python_command(no_site_pth: bool) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if not no_site_pth:
        return [sys.executable], env
    env["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())
    return [sys.executable, "-S"], env


@contextmanager
def namespace() -> Iterator[str]:
    name = f"ctc-idle-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def measure_version(python: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    walls, peaks = [], []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run([*python, "-m", "conntrack_collector", "version"], env=env,
                       stdout=subprocess.DEVNULL, check=True)
        walls.append(time.monotonic() - started)
        done = subprocess.run([*python, "-c", VERSION_PEAK], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, check=True)
        peaks.append(int(done.stderr.split()[-2]))  # "VmHWM: N kB"
    return {"median_s": statistics.median(walls), "best_s": min(walls),
            "peak_rss_mib": max(peaks) / 1024}


def status_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[key] = int(value.split()[0])
    return fields


def cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def breakdown(pid: int) -> Counter[str]:
    """Resident KiB by kind of mapping. Anonymous memory is told apart by its shape: a
    thread's stack sits right above its guard page (no access), a thread's malloc arena is a
    64 MiB-aligned reservation; the rest is the main heap's and Python's object arenas, the
    bulk of which are the imported modules' code, functions and classes."""
    maps: list[tuple[int, int, str, str, int]] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        match = MAPPING.match(line)
        if match:
            start, end, perms, name = match.groups()
            maps.append((int(start, 16), int(end, 16), perms, name.strip(), 0))
        elif line.startswith("Rss:") and maps:
            start, end, perms, name, _ = maps[-1]
            maps[-1] = (start, end, perms, name, int(line.split()[1]))
    kinds: Counter[str] = Counter()
    for index, (start, _end, perms, name, rss) in enumerate(maps):
        previous = maps[index - 1] if index else None
        if name.endswith(".so") and "_native" in name:
            kind = "the native module (_native .so)"
        elif "libpython" in name:
            kind = "libpython"
        elif "libcrypto" in name or "libssl" in name:
            kind = "OpenSSL (libcrypto, libssl)"
        elif "/lib-dynload/" in name:
            kind = "Python's extension modules (lib-dynload)"
        elif name.startswith("/"):
            kind = "other files (libc, libm, ld.so, locale, ...)"
        elif name == "[heap]":
            kind = "malloc: main heap"
        elif name == "[stack]":
            kind = "main thread's stack"
        elif name.startswith("["):
            kind = f"kernel ({name})"
        elif start % MALLOC_ARENA_BYTES == 0 and perms.startswith("rw"):
            kind = "malloc: threads' arenas"
        elif previous and previous[1] == start and previous[2] == "---p" and perms.startswith("rw"):
            kind = "threads' stacks"
        else:
            kind = "anonymous: Python's object arenas, large allocations"
        kinds[kind] += rss
    return kinds


def measure_idle(python: list[str], env: dict[str, str], extra: list[str], idle_s: float,
                 publishing: bool) -> dict[str, object]:
    with namespace() as netns:
        child = subprocess.Popen(
            [*python, "-m", "conntrack_collector", "--netns", netns, *extra], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert child.stderr is not None
        ready = threading.Event()
        log: list[str] = []

        def read_log() -> None:
            assert child.stderr is not None
            for line in child.stderr:
                log.append(line.rstrip())
                if "connected to RabbitMQ" in line or ("listening for" in line
                                                       and not publishing):
                    ready.set()

        reader = threading.Thread(target=read_log, daemon=True)
        reader.start()
        try:
            if not ready.wait(READY_TIMEOUT_S):
                raise SystemExit("the collector did not start:\n" + "\n".join(log))
            cpu_before = cpu_s(child.pid)
            time.sleep(idle_s)
            cpu_used = cpu_s(child.pid) - cpu_before
            status = status_kib(child.pid)
            kinds = breakdown(child.pid)
            threads = len(os.listdir(f"/proc/{child.pid}/task"))
        finally:
            child.terminate()
            child.wait(30)
            reader.join(5)
    return {"rss_mib": status["VmRSS"] / 1024, "hwm_mib": status["VmHWM"] / 1024,
            "anon_mib": status["RssAnon"] / 1024, "file_mib": status["RssFile"] / 1024,
            "cpu_ms_per_s": cpu_used * 1000 / idle_s, "threads": threads, "kinds": kinds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--version-runs", type=int, default=15)
    parser.add_argument("--no-site-pth", action="store_true",
                        help="python -S, the site-packages folders on PYTHONPATH")
    args = parser.parse_args()
    python, env = python_command(args.no_site_pth)
    load = os.getloadavg()[0]
    version = measure_version(python, env, args.version_runs)
    print(f"python: {' '.join(python)}; load {load:.2f}")
    print(f"version: median {version['median_s']:.3f} s (best {version['best_s']:.3f} s), "
          f"peak RSS {version['peak_rss_mib']:.1f} MiB")
    for label, extra, publishing in (("--output stdout", ["--output", "stdout"], False),
                                     ("publishing to RabbitMQ", [], True)):
        idle = measure_idle(python, env, extra, args.idle_s, publishing)
        print(f"{label}: idle RSS {idle['rss_mib']:.1f} MiB (peak {idle['hwm_mib']:.1f}; "
              f"anonymous {idle['anon_mib']:.1f}, files {idle['file_mib']:.1f}), "
              f"{idle['threads']} threads, idle CPU {idle['cpu_ms_per_s']:.1f} ms/s")
        kinds = idle["kinds"]
        assert isinstance(kinds, Counter)
        for kind, kib in kinds.most_common():
            if kib:
                print(f"  {kib / 1024:6.1f} MiB  {kind}")


if __name__ == "__main__":
    main()
