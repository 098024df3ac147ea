//! Signed peer records: the canonical byte layout (DESIGN.md, "DHT" and "Handshake").
//!
//! ```text
//! body (signed, as stored):
//!   version        u8     = 1
//!   storage_key    [32]   SHA-256(network_key || PeerId)
//!   peer_id        [32]   SHA-256(mldsa_pk)
//!   mldsa_pk       [2592]
//!   ed25519_pk     [32]
//!   seq            u64    higher replaces lower, per (storage_key, peer_id)
//!   issued_at      u64    Unix seconds
//!   expires_at     u64    Unix seconds, at most 24 h after `now` when accepted
//!   payload_len    u16
//!   payload        [payload_len]  mesh-encrypted Payload (nonce || ciphertext || tag)
//! signatures:
//!   mldsa_sig      [4627] ML-DSA-87 over RECORD_DOMAIN || body
//!   ed25519_sig    [64]   Ed25519 over RECORD_DOMAIN || body
//! ```
//! Both signatures cover the body exactly as stored, never a re-encoding. The storage key sits
//! inside the signed body, so a valid record cannot be replayed under another key.
//!
//! The payload is readable only by mesh members (it is encrypted under a key derived from the
//! network key); its plaintext layout is [`Payload`].

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::consts::*;
pub use crate::dht::observed::NatClass;
use crate::error::Reader;
use crate::{Error, PeerId};

/// Domain-separation prefix of record signatures.
pub const RECORD_DOMAIN: &[u8] = b"shadowmesh/record/v1\0";
/// Record format version.
pub const RECORD_VERSION: u8 = 1;
/// Length of a record with an empty payload.
pub const RECORD_FIXED_LEN: usize = 1
    + 32
    + PEER_ID_LEN
    + MLDSA87_PUBLIC_KEY_LEN
    + ED25519_PUBLIC_KEY_LEN
    + 8
    + 8
    + 8
    + 2
    + MLDSA87_SIGNATURE_LEN
    + ED25519_SIGNATURE_LEN;

/// A parsed record borrowing the bytes it was parsed from. Nothing here is verified beyond
/// the layout: signatures and PeerId binding are checked by the crypto crate.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    bytes: &'a [u8],
    body_len: usize,
    /// `SHA-256(network_key || PeerId)`.
    pub storage_key: &'a [u8; 32],
    /// Claimed PeerId.
    pub peer_id: PeerId,
    /// ML-DSA-87 public key.
    pub mldsa_pk: &'a [u8; MLDSA87_PUBLIC_KEY_LEN],
    /// Ed25519 public key (the TLS raw public key).
    pub ed25519_pk: &'a [u8; ED25519_PUBLIC_KEY_LEN],
    /// Sequence number.
    pub seq: u64,
    /// Issue time, Unix seconds.
    pub issued_at: u64,
    /// Expiry time, Unix seconds.
    pub expires_at: u64,
    /// Encrypted payload.
    pub payload: &'a [u8],
    /// ML-DSA-87 signature.
    pub mldsa_sig: &'a [u8; MLDSA87_SIGNATURE_LEN],
    /// Ed25519 signature.
    pub ed25519_sig: &'a [u8; ED25519_SIGNATURE_LEN],
}

impl<'a> RecordRef<'a> {
    /// Parses a complete record; every length is checked before use.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        if bytes.len() > RECORD_MAX_LEN {
            return Err(Error::TooLarge {
                what: "record",
                len: bytes.len(),
                max: RECORD_MAX_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != RECORD_VERSION {
            return Err(Error::UnsupportedVersion(version as u16));
        }
        let storage_key = r.array()?;
        let peer_id = PeerId(*r.array()?);
        let mldsa_pk = r.array()?;
        let ed25519_pk = r.array()?;
        let seq = r.u64()?;
        let issued_at = r.u64()?;
        let expires_at = r.u64()?;
        let payload_len = r.u16()? as usize;
        if payload_len > RECORD_MAX_PAYLOAD_LEN {
            return Err(Error::TooLarge {
                what: "record payload",
                len: payload_len,
                max: RECORD_MAX_PAYLOAD_LEN,
            });
        }
        let payload = r.bytes(payload_len)?;
        let body_len = r.pos();
        let mldsa_sig = r.array()?;
        let ed25519_sig = r.array()?;
        r.finish()?;
        Ok(RecordRef {
            bytes,
            body_len,
            storage_key,
            peer_id,
            mldsa_pk,
            ed25519_pk,
            seq,
            issued_at,
            expires_at,
            payload,
            mldsa_sig,
            ed25519_sig,
        })
    }

    /// The signed body, exactly as stored.
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[..self.body_len]
    }

