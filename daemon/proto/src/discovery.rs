//! LAN discovery: the announcement a gateway multicasts on its LAN segments, and what it does
//! with the ones it hears.
//!
//! An announcement says what a neighbour needs to dial us (PeerId and QUIC port), sealed
//! (ChaCha20-Poly1305, in `shadowmesh_crypto::discovery`) under a key derived from the network
//! key and the time window it was sent in, with a random nonce. Only members of the same mesh
//! can open it; a passive listener sees a magic, a window number and random-looking bytes that
//! differ in every announcement, so it learns neither the mesh nor a stable identifier.
//!
//! ```text
//! "SMLD" (4) | version (1) | window (4, BE: Unix time / WINDOW_S) | nonce (12)
//! | sealed(PeerId (32) | port (2)) | tag (16)
//! ```
//!
//! [`Discovery`] is the sans-IO part: when to announce (at start, quickly a few times, then
//! every [`ANNOUNCE_INTERVAL`]; and soon after hearing a neighbour we did not know, so that the
//! second gateway to start is found in about a second), how many announcements to open (a token
//! bucket: opening costs a key derivation and an AEAD), and which neighbours to dial (at most
//! [`NEIGHBOURS`] kept, each dialled at most every [`REDIAL`]).

use core::net::SocketAddr;
use core::time::Duration;

use crate::{Error, PeerId};

/// The first bytes of every announcement.
pub const MAGIC: [u8; 4] = *b"SMLD";
/// The format this code writes and reads.
pub const VERSION: u8 = 1;
/// Magic, version, window and nonce: the associated data of the seal.
pub const HEADER_LEN: usize = 4 + 1 + 4 + NONCE_LEN;
/// The AEAD nonce.
pub const NONCE_LEN: usize = 12;
/// PeerId and port.
pub const PLAIN_LEN: usize = 32 + 2;
/// The AEAD tag.
pub const TAG_LEN: usize = 16;
/// A whole announcement.
pub const ANNOUNCE_LEN: usize = HEADER_LEN + PLAIN_LEN + TAG_LEN;
/// Length of a time window, in seconds: the key an announcement is sealed under changes with it.
pub const WINDOW_S: u64 = 300;
/// Windows an announcement may be away from ours (a day: routers' clocks drift, and some boot
/// with the time of their firmware until NTP answers). A replayed announcement only makes us
/// dial the PeerId it names, whose handshake proves it or fails.
pub const MAX_SKEW: u32 = 288;
/// The UDP port announcements are sent to and heard on.
pub const PORT: u16 = 4432;
/// The IPv6 link-local group (`ff02::736d`: "sm").
pub const GROUP_V6: core::net::Ipv6Addr =
    core::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x736d);
/// The IPv4 link-local group, for segments without IPv6.
pub const GROUP_V4: core::net::Ipv4Addr = core::net::Ipv4Addr::new(224, 0, 0, 167);
/// Announcements after start, this far apart, before the steady interval.
pub const STARTUP: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(3),
];
/// The steady interval between announcements.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(30);
/// The soonest an answer to a new neighbour follows the last announcement.
pub const ANSWER_GAP: Duration = Duration::from_secs(1);
/// Neighbours kept (the oldest heard is forgotten first).
pub const NEIGHBOURS: usize = 32;
/// A neighbour is dialled again at most this often (while it is not linked over the LAN).
pub const REDIAL: Duration = Duration::from_secs(30);
/// Announcements opened per second at most, and in a burst.
pub const OPEN_RATE: u32 = 20;
/// Dials in a burst, and one more per [`DIAL_EVERY`]: a member forging PeerIds gets few
/// handshakes out of us.
pub const DIAL_BURST: u32 = 4;
/// See [`DIAL_BURST`].
pub const DIAL_EVERY: Duration = Duration::from_secs(5);

/// `burst` tokens, one back every `every`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    burst: u32,
    every: Duration,
    since: Duration,
}

impl Bucket {
    fn new(burst: u32, every: Duration, now: Duration) -> Bucket {
        Bucket {
            tokens: burst,
            burst,
            every,
            since: now,
        }
    }

