//! Building, verifying and opening signed peer records (layout: [`shadowmesh_proto::record`]).

use pqcrypto_traits::sign::PublicKey as _;
use shadowmesh_proto::record::{append_signatures, Payload, RecordBody, RecordRef, RECORD_DOMAIN};
use shadowmesh_proto::PeerId;

use crate::sign::PeerKeys;
use crate::{Error, Identity};

/// Inputs for a new record.
#[derive(Debug, Clone)]
pub struct RecordParams<'a> {
    /// Sequence number, higher than any earlier record of this node.
    pub seq: u64,
    /// Now, Unix seconds.
    pub issued_at: u64,
    /// Expiry, Unix seconds (at most 24 h after `issued_at`).
    pub expires_at: u64,
    /// Mesh-private payload.
    pub payload: &'a Payload,
}

fn payload_key(network_key: &[u8; 32]) -> ring::aead::LessSafeKey {
    let mut k = [0u8; 32];
    crate::hkdf(
        b"shadowmesh/record-payload/v1",
        network_key,
        &[b"payload"],
        &mut k,
    );
    ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &k).expect("key length"),
    )
}

fn payload_aad(storage_key: &[u8; 32], peer: &PeerId, seq: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(72);
    aad.extend_from_slice(storage_key);
    aad.extend_from_slice(&peer.0);
    aad.extend_from_slice(&seq.to_be_bytes());
    aad
}

/// Builds and dual-signs this node's record. The payload is encrypted under a key derived from
/// the network key, with a random nonce, bound to the storage key, PeerId and sequence.
pub fn build_record(
    id: &Identity,
    network_key: &[u8; 32],
    p: &RecordParams<'_>,
) -> Result<Vec<u8>, Error> {
    let peer_id = id.peer_id();
    let storage_key = crate::storage_key(network_key, &peer_id);
    let mut plain = Vec::new();
    p.payload.emit(&mut plain)?;
    let mut nonce = [0u8; 12];
    crate::random_bytes(&mut nonce);
    let mut sealed = plain;
    payload_key(network_key)
        .seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(payload_aad(&storage_key, &peer_id, p.seq)),
            &mut sealed,
        )
        .map_err(|_| Error::Decrypt)?;
    let mut enc = nonce.to_vec();
    enc.extend_from_slice(&sealed);
    let body = RecordBody {
        storage_key,
        peer_id,
        mldsa_pk: id.mldsa_public(),
        ed25519_pk: id.ed25519_public(),
        seq: p.seq,
        issued_at: p.issued_at,
        expires_at: p.expires_at,
        payload: &enc,
    };
    let mut out = Vec::new();
    body.emit(&mut out)?;
    let (m, e) = id.sign(RECORD_DOMAIN, &[&out]);
    append_signatures(&mut out, &m, &e);
    Ok(out)
}

/// A record whose layout, times, PeerId binding and both signatures have been checked: its own,
/// or, for a record that arrived in a HELLO signed with the INIT or RESP after it, the owner's
/// signatures over that whole flight (see [`check_record_in_flight`]).
#[derive(Clone, Debug)]
pub struct VerifiedRecord {
    /// The owner's keys.
    pub keys: PeerKeys,
    /// Storage key the owner signed.
    pub storage_key: [u8; 32],
    /// Sequence number.
    pub seq: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// The record as received.
    pub bytes: Vec<u8>,
}

/// Verifies a record: layout, time window against `now` (Unix seconds), `SHA-256(pk) = PeerId`,
/// Ed25519 then ML-DSA-87 over the body as stored.
pub fn verify_record(bytes: &[u8], now: u64) -> Result<VerifiedRecord, Error> {
    let (r, keys) = verify_record_ref(bytes, now)?;
    Ok(VerifiedRecord::new(&r, keys, bytes))
}

impl VerifiedRecord {
    fn new(r: &RecordRef<'_>, keys: PeerKeys, bytes: &[u8]) -> Self {
        VerifiedRecord {
            keys,
            storage_key: *r.storage_key,
            seq: r.seq,
            expires_at: r.expires_at,
            bytes: bytes.to_vec(),
        }
    }
}

/// A record inside a HELLO signed with the INIT or RESP after it: layout, time window and
/// `SHA-256(pk) = PeerId` are checked here, and its own signatures not, because the owner's
/// signatures over the flight cover every byte of it (under the same keys) and the caller
/// checks those before it trusts anything from the HELLO. One dual verification less per side.
pub fn check_record_in_flight(bytes: &[u8], now: u64) -> Result<VerifiedRecord, Error> {
    let r = RecordRef::parse(bytes)?;
    r.check_times(now)?;
    let keys = PeerKeys::new(r.peer_id, r.mldsa_pk, r.ed25519_pk)?;
    Ok(VerifiedRecord::new(&r, keys, bytes))
}

/// [`verify_record`] without copying: the parsed view and the owner's keys.
pub fn verify_record_ref(bytes: &[u8], now: u64) -> Result<(RecordRef<'_>, PeerKeys), Error> {
    let r = RecordRef::parse(bytes)?;
    r.check_times(now)?;
    let keys = PeerKeys::new(r.peer_id, r.mldsa_pk, r.ed25519_pk)?;
    keys.verify(RECORD_DOMAIN, &[r.body()], r.mldsa_sig, r.ed25519_sig)?;
    Ok((r, keys))
}

/// The DHT engine's record check with real signatures: ML-DSA-87 + Ed25519 and the PeerId
/// binding, and the time window. The network key is not needed (nor known, on seed nodes):
/// whether a record belongs to a mesh is for its members to tell.
#[derive(Debug, Clone, Copy, Default)]
pub struct DhtRecordCheck;

