//! The message's schema, described once: its keys, their order and their values.
//!
//! `walk` visits an event's message key by key; `json.rs` turns the visit into bytes and
//! `python.rs` into a dict, so the two forms cannot differ. The reference's keys come first,
//! unchanged; the opt-in `Fields` follow `ASSURED`, always in the order of `Field::ALL`.

use std::net::IpAddr;

use crate::event::{l4proto_name, Direction, Event};

/// The opt-in groups of keys, in the order they appear in a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `Start`, `Stop`, `Duration`.
    Timestamps,
    /// `State`.
    State,
    /// `Zone`.
    Zone,
    /// `Mark`.
    Mark,
    /// `Labels`.
    Labels,
    /// `Icmp`.
    Icmp,
    /// `Status`.
    Status,
}

impl Field {
    pub const ALL: [Field; 7] = [
        Field::Timestamps,
        Field::State,
        Field::Zone,
        Field::Mark,
        Field::Labels,
        Field::Icmp,
        Field::Status,
    ];

    /// The name users give it (`--fields timestamps,state`).
    pub fn name(self) -> &'static str {
        match self {
            Field::Timestamps => "timestamps",
            Field::State => "state",
            Field::Zone => "zone",
            Field::Mark => "mark",
            Field::Labels => "labels",
            Field::Icmp => "icmp",
            Field::Status => "status",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of opt-in fields; the empty set is the reference's message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fields(u8);

impl Fields {
    pub const NONE: Fields = Fields(0);

    pub fn all() -> Fields {
        Field::ALL.into_iter().fold(Fields::NONE, Fields::with)
    }

    pub fn with(self, field: Field) -> Fields {
        Fields(self.0 | field.bit())
    }

    pub fn contains(self, field: Field) -> bool {
        self.0 & field.bit() != 0
    }

    /// Names as users write them, any case; blanks are skipped, repeats harmless.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Fields, String> {
        let mut fields = Fields::NONE;
        for name in names.into_iter().map(str::trim).filter(|n| !n.is_empty()) {
            let field = Field::ALL
                .into_iter()
                .find(|f| f.name().eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    let known: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
                    format!("unknown field {name:?}: expected {}", known.join(", "))
                })?;
            fields = fields.with(field);
        }
        Ok(fields)
    }
}

/// Defines `Key` from one list of variants and their spellings in the message.
macro_rules! keys {
    ($($variant:ident => $name:literal,)*) => {
        /// Every key of the message. Nested objects reuse names (`Icmp` has its own `Type`, `Id`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Key {
            $($variant,)*
        }

        impl Key {
            pub const ALL: [Key; [$(Key::$variant),*].len()] = [$(Key::$variant),*];

            /// Its spelling in the message: the reference's casing.
            pub fn name(self) -> &'static str {
                match self {
                    $(Key::$variant => $name,)*
                }
            }

            /// `,"Name":` in one piece, for the JSON writer (which drops the comma after `{`).
            pub fn json_with_comma(self) -> &'static [u8] {
                match self {
                    $(Key::$variant => concat!(",\"", $name, "\":").as_bytes(),)*
                }
            }
        }
    };
}

keys! {
    Timestamp => "Timestamp",
    Type => "Type",
    Id => "Id",
    Original => "Original",
    Reply => "Reply",
    Layer3 => "Layer3",
    Layer4 => "Layer4",
    Counter => "Counter",
    Protonum => "Protonum",
    Protoname => "Protoname",
    Src => "Src",
    Dst => "Dst",
    Sport => "Sport",
    Dport => "Dport",
    Packets => "Packets",
    Bytes => "Bytes",
    Unreplied => "UNREPLIED",
    Assured => "ASSURED",
    Start => "Start",
    Stop => "Stop",
    Duration => "Duration",
    State => "State",
    Zone => "Zone",
    Mark => "Mark",
    Labels => "Labels",
    Icmp => "Icmp",
    Code => "Code",
    Status => "Status",
}

