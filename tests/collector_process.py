"""Run the collector as a child process, the way users do, and watch its log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time


class Collector:
    """`python -m conntrack_collector ARGS` with its stderr collected line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "conntrack_collector", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.process.poll() is not None:
                self._reader.join(2)
                raise AssertionError(f"collector exited ({self.process.returncode}):\n{self.log}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in the collector's log after {timeout_s} s:\n{self.log}")

    def wait_listening(self) -> None:
        self.wait_for("listening for")

    def send(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(5)
        return code

    def summary(self) -> dict[str, int]:
        """The numbers of the final `stopped: received R events, delivered D, not delivered U`."""
        import re

        for line in reversed(self.lines):
            match = re.search(r"received (\d+) events(?:, delivered (\d+))?, not delivered (\d+)",
                              line)
            if match:
                return {"received": int(match[1]), "delivered": int(match[2] or 0),
                        "not_delivered": int(match[3])}
        raise AssertionError(f"no summary line in the collector's log:\n{self.log}")
