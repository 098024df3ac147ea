//! The circuits a relay carries: which datagram goes where, and the limits that keep a relay
//! from being made to carry a mesh's bulk traffic by surprise.
//!
//! A circuit joins two members the relay holds links with. Each end has its own circuit id
//! (what its envelopes carry) and is known by the address of its link to the relay: a datagram
//! is forwarded only if it comes from that address with that end's id, so that nobody else can
//! inject into a circuit or learn one's ids by trying. The addresses follow the links when the
//! members' NATs move them ([`Relay::moved`]).
//!
//! The limits are named constants, after libp2p's circuit relay v2 (128 reservations, 16
//! circuits, 4 per peer, 2 minutes and 128 KiB per circuit), scaled for a VPN whose circuits
//! carry a member's traffic until a direct path opens, not a handshake: a circuit is dropped
//! when it has been idle for [`CIRCUIT_IDLE`] or has carried [`CIRCUIT_BYTES`], and carries at
//! most [`CIRCUIT_RATE`] bytes a second (a token bucket of [`CIRCUIT_BURST`]).

use std::net::SocketAddr;
use std::time::Duration;

use shadowmesh_proto::PeerId;

/// Circuits a relay carries at once.
pub const RELAY_CIRCUITS: usize = 32;
/// Circuits one member may have a relay carry at once (either end).
pub const RELAY_CIRCUITS_PER_MEMBER: usize = 4;
/// A circuit nothing crossed for this long is dropped.
pub const CIRCUIT_IDLE: Duration = Duration::from_secs(60);
/// Bytes one circuit carries before it is dropped (its ends ask for another, or go direct).
pub const CIRCUIT_BYTES: u64 = 4 << 30;
/// Bytes a second one circuit carries (100 Mbit/s); beyond that its datagrams are dropped.
pub const CIRCUIT_RATE: u64 = 12_500_000;
/// The burst a circuit may send above its rate.
pub const CIRCUIT_BURST: u64 = 1 << 20;

/// Why a relay refused a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// [`RELAY_CIRCUITS`] are open.
    Full,
    /// One end has [`RELAY_CIRCUITS_PER_MEMBER`] open.
    MemberFull,
}

/// One end of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// The member.
    pub pid: PeerId,
    /// Where its link to us is.
    pub addr: SocketAddr,
    /// The id its envelopes carry.
    pub id: u32,
}

/// One circuit and what it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Circuit {
    /// The member that asked for it.
    pub a: End,
    /// The member it reaches.
    pub b: End,
    /// Bytes forwarded (both ways, envelopes included).
    pub bytes: u64,
    /// Datagrams forwarded.
    pub packets: u64,
    /// Datagrams dropped over the rate.
    pub dropped: u64,
    tokens: u64,
    refilled: Duration,
    used: Duration,
}

/// The totals a relay reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayCounters {
    /// Circuits opened.
    pub opened: u64,
    /// Circuits refused (over a limit).
    pub refused: u64,
    /// Bytes forwarded over circuits since start.
    pub bytes: u64,
    /// Datagrams forwarded.
    pub packets: u64,
    /// Datagrams dropped: no such circuit, from the wrong address, over a circuit's rate.
    pub dropped: u64,
}

/// The circuits this node carries.
#[derive(Debug, Default)]
pub struct Relay {
    circuits: Vec<Circuit>,
    next_id: u32,
    counters: RelayCounters,
}

impl Relay {
    /// No circuits.
    pub fn new() -> Relay {
        Relay::default()
    }

    /// The circuits open now.
    pub fn circuits(&self) -> &[Circuit] {
        &self.circuits
    }

    /// The totals.
    pub fn counters(&self) -> RelayCounters {
        self.counters
    }

    /// Carries totals over from an earlier table.
    pub fn restore(&mut self, c: RelayCounters) {
        self.counters = c;
    }

    fn fresh_id(&mut self) -> u32 {
        loop {
            // Ids are not secrets (a datagram must also come from the end's address); they
            // only need to be distinct and non-zero.
            self.next_id = self.next_id.wrapping_add(0x9E37_79B9);
            let id = self.next_id;
            if id != 0 && !self.circuits.iter().any(|c| c.a.id == id || c.b.id == id) {
                return id;
            }
        }
    }

