//! DHT RPC codec. Big-endian, versioned, with hard size limits; every decoder returns a typed
//! error. Answers carry compact contacts (71 bytes for IPv4, 83 for IPv6), never full records,
//! except a FIND_VALUE hit.
//!
//! ```text
//! request  = version u8 (1) || kind u8 || body
//!   PING        (empty)
//!   FIND_NODE   target [32]
//!   FIND_VALUE  key [32] || owner [32] || known_seq u64   (only a newer record is returned)
//!   STORE       len u16 || record
//! response = version u8 (1) || kind u8 || body
//!   PONG        observed address (the asker's address as the answerer saw it)
//!   NODES       n u8 (<= 20) || n * contact
//!   VALUE       len u16 || record
//!   STORED      code u8 (StoreCode)
//! contact  = peer_id [32] || ed25519 [32] || address
//! address  = family u8 (4|6) || ip [4|16] || port u16
//! ```

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::consts::RECORD_MAX_LEN;
use crate::error::Reader;
use crate::{Error, PeerId};

use super::K;

/// Wire version of DHT messages.
pub const DHT_VERSION: u8 = 1;
/// Largest encoded DHT message: a record plus framing.
pub const DHT_MAX_MSG: usize = RECORD_MAX_LEN + 8;

/// A compact contact: what a node needs to dial and pin a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Contact {
    /// PeerId.
    pub id: PeerId,
    /// Ed25519 key (pinned by the dialler's TLS).
    pub ed25519: [u8; 32],
    /// UDP address.
    pub addr: SocketAddr,
}

/// A STORE outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StoreCode {
    /// Stored.
    Ok = 0,
    /// Record larger than allowed.
    TooBig = 1,
    /// A signature or the PeerId binding failed.
    BadSignature = 2,
    /// We hold a record with the same or a higher sequence number.
    Outdated = 3,
    /// Expired, or expiring too far ahead.
    Expired = 4,
    /// The sender is over its rate limit.
    RateLimited = 5,
    /// The record is not valid under the storage key it was offered for.
    WrongKey = 6,
    /// The store is full of records closer to us.
    Full = 7,
}

impl TryFrom<u8> for StoreCode {
    type Error = Error;
    fn try_from(v: u8) -> Result<Self, Error> {
        Ok(match v {
            0 => StoreCode::Ok,
            1 => StoreCode::TooBig,
            2 => StoreCode::BadSignature,
            3 => StoreCode::Outdated,
            4 => StoreCode::Expired,
            5 => StoreCode::RateLimited,
            6 => StoreCode::WrongKey,
            7 => StoreCode::Full,
            _ => return Err(Error::InvalidField("store code")),
        })
    }
}

/// A DHT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<R> {
    /// Liveness; the answer reports the asker's observed address.
    Ping,
    /// The k closest contacts to `target`.
    FindNode {
        /// Target id.
        target: [u8; 32],
    },
    /// `owner`'s record stored under `key` if newer than `known_seq`, else the k closest
    /// contacts. Records are held per (storage key, owner): a record someone else signed for
    /// the same key can never displace the owner's.
    FindValue {
        /// Storage key.
        key: [u8; 32],
        /// The record's owner.
        owner: PeerId,
        /// Sequence number the asker already holds (0 = none).
        known_seq: u64,
    },
    /// Store a record (its storage key is inside it).
    Store {
        /// The record.
        record: R,
    },
}

/// A DHT response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<R> {
    /// Answer to PING.
    Pong {
        /// The asker's address as seen by the answerer.
        observed: SocketAddr,
    },
    /// Contacts (at most k).
    Nodes {
        /// Closest contacts known to the answerer.
        contacts: Vec<Contact>,
    },
    /// A record.
    Value {
        /// The record.
        record: R,
    },
    /// STORE outcome.
    Stored(StoreCode),
}

const REQ_PING: u8 = 1;
const REQ_FIND_NODE: u8 = 2;
const REQ_FIND_VALUE: u8 = 3;
const REQ_STORE: u8 = 4;
const RESP_PONG: u8 = 0x81;
const RESP_NODES: u8 = 0x82;
const RESP_VALUE: u8 = 0x83;
const RESP_STORED: u8 = 0x84;

fn addr_len(a: &SocketAddr) -> usize {
    if a.is_ipv4() {
        7
    } else {
        19
    }
}

fn write_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn read_addr(r: &mut Reader<'_>) -> Result<SocketAddr, Error> {
    let ip = match r.u8()? {
        4 => IpAddr::V4(Ipv4Addr::from(*r.array::<4>()?)),
        6 => IpAddr::V6(Ipv6Addr::from(*r.array::<16>()?)),
        _ => return Err(Error::InvalidField("address family")),
    };
    Ok(SocketAddr::new(ip, r.u16()?))
}

fn write_contact(out: &mut Vec<u8>, c: &Contact) {
    out.extend_from_slice(&c.id.0);
    out.extend_from_slice(&c.ed25519);
    write_addr(out, &c.addr);
}

