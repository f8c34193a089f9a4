//! One conntrack event, as decoded from the kernel: plain data, no Python, no JSON.

use std::net::IpAddr;

/// The three kinds of event, named as `conntrack -E` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    New,
    Update,
    Destroy,
}

/// Multicast groups of ctnetlink (`enum nfnetlink_groups`).
pub const NFNLGRP_CONNTRACK_NEW: u32 = 1;
pub const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
pub const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

impl EventType {
    pub const ALL: [EventType; 3] = [EventType::New, EventType::Update, EventType::Destroy];

    pub fn name(self) -> &'static str {
        match self {
            EventType::New => "NEW",
            EventType::Update => "UPDATE",
            EventType::Destroy => "DESTROY",
        }
    }

    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name.trim()))
    }

    /// 0, 1, 2 in the kernel's order, for per-type counters.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn multicast_group(self) -> u32 {
        match self {
            EventType::New => NFNLGRP_CONNTRACK_NEW,
            EventType::Update => NFNLGRP_CONNTRACK_UPDATE,
            EventType::Destroy => NFNLGRP_CONNTRACK_DESTROY,
        }
    }
}

/// One direction of a flow: its tuple and its counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Direction {
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// The IP protocol number of this direction's tuple.
    pub l4proto: u8,
    /// 0 for protocols without ports.
    pub sport: u16,
    pub dport: u16,
    pub packets: u64,
    pub bytes: u64,
    pub icmp: Option<Icmp>,
}

/// ICMP or ICMPv6 identity of a flow's tuple.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Icmp {
    pub icmp_type: u8,
    pub code: u8,
    pub id: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// When the reader received the event, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub event_type: EventType,
    /// CTA_ID: the same for the NEW and the DESTROY of one flow.
    pub id: u32,
    /// Address family from the nfgenmsg header: 2 (AF_INET) or 10 (AF_INET6).
    pub l3proto: u8,
    pub original: Direction,
    pub reply: Direction,
    /// CTA_STATUS bits (`enum ip_conntrack_status`).
    pub status: u32,
    pub mark: Option<u32>,
    pub zone: Option<u16>,
    /// CTA_PROTOINFO_TCP_STATE (`enum tcp_conntrack`), for TCP flows.
    pub tcp_state: Option<u8>,
    /// CTA_LABELS: bit n set means label n (the kernel has 128 of them). Events carry it
    /// only when the labels changed.
    pub labels: Option<u128>,
    /// CTA_TIMESTAMP start and stop, nanoseconds since the epoch (needs nf_conntrack_timestamp=1).
    pub start_ns: Option<u64>,
    pub stop_ns: Option<u64>,
}

pub const IPS_SEEN_REPLY: u32 = 1 << 1;
pub const IPS_ASSURED: u32 = 1 << 2;
pub const IPS_SRC_NAT: u32 = 1 << 4;
pub const IPS_DST_NAT: u32 = 1 << 5;
pub const IPS_SRC_NAT_DONE: u32 = 1 << 7;

/// The names of the status bits (`enum ip_conntrack_status`), bit 0 first, without `IPS_`.
/// Bit 12 is IPS_UNTRACKED, which no event carries; the kernel reuses it as IPS_NAT_CLASH.
pub const STATUS_NAMES: [&str; 16] = [
    "EXPECTED",
    "SEEN_REPLY",
    "ASSURED",
    "CONFIRMED",
    "SRC_NAT",
    "DST_NAT",
    "SEQ_ADJUST",
    "SRC_NAT_DONE",
    "DST_NAT_DONE",
    "DYING",
    "FIXED_TIMEOUT",
    "TEMPLATE",
    "NAT_CLASH",
    "HELPER",
    "OFFLOAD",
    "HW_OFFLOAD",
];

/// TCP states (`enum tcp_conntrack`) as `conntrack` prints them.
const TCP_STATE_NAMES: [&str; 10] = [
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
];

pub const NS_PER_MS: u64 = 1_000_000;

impl Event {
    pub fn unreplied(&self) -> bool {
        self.status & IPS_SEEN_REPLY == 0
    }

    pub fn assured(&self) -> bool {
        self.status & IPS_ASSURED != 0
    }

    /// Source-NATed, as `conntrack -n` filters: the kernel did source NAT and the reply
    /// goes to another address than the original came from.
    pub fn is_src_nat(&self) -> bool {
        self.status & IPS_SRC_NAT_DONE != 0 && self.original.src != self.reply.dst
    }

    pub fn l3proto_name(&self) -> &'static str {
        l3proto_name(self.l3proto)
    }

    /// The names of the status bits set, lowest bit first; bits without a name are left out.
    pub fn status_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        STATUS_NAMES
            .iter()
            .enumerate()
            .filter(|(bit, _)| self.status & (1 << bit) != 0)
            .map(|(_, name)| *name)
    }

    /// The TCP state's name; None for other protocols and for numbers without a name.
    pub fn tcp_state_name(&self) -> Option<&'static str> {
        self.tcp_state
            .and_then(|state| TCP_STATE_NAMES.get(usize::from(state)).copied())
    }

    /// The set label bits, lowest first; None when the event carries no labels.
    pub fn label_bits(&self) -> Option<impl Iterator<Item = u32>> {
        let labels = self.labels?;
        Some((0..u128::BITS).filter(move |bit| labels & (1u128 << bit) != 0))
    }

    /// The flow's start, in milliseconds since the epoch. The kernel sends a flow's times
    /// with its DESTROY event only, and only with nf_conntrack_timestamp=1.
    pub fn start_ms(&self) -> Option<u64> {
        self.start_ns.map(|ns| ns / NS_PER_MS)
    }

    /// The flow's end, likewise.
    pub fn stop_ms(&self) -> Option<u64> {
        self.stop_ns.map(|ns| ns / NS_PER_MS)
    }

    /// `stop_ms - start_ms`, so the three numbers of a message always add up.
    pub fn duration_ms(&self) -> Option<u64> {
        Some(self.stop_ms()?.saturating_sub(self.start_ms()?))
    }
}

pub fn l3proto_name(family: u8) -> &'static str {
    match family {
        2 => "ipv4",
        10 => "ipv6",
        _ => "unknown",
    }
}

/// The lower-case name `conntrack` prints for an IP protocol number.
pub fn l4proto_name(proto: u8) -> &'static str {
    match proto {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        33 => "dccp",
        47 => "gre",
        58 => "icmpv6",
        132 => "sctp",
        136 => "udplite",
        _ => "unknown",
    }
}

/// Protocols whose tuple carries ports (GRE's keys and ICMP's id are not ports).
pub fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 33 | 132 | 136)
}
