"""Start-up imports only what the run needs (it took 0.5 s and 35 MiB before anything
happened, 22-31 s in a mipsel guest): `version` and `--output stdout` import none of rich
(help and the live display only), prometheus_client (--metrics-addr), yaml (a config file, or
--print-config), pika (publishing) and hvac (Vault); nor, for memory (bench/bench_idle.py),
ssl and hashlib (OpenSSL, 3.5 MiB resident: TLS, and a computed router id, which only
publishing, --print-config and -v use), socket (publishing, systemd's notify socket) and
unicodedata (the IDNA codec: a non-ASCII broker host name)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

HEAVY = ("rich", "prometheus_client", "yaml", "pika", "hvac", "ssl", "hashlib", "socket",
         "unicodedata")
# Runs the command as the console script does, and says at exit which heavy modules it had.
RUN = f"""
import atexit, sys
atexit.register(lambda: print("heavy:", ",".join(sorted(
    {{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))), file=sys.stderr, flush=True))
from conntrack_collector.command import main
sys.exit(main(sys.argv[1:]))
"""


def heavy_modules(stderr: str) -> list[str]:
    line = next(line for line in stderr.splitlines() if line.startswith("heavy:"))
    return [name for name in line.split(":", 1)[1].strip().split(",") if name]


def test_version_imports_nothing_heavy() -> None:
    done = subprocess.run([sys.executable, "-c", RUN, "version"], capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.startswith("Version ")
    assert heavy_modules(done.stderr) == []


def test_help_still_has_its_rich_formatting() -> None:
    done = subprocess.run([sys.executable, "-c", RUN, "--help"], capture_output=True,
                          text=True, timeout=60, check=True)
    assert "╭" in done.stdout and "rich" in heavy_modules(done.stderr)


@pytest.mark.root
def test_output_stdout_imports_nothing_heavy() -> None:
    process = subprocess.Popen([sys.executable, "-c", RUN, "--output", "stdout"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    for line in process.stderr:  # until it listens, so the whole start-up has run
        if "listening for" in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGINT)
    _out, rest = process.communicate(timeout=30)
    assert heavy_modules(rest) == []
