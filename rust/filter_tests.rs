//! The socket filter on real kernel captures (`rust/testdata`, see `rust/tests.rs`), run in a
//! small classic BPF interpreter written from the kernel's semantics (net/core/filter.c,
//! lib/nlattr.c), ancillary NLATTR loads included; and the real kernel's checker at attach.

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::Value;

use crate::decode::{decode, split_messages};
use crate::event::Event;
use crate::filter::*;
use crate::socket::EventSocket;

// ---------------------------------------------------------------------------------------
// A classic BPF interpreter

const NLA_TYPE_MASK: u16 = 0x3fff;

fn native_u16(packet: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(packet.get(at..at + 2)?.try_into().ok()?))
}

/// lib/nlattr.c `nla_find`: the first attribute of `kind` in `packet[at..at + len]`.
fn nla_find(packet: &[u8], mut at: usize, len: i64, kind: u32) -> u32 {
    let mut remaining = len;
    loop {
        if remaining < 4 {
            return 0;
        }
        let (Some(nla_len), Some(nla_type)) = (native_u16(packet, at), native_u16(packet, at + 2))
        else {
            return 0;
        };
        if nla_len < 4 || i64::from(nla_len) > remaining {
            return 0;
        }
        if u32::from(nla_type & NLA_TYPE_MASK) == kind {
            return at as u32;
        }
        let aligned = (usize::from(nla_len) + 3) & !3;
        remaining -= aligned as i64;
        at += aligned;
    }
}

/// net/core/filter.c `bpf_skb_get_nlattr` and `bpf_skb_get_nlattr_nest`.
fn ancillary(packet: &[u8], which: u32, a: u32, x: u32) -> u32 {
    let len = packet.len() as i64;
    if len < 4 || i64::from(a) > len - 4 {
        return 0;
    }
    let a = a as usize;
    match which {
        SKF_AD_NLATTR => nla_find(packet, a, len - a as i64, x),
        SKF_AD_NLATTR_NEST => {
            let nla_len = i64::from(native_u16(packet, a).unwrap_or(0));
            if nla_len > len - a as i64 {
                return 0;
            }
            nla_find(packet, a + 4, nla_len - 4, x)
        }
        other => panic!("ancillary load {other} not modelled"),
    }
}

fn load(packet: &[u8], at: u64, size: u16) -> Option<u32> {
    let width = match size {
        BPF_W => 4,
        BPF_H => 2,
        BPF_B => 1,
        other => panic!("load size {other:#x}"),
    };
    let at = usize::try_from(at).ok()?;
    let bytes = packet.get(at..at.checked_add(width)?)?;
    Some(bytes.iter().fold(0u32, |v, &b| v << 8 | u32::from(b)))
}

