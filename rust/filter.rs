//! Accept and ignore rules with conntrackd's semantics, compiled to a classic BPF program for
//! the netlink socket, so the kernel never queues an event we would throw away.
//!
//! Accept = only these, Ignore = all but these. Protocols are the original tuple's; an address
//! rule matches when either address of the original tuple is in one of its subnets, and applies
//! only to events of its own family (an IPv4 list never hides IPv6 events). Both kinds of rule
//! may be given: an event is kept when it is accepted (if an accept list exists) and not ignored.
//! TCP state rules apply to TCP events that carry a state (CTA_PROTOINFO_TCP_STATE: NEW and
//! DESTROY always do, an UPDATE when the state changed); other events pass them.
//!
//! The same rules are applied in Rust (`Filter::keeps`) to whatever the kernel let through: a
//! condition left out of the program (too long for the kernel) or a message the program could
//! not judge (an attribute missing) is still decided, and counted. Plain Rust, no PyO3.

use std::net::IpAddr;

use crate::event::{l4proto_name, Event};

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Opcodes (linux/bpf_common.h, linux/filter.h).
pub const BPF_LD: u16 = 0x00;
pub const BPF_LDX: u16 = 0x01;
pub const BPF_ST: u16 = 0x02;
pub const BPF_ALU: u16 = 0x04;
pub const BPF_JMP: u16 = 0x05;
pub const BPF_RET: u16 = 0x06;
pub const BPF_MISC: u16 = 0x07;
pub const BPF_W: u16 = 0x00;
pub const BPF_H: u16 = 0x08;
pub const BPF_B: u16 = 0x10;
pub const BPF_IMM: u16 = 0x00;
pub const BPF_ABS: u16 = 0x20;
pub const BPF_IND: u16 = 0x40;
pub const BPF_MEM: u16 = 0x60;
pub const BPF_LEN: u16 = 0x80;
pub const BPF_AND: u16 = 0x50;
pub const BPF_JA: u16 = 0x00;
pub const BPF_JEQ: u16 = 0x10;
pub const BPF_JGE: u16 = 0x30;
pub const BPF_JSET: u16 = 0x40;
pub const BPF_K: u16 = 0x00;
pub const BPF_TAX: u16 = 0x00;
/// Ancillary loads: `ld [SKF_AD_OFF + n]` calls into the kernel instead of reading the packet.
pub const SKF_AD_OFF: u32 = (-0x1000i32) as u32;
/// A = offset of the first attribute of type X in the attributes from offset A on, or 0.
pub const SKF_AD_NLATTR: u32 = 12;
/// A = offset of the attribute of type X nested in the attribute at offset A, or 0.
pub const SKF_AD_NLATTR_NEST: u32 = 16;
/// The kernel refuses longer programs.
pub const BPF_MAXINSNS: usize = 4096;

// The message: nlmsghdr, nfgenmsg (its first byte is the address family), attributes.
const NLMSG_TYPE_AT: u32 = 4;
const NLMSG_FLAGS_AT: u32 = 6;
/// A part of a dump reply: several messages share the datagram, and the program sees only
/// the first.
const NLM_F_MULTI: u16 = 0x2;
const NFGEN_FAMILY_AT: u32 = 16;
const ATTRIBUTES_AT: u32 = 20;
const NLA_HDRLEN: u32 = 4;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
// Attribute types (`enum ctattr_type`, `ctattr_tuple`, `ctattr_ip`, `ctattr_l4proto`).
const CTA_TUPLE_ORIG: u32 = 1;
const CTA_TUPLE_IP: u32 = 1;
const CTA_TUPLE_PROTO: u32 = 2;
const CTA_IP_V4_SRC: u32 = 1;
const CTA_IP_V4_DST: u32 = 2;
const CTA_IP_V6_SRC: u32 = 3;
const CTA_IP_V6_DST: u32 = 4;
const CTA_PROTO_NUM: u32 = 1;
const CTA_PROTOINFO: u32 = 4;
const CTA_PROTOINFO_TCP: u32 = 1;
const CTA_PROTOINFO_TCP_STATE: u32 = 1;
const IPPROTO_TCP: u8 = 6;
// The program's scratch memory slots.
const M_ORIG: u32 = 0;
const M_IP: u32 = 1;
const M_PROTO: u32 = 2;
const M_ADDRESS: u32 = 3; // 4 slots: an IPv6 address as 4 words

/// The IP protocols `conntrack` names, for `tcp,udp` style lists.
const PROTOCOLS: [u8; 8] = [1, 6, 17, 33, 47, 58, 132, 136];

