//! Golden tests: every field of every real capture against its manifest entry.

use super::*;

#[test]
fn golden_every_capture_matches_its_manifest_entry() {
    let mut report = Vec::new();
    let entries = manifest();
    for expected in &entries {
        let file = expected["file"].as_str().expect("file is a string");
        match decode_datagram(&capture(file)) {
            Ok(event) => {
                for mismatch in mismatches(&event, expected) {
                    report.push(format!("{file}: {mismatch}"));
                }
            }
            Err(skip) => report.push(format!("{file}: not decoded: {skip:?}")),
        }
    }
    assert!(
        report.is_empty(),
        "{} mismatches over {} captures:\n{}",
        report.len(),
        entries.len(),
        report.join("\n")
    );
}

#[test]
fn golden_every_protocol_and_type_is_covered() {
    let entries = manifest();
    for proto in [1, 6, 17, 47, 58, 132, 136, 253] {
        for kind in ["NEW", "DESTROY"] {
            assert!(
                entries
                    .iter()
                    .any(|e| e["l4proto"] == proto && e["type"] == kind),
                "no {kind} capture for protocol {proto}"
            );
        }
    }
    for family in [2, 10] {
        assert!(entries.iter().any(|e| e["l3proto"] == family));
    }
}

#[test]
fn tcp_ipv4_new_update_destroy_from_header_flags() {
    let new = decode_file("tcp_ipv4_new_0.bin");
    assert_eq!(new.event_type, EventType::New);
    assert_eq!(new.tcp_state, Some(1)); // SYN_SENT
    assert!(new.unreplied());
    assert!(!new.assured());

    let update = decode_file("tcp_ipv4_update_0.bin");
    assert_eq!(update.event_type, EventType::Update);
    assert_eq!(update.tcp_state, Some(2)); // SYN_RECV
    assert!(!update.unreplied());

    let established = decode_file("tcp_ipv4_update_1.bin");
    assert_eq!(established.event_type, EventType::Update);
    assert_eq!(established.tcp_state, Some(3)); // ESTABLISHED
    assert!(established.assured());

    let destroy = decode_file("tcp_ipv4_destroy_0.bin");
    assert_eq!(destroy.event_type, EventType::Destroy);
    assert_eq!(destroy.tcp_state, Some(7)); // TIME_WAIT
    assert_eq!(destroy.original.l4proto, 6);
    assert_eq!(destroy.original.sport, 45712);
    assert_eq!(destroy.reply.dport, 45712);
    assert_eq!(destroy.original.dport, destroy.reply.sport);
    // One flow: the same CTA_ID from NEW to DESTROY.
    assert_eq!(new.id, destroy.id);
    assert_eq!(new.id, update.id);
}

#[test]
fn new_versus_update_is_decided_by_nlm_f_create_or_excl() {
    // The same NEW message with its NLM_F_CREATE|NLM_F_EXCL flags cleared is an UPDATE, and
    // an UPDATE with only one of them set becomes a NEW (as libnetfilter_conntrack does).
    let mut message = capture("udp_ipv4_new_0.bin");
    assert_eq!(flags(&message), 0x600);
    set_flags(&mut message, 0);
    assert_eq!(
        decode(&message, 0).expect("decodes").event_type,
        EventType::Update
    );
    for one in [0x200, 0x400] {
        let mut message = capture("udp_ipv4_update_0.bin");
        set_flags(&mut message, one);
        assert_eq!(
            decode(&message, 0).expect("decodes").event_type,
            EventType::New
        );
    }
}