/// What the kernel's filter returns for `packet`: 0 drops it.
fn run(program: &[Instruction], packet: &[u8]) -> u32 {
    let (mut a, mut x, mut memory) = (0u32, 0u32, [0u32; 16]);
    let mut pc = 0usize;
    loop {
        let i = program[pc];
        pc += 1;
        let class = i.code & 0x07;
        match class {
            BPF_LD | BPF_LDX => {
                let mode = i.code & 0xe0;
                let value = match mode {
                    BPF_IMM => i.k,
                    BPF_LEN => packet.len() as u32,
                    BPF_MEM => memory[i.k as usize],
                    BPF_ABS if i.k >= SKF_AD_OFF => {
                        ancillary(packet, i.k.wrapping_sub(SKF_AD_OFF), a, x)
                    }
                    BPF_ABS => match load(packet, u64::from(i.k), i.code & 0x18) {
                        Some(v) => v,
                        None => return 0, // out of the packet: the kernel drops it
                    },
                    BPF_IND => match load(packet, u64::from(x) + u64::from(i.k), i.code & 0x18) {
                        Some(v) => v,
                        None => return 0,
                    },
                    other => panic!("load mode {other:#x}"),
                };
                if class == BPF_LD {
                    a = value;
                } else {
                    x = value;
                }
            }
            BPF_ST => memory[i.k as usize] = a,
            BPF_ALU => match i.code & 0xf0 {
                BPF_AND => a &= i.k,
                other => panic!("alu op {other:#x}"),
            },
            BPF_JMP => {
                let operand = if i.code & 0x08 != 0 { x } else { i.k };
                let taken = match i.code & 0xf0 {
                    BPF_JA => {
                        pc += i.k as usize;
                        continue;
                    }
                    BPF_JEQ => a == operand,
                    BPF_JGE => a >= operand,
                    BPF_JSET => a & operand != 0,
                    other => panic!("jump op {other:#x}"),
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            BPF_RET => return i.k,
            BPF_MISC => x = a, // TAX, the only one the compiler emits
            _ => unreachable!(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Captures

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("rust")
        .join("testdata")
}

/// (file name, manifest entry, datagram) of every capture.
fn captures() -> Vec<(String, Value, Vec<u8>)> {
    let text = std::fs::read_to_string(testdata().join("manifest.json")).expect("manifest");
    let entries: Vec<Value> = serde_json::from_str(&text).expect("manifest is JSON");
    assert!(entries.len() > 50);
    entries
        .into_iter()
        .map(|e| {
            let file = e["file"].as_str().expect("file").to_string();
            let bytes = std::fs::read(testdata().join(&file)).expect("capture");
            (file, e, bytes)
        })
        .collect()
}

fn capture(file: &str) -> Vec<u8> {
    std::fs::read(testdata().join(file)).expect("capture")
}

fn decoded(message: &[u8]) -> Event {
    let message = split_messages(message)
        .next()
        .expect("a message")
        .expect("framed");
    decode(message, 0).expect("an event")
}

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn filter(accept_p: &[&str], ignore_p: &[&str], accept_a: &[&str], ignore_a: &[&str]) -> Filter {
    Filter::parse(&FilterText {
        accept_protocols: owned(accept_p),
        ignore_protocols: owned(ignore_p),
        accept_addresses: owned(accept_a),
        ignore_addresses: owned(ignore_a),
        ..FilterText::default()
    })
    .expect("valid filter")
}

fn states(accept: &[&str], ignore: &[&str]) -> Filter {
    Filter::parse(&FilterText {
        accept_tcp_states: owned(accept),
        ignore_tcp_states: owned(ignore),
        ..FilterText::default()
    })
    .expect("valid filter")
}

/// The program's verdict, checked against `Filter::keeps` on the decoded event.
fn program_keeps(filter: &Filter, message: &[u8]) -> bool {
    let program = filter.compile().expect("a program");
    assert!(program.left_to_rust.is_empty());
    let kept = run(&program.instructions, message) != 0;
    assert_eq!(
        kept,
        filter.keeps(&decoded(message)),
        "program and Filter::keeps disagree on {filter:?}"
    );
    kept
}

/// The offset of the attribute of `kind` among those in `message[start..end]`.
fn attribute(message: &[u8], start: usize, end: usize, kind: u16) -> Option<(usize, usize)> {
    let mut at = start;
    while at + 4 <= end {
        let len = usize::from(native_u16(message, at)?);
        if len < 4 {
            return None;
        }
        if native_u16(message, at + 2)? & NLA_TYPE_MASK == kind {
            return Some((at, at + len));
        }
        at += (len + 3) & !3;
    }
    None
}

/// The capture with its original tuple's addresses replaced (same family, same length).
fn with_addresses(file: &str, src: &str, dst: &str) -> Vec<u8> {
    let mut message = capture(file);
    let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let (orig_at, orig_end) = attribute(&message, 20, message.len(), 1).expect("CTA_TUPLE_ORIG");
    let (ip_at, ip_end) = attribute(&message, orig_at + 4, orig_end, 1).expect("CTA_TUPLE_IP");
    for (kinds, address) in [([1u16, 3u16], src), ([2, 4], dst)] {
        let bytes = match address {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let kind = if address.is_ipv4() {
            kinds[0]
        } else {
            kinds[1]
        };
        let (at, end) = attribute(&message, ip_at + 4, ip_end, kind).expect("address attribute");
        assert_eq!(end - at - 4, bytes.len(), "{file}: another family");
        message[at + 4..end].copy_from_slice(&bytes);
    }
    assert_eq!(decoded(&message).original.src, Some(src));
    message
}

fn netlink_message(message_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::new();
    message.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
    message.extend_from_slice(&message_type.to_ne_bytes());
    message.extend_from_slice(&[0; 10]);
    message.extend_from_slice(payload);
    message
}

// ---------------------------------------------------------------------------------------
// Tests

const ALL_PROTOCOLS: [(&str, u64); 8] = [
    ("tcp", 6),
    ("udp", 17),
    ("udplite", 136),
    ("icmp", 1),
    ("icmpv6", 58),
    ("sctp", 132),
    ("gre", 47),
    ("253", 253),
];

#[test]
fn accept_protocol_keeps_only_it_on_every_capture() {
    for (name, number) in ALL_PROTOCOLS {
        let only = filter(&[name], &[], &[], &[]);
        for (file, entry, message) in captures() {
            let expected = entry["l4proto"].as_u64() == Some(number);
            assert_eq!(
                program_keeps(&only, &message),
                expected,
                "accept {name}: {file}"
            );
        }
    }
}

#[test]
fn ignore_protocol_drops_only_it_on_every_capture() {
    for (name, number) in ALL_PROTOCOLS {
        let but = filter(&[], &[name], &[], &[]);
        for (file, entry, message) in captures() {
            let expected = entry["l4proto"].as_u64() != Some(number);
            assert_eq!(
                program_keeps(&but, &message),
                expected,
                "ignore {name}: {file}"
            );
        }
    }
}

#[test]
fn several_protocols_by_name_and_number() {
    let accept = filter(&["TCP", "17", "icmpv6"], &[], &[], &[]);
    let ignore = filter(&[], &["tcp", "17", "icmpv6"], &[], &[]);
    for (file, entry, message) in captures() {
        let listed = matches!(entry["l4proto"].as_u64(), Some(6 | 17 | 58));
        assert_eq!(program_keeps(&accept, &message), listed, "{file}");
        assert_eq!(program_keeps(&ignore, &message), !listed, "{file}");
    }
}

#[test]
fn loopback_addresses_of_both_families() {
    let ignore_v4 = filter(&[], &[], &[], &["127.0.0.1"]);
    let ignore_v6 = filter(&[], &[], &[], &["::1"]);
    let accept_v4 = filter(&[], &[], &["127.0.0.0/8"], &[]);
    let accept_other_v4 = filter(&[], &[], &["10.0.0.0/8"], &[]);
    let accept_other_v6 = filter(&[], &[], &["fd00::/8"], &[]);
    for (file, entry, message) in captures() {
        let ipv4 = entry["l3proto"].as_u64() == Some(2);
        assert_eq!(program_keeps(&ignore_v4, &message), !ipv4, "{file}");
        assert_eq!(program_keeps(&ignore_v6, &message), ipv4, "{file}");
        assert!(program_keeps(&accept_v4, &message), "{file}");
        // An address list of one family never hides the other family's events.
        assert_eq!(program_keeps(&accept_other_v4, &message), !ipv4, "{file}");
        assert_eq!(program_keeps(&accept_other_v6, &message), ipv4, "{file}");
    }
}

#[test]
fn ipv4_subnets_match_either_original_address() {
    let message = with_addresses("udp_ipv4_new_0.bin", "10.1.2.3", "192.168.7.9");
    let reply_only = with_addresses("udp_ipv4_new_0.bin", "10.9.9.9", "10.9.9.8");
    for (subnets, src_or_dst_inside) in [
        (vec!["10.0.0.0/8"], true),
        (vec!["10.1.2.3"], true),
        (vec!["10.1.2.3/32"], true),
        (vec!["10.1.2.2/31"], true),
        (vec!["10.1.2.4/31"], false),
        (vec!["10.1.2.0/30", "172.16.0.0/12"], true),
        (vec!["192.168.7.0/24"], true),
        (vec!["192.168.7.8/32"], false),
        (vec!["192.168.0.0/16", "10.1.2.3"], true),
        (vec!["11.0.0.0/8", "192.168.8.0/24"], false),
        (vec!["0.0.0.0/0"], true),
        (vec!["10.1.2.200/24"], true), // host bits cleared: 10.1.2.0/24
        (vec!["fd00::/8", "::/0"], false), // IPv6 lists: no rule for this IPv4 event
    ] {
        let any_v4 = subnets.iter().any(|s| !s.contains(':'));
        let accept = filter(&[], &[], &subnets, &[]);
        let ignore = filter(&[], &[], &[], &subnets);
        assert_eq!(
            program_keeps(&accept, &message),
            src_or_dst_inside || !any_v4,
            "accept {subnets:?}"
        );
        assert_eq!(
            program_keeps(&ignore, &message),
            !src_or_dst_inside,
            "ignore {subnets:?}"
        );
        // The reply tuple (still 127.0.0.1) is not looked at.
        let loopback = filter(&[], &[], &["127.0.0.0/8"], &[]);
        assert!(!program_keeps(&loopback, &reply_only));
    }
}

#[test]
fn ipv6_subnets_match_either_original_address() {
    let message = with_addresses("tcp_ipv6_new_0.bin", "fd12:3456:789a:1::5", "2001:db8::1");
    for (subnets, src_or_dst_inside) in [
        (vec!["fd00::/8"], true),
        (vec!["fd12:3456:789a:1::5"], true),
        (vec!["fd12:3456:789a:1::4/127"], true),
        (vec!["fd12:3456:789a:1::6/127"], false),
        (vec!["fd12:3456:789a::/48"], true),
        (vec!["fd12:3456:789b::/48"], false),
        (vec!["fd12:3456:7800::/40"], true), // a prefix inside the third word
        (vec!["fd12:3456:7900::/40"], false),
        (vec!["2001:db8::/32"], true),
        (vec!["2001:db8::2"], false),
        (vec!["2001:db9::/32", "fe80::/10"], false),
        (vec!["::/0"], true),
        (vec!["10.0.0.0/8", "0.0.0.0/0"], false), // IPv4 lists: no rule for this IPv6 event
    ] {
        let any_v6 = subnets.iter().any(|s| s.contains(':'));
        let accept = filter(&[], &[], &subnets, &[]);
        let ignore = filter(&[], &[], &[], &subnets);
        assert_eq!(
            program_keeps(&accept, &message),
            src_or_dst_inside || !any_v6,
            "accept {subnets:?}"
        );
        assert_eq!(
            program_keeps(&ignore, &message),
            !src_or_dst_inside,
            "ignore {subnets:?}"
        );
    }
}

#[test]
fn accept_and_ignore_together_and_with_protocols() {
    // Accept the LAN, ignore the router itself, only TCP and UDP, never GRE.
    let rules = filter(
        &["tcp", "udp"],
        &["gre"],
        &["10.0.0.0/8", "fd00::/8"],
        &["10.0.0.1", "fd00::1"],
    );
    for (file, src, dst, kept) in [
        ("udp_ipv4_new_0.bin", "10.2.0.5", "8.8.8.8", true),
        ("udp_ipv4_new_0.bin", "10.0.0.1", "10.2.0.5", false), // the router: ignored
        ("udp_ipv4_new_0.bin", "192.0.2.1", "8.8.8.8", false), // not the LAN
        ("tcp_ipv4_destroy_0.bin", "8.8.8.8", "10.200.0.1", true),
        ("icmp_ipv4_new_0.bin", "10.2.0.5", "8.8.8.8", false), // not TCP or UDP
        ("gre_ipv4_new_0.bin", "10.2.0.5", "8.8.8.8", false),
        ("tcp_ipv6_update_0.bin", "fd00::99", "2001:db8::1", true),
        ("tcp_ipv6_update_0.bin", "fd00::99", "fd00::1", false),
        (
            "udp_ipv6_destroy_0.bin",
            "2001:db8::7",
            "2001:db8::1",
            false,
        ),
    ] {
        let message = with_addresses(file, src, dst);
        assert_eq!(
            program_keeps(&rules, &message),
            kept,
            "{file} {src} -> {dst}"
        );
    }
}

#[test]
fn tcp_states_judge_only_tcp_events_that_carry_one() {
    // On the captures: NEW is SYN_SENT (1), UPDATEs SYN_RECV, ESTABLISHED, FIN_WAIT, DESTROY
    // TIME_WAIT (7); non-TCP events have no state and pass.
    for (accept, ignore, kept_states) in [
        (vec!["ESTABLISHED"], vec![], vec![3]),
        (vec!["syn_sent", "TIME_WAIT"], vec![], vec![1, 7]),
        (vec![], vec!["TIME_WAIT"], vec![0, 1, 2, 3, 4, 5, 6, 8, 9]),
        (
            vec!["SYN_SENT", "SYN_RECV", "ESTABLISHED"],
            vec!["SYN_RECV"],
            vec![1, 3],
        ),
    ] {
        let rules = states(&accept, &ignore);
        let mut judged = 0;
        for (file, entry, message) in captures() {
            let expected = match entry["tcp_state"].as_u64() {
                Some(state) if entry["l4proto"].as_u64() == Some(6) => {
                    judged += 1;
                    kept_states.contains(&state)
                }
                _ => true,
            };
            assert_eq!(
                program_keeps(&rules, &message),
                expected,
                "{accept:?} {ignore:?}: {file}"
            );
        }
        assert!(judged >= 10);
    }
    // A TCP UPDATE without CTA_PROTOINFO (a status change only) passes: nothing to judge.
    let mut message = capture("tcp_ipv4_update_1.bin");
    let (at, end) = attribute(&message, 20, message.len(), 4).expect("CTA_PROTOINFO");
    message[at + 2..at + 4].copy_from_slice(&0x3fffu16.to_ne_bytes()); // now an unknown type
    assert_eq!(decoded(&message).tcp_state, None);
    assert!(program_keeps(&states(&["TIME_WAIT"], &[]), &message));
    assert!(end > at);
    assert!(parse_tcp_state("LISTEN").unwrap_err().contains("SYN_SENT2"));
}

#[test]
fn non_event_messages_pass() {
    let rules = filter(&["tcp"], &[], &["10.0.0.0/8"], &["fd00::/8"]);
    let program = rules.compile().unwrap().instructions;
    let nlmsg_error = netlink_message(2, &[0; 20]);
    let nlmsg_done = netlink_message(3, &[0; 4]);
    let ct_get = netlink_message(1 << 8 | 1, &[2, 0, 0, 0]); // IPCTNL_MSG_CT_GET
    let expectation = netlink_message(2 << 8, &[2, 0, 0, 0]); // ctnetlink_exp
    let bare_header = netlink_message(1 << 8, &[]); // a CT_NEW too short to be one
    let no_tuple = netlink_message(1 << 8, &[2, 0, 0, 0, 8, 0, 3, 0, 0, 0, 0, 8]);
    let truncated = capture("udp_ipv4_new_0.bin")[..40].to_vec();
    for message in [
        nlmsg_error,
        nlmsg_done,
        ct_get,
        expectation,
        bare_header,
        no_tuple,
        truncated,
    ] {
        assert_ne!(run(&program, &message), 0, "{message:?}");
    }
    // One that is an event is judged.
    assert_eq!(run(&program, &capture("udp_ipv4_new_0.bin")), 0);
}

#[test]
fn dump_replies_pass_whole() {
    // Two flows in one datagram, flagged NLM_F_MULTI as ctnetlink's dump replies are: the
    // program sees the first (ignored) only; the second (kept) must not be lost with it.
    let rules = filter(&[], &["udp"], &[], &[]);
    let program = rules.compile().unwrap().instructions;
    let mut datagram = Vec::new();
    for file in ["udp_ipv4_new_0.bin", "tcp_ipv4_new_0.bin"] {
        let mut message = capture(file);
        let flags = native_u16(&message, 6).unwrap() | 0x2;
        message[6..8].copy_from_slice(&flags.to_ne_bytes());
        datagram.extend_from_slice(&message);
    }
    assert_ne!(run(&program, &datagram), 0);
    let kept: Vec<bool> = split_messages(&datagram)
        .map(|m| rules.keeps(&decode(m.unwrap(), 0).unwrap()))
        .collect();
    assert_eq!(kept, [false, true]); // the Rust fallback sorts them out
                                     // The same first message as an event alone is dropped in the kernel.
    assert_eq!(run(&program, &capture("udp_ipv4_new_0.bin")), 0);
}

#[test]
fn empty_filter_has_no_program() {
    assert_eq!(Filter::default().compile(), None);
    assert!(Filter::default().keeps(&decoded(&capture("udp_ipv4_new_0.bin"))));
}

#[test]
fn long_address_lists_are_left_to_rust() {
    let subnets: Vec<String> = (0..600)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    let rules = Filter::parse(&FilterText {
        accept_protocols: owned(&["udp"]),
        ignore_addresses: subnets.clone(),
        ..FilterText::default()
    })
    .unwrap();
    let program = rules.compile().unwrap();
    assert!(program.instructions.len() <= BPF_MAXINSNS);
    assert_eq!(program.left_to_rust.len(), 1, "{:?}", program.left_to_rust);
    // The protocol rule is still in the kernel; the addresses are Rust's.
    let tcp = capture("tcp_ipv4_new_0.bin");
    let udp_ignored = with_addresses("udp_ipv4_new_0.bin", "10.1.5.1", "8.8.8.8");
    assert_eq!(run(&program.instructions, &tcp), 0);
    assert_ne!(run(&program.instructions, &udp_ignored), 0);
    assert!(!rules.keeps(&decoded(&udp_ignored)));
    // 250 subnets still fit.
    let fits = Filter::parse(&FilterText {
        ignore_addresses: subnets[..250].to_vec(),
        ..FilterText::default()
    })
    .unwrap();
    assert!(fits.compile().unwrap().left_to_rust.is_empty());
}

#[test]
fn bad_values_are_one_line_errors() {
    for protocol in ["tcpx", "256", "-1", "", "ipv4"] {
        let error = parse_protocol(protocol).expect_err(protocol);
        assert!(
            !error.contains('\n') && error.contains("tcp, udp"),
            "{error}"
        );
    }
    for subnet in [
        "10.0.0.0/33",
        "::1/129",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "1.2.3",
        "10.0.0.0/8/8",
        "x",
        "",
    ] {
        let error = Subnet::parse(subnet).expect_err(subnet);
        assert!(!error.contains('\n') && error.contains("subnet"), "{error}");
    }
    let error = Filter::parse(&FilterText {
        ignore_protocols: owned(&["udp", "foo"]),
        ..FilterText::default()
    })
    .unwrap_err();
    assert!(error.starts_with("ignore_protocols: \"foo\""), "{error}");
    assert_eq!(
        Subnet::parse(" 10.1.2.3/8 ").unwrap().to_string(),
        "10.0.0.0/8"
    );
    assert_eq!(parse_protocol(" GRE ").unwrap(), 47);
}

/// Tests named kernel_* open a NETLINK_NETFILTER socket, which qemu-user refuses:
/// cross/test-emulated.sh skips them there.
///
/// The kernel's own checker (sk_chk_filter) takes every program the compiler makes.
#[test]
fn kernel_accepts_compiled_programs() {
    let subnets: Vec<String> = (0..250).map(|i| format!("fd00:{i:x}::/32")).collect();
    let big = Filter::parse(&FilterText {
        accept_protocols: owned(&["tcp"]),
        ignore_protocols: owned(&["udp"]),
        accept_addresses: subnets[..100].to_vec(),
        ignore_addresses: subnets[100..].to_vec(),
        accept_tcp_states: owned(&["ESTABLISHED", "syn_sent"]),
        ignore_tcp_states: owned(&["TIME_WAIT"]),
    })
    .unwrap();
    for rules in [
        filter(&["tcp"], &[], &[], &[]),
        filter(
            &[],
            &["udp", "icmp"],
            &["10.0.0.0/8", "fd00::/8"],
            &["10.0.0.1", "::1"],
        ),
        filter(&[], &[], &["0.0.0.0/0"], &["::/0"]),
        big,
    ] {
        let program = rules.compile().unwrap();
        let socket = EventSocket::open(&[]).expect("a netlink socket");
        socket
            .attach_filter(&program.instructions)
            .unwrap_or_else(|e| {
                panic!(
                    "the kernel refused {} instructions: {e}",
                    program.instructions.len()
                )
            });
    }
}

#[test]
fn kernel_refuses_a_broken_program() {
    let socket = EventSocket::open(&[]).expect("a netlink socket");
    // A jump past the end, and no return: the checker says EINVAL.
    let broken = [Instruction {
        code: BPF_JMP | BPF_JA,
        jt: 0,
        jf: 0,
        k: 5,
    }];
    let error = socket.attach_filter(&broken).expect_err("refused");
    assert_eq!(error.raw_os_error(), Some(libc::EINVAL));
}

/// Random rule sets on random captures with random addresses: the program and
/// `Filter::keeps` agree every time (program_keeps asserts it).
#[test]
fn random_rules_agree_with_keeps() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut below = |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize % n
    };
    let protocols = [
        "tcp", "udp", "icmp", "icmpv6", "sctp", "gre", "udplite", "253",
    ];
    let v4 = [
        "10.1.2.3",
        "10.1.2.200",
        "192.168.7.9",
        "10.9.0.1",
        "172.16.5.4",
    ];
    let v6 = ["fd12::5", "fd12::1:5", "2001:db8::1", "fe80::1", "fd13::5"];
    let subnets = [
        "10.0.0.0/8",
        "10.1.2.0/24",
        "10.1.2.128/25",
        "192.168.7.9",
        "0.0.0.0/0",
        "fd12::/16",
        "fd12::/112",
        "2001:db8::1",
        "fe80::/10",
        "::/0",
        "fd12::1:0/112",
    ];
    let states = ["SYN_SENT", "ESTABLISHED", "TIME_WAIT", "FIN_WAIT", "NONE"];
    let all = captures();
    for _ in 0..400 {
        let (file, entry, _) = &all[below(all.len())];
        let pool = if entry["l3proto"].as_u64() == Some(2) {
            &v4
        } else {
            &v6
        };
        let message = with_addresses(file, pool[below(pool.len())], pool[below(pool.len())]);
        let mut pick = |items: &[&str]| -> Vec<String> {
            (0..below(3))
                .map(|_| items[below(items.len())].to_string())
                .collect()
        };
        let rules = Filter::parse(&FilterText {
            accept_protocols: pick(&protocols),
            ignore_protocols: pick(&protocols),
            accept_addresses: pick(&subnets),
            ignore_addresses: pick(&subnets),
            accept_tcp_states: pick(&states),
            ignore_tcp_states: pick(&states),
        })
        .unwrap();
        if !rules.is_empty() {
            program_keeps(&rules, &message);
        }
    }
}
