//! The exit's DNS forwarder: whatever a member sends it, and whatever comes back from the
//! resolver, judged without a panic; an answer is never taken for a query.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowmesh_proto::dns::{answers, is_query};

fuzz_target!(|data: &[u8]| {
    let (q, a) = data.split_at(data.len() / 2);
    if is_query(q) {
        assert!(!answers(q, q), "a query answers itself");
    }
    let _ = answers(q, a);
});