    /// The whole record.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Checks the time fields against `now` (Unix seconds), each with
    /// [`CLOCK_TOLERANCE_SECS`] of slack for the two clocks: not expired, not issued in the
    /// future, issued no later than it expires, living at most [`RECORD_MAX_LIFETIME_SECS`].
    pub fn check_times(&self, now: u64) -> Result<(), Error> {
        if self.expires_at.saturating_add(CLOCK_TOLERANCE_SECS) <= now {
            return Err(Error::Expired);
        }
        if self.issued_at > now.saturating_add(CLOCK_TOLERANCE_SECS) {
            return Err(Error::NotYetValid);
        }
        if self.issued_at > self.expires_at
            || self.expires_at.saturating_sub(now) > RECORD_MAX_LIFETIME_SECS + CLOCK_TOLERANCE_SECS
            || self.expires_at - self.issued_at > RECORD_MAX_LIFETIME_SECS
        {
            return Err(Error::BadLifetime);
        }
        Ok(())
    }
}

/// The signed fields of a record, to be emitted and then signed.
#[derive(Debug, Clone)]
pub struct RecordBody<'a> {
    /// `SHA-256(network_key || PeerId)`.
    pub storage_key: [u8; 32],
    /// The owner's PeerId.
    pub peer_id: PeerId,
    /// ML-DSA-87 public key.
    pub mldsa_pk: &'a [u8; MLDSA87_PUBLIC_KEY_LEN],
    /// Ed25519 public key.
    pub ed25519_pk: [u8; ED25519_PUBLIC_KEY_LEN],
    /// Sequence number.
    pub seq: u64,
    /// Issue time, Unix seconds.
    pub issued_at: u64,
    /// Expiry time, Unix seconds.
    pub expires_at: u64,
    /// Encrypted payload.
    pub payload: &'a [u8],
}

impl RecordBody<'_> {
    /// Appends the canonical body to `out`; the caller signs `RECORD_DOMAIN || body` and then
    /// appends the two signatures with [`append_signatures`].
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.payload.len() > RECORD_MAX_PAYLOAD_LEN {
            return Err(Error::TooLarge {
                what: "record payload",
                len: self.payload.len(),
                max: RECORD_MAX_PAYLOAD_LEN,
            });
        }
        out.reserve(RECORD_FIXED_LEN + self.payload.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.storage_key);
        out.extend_from_slice(&self.peer_id.0);
        out.extend_from_slice(self.mldsa_pk);
        out.extend_from_slice(&self.ed25519_pk);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&(self.payload.len() as u16).to_be_bytes());
        out.extend_from_slice(self.payload);
        Ok(())
    }
}

/// Appends the two signatures that close a record.
pub fn append_signatures(
    out: &mut Vec<u8>,
    mldsa_sig: &[u8; MLDSA87_SIGNATURE_LEN],
    ed25519_sig: &[u8; ED25519_SIGNATURE_LEN],
) {
    out.extend_from_slice(mldsa_sig);
    out.extend_from_slice(ed25519_sig);
}

/// A LAN route a gateway advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length (0..=32 for IPv4, 0..=128 for IPv6).
    pub prefix_len: u8,
}