impl shadowmesh_proto::dht::node::RecordCheck for DhtRecordCheck {
    type Record = std::sync::Arc<[u8]>;

    fn check(
        &self,
        record: &Self::Record,
        now_unix: u64,
    ) -> Result<shadowmesh_proto::dht::store::RecordMeta, shadowmesh_proto::dht::wire::StoreCode>
    {
        use shadowmesh_proto::dht::wire::StoreCode;
        if record.len() > shadowmesh_proto::consts::RECORD_MAX_LEN {
            return Err(StoreCode::TooBig);
        }
        match verify_record_ref(record, now_unix) {
            Ok((r, keys)) => Ok(shadowmesh_proto::dht::store::RecordMeta {
                key: *r.storage_key,
                owner: keys.peer_id,
                seq: r.seq,
                expires_at: r.expires_at,
            }),
            Err(Error::Wire(
                shadowmesh_proto::Error::Expired
                | shadowmesh_proto::Error::BadLifetime
                | shadowmesh_proto::Error::NotYetValid,
            )) => Err(StoreCode::Expired),
            Err(Error::Wire(shadowmesh_proto::Error::TooLarge { .. })) => Err(StoreCode::TooBig),
            Err(_) => Err(StoreCode::BadSignature),
        }
    }
}

impl VerifiedRecord {
    /// The owner's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.keys.peer_id
    }

    /// Decrypts the mesh-private payload; fails for anyone without the network key.
    pub fn open_payload(&self, network_key: &[u8; 32]) -> Result<Payload, Error> {
        if crate::storage_key(network_key, &self.peer_id()) != self.storage_key {
            return Err(Error::WrongStorageKey);
        }
        let r = RecordRef::parse(&self.bytes)?;
        if r.payload.len() < 12 + 16 {
            return Err(Error::Decrypt);
        }
        let (nonce, ct) = r.payload.split_at(12);
        let mut buf = ct.to_vec();
        let plain = payload_key(network_key)
            .open_in_place(
                ring::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Decrypt)?,
                ring::aead::Aad::from(payload_aad(&self.storage_key, &self.peer_id(), self.seq)),
                &mut buf,
            )
            .map_err(|_| Error::Decrypt)?;
        Ok(Payload::parse(plain)?)
    }

    /// The owner's ML-DSA-87 public key bytes.
    pub fn mldsa_public(&self) -> &[u8] {
        self.keys.mldsa.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowmesh_proto::consts::MLDSA87_PUBLIC_KEY_LEN;

    const NOW: u64 = 1_800_000_000;

    fn payload() -> Payload {
        Payload {
            addrs: vec!["127.0.0.1:4433".parse().unwrap()],
            ipv4: Some("10.100.1.2".parse().unwrap()),
            ..Default::default()
        }
    }

    fn record(id: &Identity, nk: &[u8; 32]) -> Vec<u8> {
        let p = payload();
        build_record(
            id,
            nk,
            &RecordParams {
                seq: 1,
                issued_at: NOW,
                expires_at: NOW + 3600,
                payload: &p,
            },
        )
        .unwrap()
    }

    #[test]
    fn valid_record_verifies_and_opens() {
        let id = Identity::generate();
        let nk = [7u8; 32];
        let rec = record(&id, &nk);
        let v = verify_record(&rec, NOW + 1).unwrap();
        assert_eq!(v.peer_id(), id.peer_id());
        assert_eq!(v.open_payload(&nk).unwrap(), payload());
        assert_eq!(v.open_payload(&[8u8; 32]), Err(Error::WrongStorageKey));
        assert_eq!(
            verify_record(
                &rec,
                NOW + 3600 + shadowmesh_proto::consts::CLOCK_TOLERANCE_SECS
            )
            .unwrap_err(),
            Error::Wire(shadowmesh_proto::Error::Expired)
        );
    }

    #[test]
    fn forged_records_fail() {
        let id = Identity::generate();
        let nk = [7u8; 32];
        let rec = record(&id, &nk);
        let r = RecordRef::parse(&rec).unwrap();
        let body_len = r.body().len();
        // PeerId not the hash of the key.
        let mut f = rec.clone();
        f[1 + 32] ^= 1;
        assert_eq!(verify_record(&f, NOW).unwrap_err(), Error::PeerIdMismatch);
        // Someone else's ML-DSA key with the PeerId recomputed: signatures no longer verify.
        let other = Identity::generate();
        let mut f = rec.clone();
        f[1 + 32..1 + 64].copy_from_slice(&other.peer_id().0);
        f[1 + 64..1 + 64 + MLDSA87_PUBLIC_KEY_LEN].copy_from_slice(other.mldsa_public());
        assert_eq!(
            verify_record(&f, NOW).unwrap_err(),
            Error::BadEd25519Signature
        );
        // Bad ML-DSA signature.
        let mut f = rec.clone();
        f[body_len + 5] ^= 1;
        assert_eq!(
            verify_record(&f, NOW).unwrap_err(),
            Error::BadMlDsaSignature
        );
        // Bad Ed25519 signature.
        let mut f = rec.clone();
        let n = f.len();
        f[n - 3] ^= 1;
        assert_eq!(
            verify_record(&f, NOW).unwrap_err(),
            Error::BadEd25519Signature
        );
        // A body change (sequence number) breaks both.
        let mut f = rec.clone();
        f[1 + 64 + MLDSA87_PUBLIC_KEY_LEN + 32 + 7] ^= 1;
        assert!(verify_record(&f, NOW).is_err());
    }
}
