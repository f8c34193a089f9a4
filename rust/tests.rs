//! Unit tests of the pure core on real kernel captures.
//!
//! `rust/testdata/*.bin` are raw ctnetlink datagrams recorded from this machine's kernel by
//! `python3 tests/record_ctnetlink.py` (as root; see `rust/testdata/README.md`), and
//! `rust/testdata/manifest.json` holds the fields an independent parser decoded from each,
//! cross-checked against `conntrack -E -o extended,id`. No socket, no root, no Python: these
//! run under qemu-user for the cross targets too. The netlink header and attribute headers are
//! native-endian; the captures are little-endian (x86_64), as are armv7 and mipsel.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::decode::{decode, split_messages, Skip};
use crate::event::{Direction, Event, EventType, Icmp};
use crate::json::to_json;
use crate::queue::{Pop, Queue};

const TIMESTAMP_MS: u64 = 1_795_711_200_123;

// Attribute numbers used to synthesise messages (`enum ctattr_type` and friends).
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const ATTRS_AT: usize = NLMSG_HDRLEN + NFGENMSG_LEN;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_TIMESTAMP: u16 = 20;
const CTA_TIMESTAMP_EVENT: u16 = 27;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_COUNTERS_PAD: u16 = 5;
const CTA_TIMESTAMP_PAD: u16 = 3;

// ---------------------------------------------------------------------------------------
// Fixtures

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("rust")
        .join("testdata")
}

fn manifest() -> Vec<Value> {
    let path = testdata().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let value: Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let entries = value.as_array().expect("manifest.json is a list").clone();
    assert!(!entries.is_empty(), "manifest.json lists no capture");
    entries
}

fn entry(file: &str) -> Value {
    manifest()
        .into_iter()
        .find(|e| e["file"] == file)
        .unwrap_or_else(|| panic!("{file} is not in manifest.json"))
}

