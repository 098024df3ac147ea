//! Inner IP packets as the data plane sees them (from the TUN, and decrypted from peers):
//! header address parsing, the route table lookup on those addresses, and the ICMP "packet too
//! big" answer, which must stay inside its buffer and carry valid checksums.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use shadowmesh_proto::route::{addrs, icmp_too_big, Prefix, RouteTable};

fuzz_target!(|data: &[u8]| {
    let Ok(a) = addrs(data) else { return };
    assert_eq!(a.src.is_ipv4(), a.dst.is_ipv4());
    let mut t = RouteTable::new(8);
    t.insert(Prefix::host(a.src), 1u8).unwrap();
    assert_eq!(t.lookup(a.src), Some(1));
    let from: IpAddr = if a.src.is_ipv4() {
        "10.100.1.2".parse().unwrap()
    } else {
        "fd00::1".parse().unwrap()
    };
    let mtu = u16::from_be_bytes([data[0], *data.get(1).unwrap_or(&0)]);
    let mut out = [0u8; 1280];
    if let Some(n) = icmp_too_big(data, mtu, from, &mut out) {
        assert!(n <= out.len());
        let back = addrs(&out[..n]).unwrap();
        assert_eq!(back.dst, a.src);
        assert_eq!(back.src, from);
    }
});
