"""The verdicts on the cross wheels' emulated proofs. cross/test-emulated.sh runs the tools
(mmdebstrap, chroot under qemu-user, qemu-system guests) and keeps what they reported in a facts
folder; these tests judge those facts, with CROSS_FACTS_DIR naming the folder. Without it (as in
`make test`) they are skipped: the facts take the cross builds and emulation, which CI runs in
cross/ci.sh."""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FACTS_DIR = os.environ.get("CROSS_FACTS_DIR")
pytestmark = pytest.mark.skipif(not FACTS_DIR, reason="no CROSS_FACTS_DIR: the facts come from "
                                "cross/test-emulated.sh (make test-cross, cross/ci.sh)")
FACTS = Path(FACTS_DIR or ".")
GUEST_ARCHES = ("armhf", "mipsel")


def steps() -> set[str]:
    """The steps test-emulated.sh ran (armhf, armhf-decode, mipsel, musl, ...)."""
    return set((FACTS / "steps").read_text().split())


def needs_step(*wanted: str) -> None:
    if not steps() & set(wanted):
        pytest.skip(f"test-emulated.sh ran none of {', '.join(wanted)}")


def fact(name: str) -> Path:
    path = FACTS / name
    assert path.is_file(), f"{name}: no such fact; its step ran but did not report (see the log)"
    return path


def console_line(arch: str, marker: str) -> str:
    """The last line of a guest's console that starts with `marker`, without it."""
    lines = [line[len(marker):] for line in
             fact(f"qemu-{arch}.log").read_text(errors="replace").splitlines()
             if line.startswith(marker)]
    assert lines, f"the {arch} guest printed no {marker.strip()} line (it did not get that far)"
    return lines[-1].strip()


def decoded(arch: str) -> dict[str, Any]:
    facts: dict[str, Any] = json.loads(fact(f"decoded-{arch}.json").read_text())
    return facts


# --- the golden captures under qemu-user ---------------------------------------------------------

def manifest_fields(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "Type": entry["type"], "Id": entry["id"],
        "l3": entry["l3proto"], "l4": entry["l4proto"],
        "orig": [entry["orig"]["src"], entry["orig"]["dst"]],
        "reply": [entry["reply"]["src"], entry["reply"]["dst"]],
        "counters": [entry["orig"]["packets"], entry["orig"]["bytes"],
                     entry["reply"]["packets"], entry["reply"]["bytes"]],
        "ASSURED": entry["assured"], "UNREPLIED": entry["unreplied"],
    }


def event_fields(e: dict[str, Any]) -> dict[str, Any]:
    o, r = e["Original"], e["Reply"]
    return {
        "Type": e["Type"], "Id": e["Id"],
        "l3": o["Layer3"]["Protonum"], "l4": o["Layer4"]["Protonum"],
        "orig": [o["Layer3"]["Src"], o["Layer3"]["Dst"]],
        "reply": [r["Layer3"]["Src"], r["Layer3"]["Dst"]],
        "counters": [o["Counter"]["Packets"], o["Counter"]["Bytes"],
                     r["Counter"]["Packets"], r["Counter"]["Bytes"]],
        "ASSURED": e["ASSURED"], "UNREPLIED": e["UNREPLIED"],
    }


@pytest.mark.parametrize("arch", ("x86_64", *GUEST_ARCHES))
def test_golden_captures_decode_as_the_manifest_says(arch: str) -> None:
    needs_step(*(GUEST_ARCHES if arch == "x86_64" else (arch, f"{arch}-decode")))
    manifest = json.loads((ROOT / "rust/testdata/manifest.json").read_text())
    got = decoded(arch)["decoded"]
    assert sorted(got) == sorted(entry["file"] for entry in manifest)
    for entry in manifest:
        events = got[entry["file"]]["events"]
        assert len(events) == 1, entry["file"]
        assert event_fields(events[0]) == manifest_fields(entry), entry["file"]
        assert len(got[entry["file"]]["json"]) == 1, entry["file"]


