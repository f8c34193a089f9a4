#!/usr/bin/env python3
"""Record real ctnetlink event datagrams as golden test data for the Rust decoder.

Usage (as root):

    python3 scripts/record_ctnetlink.py [--out rust/testdata] [--netns ctrec]

The script creates a private network namespace, enables conntrack (nft rule),
accounting and timestamps there, subscribes to NFNLGRP_CONNTRACK_NEW/UPDATE/DESTROY
*inside* the namespace, runs `conntrack -E -o extended,id` alongside, makes traffic
of many protocols, flushes the table (`conntrack -F`) and writes:

  <out>/<protocol>_<family>_<type>[_<variant>]_<n>.bin  one raw recv() datagram each
  <out>/manifest.json                                  expected decoded fields, from an
                                                       independent Python parse, cross-checked
                                                       against the `conntrack -E` text line

Only the standard library is used.  The namespace is removed at the end, also on error.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3

NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_DELETE = 2

# enum ctattr_type
CTA_NAMES = {
    1: "CTA_TUPLE_ORIG", 2: "CTA_TUPLE_REPLY", 3: "CTA_STATUS", 4: "CTA_PROTOINFO",
    5: "CTA_HELP", 6: "CTA_NAT_SRC", 7: "CTA_TIMEOUT", 8: "CTA_MARK",
    9: "CTA_COUNTERS_ORIG", 10: "CTA_COUNTERS_REPLY", 11: "CTA_USE", 12: "CTA_ID",
    13: "CTA_NAT_DST", 14: "CTA_TUPLE_MASTER", 15: "CTA_SEQ_ADJ_ORIG",
    16: "CTA_SEQ_ADJ_REPLY", 17: "CTA_SECMARK", 18: "CTA_ZONE", 19: "CTA_SECCTX",
    20: "CTA_TIMESTAMP", 21: "CTA_MARK_MASK", 22: "CTA_LABELS", 23: "CTA_LABELS_MASK",
    24: "CTA_SYNPROXY", 25: "CTA_FILTER", 26: "CTA_STATUS_MASK", 27: "CTA_TIMESTAMP_EVENT",
}
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_TIMEOUT, CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 7, 8, 9, 10
CTA_USE, CTA_ID, CTA_ZONE, CTA_TIMESTAMP, CTA_LABELS = 11, 12, 18, 20, 22
CTA_TIMESTAMP_EVENT = 27  # Linux >= 6.14, only with nf_conntrack_timestamp=1
# attributes that the netlink-packet-netfilter crate is expected to know (or we decode)
KNOWN_TOP = {1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 18, 20}

CTA_TUPLE_IP, CTA_TUPLE_PROTO, CTA_TUPLE_ZONE = 1, 2, 3
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE = 4, 5, 6
CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE = 7, 8, 9
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
CTA_COUNTERS32_PACKETS, CTA_COUNTERS32_BYTES = 3, 4
CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP = 1, 2
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1

IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 58: "icmpv6",
               132: "sctp", 136: "udplite"}
PORTED = {6, 17, 33, 132, 136}
FAMILY_NAMES = {2: "ipv4", 10: "ipv6"}
TYPE_NAMES = {"NEW": "new", "UPDATE": "update", "DESTROY": "destroy"}

# ports used for the traffic; also used to name the variants
P_TCP = 8001
P_UDP = 8002
P_UDPLITE = 8003
P_SCTP = 8004
P_DNAT_FRONT, P_DNAT_BACK = 9999, 8888
P_SNAT_UDP, P_SNAT_TCP = 7777, 7778
P_NULLNAT = 7779
P_MARKLABEL = 5555
P_ZONE = 5556
P_NOACCT = 5557
UNKNOWN_PROTO = 253

# how many datagrams to keep per (protocol, family, type, variant)
KEEP = {"update": 3}
KEEP_DEFAULT = 2


# --------------------------------------------------------------------------- parsing

def parse_attrs(buf: bytes) -> list[tuple[int, bool, bytes]]:
    """Split a run of netlink attributes into (type, nested, payload)."""
    out = []
    off = 0
    while off + 4 <= len(buf):
        nla_len, nla_type = struct.unpack_from("=HH", buf, off)
        if nla_len < 4 or off + nla_len > len(buf):
            raise ValueError(f"bad nla at {off}: len={nla_len}")
        out.append((nla_type & NLA_TYPE_MASK, bool(nla_type & NLA_F_NESTED),
                    buf[off + 4:off + nla_len]))
        off += (nla_len + 3) & ~3
    return out


def amap(buf: bytes) -> dict[int, bytes]:
    return {t: p for t, _n, p in parse_attrs(buf)}


def parse_tuple(buf: bytes, l4proto_hint: int | None = None) -> dict:
    t = amap(buf)
    ip = amap(t.get(CTA_TUPLE_IP, b""))
    if CTA_IP_V4_SRC in ip:
        src = str(ipaddress.IPv4Address(ip[CTA_IP_V4_SRC]))
        dst = str(ipaddress.IPv4Address(ip[CTA_IP_V4_DST]))
    else:
        src = str(ipaddress.IPv6Address(ip[CTA_IP_V6_SRC]))
        dst = str(ipaddress.IPv6Address(ip[CTA_IP_V6_DST]))
    proto = amap(t.get(CTA_TUPLE_PROTO, b""))
    num = proto[CTA_PROTO_NUM][0]
    res = {"src": src, "dst": dst, "l4proto": num, "sport": 0, "dport": 0, "icmp": None,
           "raw_sport": None, "raw_dport": None}
    if CTA_PROTO_SRC_PORT in proto:
        res["raw_sport"] = struct.unpack(">H", proto[CTA_PROTO_SRC_PORT])[0]
    if CTA_PROTO_DST_PORT in proto:
        res["raw_dport"] = struct.unpack(">H", proto[CTA_PROTO_DST_PORT])[0]
    if num in PORTED:
        res["sport"] = res["raw_sport"] or 0
        res["dport"] = res["raw_dport"] or 0
    if num == 1 and CTA_PROTO_ICMP_TYPE in proto:
        res["icmp"] = {"type": proto[CTA_PROTO_ICMP_TYPE][0],
                       "code": proto[CTA_PROTO_ICMP_CODE][0],
                       "id": struct.unpack(">H", proto[CTA_PROTO_ICMP_ID])[0]}
    if num == 58 and CTA_PROTO_ICMPV6_TYPE in proto:
        res["icmp"] = {"type": proto[CTA_PROTO_ICMPV6_TYPE][0],
                       "code": proto[CTA_PROTO_ICMPV6_CODE][0],
                       "id": struct.unpack(">H", proto[CTA_PROTO_ICMPV6_ID])[0]}
    res["zone"] = (struct.unpack(">H", t[CTA_TUPLE_ZONE])[0] if CTA_TUPLE_ZONE in t else None)
    return res


def parse_counters(buf: bytes | None) -> tuple[int, int]:
    if buf is None:
        return 0, 0
    c = amap(buf)
    if CTA_COUNTERS_PACKETS in c:
        pk = struct.unpack(">Q", c[CTA_COUNTERS_PACKETS])[0]
    elif CTA_COUNTERS32_PACKETS in c:
        pk = struct.unpack(">I", c[CTA_COUNTERS32_PACKETS])[0]
    else:
        pk = 0
    if CTA_COUNTERS_BYTES in c:
        by = struct.unpack(">Q", c[CTA_COUNTERS_BYTES])[0]
    elif CTA_COUNTERS32_BYTES in c:
        by = struct.unpack(">I", c[CTA_COUNTERS32_BYTES])[0]
    else:
        by = 0
    return pk, by


def describe(buf: bytes) -> list:
    """Attribute tree as [name/number, nested-children-or-length] for the manifest."""
    out = []
    for t, nested, payload in parse_attrs(buf):
        if nested:
            out.append([t, describe(payload)])
        else:
            out.append([t, len(payload)])
    return out


def parse_datagram(data: bytes) -> list[dict]:
    """Parse every nlmsghdr-framed ctnetlink message in one datagram."""
    msgs = []
    off = 0
    while off + 16 <= len(data):
        nl_len, nl_type, nl_flags, seq, pid = struct.unpack_from("=IHHII", data, off)
        if nl_len < 16 or off + nl_len > len(data):
            raise ValueError(f"bad nlmsghdr at {off}: len={nl_len}")
        body = data[off + 16:off + nl_len]
        off += (nl_len + 3) & ~3
        subsys, msg = nl_type >> 8, nl_type & 0xFF
        if subsys != NFNL_SUBSYS_CTNETLINK:
            msgs.append({"skip": f"nlmsg_type {nl_type:#x}"})
            continue
        family, version = body[0], body[1]
        res_id = struct.unpack(">H", body[2:4])[0]
        attrs_raw = body[4:]
        attrs = parse_attrs(attrs_raw)
        a = {t: p for t, _n, p in attrs}
        if msg == IPCTNL_MSG_CT_DELETE:
            etype = "DESTROY"
        elif msg == IPCTNL_MSG_CT_NEW:
            etype = "NEW" if nl_flags & (NLM_F_CREATE | NLM_F_EXCL) else "UPDATE"
        else:
            msgs.append({"skip": f"ctnetlink msg {msg}"})
            continue
        orig = parse_tuple(a[CTA_TUPLE_ORIG])
        reply = parse_tuple(a[CTA_TUPLE_REPLY])
        status = struct.unpack(">I", a[CTA_STATUS])[0] if CTA_STATUS in a else 0
        op, ob = parse_counters(a.get(CTA_COUNTERS_ORIG))
        rp, rb = parse_counters(a.get(CTA_COUNTERS_REPLY))
        tcp_state = None
        if CTA_PROTOINFO in a:
            pi = amap(a[CTA_PROTOINFO])
            if orig["l4proto"] == 6 and CTA_PROTOINFO_TCP in pi:
                tcp = amap(pi[CTA_PROTOINFO_TCP])
                if CTA_PROTOINFO_TCP_STATE in tcp:
                    tcp_state = tcp[CTA_PROTOINFO_TCP_STATE][0]
        ts_start = ts_stop = None
        if CTA_TIMESTAMP in a:
            ts = amap(a[CTA_TIMESTAMP])
            if CTA_TIMESTAMP_START in ts:
                ts_start = struct.unpack(">Q", ts[CTA_TIMESTAMP_START])[0]
            if CTA_TIMESTAMP_STOP in ts:
                ts_stop = struct.unpack(">Q", ts[CTA_TIMESTAMP_STOP])[0]
        msgs.append({
            "type": etype,
            "nlmsg_type": nl_type,
            "nlmsg_flags": nl_flags,
            "nlmsg_seq": seq,
            "nlmsg_pid": pid,
            "nfgen_family": family,
            "nfgen_version": version,
            "nfgen_res_id": res_id,
            "id": struct.unpack(">I", a[CTA_ID])[0] if CTA_ID in a else None,
            "l3proto": family,
            "l4proto": orig["l4proto"],
            "orig": {"src": orig["src"], "dst": orig["dst"], "sport": orig["sport"],
                     "dport": orig["dport"], "packets": op, "bytes": ob},
            "reply": {"src": reply["src"], "dst": reply["dst"], "sport": reply["sport"],
                      "dport": reply["dport"], "packets": rp, "bytes": rb},
            "status": status,
            "assured": bool(status & IPS_ASSURED),
            "unreplied": not status & IPS_SEEN_REPLY,
            "zone": struct.unpack(">H", a[CTA_ZONE])[0] if CTA_ZONE in a else None,
            "mark": struct.unpack(">I", a[CTA_MARK])[0] if CTA_MARK in a else None,
            "icmp": orig["icmp"],
            "tcp_state": tcp_state,
            "timestamp_start_ns": ts_start,
            "timestamp_stop_ns": ts_stop,
            "timestamp_event_ns": (struct.unpack(">Q", a[CTA_TIMESTAMP_EVENT])[0]
                                   if CTA_TIMESTAMP_EVENT in a else None),
            "timeout": struct.unpack(">I", a[CTA_TIMEOUT])[0] if CTA_TIMEOUT in a else None,
            "use": struct.unpack(">I", a[CTA_USE])[0] if CTA_USE in a else None,
            "labels_hex": a[CTA_LABELS].hex() if CTA_LABELS in a else None,
            "raw_gre_ports": ([orig["raw_sport"], orig["raw_dport"]]
                              if orig["l4proto"] == 47 else None),
            "attrs": [CTA_NAMES.get(t, str(t)) for t, _n, _p in attrs],
            "attr_tree": describe(attrs_raw),
            "unknown_attrs": [CTA_NAMES.get(t, str(t)) for t, _n, _p in attrs
                              if t not in KNOWN_TOP],
        })
    return msgs


# --------------------------------------------------------------------------- conntrack -E

LINE_RE = re.compile(r"^\s*\[(NEW|UPDATE|DESTROY)\]\s+(\w+)\s+(\d+)\s+(\w+)\s+(\d+)\s+(.*)$")


def parse_line(line: str) -> dict | None:
    m = LINE_RE.match(line)
    if not m:
        return None
    etype, l3name, l3num, l4name, l4num, rest = m.groups()
    kv: dict[str, list[str]] = {}
    for tok in rest.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            kv.setdefault(k, []).append(v)
    return {"type": etype, "l3name": l3name, "l3": int(l3num), "l4name": l4name,
            "l4": int(l4num), "kv": kv, "flags": set(re.findall(r"\[(\w+)\]", rest)),
            "line": line.rstrip("\n")}


def cross_check(ev: dict, ln: dict) -> list[str]:
    errs = []

    def chk(what, mine, theirs):
        if str(mine) != str(theirs):
            errs.append(f"{what}: mine={mine} conntrack={theirs}")

    kv = ln["kv"]
    chk("type", ev["type"], ln["type"])
    chk("l3proto", ev["l3proto"], ln["l3"])
    chk("l4proto", ev["l4proto"], ln["l4"])
    for i, d in enumerate(("orig", "reply")):
        chk(f"{d}.src", ev[d]["src"], str(ipaddress.ip_address(kv["src"][i])))
        chk(f"{d}.dst", ev[d]["dst"], str(ipaddress.ip_address(kv["dst"][i])))
        if ev["l4proto"] in PORTED:
            chk(f"{d}.sport", ev[d]["sport"], kv["sport"][i])
            chk(f"{d}.dport", ev[d]["dport"], kv["dport"][i])
        if "packets" in kv:
            chk(f"{d}.packets", ev[d]["packets"], kv["packets"][i])
            chk(f"{d}.bytes", ev[d]["bytes"], kv["bytes"][i])
        elif ev[d]["packets"] or ev[d]["bytes"]:
            errs.append(f"{d}: counters in message but not in conntrack line")
    chk("assured", ev["assured"], "ASSURED" in ln["flags"])
    chk("unreplied", ev["unreplied"], "UNREPLIED" in ln["flags"])
    if ev["mark"]:
        chk("mark", ev["mark"], kv.get("mark", ["0"])[0])
    if ev["zone"] is not None:
        chk("zone", ev["zone"], kv.get("zone", ["?"])[0])
    if ev["icmp"] is not None:
        chk("icmp.type", ev["icmp"]["type"], kv.get("type", ["?"])[0])
        chk("icmp.code", ev["icmp"]["code"], kv.get("code", ["?"])[0])
        chk("icmp.id", ev["icmp"]["id"], kv.get("id", ["?"])[0])
    return errs


# --------------------------------------------------------------------------- traffic

def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True)


def inet_cksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _crc32c_table() -> list[int]:
    tbl = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        tbl.append(c)
    return tbl


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def tcp_flow(fam: int, host: str, port: int, connect_port: int | None = None,
             payload: bytes = b"hello ctnetlink\n") -> None:
    srv = socket.socket(fam, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1)
    cli = socket.create_connection((host, connect_port or port), timeout=2)
    conn, _ = srv.accept()
    cli.sendall(payload)
    conn.recv(1024)
    conn.sendall(b"reply " + payload)
    cli.recv(1024)
    time.sleep(0.05)
    cli.close()
    time.sleep(0.05)
    conn.close()
    srv.close()


def dgram_flow(fam: int, host: str, port: int, proto: int = 0,
               payload: bytes = b"ping over udp") -> None:
    srv = socket.socket(fam, socket.SOCK_DGRAM, proto)
    srv.bind((host, port))
    cli = socket.socket(fam, socket.SOCK_DGRAM, proto)
    cli.settimeout(2)
    srv.settimeout(2)
    cli.sendto(payload, (host, port))
    data, addr = srv.recvfrom(2048)
    srv.sendto(b"pong " + data, addr)
    cli.recvfrom(2048)
    # a second round trip makes the flow ASSURED for udp
    cli.sendto(payload, (host, port))
    data, addr = srv.recvfrom(2048)
    srv.sendto(b"pong " + data, addr)
    cli.recvfrom(2048)
    cli.close()
    srv.close()


def icmp_echo(fam: int, host: str, ident: int, count: int = 2) -> None:
    if fam == socket.AF_INET:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        etype = 8
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        etype = 128
    s.settimeout(1)
    for seq in range(1, count + 1):
        body = struct.pack("!BBHHH", etype, 0, 0, ident, seq) + b"ctnetlink-recorder"
        if fam == socket.AF_INET:
            body = body[:2] + struct.pack("!H", inet_cksum(body)) + body[4:]
        # for ICMPv6 raw sockets the kernel fills in the checksum
        s.sendto(body, (host, 0))
        time.sleep(0.05)
    s.close()


def raw_proto(fam: int, host: str, proto: int, payload: bytes) -> None:
    s = socket.socket(fam, socket.SOCK_RAW, proto)
    s.sendto(payload, (host, 0))
    s.close()


def sctp_packet(sport: int, dport: int, vtag: int, chunks: bytes) -> bytes:
    hdr = struct.pack("!HHII", sport, dport, vtag, 0)
    pkt = hdr + chunks
    c = crc32c(pkt)
    return hdr[:8] + struct.pack("<I", c) + chunks


def sctp_chunk(ctype: int, flags: int, value: bytes) -> bytes:
    ch = struct.pack("!BBH", ctype, flags, 4 + len(value)) + value
    return ch + b"\0" * (-len(ch) % 4)


def sctp_flow(fam: int, host: str, sport: int, dport: int) -> None:
    """Handshake INIT / INIT_ACK / COOKIE_ECHO / COOKIE_ACK over raw sockets (no SCTP stack
    is needed: conntrack only inspects the packets)."""
    s = socket.socket(fam, socket.SOCK_RAW, 132)
    tag_c, tag_s = 0x11223344, 0x55667788
    cookie = b"COOKIE-ctnetlink"
    init = sctp_chunk(1, 0, struct.pack("!IIHHI", tag_c, 65535, 1, 1, 1000))
    cookie_param = struct.pack("!HH", 7, 4 + len(cookie)) + cookie
    init_ack = sctp_chunk(2, 0, struct.pack("!IIHHI", tag_s, 65535, 1, 1, 2000) + cookie_param)
    echo = sctp_chunk(10, 0, cookie)
    ack = sctp_chunk(11, 0, b"")
    for pkt in (sctp_packet(sport, dport, 0, init),
                sctp_packet(dport, sport, tag_c, init_ack),
                sctp_packet(sport, dport, tag_s, echo),
                sctp_packet(dport, sport, tag_c, ack)):
        s.sendto(pkt, (host, 0))
        time.sleep(0.05)
    s.close()


# --------------------------------------------------------------------------- inner (in netns)

NFT_SETUP = r"""
add table inet t
add chain inet t c { type filter hook output priority 0; }
add rule inet t c ct state new counter
add rule inet t c udp dport %(ml)d ct mark set 0x2a
add rule inet t c udp dport %(ml)d ct label set 1
add chain inet t raw { type filter hook output priority -300; }
add rule inet t raw udp dport %(z)d ct zone set 7
add rule inet t raw udp sport %(z)d ct zone set 7
""" % {"ml": P_MARKLABEL, "z": P_ZONE}

NFT_NAT = r"""
add table ip nat
add chain ip nat out { type nat hook output priority -100; }
add chain ip nat post { type nat hook postrouting priority 100; }
add rule ip nat out tcp dport %(df)d dnat to 127.0.0.1:%(db)d
add rule ip nat post ip daddr 127.0.0.1 udp dport %(su)d snat to 127.0.0.2
add rule ip nat post ip daddr 127.0.0.1 tcp dport %(st)d snat to 127.0.0.3
""" % {"df": P_DNAT_FRONT, "db": P_DNAT_BACK, "su": P_SNAT_UDP, "st": P_SNAT_TCP}


def nft(script: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)


def variant_of(ev: dict) -> str:
    ports = {ev["orig"]["dport"], ev["orig"]["sport"], ev["reply"]["sport"]}
    if ev["status"] & IPS_SRC_NAT:
        return "snat"
    if ev["status"] & IPS_DST_NAT:
        return "dnat"
    if ev["labels_hex"] or P_MARKLABEL in ports:
        return "marklabel"
    if ev["zone"] is not None or P_ZONE in ports:
        return "zone"
    if P_NULLNAT in ports:
        return "nullnat"
    if P_NOACCT in ports:
        return "noacct"
    return ""


def inner(out: Path, settle: float) -> int:
    sh("ip link set lo up")
    nft(NFT_SETUP)

    sk = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sk.bind((0, 0))
    for g in (NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY):
        sk.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g)
    sk.settimeout(0.2)
    datagrams: list[bytes] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                datagrams.append(sk.recv(1 << 16))
            except socket.timeout:
                continue
            except OSError as e:  # ENOBUFS would mean lost events: report it
                print(f"recv error: {e}", file=sys.stderr)

    th = threading.Thread(target=reader, daemon=True)
    th.start()

    ctlog = out / ".conntrack-E.txt.tmp"
    ctlog_f = open(ctlog, "w")  # noqa: SIM115 (closed after the capture)
    ct = subprocess.Popen(["stdbuf", "-oL", "conntrack", "-E", "-o", "extended,id"],
                          stdout=ctlog_f, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    notes: list[str] = []
    try:
        # phase 0: one flow made with accounting and timestamps off (the extensions are
        # attached at flow creation): its DESTROY carries no counters and no CTA_TIMESTAMP
        for key in ("nf_conntrack_acct", "nf_conntrack_timestamp"):
            sh(f"sysctl -q -w net.netfilter.{key}=0")
        dgram_flow(socket.AF_INET, "127.0.0.1", P_NOACCT)
        for key in ("nf_conntrack_acct", "nf_conntrack_timestamp"):
            sh(f"sysctl -q -w net.netfilter.{key}=1")
        # phase 1: no NAT table, so no NAT bits at all
        tcp_flow(socket.AF_INET, "127.0.0.1", P_TCP)
        tcp_flow(socket.AF_INET6, "::1", P_TCP)
        dgram_flow(socket.AF_INET, "127.0.0.1", P_UDP)
        dgram_flow(socket.AF_INET6, "::1", P_UDP)
        for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            try:
                dgram_flow(fam, host, P_UDPLITE, proto=136)
            except OSError as e:
                notes.append(f"udplite {host}: {e}")
        icmp_echo(socket.AF_INET, "127.0.0.1", 0x1234)
        icmp_echo(socket.AF_INET6, "::1", 0x1235)
        for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            sctp_flow(fam, host, 40000 + P_SCTP, P_SCTP)
            raw_proto(fam, host, 47, b"\x00\x00\x08\x00" + b"gre payload")
            raw_proto(fam, host, UNKNOWN_PROTO, b"unknown protocol payload")
        # DCCP: conntrack's DCCP tracker (and DCCP itself) is gone from Linux >= 6.16 and
        # there is no DCCP socket here, so no dccp flow is recorded.
        notes.append("dccp: not recorded (no DCCP socket/conntrack tracker on this kernel)")
        dgram_flow(socket.AF_INET, "127.0.0.1", P_MARKLABEL)
        dgram_flow(socket.AF_INET, "127.0.0.1", P_ZONE)
        # phase 2: NAT
        nft(NFT_NAT)
        tcp_flow(socket.AF_INET, "127.0.0.1", P_DNAT_BACK, connect_port=P_DNAT_FRONT)
        dgram_flow(socket.AF_INET, "127.0.0.1", P_SNAT_UDP)
        tcp_flow(socket.AF_INET, "127.0.0.1", P_SNAT_TCP)
        dgram_flow(socket.AF_INET, "127.0.0.1", P_NULLNAT)
        time.sleep(settle)
        sh("conntrack -F")
        time.sleep(settle)
    finally:
        stop.set()
        th.join()
        ct.send_signal(signal.SIGINT)
        try:
            _, err = ct.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            ct.kill()
            _, err = ct.communicate()
        ctlog_f.close()
        sk.close()
    lines = [parse_line(x) for x in ctlog.read_text().splitlines()]
    lines = [x for x in lines if x]
    ctlog.unlink()
    print(f"{len(datagrams)} datagrams, {len(lines)} conntrack -E lines; {err.strip()}",
          file=sys.stderr)

    # index conntrack lines by (id, type) in order
    by_key: dict[tuple[int, str], list[dict]] = {}
    for ln in lines:
        if "id" in ln["kv"]:
            by_key.setdefault((int(ln["kv"]["id"][-1]), ln["type"]), []).append(ln)
    used: dict[tuple[int, str], int] = {}

    for old in out.glob("*.bin"):
        old.unlink()
    manifest = []
    counts: dict[tuple, int] = {}
    problems = []
    unknown_attr_files = []
    for dg in datagrams:
        msgs = parse_datagram(dg)
        evs = [m for m in msgs if "skip" not in m]
        if len(msgs) != 1 or len(evs) != 1:
            problems.append(f"datagram with {len(msgs)} messages: {msgs}")
            continue
        ev = evs[0]
        key = (ev["id"], ev["type"])
        n = used.get(key, 0)
        used[key] = n + 1
        cand = by_key.get(key, [])
        ln = cand[n] if n < len(cand) else None
        errs = cross_check(ev, ln) if ln else ["no matching conntrack -E line"]
        proto = PROTO_NAMES.get(ev["l4proto"], "unknown")
        fam = FAMILY_NAMES[ev["l3proto"]]
        typ = TYPE_NAMES[ev["type"]]
        var = variant_of(ev)
        ck = (proto, fam, typ, var)
        idx = counts.get(ck, 0)
        if idx >= KEEP.get(typ, KEEP_DEFAULT):
            if errs:
                problems.append(f"{ck}: {errs}")
            continue
        counts[ck] = idx + 1
        name = "_".join(x for x in (proto, fam, typ, var, str(idx)) if x) + ".bin"
        (out / name).write_bytes(dg)
        if errs:
            problems.append(f"{name}: {errs}")
        if ev["unknown_attrs"]:
            unknown_attr_files.append(name)
        entry = {"file": name, "variant": var or None}
        entry.update(ev)
        entry["cross_check_errors"] = errs
        entry["conntrack_line"] = ln["line"].strip() if ln else None
        manifest.append(entry)
    manifest.sort(key=lambda e: e["file"])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(manifest)} files to {out}", file=sys.stderr)
    print("kept:", " ".join(sorted(e["file"] for e in manifest)), file=sys.stderr)
    print("files with attributes outside the known set:", unknown_attr_files, file=sys.stderr)
    for n_ in notes:
        print("note:", n_, file=sys.stderr)
    for p in problems:
        print("PROBLEM:", p, file=sys.stderr)
    return 1 if problems else 0


# --------------------------------------------------------------------------- outer

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent
                                         / "rust" / "testdata"))
    ap.add_argument("--netns", default="ctrec")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds to wait for events after the traffic and after the flush")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out).resolve()
    if args.inner:
        return inner(out, args.settle)
    if os.geteuid() != 0:
        print("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for netns)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ip", "netns", "del", args.netns], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", args.netns], check=True)
    try:
        return subprocess.run(["ip", "netns", "exec", args.netns, sys.executable,
                               os.path.abspath(__file__), "--inner", "--out", str(out),
                               "--settle", str(args.settle)], check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", args.netns], check=False)


if __name__ == "__main__":
    sys.exit(main())