fn capture(file: &str) -> Vec<u8> {
    let path = testdata().join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn all_captures() -> Vec<(String, Vec<u8>)> {
    manifest()
        .iter()
        .map(|e| {
            let file = e["file"].as_str().expect("file is a string").to_string();
            let bytes = capture(&file);
            (file, bytes)
        })
        .collect()
}

/// The one event of a capture's datagram.
fn decode_datagram(datagram: &[u8]) -> Result<Event, Skip> {
    let mut messages = split_messages(datagram);
    let message = messages.next().expect("a datagram holds a message")?;
    assert!(
        messages.next().is_none(),
        "a capture holds exactly one message"
    );
    decode(message, TIMESTAMP_MS)
}

fn decode_file(file: &str) -> Event {
    decode_datagram(&capture(file)).unwrap_or_else(|e| panic!("{file}: {e:?}"))
}

/// Everything decoding a datagram can do, JSON included, must not panic.
fn exercise(datagram: &[u8]) {
    for message in split_messages(datagram).flatten() {
        if let Ok(event) = decode(message, TIMESTAMP_MS) {
            let json = to_json(&event);
            let parsed: Result<Value, _> = serde_json::from_slice(&json);
            assert!(
                parsed.is_ok(),
                "to_json wrote invalid JSON: {}",
                String::from_utf8_lossy(&json)
            );
        }
    }
    // Straight to the decoder too, so a length the splitter would refuse reaches it.
    if let Ok(event) = decode(datagram, TIMESTAMP_MS) {
        let _ = to_json(&event);
    }
}

// ---------------------------------------------------------------------------------------
// Comparison with the manifest

fn opt_u64(value: &Value) -> Option<u64> {
    value.as_u64()
}

/// Every mismatch between a decoded event and its manifest entry, as text.
fn mismatches(event: &Event, expected: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let mut check = |what: &str, got: String, want: String| {
        if got != want {
            found.push(format!("{what}: decoded {got}, manifest says {want}"));
        }
    };
    check(
        "type",
        event.event_type.name().to_string(),
        expected["type"].as_str().unwrap_or("?").to_string(),
    );
    check("id", event.id.to_string(), expected["id"].to_string());
    check(
        "l3proto",
        event.l3proto.to_string(),
        expected["l3proto"].to_string(),
    );
    check(
        "status",
        event.status.to_string(),
        expected["status"].to_string(),
    );
    check(
        "assured",
        event.assured().to_string(),
        expected["assured"].to_string(),
    );
    check(
        "unreplied",
        event.unreplied().to_string(),
        expected["unreplied"].to_string(),
    );
    check(
        "zone",
        format!("{:?}", event.zone.map(u64::from)),
        format!("{:?}", opt_u64(&expected["zone"])),
    );
    check(
        "mark",
        format!("{:?}", event.mark.map(u64::from)),
        format!("{:?}", opt_u64(&expected["mark"])),
    );
    check(
        "tcp_state",
        format!("{:?}", event.tcp_state.map(u64::from)),
        format!("{:?}", opt_u64(&expected["tcp_state"])),
    );
    check(
        "timestamp start",
        format!("{:?}", event.start_ns),
        format!("{:?}", opt_u64(&expected["timestamp_start_ns"])),
    );
    check(
        "timestamp stop",
        format!("{:?}", event.stop_ns),
        format!("{:?}", opt_u64(&expected["timestamp_stop_ns"])),
    );
    for (name, direction, want) in [
        ("orig", &event.original, &expected["orig"]),
        ("reply", &event.reply, &expected["reply"]),
    ] {
        let address = |a: Option<IpAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        check(
            &format!("{name}.src"),
            address(direction.src),
            want["src"].as_str().unwrap_or("?").to_string(),
        );
        check(
            &format!("{name}.dst"),
            address(direction.dst),
            want["dst"].as_str().unwrap_or("?").to_string(),
        );
        for (field, got) in [
            ("sport", u64::from(direction.sport)),
            ("dport", u64::from(direction.dport)),
            ("packets", direction.packets),
            ("bytes", direction.bytes),
        ] {
            check(
                &format!("{name}.{field}"),
                got.to_string(),
                want[field].to_string(),
            );
        }
        check(
            &format!("{name}.l4proto"),
            direction.l4proto.to_string(),
            expected["l4proto"].to_string(),
        );
    }
    // ICMP: the manifest gives the original tuple's identity; the reply tuple carries the
    // same id and code, and the answering type (echo request 8 -> reply 0, 128 -> 129).
    let icmp = &expected["icmp"];
    if icmp.is_null() {
        check(
            "orig.icmp",
            format!("{:?}", event.original.icmp),
            "None".into(),
        );
        check(
            "reply.icmp",
            format!("{:?}", event.reply.icmp),
            "None".into(),
        );
    } else {
        let field = |k: &str| icmp[k].as_u64().unwrap_or(u64::MAX);
        let orig = Icmp {
            icmp_type: field("type") as u8,
            code: field("code") as u8,
            id: field("id") as u16,
        };
        let reply_type = match orig.icmp_type {
            8 => 0,
            128 => 129,
            other => other,
        };
        let reply = Icmp {
            icmp_type: reply_type,
            ..orig
        };
        check(
            "orig.icmp",
            format!("{:?}", event.original.icmp),
            format!("{:?}", Some(orig)),
        );
        check(
            "reply.icmp",
            format!("{:?}", event.reply.icmp),
            format!("{:?}", Some(reply)),
        );
    }
    check(
        "timestamp_ms",
        event.timestamp_ms.to_string(),
        TIMESTAMP_MS.to_string(),
    );
    found
}

// ---------------------------------------------------------------------------------------
// 1. Golden tests

#[test]
fn golden_every_capture_matches_its_manifest_entry() {
    let mut report = Vec::new();
    let entries = manifest();
    for expected in &entries {
        let file = expected["file"].as_str().expect("file is a string");
        match decode_datagram(&capture(file)) {
            Ok(event) => {
                for mismatch in mismatches(&event, expected) {
                    report.push(format!("{file}: {mismatch}"));
                }
            }
            Err(skip) => report.push(format!("{file}: not decoded: {skip:?}")),
        }
    }
    assert!(
        report.is_empty(),
        "{} mismatches over {} captures:\n{}",
        report.len(),
        entries.len(),
        report.join("\n")
    );
}

#[test]
fn golden_every_protocol_and_type_is_covered() {
    let entries = manifest();
    for proto in [1, 6, 17, 47, 58, 132, 136, 253] {
        for kind in ["NEW", "DESTROY"] {
            assert!(
                entries
                    .iter()
                    .any(|e| e["l4proto"] == proto && e["type"] == kind),
                "no {kind} capture for protocol {proto}"
            );
        }
    }
    for family in [2, 10] {
        assert!(entries.iter().any(|e| e["l3proto"] == family));
    }
}

#[test]
fn tcp_ipv4_new_update_destroy_from_header_flags() {
    let new = decode_file("tcp_ipv4_new_0.bin");
    assert_eq!(new.event_type, EventType::New);
    assert_eq!(new.tcp_state, Some(1)); // SYN_SENT
    assert!(new.unreplied());
    assert!(!new.assured());

    let update = decode_file("tcp_ipv4_update_0.bin");
    assert_eq!(update.event_type, EventType::Update);
    assert_eq!(update.tcp_state, Some(2)); // SYN_RECV
    assert!(!update.unreplied());

    let established = decode_file("tcp_ipv4_update_1.bin");
    assert_eq!(established.event_type, EventType::Update);
    assert_eq!(established.tcp_state, Some(3)); // ESTABLISHED
    assert!(established.assured());

    let destroy = decode_file("tcp_ipv4_destroy_0.bin");
    assert_eq!(destroy.event_type, EventType::Destroy);
    assert_eq!(destroy.tcp_state, Some(7)); // TIME_WAIT
    assert_eq!(destroy.original.l4proto, 6);
    assert_eq!(destroy.original.sport, 45712);
    assert_eq!(destroy.reply.dport, 45712);
    assert_eq!(destroy.original.dport, destroy.reply.sport);
    // One flow: the same CTA_ID from NEW to DESTROY.
    assert_eq!(new.id, destroy.id);
    assert_eq!(new.id, update.id);
}

#[test]
fn new_versus_update_is_decided_by_nlm_f_create_or_excl() {
    // The same NEW message with its NLM_F_CREATE|NLM_F_EXCL flags cleared is an UPDATE, and
    // an UPDATE with only one of them set becomes a NEW (as libnetfilter_conntrack does).
    let mut message = capture("udp_ipv4_new_0.bin");
    assert_eq!(flags(&message), 0x600);
    set_flags(&mut message, 0);
    assert_eq!(
        decode(&message, 0).expect("decodes").event_type,
        EventType::Update
    );
    for one in [0x200, 0x400] {
        let mut message = capture("udp_ipv4_update_0.bin");
        set_flags(&mut message, one);
        assert_eq!(
            decode(&message, 0).expect("decodes").event_type,
            EventType::New
        );
    }
}

#[test]
fn ipv6_addresses_are_rfc_5952_text() {
    let event = decode_file("tcp_ipv6_destroy_0.bin");
    assert_eq!(event.l3proto, 10);
    assert_eq!(event.l3proto_name(), "ipv6");
    assert_eq!(
        event.original.src.map(|a| a.to_string()),
        Some("::1".into())
    );
    assert_eq!(event.reply.dst.map(|a| a.to_string()), Some("::1".into()));
    let json = String::from_utf8(to_json(&event)).expect("utf-8");
    assert!(json.contains("\"Src\":\"::1\""), "{json}");

    // RFC 5952 on addresses the captures lack: longest zero run compressed, lower case,
    // no leading zeros, a single zero group not compressed, IPv4-mapped form.
    let mut message = capture("tcp_ipv6_destroy_0.bin");
    let samples = [
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        ("2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ("fe80::abcd:ef01", "fe80::abcd:ef01"),
    ];
    for (input, text) in samples {
        let address: std::net::Ipv6Addr = input.parse().expect("address");
        let loopback = std::net::Ipv6Addr::LOCALHOST.octets();
        let at = find(&message, &loopback).expect("the capture holds ::1");
        message[at..at + 16].copy_from_slice(&address.octets());
        let event = decode(&message, 0).expect("decodes");
        assert_eq!(event.original.src.map(|a| a.to_string()), Some(text.into()));
        let json = String::from_utf8(to_json(&event)).expect("utf-8");
        assert!(json.contains(&format!("\"Src\":\"{text}\"")), "{json}");
        message = capture("tcp_ipv6_destroy_0.bin");
    }
}

#[test]
fn counters_on_destroy() {
    let event = decode_file("tcp_ipv4_destroy_0.bin");
    let expected = entry("tcp_ipv4_destroy_0.bin");
    assert!(event.original.packets > 0 && event.original.bytes > 0);
    assert!(event.reply.packets > 0 && event.reply.bytes > 0);
    assert_eq!(
        Some(event.original.packets),
        expected["orig"]["packets"].as_u64()
    );
    assert_eq!(
        Some(event.original.bytes),
        expected["orig"]["bytes"].as_u64()
    );
    assert_eq!(
        Some(event.reply.packets),
        expected["reply"]["packets"].as_u64()
    );
    assert_eq!(Some(event.reply.bytes), expected["reply"]["bytes"].as_u64());
    assert!(event.start_ns.is_some() && event.stop_ns.is_some());
    assert!(event.start_ns <= event.stop_ns);

    // NEW carries no counters; a flow without accounting has none even on DESTROY.
    let new = decode_file("tcp_ipv4_new_0.bin");
    assert_eq!((new.original.packets, new.original.bytes), (0, 0));
    let noacct = decode_file("udp_ipv4_destroy_noacct_0.bin");
    assert_eq!((noacct.original.packets, noacct.reply.bytes), (0, 0));
    assert_eq!(noacct.start_ns, None);
}

#[test]
fn source_nat_is_recognised() {
    for file in [
        "tcp_ipv4_new_snat_0.bin",
        "tcp_ipv4_destroy_snat_0.bin",
        "udp_ipv4_destroy_snat_0.bin",
    ] {
        let event = decode_file(file);
        assert!(event.is_src_nat(), "{file} is source-NATed");
        assert_ne!(event.original.src, event.reply.dst, "{file}");
    }
    for file in [
        "udp_ipv4_new_nullnat_0.bin",
        "udp_ipv4_destroy_nullnat_0.bin",
        "tcp_ipv4_destroy_dnat_0.bin",
        "tcp_ipv4_destroy_0.bin",
        "udp_ipv6_destroy_0.bin",
    ] {
        assert!(
            !decode_file(file).is_src_nat(),
            "{file} is not source-NATed"
        );
    }
}

#[test]
fn zone_7() {
    for file in [
        "udp_ipv4_new_zone_0.bin",
        "udp_ipv4_update_zone_0.bin",
        "udp_ipv4_destroy_zone_0.bin",
    ] {
        assert_eq!(decode_file(file).zone, Some(7), "{file}");
    }
    assert_eq!(decode_file("udp_ipv4_destroy_0.bin").zone, None);
}

#[test]
fn mark_42_and_labels_skipped() {
    for file in [
        "udp_ipv4_new_marklabel_0.bin",
        "udp_ipv4_update_marklabel_0.bin",
        "udp_ipv4_destroy_marklabel_0.bin",
    ] {
        let event = decode_file(file);
        assert_eq!(event.mark, Some(42), "{file}");
        assert_eq!(event.original.dport, 5555, "{file}");
    }
    assert_eq!(decode_file("udp_ipv4_destroy_0.bin").mark, None);
}

#[test]
fn icmp_type_code_id() {
    let event = decode_file("icmp_ipv4_destroy_0.bin");
    assert_eq!(
        event.original.icmp,
        Some(Icmp {
            icmp_type: 8,
            code: 0,
            id: 4660
        })
    );
    assert_eq!(
        event.reply.icmp,
        Some(Icmp {
            icmp_type: 0,
            code: 0,
            id: 4660
        })
    );
    assert_eq!((event.original.sport, event.original.dport), (0, 0));

    let event = decode_file("icmpv6_ipv6_new_0.bin");
    assert_eq!(event.original.l4proto, 58);
    assert_eq!(
        event.original.icmp,
        Some(Icmp {
            icmp_type: 128,
            code: 0,
            id: 4661
        })
    );
    assert_eq!(event.reply.icmp.map(|i| i.icmp_type), Some(129));
    let json = json_value(&event);
    assert_eq!(json["Original"]["Layer4"]["Protoname"], "icmpv6");
    assert_eq!(json["Original"]["Layer4"]["Sport"], 0);
}

#[test]
fn gre_and_unknown_protocols_have_no_ports() {
    for (file, proto, name) in [
        ("gre_ipv4_new_0.bin", 47, "gre"),
        ("gre_ipv6_destroy_0.bin", 47, "gre"),
        ("unknown_ipv4_new_0.bin", 253, "unknown"),
        ("unknown_ipv6_destroy_0.bin", 253, "unknown"),
    ] {
        let event = decode_file(file);
        for direction in [&event.original, &event.reply] {
            assert_eq!(direction.l4proto, proto, "{file}");
            assert_eq!((direction.sport, direction.dport), (0, 0), "{file}");
            assert_eq!(direction.icmp, None, "{file}");
        }
        let json = json_value(&event);
        for side in ["Original", "Reply"] {
            let layer4 = &json[side]["Layer4"];
            assert_eq!(layer4["Protonum"], proto, "{file}");
            assert_eq!(layer4["Protoname"], name, "{file}");
            assert_eq!(layer4["Sport"], 0, "{file}");
            assert_eq!(layer4["Dport"], 0, "{file}");
        }
    }
}

#[test]
fn gre_keys_are_not_ports() {
    // Non-zero GRE keys travel in the port attributes; they must not show as ports.
    let mut message = capture("gre_ipv4_new_0.bin");
    edit_tuple_ports(&mut message, 0x1234, 0x5678);
    let event = decode(&message, 0).expect("decodes");
    assert_eq!((event.original.sport, event.original.dport), (0, 0));
    assert_eq!((event.reply.sport, event.reply.dport), (0, 0));
}

// ---------------------------------------------------------------------------------------
// 2. JSON

fn json_value(event: &Event) -> Value {
    serde_json::from_slice(&to_json(event)).expect("to_json writes JSON")
}

fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn check_direction_json(file: &str, side: &Value, direction: &Direction, want: &Value, l3: u8) {
    assert_eq!(keys(side), ["Layer3", "Layer4", "Counter"], "{file}");
    let layer3 = &side["Layer3"];
    assert_eq!(
        keys(layer3),
        ["Protonum", "Protoname", "Src", "Dst"],
        "{file}"
    );
    assert_eq!(layer3["Protonum"], u64::from(l3), "{file}");
    assert_eq!(
        layer3["Protoname"],
        if l3 == 2 { "ipv4" } else { "ipv6" },
        "{file}"
    );
    assert_eq!(layer3["Src"], want["src"], "{file}");
    assert_eq!(layer3["Dst"], want["dst"], "{file}");
    let layer4 = &side["Layer4"];
    assert_eq!(
        keys(layer4),
        ["Protonum", "Protoname", "Sport", "Dport"],
        "{file}"
    );
    assert_eq!(layer4["Protonum"], u64::from(direction.l4proto), "{file}");
    assert_eq!(
        layer4["Protoname"],
        crate::event::l4proto_name(direction.l4proto),
        "{file}"
    );
    assert_eq!(layer4["Sport"], want["sport"], "{file}");
    assert_eq!(layer4["Dport"], want["dport"], "{file}");
    let counter = &side["Counter"];
    assert_eq!(keys(counter), ["Packets", "Bytes"], "{file}");
    assert_eq!(counter["Packets"], want["packets"], "{file}");
    assert_eq!(counter["Bytes"], want["bytes"], "{file}");
}

#[test]
fn json_keys_order_and_values_agree_with_manifest() {
    for expected in manifest() {
        let file = expected["file"].as_str().expect("file");
        let event = decode_file(file);
        let json = json_value(&event);
        assert_eq!(
            keys(&json),
            [
                "Timestamp",
                "Type",
                "Id",
                "Original",
                "Reply",
                "UNREPLIED",
                "ASSURED"
            ],
            "{file}"
        );
        assert_eq!(json["Timestamp"], TIMESTAMP_MS, "{file}");
        assert_eq!(json["Type"], expected["type"], "{file}");
        assert_eq!(json["Id"], expected["id"], "{file}");
        assert_eq!(json["UNREPLIED"], expected["unreplied"], "{file}");
        assert_eq!(json["ASSURED"], expected["assured"], "{file}");
        assert_eq!(json["Original"]["Layer4"]["Protonum"], expected["l4proto"]);
        let l3 = expected["l3proto"].as_u64().expect("l3proto") as u8;
        check_direction_json(
            file,
            &json["Original"],
            &event.original,
            &expected["orig"],
            l3,
        );
        check_direction_json(file, &json["Reply"], &event.reply, &expected["reply"], l3);
    }
}

#[test]
fn json_raw_bytes_of_one_destroy() {
    // The exact bytes, so order, spacing and casing are pinned without a JSON library.
    let event = decode_file("udp_ipv4_destroy_0.bin");
    let e = entry("udp_ipv4_destroy_0.bin");
    let expected = format!(
        "{{\"Timestamp\":{TIMESTAMP_MS},\"Type\":\"DESTROY\",\"Id\":{id},\
         \"Original\":{{\"Layer3\":{{\"Protonum\":2,\"Protoname\":\"ipv4\",\"Src\":\"127.0.0.1\",\"Dst\":\"127.0.0.1\"}},\
         \"Layer4\":{{\"Protonum\":17,\"Protoname\":\"udp\",\"Sport\":{os},\"Dport\":{od}}},\
         \"Counter\":{{\"Packets\":{op},\"Bytes\":{ob}}}}},\
         \"Reply\":{{\"Layer3\":{{\"Protonum\":2,\"Protoname\":\"ipv4\",\"Src\":\"127.0.0.1\",\"Dst\":\"127.0.0.1\"}},\
         \"Layer4\":{{\"Protonum\":17,\"Protoname\":\"udp\",\"Sport\":{rs},\"Dport\":{rd}}},\
         \"Counter\":{{\"Packets\":{rp},\"Bytes\":{rb}}}}},\
         \"UNREPLIED\":false,\"ASSURED\":false}}",
        id = e["id"],
        os = e["orig"]["sport"],
        od = e["orig"]["dport"],
        op = e["orig"]["packets"],
        ob = e["orig"]["bytes"],
        rs = e["reply"]["sport"],
        rd = e["reply"]["dport"],
        rp = e["reply"]["packets"],
        rb = e["reply"]["bytes"],
    );
    assert_eq!(String::from_utf8(to_json(&event)).expect("utf-8"), expected);
}

// ---------------------------------------------------------------------------------------
// 3. Robustness

/// xorshift64*: deterministic, no crate needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn every_truncation_never_panics() {
    for (file, bytes) in all_captures() {
        for len in 0..=bytes.len() {
            let prefix = &bytes[..len];
            exercise(prefix);
            if len < bytes.len() {
                // A cut message is refused by the splitter (its declared length no longer fits).
                let results: Vec<_> = split_messages(prefix).collect();
                assert!(
                    results.iter().all(|r| r.is_err()),
                    "{file}: prefix of {len} bytes split into a message"
                );
                // And, handed to the decoder directly, never becomes an event.
                assert!(
                    decode(prefix, 0).is_err(),
                    "{file}: prefix of {len} bytes decoded"
                );
            }
        }
    }
}

#[test]
fn truncation_with_fixed_length_never_panics() {
    // The same cuts, but with nlmsg_len rewritten to fit, so the cut reaches the attributes.
    for (_file, bytes) in all_captures() {
        for len in NLMSG_HDRLEN..bytes.len() {
            let mut cut = bytes[..len].to_vec();
            set_len(&mut cut);
            exercise(&cut);
        }
    }
}

#[test]
fn garbled_captures_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let captures = all_captures();
    for (_file, bytes) in &captures {
        for round in 0..400 {
            let mut garbled = bytes.clone();
            match round % 4 {
                // A few bit flips anywhere.
                0 => {
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(garbled.len());
                        garbled[at] ^= 1 << rng.below(8);
                    }
                }
                // Random bytes, keeping the netlink header so the attributes are reached.
                1 => {
                    for _ in 0..1 + rng.below(8) {
                        let at = ATTRS_AT + rng.below(garbled.len() - ATTRS_AT);
                        garbled[at] = rng.next() as u8;
                    }
                }
                // Attribute length fields set to odd values.
                2 => {
                    let at = ATTRS_AT + rng.below(garbled.len() - ATTRS_AT);
                    let value = [0u16, 1, 3, 4, 5, 0xffff, rng.next() as u16][rng.below(7)];
                    let end = (at + 2).min(garbled.len());
                    let bytes = value.to_ne_bytes();
                    garbled[at..end].copy_from_slice(&bytes[..end - at]);
                }
                // Cut and length fixed, then garbled.
                _ => {
                    garbled.truncate(NLMSG_HDRLEN + rng.below(garbled.len() - NLMSG_HDRLEN));
                    set_len(&mut garbled);
                    if garbled.len() > ATTRS_AT {
                        let at = ATTRS_AT + rng.below(garbled.len() - ATTRS_AT);
                        garbled[at] = rng.next() as u8;
                    }
                }
            }
            exercise(&garbled);
        }
    }
    // Pure noise, of every length up to a typical message.
    for len in 0..256 {
        let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        exercise(&noise);
        // Noise behind a valid conntrack header.
        let mut framed = captures[0].1[..ATTRS_AT].to_vec();
        framed.extend_from_slice(&noise);
        set_len(&mut framed);
        exercise(&framed);
    }
}

