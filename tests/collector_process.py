"""The collector as a child process, run the way users run it, with its output collected."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO


def collector_command(*args: str) -> list[str]:
    """The collector as this interpreter runs it (the installed package, or PYTHONPATH's)."""
    # Not realpath: in a virtualenv that is the base interpreter, without the venv's packages.
    return [sys.executable, "-m", "conntrack_collector", *args]


class Collector:
    """`python -m conntrack_collector ARGS` in the background; stdout and stderr by line.

    env: added to this process's environment, or the whole environment with
        inherit_env=False. wrapper: a command the collector runs under (`ip netns exec`,
        setpriv, ...). The working directory is /, so no stray config file in `.` is read.
    """

    def __init__(self, *args: str, env: Mapping[str, str] | None = None,
                 wrapper: Sequence[str] = (), inherit_env: bool = True) -> None:
        environment = {**os.environ, **(env or {})} if inherit_env else dict(env or {})
        self.process = subprocess.Popen([*wrapper, *collector_command(*args)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=environment, cwd="/")
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._collect, args=(self.process.stdout, self.stdout),
                             daemon=True),
            threading.Thread(target=self._collect, args=(self.process.stderr, self.stderr),
                             daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(pipe: IO[bytes] | None, lines: list[str]) -> None:
        assert pipe is not None
        for line in pipe:
            lines.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.stderr)

    def wait_for(self, text: str, timeout_s: float = 20.0) -> None:
        """Until a line of stderr contains `text`; fails if the collector exits first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(text in line for line in self.stderr):
                return
            if self.process.poll() is not None:
                for reader in self._readers:
                    reader.join(2)
                raise AssertionError(f"collector exited ({self.process.returncode}) before "
                                     f"{text!r}:\n{self.log}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in the collector's log after {timeout_s} s:\n{self.log}")

    def wait_listening(self) -> None:
        self.wait_for("listening for")

    def wait_for_stdout_lines(self, count: int, timeout_s: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while len(self.stdout) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.stdout)

    def send(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        """The signal, then the exit code (killed after `timeout_s`); all output collected."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        for reader in self._readers:
            reader.join(5)
        return code

    def summary(self) -> dict[str, int]:
        """The numbers of the final `stopped: received R events, delivered D, not delivered U`."""
        for line in reversed(self.stderr):
            match = re.search(r"received (\d+) events(?:, delivered (\d+))?, not delivered (\d+)",
                              line)
            if match:
                return {"received": int(match[1]), "delivered": int(match[2] or 0),
                        "not_delivered": int(match[3])}
        raise AssertionError(f"no summary line in the collector's log:\n{self.log}")
