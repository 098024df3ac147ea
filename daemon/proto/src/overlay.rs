//! Overlay addresses derived from a PeerId (DESIGN.md, "Identity and addresses").
//!
//! IPv4: `10.100.X.Y/16` with `X = PeerId[0]`, `Y = PeerId[1]`. Two PeerIds collide with
//! probability 1/65,534 per pair (about 50% for 300 peers), so the address a node claims is part
//! of its signed record together with the rehash counter that produced it, and a collision is
//! settled deterministically: the lower PeerId keeps the address, the other rehashes
//! `SHA-256(PeerId || counter)` (counter big-endian u32, starting at 1) until it finds an
//! address no lower PeerId claims. Host parts `.0.0` and `.255.255` are never used.
//!
//! IPv6 needs no collision rule: a /128 inside the mesh's own /48, `fd` followed by 40 bits of a
//! hash of the network key (RFC 4193's global ID, as ZeroTier derives its prefix from the
//! network id), the remaining 80 bits from the PeerId. Never all of `fd00::/8`: OpenWrt gives
//! every LAN its own ULA /48, and the tunnel must not swallow them.

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::route::Prefix;
use crate::PeerId;

/// The overlay IPv4 network: a /16 (`10.100.0.0/16` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V4Prefix {
    /// First two octets of the network.
    pub net: [u8; 2],
}

impl Default for V4Prefix {
    fn default() -> Self {
        V4Prefix { net: [10, 100] }
    }
}

impl V4Prefix {
    /// The address with host part `(x, y)`.
    pub fn addr(&self, x: u8, y: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], x, y)
    }

    /// Whether `a` lies in this /16.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        a.octets()[..2] == self.net
    }

    /// The /16 as a prefix.
    pub fn prefix(&self) -> Prefix {
        Prefix {
            addr: self.addr(0, 0).into(),
            len: 16,
        }
    }
}

/// Host part `(X, Y)` for rehash round `counter` (0 = the PeerId's first two bytes).
pub fn ipv4_host(id: &PeerId, counter: u32) -> (u8, u8) {
    if counter == 0 {
        return (id.0[0], id.0[1]);
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&id.0);
    ctx.update(&counter.to_be_bytes());
    let h = ctx.finish();
    (h.as_ref()[0], h.as_ref()[1])
}

fn usable(host: (u8, u8)) -> bool {
    host != (0, 0) && host != (255, 255)
}

/// The first usable candidate at or after `counter`, with the counter that produced it.
pub fn ipv4_candidate(prefix: V4Prefix, id: &PeerId, mut counter: u32) -> (Ipv4Addr, u32) {
    loop {
        let h = ipv4_host(id, counter);
        if usable(h) {
            return (prefix.addr(h.0, h.1), counter);
        }
        counter = counter.wrapping_add(1);
    }
}

/// Chooses `me`'s overlay IPv4 address given what other peers claim.
///
/// `claimant(addr)` returns the PeerId that claims `addr` (from verified records), if any. An
/// address claimed by a lower PeerId is skipped; one claimed by a higher PeerId is ours (that
/// peer must move). Returns the address and the counter to put in our record.
pub fn choose_ipv4(
    prefix: V4Prefix,
    me: &PeerId,
    mut claimant: impl FnMut(Ipv4Addr) -> Option<PeerId>,
) -> (Ipv4Addr, u32) {
    let mut counter = 0;
    // 65,534 usable hosts: if every one were held by a lower id we would loop forever, so bound
    // the search; past the bound the last candidate is returned and the collision persists.
    for _ in 0..=u16::MAX as u32 {
        let (addr, used) = ipv4_candidate(prefix, me, counter);
        match claimant(addr) {
            Some(other) if other < *me => counter = used + 1,
            _ => return (addr, used),
        }
    }
    ipv4_candidate(prefix, me, counter)
}

/// Checks that `(addr, counter)` is what `id` derives for that counter: a record claiming any
/// other address is refused, so nobody can squat on an address that isn't theirs to rehash to.
pub fn ipv4_claim_valid(prefix: V4Prefix, id: &PeerId, addr: Ipv4Addr, counter: u32) -> bool {
    let h = ipv4_host(id, counter);
    usable(h) && prefix.addr(h.0, h.1) == addr
}

/// The overlay IPv6 prefix (`fd00::/8` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V6Prefix {
    /// Network address; bits past `len` are ignored.
    pub net: Ipv6Addr,
    /// Prefix length, 8..=64.
    pub len: u8,
}

