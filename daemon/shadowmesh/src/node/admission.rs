//! Admission of incoming handshakes: bounded in flight (in all and per source), rate-limited
//! per source, answered with one Retry per flight.

use super::*;

/// An accepted incoming connection whose handshake has not run yet; counts as in flight.
pub struct PendingHandshake {
    pub(super) incoming: crate::quic::Incoming,
    pub(super) _guard: InFlight,
}

/// Handshakes run side by side at most; beyond, new connections are refused (each one costs an
/// ML-KEM-1024 encapsulation and ML-DSA-87 verifications, and memory until it completes).
pub const MAX_IN_FLIGHT: usize = 64;

/// Handshakes in flight from one source ([`shadowmesh_proto::limit::source_key`]: a public
/// /24 or /48, a private address itself): one source holds at most an eighth of the slots,
/// whether or not it has proven its address.
pub const MAX_IN_FLIGHT_PER_SOURCE: usize = 8;

/// New handshakes one source may start at once, from a proven address...
pub const HANDSHAKE_BURST: u32 = 16;
/// ...and per second after that: each costs the listener an ML-KEM-1024 decapsulation, two
/// ML-DSA-87 verifications and a signature (~5 ms of a router core), so one source can take at
/// most ~2% of a core.
pub const HANDSHAKES_PER_SEC: u32 = 4;

/// Sources whose handshake budget is tracked (~64 B each: 256 KiB at most).
pub const SOURCES_TRACKED: usize = 4096;

/// Initial flights answered with a Retry in the last [`Retried::WINDOW`], by source and
/// destination connection ID. A post-quantum ClientHello spans two datagrams; when they are read
/// apart, the second one would draw a second Retry. A retransmission of the flight (the client
/// missed our Retry) comes a probe timeout later, outside the window, and is answered again.
/// Room for two waves of [`MAX_IN_FLIGHT`] flights (measured: at 32, a wave of 64 handshakes in
/// flight overwrote entries before the second datagrams came, 199 Retries for 160 handshakes).
pub(super) struct Retried {
    pub(super) ring: [Option<(SocketAddr, quinn_proto::ConnectionId, Instant)>; 128],
    pub(super) next: usize,
}

impl Default for Retried {
    fn default() -> Self {
        Retried {
            ring: [None; 128],
            next: 0,
        }
    }
}

impl Retried {
    const WINDOW: Duration = Duration::from_millis(100);

    /// Whether `key` was answered within the window.
    pub(super) fn answered(
        &self,
        key: (SocketAddr, quinn_proto::ConnectionId),
        now: Instant,
    ) -> bool {
        self.ring
            .iter()
            .flatten()
            .any(|(a, c, t)| (*a, *c) == key && now.saturating_duration_since(*t) < Self::WINDOW)
    }

    /// Whether `key` was not answered within the window (and notes it if so).
    pub(super) fn first_time(
        &mut self,
        key: (SocketAddr, quinn_proto::ConnectionId),
        now: Instant,
    ) -> bool {
        let seen = self.answered(key, now);
        if !seen {
            self.ring[self.next] = Some((key.0, key.1, now));
            self.next = (self.next + 1) % self.ring.len();
        }
        !seen
    }
}

/// One handshake in flight: counted in all and for its source until dropped.
pub(super) struct InFlight {
    pub(super) total: Arc<AtomicUsize>,
    pub(super) sources: std::rc::Rc<std::cell::RefCell<SourceCounts<SocketAddr>>>,
    pub(super) source: SocketAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        self.sources.borrow_mut().end(&self.source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn one_retry_per_flight_and_again_after_the_window() {
        let mut r = Retried::default();
        let t0 = Instant::now();
        let a: SocketAddr = "192.0.2.1:4433".parse().unwrap();
        let cid = quinn_proto::ConnectionId::new(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let other = quinn_proto::ConnectionId::new(&[9; 8]);
        assert!(r.first_time((a, cid), t0));
        // The flight's second datagram: ignored.
        assert!(!r.first_time((a, cid), t0 + Duration::from_millis(1)));
        // Another client, or another flight from the same address: answered.
        assert!(r.first_time((a, other), t0));
        // The client retransmits after a probe timeout: answered again.
        assert!(r.first_time((a, cid), t0 + Retried::WINDOW + Duration::from_millis(1)));
        // Bounded: after a full ring of other flights the entry is gone.
        for i in 0..128u8 {
            let c = quinn_proto::ConnectionId::new(&[i, 0xee, 0, 0]);
            assert!(r.first_time((a, c), t0 + Duration::from_millis(200)));
        }
        assert!(r.first_time((a, cid), t0 + Duration::from_millis(201)));
    }
}
