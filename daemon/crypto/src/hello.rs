//! HELLO: the first message each way on a connection's control stream (DESIGN.md, step 4).
//!
//! It ties the QUIC session to the sender's PeerId post-quantum: an ML-DSA-87 + Ed25519
//! signature over the TLS exporter value, both PeerIds and the role; the sender's record, which
//! binds its Ed25519 key (the TLS raw public key) to its PeerId; and an HMAC proving knowledge of
//! the network key, bound to the same exporter. Checked cheapest first: the network-key proof
//! (one HMAC) before any signature, so a stranger costs the receiver almost nothing.
//!
//! Between members the HELLO goes unsigned ([`HelloSig::WithNext`]) and the INIT (dialler) or
//! RESP (listener) after it in the same flight is signed over both
//! ([`crate::session::initiate_after_hello`]): one ML-DSA-87 signature per side instead of two.
//! That signature also covers the record inside the HELLO, so the record's own signatures are
//! not checked there ([`check_record_in_flight`]): one verification per side instead of three.
//! A dialler that holds the listener's current record says so (`held`), and the listener then
//! sends only its sequence number ([`RecordRefOrSeq::Known`]).

use shadowmesh_proto::consts::{EXPORTER_LEN, NETKEY_PROOF_LEN};
use shadowmesh_proto::msg::{
    append_sigs, Hello, RecordRefOrSeq, Role, HELLO_DOMAIN, HELLO_MEMBER, HELLO_SIGNED_WITH_NEXT,
    NETKEY_DOMAIN,
};
use shadowmesh_proto::PeerId;

use crate::record::{check_record_in_flight, verify_record, VerifiedRecord};
use crate::{Error, Identity};

/// HMAC-SHA-256 under the network key over the exporter, the sender's role and PeerId.
pub fn netkey_proof(
    network_key: &[u8; 32],
    exporter: &[u8; EXPORTER_LEN],
    role: Role,
    from: &PeerId,
) -> [u8; NETKEY_PROOF_LEN] {
    crate::hmac_sha256(
        network_key,
        &[NETKEY_DOMAIN, exporter, &[role as u8], &from.0],
    )
}

/// How a HELLO is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloSig {
    /// Signed on its own (a DHT-only node's, or a listener that sends no RESP).
    Own,
    /// Unsigned ([`HELLO_SIGNED_WITH_NEXT`]): the INIT or RESP after it is signed over both.
    WithNext,
}

/// What a HELLO says.
#[derive(Debug, Clone, Copy)]
pub struct HelloParams<'a> {
    /// Our role on the connection.
    pub role: Role,
    /// The receiver.
    pub to: &'a PeerId,
    /// Our record, or its sequence number when the receiver holds it.
    pub record: RecordRefOrSeq<'a>,
    /// The connection's TLS exporter value.
    pub exporter: &'a [u8; EXPORTER_LEN],
    /// The mesh's network key (`None` on a DHT-only node).
    pub network_key: Option<&'a [u8; 32]>,
    /// Signed on its own, or with the INIT or RESP after it.
    pub sig: HelloSig,
    /// The sequence number of the receiver's record we hold (a dialler's), so that it can
    /// answer with [`RecordRefOrSeq::Known`].
    pub held: Option<u64>,
}

/// Builds a HELLO body. With a network key the sender is a member and proves the key; without
/// one it is a DHT-only node.
pub fn build_hello(id: &Identity, p: &HelloParams<'_>) -> Result<Vec<u8>, Error> {
    let me = id.peer_id();
    let (mut flags, proof) = match p.network_key {
        Some(k) => (HELLO_MEMBER, netkey_proof(k, p.exporter, p.role, &me)),
        None => (0, [0u8; NETKEY_PROOF_LEN]),
    };
    if p.sig == HelloSig::WithNext {
        flags |= HELLO_SIGNED_WITH_NEXT;
    }
    let mut body = Vec::new();
    Hello::emit_unsigned(
        p.role, flags, &me, p.to, p.held, p.record, &proof, &mut body,
    )?;
    if p.sig == HelloSig::Own {
        let (m, e) = id.sign(HELLO_DOMAIN, &[p.exporter, &body]);
        append_sigs(&mut body, &m, &e);
    }
    Ok(body)
}

