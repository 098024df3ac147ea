//! Relays: the envelope a relayed datagram travels in and the `Circuit` control message, on
//! arbitrary bytes. A circuit that parses reads back the same from what it emits; an envelope written over
//! any datagram reads back its circuit id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowmesh_proto::relay::{envelope, set_envelope, Circuit, ENVELOPE_LEN};

fuzz_target!(|data: &[u8]| {
    let _ = envelope(data);
    if let Ok(c) = Circuit::parse(data) {
        let mut out = Vec::new();
        c.emit(&mut out);
        assert_eq!(Circuit::parse(&out), Ok(c));
    }
    if data.len() >= ENVELOPE_LEN + 4 {
        let id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let mut d = data[4..].to_vec();
        set_envelope(&mut d, id);
        assert_eq!(envelope(&d), Some(id));
    }
});
