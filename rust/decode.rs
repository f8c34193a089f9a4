//! Netlink bytes to `Event`.
//!
//! `netlink-packet-netfilter` parses the headers, tuples, status and mark. What it leaves as
//! raw attributes (id, counters, zone, timestamps, labels, ICMP identity) is read here. No input
//! panics: anything malformed is an `Err`, which the reader counts and skips.

use std::borrow::Cow;

use netlink_packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};

use crate::event::{Direction, Event, EventType, Icmp};

// Top-level attributes the crate leaves raw (`enum ctattr_type`).
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TIMESTAMP: u16 = 20;
const CTA_LABELS: u16 = 22;

// Inside CTA_COUNTERS_* (`enum ctattr_counters`).
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_COUNTERS32_PACKETS: u16 = 3;
const CTA_COUNTERS32_BYTES: u16 = 4;

// Inside CTA_TIMESTAMP (`enum ctattr_tstamp`).
const CTA_TIMESTAMP_START: u16 = 1;
const CTA_TIMESTAMP_STOP: u16 = 2;

// Inside CTA_TUPLE_PROTO (`enum ctattr_l4proto`), left raw by the crate.
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;

const NLA_TYPE_MASK: u16 = 0x3fff;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
// nlmsg_type of the two conntrack events: (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_*.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

/// Why a message was not turned into an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not a conntrack event (a netlink control message, an expectation, ...): not an error.
    NotAnEvent,
    /// Malformed or truncated: counted as a decode error.
    Malformed(String),
}

/// Splits one received datagram into its netlink messages. A broken length ends the walk
/// with one `Err` for the rest of the datagram.
pub fn split_messages(datagram: &[u8]) -> impl Iterator<Item = Result<&[u8], Skip>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let declared = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(|b: [u8; 4]| u32::from_ne_bytes(b) as usize);
        match declared {
            Some(len) if len >= NLMSG_HDRLEN && len <= rest.len() => {
                let message = rest.get(..len).unwrap_or(&[]);
                let aligned = (len + 3) & !3;
                rest = rest.get(aligned..).unwrap_or(&[]);
                Some(Ok(message))
            }
            _ => {
                let len = rest.len();
                rest = &[];
                Some(Err(Skip::Malformed(format!(
                    "netlink message length does not fit the {len} bytes left"
                ))))
            }
        }
    })
}

/// Decodes one netlink message (header included) received at `timestamp_ms`.
pub fn decode(message: &[u8], timestamp_ms: u64) -> Result<Event, Skip> {
    // Only conntrack events reach the crate's parser: it parses every nfnetlink subsystem,
    // and its nftables parser panics on some malformed attributes (found by fuzzing).
    if message.len() >= NLMSG_HDRLEN && !is_conntrack_event(message) {
        return Err(Skip::NotAnEvent);
    }
    let message = without_empty_attributes(message);
    let parsed = NetlinkMessage::<NetfilterMessage>::deserialize(&message)
        .map_err(|e| Skip::Malformed(e.to_string()))?;
    let flags = parsed.header.flags;
    let NetlinkPayload::InnerMessage(netfilter) = parsed.payload else {
        return Err(Skip::NotAnEvent);
    };
    let (event_type, attributes) = match netfilter.inner {
        NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)) => {
            // How libnetfilter_conntrack (and so `conntrack -E`) tells a new flow from a change.
            if flags & (NLM_F_CREATE | NLM_F_EXCL) != 0 {
                (EventType::New, attributes)
            } else {
                (EventType::Update, attributes)
            }
        }
        NetfilterMessageInner::Conntrack(ConntrackMessage::Delete(attributes)) => {
            (EventType::Destroy, attributes)
        }
        _ => return Err(Skip::NotAnEvent),
    };

    let mut event = Event {
        timestamp_ms,
        event_type,
        id: 0,
        l3proto: u8::from(netfilter.header.family),
        original: Direction::default(),
        reply: Direction::default(),
        status: 0,
        mark: None,
        zone: None,
        tcp_state: None,
        labels: None,
        start_ns: None,
        stop_ns: None,
    };
    let mut has_original = false;
    for attribute in &attributes {
        match attribute {
            ConntrackAttribute::CtaTupleOrig(tuple) => {
                read_tuple(tuple, &mut event.original)?;
                has_original = true;
            }
            ConntrackAttribute::CtaTupleReply(tuple) => read_tuple(tuple, &mut event.reply)?,
            ConntrackAttribute::CtaStatus(status) => event.status = status.bits(),
            ConntrackAttribute::CtaMark(mark) => event.mark = Some(*mark),
            ConntrackAttribute::CtaProtoInfo(infos) => event.tcp_state = tcp_state(infos),
            ConntrackAttribute::Other(nla) => read_raw_attribute(nla, &mut event)?,
            _ => {}
        }
    }
    if !has_original {
        return Err(Skip::Malformed(
            "conntrack event without CTA_TUPLE_ORIG".into(),
        ));
    }
    Ok(event)
}

