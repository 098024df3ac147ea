//! The routing table: 256 k-buckets indexed by the XOR distance's leading bit.
//!
//! Each bucket is LRU-ordered (least recently seen first). A new contact for a full bucket does
//! not evict anyone outright: the least recently seen entry is pinged first (Kademlia's
//! preference for old, proven nodes), and the newcomer waits as the bucket's one pending
//! candidate; further newcomers go to a bounded replacement cache, which refills the bucket when
//! an entry dies. Per-bucket subnet limits (2 per /24, 2 per /48) keep one network from filling a
//! bucket; loopback, private and link-local ranges are exempt, or every LAN and test would hit
//! them.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::VecDeque;

use super::rtt::Rtt;
use super::wire::Contact;
use super::{K, MAX_PER_SUBNET, REFRESH_INTERVAL, REPLACEMENT_CACHE};
use crate::PeerId;

/// Bucket of `other` relative to `local`: the index of the highest set bit of their XOR
/// distance (0..=255), or `None` for `local` itself.
pub fn bucket_index(local: &PeerId, other: &[u8; 32]) -> Option<usize> {
    for (i, (a, b)) in local.0.iter().zip(other).enumerate() {
        let x = a ^ b;
        if x != 0 {
            return Some(255 - (i * 8 + x.leading_zeros() as usize));
        }
    }
    None
}

/// A subnet key for the per-bucket limit, or `None` for exempt addresses.
pub fn subnet_key(addr: &SocketAddr) -> Option<[u8; 7]> {
    match addr.ip() {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            let exempt = ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || (o[0] == 100 && o[1] & 0xc0 == 64); // 100.64/10, carrier-grade NAT
            (!exempt).then_some([4, o[0], o[1], o[2], 0, 0, 0])
        }
        IpAddr::V6(ip) => {
            let o = ip.octets();
            let exempt = ip.is_loopback()
                || ip.is_unspecified()
                || o[0] & 0xfe == 0xfc // fc00::/7, unique local
                || (o[0] == 0xfe && o[1] & 0xc0 == 0x80); // fe80::/10
            (!exempt).then_some([6, o[0], o[1], o[2], o[3], o[4], o[5]])
        }
    }
}

/// One routing-table entry.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The contact.
    pub contact: Contact,
    /// When it was last heard from.
    pub last_seen: Duration,
    /// Requests it failed to answer since it was last heard from.
    pub fails: u8,
    /// Its measured round trip.
    pub rtt: Rtt,
}

#[derive(Debug, Default)]
struct Bucket {
    entries: Vec<Entry>,
    replacements: VecDeque<Contact>,
    /// A newcomer waiting for the LRU entry's ping to fail.
    pending: Option<(Contact, PeerId)>,
    last_refresh: Duration,
}

/// What [`RoutingTable::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// Added to a bucket with room.
    Inserted,
    /// Already present: moved to most recently seen, address updated.
    Updated,
    /// The bucket is full: ping this least-recently-seen entry, then report with
    /// [`RoutingTable::ping_result`]. The newcomer waits as the pending candidate.
    PingLru(Contact),
    /// The bucket is full and a ping is already under way: kept in the replacement cache.
    Cached,
    /// Not added (why).
    Rejected(&'static str),
}

/// Kademlia routing table. Bounded: at most 256 × (k + k replacements + 1) contacts.
#[derive(Debug)]
pub struct RoutingTable {
    local: PeerId,
    buckets: Vec<Bucket>,
}

impl RoutingTable {
    /// An empty table around `local`.
    pub fn new(local: PeerId) -> Self {
        RoutingTable {
            local,
            buckets: (0..256).map(|_| Bucket::default()).collect(),
        }
    }

    /// Our own id.
    pub fn local(&self) -> &PeerId {
        &self.local
    }