@pytest.mark.parametrize("arch", GUEST_ARCHES)
def test_golden_captures_decode_to_the_same_dicts_and_json_bytes_as_x86_64(arch: str) -> None:
    needs_step(arch, f"{arch}-decode")
    ours, reference = decoded(arch), decoded("x86_64")
    assert ours["version"] == reference["version"]
    assert ours["machine"] != reference["machine"], "the target's facts came from the host"
    for name, want in reference["decoded"].items():
        assert ours["decoded"][name]["events"] == want["events"], name
        got_json = [base64.b64decode(j) for j in ours["decoded"][name]["json"]]
        assert got_json == [base64.b64decode(j) for j in want["json"]], name


# --- the host's kernel tests in the qemu-system guests --------------------------------------------

def expected_kernel_tests() -> set[str]:
    """What cross/guest/kernel-tests.args selects: every test function of the files it names,
    less the deselected ones (node ids as pytest writes them)."""
    lines = [line.strip() for line in
             (ROOT / "cross/guest/kernel-tests.args").read_text().splitlines()]
    args = [line for line in lines if line and not line.startswith("#")]
    deselected = {a.split("=", 1)[1] for a in args if a.startswith("--deselect=")}
    expected = set()
    for path in (a for a in args if not a.startswith("-")):
        tree = ast.parse((ROOT / path).read_text())
        expected |= {f"{path}::{node.name}" for node in tree.body
                     if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
    assert expected, "kernel-tests.args selects no test"
    return expected - deselected


@pytest.mark.parametrize("arch", GUEST_ARCHES)
def test_the_guest_passes_the_hosts_kernel_tests(arch: str) -> None:
    needs_step(arch)
    junit = ET.fromstring(base64.b64decode(console_line(arch, "CONNTRACK-QEMU-JUNIT: ")))
    outcomes: dict[str, str] = {}
    problems = []
    for case in junit.iter("testcase"):
        # JUnit's classname is the module's dotted path; parametrised ids are kept whole.
        node = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        outcome = next((child.tag for child in case
                        if child.tag in ("failure", "error", "skipped")), "passed")
        outcomes[re.sub(r"\[.*\]$", "", node)] = outcome
        if outcome != "passed":
            problems.append(f"{node}: {outcome}: "
                            f"{next(iter(case)).get('message', '')[:300]}")
    assert not problems, f"in the {arch} guest:\n" + "\n".join(problems)
    assert set(outcomes) == expected_kernel_tests()


@pytest.mark.parametrize("arch", GUEST_ARCHES)
def test_the_guest_reads_every_event_of_a_burst(arch: str) -> None:
    needs_step(arch)
    measured = json.loads(console_line(arch, "CONNTRACK-QEMU-THROUGHPUT: "))
    assert "error" not in measured, measured["error"]
    for name in ("throughput", "throughput_json"):
        r = measured[name]
        assert r["new_received"] == r["destroy_received"] == r["flows"], r
        assert r["decode_errors"] == 0, r


# --- the OpenWrt build (mipsel, musl, soft-float) ----------------------------------------------

def test_the_musl_wheel_is_mips32r2_soft_float_and_needs_only_musl() -> None:
    needs_step("musl")
    readelf = fact("musl-readelf.txt").read_text()
    assert re.search(r"Class:\s+ELF32", readelf)
    assert re.search(r"Data:\s+.*little endian", readelf)
    assert re.search(r"Machine:\s+MIPS", readelf)
    assert re.search(r"Flags:.*\bo32\b", readelf)
    assert re.search(r"ISA: MIPS32r2", readelf)
    assert re.search(r"FP ABI: Soft float", readelf)
    # musl has one libc.so; glibc would need libc.so.6 and version its symbols.
    assert re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", readelf) == ["libc.so"]
    assert "GLIBC" not in readelf
    assert "Requesting program interpreter" not in readelf


def test_the_musl_core_reads_real_events_in_the_mipsel_guest() -> None:
    needs_step("mipsel")
    if not (FACTS / "mipsel-guest-runs-musl-probe").is_file():
        pytest.skip("no musl probe was built before the mipsel guest booted (step musl)")
    verdict = console_line("mipsel", "MUSL-PROBE-RESULT: ")
    assert verdict.startswith("PASS "), verdict