fn is_conntrack_event(message: &[u8]) -> bool {
    let message_type = message
        .get(4..6)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_ne_bytes);
    message_type.is_some_and(|t| {
        t >> 8 == NFNL_SUBSYS_CTNETLINK
            && matches!(t & 0xff, IPCTNL_MSG_CT_NEW | IPCTNL_MSG_CT_DELETE)
    })
}

/// Drops empty top-level attributes. On architectures that align 64-bit attributes the
/// kernel pads CTA_TIMESTAMP_EVENT with an empty CTA_TIMESTAMP_PAD, whose number (3) is
/// CTA_STATUS at the top level; the crate would reject the whole message over it.
fn without_empty_attributes(message: &[u8]) -> Cow<'_, [u8]> {
    let Some(attributes) = message.get(NLMSG_HDRLEN + NFGENMSG_LEN..) else {
        return Cow::Borrowed(message);
    };
    let is_empty = |nla: &NlaBuffer<&[u8]>| usize::from(nla.length()) <= NLA_HDRLEN;
    if !NlasIterator::new(attributes).any(|nla| nla.is_ok_and(|nla| is_empty(&nla))) {
        return Cow::Borrowed(message);
    }
    let mut kept = message
        .get(..NLMSG_HDRLEN + NFGENMSG_LEN)
        .unwrap_or(&[])
        .to_vec();
    for nla in NlasIterator::new(attributes).flatten() {
        if !is_empty(&nla) {
            let length = usize::from(nla.length());
            kept.extend_from_slice(nla.into_inner().get(..length).unwrap_or(&[]));
            kept.resize((kept.len() + 3) & !3, 0);
        }
    }
    let total = u32::try_from(kept.len()).unwrap_or(u32::MAX);
    if let Some(header) = kept.get_mut(..4) {
        header.copy_from_slice(&total.to_ne_bytes());
    }
    Cow::Owned(kept)
}

