"""How a run ends badly: the process exit codes (one name each, as httpie's ExitStatus) and the
exception that carries one up to the command's entry point."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # a failure at run time: the broker refused us, TLS verification failed
    USAGE = 2  # a bad flag, value, environment variable or config file
    NO_PERMISSION = 77  # no CAP_NET_ADMIN (sysexits' EX_NOPERM)
    INTERRUPTED = 130  # a second Ctrl-C: exit at once (128 + SIGINT)
    TERMINATED = 143  # a second SIGTERM: exit at once (128 + SIGTERM)


class Error(Exception):
    """Ends the run with a one-line message and an exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code
