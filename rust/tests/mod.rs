//! Unit tests of the pure core on real kernel captures.
//!
//! `rust/testdata/*.bin` are raw ctnetlink datagrams recorded from this machine's kernel by
//! `python3 scripts/record_ctnetlink.py` (as root; see `rust/testdata/README.md`), and
//! `rust/testdata/manifest.json` holds the fields an independent parser decoded from each,
//! cross-checked against `conntrack -E -o extended,id`. No socket, no root, no Python: these
//! run under qemu-user for the cross targets too. The netlink header and attribute headers are
//! native-endian; the captures are little-endian (x86_64), as are armv7 and mipsel.
//!
//! The tests live in one file per concern (`golden`, `json`, `robustness`, `fields` for the
//! opt-in fields); this module holds the fixtures and message builders they share. The queue's tests are in `queue.rs`.

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::Value;

use crate::decode::{decode, split_messages, Skip};
use crate::event::{Direction, Event, EventType, Icmp};
use crate::json::to_json;

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

mod fields;
mod golden;
mod json;
mod robustness;

// ---------------------------------------------------------------------------------------
// Fixtures

pub(crate) fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("rust")
        .join("testdata")
}

pub(crate) fn manifest() -> Vec<Value> {
    let path = testdata().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let value: Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let entries = value.as_array().expect("manifest.json is a list").clone();
    assert!(!entries.is_empty(), "manifest.json lists no capture");
    entries
}

pub(crate) fn entry(file: &str) -> Value {
    manifest()
        .into_iter()
        .find(|e| e["file"] == file)
        .unwrap_or_else(|| panic!("{file} is not in manifest.json"))
}

pub(crate) fn capture(file: &str) -> Vec<u8> {
    let path = testdata().join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

pub(crate) fn all_captures() -> Vec<(String, Vec<u8>)> {
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
pub(crate) fn decode_datagram(datagram: &[u8]) -> Result<Event, Skip> {
    let mut messages = split_messages(datagram);
    let message = messages.next().expect("a datagram holds a message")?;
    assert!(
        messages.next().is_none(),
        "a capture holds exactly one message"
    );
    decode(message, TIMESTAMP_MS)
}

pub(crate) fn decode_file(file: &str) -> Event {
    decode_datagram(&capture(file)).unwrap_or_else(|e| panic!("{file}: {e:?}"))
}

/// Everything decoding a datagram can do, JSON included, must not panic.
pub(crate) fn exercise(datagram: &[u8]) {
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

pub(crate) fn opt_u64(value: &Value) -> Option<u64> {
    value.as_u64()
}

/// Every mismatch between a decoded event and its manifest entry, as text.
pub(crate) fn mismatches(event: &Event, expected: &Value) -> Vec<String> {
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

pub(crate) fn json_value(event: &Event) -> Value {
    serde_json::from_slice(&to_json(event)).expect("to_json writes JSON")
}

// ---------------------------------------------------------------------------------------
// Building messages

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub(crate) fn flags(message: &[u8]) -> u16 {
    u16::from_ne_bytes([message[6], message[7]])
}

pub(crate) fn set_flags(message: &mut [u8], flags: u16) {
    message[6..8].copy_from_slice(&flags.to_ne_bytes());
}

/// Rewrites nlmsg_len to the buffer's length.
pub(crate) fn set_len(message: &mut [u8]) {
    let len = message.len() as u32;
    if message.len() >= 4 {
        message[..4].copy_from_slice(&len.to_ne_bytes());
    }
}

/// One attribute, header and padding included.
pub(crate) fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = (4 + value.len()) as u16;
    let mut out = len.to_ne_bytes().to_vec();
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize((out.len() + 3) & !3, 0);
    out
}

pub(crate) fn parse_nlas(mut bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
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

pub(crate) fn emit_nlas(attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    attrs.iter().flat_map(|(k, v)| nla(*k, v)).collect()
}

/// The top-level attributes of a capture's (single) message.
pub(crate) fn attributes(message: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let len = u32::from_ne_bytes([message[0], message[1], message[2], message[3]]) as usize;
    parse_nlas(&message[ATTRS_AT..len])
}

/// The message with its headers kept and its attributes replaced, nlmsg_len fixed.
pub(crate) fn rebuild(message: &[u8], attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut out = message[..ATTRS_AT].to_vec();
    out.extend_from_slice(&emit_nlas(attrs));
    set_len(&mut out);
    out
}

pub(crate) fn append_nla(message: &mut Vec<u8>, kind: u16, value: &[u8]) {
    message.resize((message.len() + 3) & !3, 0);
    message.extend_from_slice(&nla(kind, value));
    set_len(message);
}

/// A netlink message of any type, with the given payload.
pub(crate) fn netlink_message(message_type: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
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
pub(crate) fn edit_tuple_ports(message: &mut Vec<u8>, sport: u16, dport: u16) {
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