#[test]
fn unknown_top_level_attribute_is_skipped() {
    for (file, bytes) in all_captures() {
        let want = decode_datagram(&bytes).expect("decodes");
        for kind in [99, 99 | NLA_F_NESTED, 0x3fff] {
            let mut message = bytes.clone();
            append_nla(&mut message, kind, &[0xab; 8]);
            let got = decode(&message, TIMESTAMP_MS)
                .unwrap_or_else(|e| panic!("{file} + attribute {kind}: {e:?}"));
            assert_eq!(got, want, "{file} + attribute {kind}");
        }
        // And one in front of everything else, of an odd length.
        let mut attrs = attributes(&bytes);
        attrs.insert(0, (99, vec![1, 2, 3, 4, 5]));
        let message = rebuild(&bytes, &attrs);
        assert_eq!(decode(&message, TIMESTAMP_MS), Ok(want), "{file}");
    }
}

#[test]
fn unknown_nested_attributes_are_skipped() {
    for file in [
        "tcp_ipv4_destroy_0.bin",
        "udp_ipv6_destroy_0.bin",
        "icmp_ipv4_destroy_0.bin",
        "icmpv6_ipv6_destroy_0.bin",
        "gre_ipv4_destroy_0.bin",
    ] {
        let bytes = capture(file);
        let want = decode_datagram(&bytes).expect("decodes");
        let mut attrs = attributes(&bytes);
        for (kind, value) in attrs.iter_mut() {
            match *kind & NLA_TYPE_MASK {
                CTA_TUPLE_ORIG | CTA_TUPLE_REPLY => {
                    // One unknown attribute in the tuple, one inside its protocol part.
                    let mut tuple = parse_nlas(value);
                    tuple.push((30, vec![7; 6]));
                    for (inner_kind, inner) in tuple.iter_mut() {
                        if *inner_kind & NLA_TYPE_MASK == CTA_TUPLE_PROTO {
                            let mut proto = parse_nlas(inner);
                            proto.insert(0, (30, vec![9; 4]));
                            *inner = emit_nlas(&proto);
                        }
                    }
                    *value = emit_nlas(&tuple);
                }
                CTA_COUNTERS_ORIG | CTA_COUNTERS_REPLY | CTA_TIMESTAMP => {
                    let mut inner = parse_nlas(value);
                    inner.push((30, vec![5; 8]));
                    inner.insert(0, (31, vec![]));
                    *value = emit_nlas(&inner);
                }
                _ => {}
            }
        }
        let message = rebuild(&bytes, &attrs);
        assert_ne!(message, bytes);
        assert_eq!(decode(&message, TIMESTAMP_MS), Ok(want), "{file}");
    }
}

