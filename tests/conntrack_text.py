"""Parses `conntrack -E -o extended,id` lines into the fields our events carry, so the
differential test can compare them field for field. `-o timestamp` (a leading
`[seconds.micros]`) and `-o ktimestamp` (`[start=...] [stop=...]`) are understood too."""

from __future__ import annotations

import calendar
import re
import time
from typing import Any

RECEIVED = re.compile(r"^\[(\d+\.\d+)\]\s+")
KERNEL_TIME = re.compile(r"\[(start|stop)=([^\]]+)\]\s*")
FLAGS = ("[UNREPLIED]", "[ASSURED]", "[OFFLOAD]", "[HW_OFFLOAD]")

PORT_KEYS = {"sport": "Sport", "dport": "Dport"}


def parse_line(line: str) -> dict[str, Any] | None:
    """`[DESTROY] ipv4 2 tcp 6 118 TIME_WAIT src=... [ASSURED] delta-time=2 id=N ...`"""
    tokens = KERNEL_TIME.sub("", RECEIVED.sub("", line)).split()
    if not tokens or not tokens[0].startswith("[") or len(tokens) < 5:
        return None
    event_type = tokens[0].strip("[]")
    l3name, l3num, l4name, l4num = tokens[1], int(tokens[2]), tokens[3], int(tokens[4])
    body = tokens[5:]
    if "[USERSPACE]" in body:
        body = body[: body.index("[USERSPACE]")]
    # The last id= is the conntrack id; ICMP's own id= sits inside the tuples.
    id_positions = [i for i, t in enumerate(body) if t.startswith("id=")]
    conntrack_id = int(body[id_positions[-1]].split("=", 1)[1])
    del body[id_positions[-1]]

    directions: list[dict[str, Any]] = []
    for token in body:
        if "=" not in token:
            continue
        key, value = token.split("=", 1)
        if key == "src":
            directions.append({"Src": value, "Dst": "", "Sport": 0, "Dport": 0,
                               "Packets": 0, "Bytes": 0})
        elif directions and key == "dst":
            directions[-1]["Dst"] = value
        elif directions and key in PORT_KEYS:
            directions[-1][PORT_KEYS[key]] = int(value)
        elif directions and key in ("packets", "bytes"):
            directions[-1][key.capitalize()] = int(value)
    original, reply = directions[0], directions[1]
    return {
        "Type": event_type,
        "Id": conntrack_id,
        "Original": as_event_direction(original, l3name, l3num, l4name, l4num),
        "Reply": as_event_direction(reply, l3name, l3num, l4name, l4num),
        "UNREPLIED": "[UNREPLIED]" in body,
        "ASSURED": "[ASSURED]" in body,
    }


def as_event_direction(
    fields: dict[str, Any], l3name: str, l3num: int, l4name: str, l4num: int
) -> dict[str, Any]:
    return {
        "Layer3": {"Protonum": l3num, "Protoname": l3name, "Src": fields["Src"],
                   "Dst": fields["Dst"]},
        "Layer4": {"Protonum": l4num, "Protoname": l4name, "Sport": fields["Sport"],
                   "Dport": fields["Dport"]},
        "Counter": {"Packets": fields["Packets"], "Bytes": fields["Bytes"]},
    }


def parse_extras(line: str) -> dict[str, Any]:
    """What the line says beyond the reference's fields, for the opt-in ones: the TCP state,
    zone and mark (absent: None), the original tuple's ICMP identity, the bracketed flags, and
    with `-o ktimestamp` the kernel's start and stop in whole seconds (printed in the local
    time zone: run the tool with TZ=UTC) and `delta-time`."""
    times = {name: calendar.timegm(time.strptime(text.strip(), "%a %b %d %H:%M:%S %Y"))
             for name, text in KERNEL_TIME.findall(line)}
    tokens = KERNEL_TIME.sub("", RECEIVED.sub("", line)).split()
    values: dict[str, str] = {}
    for token in tokens[5:]:
        key, _, value = token.partition("=")
        if value:
            values.setdefault(key, value)  # the first: the original tuple's type, code, id
    # `[NEW] ipv4 2 tcp 6 120 SYN_SENT src=...`: a state, when sent, follows the timeout.
    after_timeout = tokens[6] if len(tokens) > 6 else ""
    state = after_timeout if after_timeout.isupper() and "=" not in after_timeout else None
    icmp = ({"Type": int(values["type"]), "Code": int(values["code"]), "Id": int(values["id"])}
            if "type" in values else None)

    def number(key: str) -> int | None:
        return int(values[key]) if key in values else None

    return {
        "State": state, "Zone": number("zone"), "Mark": number("mark"), "Icmp": icmp,
        "Flags": {flag.strip("[]") for flag in FLAGS if flag in tokens},
        "Start": times.get("start"), "Stop": times.get("stop"), "Delta": number("delta-time"),
    }
