"""The opt-in fields after ASSURED (`--fields`, `fields=`): forms, order and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import conntrack_collector
import pytest
import yaml
from conntrack_collector import FIELDS, EventStream, decode_datagram
from conntrack_collector.cli import main
from conntrack_collector.errors import ExitCode

CAPTURES = sorted((Path(__file__).parents[1] / "rust" / "testdata").glob("*.bin"))
REFERENCE_KEYS = ["Timestamp", "Type", "Id", "Original", "Reply", "UNREPLIED", "ASSURED"]
OPT_IN_KEYS = ["Start", "Stop", "Duration", "State", "Zone", "Mark", "Labels", "Icmp", "Status"]
DIRECTION_KEYS = {"Layer3": ["Protonum", "Protoname", "Src", "Dst"],
                  "Layer4": ["Protonum", "Protoname", "Sport", "Dport"],
                  "Counter": ["Packets", "Bytes"]}


def test_field_names_in_their_documented_order() -> None:
    assert FIELDS == ("timestamps", "state", "zone", "mark", "labels", "icmp", "status")


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.stem)
def test_dict_and_json_with_every_field_carry_the_same_content_in_the_same_order(
        capture: Path) -> None:
    datagram = capture.read_bytes()
    [as_dict] = decode_datagram(datagram, timestamp_ms=1764160000123, fields=list(FIELDS))
    [as_json] = decode_datagram(datagram, timestamp_ms=1764160000123, as_json=True,
                                fields=list(FIELDS))
    assert isinstance(as_json, bytes) and isinstance(as_dict, dict)
    parsed = json.loads(as_json)
    assert parsed == as_dict
    assert list(parsed) == list(as_dict) == REFERENCE_KEYS + OPT_IN_KEYS
    for direction in ("Original", "Reply"):
        for part, keys in DIRECTION_KEYS.items():
            assert list(parsed[direction][part]) == list(as_dict[direction][part]) == keys
    if as_dict["Icmp"] is not None:
        assert list(parsed["Icmp"]) == list(as_dict["Icmp"]) == ["Type", "Code", "Id"]
    assert isinstance(as_dict["Status"], list)
    # Without fields, exactly the reference's message.
    [plain] = decode_datagram(datagram, timestamp_ms=1764160000123)
    assert isinstance(plain, dict)
    assert {k: v for k, v in as_dict.items() if k in REFERENCE_KEYS} == plain


def test_fields_in_any_order_and_case_come_in_the_documented_order() -> None:
    datagram = (Path(__file__).parents[1] / "rust/testdata/icmp_ipv4_destroy_0.bin").read_bytes()
    [event] = decode_datagram(datagram, fields=["STATUS", "icmp", "timestamps", "status"])
    assert isinstance(event, dict)
    assert list(event)[len(REFERENCE_KEYS):] == ["Start", "Stop", "Duration", "Icmp", "Status"]
    assert event["Icmp"] == {"Type": 8, "Code": 0, "Id": 4660}
    assert event["Duration"] == event["Stop"] - event["Start"]


@pytest.mark.parametrize("fields", [["state", "bogus"], ["Zone", "timestamp"]])
def test_unknown_field_is_a_value_error_naming_the_known_ones(fields: list[str]) -> None:
    with pytest.raises(ValueError, match="unknown field .*expected timestamps, state, zone"):
        EventStream(fields=fields)
    with pytest.raises(ValueError, match="unknown field"):
        decode_datagram(CAPTURES[0].read_bytes(), fields=fields)
    with pytest.raises(ValueError, match="unknown field"):
        conntrack_collector.events(fields=fields)


def test_unknown_field_in_a_comma_string_is_a_value_error() -> None:
    with pytest.raises(ValueError, match='unknown field "nope"'):
        EventStream(fields="state,nope")


def run(capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None
        ) -> tuple[int, str, str]:
    code = main(list(argv), {"HOME": "/nonexistent", **(env or {})})
    out, err = capsys.readouterr()
    return code, out, err


def test_fields_default_to_none_and_come_from_flag_env_and_file(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def fields(*argv: str, env: dict[str, str] | None = None) -> object:
        code, out, err = run(capsys, "--print-config", *argv, env=env)
        assert code == 0, err
        return yaml.safe_load(out)["fields"]

    assert fields() == []
    assert fields("--fields", "Status,state,state") == ["status", "state"]
    assert fields(env={"OWP_FIELDS": "zone,mark"}) == ["zone", "mark"]
    path = tmp_path / "c.yml"
    path.write_text("fields: [timestamps, icmp]\n")
    assert fields("--config", str(path)) == ["timestamps", "icmp"]
    assert fields("--config", str(path), "--fields", "labels") == ["labels"]


@pytest.mark.parametrize("argv, env, fragments", [
    (["--fields", "state,bogus"], {}, ["--fields", "bogus", "timestamps, state, zone"]),
    (["--fields", "Timestamp"], {}, ["--fields", "Timestamp"]),
    ([], {"OWP_FIELDS": "zone,colour"}, ["OWP_FIELDS", "colour"]),
])
def test_bad_fields_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                            env: dict[str, str], fragments: list[str]) -> None:
    code, _, err = run(capsys, *argv, env=env)
    assert code == ExitCode.USAGE == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("conntrack-event-collector: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err


def test_bad_fields_in_the_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("fields: [state, flags]\n")
    code, _, err = run(capsys, "--config", str(path))
    assert code == ExitCode.USAGE
    assert str(path) in err and "flags" in err and len(err.strip().splitlines()) == 1


def test_help_names_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    flat = " ".join(out.replace("│", " ").split())
    start = flat.index("--fields")
    for name in FIELDS:
        assert name in flat[start:start + 400], name


def test_docs_name_every_field_and_key() -> None:
    root = Path(__file__).parents[1]
    for doc in (root / "docs" / "cli.md", root / "README.md"):
        text = doc.read_text()
        for word in [*FIELDS, *OPT_IN_KEYS, "OFFLOAD", "HW_OFFLOAD"]:
            assert f"`{word}`" in text, (doc.name, word)
