//! HELLO: decoder and verifier, plus the control-message header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowmesh_crypto::hello::{verify_hello, HelloCheck};
use shadowmesh_proto::msg::{parse_header, Hello, Role};
use shadowmesh_proto::PeerId;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 5 {
        let _ = parse_header(data[..5].try_into().unwrap());
    }
    let _ = Hello::parse(data);
    let check = HelloCheck {
        me: PeerId([0; 32]),
        sender_role: Role::Dialler,
        expected_peer: None,
        exporter: &[1; 32],
        network_key: Some(&[2; 32]),
        tls_ed25519: &[3; 32],
        known: None,
        now_unix: 1_800_000_000,
    };
    assert!(verify_hello(data, &check).is_err());
});