/// The mesh-private part of a record (plaintext layout, before encryption).
///
/// ```text
///   version u8 = 3 (2: the same without the name; 1: nor the three fields before it)
///   n_addrs u8, then per address: family u8 (4|6), ip [4|16], port u16
///   ipv4 [4], ipv4_counter u32, ipv6 [16]
///   n_routes u8, then per route: family u8 (4|6), ip [4|16], prefix_len u8
///   nat u8 (0 unknown, 1 none, 2 endpoint-independent, 3 endpoint-dependent)
///   flags u8 (bit 0: relays for members; bit 1: offers itself as an exit; the others 0)
///   n_relays u8, then per relay: PeerId [32]
///   name_len u8 (0: no name), name [name_len] (a DNS label, [`crate::dns::is_label`])
/// ```
///
/// A version above 3 is read as 3, its bytes past the name ignored: a newer node's record
/// stays readable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payload {
    /// Where the node can be reached (at most [`RECORD_MAX_ADDRS`]).
    pub addrs: Vec<SocketAddr>,
    /// Claimed overlay IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// Rehash counter that produced `ipv4` (see [`crate::overlay`]).
    pub ipv4_counter: u32,
    /// Overlay IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// Advertised LAN routes (at most [`RECORD_MAX_ROUTES`]).
    pub routes: Vec<Route>,
    /// The NAT between the node and the others, as it measured it.
    pub nat: NatClass,
    /// It relays for members.
    pub relay: bool,
    /// It offers itself as an exit: members may send it their internet traffic
    /// (`0.0.0.0/0` and `::/0`, never installed as ordinary routes).
    pub exit: bool,
    /// The relays it keeps links with (at most [`RECORD_MAX_RELAYS`]): a member that cannot
    /// dial it asks them for an introduction and a circuit.
    pub relays: Vec<PeerId>,
    /// Its name (`option name`): a DNS label, or empty.
    pub name: String,
}

const PAYLOAD_VERSION: u8 = 3;
/// `flags` bit: the node relays for members.
const FLAG_RELAY: u8 = 1;
/// `flags` bit: the node offers itself as an exit.
const FLAG_EXIT: u8 = 2;

fn nat_code(n: NatClass) -> u8 {
    match n {
        NatClass::Unknown => 0,
        NatClass::None => 1,
        NatClass::EndpointIndependent => 2,
        NatClass::EndpointDependent => 3,
    }
}

pub(crate) fn read_ip(r: &mut Reader<'_>) -> Result<IpAddr, Error> {
    match r.u8()? {
        4 => Ok(IpAddr::V4(Ipv4Addr::from(*r.array::<4>()?))),
        6 => Ok(IpAddr::V6(Ipv6Addr::from(*r.array::<16>()?))),
        _ => Err(Error::InvalidField("address family")),
    }
}

pub(crate) fn write_ip(out: &mut Vec<u8>, ip: &IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.octets());
        }
    }
}

