//! The opt-in fields (`--fields`) on the recorded kernel captures.
//!
//! Expected values come from `rust/testdata/manifest.json` (an independent parser) and from
//! the `conntrack -E` line recorded with each capture, never from the code under test.

use serde_json::{json, Map, Value};

use super::{capture, decode_file, find, manifest, TIMESTAMP_MS};
use crate::decode::decode;
use crate::event::Event;
use crate::json::{to_json, to_json_with};
use crate::schema::{walk, Field, Fields, Key, Scalar, Visitor};

const REFERENCE_KEYS: [&str; 7] = [
    "Timestamp",
    "Type",
    "Id",
    "Original",
    "Reply",
    "UNREPLIED",
    "ASSURED",
];
/// Every opt-in key, in the documented order.
const OPT_IN_KEYS: [&str; 9] = [
    "Start", "Stop", "Duration", "State", "Zone", "Mark", "Labels", "Icmp", "Status",
];

/// The kernel's `enum ip_conntrack_status`, spelled out here independently of event.rs.
const STATUS_BITS: [(&str, u32); 16] = [
    ("EXPECTED", 0),
    ("SEEN_REPLY", 1),
    ("ASSURED", 2),
    ("CONFIRMED", 3),
    ("SRC_NAT", 4),
    ("DST_NAT", 5),
    ("SEQ_ADJUST", 6),
    ("SRC_NAT_DONE", 7),
    ("DST_NAT_DONE", 8),
    ("DYING", 9),
    ("FIXED_TIMEOUT", 10),
    ("TEMPLATE", 11),
    ("NAT_CLASH", 12),
    ("HELPER", 13),
    ("OFFLOAD", 14),
    ("HW_OFFLOAD", 15),
];

fn json_with(event: &Event, fields: Fields) -> Value {
    serde_json::from_slice(&to_json_with(event, fields)).expect("to_json_with writes JSON")
}

fn keys(value: &Value) -> Vec<&str> {
    let object = value.as_object().expect("an object");
    object.keys().map(String::as_str).collect()
}

fn file_of(entry: &Value) -> &str {
    entry["file"].as_str().expect("file is a string")
}

/// A `key=value` token of the recorded `conntrack -E` line.
fn conntrack_token<'a>(entry: &'a Value, key: &str) -> Option<&'a str> {
    let line = entry["conntrack_line"].as_str().expect("conntrack_line");
    line.split_whitespace()
        .find_map(|token| token.strip_prefix(key)?.strip_prefix('='))
}

/// What the message must say for a manifest entry, computed from the manifest alone.
fn expected_opt_in(entry: &Value) -> Map<String, Value> {
    let ms = |key: &str| entry[key].as_u64().map(|ns| ns / 1_000_000);
    let (start, stop) = (ms("timestamp_start_ns"), ms("timestamp_stop_ns"));
    let duration = start.zip(stop).map(|(start, stop)| stop - start);
    let line = entry["conntrack_line"].as_str().expect("conntrack_line");
    // `[NEW] ipv4 2 tcp 6 120 SYN_SENT src=...`: TCP lines name the state after the timeout.
    let state = (entry["l4proto"] == 6)
        .then(|| line.split_whitespace().nth(6).expect("a state").to_string());
    let labels: Option<Vec<u64>> = entry["labels_hex"].as_str().map(|hex| {
        // Little-endian words (x86_64 captures): bit i of byte j is label 8j + i.
        (0..hex.len() / 2)
            .flat_map(|j| {
                let byte = u8::from_str_radix(&hex[2 * j..2 * j + 2], 16).expect("hex");
                (0..8)
                    .filter(move |i| byte & (1 << i) != 0)
                    .map(move |i| (8 * j + i) as u64)
            })
            .collect()
    });
    let icmp = &entry["icmp"];
    let icmp = if icmp.is_null() {
        Value::Null
    } else {
        json!({"Type": icmp["type"], "Code": icmp["code"], "Id": icmp["id"]})
    };
    let status = entry["status"].as_u64().expect("status");
    let status: Vec<&str> = STATUS_BITS
        .iter()
        .filter(|(_, bit)| status & (1 << bit) != 0)
        .map(|(name, _)| *name)
        .collect();
    let mut expected = Map::new();
    expected.insert("Start".into(), json!(start));
    expected.insert("Stop".into(), json!(stop));
    expected.insert("Duration".into(), json!(duration));
    expected.insert("State".into(), json!(state));
    expected.insert("Zone".into(), json!(entry["zone"].as_u64().unwrap_or(0)));
    expected.insert("Mark".into(), json!(entry["mark"].as_u64().unwrap_or(0)));
    expected.insert("Labels".into(), json!(labels));
    expected.insert("Icmp".into(), icmp);
    expected.insert("Status".into(), json!(status));
    expected
}

