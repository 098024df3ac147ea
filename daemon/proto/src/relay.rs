//! Relays: the envelope a relayed datagram travels in, the message that opens a circuit, and
//! the addresses a relayed member is known by locally (DESIGN.md, "Relays").
//!
//! A relay forwards whole UDP datagrams between two members that cannot reach each other: the
//! QUIC packets of their own connection, end to end, so the relay reads and forges nothing and
//! the session's keys do not depend on the path. Each datagram to or from a relay is prefixed
//! with an envelope naming the circuit:
//!
//! ```text
//!   magic    [4]  "SMSH" (as a data frame's)
//!   kind     u16  0xFF01 (a data frame has its version here)
//!   circuit  u32  the id the relay gave this end of the circuit
//!   datagram [..] the end-to-end datagram
//! ```
//!
//! No QUIC packet addressed to us starts with "SMSH" (connection IDs we issue never start with
//! "MSH"), and no data frame has kind 0xFF01 as its version, so one look tells the three apart.
//!
//! A circuit is opened by the relay, on its control streams, with a [`MsgType::Circuit`]
//! message to each end ([`Circuit`]): the other end, the circuit id this end uses, and whether
//! this end dials through it. Endpoints give each circuit a local address in 240.0.0.0/8
//! (reserved, never routed; [`mapped`]), which QUIC dials and sends to like any other.
//!
//! [`MsgType::Circuit`]: crate::msg::MsgType::Circuit

use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::consts::FRAME_MAGIC;
use crate::dht::wire::{emit_contact_list, parse_contact_list, Contact};
use crate::error::Reader;
use crate::Error;

/// The envelope's `kind`.
pub const ENVELOPE_KIND: u16 = 0xFF01;
/// Bytes an envelope adds to a datagram.
pub const ENVELOPE_LEN: usize = 10;

/// The first six bytes of every relayed datagram.
pub const ENVELOPE_PREFIX: [u8; 6] = {
    let (m, k) = (FRAME_MAGIC.to_be_bytes(), ENVELOPE_KIND.to_be_bytes());
    [m[0], m[1], m[2], m[3], k[0], k[1]]
};

/// The circuit a relayed datagram names, or `None` if `d` is not one.
#[inline]
pub fn envelope(d: &[u8]) -> Option<u32> {
    if d.len() < ENVELOPE_LEN || d[..6] != ENVELOPE_PREFIX {
        return None;
    }
    Some(u32::from_be_bytes([d[6], d[7], d[8], d[9]]))
}

/// Writes the envelope for `circuit` into the first [`ENVELOPE_LEN`] bytes of `d`.
///
/// # Panics
/// If `d` is shorter than [`ENVELOPE_LEN`].
#[inline]
pub fn set_envelope(d: &mut [u8], circuit: u32) {
    d[..6].copy_from_slice(&ENVELOPE_PREFIX);
    d[6..ENVELOPE_LEN].copy_from_slice(&circuit.to_be_bytes());
}

/// The first octet of local addresses of relayed members (240.0.0.0/8, reserved).
pub const MAPPED_OCTET: u8 = 240;
/// Local addresses of relayed members take this port.
pub const MAPPED_PORT: u16 = 1;

/// Whether `a` is a local address standing for a relayed member.
#[inline]
pub fn is_mapped(a: SocketAddr) -> bool {
    match a {
        SocketAddr::V4(v) => v.ip().octets()[0] == MAPPED_OCTET,
        SocketAddr::V6(v) => v
            .ip()
            .to_ipv4_mapped()
            .is_some_and(|m| m.octets()[0] == MAPPED_OCTET),
    }
}

/// The local address of slot `n` (24 bits) of the relayed members' table.
pub fn mapped(n: u32) -> SocketAddr {
    let b = n.to_be_bytes();
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(MAPPED_OCTET, b[1], b[2], b[3]),
        MAPPED_PORT,
    ))
}

/// The slot behind a local address of a relayed member.
pub fn mapped_slot(a: SocketAddr) -> Option<u32> {
    if !is_mapped(a) {
        return None;
    }
    let ip = match a {
        SocketAddr::V4(v) => *v.ip(),
        SocketAddr::V6(v) => v.ip().to_ipv4_mapped()?,
    };
    let o = ip.octets();
    Some(u32::from_be_bytes([0, o[1], o[2], o[3]]))
}

/// What a relay says to one end of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitStatus {
    /// Open; the other end dials through it, this end waits.
    Accept,
    /// Open; this end dials the other through it.
    Dial,
    /// Refused: the relay carries as many circuits as it takes.
    Full,
    /// Refused: as many circuits for this member as the relay takes.
    MemberFull,
    /// Refused: the relay holds no link with the other end, or does not relay.
    Unreachable,
}