#[test]
fn empty_padding_attributes_do_not_break_decoding() {
    // On architectures without efficient unaligned access the kernel puts an empty
    // CTA_TIMESTAMP_PAD (3, the number of CTA_STATUS at the top level) around the 64-bit
    // CTA_TIMESTAMP_EVENT, and empty *_PAD attributes inside the counters and timestamp.
    for (file, bytes) in all_captures() {
        let want = decode_datagram(&bytes).expect("decodes");
        let original = attributes(&bytes);
        for position in ["after", "before"] {
            let mut attrs = Vec::new();
            for (kind, value) in &original {
                let is_event_stamp = *kind & NLA_TYPE_MASK == CTA_TIMESTAMP_EVENT;
                if is_event_stamp && position == "before" {
                    attrs.push((CTA_TIMESTAMP_PAD, vec![]));
                }
                let value = match *kind & NLA_TYPE_MASK {
                    CTA_COUNTERS_ORIG | CTA_COUNTERS_REPLY => {
                        let mut inner = parse_nlas(value);
                        inner.insert(0, (CTA_COUNTERS_PAD, vec![]));
                        emit_nlas(&inner)
                    }
                    CTA_TIMESTAMP => {
                        let mut inner = parse_nlas(value);
                        inner.insert(0, (CTA_TIMESTAMP_PAD, vec![]));
                        emit_nlas(&inner)
                    }
                    _ => value.clone(),
                };
                attrs.push((*kind, value));
                if is_event_stamp && position == "after" {
                    attrs.push((CTA_TIMESTAMP_PAD, vec![]));
                }
            }
            if !original
                .iter()
                .any(|(k, _)| *k & NLA_TYPE_MASK == CTA_TIMESTAMP_EVENT)
            {
                attrs.push((CTA_TIMESTAMP_PAD, vec![]));
            }
            let message = rebuild(&bytes, &attrs);
            let got = decode(&message, TIMESTAMP_MS)
                .unwrap_or_else(|e| panic!("{file}, pad {position}: {e:?}"));
            assert_eq!(got.status, want.status, "{file}, pad {position}");
            assert_eq!(got, want, "{file}, pad {position}");
        }
    }
}

