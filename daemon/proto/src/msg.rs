//! Control-stream messages (DESIGN.md, "Handshake: two layers, one chain of bindings").
//!
//! Framing on a QUIC control stream: `type u8 || length u32 || body`, big-endian, body at most
//! [`CONTROL_MAX_BODY`] bytes.
//!
//! ```text
//! HELLO  version u8, role u8, flags u8 (bit 0: member; bit 1: signed with the next message;
//!        bit 2: holds the receiver's record), from [32], to [32], if bit 2: held_seq u64,
//!        record_kind u8 (0 = full: len u16, record; 1 = known: seq u64),
//!        netkey_proof [32], then unless bit 1: mldsa_sig [4627], ed25519_sig [64]
//!        signatures over HELLO_DOMAIN || exporter || body-before-signatures
//! INIT   version u8, from [32], to [32], x25519 [32], mlkem_ek [1568], mldsa_sig, ed25519_sig
//!        signatures over INIT_DOMAIN || binding || body-before-signatures, or after a HELLO
//!        with bit 1: HELLO_INIT_DOMAIN || exporter || HELLO body || INIT body-before-signatures
//! RESP   version u8, from [32], to [32], init_hash [32], x25519 [32], mlkem_ct [1568],
//!        mldsa_sig, ed25519_sig
//!        signatures over RESP_DOMAIN || binding || body-before-signatures, or after a HELLO
//!        with bit 1: HELLO_RESP_DOMAIN || exporter || HELLO body || RESP body-before-signatures
//! REKEY_INIT  version u8, epoch u32, x25519 [32], mlkem_ek [1568], mac [32]
//! REKEY_RESP  version u8, epoch u32, x25519 [32], mlkem_ct [1568], mac [32]
//!        mac = HMAC(current session's rekey key, domain || body-before-mac)
//! ```
//! `binding` is the TLS exporter for a direct session (or the relay's PeerId for a relayed one).
//!
//! On a direct connection between members each side's HELLO and its INIT (the dialler) or RESP
//! (the listener) leave in one flight, and one dual signature covers both: one ML-DSA-87
//! signature per side instead of two, and one verification fewer.

use crate::consts::*;
use crate::error::Reader;
use crate::{Error, PeerId};

/// Domain prefix of HELLO signatures.
pub const HELLO_DOMAIN: &[u8] = b"shadowmesh/hello/v1\0";
/// Domain prefix of the network-key proof in HELLO.
pub const NETKEY_DOMAIN: &[u8] = b"shadowmesh/netkey/v1\0";
/// Domain prefix of INIT signatures.
pub const INIT_DOMAIN: &[u8] = b"shadowmesh/e2e-init/v1\0";
/// Domain prefix of RESP signatures.
pub const RESP_DOMAIN: &[u8] = b"shadowmesh/e2e-resp/v1\0";
/// Domain prefix of an INIT signature that also covers the HELLO before it.
pub const HELLO_INIT_DOMAIN: &[u8] = b"shadowmesh/hello+init/v1\0";
/// Domain prefix of a RESP signature that also covers the HELLO before it.
pub const HELLO_RESP_DOMAIN: &[u8] = b"shadowmesh/hello+resp/v1\0";
/// Domain prefix of REKEY_INIT MACs.
pub const REKEY_INIT_DOMAIN: &[u8] = b"shadowmesh/rekey-init/v1\0";
/// Domain prefix of REKEY_RESP MACs.
pub const REKEY_RESP_DOMAIN: &[u8] = b"shadowmesh/rekey-resp/v1\0";
/// TLS exporter label for the hop-layer binding.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-shadowmesh-hop-v1";
/// Control message version.
pub const MSG_VERSION: u8 = 1;
/// Version of INIT and RESP: 2 carries each side's receiver index (SMSH frame version 2).
pub const SESSION_MSG_VERSION: u8 = 2;
/// Length of the `type || length` prefix.
pub const MSG_HEADER_LEN: usize = 5;

const SIGS_LEN: usize = MLDSA87_SIGNATURE_LEN + ED25519_SIGNATURE_LEN;