/// An address or a subnet, `10.0.0.0/8`, `fd00::/8`, `192.0.2.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    network: IpAddr,
    prefix_bits: u8,
}

impl Subnet {
    pub fn parse(text: &str) -> Result<Subnet, String> {
        let text = text.trim();
        let bad =
            || format!("{text:?} is not an IPv4 or IPv6 address or subnet (a.b.c.d/n, x::y/n)");
        let (address, bits) = match text.split_once('/') {
            Some((address, bits)) => (address, Some(bits)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let width = if address.is_ipv4() { 32 } else { 128 };
        let prefix_bits = match bits {
            None => width,
            Some(bits) if !bits.is_empty() && bits.bytes().all(|b| b.is_ascii_digit()) => {
                match bits.parse::<u8>() {
                    Ok(bits) if bits <= width => bits,
                    _ => return Err(bad()),
                }
            }
            Some(_) => return Err(bad()),
        };
        // Host bits are cleared (10.1.2.3/8 means 10.0.0.0/8), not refused: a host address
        // with its prefix is a common way to name its subnet.
        let network = match address {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(prefix_bits)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(prefix_bits)).into()),
        };
        Ok(Subnet {
            network,
            prefix_bits,
        })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                u32::from(a) & mask32(self.prefix_bits) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(a) & mask128(self.prefix_bits) == u128::from(net)
            }
            _ => false,
        }
    }

    fn family(&self) -> u8 {
        if self.network.is_ipv4() {
            AF_INET as u8
        } else {
            AF_INET6 as u8
        }
    }

    /// The network and mask as the 32-bit words BPF loads (network byte order): 1 or 4.
    fn words(&self) -> Vec<(u32, u32)> {
        match self.network {
            IpAddr::V4(net) => vec![(u32::from(net), mask32(self.prefix_bits))],
            IpAddr::V6(net) => {
                let (net, mask) = (u128::from(net), mask128(self.prefix_bits));
                (0..4)
                    .map(|i| {
                        let shift = 96 - 32 * i;
                        ((net >> shift) as u32, (mask >> shift) as u32)
                    })
                    .collect()
            }
        }
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_bits)
    }
}

fn mask32(bits: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0)
}

fn mask128(bits: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0)
}

/// `tcp`, `UDP`, `6`: an IP protocol number.
pub fn parse_protocol(text: &str) -> Result<u8, String> {
    let text = text.trim();
    if let Ok(number) = text.parse::<u8>() {
        return Ok(number);
    }
    PROTOCOLS
        .into_iter()
        .find(|&p| l4proto_name(p).eq_ignore_ascii_case(text))
        .ok_or_else(|| {
            let names: Vec<&str> = PROTOCOLS.iter().map(|&p| l4proto_name(p)).collect();
            format!(
                "{text:?} is not an IP protocol: expected {} or a number 0-255",
                names.join(", ")
            )
        })
}

/// `enum tcp_conntrack`, named as `conntrack` prints them.
const TCP_STATES: [&str; 10] = [
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

/// `ESTABLISHED`, `time_wait`: a TCP conntrack state.
pub fn parse_tcp_state(text: &str) -> Result<u8, String> {
    let text = text.trim();
    TCP_STATES
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
        .map(|state| state as u8)
        .ok_or_else(|| {
            format!(
                "{text:?} is not a TCP state: expected {}",
                TCP_STATES.join(", ")
            )
        })
}

/// The rules. Empty lists mean no rule; an all-empty filter compiles to no program at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub accept_protocols: Vec<u8>,
    pub ignore_protocols: Vec<u8>,
    pub accept_addresses: Vec<Subnet>,
    pub ignore_addresses: Vec<Subnet>,
    pub accept_tcp_states: Vec<u8>,
    pub ignore_tcp_states: Vec<u8>,
}

/// The rules as text, one list each: what the command line and the API give.
#[derive(Clone, Debug, Default)]
pub struct FilterText {
    pub accept_protocols: Vec<String>,
    pub ignore_protocols: Vec<String>,
    pub accept_addresses: Vec<String>,
    pub ignore_addresses: Vec<String>,
    pub accept_tcp_states: Vec<String>,
    pub ignore_tcp_states: Vec<String>,
}

/// The compiled program, and what it leaves to Rust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub instructions: Vec<Instruction>,
    /// One line each: a rule the program could not hold, applied in Rust instead.
    pub left_to_rust: Vec<String>,
}

