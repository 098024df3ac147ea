//! The record store: signed records held for others, per (storage key, owner).
//!
//! Bounded four ways: at most [`MAX_RECORDS`] in all (when full, a record for a key closer to
//! this node replaces the farthest one), at most [`MAX_OWNERS_PER_KEY`] owners under one storage
//! key (nobody can squat a key with throwaway identities), at most [`MAX_PER_SOURCE`] records
//! last stored from one IP address (nobody fills the store from one host), and each record is
//! dropped [`RECORD_HOLD`] after its last STORE or at its expiry, whichever comes first.

use core::net::IpAddr;
use core::time::Duration;
use std::collections::BTreeMap;

use super::wire::StoreCode;
use super::{MAX_RECORDS, RECORD_HOLD};
use crate::PeerId;

/// Most owners whose records one storage key holds.
pub const MAX_OWNERS_PER_KEY: usize = 4;

/// Most records whose last STORE came from one IP address: a sixteenth of the store (64 records
/// of ~7.5 KB, ~480 KB).
pub const MAX_PER_SOURCE: usize = super::MAX_RECORDS / 16;

/// What the engine needs to know of a verified record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// Storage key (inside the signed envelope).
    pub key: [u8; 32],
    /// Owner (PeerId bound to the signing key).
    pub owner: PeerId,
    /// Sequence number.
    pub seq: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

#[derive(Debug, Clone)]
struct Held<R> {
    record: R,
    meta: RecordMeta,
    stored_at: Duration,
    replicated_at: Duration,
    source: IpAddr,
}

/// Records held for others.
#[derive(Debug, Clone)]
pub struct RecordStore<R> {
    map: BTreeMap<([u8; 32], PeerId), Held<R>>,
    max: usize,
    /// The node's own id: when full, the record whose key is farthest from it goes first.
    local: PeerId,
}

impl<R: Clone> Default for RecordStore<R> {
    fn default() -> Self {
        Self::new(MAX_RECORDS)
    }
}

impl<R: Clone> RecordStore<R> {
    /// A store holding at most `max` records.
    pub fn new(max: usize) -> Self {
        RecordStore {
            map: BTreeMap::new(),
            max,
            local: PeerId([0; 32]),
        }
    }