/// Control message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MsgType {
    /// Hop-layer identity proof.
    Hello = 1,
    /// End-to-end session offer.
    Init = 2,
    /// End-to-end session answer.
    Resp = 3,
    /// Rekey offer, authenticated by the current session.
    RekeyInit = 4,
    /// Rekey answer.
    RekeyResp = 5,
    /// Peer exchange: the members the sender holds sessions with, as a contact list
    /// ([`crate::dht::wire::emit_contact_list`], at most [`PEERS_MAX`]).
    Peers = 6,
    /// The sender's newly signed record (its routes or addresses changed); members replace
    /// the one they hold if the sequence number is higher.
    Record = 7,
    /// "I accept data frames as plain UDP on this connection's path" (empty body; the fast
    /// lane, DESIGN.md "Data plane").
    FastLane = 8,
    /// "Ask this member to dial me": the sender's dial of the one contact in the body (a
    /// contact list of one) does not complete, and the receiver holds a session with it (hole
    /// punching through a common member).
    IntroduceReq = 9,
    /// "This member is dialling you: dial it too": the one contact in the body, as the sender
    /// sees it, so that the two dials open both NATs at once.
    Introduce = 10,
    /// "I relay for members" (empty body; sent on link-up by a node that does).
    Relay = 11,
    /// A relay opened (or refused) a circuit to another member for us
    /// ([`crate::relay::Circuit`]).
    Circuit = 12,
    /// "I see you at this address now" (one address, [`crate::dht::wire::emit_addr`]): sent by
    /// the end that accepted a connection when the dialler's address moves under it (QUIC
    /// migration), so that a router whose public address changed learns it at once.
    Seen = 13,
    /// The hosts behind the sender, by name ([`crate::lan_names`]): replaces the list it sent
    /// before.
    LanNames = 14,
}

/// Most contacts one peer-exchange message may carry.
pub const PEERS_MAX: usize = 64;

impl TryFrom<u8> for MsgType {
    type Error = Error;
    fn try_from(v: u8) -> Result<Self, Error> {
        Ok(match v {
            1 => MsgType::Hello,
            2 => MsgType::Init,
            3 => MsgType::Resp,
            4 => MsgType::RekeyInit,
            5 => MsgType::RekeyResp,
            6 => MsgType::Peers,
            7 => MsgType::Record,
            8 => MsgType::FastLane,
            9 => MsgType::IntroduceReq,
            10 => MsgType::Introduce,
            11 => MsgType::Relay,
            12 => MsgType::Circuit,
            13 => MsgType::Seen,
            14 => MsgType::LanNames,
            t => return Err(Error::UnknownType(t)),
        })
    }
}

/// Parses the 5-byte message prefix: type and body length (bounded).
pub fn parse_header(h: &[u8; MSG_HEADER_LEN]) -> Result<(MsgType, usize), Error> {
    match parse_header_any(h)? {
        (Ok(t), len) => Ok((t, len)),
        (Err(t), _) => Err(Error::UnknownType(t)),
    }
}

/// [`parse_header`], with a type this version does not know given back as `Err(type)` rather
/// than refused: a reader skips that message's body and reads on, so that a newer member's new
/// message does not stop an older one's control stream.
pub fn parse_header_any(h: &[u8; MSG_HEADER_LEN]) -> Result<(Result<MsgType, u8>, usize), Error> {
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > CONTROL_MAX_BODY {
        return Err(Error::TooLarge {
            what: "control message",
            len,
            max: CONTROL_MAX_BODY,
        });
    }
    Ok((MsgType::try_from(h[0]).map_err(|_| h[0]), len))
}

/// Writes a message prefix for a body of `len` bytes.
pub fn emit_header(t: MsgType, len: usize, out: &mut Vec<u8>) {
    out.push(t as u8);
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

/// Which end of a QUIC connection a message comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// The QUIC client.
    Dialler = 0,
    /// The QUIC server.
    Listener = 1,
}

impl TryFrom<u8> for Role {
    type Error = Error;
    fn try_from(v: u8) -> Result<Self, Error> {
        match v {
            0 => Ok(Role::Dialler),
            1 => Ok(Role::Listener),
            _ => Err(Error::InvalidField("role")),
        }
    }
}

/// How HELLO carries the sender's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordRefOrSeq<'a> {
    /// The full record bytes (unverified here).
    Full(&'a [u8]),
    /// Only the sequence number: the receiver already holds this record.
    Known(u64),
}

