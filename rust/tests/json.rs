//! The JSON message: key order and values, and the exact bytes of one event.

use super::*;

fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn check_direction_json(file: &str, side: &Value, direction: &Direction, want: &Value, l3: u8) {
    assert_eq!(keys(side), ["Layer3", "Layer4", "Counter"], "{file}");
    let layer3 = &side["Layer3"];
    assert_eq!(
        keys(layer3),
        ["Protonum", "Protoname", "Src", "Dst"],
        "{file}"
    );
    assert_eq!(layer3["Protonum"], u64::from(l3), "{file}");
    assert_eq!(
        layer3["Protoname"],
        if l3 == 2 { "ipv4" } else { "ipv6" },
        "{file}"
    );
    assert_eq!(layer3["Src"], want["src"], "{file}");
    assert_eq!(layer3["Dst"], want["dst"], "{file}");
    let layer4 = &side["Layer4"];
    assert_eq!(
        keys(layer4),
        ["Protonum", "Protoname", "Sport", "Dport"],
        "{file}"
    );
    assert_eq!(layer4["Protonum"], u64::from(direction.l4proto), "{file}");
    assert_eq!(
        layer4["Protoname"],
        crate::event::l4proto_name(direction.l4proto),
        "{file}"
    );
    assert_eq!(layer4["Sport"], want["sport"], "{file}");
    assert_eq!(layer4["Dport"], want["dport"], "{file}");
    let counter = &side["Counter"];
    assert_eq!(keys(counter), ["Packets", "Bytes"], "{file}");
    assert_eq!(counter["Packets"], want["packets"], "{file}");
    assert_eq!(counter["Bytes"], want["bytes"], "{file}");
}

#[test]
fn json_keys_order_and_values_agree_with_manifest() {
    for expected in manifest() {
        let file = expected["file"].as_str().expect("file");
        let event = decode_file(file);
        let json = json_value(&event);
        assert_eq!(
            keys(&json),
            [
                "Timestamp",
                "Type",
                "Id",
                "Original",
                "Reply",
                "UNREPLIED",
                "ASSURED"
            ],
            "{file}"
        );
        assert_eq!(json["Timestamp"], TIMESTAMP_MS, "{file}");
        assert_eq!(json["Type"], expected["type"], "{file}");
        assert_eq!(json["Id"], expected["id"], "{file}");
        assert_eq!(json["UNREPLIED"], expected["unreplied"], "{file}");
        assert_eq!(json["ASSURED"], expected["assured"], "{file}");
        assert_eq!(json["Original"]["Layer4"]["Protonum"], expected["l4proto"]);
        let l3 = expected["l3proto"].as_u64().expect("l3proto") as u8;
        check_direction_json(
            file,
            &json["Original"],
            &event.original,
            &expected["orig"],
            l3,
        );
        check_direction_json(file, &json["Reply"], &event.reply, &expected["reply"], l3);
    }
}

#[test]
fn json_raw_bytes_of_one_destroy() {
    // The exact bytes, so order, spacing and casing are pinned without a JSON library.
    let event = decode_file("udp_ipv4_destroy_0.bin");
    let e = entry("udp_ipv4_destroy_0.bin");
    let expected = format!(
        "{{\"Timestamp\":{TIMESTAMP_MS},\"Type\":\"DESTROY\",\"Id\":{id},\
         \"Original\":{{\"Layer3\":{{\"Protonum\":2,\"Protoname\":\"ipv4\",\"Src\":\"127.0.0.1\",\"Dst\":\"127.0.0.1\"}},\
         \"Layer4\":{{\"Protonum\":17,\"Protoname\":\"udp\",\"Sport\":{os},\"Dport\":{od}}},\
         \"Counter\":{{\"Packets\":{op},\"Bytes\":{ob}}}}},\
         \"Reply\":{{\"Layer3\":{{\"Protonum\":2,\"Protoname\":\"ipv4\",\"Src\":\"127.0.0.1\",\"Dst\":\"127.0.0.1\"}},\
         \"Layer4\":{{\"Protonum\":17,\"Protoname\":\"udp\",\"Sport\":{rs},\"Dport\":{rd}}},\
         \"Counter\":{{\"Packets\":{rp},\"Bytes\":{rb}}}}},\
         \"UNREPLIED\":false,\"ASSURED\":false}}",
        id = e["id"],
        os = e["orig"]["sport"],
        od = e["orig"]["dport"],
        op = e["orig"]["packets"],
        ob = e["orig"]["bytes"],
        rs = e["reply"]["sport"],
        rd = e["reply"]["dport"],
        rp = e["reply"]["packets"],
        rb = e["reply"]["bytes"],
    );
    assert_eq!(String::from_utf8(to_json(&event)).expect("utf-8"), expected);
}
