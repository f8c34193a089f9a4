//! Decoding never panics: truncations, garblings, unknown and empty attributes, framing.

use super::*;

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