#[test]
fn empty_status_attribute_does_not_zero_a_later_status() {
    // The pad before CTA_STATUS itself: the real status must still be read.
    let bytes = capture("tcp_ipv4_destroy_0.bin");
    let want = decode_datagram(&bytes).expect("decodes");
    let mut attrs = attributes(&bytes);
    let at = attrs
        .iter()
        .position(|(k, _)| *k & NLA_TYPE_MASK == CTA_STATUS)
        .expect("CTA_STATUS");
    attrs.insert(at, (CTA_STATUS, vec![]));
    attrs.insert(at + 2, (CTA_STATUS, vec![]));
    let got = decode(&rebuild(&bytes, &attrs), TIMESTAMP_MS).expect("decodes");
    assert_eq!(got, want);
}

#[test]
fn two_messages_in_one_datagram() {
    let first = capture("tcp_ipv4_new_0.bin");
    let second = capture("udp_ipv6_destroy_0.bin");
    let mut datagram = first.clone();
    datagram.resize((datagram.len() + 3) & !3, 0);
    datagram.extend_from_slice(&second);
    let messages: Vec<_> = split_messages(&datagram).collect();
    assert_eq!(messages.len(), 2);
    let events: Vec<Event> = messages
        .into_iter()
        .map(|m| decode(m.expect("split"), TIMESTAMP_MS).expect("decodes"))
        .collect();
    assert_eq!(events[0], decode_datagram(&first).expect("decodes"));
    assert_eq!(events[1], decode_datagram(&second).expect("decodes"));
    assert_eq!(events[0].event_type, EventType::New);
    assert_eq!(events[1].event_type, EventType::Destroy);

    // Three, one of them garbage in the middle: good, bad, good.
    let mut datagram = first.clone();
    let mut bad = first.clone();
    bad[ATTRS_AT..].iter_mut().for_each(|b| *b = 0xff);
    datagram.extend_from_slice(&bad);
    datagram.extend_from_slice(&second);
    let results: Vec<_> = split_messages(&datagram)
        .map(|m| m.and_then(|m| decode(m, 0)))
        .collect();
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(Skip::Malformed(_))));
    assert!(results[2].is_ok());
}

