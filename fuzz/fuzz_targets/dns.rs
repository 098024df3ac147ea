//! The exit's DNS forwarder: whatever a member sends it, and whatever comes back from the
//! resolver, judged without a panic; nothing is both a query and a response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowmesh_proto::dns::{is_query, is_response};

fuzz_target!(|data: &[u8]| {
    assert!(!(is_query(data) && is_response(data)));
});
