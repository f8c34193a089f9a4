//! `Event` to the JSON message of the reference (aarnaud/conntrack-event-collector), written
//! straight into bytes: the publisher's fast path.
//!
//! Keys, order and casing are the contract (README, "The message"). Every string we
//! write is an address or a fixed name, so nothing needs escaping.

use std::io::Write;

use crate::event::{l4proto_name, Direction, Event};

/// Appends the event's JSON object to `out`.
pub fn write_event(event: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"Timestamp\":");
    write_uint(out, event.timestamp_ms);
    out.extend_from_slice(b",\"Type\":\"");
    out.extend_from_slice(event.event_type.name().as_bytes());
    out.extend_from_slice(b"\",\"Id\":");
    write_uint(out, u64::from(event.id));
    out.extend_from_slice(b",\"Original\":");
    write_direction(event, &event.original, out);
    out.extend_from_slice(b",\"Reply\":");
    write_direction(event, &event.reply, out);
    out.extend_from_slice(b",\"UNREPLIED\":");
    out.extend_from_slice(bool_text(event.unreplied()));
    out.extend_from_slice(b",\"ASSURED\":");
    out.extend_from_slice(bool_text(event.assured()));
    out.push(b'}');
}

pub fn to_json(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(480);
    write_event(event, &mut out);
    out
}

fn write_direction(event: &Event, direction: &Direction, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"Layer3\":{\"Protonum\":");
    write_uint(out, u64::from(event.l3proto));
    out.extend_from_slice(b",\"Protoname\":\"");
    out.extend_from_slice(event.l3proto_name().as_bytes());
    out.extend_from_slice(b"\",\"Src\":\"");
    write_address(out, direction.src);
    out.extend_from_slice(b"\",\"Dst\":\"");
    write_address(out, direction.dst);
    out.extend_from_slice(b"\"},\"Layer4\":{\"Protonum\":");
    write_uint(out, u64::from(direction.l4proto));
    out.extend_from_slice(b",\"Protoname\":\"");
    out.extend_from_slice(l4proto_name(direction.l4proto).as_bytes());
    out.extend_from_slice(b"\",\"Sport\":");
    write_uint(out, u64::from(direction.sport));
    out.extend_from_slice(b",\"Dport\":");
    write_uint(out, u64::from(direction.dport));
    out.extend_from_slice(b"},\"Counter\":{\"Packets\":");
    write_uint(out, direction.packets);
    out.extend_from_slice(b",\"Bytes\":");
    write_uint(out, direction.bytes);
    out.extend_from_slice(b"}}");
}

fn write_uint(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn write_address(out: &mut Vec<u8>, address: Option<std::net::IpAddr>) {
    if let Some(address) = address {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{address}");
    }
}

fn bool_text(value: bool) -> &'static [u8] {
    if value {
        b"true"
    } else {
        b"false"
    }
}