    /// Opens a circuit at `now` from `a` to `b` (each a member and where its link is). The
    /// circuit between the two that is open already is returned again, so that asking twice
    /// costs nothing. Returns the ids of `a`'s end and `b`'s end.
    pub fn open(
        &mut self,
        now: Duration,
        a: (PeerId, SocketAddr),
        b: (PeerId, SocketAddr),
    ) -> Result<(u32, u32), Refused> {
        self.expire(now);
        if let Some(c) = self
            .circuits
            .iter_mut()
            .find(|c| (c.a.pid, c.b.pid) == (a.0, b.0) || (c.a.pid, c.b.pid) == (b.0, a.0))
        {
            c.a.addr = if c.a.pid == a.0 { a.1 } else { b.1 };
            c.b.addr = if c.b.pid == b.0 { b.1 } else { a.1 };
            c.used = now;
            return Ok(if c.a.pid == a.0 {
                (c.a.id, c.b.id)
            } else {
                (c.b.id, c.a.id)
            });
        }
        let held = |p: PeerId| {
            self.circuits
                .iter()
                .filter(|c| c.a.pid == p || c.b.pid == p)
                .count()
        };
        let refused = if self.circuits.len() >= RELAY_CIRCUITS {
            Some(Refused::Full)
        } else if held(a.0) >= RELAY_CIRCUITS_PER_MEMBER || held(b.0) >= RELAY_CIRCUITS_PER_MEMBER {
            Some(Refused::MemberFull)
        } else {
            None
        };
        if let Some(r) = refused {
            self.counters.refused += 1;
            return Err(r);
        }
        let (ia, ib) = (self.fresh_id(), self.fresh_id());
        self.circuits.push(Circuit {
            a: End {
                pid: a.0,
                addr: a.1,
                id: ia,
            },
            b: End {
                pid: b.0,
                addr: b.1,
                id: ib,
            },
            bytes: 0,
            packets: 0,
            dropped: 0,
            tokens: CIRCUIT_BURST,
            refilled: now,
            used: now,
        });
        self.counters.opened += 1;
        Ok((ia, ib))
    }

    /// A datagram of `len` bytes arrived at `now` from `from` naming circuit `id`: where it
    /// goes and the id to put in its envelope, or `None` (dropped and counted).
    #[inline]
    pub fn forward(
        &mut self,
        now: Duration,
        from: SocketAddr,
        id: u32,
        len: usize,
    ) -> Option<(SocketAddr, u32)> {
        let Some(c) = self
            .circuits
            .iter_mut()
            .find(|c| (c.a.id == id && c.a.addr == from) || (c.b.id == id && c.b.addr == from))
        else {
            self.counters.dropped += 1;
            return None;
        };
        let len = len as u64;
        let gained = now.saturating_sub(c.refilled).as_micros() as u64 * CIRCUIT_RATE / 1_000_000;
        if gained > 0 {
            c.tokens = (c.tokens + gained).min(CIRCUIT_BURST);
            c.refilled = now;
        }
        if c.tokens < len || c.bytes + len > CIRCUIT_BYTES {
            c.dropped += 1;
            self.counters.dropped += 1;
            return None;
        }
        c.tokens -= len;
        c.bytes += len;
        c.packets += 1;
        c.used = now;
        self.counters.bytes += len;
        self.counters.packets += 1;
        let to = if c.a.id == id { c.b } else { c.a };
        Some((to.addr, to.id))
    }

    /// Member `pid`'s link to us is now at `addr` (its NAT moved it).
    pub fn moved(&mut self, pid: &PeerId, addr: SocketAddr) {
        for c in &mut self.circuits {
            for e in [&mut c.a, &mut c.b] {
                if e.pid == *pid {
                    e.addr = addr;
                }
            }
        }
    }

    /// Drops the circuits of a member we no longer hold a link with.
    pub fn gone(&mut self, pid: &PeerId) {
        self.circuits.retain(|c| c.a.pid != *pid && c.b.pid != *pid);
    }

