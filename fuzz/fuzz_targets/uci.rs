//! The UCI parser: any bytes give sections or a line-numbered error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowmesh_proto::uci;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match uci::parse(text) {
            Ok(sections) => assert!(sections.len() <= uci::MAX_SECTIONS),
            Err(e) => assert!(e.line <= text.lines().count()),
        }
    }
});
