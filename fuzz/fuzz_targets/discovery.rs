//! LAN discovery: whatever arrives on the discovery port is parsed and opened without a panic;
//! what opens is a well-formed announcement, and sealing it again opens to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowmesh_crypto::discovery::{open, seal};
use shadowmesh_proto::discovery::{Announce, Header};

const KEY: [u8; 32] = [7; 32];

fuzz_target!(|data: &[u8]| {
    let _ = Header::parse(data);
    let _ = Announce::parse(data);
    let ours = data.first().copied().unwrap_or(0) as u32;
    if let Ok(a) = open(&KEY, ours, data) {
        assert_ne!(a.port, 0);
        assert_eq!(open(&KEY, ours, &seal(&KEY, ours, &a)), Ok(a));
    }
    // A sealed announcement of the fuzzer's choosing opens to itself.
    if data.len() >= 34 {
        if let Ok(a) = Announce::parse(&data[..34]) {
            assert_eq!(open(&KEY, 5, &seal(&KEY, 5, &a)), Ok(a));
        }
    }
});