/// HELLO flag: the sender belongs to a mesh and `netkey_proof` proves its network key. Without
/// it the sender is a DHT-only node (a seed), its proof is all zeros, and it never carries
/// packets.
pub const HELLO_MEMBER: u8 = 0x01;
/// HELLO flag: the HELLO carries no signatures; the message after it in the same flight (INIT
/// from the dialler, RESP from the listener) is signed over both.
pub const HELLO_SIGNED_WITH_NEXT: u8 = 0x02;
/// HELLO flag: the sender holds the receiver's record with sequence number `held_seq` (a
/// dialler that has it from the DHT or an earlier connection); the receiver may then send
/// [`RecordRefOrSeq::Known`] instead of the record.
pub const HELLO_HOLDS_RECORD: u8 = 0x04;

/// A parsed HELLO.
#[derive(Debug, Clone, Copy)]
pub struct Hello<'a> {
    /// Sender's role.
    pub role: Role,
    /// Flags ([`HELLO_MEMBER`], [`HELLO_SIGNED_WITH_NEXT`]).
    pub flags: u8,
    /// Sender.
    pub from: PeerId,
    /// Intended receiver.
    pub to: PeerId,
    /// The sequence number of the receiver's record the sender holds ([`HELLO_HOLDS_RECORD`]).
    pub held: Option<u64>,
    /// Sender's record.
    pub record: RecordRefOrSeq<'a>,
    /// HMAC proving knowledge of the network key.
    pub netkey_proof: &'a [u8; NETKEY_PROOF_LEN],
    /// The signed part of the body (all of it with [`HELLO_SIGNED_WITH_NEXT`]).
    pub signed: &'a [u8],
    /// ML-DSA-87 and Ed25519 signatures; `None` with [`HELLO_SIGNED_WITH_NEXT`].
    pub sigs: Option<HelloSigs<'a>>,
}

/// A HELLO's own signatures: ML-DSA-87, then Ed25519.
pub type HelloSigs<'a> = (
    &'a [u8; MLDSA87_SIGNATURE_LEN],
    &'a [u8; ED25519_SIGNATURE_LEN],
);

fn check_version(r: &mut Reader<'_>) -> Result<(), Error> {
    check_version_is(r, MSG_VERSION)
}

fn check_version_is(r: &mut Reader<'_>, want: u8) -> Result<(), Error> {
    let v = r.u8()?;
    if v != want {
        return Err(Error::UnsupportedVersion(v as u16));
    }
    Ok(())
}

type Sigs<'a> = (
    &'a [u8],
    &'a [u8; MLDSA87_SIGNATURE_LEN],
    &'a [u8; ED25519_SIGNATURE_LEN],
);

fn read_sigs<'a>(body: &'a [u8], r: &mut Reader<'a>) -> Result<Sigs<'a>, Error> {
    let signed = &body[..r.pos()];
    let m = r.array()?;
    let e = r.array()?;
    r.finish()?;
    Ok((signed, m, e))
}

impl<'a> Hello<'a> {
    /// Parses a HELLO body.
    pub fn parse(body: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader::new(body);
        check_version(&mut r)?;
        let role = Role::try_from(r.u8()?)?;
        let flags = r.u8()?;
        if flags & !(HELLO_MEMBER | HELLO_SIGNED_WITH_NEXT | HELLO_HOLDS_RECORD) != 0 {
            return Err(Error::InvalidField("HELLO flags"));
        }
        let from = PeerId(*r.array()?);
        let to = PeerId(*r.array()?);
        let held = if flags & HELLO_HOLDS_RECORD != 0 {
            Some(r.u64()?)
        } else {
            None
        };
        let record = match r.u8()? {
            0 => {
                let n = r.u16()? as usize;
                if n > RECORD_MAX_LEN {
                    return Err(Error::TooLarge {
                        what: "record",
                        len: n,
                        max: RECORD_MAX_LEN,
                    });
                }
                RecordRefOrSeq::Full(r.bytes(n)?)
            }
            1 => RecordRefOrSeq::Known(r.u64()?),
            _ => return Err(Error::InvalidField("record kind")),
        };
        let netkey_proof = r.array()?;
        let (signed, sigs) = if flags & HELLO_SIGNED_WITH_NEXT != 0 {
            r.finish()?;
            (body, None)
        } else {
            let (signed, m, e) = read_sigs(body, &mut r)?;
            (signed, Some((m, e)))
        };
        Ok(Hello {
            role,
            flags,
            from,
            to,
            held,
            record,
            netkey_proof,
            signed,
            sigs,
        })
    }

