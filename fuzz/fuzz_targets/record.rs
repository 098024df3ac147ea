//! Signed peer records: layout decoder, full verification, and the payload decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowmesh_proto::record::{Payload, RecordRef};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = RecordRef::parse(data) {
        assert_eq!(r.as_bytes().len(), data.len());
        let _ = r.check_times(1_800_000_000);
        // Verification must refuse (nobody can forge both signatures) without panicking.
        assert!(shadowmesh_crypto::record::verify_record(data, 1_800_000_000).is_err());
    }
    if let Ok(p) = Payload::parse(data) {
        let mut out = Vec::new();
        p.emit(&mut out).unwrap();
        assert_eq!(Payload::parse(&out).unwrap(), p);
    }
});