#[test]
fn golden_every_capture_carries_every_opt_in_field_as_recorded() {
    let mut report = Vec::new();
    for entry in manifest() {
        let file = file_of(&entry);
        let message = json_with(&decode_file(file), Fields::all());
        let mut want: Vec<&str> = REFERENCE_KEYS.to_vec();
        want.extend(OPT_IN_KEYS);
        assert_eq!(keys(&message), want, "{file}");
        for (key, expected) in expected_opt_in(&entry) {
            if message[&key] != expected {
                report.push(format!(
                    "{file}: {key} is {}, expected {expected}",
                    message[&key]
                ));
            }
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn golden_the_opt_in_values_agree_with_the_conntrack_tool() {
    // The same facts, read off the `conntrack -E -o extended,id` line instead of the parser.
    for entry in manifest() {
        let file = file_of(&entry);
        let message = json_with(&decode_file(file), Fields::all());
        let number = |key| conntrack_token(&entry, key).map_or(0, |v| v.parse().expect("number"));
        assert_eq!(message["Zone"], number("zone"), "{file}");
        assert_eq!(message["Mark"], number("mark"), "{file}");
        let status: Vec<&str> = message["Status"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|name| name.as_str().expect("a name"))
            .collect();
        let line = entry["conntrack_line"].as_str().expect("conntrack_line");
        assert_eq!(
            status.contains(&"ASSURED"),
            line.contains("[ASSURED]"),
            "{file}"
        );
        assert_eq!(
            !status.contains(&"SEEN_REPLY"),
            line.contains("[UNREPLIED]"),
            "{file}"
        );
        if entry["l4proto"] == 1 || entry["l4proto"] == 58 {
            let icmp = &message["Icmp"];
            assert_eq!(icmp["Type"], number("type"), "{file}");
            assert_eq!(icmp["Code"], number("code"), "{file}");
        } else {
            assert_eq!(message["Icmp"], Value::Null, "{file}");
        }
        if entry["l4proto"] != 6 {
            assert_eq!(message["State"], Value::Null, "{file}");
        }
    }
}

#[test]
fn golden_captures_cover_each_kind_of_value() {
    // So the golden tests above cannot pass on captures that all say null or 0.
    let messages: Vec<(String, Value)> = manifest()
        .iter()
        .map(|e| {
            let file = file_of(e).to_string();
            let message = json_with(&decode_file(&file), Fields::all());
            (file, message)
        })
        .collect();
    let any = |test: &dyn Fn(&Value) -> bool| messages.iter().any(|(_, m)| test(m));
    assert!(any(&|m| m["Stop"].is_u64() && m["Duration"].is_u64()));
    assert!(
        any(&|m| m["Start"].is_null()),
        "a capture without timestamps"
    );
    assert!(any(&|m| m["State"] == "ESTABLISHED"));
    assert!(any(&|m| m["State"] == "TIME_WAIT"));
    assert!(any(&|m| m["Zone"] == 7));
    assert!(any(&|m| m["Mark"] == 42));
    assert!(any(&|m| m["Labels"] == json!([1])));
    assert!(
        any(&|m| m["Labels"].is_null()),
        "an event that does not change the labels"
    );
    assert!(any(&|m| m["Icmp"]["Type"] == 128));
    assert!(any(&|m| m["Status"]
        .as_array()
        .is_some_and(|s| s.len() >= 4)));
    for (file, message) in &messages {
        if message["Type"] != "DESTROY" {
            assert_eq!(message["Stop"], Value::Null, "{file}: Stop before DESTROY");
            assert_eq!(message["Duration"], Value::Null, "{file}");
        }
        if message["Type"] == "DESTROY" && message["Start"].is_u64() {
            assert!(
                message["Stop"].is_u64(),
                "{file}: DESTROY with a Start has a Stop"
            );
        }
    }
}

#[test]
fn default_message_is_the_reference_schema() {
    for entry in manifest() {
        let event = decode_file(file_of(&entry));
        assert_eq!(to_json_with(&event, Fields::NONE), to_json(&event));
        assert_eq!(keys(&json_with(&event, Fields::NONE)), REFERENCE_KEYS);
    }
}

#[test]
fn each_field_alone_adds_only_its_keys_after_assured() {
    let event = decode_file("tcp_ipv4_destroy_0.bin");
    let reference = json_with(&event, Fields::NONE);
    for (field, added) in [
        (Field::Timestamps, &["Start", "Stop", "Duration"][..]),
        (Field::State, &["State"]),
        (Field::Zone, &["Zone"]),
        (Field::Mark, &["Mark"]),
        (Field::Labels, &["Labels"]),
        (Field::Icmp, &["Icmp"]),
        (Field::Status, &["Status"]),
    ] {
        let message = json_with(&event, Fields::NONE.with(field));
        let mut want = REFERENCE_KEYS.to_vec();
        want.extend(added);
        assert_eq!(keys(&message), want, "{field:?}");
        for key in REFERENCE_KEYS {
            assert_eq!(message[key], reference[key], "{field:?} changed {key}");
        }
    }
}

#[test]
fn field_names_parse_in_any_order_and_case_and_the_order_is_fixed() {
    let given = Fields::parse(["Status", " icmp", "", "timestamps", "status"]).expect("parses");
    let event = decode_file("icmp_ipv4_destroy_0.bin");
    assert_eq!(
        keys(&json_with(&event, given))[7..],
        ["Start", "Stop", "Duration", "Icmp", "Status"]
    );
    assert_eq!(Fields::parse([]), Ok(Fields::NONE));
    let all: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
    assert_eq!(
        all,
        [
            "timestamps",
            "state",
            "zone",
            "mark",
            "labels",
            "icmp",
            "status"
        ]
    );
    assert_eq!(Fields::parse(all.iter().copied()), Ok(Fields::all()));
    let error = Fields::parse(["state", "flags"]).expect_err("unknown");
    assert_eq!(
        error,
        "unknown field \"flags\": expected timestamps, state, zone, mark, labels, icmp, status"
    );
}

#[test]
fn raw_bytes_of_the_opt_in_fields() {
    // The exact bytes after ASSURED, so spacing, nulls and lists are pinned.
    let entry = manifest()
        .into_iter()
        .find(|e| e["file"] == "udp_ipv4_new_marklabel_0.bin")
        .expect("in the manifest");
    assert!(
        entry["timestamp_start_ns"].is_null(),
        "NEW events carry no flow times"
    );
    let event = decode_file("udp_ipv4_new_marklabel_0.bin");
    let text = String::from_utf8(to_json_with(&event, Fields::all())).expect("utf-8");
    let tail = "\"UNREPLIED\":true,\"ASSURED\":false,\"Start\":null,\"Stop\":null,\
                \"Duration\":null,\"State\":null,\"Zone\":0,\"Mark\":42,\"Labels\":[1],\
                \"Icmp\":null,\"Status\":[\"CONFIRMED\"]}";
    assert!(text.ends_with(tail), "{text}");
    assert!(text.starts_with(&format!("{{\"Timestamp\":{TIMESTAMP_MS},")));
}

/// Rewrites the CTA_STATUS value of a capture (the attribute: length 8, type 3, be32).
fn with_status(file: &str, old: u32, new: u32) -> Vec<u8> {
    let mut message = capture(file);
    let mut attribute = vec![8, 0, 3, 0];
    attribute.extend(old.to_be_bytes());
    let at = find(&message, &attribute).expect("the CTA_STATUS attribute") + 4;
    message[at..at + 4].copy_from_slice(&new.to_be_bytes());
    message
}

#[test]
fn offloaded_flows_say_so_in_status() {
    let entry = manifest()
        .into_iter()
        .find(|e| e["file"] == "tcp_ipv4_destroy_0.bin")
        .expect("in the manifest");
    let status = entry["status"].as_u64().expect("status") as u32;
    for (bits, names) in [
        (1 << 14, &["OFFLOAD"][..]),
        (1 << 15, &["HW_OFFLOAD"]),
        (3 << 14, &["OFFLOAD", "HW_OFFLOAD"]),
        // Bits the kernel has not named are left out.
        (1 << 20, &[]),
    ] {
        let message = with_status("tcp_ipv4_destroy_0.bin", status, status | bits);
        let event = decode(&message, TIMESTAMP_MS).expect("decodes");
        let json = json_with(&event, Fields::NONE.with(Field::Status));
        let mut want = vec!["SEEN_REPLY", "ASSURED", "CONFIRMED", "DYING"];
        want.extend(names);
        assert_eq!(json["Status"], json!(want), "{bits:#x}");
    }
}

#[test]
fn labels_across_all_128_bits() {
    let file = "udp_ipv4_new_marklabel_0.bin";
    let mut message = capture(file);
    let old = [2u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let at = find(&message, &old).expect("the CTA_LABELS value");
    // Native-endian 32-bit words: labels 0 | 33, 63 | 64 | 127.
    let words: [u32; 4] = [1, (1 << 1) | (1 << 31), 1, 1 << 31];
    let new: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    message[at..at + 16].copy_from_slice(&new);
    let event = decode(&message, TIMESTAMP_MS).expect("decodes");
    let json = json_with(&event, Fields::NONE.with(Field::Labels));
    assert_eq!(json["Labels"], json!([0, 33, 63, 64, 127]));
}

#[test]
fn tcp_states_by_name_through_a_connection() {
    let states: Vec<Value> = [
        "tcp_ipv4_new_0.bin",
        "tcp_ipv4_update_0.bin",
        "tcp_ipv4_update_1.bin",
        "tcp_ipv4_update_2.bin",
        "tcp_ipv4_destroy_0.bin",
    ]
    .iter()
    .map(|file| json_with(&decode_file(file), Fields::NONE.with(Field::State))["State"].clone())
    .collect();
    assert_eq!(
        states,
        [
            "SYN_SENT",
            "SYN_RECV",
            "ESTABLISHED",
            "FIN_WAIT",
            "TIME_WAIT"
        ]
    );
}

/// Builds a `serde_json::Value` from the schema's walk: a third form of the message.
#[derive(Default)]
struct ValueBuilder {
    open: Vec<(Option<Key>, Value)>,
    key: Option<Key>,
    root: Option<Value>,
}

impl ValueBuilder {
    fn insert(&mut self, value: Value) {
        match self.open.last_mut() {
            Some((_, Value::Object(map))) => {
                let key = self.key.take().expect("a key before each object value");
                map.insert(key.name().to_string(), value);
            }
            Some((_, Value::Array(items))) => items.push(value),
            _ => panic!("a value outside any object"),
        }
    }
}

impl Visitor for ValueBuilder {
    type Error = std::convert::Infallible;

    fn begin_object(&mut self) -> Result<(), Self::Error> {
        self.open.push((self.key.take(), Value::Object(Map::new())));
        Ok(())
    }

    fn begin_list(&mut self) -> Result<(), Self::Error> {
        self.open.push((self.key.take(), Value::Array(Vec::new())));
        Ok(())
    }

    fn end(&mut self) -> Result<(), Self::Error> {
        let (key, value) = self.open.pop().expect("end closes what was opened");
        if self.open.is_empty() {
            self.root = Some(value);
        } else {
            self.key = key;
            self.insert(value);
        }
        Ok(())
    }

    fn key(&mut self, key: Key) -> Result<(), Self::Error> {
        assert!(self.key.is_none(), "two keys in a row");
        self.key = Some(key);
        Ok(())
    }

    fn scalar(&mut self, value: Scalar) -> Result<(), Self::Error> {
        self.insert(match value {
            Scalar::Uint(number) => json!(number),
            Scalar::Bool(flag) => json!(flag),
            Scalar::Text(text) => json!(text),
            Scalar::Address(address) => json!(address.map(|a| a.to_string()).unwrap_or_default()),
            Scalar::Null => Value::Null,
        });
        Ok(())
    }
}

#[test]
fn the_walk_and_the_json_writer_agree_byte_for_byte() {
    for entry in manifest() {
        let file = file_of(&entry);
        let event = decode_file(file);
        for fields in [Fields::NONE, Fields::all()] {
            let mut builder = ValueBuilder::default();
            let Ok(()) = walk(&event, fields, &mut builder);
            let walked = serde_json::to_string(&builder.root.expect("an object")).expect("text");
            let written = String::from_utf8(to_json_with(&event, fields)).expect("utf-8");
            assert_eq!(walked, written, "{file}");
        }
    }
}

#[test]
fn key_table_is_indexed_by_key() {
    for (index, key) in Key::ALL.iter().enumerate() {
        assert_eq!(key.index(), index, "{key:?}");
    }
    let names: std::collections::HashSet<&str> = Key::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(names.len(), Key::ALL.len(), "a key spelled twice");
}

#[test]
fn every_truncation_with_every_field_is_valid_json_or_an_error() {
    for entry in manifest() {
        let bytes = capture(file_of(&entry));
        for length in 0..bytes.len() {
            let mut cut = bytes[..length].to_vec();
            if cut.len() >= 4 {
                cut[..4].copy_from_slice(&(length as u32).to_ne_bytes());
            }
            if let Ok(event) = decode(&cut, TIMESTAMP_MS) {
                let json = to_json_with(&event, Fields::all());
                assert!(serde_json::from_slice::<Value>(&json).is_ok());
            }
        }
    }
}

#[test]
fn labels_of_a_broken_length_are_malformed() {
    let file = "udp_ipv4_new_marklabel_0.bin";
    let message = capture(file);
    let value = [2u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let at = find(&message, &value).expect("the CTA_LABELS value");
    // The attribute header sits just before its value: shorten the length by 2.
    let mut broken = message.clone();
    let length = u16::from_ne_bytes([broken[at - 4], broken[at - 3]]);
    assert_eq!(length, 20);
    broken[at - 4..at - 2].copy_from_slice(&18u16.to_ne_bytes());
    assert!(decode(&broken, TIMESTAMP_MS).is_err());
}

#[test]
fn raw_bytes_of_a_destroy_with_times_and_icmp() {
    let entry = manifest()
        .into_iter()
        .find(|e| e["file"] == "icmp_ipv4_destroy_0.bin")
        .expect("in the manifest");
    let ms = |key: &str| entry[key].as_u64().expect("a time") / 1_000_000;
    let (start, stop) = (ms("timestamp_start_ns"), ms("timestamp_stop_ns"));
    let event = decode_file("icmp_ipv4_destroy_0.bin");
    let text = String::from_utf8(to_json_with(&event, Fields::all())).expect("utf-8");
    let tail = format!(
        "\"ASSURED\":false,\"Start\":{start},\"Stop\":{stop},\"Duration\":{duration},\
         \"State\":null,\"Zone\":0,\"Mark\":0,\"Labels\":null,\
         \"Icmp\":{{\"Type\":8,\"Code\":0,\"Id\":4660}},\"Status\":[\"SEEN_REPLY\",\"CONFIRMED\",\"DYING\"]}}",
        duration = stop - start
    );
    assert!(text.ends_with(&tail), "{text}");
}