fn read_contact(r: &mut Reader<'_>) -> Result<Contact, Error> {
    Ok(Contact {
        id: PeerId(*r.array()?),
        ed25519: *r.array()?,
        addr: read_addr(r)?,
    })
}

fn read_record<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], Error> {
    let n = r.u16()? as usize;
    if n > RECORD_MAX_LEN {
        return Err(Error::TooLarge {
            what: "record",
            len: n,
            max: RECORD_MAX_LEN,
        });
    }
    r.bytes(n)
}

fn write_record(out: &mut Vec<u8>, rec: &[u8]) -> Result<(), Error> {
    if rec.len() > RECORD_MAX_LEN {
        return Err(Error::TooLarge {
            what: "record",
            len: rec.len(),
            max: RECORD_MAX_LEN,
        });
    }
    out.extend_from_slice(&(rec.len() as u16).to_be_bytes());
    out.extend_from_slice(rec);
    Ok(())
}

fn header(r: &mut Reader<'_>) -> Result<u8, Error> {
    let v = r.u8()?;
    if v != DHT_VERSION {
        return Err(Error::UnsupportedVersion(v as u16));
    }
    r.u8()
}

fn check_total(len: usize) -> Result<(), Error> {
    if len > DHT_MAX_MSG {
        return Err(Error::TooLarge {
            what: "DHT message",
            len,
            max: DHT_MAX_MSG,
        });
    }
    Ok(())
}

impl<R: AsRef<[u8]>> Request<R> {
    /// Encodes into `out`.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        out.push(DHT_VERSION);
        match self {
            Request::Ping => out.push(REQ_PING),
            Request::FindNode { target } => {
                out.push(REQ_FIND_NODE);
                out.extend_from_slice(target);
            }
            Request::FindValue {
                key,
                owner,
                known_seq,
            } => {
                out.push(REQ_FIND_VALUE);
                out.extend_from_slice(key);
                out.extend_from_slice(&owner.0);
                out.extend_from_slice(&known_seq.to_be_bytes());
            }
            Request::Store { record } => {
                out.push(REQ_STORE);
                write_record(out, record.as_ref())?;
            }
        }
        Ok(())
    }

    /// Encoded length, without encoding.
    pub fn encoded_len(&self) -> usize {
        2 + match self {
            Request::Ping => 0,
            Request::FindNode { .. } => 32,
            Request::FindValue { .. } => 72,
            Request::Store { record } => 2 + record.as_ref().len(),
        }
    }
}

impl<'a> Request<&'a [u8]> {
    /// Decodes a request; the record, if any, borrows from `buf`.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        check_total(buf.len())?;
        let mut r = Reader::new(buf);
        let req = match header(&mut r)? {
            REQ_PING => Request::Ping,
            REQ_FIND_NODE => Request::FindNode {
                target: *r.array()?,
            },
            REQ_FIND_VALUE => Request::FindValue {
                key: *r.array()?,
                owner: PeerId(*r.array()?),
                known_seq: r.u64()?,
            },
            REQ_STORE => Request::Store {
                record: read_record(&mut r)?,
            },
            t => return Err(Error::UnknownType(t)),
        };
        r.finish()?;
        Ok(req)
    }
}

impl<R: AsRef<[u8]>> Response<R> {
    /// Encodes into `out`.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        out.push(DHT_VERSION);
        match self {
            Response::Pong { observed } => {
                out.push(RESP_PONG);
                write_addr(out, observed);
            }
            Response::Nodes { contacts } => {
                if contacts.len() > K {
                    return Err(Error::TooLarge {
                        what: "contact list",
                        len: contacts.len(),
                        max: K,
                    });
                }
                out.push(RESP_NODES);
                out.push(contacts.len() as u8);
                for c in contacts {
                    write_contact(out, c);
                }
            }
            Response::Value { record } => {
                out.push(RESP_VALUE);
                write_record(out, record.as_ref())?;
            }
            Response::Stored(code) => {
                out.push(RESP_STORED);
                out.push(*code as u8);
            }
        }
        Ok(())
    }

    /// Encoded length, without encoding.
    pub fn encoded_len(&self) -> usize {
        2 + match self {
            Response::Pong { observed } => addr_len(observed),
            Response::Nodes { contacts } => {
                1 + contacts
                    .iter()
                    .map(|c| 64 + addr_len(&c.addr))
                    .sum::<usize>()
            }
            Response::Value { record } => 2 + record.as_ref().len(),
            Response::Stored(_) => 1,
        }
    }
}

impl<'a> Response<&'a [u8]> {
    /// Decodes a response; the record, if any, borrows from `buf`.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        check_total(buf.len())?;
        let mut r = Reader::new(buf);
        let resp = match header(&mut r)? {
            RESP_PONG => Response::Pong {
                observed: read_addr(&mut r)?,
            },
            RESP_NODES => {
                let n = r.u8()? as usize;
                if n > K {
                    return Err(Error::TooLarge {
                        what: "contact list",
                        len: n,
                        max: K,
                    });
                }
                let mut contacts = Vec::with_capacity(n);
                for _ in 0..n {
                    contacts.push(read_contact(&mut r)?);
                }
                Response::Nodes { contacts }
            }
            RESP_VALUE => Response::Value {
                record: read_record(&mut r)?,
            },
            RESP_STORED => Response::Stored(StoreCode::try_from(r.u8()?)?),
            t => return Err(Error::UnknownType(t)),
        };
        r.finish()?;
        Ok(resp)
    }
}