/// What the receiver knows when it checks a HELLO.
#[derive(Debug)]
pub struct HelloCheck<'a> {
    /// Our PeerId: the HELLO must be addressed to it.
    pub me: PeerId,
    /// The role the sender must have (the other end's).
    pub sender_role: Role,
    /// The PeerId we dialled, if we are the dialler.
    pub expected_peer: Option<PeerId>,
    /// The connection's TLS exporter value.
    pub exporter: &'a [u8; EXPORTER_LEN],
    /// The mesh's network key (`None` on a DHT-only node).
    pub network_key: Option<&'a [u8; 32]>,
    /// The Ed25519 key TLS authenticated.
    pub tls_ed25519: &'a [u8; 32],
    /// The sender's record if we already hold it (lets it send only the sequence number).
    pub known: Option<&'a VerifiedRecord>,
    /// Now, Unix seconds (record expiry).
    pub now_unix: u64,
}

/// A verified HELLO.
#[derive(Debug, Clone)]
pub struct HelloOutcome {
    /// The sender's verified record.
    pub record: VerifiedRecord,
    /// The sender proved our network key: it belongs to our mesh and may carry packets.
    /// False for DHT-only peers (and always false on a DHT-only node).
    pub member: bool,
    /// The sender claimed membership (an INIT follows its HELLO).
    pub claims_member: bool,
    /// The HELLO came unsigned ([`HelloSig::WithNext`]): it is proven only once the INIT or
    /// RESP after it verifies over it, and must not be trusted before.
    pub signed_with_next: bool,
    /// The sender holds our record with this sequence number.
    pub held: Option<u64>,
}

/// Verifies a HELLO body. A sender claiming membership must prove our network key (if we have
/// one): a wrong proof is refused. A sender without the claim is a DHT-only peer.
pub fn verify_hello(body: &[u8], c: &HelloCheck<'_>) -> Result<HelloOutcome, Error> {
    let h = Hello::parse(body)?;
    if h.role != c.sender_role {
        return Err(Error::Wire(shadowmesh_proto::Error::InvalidField("role")));
    }
    if h.to != c.me {
        return Err(Error::UnexpectedPeer("HELLO.to"));
    }
    if let Some(p) = c.expected_peer {
        if h.from != p {
            return Err(Error::UnexpectedPeer("HELLO.from"));
        }
    }
    let claims_member = h.flags & HELLO_MEMBER != 0;
    let signed_with_next = h.sigs.is_none();
    // Only a member's HELLO can lean on a following INIT or RESP.
    if signed_with_next && !claims_member {
        return Err(Error::Wire(shadowmesh_proto::Error::InvalidField(
            "HELLO signature placement",
        )));
    }
    let member = match (claims_member, c.network_key) {
        (true, Some(k)) => {
            let proof = netkey_proof(k, c.exporter, h.role, &h.from);
            if !crate::ct_eq(&proof, h.netkey_proof) {
                return Err(Error::WrongNetworkKey);
            }
            true
        }
        (true, None) => false,
        (false, _) => {
            if h.netkey_proof != &[0u8; NETKEY_PROOF_LEN] {
                return Err(Error::Wire(shadowmesh_proto::Error::InvalidField(
                    "proof without member flag",
                )));
            }
            false
        }
    };
    let record = match h.record {
        // Signed with the next message, whose signatures cover the record too.
        RecordRefOrSeq::Full(bytes) if signed_with_next => {
            check_record_in_flight(bytes, c.now_unix)?
        }
        RecordRefOrSeq::Full(bytes) => verify_record(bytes, c.now_unix)?,
        RecordRefOrSeq::Known(seq) => match c.known {
            Some(r) if r.seq == seq && r.peer_id() == h.from && r.expires_at > c.now_unix => {
                r.clone()
            }
            _ => return Err(Error::UnknownRecord),
        },
    };
    if record.peer_id() != h.from {
        return Err(Error::UnexpectedPeer("record"));
    }
    if let (true, Some(k)) = (member, c.network_key) {
        if record.storage_key != crate::storage_key(k, &h.from) {
            return Err(Error::WrongStorageKey);
        }
    }
    if !crate::ct_eq(&record.keys.ed25519, c.tls_ed25519) {
        return Err(Error::TlsKeyMismatch);
    }
    if let Some((m, e)) = h.sigs {
        record
            .keys
            .verify(HELLO_DOMAIN, &[c.exporter, h.signed], m, e)?;
    }
    Ok(HelloOutcome {
        record,
        member,
        claims_member,
        signed_with_next,
        held: h.held,
    })
}