    /// Appends the unsigned part of a HELLO body; the caller signs it and appends signatures
    /// with [`append_sigs`]. `held` sets [`HELLO_HOLDS_RECORD`] in `flags`.
    #[allow(clippy::too_many_arguments)]
    pub fn emit_unsigned(
        role: Role,
        flags: u8,
        from: &PeerId,
        to: &PeerId,
        held: Option<u64>,
        record: RecordRefOrSeq<'_>,
        netkey_proof: &[u8; NETKEY_PROOF_LEN],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        out.push(MSG_VERSION);
        out.push(role as u8);
        out.push(match held {
            Some(_) => flags | HELLO_HOLDS_RECORD,
            None => flags & !HELLO_HOLDS_RECORD,
        });
        out.extend_from_slice(&from.0);
        out.extend_from_slice(&to.0);
        if let Some(seq) = held {
            out.extend_from_slice(&seq.to_be_bytes());
        }
        match record {
            RecordRefOrSeq::Full(rec) => {
                if rec.len() > RECORD_MAX_LEN {
                    return Err(Error::TooLarge {
                        what: "record",
                        len: rec.len(),
                        max: RECORD_MAX_LEN,
                    });
                }
                out.push(0);
                out.extend_from_slice(&(rec.len() as u16).to_be_bytes());
                out.extend_from_slice(rec);
            }
            RecordRefOrSeq::Known(seq) => {
                out.push(1);
                out.extend_from_slice(&seq.to_be_bytes());
            }
        }
        out.extend_from_slice(netkey_proof);
        Ok(())
    }
}

/// Appends ML-DSA-87 and Ed25519 signatures to a body.
pub fn append_sigs(
    out: &mut Vec<u8>,
    mldsa_sig: &[u8; MLDSA87_SIGNATURE_LEN],
    ed25519_sig: &[u8; ED25519_SIGNATURE_LEN],
) {
    out.reserve(SIGS_LEN);
    out.extend_from_slice(mldsa_sig);
    out.extend_from_slice(ed25519_sig);
}

/// A parsed INIT.
#[derive(Debug, Clone, Copy)]
pub struct Init<'a> {
    /// Initiator.
    pub from: PeerId,
    /// Responder.
    pub to: PeerId,
    /// The initiator's receiver index: the responder's frames carry it.
    pub index: u32,
    /// Ephemeral X25519 public key.
    pub x25519: &'a [u8; X25519_PUBLIC_KEY_LEN],
    /// Ephemeral ML-KEM-1024 encapsulation key.
    pub mlkem_ek: &'a [u8; MLKEM1024_ENCAPS_KEY_LEN],
    /// The signed part of the body.
    pub signed: &'a [u8],
    /// ML-DSA-87 signature.
    pub mldsa_sig: &'a [u8; MLDSA87_SIGNATURE_LEN],
    /// Ed25519 signature.
    pub ed25519_sig: &'a [u8; ED25519_SIGNATURE_LEN],
}

impl<'a> Init<'a> {
    /// Parses an INIT body.
    pub fn parse(body: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader::new(body);
        check_version_is(&mut r, SESSION_MSG_VERSION)?;
        let from = PeerId(*r.array()?);
        let to = PeerId(*r.array()?);
        let index = r.u32()?;
        let x25519 = r.array()?;
        let mlkem_ek = r.array()?;
        let (signed, mldsa_sig, ed25519_sig) = read_sigs(body, &mut r)?;
        Ok(Init {
            from,
            to,
            index,
            x25519,
            mlkem_ek,
            signed,
            mldsa_sig,
            ed25519_sig,
        })
    }

    /// Appends the unsigned part of an INIT body.
    pub fn emit_unsigned(
        from: &PeerId,
        to: &PeerId,
        index: u32,
        x25519: &[u8; X25519_PUBLIC_KEY_LEN],
        mlkem_ek: &[u8; MLKEM1024_ENCAPS_KEY_LEN],
        out: &mut Vec<u8>,
    ) {
        out.push(SESSION_MSG_VERSION);
        out.extend_from_slice(&from.0);
        out.extend_from_slice(&to.0);
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(x25519);
        out.extend_from_slice(mlkem_ek);
    }
}