/// Encodes one address (`family u8 || ip || port u16`), as a PONG carries it.
pub fn emit_addr(a: &SocketAddr, out: &mut Vec<u8>) {
    write_addr(out, a);
}

/// Decodes an address written by [`emit_addr`] that fills `buf`.
pub fn parse_addr(buf: &[u8]) -> Result<SocketAddr, Error> {
    let mut r = Reader::new(buf);
    let a = read_addr(&mut r)?;
    r.finish()?;
    Ok(a)
}

/// Encodes a list of contacts (the routing-table cache): `n u16 || n * contact`.
pub fn emit_contact_list(contacts: &[Contact], out: &mut Vec<u8>) {
    let n = contacts.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for c in &contacts[..n] {
        write_contact(out, c);
    }
}

/// Decodes a list written by [`emit_contact_list`], refusing more than `max` entries.
pub fn parse_contact_list(buf: &[u8], max: usize) -> Result<Vec<Contact>, Error> {
    let mut r = Reader::new(buf);
    let n = r.u16()? as usize;
    if n > max {
        return Err(Error::TooLarge {
            what: "contact list",
            len: n,
            max,
        });
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(read_contact(&mut r)?);
    }
    r.finish()?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(i: u8, v6: bool) -> Contact {
        Contact {
            id: PeerId([i; 32]),
            ed25519: [i ^ 0xff; 32],
            addr: if v6 {
                format!("[fd00::{i}]:4433").parse().unwrap()
            } else {
                format!("192.0.2.{i}:4433").parse().unwrap()
            },
        }
    }

    #[test]
    fn round_trips_and_lengths() {
        let reqs: Vec<Request<&[u8]>> = vec![
            Request::Ping,
            Request::FindNode { target: [1; 32] },
            Request::FindValue {
                key: [2; 32],
                owner: PeerId([3; 32]),
                known_seq: 7,
            },
            Request::Store { record: b"rec" },
        ];
        for q in reqs {
            let mut out = Vec::new();
            q.emit(&mut out).unwrap();
            assert_eq!(out.len(), q.encoded_len());
            assert_eq!(Request::parse(&out).unwrap(), q);
            for cut in 0..out.len() {
                assert!(Request::parse(&out[..cut]).is_err());
            }
        }
        let resps: Vec<Response<&[u8]>> = vec![
            Response::Pong {
                observed: "198.51.100.1:9".parse().unwrap(),
            },
            Response::Nodes {
                contacts: (0..20).map(|i| contact(i, i % 2 == 0)).collect(),
            },
            Response::Value { record: b"record" },
            Response::Stored(StoreCode::Outdated),
        ];
        for p in resps {
            let mut out = Vec::new();
            p.emit(&mut out).unwrap();
            assert_eq!(out.len(), p.encoded_len());
            assert_eq!(Response::parse(&out).unwrap(), p);
            let mut extra = out.clone();
            extra.push(0);
            assert!(Response::parse(&extra).is_err());
        }
        // Compact contacts: under 100 bytes each.
        assert_eq!(
            Response::<&[u8]>::Nodes {
                contacts: vec![contact(1, false)]
            }
            .encoded_len()
                - 3,
            71
        );
    }

    #[test]
    fn one_address_round_trips_and_nothing_else_parses() {
        for a in ["198.51.100.1:9", "[2001:db8::1]:4433"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut b = Vec::new();
            emit_addr(&a, &mut b);
            assert_eq!(parse_addr(&b), Ok(a));
            assert!(parse_addr(&b[..b.len() - 1]).is_err());
            b.push(0);
            assert!(parse_addr(&b).is_err(), "trailing bytes");
        }
        assert!(parse_addr(&[5, 1, 2, 3, 4, 0, 1]).is_err());
        assert!(parse_addr(&[]).is_err());
    }

    #[test]
    fn limits() {
        let too_many: Response<&[u8]> = Response::Nodes {
            contacts: (0..21).map(|i| contact(i, false)).collect(),
        };
        assert!(too_many.emit(&mut Vec::new()).is_err());
        let mut wire = vec![DHT_VERSION, RESP_NODES, 21];
        wire.extend_from_slice(&[0; 71 * 21]);
        assert!(matches!(
            Response::parse(&wire),
            Err(Error::TooLarge { .. })
        ));
        let big = vec![0u8; RECORD_MAX_LEN + 1];
        assert!(Request::Store { record: &big[..] }
            .emit(&mut Vec::new())
            .is_err());
        assert_eq!(Request::parse(&[2, 1]), Err(Error::UnsupportedVersion(2)));
        assert_eq!(Request::parse(&[1, 9]), Err(Error::UnknownType(9)));
    }
}