impl V6Prefix {
    /// The mesh's /48: `fd`, then the first 40 bits of
    /// `SHA-256("shadowmesh overlay ipv6" || network_key)`.
    pub fn for_network(network_key: &[u8; 32]) -> V6Prefix {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"shadowmesh overlay ipv6");
        ctx.update(network_key);
        let h = ctx.finish();
        let mut net = [0u8; 16];
        net[0] = 0xfd;
        net[1..6].copy_from_slice(&h.as_ref()[..5]);
        V6Prefix {
            net: Ipv6Addr::from(net),
            len: 48,
        }
    }

    /// The prefix as a route prefix.
    pub fn prefix(&self) -> Prefix {
        let len = self.len.clamp(8, 64);
        Prefix::new(self.net.into(), len).expect("8..=64 fits IPv6")
    }
}

/// The node's overlay IPv6 address: the prefix, then the PeerId's leading bits.
pub fn ipv6(prefix: V6Prefix, id: &PeerId) -> Ipv6Addr {
    let len = prefix.len.clamp(8, 64) as u32;
    let net = u128::from_be_bytes(prefix.net.octets());
    let mut idbits = [0u8; 16];
    idbits.copy_from_slice(&id.0[..16]);
    let host = u128::from_be_bytes(idbits) >> len;
    let mask = !0u128 << (128 - len);
    Ipv6Addr::from((net & mask) | host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn id(b0: u8, b1: u8, fill: u8) -> PeerId {
        let mut a = [fill; 32];
        a[0] = b0;
        a[1] = b1;
        PeerId(a)
    }

    #[test]
    fn ipv4_from_first_bytes() {
        let p = V4Prefix::default();
        let (a, c) = ipv4_candidate(p, &id(7, 9, 1), 0);
        assert_eq!(a, Ipv4Addr::new(10, 100, 7, 9));
        assert_eq!(c, 0);
        assert!(ipv4_claim_valid(p, &id(7, 9, 1), a, 0));
        assert!(!ipv4_claim_valid(
            p,
            &id(7, 9, 1),
            Ipv4Addr::new(10, 100, 7, 10),
            0
        ));
    }

    #[test]
    fn reserved_hosts_are_skipped() {
        let p = V4Prefix::default();
        for (x, y) in [(0, 0), (255, 255)] {
            let (a, c) = ipv4_candidate(p, &id(x, y, 3), 0);
            assert_ne!(a.octets()[2..], [x, y]);
            assert!(c >= 1);
            assert!(ipv4_claim_valid(p, &id(x, y, 3), a, c));
        }
    }

    #[test]
    fn collision_lower_id_keeps_higher_rehashes() {
        let p = V4Prefix::default();
        let low = id(5, 5, 0);
        let high = id(5, 5, 1);
        let mut claims = BTreeMap::new();
        claims.insert(Ipv4Addr::new(10, 100, 5, 5), low);
        let (a_low, c_low) = choose_ipv4(p, &low, |a| claims.get(&a).copied());
        assert_eq!((a_low, c_low), (Ipv4Addr::new(10, 100, 5, 5), 0));
        let (a_high, c_high) = choose_ipv4(p, &high, |a| claims.get(&a).copied());
        assert_ne!(a_high, a_low);
        assert!(c_high >= 1);
        assert!(ipv4_claim_valid(p, &high, a_high, c_high));
        // Symmetric: if the high id claimed first, the low id still keeps the address.
        let mut claims2 = BTreeMap::new();
        claims2.insert(Ipv4Addr::new(10, 100, 5, 5), high);
        assert_eq!(choose_ipv4(p, &low, |a| claims2.get(&a).copied()).0, a_low);
    }

    #[test]
    fn ipv6_prefix_and_bits() {
        let p = V6Prefix::for_network(&[7; 32]);
        assert_eq!(p.len, 48);
        assert_eq!(p.net.octets()[0], 0xfd);
        assert_eq!(&p.net.octets()[6..], &[0; 10]);
        assert_ne!(p, V6Prefix::for_network(&[8; 32]));
        let a = ipv6(p, &id(0x12, 0x34, 0x56));
        let o = a.octets();
        assert_eq!(&o[..6], &p.net.octets()[..6]);
        assert_eq!(&o[6..9], &[0x12, 0x34, 0x56]);
        assert!(p.prefix().contains(a.into()));
        let p48 = V6Prefix {
            net: "fd42:1:2::".parse().unwrap(),
            len: 48,
        };
        let b = ipv6(p48, &id(0xaa, 0xbb, 0xcc)).octets();
        assert_eq!(&b[..6], &[0xfd, 0x42, 0, 1, 0, 2]);
        assert_eq!(&b[6..9], &[0xaa, 0xbb, 0xcc]);
    }
}
