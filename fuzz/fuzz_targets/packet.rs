//! Inner IP packets as the data plane sees them (from the TUN, and decrypted from peers):
//! header address parsing, the route table lookup on those addresses, the ICMP "packet too
//! big" answer, which must stay inside its buffer and carry valid checksums, and TUN offload:
//! a virtio_net_hdr and super-packet cut into segments (or a partial checksum completed)
//! without panicking, every segment within its buffer.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use shadowmesh_proto::gso::{
    complete_csum, Coalescer, TcpGso, VnetHdr, F_NEEDS_CSUM, VNET_HDR_LEN,
};
use shadowmesh_proto::route::{addrs, icmp_too_big, Prefix, RouteTable};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = VnetHdr::parse(data) {
        let mut pkt = data[VNET_HDR_LEN..].to_vec();
        if h.flags & F_NEEDS_CSUM != 0 {
            let _ = complete_csum(&mut pkt, h.csum_start, h.csum_offset);
        }
        if let Ok(g) = TcpGso::new(&h, &pkt) {
            let mut out = vec![0u8; g.max_segment()];
            // Segments fed back through the receive side's coalescer.
            let mut c = Coalescer::new();
            for i in 0..g.count().min(64) {
                let n = g.write(&pkt, i, &mut out).unwrap();
                assert!(n <= out.len());
                if !c.push(&out[..n]) {
                    let _ = c.take();
                    let _ = c.push(&out[..n]);
                }
            }
            let _ = c.take();
        }
    }
    // Arbitrary packets into the coalescer, in pieces.
    let mut c = Coalescer::new();
    for piece in data.chunks(97) {
        if !c.push(piece) {
            if let Some(w) = c.take() {
                assert!(w.len() >= VNET_HDR_LEN);
            }
        }
    }
    let _ = c.take();
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