#[test]
fn overlong_length_gives_one_error() {
    let mut datagram = capture("tcp_ipv4_new_0.bin");
    let len = datagram.len() as u32 + 100;
    datagram[..4].copy_from_slice(&len.to_ne_bytes());
    let results: Vec<_> = split_messages(&datagram).collect();
    assert_eq!(results.len(), 1);
    assert!(matches!(results[0], Err(Skip::Malformed(_))));

    // A length below the header size is as broken, and ends the walk too.
    let mut datagram = capture("tcp_ipv4_new_0.bin");
    let good = datagram.clone();
    datagram.extend_from_slice(&good);
    let at = good.len();
    datagram[at..at + 4].copy_from_slice(&8u32.to_ne_bytes());
    let results: Vec<_> = split_messages(&datagram).collect();
    assert_eq!(results.len(), 2);
    assert!(results[0].is_ok());
    assert!(results[1].is_err());

    // A length of zero must not loop forever.
    let results: Vec<_> = split_messages(&[0u8; 64]).collect();
    assert_eq!(results.len(), 1);
    assert!(split_messages(&[]).next().is_none());
}

#[test]
fn non_conntrack_messages_are_not_events() {
    // NLMSG_DONE (3), as ends a dump.
    let done = netlink_message(3, 0x2, &0i32.to_ne_bytes());
    assert_eq!(decode(&done, 0), Err(Skip::NotAnEvent));
    // NLMSG_NOOP (1).
    let noop = netlink_message(1, 0, &[]);
    assert_eq!(decode(&noop, 0), Err(Skip::NotAnEvent));
    // NLMSG_ERROR (2) with error 0: an ACK, with the request's header behind it.
    let mut ack = 0i32.to_ne_bytes().to_vec();
    ack.extend_from_slice(&netlink_message(0x100, 0x5, &[])[..NLMSG_HDRLEN]);
    let ack = netlink_message(2, 0x100, &ack);
    assert_eq!(decode(&ack, 0), Err(Skip::NotAnEvent));

    // nfnetlink messages of other subsystems, each with a nfgenmsg header and one attribute.
    let mut payload = vec![2, 0, 0, 0]; // AF_INET, version 0, res_id 0
    payload.extend_from_slice(&nla(1, &0x0102_0304u32.to_be_bytes()));
    for message_type in [
        2 << 8,       // NFNL_SUBSYS_CTNETLINK_EXP, IPCTNL_MSG_EXP_NEW
        3 << 8,       // NFNL_SUBSYS_QUEUE
        4 << 8,       // NFNL_SUBSYS_ULOG, NFULNL_MSG_PACKET
        12 << 8,      // NFNL_SUBSYS_HOOK
        (1 << 8) | 4, // ctnetlink, IPCTNL_MSG_CT_GET_CTRZERO
        (1 << 8) | 6, // ctnetlink, IPCTNL_MSG_CT_GET_STATS_CPU
    ] {
        let message = netlink_message(message_type, 0, &payload);
        let got = decode(&message, 0);
        assert!(
            got == Err(Skip::NotAnEvent) || matches!(got, Err(Skip::Malformed(_))),
            "type {message_type:#x}: {got:?}"
        );
    }
    // These clearly are not events, rather than broken events.
    for message_type in [2 << 8, 12 << 8, (1 << 8) | 6] {
        let message = netlink_message(message_type, 0, &payload);
        assert_eq!(
            decode(&message, 0),
            Err(Skip::NotAnEvent),
            "type {message_type:#x}"
        );
    }
    // A conntrack GET reply (a dump entry, not an event).
    let mut get = capture("tcp_ipv4_destroy_0.bin");
    get[4..6].copy_from_slice(&((1u16 << 8) | 1).to_ne_bytes());
    assert_eq!(decode(&get, 0), Err(Skip::NotAnEvent));
    // And through split_messages, the same.
    let mut datagram = done.clone();
    datagram.extend_from_slice(&capture("udp_ipv4_new_0.bin"));
    let results: Vec<_> = split_messages(&datagram)
        .map(|m| m.and_then(|m| decode(m, 0)))
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0], Err(Skip::NotAnEvent));
    assert!(results[1].is_ok());
}