    /// Drops circuits idle for [`CIRCUIT_IDLE`] or past [`CIRCUIT_BYTES`].
    pub fn expire(&mut self, now: Duration) {
        self.circuits
            .retain(|c| now.saturating_sub(c.used) < CIRCUIT_IDLE && c.bytes < CIRCUIT_BYTES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: u8) -> PeerId {
        PeerId([i; 32])
    }
    fn at(i: u8) -> SocketAddr {
        ([192, 0, 2, i], 4433).into()
    }
    const T: Duration = Duration::from_secs(100);

    #[test]
    fn datagrams_cross_only_from_each_end_with_its_id() {
        let mut r = Relay::new();
        let (ia, ib) = r.open(T, (p(1), at(1)), (p(2), at(2))).unwrap();
        assert_ne!(ia, ib);
        assert_eq!(r.forward(T, at(1), ia, 100), Some((at(2), ib)));
        assert_eq!(r.forward(T, at(2), ib, 100), Some((at(1), ia)));
        // Another address with a good id, a good address with the other end's id, a made-up id.
        assert_eq!(r.forward(T, at(3), ia, 100), None);
        assert_eq!(r.forward(T, at(1), ib, 100), None);
        assert_eq!(r.forward(T, at(1), ia ^ 1, 100), None);
        let c = r.counters();
        assert_eq!((c.packets, c.bytes, c.dropped), (2, 200, 3));
        // Asking again (from either end) gives the same circuit.
        assert_eq!(r.open(T, (p(2), at(2)), (p(1), at(1))), Ok((ib, ia)));
        assert_eq!(r.circuits().len(), 1);
    }

    #[test]
    fn circuits_follow_their_members_and_end() {
        let mut r = Relay::new();
        let (ia, ib) = r.open(T, (p(1), at(1)), (p(2), at(2))).unwrap();
        r.moved(&p(2), at(9));
        assert_eq!(r.forward(T, at(1), ia, 10), Some((at(9), ib)));
        assert_eq!(r.forward(T, at(2), ib, 10), None);
        assert_eq!(r.forward(T, at(9), ib, 10), Some((at(1), ia)));
        // Idle for CIRCUIT_IDLE: gone.
        r.expire(T + CIRCUIT_IDLE);
        assert!(r.circuits().is_empty());
        let _ = r.open(T, (p(1), at(1)), (p(2), at(2))).unwrap();
        r.gone(&p(1));
        assert!(r.circuits().is_empty());
    }

    #[test]
    fn limits_refuse_circuits_and_rate() {
        let mut r = Relay::new();
        for i in 0..RELAY_CIRCUITS_PER_MEMBER as u8 {
            r.open(T, (p(1), at(1)), (p(10 + i), at(10 + i))).unwrap();
        }
        assert_eq!(
            r.open(T, (p(1), at(1)), (p(99), at(99))),
            Err(Refused::MemberFull)
        );
        assert_eq!(
            r.open(T, (p(98), at(98)), (p(1), at(1))),
            Err(Refused::MemberFull)
        );
        let mut n = r.circuits().len();
        let mut i = 0u8;
        while n < RELAY_CIRCUITS {
            r.open(T, (p(100 + i), at(1)), (p(200 - i), at(2))).unwrap();
            n += 1;
            i += 1;
        }
        assert_eq!(
            r.open(T, (p(50), at(50)), (p(51), at(51))),
            Err(Refused::Full)
        );
        assert_eq!(r.counters().refused, 3);

        // The rate: a burst, then what the rate refills.
        let mut r = Relay::new();
        let (ia, _) = r.open(T, (p(1), at(1)), (p(2), at(2))).unwrap();
        let mut sent = 0u64;
        while r.forward(T, at(1), ia, 1000).is_some() {
            sent += 1000;
        }
        assert_eq!(sent, CIRCUIT_BURST / 1000 * 1000);
        let later = T + Duration::from_millis(10);
        let mut more = 0u64;
        while r.forward(later, at(1), ia, 1000).is_some() {
            more += 1000;
        }
        let refill = CIRCUIT_RATE / 100;
        assert!(more <= refill + 1000 && more + 1000 >= refill, "{more}");
        assert!(r.circuits()[0].dropped >= 2);
    }
}