impl CircuitStatus {
    fn code(self) -> u8 {
        match self {
            CircuitStatus::Accept => 0,
            CircuitStatus::Dial => 1,
            CircuitStatus::Full => 2,
            CircuitStatus::MemberFull => 3,
            CircuitStatus::Unreachable => 4,
        }
    }

    fn from_code(c: u8) -> Result<Self, Error> {
        Ok(match c {
            0 => CircuitStatus::Accept,
            1 => CircuitStatus::Dial,
            2 => CircuitStatus::Full,
            3 => CircuitStatus::MemberFull,
            4 => CircuitStatus::Unreachable,
            _ => return Err(Error::InvalidField("circuit status")),
        })
    }

    /// Whether the circuit is open.
    pub fn open(self) -> bool {
        matches!(self, CircuitStatus::Accept | CircuitStatus::Dial)
    }

    /// What it says, for logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitStatus::Accept => "open",
            CircuitStatus::Dial => "open, dial",
            CircuitStatus::Full => "the relay carries as many circuits as it takes",
            CircuitStatus::MemberFull => "the relay carries as many circuits for us as it takes",
            CircuitStatus::Unreachable => "the relay cannot reach that member",
        }
    }
}

/// A `Circuit` message: the other end (as the relay sees it), this end's circuit id, and
/// what to do.
///
/// ```text
///   contact list of one (the other end)
///   circuit  u32
///   status   u8
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Circuit {
    /// The other end.
    pub peer: Contact,
    /// The id this end puts in its envelopes (0 when refused).
    pub id: u32,
    /// Open (and who dials) or why not.
    pub status: CircuitStatus,
}

impl Circuit {
    /// Appends the message body to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        emit_contact_list(&[self.peer], out);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.push(self.status.code());
    }

    /// Parses a message body; every length is checked.
    pub fn parse(body: &[u8]) -> Result<Circuit, Error> {
        if body.len() < 5 {
            return Err(Error::Truncated {
                need: 5,
                got: body.len(),
            });
        }
        let (list, tail) = body.split_at(body.len() - 5);
        let peers = parse_contact_list(list, 1)?;
        let [peer] = peers[..] else {
            return Err(Error::InvalidField("a circuit names one member"));
        };
        let mut r = Reader::new(tail);
        let id = r.u32()?;
        let status = CircuitStatus::from_code(r.u8()?)?;
        r.finish()?;
        Ok(Circuit { peer, id, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PeerId;

    #[test]
    fn envelopes_are_told_from_frames_and_quic() {
        let mut d = [0u8; 30];
        set_envelope(&mut d, 0xDEAD_BEEF);
        assert_eq!(envelope(&d), Some(0xDEAD_BEEF));
        assert_eq!(envelope(&d[..ENVELOPE_LEN - 1]), None);
        // A data frame's prefix (magic, version 1) is not an envelope.
        let mut f = d;
        f[4..6].copy_from_slice(&crate::consts::FRAME_VERSION.to_be_bytes());
        assert_eq!(envelope(&f), None);
        // Nor is a QUIC short-header packet.
        assert_eq!(envelope(&[0x40; 30]), None);
    }

    #[test]
    fn mapped_addresses_round_trip_and_are_never_dialable_from_outside() {
        for n in [0, 1, 0xFF_FFFF] {
            let a = mapped(n);
            assert!(is_mapped(a));
            assert_eq!(mapped_slot(a), Some(n));
            assert!(!crate::policy::dialable(a, true));
        }
        assert!(!is_mapped("192.0.2.1:1".parse().unwrap()));
        assert!(is_mapped("[::ffff:240.0.0.9]:1".parse().unwrap()));
        assert_eq!(mapped_slot("10.0.0.1:1".parse().unwrap()), None);
    }

    #[test]
    fn circuit_messages_round_trip_and_refuse_bad_bodies() {
        let c = Circuit {
            peer: Contact {
                id: PeerId([7; 32]),
                ed25519: [8; 32],
                addr: "198.51.100.7:4433".parse().unwrap(),
            },
            id: 42,
            status: CircuitStatus::Dial,
        };
        let mut b = Vec::new();
        c.emit(&mut b);
        assert_eq!(Circuit::parse(&b), Ok(c));
        for cut in 0..b.len() {
            assert!(Circuit::parse(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = b.clone();
        *bad.last_mut().unwrap() = 9;
        assert!(Circuit::parse(&bad).is_err());
        let mut long = b.clone();
        long.push(0);
        assert!(Circuit::parse(&long).is_err());
    }
}