/// A parsed RESP.
#[derive(Debug, Clone, Copy)]
pub struct Resp<'a> {
    /// Responder.
    pub from: PeerId,
    /// Initiator.
    pub to: PeerId,
    /// The responder's receiver index: the initiator's frames carry it.
    pub index: u32,
    /// SHA-256 of the INIT body this answers.
    pub init_hash: &'a [u8; 32],
    /// Ephemeral X25519 public key.
    pub x25519: &'a [u8; X25519_PUBLIC_KEY_LEN],
    /// ML-KEM-1024 ciphertext to the initiator's encapsulation key.
    pub mlkem_ct: &'a [u8; MLKEM1024_CIPHERTEXT_LEN],
    /// The signed part of the body.
    pub signed: &'a [u8],
    /// ML-DSA-87 signature.
    pub mldsa_sig: &'a [u8; MLDSA87_SIGNATURE_LEN],
    /// Ed25519 signature.
    pub ed25519_sig: &'a [u8; ED25519_SIGNATURE_LEN],
}

impl<'a> Resp<'a> {
    /// Parses a RESP body.
    pub fn parse(body: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader::new(body);
        check_version_is(&mut r, SESSION_MSG_VERSION)?;
        let from = PeerId(*r.array()?);
        let to = PeerId(*r.array()?);
        let index = r.u32()?;
        let init_hash = r.array()?;
        let x25519 = r.array()?;
        let mlkem_ct = r.array()?;
        let (signed, mldsa_sig, ed25519_sig) = read_sigs(body, &mut r)?;
        Ok(Resp {
            from,
            to,
            index,
            init_hash,
            x25519,
            mlkem_ct,
            signed,
            mldsa_sig,
            ed25519_sig,
        })
    }

    /// Appends the unsigned part of a RESP body.
    pub fn emit_unsigned(
        from: &PeerId,
        to: &PeerId,
        index: u32,
        init_hash: &[u8; 32],
        x25519: &[u8; X25519_PUBLIC_KEY_LEN],
        mlkem_ct: &[u8; MLKEM1024_CIPHERTEXT_LEN],
        out: &mut Vec<u8>,
    ) {
        out.push(SESSION_MSG_VERSION);
        out.extend_from_slice(&from.0);
        out.extend_from_slice(&to.0);
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(init_hash);
        out.extend_from_slice(x25519);
        out.extend_from_slice(mlkem_ct);
    }
}

/// A parsed REKEY_INIT or REKEY_RESP (same shape; `kem` is the encapsulation key in an init and
/// the ciphertext in a response, both 1,568 bytes for ML-KEM-1024).
#[derive(Debug, Clone, Copy)]
pub struct Rekey<'a> {
    /// Rekey generation this message starts or answers.
    pub epoch: u32,
    /// Ephemeral X25519 public key.
    pub x25519: &'a [u8; X25519_PUBLIC_KEY_LEN],
    /// ML-KEM-1024 encapsulation key (init) or ciphertext (resp).
    pub kem: &'a [u8; MLKEM1024_ENCAPS_KEY_LEN],
    /// The MACed part of the body.
    pub maced: &'a [u8],
    /// HMAC-SHA-256 under the current session's rekey key.
    pub mac: &'a [u8; 32],
}

impl<'a> Rekey<'a> {
    /// Parses a REKEY_INIT or REKEY_RESP body.
    pub fn parse(body: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader::new(body);
        check_version(&mut r)?;
        let epoch = r.u32()?;
        let x25519 = r.array()?;
        let kem = r.array()?;
        let maced = &body[..r.pos()];
        let mac = r.array()?;
        r.finish()?;
        Ok(Rekey {
            epoch,
            x25519,
            kem,
            maced,
            mac,
        })
    }