    /// A store of [`MAX_RECORDS`] for the node `local`.
    pub fn near(local: PeerId) -> Self {
        RecordStore {
            local,
            ..Self::new(MAX_RECORDS)
        }
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Stores a verified record that `source` sent. Equal sequence refreshes the hold time;
    /// lower is refused.
    pub fn put(
        &mut self,
        record: R,
        meta: RecordMeta,
        source: IpAddr,
        now: Duration,
        now_unix: u64,
    ) -> StoreCode {
        if meta.expires_at <= now_unix {
            return StoreCode::Expired;
        }
        let k = (meta.key, meta.owner);
        if let Some(h) = self.map.get_mut(&k) {
            if h.meta.seq > meta.seq {
                return StoreCode::Outdated;
            }
            if h.meta.seq == meta.seq {
                h.stored_at = now;
                return StoreCode::Ok;
            }
            *h = Held {
                record,
                meta,
                stored_at: now,
                replicated_at: now,
                source,
            };
            return StoreCode::Ok;
        }
        let owners = self
            .map
            .range((meta.key, PeerId([0; 32]))..=(meta.key, PeerId([0xff; 32])))
            .count();
        if owners >= MAX_OWNERS_PER_KEY
            || self.map.values().filter(|h| h.source == source).count() >= MAX_PER_SOURCE
        {
            return StoreCode::Full;
        }
        if self.map.len() >= self.max {
            // Full: the record farthest from us leaves, if the new one is closer.
            let far = |key: &[u8; 32]| self.local.distance(&PeerId(*key));
            let Some((&victim, _)) = self.map.iter().max_by_key(|(k, _)| far(&k.0)) else {
                return StoreCode::Full;
            };
            if far(&victim.0) <= far(&meta.key) {
                return StoreCode::Full;
            }
            self.map.remove(&victim);
        }
        self.map.insert(
            k,
            Held {
                record,
                meta,
                stored_at: now,
                replicated_at: now,
                source,
            },
        );
        StoreCode::Ok
    }

    /// `owner`'s record under `key` if its sequence is above `known_seq`.
    pub fn get(&self, key: &[u8; 32], owner: &PeerId, known_seq: u64) -> Option<(&R, &RecordMeta)> {
        self.map
            .get(&(*key, *owner))
            .filter(|h| h.meta.seq > known_seq)
            .map(|h| (&h.record, &h.meta))
    }

    /// Drops expired records and those not stored again for [`RECORD_HOLD`].
    pub fn expire(&mut self, now: Duration, now_unix: u64) {
        self.map.retain(|_, h| {
            h.meta.expires_at > now_unix && now.saturating_sub(h.stored_at) < RECORD_HOLD
        });
    }

    /// Up to `max` records that neither a STORE nor our own re-replication touched for
    /// `interval`; marks them re-replicated at `now`. The caller stores them at the k closest
    /// nodes again, so a record survives its holders' churn until it expires.
    pub fn due_for_replication(&mut self, now: Duration, interval: Duration, max: usize) -> Vec<R> {
        let mut out = Vec::new();
        for h in self.map.values_mut() {
            if out.len() >= max {
                break;
            }
            if now.saturating_sub(h.stored_at.max(h.replicated_at)) >= interval {
                h.replicated_at = now;
                out.push(h.record.clone());
            }
        }
        out
    }

    /// Every held record (for re-replication).
    pub fn iter(&self) -> impl Iterator<Item = (&R, &RecordMeta)> {
        self.map.values().map(|h| (&h.record, &h.meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    fn meta(key: u8, owner: u8, seq: u64) -> RecordMeta {
        RecordMeta {
            key: [key; 32],
            owner: PeerId([owner; 32]),
            seq,
            expires_at: 1000,
        }
    }

    #[test]
    fn sequence_rules_per_key_and_owner() {
        let mut s = RecordStore::new(10);
        let t = Duration::ZERO;
        assert_eq!(s.put("a1", meta(1, 1, 5), src(1), t, 0), StoreCode::Ok);
        assert_eq!(
            s.put("a0", meta(1, 1, 4), src(1), t, 0),
            StoreCode::Outdated
        );
        assert_eq!(s.put("a1", meta(1, 1, 5), src(1), t, 0), StoreCode::Ok);
        assert_eq!(s.put("a2", meta(1, 1, 6), src(1), t, 0), StoreCode::Ok);
        // Another owner's record under the same key does not displace the first.
        assert_eq!(s.put("x9", meta(1, 2, 99), src(1), t, 0), StoreCode::Ok);
        assert_eq!(s.get(&[1; 32], &PeerId([1; 32]), 0).unwrap().0, &"a2");
        assert!(s.get(&[1; 32], &PeerId([1; 32]), 6).is_none());
        for o in 3..=4 {
            assert_eq!(s.put("y", meta(1, o, 1), src(1), t, 0), StoreCode::Ok);
        }
        assert_eq!(s.put("z", meta(1, 5, 1), src(1), t, 0), StoreCode::Full);
        assert_eq!(
            s.put("e", meta(2, 1, 1), src(1), t, 1000),
            StoreCode::Expired
        );
        s.expire(RECORD_HOLD, 0);
        assert!(s.is_empty());
    }

    #[test]
    fn replication_is_due_hourly_and_bounded() {
        let mut s = RecordStore::new(10);
        for k in 0..5 {
            s.put(k, meta(k, 1, 1), src(k), Duration::ZERO, 0);
        }
        let hour = Duration::from_secs(3600);
        assert!(s.due_for_replication(hour / 2, hour, 10).is_empty());
        assert_eq!(s.due_for_replication(hour, hour, 3).len(), 3);
        assert_eq!(s.due_for_replication(hour, hour, 10).len(), 2);
        assert!(s.due_for_replication(hour + hour / 2, hour, 10).is_empty());
        // A fresh STORE postpones it.
        s.put(0, meta(0, 1, 1), src(0), 2 * hour, 0);
        assert_eq!(s.due_for_replication(2 * hour, hour, 10).len(), 4);
    }

    #[test]
    fn total_bound() {
        let mut s = RecordStore::new(3);
        for k in 0..3 {
            assert_eq!(
                s.put(k, meta(k, 1, 1), src(k), Duration::ZERO, 0),
                StoreCode::Ok
            );
        }
        assert_eq!(
            s.put(9, meta(9, 1, 1), src(9), Duration::ZERO, 0),
            StoreCode::Full
        );
    }

    #[test]
    fn full_store_keeps_the_keys_closest_to_us() {
        let mut s = RecordStore::near(PeerId([0; 32]));
        s.max = 3;
        let t = Duration::ZERO;
        // Distance from us is the key itself: 0x40.. is farther than 0x10...
        for (i, k) in [0x40u8, 0x20, 0x30].into_iter().enumerate() {
            assert_eq!(s.put("r", meta(k, 1, 1), src(i as u8), t, 0), StoreCode::Ok);
        }
        // Farther than everything held: refused.
        assert_eq!(s.put("r", meta(0x50, 1, 1), src(9), t, 0), StoreCode::Full);
        // Closer: the farthest (0x40) leaves.
        assert_eq!(s.put("r", meta(0x10, 1, 1), src(9), t, 0), StoreCode::Ok);
        assert_eq!(s.len(), 3);
        assert!(s.get(&[0x40; 32], &PeerId([1; 32]), 0).is_none());
        assert!(s.get(&[0x10; 32], &PeerId([1; 32]), 0).is_some());
    }

    #[test]
    fn one_source_fills_a_sixteenth_at_most() {
        let mut s = RecordStore::new(MAX_RECORDS);
        let t = Duration::ZERO;
        for k in 0..MAX_PER_SOURCE {
            assert_eq!(s.put("r", meta(k as u8, 1, 1), src(1), t, 0), StoreCode::Ok);
        }
        assert_eq!(s.put("r", meta(200, 1, 1), src(1), t, 0), StoreCode::Full);
        // Another host still stores; a record already held may still be renewed.
        assert_eq!(s.put("r", meta(200, 1, 1), src(2), t, 0), StoreCode::Ok);
        assert_eq!(s.put("r", meta(0, 1, 2), src(1), t, 0), StoreCode::Ok);
    }
}