    /// Number of contacts in buckets (not counting replacement caches).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.entries.len()).sum()
    }

    /// Whether the table has no contacts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, bucket by bucket.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.entries.iter())
    }

    /// Whether `id` is in a bucket.
    pub fn contains(&self, id: &PeerId) -> bool {
        self.find(id).is_some()
    }

    fn find(&self, id: &PeerId) -> Option<(usize, usize)> {
        let b = bucket_index(&self.local, &id.0)?;
        let i = self.buckets[b]
            .entries
            .iter()
            .position(|e| e.contact.id == *id)?;
        Some((b, i))
    }

    /// Records that `c` was heard from at `now` (an answer, or a request it sent us).
    pub fn insert(&mut self, c: Contact, now: Duration) -> Insert {
        let Some(b) = bucket_index(&self.local, &c.id.0) else {
            return Insert::Rejected("own id");
        };
        let bucket = &mut self.buckets[b];
        if let Some(i) = bucket.entries.iter().position(|e| e.contact.id == c.id) {
            let mut e = bucket.entries.remove(i);
            e.contact = c;
            e.last_seen = now;
            e.fails = 0;
            bucket.entries.push(e);
            return Insert::Updated;
        }
        if let Some(net) = subnet_key(&c.addr) {
            let same = bucket
                .entries
                .iter()
                .filter(|e| subnet_key(&e.contact.addr) == Some(net))
                .count();
            if same >= MAX_PER_SUBNET {
                return Insert::Rejected("subnet limit");
            }
        }
        if bucket.entries.len() < K {
            bucket.entries.push(Entry {
                contact: c,
                last_seen: now,
                fails: 0,
                rtt: Rtt::default(),
            });
            return Insert::Inserted;
        }
        if bucket.pending.is_none() {
            let lru = bucket.entries[0].contact;
            bucket.pending = Some((c, lru.id));
            return Insert::PingLru(lru);
        }
        if bucket.pending.map(|p| p.0.id) != Some(c.id) {
            bucket.replacements.retain(|r| r.id != c.id);
            if bucket.replacements.len() >= REPLACEMENT_CACHE {
                bucket.replacements.pop_front();
            }
            bucket.replacements.push_back(c);
        }
        Insert::Cached
    }

    /// Reports the ping that [`Insert::PingLru`] asked for. Alive: the old entry stays (as
    /// most recently seen) and the candidate goes to the replacement cache. Dead: the old entry
    /// is evicted and the candidate takes its place.
    pub fn ping_result(&mut self, lru: &PeerId, alive: bool, now: Duration) {
        let Some(b) = bucket_index(&self.local, &lru.0) else {
            return;
        };
        let bucket = &mut self.buckets[b];
        let Some((cand, pinged)) = bucket.pending else {
            return;
        };
        if pinged != *lru {
            return;
        }
        bucket.pending = None;
        let pos = bucket.entries.iter().position(|e| e.contact.id == *lru);
        match (alive, pos) {
            (true, Some(i)) => {
                let mut e = bucket.entries.remove(i);
                e.last_seen = now;
                e.fails = 0;
                bucket.entries.push(e);
                if bucket.replacements.len() >= REPLACEMENT_CACHE {
                    bucket.replacements.pop_front();
                }
                bucket.replacements.push_back(cand);
            }
            (false, Some(i)) => {
                bucket.entries.remove(i);
                bucket.entries.push(Entry {
                    contact: cand,
                    last_seen: now,
                    fails: 0,
                    rtt: Rtt::default(),
                });
            }
            (_, None) => {
                if bucket.entries.len() < K {
                    bucket.entries.push(Entry {
                        contact: cand,
                        last_seen: now,
                        fails: 0,
                        rtt: Rtt::default(),
                    });
                }
            }
        }
    }

    /// Records that `id` did not answer at `addr`: charged to the entry only if the entry has
    /// that address (a contact some peer made up, with a real PeerId and another address, must
    /// not evict the real one when it fails). An entry that failed twice in a row, or once
    /// while a replacement is waiting, is dropped and the newest replacement promoted. Returns
    /// whether it was dropped.
    pub fn failed_at(&mut self, id: &PeerId, addr: &SocketAddr, now: Duration) -> bool {
        match self.find(id) {
            Some((b, i)) if self.buckets[b].entries[i].contact.addr == *addr => {
                self.failed(id, now)
            }
            _ => false,
        }
    }

    /// Records that `id` did not answer (whatever address it was tried at); see
    /// [`RoutingTable::failed_at`].
    pub fn failed(&mut self, id: &PeerId, now: Duration) -> bool {
        let Some((b, i)) = self.find(id) else {
            return false;
        };
        let bucket = &mut self.buckets[b];
        bucket.entries[i].fails = bucket.entries[i].fails.saturating_add(1);
        let drop = bucket.entries[i].fails >= 2 || !bucket.replacements.is_empty();
        if drop {
            bucket.entries.remove(i);
            if let Some(r) = bucket.replacements.pop_back() {
                bucket.entries.push(Entry {
                    contact: r,
                    last_seen: now,
                    fails: 0,
                    rtt: Rtt::default(),
                });
            }
        }
        drop
    }

    /// Removes `id` outright (e.g. it failed HELLO). Returns whether it was present.
    pub fn remove(&mut self, id: &PeerId) -> bool {
        let Some((b, i)) = self.find(id) else {
            return false;
        };
        self.buckets[b].entries.remove(i);
        true
    }

    /// Up to `n` contacts closest to `target`, nearest first.
    pub fn closest(&self, target: &[u8; 32], n: usize) -> Vec<Contact> {
        self.closest_where(target, n, |_| true)
    }

    /// Up to `n` contacts closest to `target` that have not failed a request since they were
    /// last heard from: what we tell others, and whom our own lookups start from. With fewer
    /// than `n` such, the failed ones fill in (a lookup with no seeds finds nothing).
    pub fn closest_live(&self, target: &[u8; 32], n: usize) -> Vec<Contact> {
        let live = self.closest_where(target, n, |e| e.fails == 0);
        if live.len() >= n.min(self.len()) {
            return live;
        }
        self.closest(target, n)
    }

    /// Up to `n` entries closest to `target` for which `keep` holds, nearest first.
    ///
    /// Buckets are visited in order of increasing distance from `target` (every entry of an
    /// earlier bucket is closer than every entry of a later one, as in rust-libp2p's
    /// `ClosestBucketsIter`), so only about `n` entries are ranked, not the whole table.
    fn closest_where(
        &self,
        target: &[u8; 32],
        n: usize,
        keep: impl Fn(&Entry) -> bool,
    ) -> Vec<Contact> {
        let t = PeerId(*target);
        let d = self.local.distance(&t);
        let bit = |j: usize| d[31 - j / 8] >> (j % 8) & 1 == 1;
        let start = bucket_index(&self.local, target);
        let zoom_in = (0..start.unwrap_or(0)).rev().filter(|&j| bit(j));
        let zoom_out = (0..256).filter(|&j| !bit(j) && Some(j) != start);
        let mut got: Vec<([u8; 32], Contact)> = Vec::with_capacity(n + K);
        for b in start.into_iter().chain(zoom_in).chain(zoom_out) {
            if got.len() >= n {
                break;
            }
            let mut part: Vec<([u8; 32], Contact)> = self.buckets[b]
                .entries
                .iter()
                .filter(|e| keep(e))
                .map(|e| (e.contact.id.distance(&t), e.contact))
                .collect();
            part.sort_unstable_by_key(|a| a.0);
            got.extend(part);
        }
        got.truncate(n);
        got.into_iter().map(|(_, c)| c).collect()
    }

    /// Adds a measured round trip to `id`'s entry, if it has one.
    pub fn rtt_sample(&mut self, id: &PeerId, rtt: Duration) {
        if let Some((b, i)) = self.find(id) {
            self.buckets[b].entries[i].rtt.sample(rtt);
        }
    }

    /// `id`'s measured round trip, if it is in a bucket and was measured.
    pub fn rtt(&self, id: &PeerId) -> Option<Rtt> {
        self.find(id)
            .map(|(b, i)| self.buckets[b].entries[i].rtt)
            .filter(|r| r.srtt().is_some())
    }

    /// Notes that a lookup touched bucket `b` (it needs no refresh for a while).
    pub fn touch_bucket(&mut self, b: usize, now: Duration) {
        if let Some(bucket) = self.buckets.get_mut(b) {
            bucket.last_refresh = now;
        }
    }

    /// Buckets due for a refresh: non-empty ones, and every bucket from the closest occupied
    /// one up (a node must know its neighbourhood), not refreshed for [`REFRESH_INTERVAL`].
    pub fn due_for_refresh(&self, now: Duration) -> Vec<usize> {
        let lowest = self.buckets.iter().position(|b| !b.entries.is_empty());
        (0..256)
            .filter(|&i| {
                let b = &self.buckets[i];
                (!b.entries.is_empty() || lowest.is_some_and(|l| i >= l))
                    && now.saturating_sub(b.last_refresh) >= REFRESH_INTERVAL
            })
            .collect()
    }

    /// An id inside bucket `b`: our id with bit `b` flipped, lower bits from `random`.
    pub fn random_id_in_bucket(&self, b: usize, random: [u8; 32]) -> [u8; 32] {
        let mut d = [0u8; 32];
        let byte = 31 - b / 8;
        let bit = b % 8;
        d[byte] = (1u8 << bit) | (random[byte] & ((1u8 << bit) - 1));
        d[byte + 1..].copy_from_slice(&random[byte + 1..]);
        let mut id = self.local.0;
        for (x, y) in id.iter_mut().zip(d) {
            *x ^= y;
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: PeerId, addr: &str) -> Contact {
        Contact {
            id,
            ed25519: [0; 32],
            addr: addr.parse().unwrap(),
        }
    }

    fn id_in_bucket(local: &PeerId, b: usize, n: u8) -> PeerId {
        let t = RoutingTable::new(*local);
        let mut r = [n; 32];
        r[0] = n;
        PeerId(t.random_id_in_bucket(b, r))
    }

    #[test]
    fn bucket_index_is_leading_bit() {
        let a = PeerId([0; 32]);
        let mut b = [0u8; 32];
        b[31] = 1;
        assert_eq!(bucket_index(&a, &b), Some(0));
        b[0] = 0x80;
        assert_eq!(bucket_index(&a, &b), Some(255));
        assert_eq!(bucket_index(&a, &a.0), None);
        let t = RoutingTable::new(PeerId([0x5a; 32]));
        for i in [0, 7, 8, 100, 255] {
            assert_eq!(
                bucket_index(t.local(), &t.random_id_in_bucket(i, [0xff; 32])),
                Some(i)
            );
        }
    }

    #[test]
    fn full_bucket_pings_lru_then_evicts_or_keeps() {
        let local = PeerId([0; 32]);
        let mut t = RoutingTable::new(local);
        for n in 0..K as u8 {
            let r = t.insert(
                c(id_in_bucket(&local, 200, n + 1), &format!("10.0.0.{n}:1")),
                Duration::ZERO,
            );
            assert_eq!(r, Insert::Inserted);
        }
        let first = id_in_bucket(&local, 200, 1);
        let newcomer = c(id_in_bucket(&local, 200, 99), "10.0.1.1:1");
        assert_eq!(
            t.insert(newcomer, Duration::from_secs(1)),
            Insert::PingLru(c(first, "10.0.0.0:1"))
        );
        let third = c(id_in_bucket(&local, 200, 98), "10.0.1.2:1");
        assert_eq!(t.insert(third, Duration::from_secs(1)), Insert::Cached);
        // LRU answered: it stays, the newcomer is cached.
        t.ping_result(&first, true, Duration::from_secs(2));
        assert!(t.contains(&first) && !t.contains(&newcomer.id));
        // Next newcomer: LRU is now the second entry; it is dead this time.
        let second = id_in_bucket(&local, 200, 2);
        assert!(
            matches!(t.insert(c(id_in_bucket(&local, 200, 97), "10.0.1.3:1"), Duration::from_secs(3)), Insert::PingLru(x) if x.id == second)
        );
        t.ping_result(&second, false, Duration::from_secs(4));
        assert!(!t.contains(&second));
        assert!(t.contains(&id_in_bucket(&local, 200, 97)));
        assert_eq!(t.len(), K);
        // A failed entry is replaced from the cache.
        assert!(t.failed(&first, Duration::from_secs(5)));
        assert!(!t.contains(&first));
        assert_eq!(t.len(), K);
    }

    #[test]
    fn subnet_limit_applies_to_public_only() {
        let local = PeerId([0; 32]);
        let mut t = RoutingTable::new(local);
        for n in 0..MAX_PER_SUBNET as u8 {
            assert_eq!(
                t.insert(
                    c(
                        id_in_bucket(&local, 255, n + 1),
                        &format!("198.51.100.{n}:1")
                    ),
                    Duration::ZERO
                ),
                Insert::Inserted
            );
        }
        assert_eq!(
            t.insert(
                c(id_in_bucket(&local, 255, 50), "198.51.100.77:1"),
                Duration::ZERO
            ),
            Insert::Rejected("subnet limit")
        );
        assert_eq!(
            t.insert(
                c(id_in_bucket(&local, 255, 51), "198.51.101.77:1"),
                Duration::ZERO
            ),
            Insert::Inserted
        );
        for n in 0..10u8 {
            assert_eq!(
                t.insert(
                    c(
                        id_in_bucket(&local, 254, n + 1),
                        &format!("127.0.0.1:{}", 1000 + n as u16)
                    ),
                    Duration::ZERO
                ),
                Insert::Inserted
            );
        }
        assert!(subnet_key(&"[2001:db8:1::1]:1".parse().unwrap()).is_some());
        assert!(subnet_key(&"[fd00::1]:1".parse().unwrap()).is_none());
    }

    /// A contact that failed since it was last heard from is left out of what we tell others,
    /// until it is heard from again; round trips are kept per entry.
    #[test]
    fn failed_contacts_are_not_offered_and_round_trips_are_kept() {
        let local = PeerId([0; 32]);
        let mut t = RoutingTable::new(local);
        let ids: Vec<PeerId> = (1..=5)
            .map(|n| id_in_bucket(&local, 100 + n as usize, n))
            .collect();
        for (n, id) in ids.iter().enumerate() {
            t.insert(c(*id, &format!("10.0.0.{n}:1")), Duration::ZERO);
        }
        let target = ids[0].0;
        assert_eq!(t.closest_live(&target, 3).len(), 3);
        // One failure, no replacement waiting: it stays in the table but is not offered.
        assert!(!t.failed(&ids[0], Duration::from_secs(1)));
        assert!(t.contains(&ids[0]));
        let live = t.closest_live(&target, 4);
        assert_eq!(live.len(), 4);
        assert!(live.iter().all(|x| x.id != ids[0]));
        assert!(t.closest(&target, 4).iter().any(|x| x.id == ids[0]));
        // Asked for more than the live ones, the failed one fills in.
        assert_eq!(t.closest_live(&target, 10).len(), 5);
        // Heard from again: offered again.
        t.insert(c(ids[0], "10.0.0.0:1"), Duration::from_secs(2));
        assert_eq!(t.closest_live(&target, 1)[0].id, ids[0]);
        assert_eq!(t.rtt(&ids[1]), None);
        t.rtt_sample(&ids[1], Duration::from_millis(80));
        assert_eq!(
            t.rtt(&ids[1]).and_then(|r| r.srtt()),
            Some(Duration::from_millis(80))
        );
    }

    #[test]
    fn closest_is_sorted_by_distance() {
        let local = PeerId([0; 32]);
        let mut t = RoutingTable::new(local);
        let mut x: u64 = 1;
        for _ in 0..500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut id = [0u8; 32];
            for (i, b) in id.iter_mut().enumerate() {
                *b = (x >> (i % 8 * 8)) as u8 ^ i as u8;
            }
            t.insert(c(PeerId(id), "127.0.0.1:1"), Duration::ZERO);
        }
        let target = [0x33; 32];
        let got = t.closest(&target, K);
        assert_eq!(got.len(), K.min(t.len()));
        let mut all: Vec<_> = t
            .entries()
            .map(|e| e.contact.id.distance(&PeerId(target)))
            .collect();
        all.sort();
        let d: Vec<_> = got.iter().map(|c| c.id.distance(&PeerId(target))).collect();
        assert_eq!(d, all[..d.len()]);
    }
}