impl Key {
    /// Its position in `Key::ALL`, for tables indexed by key.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A value without parts. Every `Text` is a fixed name: nothing needs escaping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    Uint(u64),
    Bool(bool),
    Text(&'static str),
    /// An address as text; the empty string when the kernel sent none.
    Address(Option<IpAddr>),
    Null,
}

/// What a form of the message does with the walk: a key, then its value (a scalar, or an
/// object or list closed by `end`); list items come without a key.
pub trait Visitor {
    type Error;
    fn begin_object(&mut self) -> Result<(), Self::Error>;
    fn begin_list(&mut self) -> Result<(), Self::Error>;
    /// Closes the innermost object or list.
    fn end(&mut self) -> Result<(), Self::Error>;
    fn key(&mut self, key: Key) -> Result<(), Self::Error>;
    fn scalar(&mut self, value: Scalar) -> Result<(), Self::Error>;
}

fn entry<V: Visitor>(v: &mut V, key: Key, value: Scalar) -> Result<(), V::Error> {
    v.key(key)?;
    v.scalar(value)
}

fn optional(value: Option<u64>) -> Scalar {
    value.map_or(Scalar::Null, Scalar::Uint)
}

/// The message of `event`, with the opt-in `fields`, in order.
pub fn walk<V: Visitor>(event: &Event, fields: Fields, v: &mut V) -> Result<(), V::Error> {
    v.begin_object()?;
    entry(v, Key::Timestamp, Scalar::Uint(event.timestamp_ms))?;
    entry(v, Key::Type, Scalar::Text(event.event_type.name()))?;
    entry(v, Key::Id, Scalar::Uint(u64::from(event.id)))?;
    v.key(Key::Original)?;
    direction(event, &event.original, v)?;
    v.key(Key::Reply)?;
    direction(event, &event.reply, v)?;
    entry(v, Key::Unreplied, Scalar::Bool(event.unreplied()))?;
    entry(v, Key::Assured, Scalar::Bool(event.assured()))?;
    for field in Field::ALL.into_iter().filter(|f| fields.contains(*f)) {
        opt_in(event, field, v)?;
    }
    v.end()
}

fn direction<V: Visitor>(event: &Event, direction: &Direction, v: &mut V) -> Result<(), V::Error> {
    v.begin_object()?;
    v.key(Key::Layer3)?;
    v.begin_object()?;
    entry(v, Key::Protonum, Scalar::Uint(u64::from(event.l3proto)))?;
    entry(v, Key::Protoname, Scalar::Text(event.l3proto_name()))?;
    entry(v, Key::Src, Scalar::Address(direction.src))?;
    entry(v, Key::Dst, Scalar::Address(direction.dst))?;
    v.end()?;
    v.key(Key::Layer4)?;
    v.begin_object()?;
    entry(v, Key::Protonum, Scalar::Uint(u64::from(direction.l4proto)))?;
    entry(
        v,
        Key::Protoname,
        Scalar::Text(l4proto_name(direction.l4proto)),
    )?;
    entry(v, Key::Sport, Scalar::Uint(u64::from(direction.sport)))?;
    entry(v, Key::Dport, Scalar::Uint(u64::from(direction.dport)))?;
    v.end()?;
    v.key(Key::Counter)?;
    v.begin_object()?;
    entry(v, Key::Packets, Scalar::Uint(direction.packets))?;
    entry(v, Key::Bytes, Scalar::Uint(direction.bytes))?;
    v.end()?;
    v.end()
}

/// One opt-in field. An attribute the event lacks is a number where the lack has a meaning
/// (the kernel leaves out zone 0 and mark 0), and null where it has none: the kernel sends a
/// flow's times only with DESTROY (and only with nf_conntrack_timestamp=1), its labels and
/// its TCP state only in events that change them (NEW always has the state).
fn opt_in<V: Visitor>(event: &Event, field: Field, v: &mut V) -> Result<(), V::Error> {
    match field {
        Field::Timestamps => {
            entry(v, Key::Start, optional(event.start_ms()))?;
            entry(v, Key::Stop, optional(event.stop_ms()))?;
            entry(v, Key::Duration, optional(event.duration_ms()))
        }
        Field::State => entry(
            v,
            Key::State,
            event.tcp_state_name().map_or(Scalar::Null, Scalar::Text),
        ),
        Field::Zone => entry(
            v,
            Key::Zone,
            Scalar::Uint(u64::from(event.zone.unwrap_or(0))),
        ),
        Field::Mark => entry(
            v,
            Key::Mark,
            Scalar::Uint(u64::from(event.mark.unwrap_or(0))),
        ),
        Field::Labels => {
            v.key(Key::Labels)?;
            let Some(bits) = event.label_bits() else {
                return v.scalar(Scalar::Null);
            };
            v.begin_list()?;
            for bit in bits {
                v.scalar(Scalar::Uint(u64::from(bit)))?;
            }
            v.end()
        }
        Field::Icmp => {
            v.key(Key::Icmp)?;
            // The original direction's: the reply's type is the answer's (8 -> 0).
            match event.original.icmp {
                None => v.scalar(Scalar::Null),
                Some(icmp) => {
                    v.begin_object()?;
                    entry(v, Key::Type, Scalar::Uint(u64::from(icmp.icmp_type)))?;
                    entry(v, Key::Code, Scalar::Uint(u64::from(icmp.code)))?;
                    entry(v, Key::Id, Scalar::Uint(u64::from(icmp.id)))?;
                    v.end()
                }
            }
        }
        Field::Status => {
            v.key(Key::Status)?;
            v.begin_list()?;
            for name in event.status_names() {
                v.scalar(Scalar::Text(name))?;
            }
            v.end()
        }
    }
}