#[test]
fn fuzz_regression_nftables_message_does_not_panic() {
    // Found by the fuzzer in its first seconds: an nftables (subsystem 10) message whose
    // malformed attribute made netlink-packet-netfilter 0.4.0 slice out of range
    // (nftables/attributes/expression.rs:263 via netlink-packet-core nla.rs:154). The decoder
    // now hands only ctnetlink NEW/DELETE messages to the crate.
    let crash: &[u8] = &[
        0x80, 0x00, 0x00, 0x00, 0x0b, 0x0a, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0xfe, 0xff, 0xff, 0xfb, 0x04, 0x00, 0x00, 0x00, 0x80, 0x00, 0x11, 0x00, 0x1b, 0xf2,
        0xff, 0xff, 0xff, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb, 0x04, 0x00, 0x00, 0x00, 0x80,
        0x00, 0x0d, 0x00, 0x1b, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xa0, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x01, 0x00, 0x7f, 0x00, 0x00, 0x01, 0x08, 0x00, 0x02, 0x00, 0x7f, 0x00, 0x00, 0x01,
        0x08, 0x00, 0x02, 0x00, 0x7f, 0x00, 0x00, 0x6d, 0x80, 0x00, 0x00, 0x00, 0xff, 0xff, 0xa0,
        0x5c, 0x00, 0x00, 0x00, 0x02, 0x00, 0x7f, 0x00, 0x00, 0x01, 0x08, 0x00, 0x02, 0x00, 0x7f,
        0x00, 0x00, 0x6d, 0x80, 0x00, 0x00, 0x00, 0xff, 0xff, 0xa0, 0x00, 0x00, 0x00, 0x00, 0x8c,
        0x8c, 0x8c, 0x8c, 0x8c, 0x8c, 0x8c, 0x8c, 0x8c, 0x8c, 0x8c, 0x00, 0x02, 0x00, 0x7f, 0x00,
        0x00, 0x01, 0x08, 0x00, 0x02, 0x00, 0x7f, 0x00, 0x00, 0x6d, 0x80, 0x00, 0x00, 0x00, 0x00,
        0x0a, 0x00, 0x06, 0x7f, 0x00, 0x00, 0x01, 0x1c, 0x00, 0x02, 0x80, 0x05,
    ];
    exercise(crash);
    assert_eq!(decode(crash, 0), Err(Skip::NotAnEvent));
    // Any nftables message type, with a capture's attributes behind it.
    for message_type in 0..0x20u16 {
        let mut message = capture("tcp_ipv4_destroy_0.bin");
        message[4..6].copy_from_slice(&((10u16 << 8) | message_type).to_ne_bytes());
        assert_eq!(decode(&message, 0), Err(Skip::NotAnEvent));
    }
}

#[test]
fn conntrack_event_without_original_tuple_is_malformed() {
    let bytes = capture("tcp_ipv4_destroy_0.bin");
    let attrs: Vec<_> = attributes(&bytes)
        .into_iter()
        .filter(|(k, _)| *k & NLA_TYPE_MASK != CTA_TUPLE_ORIG)
        .collect();
    assert!(matches!(
        decode(&rebuild(&bytes, &attrs), 0),
        Err(Skip::Malformed(_))
    ));
}

// ---------------------------------------------------------------------------------------
// 4. The queue

fn sample_event(id: u32) -> Event {
    let mut event = decode_file("udp_ipv4_new_0.bin");
    event.id = id;
    event
}

