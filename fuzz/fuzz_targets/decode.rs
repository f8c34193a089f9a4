//! Arbitrary bytes as one received datagram: split, decoded, and every event written as JSON
//! with every opt-in field.
//! Nothing may panic, and the JSON must always parse. Seeded with `rust/testdata/*.bin`.
#![no_main]

use conntrack_collector::decode::{decode, split_messages};
use conntrack_collector::json::to_json_with;
use conntrack_collector::Fields;
use libfuzzer_sys::fuzz_target;

fn check(event: &conntrack_collector::Event) {
    let json = to_json_with(event, Fields::all());
    if let Err(error) = serde_json::from_slice::<serde_json::Value>(&json) {
        panic!(
            "to_json_with wrote invalid JSON ({error}): {}",
            String::from_utf8_lossy(&json)
        );
    }
}

fuzz_target!(|datagram: &[u8]| {
    for message in split_messages(datagram).flatten() {
        if let Ok(event) = decode(message, 1) {
            check(&event);
        }
    }
    // Straight to the decoder too, so lengths the splitter refuses reach the parser.
    if let Ok(event) = decode(datagram, 1) {
        check(&event);
    }
});
