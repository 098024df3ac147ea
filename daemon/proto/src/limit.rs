//! Per-source limits, sans-IO: token buckets and in-flight counts keyed by where a request
//! comes from, each map bounded so that a flood of sources cannot grow it.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::BTreeMap;

/// What a source is limited by: a public IPv4 address's /24 or IPv6 address's /48 (one host
/// rarely holds more, and an attacker's neighbours share its budget); the address itself for
/// private, link-local and carrier-grade-NAT ones (every gateway of one LAN would otherwise
/// share one budget); and for loopback the socket address, port included (processes on one
/// host, as in tests and single-host meshes, are separate sources). Port 0 where it does not
/// count.
pub fn source_key(addr: SocketAddr) -> SocketAddr {
    let ip = match crate::dht::kbucket::subnet_key(&addr) {
        Some(k) if k[0] == 4 => IpAddr::from([k[1], k[2], k[3], 0]),
        Some(k) => {
            let mut o = [0u8; 16];
            o[..6].copy_from_slice(&k[1..7]);
            IpAddr::from(o)
        }
        None if addr.ip().is_loopback() => return addr,
        None => addr.ip(),
    };
    SocketAddr::new(ip, 0)
}

/// Token buckets per key: a burst, then a steady rate. At most `max_keys` keys are tracked;
/// past that the key whose bucket was touched longest ago is forgotten (its bucket would have
/// refilled anyway, unless the map churns faster than a bucket refills, which then errs on the
/// side of letting a source in).
#[derive(Debug, Clone)]
pub struct TokenBuckets<K> {
    map: BTreeMap<K, (Duration, u32)>,
    burst: u32,
    per_sec: u32,
    max_keys: usize,
}

impl<K: Ord + Copy> TokenBuckets<K> {
    /// Buckets of `burst` tokens refilled at `per_sec`, for at most `max_keys` keys.
    pub fn new(burst: u32, per_sec: u32, max_keys: usize) -> Self {
        TokenBuckets {
            map: BTreeMap::new(),
            burst,
            per_sec,
            max_keys,
        }
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Takes a token from `key`'s bucket at `now`; `false` if it is empty.
    pub fn allow(&mut self, key: K, now: Duration) -> bool {
        if !self.map.contains_key(&key) && self.map.len() >= self.max_keys {
            if let Some(oldest) = self.map.iter().min_by_key(|(_, v)| v.0).map(|(k, _)| *k) {
                self.map.remove(&oldest);
            }
        }
        let (last, tokens) = self.map.entry(key).or_insert((now, self.burst));
        let refill = (now.saturating_sub(*last).as_millis() as u64 * self.per_sec as u64 / 1000)
            .min(u32::MAX as u64) as u32;
        if refill > 0 {
            *tokens = tokens.saturating_add(refill).min(self.burst);
            *last = now;
        }
        if *tokens == 0 {
            return false;
        }
        *tokens -= 1;
        true
    }
}

/// Counts of things in flight per key (handshakes, connections), with a cap per key and in all.
#[derive(Debug, Clone)]
pub struct InFlight<K> {
    map: BTreeMap<K, usize>,
    total: usize,
    per_key: usize,
    max_total: usize,
}

impl<K: Ord + Copy> InFlight<K> {
    /// At most `per_key` per key and `max_total` in all.
    pub fn new(per_key: usize, max_total: usize) -> Self {
        InFlight {
            map: BTreeMap::new(),
            total: 0,
            per_key,
            max_total,
        }
    }

    /// How many are in flight in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// How many `key` has in flight.
    pub fn of(&self, key: &K) -> usize {
        self.map.get(key).copied().unwrap_or(0)
    }

    /// Whether one more for `key` fits.
    pub fn has_room(&self, key: &K) -> bool {
        self.total < self.max_total && self.of(key) < self.per_key
    }

    /// Counts one more for `key` if it fits; returns whether it did.
    pub fn start(&mut self, key: K) -> bool {
        if !self.has_room(&key) {
            return false;
        }
        *self.map.entry(key).or_insert(0) += 1;
        self.total += 1;
        true
    }

    /// Counts one fewer for `key` (one that [`InFlight::start`] counted).
    pub fn end(&mut self, key: &K) {
        if let Some(n) = self.map.get_mut(key) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.map.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_grouped_by_prefix_unless_private() {
        let k = |s: &str| source_key(s.parse().unwrap()).to_string();
        assert_eq!(k("198.51.100.7:1"), "198.51.100.0:0");
        assert_eq!(k("198.51.100.200:2"), "198.51.100.0:0");
        assert_eq!(k("[2001:db8:1:2:3::4]:1"), "[2001:db8:1::]:0");
        assert_eq!(k("10.250.0.66:1"), "10.250.0.66:0");
        assert_eq!(k("10.250.0.66:2"), "10.250.0.66:0");
        assert_eq!(k("127.0.0.1:1"), "127.0.0.1:1");
    }

    #[test]
    fn buckets_refill_and_stay_bounded() {
        let mut b = TokenBuckets::new(3, 2, 2);
        let t = Duration::from_secs(10);
        assert!((0..3).all(|_| b.allow(1, t)));
        assert!(!b.allow(1, t));
        // Half a second later: one token back (2 a second).
        assert!(b.allow(1, t + Duration::from_millis(500)));
        assert!(!b.allow(1, t + Duration::from_millis(500)));
        // Other keys are not held back, and the map holds two at most.
        assert!(b.allow(2, t));
        assert!(b.allow(3, t + Duration::from_secs(1)));
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn in_flight_caps_per_key_and_in_all() {
        let mut f = InFlight::new(2, 3);
        assert!(f.start(1) && f.start(1));
        assert!(!f.start(1), "per key");
        assert!(f.start(2));
        assert!(!f.start(3), "in all");
        f.end(&1);
        assert!(f.start(3));
        assert_eq!((f.total(), f.of(&1), f.of(&3)), (3, 1, 1));
        f.end(&9);
        assert_eq!(
            f.total(),
            3,
            "ending what was never started changes nothing"
        );
    }
}