impl Payload {
    /// Encodes the plaintext payload.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.addrs.len() > RECORD_MAX_ADDRS {
            return Err(Error::TooLarge {
                what: "address list",
                len: self.addrs.len(),
                max: RECORD_MAX_ADDRS,
            });
        }
        if self.routes.len() > RECORD_MAX_ROUTES {
            return Err(Error::TooLarge {
                what: "route list",
                len: self.routes.len(),
                max: RECORD_MAX_ROUTES,
            });
        }
        if self.relays.len() > RECORD_MAX_RELAYS {
            return Err(Error::TooLarge {
                what: "relay list",
                len: self.relays.len(),
                max: RECORD_MAX_RELAYS,
            });
        }
        out.push(PAYLOAD_VERSION);
        out.push(self.addrs.len() as u8);
        for a in &self.addrs {
            write_ip(out, &a.ip());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        out.extend_from_slice(&self.ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED).octets());
        out.extend_from_slice(&self.ipv4_counter.to_be_bytes());
        out.extend_from_slice(&self.ipv6.unwrap_or(Ipv6Addr::UNSPECIFIED).octets());
        out.push(self.routes.len() as u8);
        for r in &self.routes {
            write_ip(out, &r.addr);
            out.push(r.prefix_len);
        }
        out.push(nat_code(self.nat));
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        out.push(flag(self.relay, FLAG_RELAY) | flag(self.exit, FLAG_EXIT));
        out.push(self.relays.len() as u8);
        for r in &self.relays {
            out.extend_from_slice(&r.0);
        }
        if !self.name.is_empty() && !crate::dns::is_label(&self.name) {
            return Err(Error::InvalidField("name"));
        }
        out.push(self.name.len() as u8);
        out.extend_from_slice(self.name.as_bytes());
        Ok(())
    }

    /// Decodes a plaintext payload, enforcing every bound.
    pub fn parse(bytes: &[u8]) -> Result<Payload, Error> {
        let mut r = Reader::new(bytes);
        let v = r.u8()?;
        if v == 0 {
            return Err(Error::UnsupportedVersion(0));
        }
        let n = r.count("address list", RECORD_MAX_ADDRS)?;
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            let ip = read_ip(&mut r)?;
            addrs.push(SocketAddr::new(ip, r.u16()?));
        }
        let ipv4 = Ipv4Addr::from(*r.array::<4>()?);
        let ipv4_counter = r.u32()?;
        let ipv6 = Ipv6Addr::from(*r.array::<16>()?);
        let n = r.count("route list", RECORD_MAX_ROUTES)?;
        let mut routes = Vec::with_capacity(n);
        for _ in 0..n {
            let addr = read_ip(&mut r)?;
            let prefix_len = r.u8()?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if prefix_len > max {
                return Err(Error::InvalidField("route prefix length"));
            }
            routes.push(Route { addr, prefix_len });
        }
        let (mut nat, mut relay, mut exit, mut relays) =
            (NatClass::Unknown, false, false, Vec::new());
        if v >= 2 {
            nat = match r.u8()? {
                0 => NatClass::Unknown,
                1 => NatClass::None,
                2 => NatClass::EndpointIndependent,
                3 => NatClass::EndpointDependent,
                _ => return Err(Error::InvalidField("NAT class")),
            };
            let flags = r.u8()?;
            if flags & !(FLAG_RELAY | FLAG_EXIT) != 0 {
                return Err(Error::InvalidField("record flags"));
            }
            relay = flags & FLAG_RELAY != 0;
            exit = flags & FLAG_EXIT != 0;
            for _ in 0..r.count("relay list", RECORD_MAX_RELAYS)? {
                relays.push(PeerId(*r.array::<32>()?));
            }
        }
        let mut name = String::new();
        if v >= 3 {
            name = r.label("name", true)?.to_string();
        }
        if v <= PAYLOAD_VERSION {
            r.finish()?;
        }
        Ok(Payload {
            addrs,
            ipv4: (!ipv4.is_unspecified()).then_some(ipv4),
            ipv4_counter,
            ipv6: (!ipv6.is_unspecified()).then_some(ipv6),
            routes,
            nat,
            relay,
            exit,
            relays,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_record(payload: &[u8]) -> Vec<u8> {
        let pk = [7u8; MLDSA87_PUBLIC_KEY_LEN];
        let body = RecordBody {
            storage_key: [1; 32],
            peer_id: PeerId([2; 32]),
            mldsa_pk: &pk,
            ed25519_pk: [3; 32],
            seq: 42,
            issued_at: 1000,
            expires_at: 2000,
            payload,
        };
        let mut out = Vec::new();
        body.emit(&mut out).unwrap();
        append_signatures(
            &mut out,
            &[4; MLDSA87_SIGNATURE_LEN],
            &[5; ED25519_SIGNATURE_LEN],
        );
        out
    }

    #[test]
    fn record_round_trip() {
        let bytes = sample_record(b"hello");
        assert_eq!(bytes.len(), RECORD_FIXED_LEN + 5);
        let r = RecordRef::parse(&bytes).unwrap();
        assert_eq!(r.seq, 42);
        assert_eq!(r.peer_id, PeerId([2; 32]));
        assert_eq!(r.payload, b"hello");
        assert_eq!(
            r.body().len(),
            bytes.len() - MLDSA87_SIGNATURE_LEN - ED25519_SIGNATURE_LEN
        );
        assert_eq!(r.ed25519_sig, &[5; 64]);
        for cut in [0, 1, 100, bytes.len() - 1] {
            assert!(matches!(
                RecordRef::parse(&bytes[..cut]),
                Err(Error::Truncated { .. })
            ));
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            RecordRef::parse(&long).unwrap_err(),
            Error::TrailingBytes { extra: 1 }
        );
        let mut v = bytes.clone();
        v[0] = 9;
        assert_eq!(
            RecordRef::parse(&v).unwrap_err(),
            Error::UnsupportedVersion(9)
        );
    }

    #[test]
    fn record_times() {
        let bytes = sample_record(b"");
        let r = RecordRef::parse(&bytes).unwrap();
        // Issued at 1000, expires at 2000; ten minutes of slack either way.
        assert!(r.check_times(1500).is_ok());
        assert!(r.check_times(2000).is_ok());
        assert!(r.check_times(2599).is_ok());
        assert_eq!(r.check_times(2600), Err(Error::Expired));
        assert!(r.check_times(400).is_ok());
        assert_eq!(r.check_times(399), Err(Error::NotYetValid));
        assert_eq!(r.check_times(0), Err(Error::NotYetValid));
    }

    #[test]
    fn payload_round_trip_and_bounds() {
        let p = Payload {
            addrs: vec![
                "127.0.0.1:4433".parse().unwrap(),
                "[::1]:9".parse().unwrap(),
            ],
            ipv4: Some(Ipv4Addr::new(10, 100, 1, 2)),
            ipv4_counter: 3,
            ipv6: Some("fd01::2".parse().unwrap()),
            routes: vec![Route {
                addr: "192.168.1.0".parse().unwrap(),
                prefix_len: 24,
            }],
            nat: NatClass::EndpointDependent,
            relay: true,
            exit: true,
            relays: vec![PeerId([9; 32]), PeerId([8; 32])],
            name: "office".into(),
        };
        let mut out = Vec::new();
        p.emit(&mut out).unwrap();
        assert_eq!(Payload::parse(&out).unwrap(), p);
        // Version 2 ends before the name.
        let mut v2 = out[..out.len() - 7].to_vec();
        v2[0] = 2;
        let old = Payload::parse(&v2).unwrap();
        assert_eq!((old.name.as_str(), old.relays.len()), ("", 2));
        // A newer version's bytes past the name are skipped; ours are not.
        let mut v4 = out.clone();
        v4[0] = 4;
        v4.extend_from_slice(b"later");
        assert_eq!(Payload::parse(&v4).unwrap().name, "office");
        v4[0] = 3;
        assert!(Payload::parse(&v4).is_err());
        let mut bad_name = out.clone();
        let at = bad_name.len() - 6;
        bad_name[at] = b'O';
        assert_eq!(Payload::parse(&bad_name), Err(Error::InvalidField("name")));
        let mut unnamed = p.clone();
        unnamed.name = "no such label".into();
        assert!(unnamed.emit(&mut Vec::new()).is_err());
        // Version 1 (a node of two versions before) ends after the routes.
        let v1_len = out.len() - 7 - 3 - 64;
        let mut v1 = out[..v1_len].to_vec();
        v1[0] = 1;
        let old = Payload::parse(&v1).unwrap();
        assert_eq!(
            (old.nat, old.relay, old.exit, old.relays.len()),
            (NatClass::Unknown, false, false, 0)
        );
        assert_eq!(old.routes, p.routes);
        let mut flags = out.clone();
        flags[v1_len + 1] = 4;
        assert_eq!(
            Payload::parse(&flags),
            Err(Error::InvalidField("record flags"))
        );
        let mut nat = out.clone();
        nat[v1_len] = 4;
        assert_eq!(Payload::parse(&nat), Err(Error::InvalidField("NAT class")));
        let mut many = p.clone();
        many.relays = vec![PeerId([1; 32]); RECORD_MAX_RELAYS + 1];
        assert!(many.emit(&mut Vec::new()).is_err());
        for cut in 0..out.len() {
            assert!(Payload::parse(&out[..cut]).is_err());
        }
        let mut bad = p.clone();
        bad.addrs = vec!["127.0.0.1:1".parse().unwrap(); RECORD_MAX_ADDRS + 1];
        assert!(bad.emit(&mut Vec::new()).is_err());
        let mut wire = out[..v1_len].to_vec();
        wire[0] = 1;
        *wire.last_mut().unwrap() = 33; // prefix length of an IPv4 route
        assert_eq!(
            Payload::parse(&wire),
            Err(Error::InvalidField("route prefix length"))
        );
    }
}
