//! The join string parser: any bytes give a join or a typed error, never a panic; whatever
//! parses is written back as a string that parses to the same join.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowmesh_proto::join;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(j) = join::parse(text) {
            assert!(!j.bootstrap.is_empty() && j.bootstrap.len() <= join::MAX_BOOTSTRAP);
            assert_eq!(join::parse(&j.to_string()).as_ref(), Ok(&j));
        }
    }
});