    /// Appends the un-MACed part of a rekey body.
    pub fn emit_unmaced(
        epoch: u32,
        x25519: &[u8; X25519_PUBLIC_KEY_LEN],
        kem: &[u8; MLKEM1024_ENCAPS_KEY_LEN],
        out: &mut Vec<u8>,
    ) {
        out.push(MSG_VERSION);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(x25519);
        out.extend_from_slice(kem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bounds() {
        assert_eq!(parse_header(&[1, 0, 0, 0, 9]).unwrap(), (MsgType::Hello, 9));
        assert!(matches!(
            parse_header(&[1, 0, 1, 0, 1]),
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(parse_header(&[15, 0, 0, 0, 0]), Err(Error::UnknownType(15)));
        assert_eq!(parse_header_any(&[15, 0, 0, 0, 7]), Ok((Err(15), 7)));
        assert_eq!(
            parse_header_any(&[10, 0, 0, 0, 7]),
            Ok((Ok(MsgType::Introduce), 7))
        );
        assert!(matches!(
            parse_header_any(&[200, 0, 1, 0, 1]),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn hello_round_trip_and_truncation() {
        let mut body = Vec::new();
        Hello::emit_unsigned(
            Role::Listener,
            HELLO_MEMBER,
            &PeerId([1; 32]),
            &PeerId([2; 32]),
            None,
            RecordRefOrSeq::Full(b"rec"),
            &[9; 32],
            &mut body,
        )
        .unwrap();
        let signed_len = body.len();
        append_sigs(
            &mut body,
            &[3; MLDSA87_SIGNATURE_LEN],
            &[4; ED25519_SIGNATURE_LEN],
        );
        let h = Hello::parse(&body).unwrap();
        assert_eq!(h.role, Role::Listener);
        assert_eq!(h.record, RecordRefOrSeq::Full(b"rec"));
        assert_eq!(h.signed.len(), signed_len);
        for cut in 0..body.len() {
            assert!(Hello::parse(&body[..cut]).is_err());
        }
        let mut extra = body.clone();
        extra.push(0);
        assert!(matches!(
            Hello::parse(&extra),
            Err(Error::TrailingBytes { .. })
        ));

        // Signed with the next message: no signatures, the whole body is what gets signed,
        // and signatures after it are trailing bytes.
        let mut next = Vec::new();
        Hello::emit_unsigned(
            Role::Dialler,
            HELLO_MEMBER | HELLO_SIGNED_WITH_NEXT,
            &PeerId([1; 32]),
            &PeerId([2; 32]),
            Some(41),
            RecordRefOrSeq::Known(7),
            &[9; 32],
            &mut next,
        )
        .unwrap();
        let h = Hello::parse(&next).unwrap();
        assert_eq!((h.signed.len(), h.sigs), (next.len(), None));
        assert_eq!((h.record, h.held), (RecordRefOrSeq::Known(7), Some(41)));
        for cut in 0..next.len() {
            assert!(Hello::parse(&next[..cut]).is_err());
        }
        let mut with_sigs = next.clone();
        append_sigs(
            &mut with_sigs,
            &[3; MLDSA87_SIGNATURE_LEN],
            &[4; ED25519_SIGNATURE_LEN],
        );
        assert!(matches!(
            Hello::parse(&with_sigs),
            Err(Error::TrailingBytes { .. })
        ));
        // A signed HELLO cut where an unsigned one would end is refused, and so is a flag
        // this version does not know.
        let mut cut = body[..signed_len].to_vec();
        assert!(Hello::parse(&cut).is_err());
        cut[2] = 0x08;
        assert!(matches!(
            Hello::parse(&cut),
            Err(Error::InvalidField("HELLO flags"))
        ));
    }

    #[test]
    fn init_resp_rekey_round_trip() {
        let mut b = Vec::new();
        Init::emit_unsigned(
            &PeerId([1; 32]),
            &PeerId([2; 32]),
            0x0102_0304,
            &[5; 32],
            &[6; 1568],
            &mut b,
        );
        append_sigs(
            &mut b,
            &[3; MLDSA87_SIGNATURE_LEN],
            &[4; ED25519_SIGNATURE_LEN],
        );
        let i = Init::parse(&b).unwrap();
        assert_eq!((i.index, i.x25519[0], i.mlkem_ek[0]), (0x0102_0304, 5, 6));
        assert!(Init::parse(&b[..b.len() - 1]).is_err());
        let mut v1 = b.clone();
        v1[0] = 1;
        assert_eq!(Init::parse(&v1).unwrap_err(), Error::UnsupportedVersion(1));

        let mut b = Vec::new();
        Resp::emit_unsigned(
            &PeerId([2; 32]),
            &PeerId([1; 32]),
            0xFFFF_FFFE,
            &[7; 32],
            &[5; 32],
            &[6; 1568],
            &mut b,
        );
        append_sigs(
            &mut b,
            &[3; MLDSA87_SIGNATURE_LEN],
            &[4; ED25519_SIGNATURE_LEN],
        );
        let r = Resp::parse(&b).unwrap();
        assert_eq!((r.index, r.init_hash), (0xFFFF_FFFE, &[7; 32]));

        let mut b = Vec::new();
        Rekey::emit_unmaced(3, &[5; 32], &[6; 1568], &mut b);
        b.extend_from_slice(&[8; 32]);
        let k = Rekey::parse(&b).unwrap();
        assert_eq!(k.epoch, 3);
        assert_eq!(k.maced.len(), b.len() - 32);
    }
}