#[test]
fn ipv6_addresses_are_rfc_5952_text() {
    let event = decode_file("tcp_ipv6_destroy_0.bin");
    assert_eq!(event.l3proto, 10);
    assert_eq!(event.l3proto_name(), "ipv6");
    assert_eq!(
        event.original.src.map(|a| a.to_string()),
        Some("::1".into())
    );
    assert_eq!(event.reply.dst.map(|a| a.to_string()), Some("::1".into()));
    let json = String::from_utf8(to_json(&event)).expect("utf-8");
    assert!(json.contains("\"Src\":\"::1\""), "{json}");

    // RFC 5952 on addresses the captures lack: longest zero run compressed, lower case,
    // no leading zeros, a single zero group not compressed, IPv4-mapped form.
    let mut message = capture("tcp_ipv6_destroy_0.bin");
    let samples = [
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        ("2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ("fe80::abcd:ef01", "fe80::abcd:ef01"),
    ];
    for (input, text) in samples {
        let address: std::net::Ipv6Addr = input.parse().expect("address");
        let loopback = std::net::Ipv6Addr::LOCALHOST.octets();
        let at = find(&message, &loopback).expect("the capture holds ::1");
        message[at..at + 16].copy_from_slice(&address.octets());
        let event = decode(&message, 0).expect("decodes");
        assert_eq!(event.original.src.map(|a| a.to_string()), Some(text.into()));
        let json = String::from_utf8(to_json(&event)).expect("utf-8");
        assert!(json.contains(&format!("\"Src\":\"{text}\"")), "{json}");
        message = capture("tcp_ipv6_destroy_0.bin");
    }
}

#[test]
fn counters_on_destroy() {
    let event = decode_file("tcp_ipv4_destroy_0.bin");
    let expected = entry("tcp_ipv4_destroy_0.bin");
    assert!(event.original.packets > 0 && event.original.bytes > 0);
    assert!(event.reply.packets > 0 && event.reply.bytes > 0);
    assert_eq!(
        Some(event.original.packets),
        expected["orig"]["packets"].as_u64()
    );
    assert_eq!(
        Some(event.original.bytes),
        expected["orig"]["bytes"].as_u64()
    );
    assert_eq!(
        Some(event.reply.packets),
        expected["reply"]["packets"].as_u64()
    );
    assert_eq!(Some(event.reply.bytes), expected["reply"]["bytes"].as_u64());
    assert!(event.start_ns.is_some() && event.stop_ns.is_some());
    assert!(event.start_ns <= event.stop_ns);

    // NEW carries no counters; a flow without accounting has none even on DESTROY.
    let new = decode_file("tcp_ipv4_new_0.bin");
    assert_eq!((new.original.packets, new.original.bytes), (0, 0));
    let noacct = decode_file("udp_ipv4_destroy_noacct_0.bin");
    assert_eq!((noacct.original.packets, noacct.reply.bytes), (0, 0));
    assert_eq!(noacct.start_ns, None);
}

#[test]
fn source_nat_is_recognised() {
    for file in [
        "tcp_ipv4_new_snat_0.bin",
        "tcp_ipv4_destroy_snat_0.bin",
        "udp_ipv4_destroy_snat_0.bin",
    ] {
        let event = decode_file(file);
        assert!(event.is_src_nat(), "{file} is source-NATed");
        assert_ne!(event.original.src, event.reply.dst, "{file}");
    }
    for file in [
        "udp_ipv4_new_nullnat_0.bin",
        "udp_ipv4_destroy_nullnat_0.bin",
        "tcp_ipv4_destroy_dnat_0.bin",
        "tcp_ipv4_destroy_0.bin",
        "udp_ipv6_destroy_0.bin",
    ] {
        assert!(
            !decode_file(file).is_src_nat(),
            "{file} is not source-NATed"
        );
    }
}

#[test]
fn zone_7() {
    for file in [
        "udp_ipv4_new_zone_0.bin",
        "udp_ipv4_update_zone_0.bin",
        "udp_ipv4_destroy_zone_0.bin",
    ] {
        assert_eq!(decode_file(file).zone, Some(7), "{file}");
    }
    assert_eq!(decode_file("udp_ipv4_destroy_0.bin").zone, None);
}

#[test]
fn mark_42_and_labels_skipped() {
    for file in [
        "udp_ipv4_new_marklabel_0.bin",
        "udp_ipv4_update_marklabel_0.bin",
        "udp_ipv4_destroy_marklabel_0.bin",
    ] {
        let event = decode_file(file);
        assert_eq!(event.mark, Some(42), "{file}");
        assert_eq!(event.original.dport, 5555, "{file}");
    }
    assert_eq!(decode_file("udp_ipv4_destroy_0.bin").mark, None);
}

#[test]
fn icmp_type_code_id() {
    let event = decode_file("icmp_ipv4_destroy_0.bin");
    assert_eq!(
        event.original.icmp,
        Some(Icmp {
            icmp_type: 8,
            code: 0,
            id: 4660
        })
    );
    assert_eq!(
        event.reply.icmp,
        Some(Icmp {
            icmp_type: 0,
            code: 0,
            id: 4660
        })
    );
    assert_eq!((event.original.sport, event.original.dport), (0, 0));

    let event = decode_file("icmpv6_ipv6_new_0.bin");
    assert_eq!(event.original.l4proto, 58);
    assert_eq!(
        event.original.icmp,
        Some(Icmp {
            icmp_type: 128,
            code: 0,
            id: 4661
        })
    );
    assert_eq!(event.reply.icmp.map(|i| i.icmp_type), Some(129));
    let json = json_value(&event);
    assert_eq!(json["Original"]["Layer4"]["Protoname"], "icmpv6");
    assert_eq!(json["Original"]["Layer4"]["Sport"], 0);
}

#[test]
fn gre_and_unknown_protocols_have_no_ports() {
    for (file, proto, name) in [
        ("gre_ipv4_new_0.bin", 47, "gre"),
        ("gre_ipv6_destroy_0.bin", 47, "gre"),
        ("unknown_ipv4_new_0.bin", 253, "unknown"),
        ("unknown_ipv6_destroy_0.bin", 253, "unknown"),
    ] {
        let event = decode_file(file);
        for direction in [&event.original, &event.reply] {
            assert_eq!(direction.l4proto, proto, "{file}");
            assert_eq!((direction.sport, direction.dport), (0, 0), "{file}");
            assert_eq!(direction.icmp, None, "{file}");
        }
        let json = json_value(&event);
        for side in ["Original", "Reply"] {
            let layer4 = &json[side]["Layer4"];
            assert_eq!(layer4["Protonum"], proto, "{file}");
            assert_eq!(layer4["Protoname"], name, "{file}");
            assert_eq!(layer4["Sport"], 0, "{file}");
            assert_eq!(layer4["Dport"], 0, "{file}");
        }
    }
}

#[test]
fn gre_keys_are_not_ports() {
    // Non-zero GRE keys travel in the port attributes; they must not show as ports.
    let mut message = capture("gre_ipv4_new_0.bin");
    edit_tuple_ports(&mut message, 0x1234, 0x5678);
    let event = decode(&message, 0).expect("decodes");
    assert_eq!((event.original.sport, event.original.dport), (0, 0));
    assert_eq!((event.reply.sport, event.reply.dport), (0, 0));
}