    fn take(&mut self, now: Duration) -> bool {
        let n = (now.saturating_sub(self.since).as_nanos() / self.every.as_nanos()) as u64;
        if n > 0 {
            self.tokens = (self.tokens as u64 + n).min(self.burst as u64) as u32;
            self.since = if self.tokens == self.burst {
                now
            } else {
                self.since + self.every * n as u32
            };
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// An announcement's clear part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The time window it was sealed in.
    pub window: u32,
    /// The AEAD nonce.
    pub nonce: [u8; NONCE_LEN],
}

impl Header {
    /// Parses an announcement's header; the rest must be exactly the sealed part.
    pub fn parse(b: &[u8]) -> Result<Header, Error> {
        if b.len() < ANNOUNCE_LEN {
            return Err(Error::Truncated {
                need: ANNOUNCE_LEN,
                got: b.len(),
            });
        }
        if b.len() > ANNOUNCE_LEN {
            return Err(Error::TrailingBytes {
                extra: b.len() - ANNOUNCE_LEN,
            });
        }
        if b[..4] != MAGIC {
            return Err(Error::BadMagic(u32::from_be_bytes([
                b[0], b[1], b[2], b[3],
            ])));
        }
        if b[4] != VERSION {
            return Err(Error::UnsupportedVersion(b[4] as u16));
        }
        let window = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        let mut nonce = [0; NONCE_LEN];
        nonce.copy_from_slice(&b[9..HEADER_LEN]);
        Ok(Header { window, nonce })
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    pub fn emit(&self, out: &mut [u8; HEADER_LEN]) {
        out[..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5..9].copy_from_slice(&self.window.to_be_bytes());
        out[9..].copy_from_slice(&self.nonce);
    }

    /// Whether its window is within [`MAX_SKEW`] of `ours`.
    pub fn timely(&self, ours: u32) -> bool {
        self.window.abs_diff(ours) <= MAX_SKEW
    }
}

/// The window Unix time `unix_s` falls in.
pub fn window(unix_s: u64) -> u32 {
    (unix_s / WINDOW_S).min(u32::MAX as u64) as u32
}

/// What an opened announcement says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// Who sent it.
    pub peer: PeerId,
    /// Its QUIC port (at the address the announcement came from).
    pub port: u16,
}

impl Announce {
    /// The plaintext.
    pub fn emit(&self) -> [u8; PLAIN_LEN] {
        let mut p = [0; PLAIN_LEN];
        p[..32].copy_from_slice(&self.peer.0);
        p[32..].copy_from_slice(&self.port.to_be_bytes());
        p
    }

    /// Parses the opened plaintext.
    pub fn parse(p: &[u8]) -> Result<Announce, Error> {
        if p.len() != PLAIN_LEN {
            return Err(Error::InvalidField("announcement length"));
        }
        let port = u16::from_be_bytes([p[32], p[33]]);
        if port == 0 {
            return Err(Error::InvalidField("port"));
        }
        Ok(Announce {
            peer: PeerId(p[..32].try_into().expect("32 bytes")),
            port,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Neighbour {
    peer: PeerId,
    addr: SocketAddr,
    heard: Duration,
    dialled: Option<Duration>,
}

/// Counters for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Announcements sent.
    pub sent: u64,
    /// Announcements of our mesh heard.
    pub heard: u64,
    /// Packets dropped unopened (over the rate).
    pub limited: u64,
    /// Packets that were not an announcement of our mesh (another mesh's, malformed, stale).
    pub foreign: u64,
    /// Dials asked for.
    pub dials: u64,
}

/// When to announce, which announcements to open, and whom to dial.
#[derive(Debug, Clone)]
pub struct Discovery {
    me: PeerId,
    start: Duration,
    sent: usize,
    next: Duration,
    last_sent: Option<Duration>,
    neighbours: Vec<Neighbour>,
    opens: Bucket,
    dials: Bucket,
    stats: Stats,
}

impl Discovery {
    /// Starts at `now`: the first announcement is due at once.
    pub fn new(me: PeerId, now: Duration) -> Discovery {
        Discovery {
            me,
            start: now,
            sent: 0,
            next: now,
            last_sent: None,
            neighbours: Vec::new(),
            opens: Bucket::new(OPEN_RATE, Duration::from_secs(1) / OPEN_RATE, now),
            dials: Bucket::new(DIAL_BURST, DIAL_EVERY, now),
            stats: Stats::default(),
        }
    }

    /// Whether an announcement is due at `now`; if so it counts as sent and the next is
    /// scheduled.
    pub fn poll_announce(&mut self, now: Duration) -> bool {
        if now < self.next {
            return false;
        }
        self.sent += 1;
        self.stats.sent += 1;
        self.last_sent = Some(now);
        self.next = match STARTUP.get(self.sent) {
            Some(d) => (self.start + *d).max(now + ANSWER_GAP),
            None => now + ANNOUNCE_INTERVAL,
        };
        true
    }

    /// When [`Discovery::poll_announce`] is next due.
    pub fn poll_timeout(&self) -> Duration {
        self.next
    }

    /// Whether a packet that arrived at `now` may be opened ([`OPEN_RATE`] per second).
    pub fn admit(&mut self, now: Duration) -> bool {
        let ok = self.opens.take(now);
        self.stats.limited += !ok as u64;
        ok
    }

    /// A packet that did not open as our mesh's announcement.
    pub fn foreign(&mut self) {
        self.stats.foreign += 1;
    }

    /// `a` was heard from `addr` (the announcement's source address, with its port) at `now`.
    /// `on_lan`: whether we already hold a link with that member over the LAN. Returns the
    /// address to dial, if it is time to.
    pub fn heard(
        &mut self,
        now: Duration,
        a: Announce,
        addr: SocketAddr,
        on_lan: bool,
    ) -> Option<SocketAddr> {
        if a.peer == self.me {
            return None;
        }
        self.stats.heard += 1;
        let addr = SocketAddr::new(addr.ip(), a.port);
        let i = match self.neighbours.iter().position(|n| n.peer == a.peer) {
            Some(i) => i,
            None => {
                if self.neighbours.len() >= NEIGHBOURS {
                    let oldest = (0..self.neighbours.len())
                        .min_by_key(|&i| self.neighbours[i].heard)
                        .expect("full");
                    self.neighbours.swap_remove(oldest);
                }
                // Someone new: answer soon, so that it finds us without waiting for our
                // next interval.
                let answer = self.last_sent.map_or(now, |t| t + ANSWER_GAP).max(now);
                self.next = self.next.min(answer);
                self.neighbours.push(Neighbour {
                    peer: a.peer,
                    addr,
                    heard: now,
                    dialled: None,
                });
                self.neighbours.len() - 1
            }
        };
        let n = &mut self.neighbours[i];
        n.heard = now;
        let moved = n.addr != addr;
        n.addr = addr;
        let due = moved || n.dialled.is_none_or(|t| now >= t + REDIAL);
        if on_lan || !due || !self.dials.take(now) {
            return None;
        }
        n.dialled = Some(now);
        self.stats.dials += 1;
        Some(addr)
    }

    /// The neighbours heard: (PeerId, address, when heard).
    pub fn neighbours(&self) -> impl Iterator<Item = (PeerId, SocketAddr, Duration)> + '_ {
        self.neighbours.iter().map(|n| (n.peer, n.addr, n.heard))
    }

    /// Whether `addr` is where a neighbour announced itself from.
    pub fn is_neighbour(&self, addr: SocketAddr) -> bool {
        self.neighbours.iter().any(|n| n.addr == addr)
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn pid(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn header_and_plaintext_round_trip_and_bad_input_is_an_error() {
        let h = Header {
            window: 7,
            nonce: [3; NONCE_LEN],
        };
        let mut b = [0u8; ANNOUNCE_LEN];
        h.emit((&mut b[..HEADER_LEN]).try_into().unwrap());
        assert_eq!(Header::parse(&b), Ok(h));
        assert!(matches!(
            Header::parse(&b[..10]),
            Err(Error::Truncated { .. })
        ));
        let mut long = b.to_vec();
        long.push(0);
        assert_eq!(Header::parse(&long), Err(Error::TrailingBytes { extra: 1 }));
        let mut bad = b;
        bad[0] = b'X';
        assert!(matches!(Header::parse(&bad), Err(Error::BadMagic(_))));
        bad = b;
        bad[4] = 9;
        assert_eq!(Header::parse(&bad), Err(Error::UnsupportedVersion(9)));
        let a = Announce {
            peer: pid(5),
            port: 4433,
        };
        assert_eq!(Announce::parse(&a.emit()), Ok(a));
        assert!(Announce::parse(&[0; PLAIN_LEN]).is_err(), "port 0");
        assert!(Announce::parse(&[1; 3]).is_err());
        assert!(h.timely(7 + MAX_SKEW) && h.timely(0));
        assert!(!Header {
            window: 7 + MAX_SKEW + 1,
            ..h
        }
        .timely(7));
        assert_eq!(window(WINDOW_S * 3 + 1), 3);
    }

    #[test]
    fn announces_quickly_at_start_then_steadily_and_answers_a_newcomer() {
        let mut d = Discovery::new(pid(0), S(100));
        assert!(d.poll_announce(S(100)));
        assert!(!d.poll_announce(S(100)));
        assert_eq!(d.poll_timeout(), S(101));
        assert!(d.poll_announce(S(101)));
        assert_eq!(d.poll_timeout(), S(103));
        assert!(d.poll_announce(S(103)));
        assert_eq!(d.poll_timeout(), S(103) + ANNOUNCE_INTERVAL);
        // A newcomer is answered a second after our last announcement, not 30 s later.
        let a = Announce {
            peer: pid(1),
            port: 4433,
        };
        assert_eq!(
            d.heard(S(110), a, at("10.0.0.2:4432"), false),
            Some(at("10.0.0.2:4433"))
        );
        assert_eq!(d.poll_timeout(), S(110));
        assert!(d.poll_announce(S(110)));
        // Heard again: not a newcomer, and not dialled again before REDIAL.
        assert_eq!(d.heard(S(115), a, at("10.0.0.2:4432"), false), None);
        assert_eq!(d.poll_timeout(), S(110) + ANNOUNCE_INTERVAL);
        // Linked over the LAN by now: never dialled again.
        assert_eq!(d.heard(S(150), a, at("10.0.0.2:4432"), true), None);
        // Not linked over the LAN after REDIAL: dialled again; a new address at once.
        assert_eq!(
            d.heard(S(151), a, at("10.0.0.2:4432"), false),
            Some(at("10.0.0.2:4433"))
        );
        assert_eq!(
            d.heard(S(152), a, at("10.0.0.9:4432"), false),
            Some(at("10.0.0.9:4433"))
        );
        // Our own announcement, looped back, is nobody.
        let me = Announce {
            peer: pid(0),
            port: 1,
        };
        assert_eq!(d.heard(S(153), me, at("10.0.0.1:4432"), false), None);
        assert_eq!(d.stats().dials, 3);
    }

    #[test]
    fn a_flood_is_bounded() {
        let mut d = Discovery::new(pid(0), S(0));
        let opened = (0..1000).filter(|_| d.admit(S(1))).count();
        assert_eq!(
            opened, OPEN_RATE as usize,
            "the burst (a full bucket does not grow)"
        );
        assert_eq!(d.stats().limited, 1000 - opened as u64);
        assert!(d.admit(S(2)));
        // Many PeerIds (a member forging them): the table stays bounded, and answers to
        // newcomers still go out at most once per ANSWER_GAP.
        d.poll_announce(S(2));
        let mut dials = 0;
        for i in 0..200u32 {
            let mut p = [0u8; 32];
            p[..4].copy_from_slice(&i.to_be_bytes());
            p[31] = 1;
            let a = Announce {
                peer: PeerId(p),
                port: 4433,
            };
            dials += d.heard(S(3), a, at("10.0.0.2:4432"), false).is_some() as usize;
        }
        assert_eq!(d.neighbours().count(), NEIGHBOURS);
        assert_eq!(
            dials, DIAL_BURST as usize,
            "a burst of dials, then one per DIAL_EVERY"
        );
        let a = Announce {
            peer: pid(9),
            port: 4433,
        };
        assert_eq!(d.heard(S(4), a, at("10.0.0.3:4432"), false), None);
        assert!(d
            .heard(S(3) + DIAL_EVERY, a, at("10.0.0.3:4432"), false)
            .is_some());
        assert_eq!(d.poll_timeout(), S(3));
        assert!(d.poll_announce(S(3)));
        assert!(!d.poll_announce(S(3)));
    }
}