impl Filter {
    /// Parses the lists (each item a name, number, address, subnet or state); one line of
    /// error naming the list.
    pub fn parse(text: &FilterText) -> Result<Filter, String> {
        fn each<T>(
            what: &str,
            items: &[String],
            parse: impl Fn(&str) -> Result<T, String>,
        ) -> Result<Vec<T>, String> {
            items
                .iter()
                .map(|item| parse(item).map_err(|e| format!("{what}: {e}")))
                .collect()
        }
        Ok(Filter {
            accept_protocols: each("accept_protocols", &text.accept_protocols, parse_protocol)?,
            ignore_protocols: each("ignore_protocols", &text.ignore_protocols, parse_protocol)?,
            accept_addresses: each("accept_addresses", &text.accept_addresses, Subnet::parse)?,
            ignore_addresses: each("ignore_addresses", &text.ignore_addresses, Subnet::parse)?,
            accept_tcp_states: each(
                "accept_tcp_states",
                &text.accept_tcp_states,
                parse_tcp_state,
            )?,
            ignore_tcp_states: each(
                "ignore_tcp_states",
                &text.ignore_tcp_states,
                parse_tcp_state,
            )?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.accept_protocols.is_empty()
            && self.ignore_protocols.is_empty()
            && self.accept_addresses.is_empty()
            && self.ignore_addresses.is_empty()
            && !self.has_state_rules()
    }

    fn has_state_rules(&self) -> bool {
        !self.accept_tcp_states.is_empty() || !self.ignore_tcp_states.is_empty()
    }

    /// Whether the rules keep this event: the definition the program implements.
    pub fn keeps(&self, event: &Event) -> bool {
        let protocol = event.original.l4proto;
        if !self.accept_protocols.is_empty() && !self.accept_protocols.contains(&protocol) {
            return false;
        }
        if self.ignore_protocols.contains(&protocol) {
            return false;
        }
        if let (IPPROTO_TCP, Some(state)) = (protocol, event.tcp_state) {
            let accepted =
                self.accept_tcp_states.is_empty() || self.accept_tcp_states.contains(&state);
            if !accepted || self.ignore_tcp_states.contains(&state) {
                return false;
            }
        }
        let addresses = [event.original.src, event.original.dst];
        let matches = |subnets: &[Subnet]| {
            let of_family: Vec<&Subnet> = subnets
                .iter()
                .filter(|s| s.family() == event.l3proto)
                .collect();
            let hit = || {
                of_family
                    .iter()
                    .any(|s| addresses.iter().flatten().any(|&a| s.contains(a)))
            };
            (!of_family.is_empty()).then(hit)
        };
        // None: no rule for this event's family.
        matches(&self.accept_addresses) != Some(false)
            && matches(&self.ignore_addresses) != Some(true)
    }

    /// The socket filter; `None` when there is nothing to filter. Rules that would make the
    /// program longer than the kernel takes (address lists of hundreds of subnets) are left
    /// out of it, and named in `left_to_rust`.
    pub fn compile(&self) -> Option<Program> {
        if self.is_empty() {
            return None;
        }
        let full = self.assemble(true);
        if full.len() <= BPF_MAXINSNS {
            return Some(Program {
                instructions: full,
                left_to_rust: Vec::new(),
            });
        }
        Some(Program {
            instructions: self.assemble(false),
            left_to_rust: vec![format!(
                "the address rules ({} subnets) make a socket filter longer than the kernel's \
                 {BPF_MAXINSNS} instructions: they are applied in userspace instead",
                self.accept_addresses.len() + self.ignore_addresses.len()
            )],
        })
    }

    fn assemble(&self, with_addresses: bool) -> Vec<Instruction> {
        let mut asm = Assembler::default();
        let keep = asm.label();
        let drop = asm.label();
        // Anything that is not a conntrack event (NLMSG_ERROR, DONE, a reply to a request)
        // passes, and so does a message too short to be one: the decoder judges it.
        asm.load(BPF_LEN, 0);
        asm.jump_unless(BPF_JGE, ATTRIBUTES_AT, keep);
        asm.load(BPF_H | BPF_ABS, NLMSG_TYPE_AT);
        let event = asm.label();
        asm.jump_if(BPF_JEQ, message_type_as_loaded(IPCTNL_MSG_CT_NEW), event);
        asm.jump_unless(BPF_JEQ, message_type_as_loaded(IPCTNL_MSG_CT_DELETE), keep);
        asm.place(event);
        // A dump reply (if the socket ever asks for one) holds many flows in one datagram,
        // and the program sees only the first: it passes whole, for Rust to filter.
        asm.load(BPF_H | BPF_ABS, NLMSG_FLAGS_AT);
        asm.jump_if(BPF_JSET, u32::from(as_loaded(NLM_F_MULTI)), keep);
        // The original tuple; without it the message is malformed: the decoder counts it.
        asm.load(BPF_IMM, ATTRIBUTES_AT);
        asm.find(SKF_AD_NLATTR, CTA_TUPLE_ORIG, keep);
        asm.store(M_ORIG);

        let has_protocols = !self.accept_protocols.is_empty() || !self.ignore_protocols.is_empty();
        if has_protocols || self.has_state_rules() {
            asm.find(SKF_AD_NLATTR_NEST, CTA_TUPLE_PROTO, keep);
            asm.find(SKF_AD_NLATTR_NEST, CTA_PROTO_NUM, keep);
            asm.load_value(BPF_B);
            asm.store(M_PROTO);
            if !self.accept_protocols.is_empty() {
                let accepted = asm.label();
                for &protocol in &self.accept_protocols {
                    asm.jump_if(BPF_JEQ, u32::from(protocol), accepted);
                }
                asm.goto(drop);
                asm.place(accepted);
            }
            for &protocol in &self.ignore_protocols {
                asm.jump_if(BPF_JEQ, u32::from(protocol), drop);
            }
        }

        if self.has_state_rules() {
            // Only TCP events that carry their state are judged; the others pass.
            let judged = asm.label();
            asm.load(BPF_MEM, M_PROTO);
            asm.jump_unless(BPF_JEQ, u32::from(IPPROTO_TCP), judged);
            asm.load(BPF_IMM, ATTRIBUTES_AT);
            asm.find(SKF_AD_NLATTR, CTA_PROTOINFO, judged);
            asm.find(SKF_AD_NLATTR_NEST, CTA_PROTOINFO_TCP, judged);
            asm.find(SKF_AD_NLATTR_NEST, CTA_PROTOINFO_TCP_STATE, judged);
            asm.load_value(BPF_B);
            if !self.accept_tcp_states.is_empty() {
                let accepted = asm.label();
                for &state in &self.accept_tcp_states {
                    asm.jump_if(BPF_JEQ, u32::from(state), accepted);
                }
                asm.goto(drop);
                asm.place(accepted);
            }
            for &state in &self.ignore_tcp_states {
                asm.jump_if(BPF_JEQ, u32::from(state), drop);
            }
            asm.place(judged);
        }

        let has_addresses = !self.accept_addresses.is_empty() || !self.ignore_addresses.is_empty();
        if with_addresses && has_addresses {
            asm.load(BPF_MEM, M_ORIG);
            asm.find(SKF_AD_NLATTR_NEST, CTA_TUPLE_IP, keep);
            asm.store(M_IP);
            asm.load(BPF_B | BPF_ABS, NFGEN_FAMILY_AT);
            let ipv4 = asm.label();
            let ipv6 = asm.label();
            asm.jump_if(BPF_JEQ, AF_INET, ipv4);
            asm.jump_if(BPF_JEQ, AF_INET6, ipv6);
            asm.goto(keep); // another family: no address rule applies
            for (label, family, attributes) in [
                (ipv4, AF_INET as u8, [CTA_IP_V4_SRC, CTA_IP_V4_DST]),
                (ipv6, AF_INET6 as u8, [CTA_IP_V6_SRC, CTA_IP_V6_DST]),
            ] {
                asm.place(label);
                let of_family = |subnets: &[Subnet]| {
                    subnets
                        .iter()
                        .filter(|s| s.family() == family)
                        .copied()
                        .collect::<Vec<_>>()
                };
                let accept = of_family(&self.accept_addresses);
                let ignore = of_family(&self.ignore_addresses);
                if !accept.is_empty() {
                    let accepted = asm.label();
                    asm.address_match(&attributes, &accept, accepted);
                    asm.goto(drop);
                    asm.place(accepted);
                }
                if !ignore.is_empty() {
                    asm.address_match(&attributes, &ignore, drop);
                }
                asm.goto(keep);
            }
        }
        asm.goto(keep);
        asm.place(drop);
        asm.ret(0);
        asm.place(keep);
        asm.ret(u32::MAX);
        asm.finish()
    }
}

/// The value a halfword load of nlmsg_type gives for a ctnetlink message type, on this machine.
fn message_type_as_loaded(message: u16) -> u32 {
    u32::from(as_loaded(NFNL_SUBSYS_CTNETLINK << 8 | message))
}

/// A host-order u16 of the netlink header as a BPF halfword load (big-endian) reads it.
fn as_loaded(host_order: u16) -> u16 {
    u16::from_be_bytes(host_order.to_ne_bytes())
}

/// A jump target, placed once.
#[derive(Clone, Copy)]
struct Label(usize);

/// Emits instructions with symbolic jumps. A conditional jump reaches only 255 instructions,
/// so every jump to a label is an unconditional `ja` (32-bit offset), skipped or taken by a
/// conditional jump over it: one instruction more, and no length limit within the program.
#[derive(Default)]
struct Assembler {
    code: Vec<Instruction>,
    labels: Vec<Option<usize>>,
    /// (index of a `ja`, its label)
    jumps: Vec<(usize, usize)>,
}

impl Assembler {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn place(&mut self, label: Label) {
        self.labels[label.0] = Some(self.code.len());
    }

    fn emit(&mut self, code: u16, jt: u8, jf: u8, k: u32) {
        self.code.push(Instruction { code, jt, jf, k });
    }

    fn load(&mut self, mode: u16, k: u32) {
        self.emit(BPF_LD | mode, 0, 0, k);
    }

    fn store(&mut self, slot: u32) {
        self.emit(BPF_ST, 0, 0, slot);
    }

    fn ret(&mut self, k: u32) {
        self.emit(BPF_RET | BPF_K, 0, 0, k);
    }

    fn goto(&mut self, label: Label) {
        self.jumps.push((self.code.len(), label.0));
        self.emit(BPF_JMP | BPF_JA, 0, 0, 0);
    }

    /// if A <op> k: goto label
    fn jump_if(&mut self, op: u16, k: u32, label: Label) {
        self.emit(BPF_JMP | op | BPF_K, 0, 1, k);
        self.goto(label);
    }

    /// if !(A <op> k): goto label
    fn jump_unless(&mut self, op: u16, k: u32, label: Label) {
        self.emit(BPF_JMP | op | BPF_K, 1, 0, k);
        self.goto(label);
    }

    /// A = the attribute of `attribute_type` (searched as `ancillary` says, from A), or
    /// goto `missing`.
    fn find(&mut self, ancillary: u32, attribute_type: u32, missing: Label) {
        self.emit(BPF_LDX | BPF_IMM, 0, 0, attribute_type);
        self.load(BPF_W | BPF_ABS, SKF_AD_OFF.wrapping_add(ancillary));
        self.jump_if(BPF_JEQ, 0, missing);
    }

    /// A = the first `size` bytes of the value of the attribute at A.
    fn load_value(&mut self, size: u16) {
        self.emit(BPF_MISC | BPF_TAX, 0, 0, 0);
        self.load(size | BPF_IND, NLA_HDRLEN);
    }

    /// goto `hit` if the address in either attribute (source, destination) of the tuple's IP
    /// attribute (in M_IP) is in one of `subnets`, all of one family.
    fn address_match(&mut self, attributes: &[u32; 2], subnets: &[Subnet], hit: Label) {
        let words = subnets.first().map_or(1, |s| s.words().len());
        for &attribute in attributes {
            let absent = self.label();
            self.load(BPF_MEM, M_IP);
            self.find(SKF_AD_NLATTR_NEST, attribute, absent);
            self.emit(BPF_MISC | BPF_TAX, 0, 0, 0);
            for word in 0..words as u32 {
                self.load(BPF_W | BPF_IND, NLA_HDRLEN + 4 * word);
                self.store(M_ADDRESS + word);
            }
            for subnet in subnets {
                let next = self.label();
                for (word, (network, mask)) in subnet.words().into_iter().enumerate() {
                    if mask == 0 {
                        continue;
                    }
                    self.load(BPF_MEM, M_ADDRESS + word as u32);
                    if mask != u32::MAX {
                        self.emit(BPF_ALU | BPF_AND | BPF_K, 0, 0, mask);
                    }
                    self.jump_unless(BPF_JEQ, network, next);
                }
                self.goto(hit);
                self.place(next);
            }
            self.place(absent);
        }
    }

    fn finish(mut self) -> Vec<Instruction> {
        for &(at, label) in &self.jumps {
            let target = self.labels[label].unwrap_or(at + 1);
            self.code[at].k = (target - at - 1) as u32;
        }
        self.code
    }
}
