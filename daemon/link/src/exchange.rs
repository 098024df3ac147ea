//! Peer exchange: which members named by another member we dial, and when.
//!
//! A member's `Peers` message names up to 64 contacts; each would cost us a handshake (ML-DSA
//! work and ~50 KiB while it runs). So each PeerId is dialled at most once per
//! [`Exchange::again`], at most [`Exchange::in_flight_max`] at a time, and the memory of whom we
//! tried is bounded. Time is the caller's monotonic clock, as a `Duration` since any epoch.

use std::time::Duration;

use shadowmesh_proto::PeerId;

/// What to do with one contact a member told us about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Dial it; call [`Exchange::finished`] when the dial is over.
    Dial,
    /// Tried recently: skip it.
    Recent,
    /// Too many dials in flight, or too many PeerIds remembered: skip it and the rest.
    Busy,
}

/// The peer-exchange dial limiter.
#[derive(Debug)]
pub struct Exchange {
    /// Whom we dialled and when, sorted by PeerId (a Vec: on a router each map type
    /// instantiated costs flash; this one is searched once per named contact).
    tried: Vec<(PeerId, Duration)>,
    in_flight: usize,
    /// Dials in flight at most.
    pub in_flight_max: usize,
    /// A PeerId is dialled at most this often.
    pub again: Duration,
    /// PeerIds remembered at most.
    pub remember_max: usize,
}

impl Exchange {
    /// A limiter allowing `in_flight_max` dials at once, each PeerId once per `again`,
    /// remembering at most `remember_max` PeerIds.
    pub fn new(in_flight_max: usize, again: Duration, remember_max: usize) -> Exchange {
        Exchange {
            tried: Vec::new(),
            in_flight: 0,
            in_flight_max,
            again,
            remember_max,
        }
    }

    /// Whether to dial `id` now.
    pub fn offer(&mut self, now: Duration, id: PeerId) -> Verdict {
        if self.in_flight >= self.in_flight_max {
            return Verdict::Busy;
        }
        let again = self.again;
        let at = self.tried.binary_search_by_key(&id, |e| e.0);
        if let Ok(i) = at {
            if now.saturating_sub(self.tried[i].1) < again {
                return Verdict::Recent;
            }
            self.tried[i].1 = now;
        } else {
            if self.tried.len() >= self.remember_max {
                self.tried.retain(|e| now.saturating_sub(e.1) < again);
                if self.tried.len() >= self.remember_max {
                    return Verdict::Busy;
                }
            }
            let i = self.tried.partition_point(|e| e.0 < id);
            self.tried.insert(i, (id, now));
        }
        self.in_flight += 1;
        Verdict::Dial
    }

    /// A dial that [`Exchange::offer`] allowed is over.
    pub fn finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Dials in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn each_peer_once_per_interval_and_a_bounded_number_at_once() {
        let mut x = Exchange::new(2, 60 * S, 100);
        assert_eq!(x.offer(S, id(1)), Verdict::Dial);
        assert_eq!(x.offer(S, id(1)), Verdict::Recent);
        assert_eq!(x.offer(S, id(2)), Verdict::Dial);
        assert_eq!(x.offer(S, id(3)), Verdict::Busy);
        x.finished();
        assert_eq!(x.offer(2 * S, id(3)), Verdict::Dial);
        x.finished();
        x.finished();
        assert_eq!(x.in_flight(), 0);
        // Still recent 59 s later; dialled again at 61 s.
        assert_eq!(x.offer(60 * S, id(1)), Verdict::Recent);
        assert_eq!(x.offer(61 * S, id(1)), Verdict::Dial);
    }

    #[test]
    fn memory_is_bounded_and_old_entries_make_room() {
        let mut x = Exchange::new(1000, 60 * S, 3);
        for n in 0..3 {
            assert_eq!(x.offer(S, id(n)), Verdict::Dial);
        }
        assert_eq!(x.offer(2 * S, id(9)), Verdict::Busy);
        assert_eq!(x.tried.len(), 3);
        // Once the old ones are past the interval, they make room.
        assert_eq!(x.offer(62 * S, id(9)), Verdict::Dial);
        assert_eq!(x.tried.len(), 1);
    }
}
