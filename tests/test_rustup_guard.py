"""cross/rustup-guard: what cross-rs 0.2.5 may ask of rustup while `make wheels-cross` runs.

cross-rs 0.2.5 strips only " (default)" from `rustup toolchain list`; today's rustup prints
"stable-x86_64-unknown-linux-gnu (active, default)", so cross-rs took the toolchain for missing
and ran `rustup toolchain install stable-...`, which updated the machine's stable toolchain
(1.95.0 to 1.99.1). A stand-in for rustup records what reaches it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

GUARD = Path(__file__).resolve().parent.parent / "cross" / "rustup-guard"

LIST = (
    "stable-x86_64-unknown-linux-gnu (active, default)\n"
    "nightly-x86_64-unknown-linux-gnu\n"
    "1.95.0-x86_64-unknown-linux-gnu (active)\n"
)


@pytest.fixture
def real_rustup(tmp_path: Path) -> tuple[Path, Path]:
    calls = tmp_path / "calls"
    fake = tmp_path / "rustup"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >>{calls}\n'
        'if [ "$1 $2" = "toolchain list" ]; then\n'
        f"    printf '{LIST}'\n"
        "fi\n"
    )
    fake.chmod(0o755)
    return fake, calls


def guard(real: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CROSS_REAL_RUSTUP": str(real)}
    return subprocess.run(
        ["sh", str(GUARD), *args], env=env, capture_output=True, text=True, check=False
    )


def test_toolchain_list_has_bare_names_cross_rs_can_match(real_rustup: tuple[Path, Path]) -> None:
    real, _ = real_rustup
    result = guard(real, "toolchain", "list")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "stable-x86_64-unknown-linux-gnu",
        "nightly-x86_64-unknown-linux-gnu",
        "1.95.0-x86_64-unknown-linux-gnu",
    ]


@pytest.mark.parametrize(
    "args",
    [
        ("toolchain", "install", "stable-x86_64-unknown-linux-gnu"),
        ("update",),
        ("update", "stable"),
        ("target", "add", "--toolchain", "stable", "armv7-unknown-linux-gnueabihf"),
        ("component", "add", "rust-src", "--toolchain", "stable"),
        ("default", "nightly"),
        ("self", "update"),
    ],
)
def test_changes_to_the_toolchains_are_refused(
    real_rustup: tuple[Path, Path], args: tuple[str, ...]
) -> None:
    real, calls = real_rustup
    result = guard(real, *args)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "refused" in result.stderr
    assert not calls.exists(), "the real rustup was called"


def test_read_only_queries_reach_rustup(real_rustup: tuple[Path, Path]) -> None:
    real, calls = real_rustup
    result = guard(real, "component", "list", "--toolchain", "stable")
    assert result.returncode == 0
    assert calls.read_text() == "component list --toolchain stable\n"


def test_without_the_real_rustup_it_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CROSS_REAL_RUSTUP"}
    result = subprocess.run(
        ["sh", str(GUARD), "toolchain", "list"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "CROSS_REAL_RUSTUP" in result.stderr
