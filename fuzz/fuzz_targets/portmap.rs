//! Port mapping: whatever the router (or anyone on the LAN spoofing it) sends back to our PCP
//! and NAT-PMP requests, parsed and fed to a mapper in every state it can be in; nothing
//! panics, and a mapping it takes is one it can renew and delete.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use shadowmesh_proto::portmap::{parse, PortMapper, SERVER_PORT};

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
    let router = SocketAddr::from(([10, 0, 0, 1], SERVER_PORT));
    let mut m = PortMapper::new(Ipv4Addr::new(10, 0, 0, 2), 4433, [3; 12], Duration::ZERO);
    // The input cut at 0xee bytes: each piece an answer, with time passing between.
    let mut now = Duration::ZERO;
    for piece in data.split(|b| *b == 0xee) {
        let _ = m.poll_transmit();
        let _ = m.handle_datagram(now, router, piece);
        now += Duration::from_millis(u64::from(piece.first().copied().unwrap_or(0)) * 40);
        m.handle_timeout(now);
        assert!(m.poll_timeout() >= now, "a deadline in the past");
        if let Some(mapping) = m.mapping(now) {
            assert_ne!(mapping.external.port(), 0);
        }
    }
    let _ = m.release();
});