#[test]
fn queue_blocks_when_full_and_stop_releases_the_pusher() {
    let queue = Arc::new(Queue::new(2));
    let stop = Arc::new(AtomicBool::new(false));
    assert!(queue.push(sample_event(1), &stop));
    assert!(queue.push(sample_event(2), &stop));

    let pusher = {
        let (queue, stop) = (Arc::clone(&queue), Arc::clone(&stop));
        std::thread::spawn(move || queue.push(sample_event(3), &stop))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !pusher.is_finished(),
        "push returned although the queue is full"
    );
    assert_eq!(queue.stats().1, 2);

    let started = Instant::now();
    stop.store(true, Ordering::Relaxed);
    assert!(
        !pusher.join().expect("pusher"),
        "a stopped push reports false"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The stopped push left nothing behind.
    let (stats, queued) = queue.stats();
    assert_eq!((stats.received, queued), (2, 2));
}

#[test]
fn queue_pop_makes_room_for_a_blocked_pusher() {
    let queue = Arc::new(Queue::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    assert!(queue.push(sample_event(1), &stop));
    let pusher = {
        let (queue, stop) = (Arc::clone(&queue), Arc::clone(&stop));
        std::thread::spawn(move || queue.push(sample_event(2), &stop))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(!pusher.is_finished());
    match queue.pop(Duration::from_secs(5)) {
        Pop::Event(event, _) => assert_eq!(event.id, 1),
        _ => panic!("expected the first event"),
    }
    assert!(pusher.join().expect("pusher"));
    match queue.pop(Duration::from_secs(5)) {
        Pop::Event(event, _) => assert_eq!(event.id, 2),
        _ => panic!("expected the second event"),
    }
}

#[test]
fn queue_pops_in_order_then_ends() {
    let queue = Queue::new(8);
    let stop = AtomicBool::new(false);
    for id in 1..=5 {
        assert!(queue.push(sample_event(id), &stop));
    }
    queue.count(|s| s.overruns += 3);
    queue.count(|s| s.decode_errors += 1);

    let started = Instant::now();
    assert!(matches!(
        queue.pop(Duration::from_millis(0)),
        Pop::Event(_, 3)
    ));
    queue.finish(None);
    // What was queued before the end is still delivered, in order.
    for id in 2..=5 {
        match queue.pop(Duration::from_secs(1)) {
            Pop::Event(event, overruns) => {
                assert_eq!(event.id, id);
                assert_eq!(overruns, 3);
            }
            _ => panic!("expected event {id}"),
        }
    }
    assert!(matches!(
        queue.pop(Duration::from_secs(1)),
        Pop::Ended(None)
    ));
    assert!(matches!(
        queue.pop(Duration::from_secs(1)),
        Pop::Ended(None)
    ));
    assert!(started.elapsed() < Duration::from_secs(1));

    let (stats, queued) = queue.stats();
    assert_eq!(queued, 0);
    assert_eq!(stats.received, 5);
    assert_eq!(stats.delivered, 5);
    assert_eq!(stats.peak_queued, 5);
    assert_eq!(stats.overruns, 3);
    assert_eq!(stats.decode_errors, 1);
}

#[test]
fn queue_pop_times_out_when_empty_and_reports_failure_once() {
    let queue = Arc::new(Queue::new(4));
    let started = Instant::now();
    assert!(matches!(queue.pop(Duration::from_millis(50)), Pop::Timeout));
    assert!(started.elapsed() >= Duration::from_millis(50));

    // A waiting consumer is woken by finish().
    let consumer = {
        let queue = Arc::clone(&queue);
        std::thread::spawn(move || match queue.pop(Duration::from_secs(10)) {
            Pop::Ended(Some(error)) => error.to_string(),
            _ => String::from("not ended"),
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    queue.finish(Some(crate::Error::InvalidArgument("gone".into())));
    assert_eq!(consumer.join().expect("consumer"), "gone");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        queue.pop(Duration::from_millis(1)),
        Pop::Ended(None)
    ));
}

// ---------------------------------------------------------------------------------------
// Building messages

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn flags(message: &[u8]) -> u16 {
    u16::from_ne_bytes([message[6], message[7]])
}

fn set_flags(message: &mut [u8], flags: u16) {
    message[6..8].copy_from_slice(&flags.to_ne_bytes());
}

/// Rewrites nlmsg_len to the buffer's length.
fn set_len(message: &mut [u8]) {
    let len = message.len() as u32;
    if message.len() >= 4 {
        message[..4].copy_from_slice(&len.to_ne_bytes());
    }
}

/// One attribute, header and padding included.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = (4 + value.len()) as u16;
    let mut out = len.to_ne_bytes().to_vec();
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize((out.len() + 3) & !3, 0);
    out
}

fn parse_nlas(mut bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]);
        assert!(len >= 4 && len <= bytes.len(), "a well-formed capture");
        out.push((kind, bytes[4..len].to_vec()));
        bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
    }
    out
}

fn emit_nlas(attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    attrs.iter().flat_map(|(k, v)| nla(*k, v)).collect()
}

/// The top-level attributes of a capture's (single) message.
fn attributes(message: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let len = u32::from_ne_bytes([message[0], message[1], message[2], message[3]]) as usize;
    parse_nlas(&message[ATTRS_AT..len])
}

/// The message with its headers kept and its attributes replaced, nlmsg_len fixed.
fn rebuild(message: &[u8], attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut out = message[..ATTRS_AT].to_vec();
    out.extend_from_slice(&emit_nlas(attrs));
    set_len(&mut out);
    out
}

fn append_nla(message: &mut Vec<u8>, kind: u16, value: &[u8]) {
    message.resize((message.len() + 3) & !3, 0);
    message.extend_from_slice(&nla(kind, value));
    set_len(message);
}

/// A netlink message of any type, with the given payload.
fn netlink_message(message_type: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0; NLMSG_HDRLEN];
    out[4..6].copy_from_slice(&message_type.to_ne_bytes());
    out[6..8].copy_from_slice(&flags.to_ne_bytes());
    out[8..12].copy_from_slice(&1u32.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize((out.len() + 3) & !3, 0);
    set_len(&mut out);
    out
}

/// Sets the ports of both tuples (CTA_PROTO_SRC_PORT/DST_PORT, big-endian).
fn edit_tuple_ports(message: &mut Vec<u8>, sport: u16, dport: u16) {
    const CTA_PROTO_SRC_PORT: u16 = 2;
    const CTA_PROTO_DST_PORT: u16 = 3;
    let mut attrs = attributes(message);
    for (kind, value) in attrs.iter_mut() {
        if matches!(*kind & NLA_TYPE_MASK, CTA_TUPLE_ORIG | CTA_TUPLE_REPLY) {
            let mut tuple = parse_nlas(value);
            for (inner_kind, inner) in tuple.iter_mut() {
                if *inner_kind & NLA_TYPE_MASK == CTA_TUPLE_PROTO {
                    let mut proto = parse_nlas(inner);
                    for (k, v) in proto.iter_mut() {
                        match *k {
                            CTA_PROTO_SRC_PORT => *v = sport.to_be_bytes().to_vec(),
                            CTA_PROTO_DST_PORT => *v = dport.to_be_bytes().to_vec(),
                            _ => {}
                        }
                    }
                    *inner = emit_nlas(&proto);
                }
            }
            *value = emit_nlas(&tuple);
        }
    }
    *message = rebuild(message, &attrs);
}
