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

/// Rehash rounds a claim may use. With 1,000 members in the 65,534 addresses a PeerId needs a
/// second round with probability 1.5%, and a 64th practically never; the bound keeps one
/// rebuild's hashing to at most 64 SHA-256 per member whatever the records say.
pub const MAX_REHASH: u32 = 64;

/// What became of one member's overlay IPv4 claim under the collision rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Verdict {
    /// The address the rule gives the claimant: it owns it.
    Owner,
    /// A lower PeerId owns the address: the claimant must rehash.
    Held(PeerId),
    /// Not what the claimant's PeerId derives with the claimed counter.
    NotDerived,
    /// Derived, but with a counter past an address that was free to the claimant: a low PeerId
    /// could otherwise search counters until it lands on any address it wants to take.
    Skipped,
}

/// Settles overlay IPv4 claims by the collision rule, the same way at every node that knows the
/// same members: in ascending PeerId order, each PeerId owns the first usable candidate
/// (counter 0, 1, ...) that no lower PeerId owns. `claims` are `(PeerId, address, counter)` in
/// ascending PeerId order (a `BTreeMap`'s); `me`, if given, takes its place in that order without
/// a claim. `verdict` hears each claim's outcome. Returns the address and counter `me` owns
/// (`None` only past [`MAX_REHASH`] rounds).
pub fn settle_ipv4(
    prefix: V4Prefix,
    me: Option<&PeerId>,
    claims: impl IntoIterator<Item = (PeerId, Ipv4Addr, u32)>,
    mut verdict: impl FnMut(PeerId, Ipv4Addr, Ipv4Verdict),
) -> Option<(Ipv4Addr, u32)> {
    // Addresses owned so far, sorted (a Vec: one more BTreeMap instantiation costs a router's
    // flash more than the binary searches cost time at a rebuild).
    let mut owned = Owned(Vec::new());
    let mut mine = None;
    let mut me = me.copied();
    let mut last: Option<PeerId> = None;
    let own_turn = |owned: &mut Owned, me: PeerId| {
        let r = first_free(prefix, &me, owned);
        if let Some((a, _)) = r {
            owned.insert(a, me);
        }
        r
    };
    for (id, addr, counter) in claims {
        debug_assert!(
            last.is_none_or(|l| l < id),
            "claims in ascending PeerId order"
        );
        last = Some(id);
        if let Some(m) = me.filter(|m| *m < id) {
            mine = own_turn(&mut owned, m);
            me = None;
        }
        if me == Some(id) {
            continue;
        }
        let v = if first_free(prefix, &id, &owned) == Some((addr, counter)) {
            owned.insert(addr, id);
            Ipv4Verdict::Owner
        } else if !ipv4_claim_valid(prefix, &id, addr, counter) {
            Ipv4Verdict::NotDerived
        } else if let Some(o) = owned.get(addr) {
            Ipv4Verdict::Held(o)
        } else {
            Ipv4Verdict::Skipped
        };
        verdict(id, addr, v);
    }
    if let Some(m) = me {
        mine = own_turn(&mut owned, m);
    }
    mine
}

/// Owned overlay IPv4 addresses, sorted by address.
struct Owned(Vec<(Ipv4Addr, PeerId)>);

impl Owned {
    fn get(&self, a: Ipv4Addr) -> Option<PeerId> {
        let i = self.0.binary_search_by_key(&a, |e| e.0).ok()?;
        Some(self.0[i].1)
    }

    fn insert(&mut self, a: Ipv4Addr, id: PeerId) {
        if let Err(i) = self.0.binary_search_by_key(&a, |e| e.0) {
            self.0.insert(i, (a, id));
        }
    }
}