fn read_tuple(tuple: &[Tuple], direction: &mut Direction) -> Result<(), Skip> {
    for part in tuple {
        match part {
            Tuple::Ip(addresses) => {
                for address in addresses {
                    match address {
                        IPTuple::SourceAddress(ip) => direction.src = Some(*ip),
                        IPTuple::DestinationAddress(ip) => direction.dst = Some(*ip),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(fields) => read_proto_tuple(fields, direction)?,
            _ => {}
        }
    }
    // GRE keys travel in the port attributes; they are not ports.
    if !crate::event::has_ports(direction.l4proto) {
        direction.sport = 0;
        direction.dport = 0;
    }
    Ok(())
}

fn read_proto_tuple(fields: &[ProtoTuple], direction: &mut Direction) -> Result<(), Skip> {
    for field in fields {
        match field {
            ProtoTuple::Protocol(proto) => direction.l4proto = u8::from(*proto),
            ProtoTuple::SourcePort(port) => direction.sport = *port,
            ProtoTuple::DestinationPort(port) => direction.dport = *port,
            ProtoTuple::Other(nla) => {
                let value = nla_value(nla);
                match nla.kind() & NLA_TYPE_MASK {
                    CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                        icmp_of(direction).id = be_u16(&value)?
                    }
                    CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                        icmp_of(direction).icmp_type = be_u8(&value)?
                    }
                    CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                        icmp_of(direction).code = be_u8(&value)?
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn icmp_of(direction: &mut Direction) -> &mut Icmp {
    direction.icmp.get_or_insert_with(Icmp::default)
}

fn tcp_state(infos: &[ProtoInfo]) -> Option<u8> {
    infos.iter().find_map(|info| match info {
        ProtoInfo::TCP(fields) => fields.iter().find_map(|field| match field {
            ProtoInfoTCP::State(state) => Some(*state),
            _ => None,
        }),
        _ => None,
    })
}

fn read_raw_attribute(nla: &DefaultNla, event: &mut Event) -> Result<(), Skip> {
    let kind = nla.kind() & NLA_TYPE_MASK;
    match kind {
        CTA_ID => event.id = be_u32(&nla_value(nla))?,
        CTA_ZONE => event.zone = Some(be_u16(&nla_value(nla))?),
        CTA_COUNTERS_ORIG => read_counters(&nla_value(nla), &mut event.original)?,
        CTA_COUNTERS_REPLY => read_counters(&nla_value(nla), &mut event.reply)?,
        CTA_TIMESTAMP => {
            for inner in NlasIterator::new(&nla_value(nla)[..]) {
                let inner = inner.map_err(|e| Skip::Malformed(e.to_string()))?;
                match inner.kind() {
                    CTA_TIMESTAMP_START => event.start_ns = Some(be_u64(inner.value())?),
                    CTA_TIMESTAMP_STOP => event.stop_ns = Some(be_u64(inner.value())?),
                    _ => {}
                }
            }
        }
        CTA_LABELS => event.labels = Some(labels(&nla_value(nla))?),
        // Unknown attributes (helper, sequence adjustments, ...) are skipped.
        _ => {}
    }
    Ok(())
}

/// The label bitmap: native-endian 32-bit words, as libnetfilter_conntrack reads them.
/// Words past the kernel's 128 bits (NF_CT_LABELS_MAX_SIZE) would be a newer kernel's;
/// they are ignored rather than costing the event.
fn labels(value: &[u8]) -> Result<u128, Skip> {
    if value.len() % 4 != 0 {
        return Err(Skip::Malformed(format!(
            "CTA_LABELS of {} bytes, not a whole number of 32-bit words",
            value.len()
        )));
    }
    let mut bits = 0u128;
    for (index, word) in value.chunks_exact(4).take(4).enumerate() {
        let word = u32::from_ne_bytes(exact(word)?);
        bits |= u128::from(word) << (32 * index);
    }
    Ok(bits)
}

fn read_counters(value: &[u8], direction: &mut Direction) -> Result<(), Skip> {
    for inner in NlasIterator::new(value) {
        let inner = inner.map_err(|e| Skip::Malformed(e.to_string()))?;
        match inner.kind() {
            CTA_COUNTERS_PACKETS => direction.packets = be_u64(inner.value())?,
            CTA_COUNTERS_BYTES => direction.bytes = be_u64(inner.value())?,
            CTA_COUNTERS32_PACKETS => direction.packets = u64::from(be_u32(inner.value())?),
            CTA_COUNTERS32_BYTES => direction.bytes = u64::from(be_u32(inner.value())?),
            _ => {}
        }
    }
    Ok(())
}

/// The crate keeps a raw attribute's value private; `emit_value` is its one way out.
fn nla_value(nla: &DefaultNla) -> Vec<u8> {
    let mut value = vec![0; nla.value_len()];
    nla.emit_value(&mut value);
    value
}

fn exact<const N: usize>(value: &[u8]) -> Result<[u8; N], Skip> {
    value.try_into().map_err(|_| {
        Skip::Malformed(format!(
            "attribute of {} bytes where {N} were expected",
            value.len()
        ))
    })
}

fn be_u8(value: &[u8]) -> Result<u8, Skip> {
    Ok(exact::<1>(value)?[0])
}

fn be_u16(value: &[u8]) -> Result<u16, Skip> {
    exact(value).map(u16::from_be_bytes)
}

fn be_u32(value: &[u8]) -> Result<u32, Skip> {
    exact(value).map(u32::from_be_bytes)
}

fn be_u64(value: &[u8]) -> Result<u64, Skip> {
    exact(value).map(u64::from_be_bytes)
}
