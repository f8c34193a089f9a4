//! `Event` to the JSON message of the reference (aarnaud/conntrack-event-collector), written
//! straight into bytes: the publisher's fast path.
//!
//! Keys, order and casing are the schema's (`schema.rs`, after the reference's contract: the
//! README, "The message"); this file only spells them as JSON. Every string we write is an
//! address or a fixed name, so nothing needs escaping.

use std::convert::Infallible;
use std::io::Write;

use crate::event::Event;
use crate::schema::{walk, Fields, Key, Scalar, Visitor};

/// Room for a message with long IPv6 addresses and every opt-in field (the captures' longest
/// is 701 bytes), reserved once so writing seldom regrows.
const MESSAGE_BYTES: usize = 1024;

/// Appends the event's JSON object, in the reference's schema, to `out`.
pub fn write_event(event: &Event, out: &mut Vec<u8>) {
    write_event_with(event, Fields::NONE, out);
}

/// Appends the event's JSON object with the opt-in `fields` to `out`.
pub fn write_event_with(event: &Event, fields: Fields, out: &mut Vec<u8>) {
    out.reserve(MESSAGE_BYTES);
    let mut writer = JsonWriter {
        out,
        depth: 0,
        lists: 0,
    };
    match walk(event, fields, &mut writer) {
        Ok(()) => {}
        Err(never) => match never {},
    }
}

pub fn to_json(event: &Event) -> Vec<u8> {
    to_json_with(event, Fields::NONE)
}

pub fn to_json_with(event: &Event, fields: Fields) -> Vec<u8> {
    let mut out = Vec::with_capacity(MESSAGE_BYTES);
    write_event_with(event, fields, &mut out);
    out
}

struct JsonWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Objects and lists open; at 0 nothing precedes the value in this message.
    depth: u32,
    /// One bit per open container, innermost lowest: 1 for a list. The schema nests 3 deep.
    lists: u64,
}

impl JsonWriter<'_> {
    /// A value or key that is not the first of its object or list follows a comma.
    fn separate(&mut self) {
        if self.depth > 0 && !matches!(self.out.last(), Some(b'{' | b'[' | b':')) {
            self.out.push(b',');
        }
    }

    fn open(&mut self, opener: u8, is_list: bool) {
        self.separate();
        self.out.push(opener);
        self.depth += 1;
        self.lists = (self.lists << 1) | u64::from(is_list);
    }
}

impl Visitor for JsonWriter<'_> {
    type Error = Infallible;

    fn begin_object(&mut self) -> Result<(), Infallible> {
        self.open(b'{', false);
        Ok(())
    }

    fn begin_list(&mut self) -> Result<(), Infallible> {
        self.open(b'[', true);
        Ok(())
    }

    fn end(&mut self) -> Result<(), Infallible> {
        let closer = if self.lists & 1 == 1 { b']' } else { b'}' };
        self.lists >>= 1;
        self.depth -= 1;
        self.out.push(closer);
        Ok(())
    }

    fn key(&mut self, key: Key) -> Result<(), Infallible> {
        let text = key.json_with_comma();
        // Keys only come inside objects: the first follows `{`, every other one a value.
        let text = if self.out.last() == Some(&b'{') {
            &text[1..]
        } else {
            text
        };
        self.out.extend_from_slice(text);
        Ok(())
    }

    fn scalar(&mut self, value: Scalar) -> Result<(), Infallible> {
        self.separate();
        match value {
            Scalar::Uint(number) => self
                .out
                .extend_from_slice(itoa::Buffer::new().format(number).as_bytes()),
            Scalar::Bool(true) => self.out.extend_from_slice(b"true"),
            Scalar::Bool(false) => self.out.extend_from_slice(b"false"),
            Scalar::Text(text) => {
                self.out.push(b'"');
                self.out.extend_from_slice(text.as_bytes());
                self.out.push(b'"');
            }
            Scalar::Address(address) => {
                self.out.push(b'"');
                if let Some(address) = address {
                    // Writing into a Vec cannot fail.
                    let _ = write!(self.out, "{address}");
                }
                self.out.push(b'"');
            }
            Scalar::Null => self.out.extend_from_slice(b"null"),
        }
        Ok(())
    }
}
