//! The key-file parser: anything but a well-formed file is a typed refusal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowmesh_crypto::Identity;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = Identity::from_key_file(data) {
        // Only a file with a valid checksum and matching keys parses; it must round-trip.
        assert_eq!(&id.to_key_file()[..], data);
    }
});