/// `id`'s first usable candidate that nobody in `owned` holds, within [`MAX_REHASH`] rounds.
fn first_free(prefix: V4Prefix, id: &PeerId, owned: &Owned) -> Option<(Ipv4Addr, u32)> {
    let mut counter = 0;
    while counter < MAX_REHASH {
        let (addr, used) = ipv4_candidate(prefix, id, counter);
        if used >= MAX_REHASH {
            return None;
        }
        if owned.get(addr).is_none() {
            return Some((addr, used));
        }
        counter = used + 1;
    }
    None
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

    /// Settles `claims` (any order) as a node that is `me` would.
    fn settle(
        me: Option<&PeerId>,
        claims: &[(PeerId, Ipv4Addr, u32)],
    ) -> (Option<(Ipv4Addr, u32)>, BTreeMap<PeerId, Ipv4Verdict>) {
        let mut sorted = claims.to_vec();
        sorted.sort();
        let mut out = BTreeMap::new();
        let mine = settle_ipv4(V4Prefix::default(), me, sorted, |id, _, v| {
            out.insert(id, v);
        });
        (mine, out)
    }

    #[test]
    fn collision_lower_id_keeps_higher_rehashes() {
        let p = V4Prefix::default();
        let low = id(5, 5, 0);
        let high = id(5, 5, 1);
        let x = Ipv4Addr::new(10, 100, 5, 5);
        // Both claim counter 0: the low one owns it, the high one is told to move.
        let (_, v) = settle(None, &[(high, x, 0), (low, x, 0)]);
        assert_eq!(v[&low], Ipv4Verdict::Owner);
        assert_eq!(v[&high], Ipv4Verdict::Held(low));
        // The high one, settling for itself, moves to its first free rehash.
        let (mine, v) = settle(Some(&high), &[(low, x, 0)]);
        let (a, c) = mine.unwrap();
        assert_ne!(a, x);
        assert!(c >= 1);
        assert!(ipv4_claim_valid(p, &high, a, c));
        assert_eq!(v[&low], Ipv4Verdict::Owner);
        // The low one keeps the address whoever claimed first, and refuses the high one's claim
        // to it; the high one's rehashed claim is accepted everywhere.
        let (mine, v) = settle(Some(&low), &[(high, x, 0)]);
        assert_eq!(mine, Some((x, 0)));
        assert_eq!(v[&high], Ipv4Verdict::Held(low));
        let (mine, v) = settle(Some(&low), &[(high, a, c)]);
        assert_eq!(mine, Some((x, 0)));
        assert_eq!(v[&high], Ipv4Verdict::Owner);
        let (_, v) = settle(None, &[(high, a, c), (low, x, 0)]);
        assert_eq!(
            (v[&low], v[&high]),
            (Ipv4Verdict::Owner, Ipv4Verdict::Owner)
        );
    }

    #[test]
    fn a_counter_cannot_be_chosen_to_take_an_address() {
        let p = V4Prefix::default();
        // A lower PeerId searches counters until one derives the victim's address (here the
        // victim is made to fit the thief's 1,000th candidate).
        let thief = id(1, 2, 3);
        let (target, c) = ipv4_candidate(p, &thief, 1000);
        let o = target.octets();
        let victim = id(o[2], o[3], 9);
        assert!(thief < victim);
        let (_, v) = settle(None, &[(thief, target, c), (victim, target, 0)]);
        assert!(matches!(
            v[&thief],
            Ipv4Verdict::Skipped | Ipv4Verdict::NotDerived
        ));
        assert_eq!(v[&victim], Ipv4Verdict::Owner);
        // An address the PeerId does not derive at all.
        let (_, v) = settle(None, &[(thief, Ipv4Addr::new(10, 100, 9, 9), 0)]);
        assert_eq!(v[&thief], Ipv4Verdict::NotDerived);
        // The victim settling for itself keeps its address.
        let (mine, _) = settle(Some(&victim), &[(thief, target, c)]);
        assert_eq!(mine, Some((target, 0)));
    }

    #[test]
    fn chains_of_collisions_settle_alike_at_every_node() {
        // Ids sharing their first two bytes, so all collide at counter 0; then each must move
        // past what every lower one owns.
        let ids: Vec<PeerId> = (0..6).map(|i| id(9, 9, i)).collect();
        // What each PeerId ends up owning when every one settles for itself knowing the others'
        // settled claims, iterated to a fixed point from everyone claiming counter 0.
        let mut claims: Vec<(PeerId, Ipv4Addr, u32)> = ids
            .iter()
            .map(|i| {
                let (a, c) = ipv4_candidate(V4Prefix::default(), i, 0);
                (*i, a, c)
            })
            .collect();
        for _ in 0..ids.len() {
            claims = ids
                .iter()
                .map(|me| {
                    let others: Vec<_> = claims.iter().filter(|c| c.0 != *me).copied().collect();
                    let (a, c) = settle(Some(me), &others).0.unwrap();
                    (*me, a, c)
                })
                .collect();
        }
        let addrs: std::collections::BTreeSet<Ipv4Addr> = claims.iter().map(|c| c.1).collect();
        assert_eq!(addrs.len(), ids.len(), "distinct addresses");
        // An observer accepts every final claim, and so does each member for the others.
        let (_, v) = settle(None, &claims);
        assert!(v.values().all(|v| *v == Ipv4Verdict::Owner), "{v:?}");
        for me in &ids {
            let others: Vec<_> = claims.iter().filter(|c| c.0 != *me).copied().collect();
            let (mine, v) = settle(Some(me), &others);
            assert_eq!(
                mine.map(|m| (*me, m.0, m.1)),
                claims.iter().find(|c| c.0 == *me).copied()
            );
            assert!(v.values().all(|v| *v == Ipv4Verdict::Owner));
        }
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
