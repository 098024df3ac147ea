//! The ways a member is reached, each with its own liveness. Today a member has at most two:
//! its QUIC connection (quinn migrates it and measures its round trip) and, once the member
//! offered it, the fast lane (plain UDP to an address). Direct candidates and relays will be
//! more of the same. A path learns that it works from frames that authenticated over it, and
//! the fast lane's address moves only on such a frame: a replayed or forged frame from another
//! address moves nothing.

use std::net::SocketAddr;
use std::time::Duration;

/// What carries a path's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// QUIC datagrams on the member's connection.
    Quic,
    /// Plain UDP on the QUIC socket (the fast lane).
    Fast,
}

impl PathKind {
    /// The name `peers` reports.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Quic => "quic",
            PathKind::Fast => "udp",
        }
    }
}

/// One way to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    /// What carries it.
    pub kind: PathKind,
    /// The member's address on it.
    pub addr: SocketAddr,
    /// When an authenticated frame last arrived over it; `None`: none yet.
    pub last_received: Option<Duration>,
    /// Its smoothed round trip, where one is measured (quinn's, on the QUIC path).
    pub rtt: Option<Duration>,
}

impl Path {
    fn new(kind: PathKind, addr: SocketAddr) -> Path {
        Path {
            kind,
            addr,
            last_received: None,
            rtt: None,
        }
    }
}

/// A member's paths: the QUIC one always, the fast lane once offered.
#[derive(Debug, Clone)]
pub struct Paths {
    quic: Path,
    fast: Option<Path>,
    /// The QUIC path moved since [`Paths::take_moved`] last asked.
    moved: bool,
}

impl Paths {
    /// A member reached over a QUIC connection to `quic`.
    pub fn new(quic: SocketAddr) -> Paths {
        Paths {
            quic: Path::new(PathKind::Quic, quic),
            fast: None,
            moved: false,
        }
    }

    /// The member takes data frames as plain UDP, at its QUIC path's address (where it said
    /// so from). Through a relay that address is the circuit's local one: the frames go to the
    /// relay in the circuit's envelope, outside QUIC (whose loss-based congestion control held
    /// a relayed TCP flow to 1-2 Mbit/s at 1% loss and 80 ms).
    pub fn offer_fast(&mut self) {
        self.fast = Some(Path::new(PathKind::Fast, self.quic.addr));
    }

    /// Whether the QUIC path goes through a relay (its address is a relayed member's local
    /// one, [`shadowmesh_proto::relay::is_mapped`]).
    #[inline]
    pub fn relayed(&self) -> bool {
        shadowmesh_proto::relay::is_mapped(self.quic.addr)
    }

    /// The member's address on the QUIC path.
    #[inline]
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic.addr
    }

    /// The QUIC path's smoothed round trip, where quinn measured one.
    pub fn quic_rtt(&self) -> Option<Duration> {
        self.quic.rtt
    }

    /// Where data frames go as plain UDP; `None`: in QUIC datagrams.
    #[inline]
    pub fn fast_addr(&self) -> Option<SocketAddr> {
        self.fast.map(|p| p.addr)
    }

    /// A QUIC datagram from the member authenticated at `now`.
    #[inline]
    pub fn heard_quic(&mut self, now: Duration) {
        self.quic.last_received = Some(now);
    }

    /// A fast-lane frame from `from` authenticated at `now`. Returns the fast lane's new
    /// address when the frame moved it (the member's address changed: a NAT rebinding, a new
    /// uplink); nothing happens on a lane the member never offered.
    #[inline]
    pub fn heard_fast(&mut self, now: Duration, from: SocketAddr) -> Option<SocketAddr> {
        let p = self.fast.as_mut()?;
        p.last_received = Some(now);
        if p.addr == from {
            return None;
        }
        p.addr = from;
        Some(from)
    }

    /// What quinn reports of the QUIC path: the member's current address (after a migration)
    /// and the smoothed round trip.
    pub fn quic_seen(&mut self, addr: SocketAddr, rtt: Duration) {
        self.moved |= self.quic.addr != addr;
        self.quic.addr = addr;
        self.quic.rtt = Some(rtt);
    }

    /// Whether the QUIC path moved (a migration) since the last time this was asked.
    pub fn take_moved(&mut self) -> bool {
        std::mem::take(&mut self.moved)
    }

    /// Every path, the QUIC one first.
    pub fn iter(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(&self.quic).chain(self.fast.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }
    const T: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_fast_lane_exists_only_once_offered() {
        let mut p = Paths::new(a(1));
        assert_eq!(p.fast_addr(), None);
        assert_eq!(p.heard_fast(T(1), a(2)), None, "a lane never offered");
        assert_eq!(p.fast_addr(), None);
        assert_eq!(p.iter().count(), 1);
        p.offer_fast();
        assert_eq!(p.fast_addr(), Some(a(1)));
        let kinds: Vec<_> = p.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [PathKind::Quic, PathKind::Fast]);
        // Through a relay: at the circuit's local address.
        let mut r = Paths::new(shadowmesh_proto::relay::mapped(3));
        assert!(r.relayed());
        r.offer_fast();
        assert_eq!(r.fast_addr(), Some(shadowmesh_proto::relay::mapped(3)));
    }

    #[test]
    fn an_authenticated_frame_from_elsewhere_moves_the_fast_lane() {
        let mut p = Paths::new(a(1));
        p.offer_fast();
        assert_eq!(p.heard_fast(T(1), a(1)), None);
        assert_eq!(p.heard_fast(T(2), a(9)), Some(a(9)));
        assert_eq!(p.fast_addr(), Some(a(9)));
        assert_eq!(p.heard_fast(T(3), a(9)), None);
        let fast = p.iter().find(|p| p.kind == PathKind::Fast).unwrap();
        assert_eq!(fast.last_received, Some(T(3)));
    }

    #[test]
    fn each_path_keeps_its_own_liveness() {
        let mut p = Paths::new(a(1));
        p.offer_fast();
        p.heard_quic(T(5));
        p.quic_seen(a(7), Duration::from_millis(12));
        let paths: Vec<Path> = p.iter().copied().collect();
        assert_eq!(paths[0].last_received, Some(T(5)));
        assert_eq!(paths[0].addr, a(7));
        assert_eq!(paths[0].rtt, Some(Duration::from_millis(12)));
        assert_eq!(
            paths[1].last_received, None,
            "nothing came on the fast lane"
        );
        assert_eq!(
            paths[1].addr,
            a(1),
            "quinn's migration does not move the fast lane"
        );
    }
}
