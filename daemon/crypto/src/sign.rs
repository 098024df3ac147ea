//! Dual signatures: ML-DSA-87 (post-quantum) and Ed25519 (classical), both over the same bytes
//! and both required. Breaking either algorithm alone forges nothing.

use pqcrypto_mldsa::mldsa87;
use pqcrypto_traits::sign::{DetachedSignature as _, PublicKey as _};
use shadowmesh_proto::consts::{ED25519_SIGNATURE_LEN, MLDSA87_SIGNATURE_LEN};
use shadowmesh_proto::PeerId;

use crate::Error;

/// A peer's two public keys, parsed.
#[derive(Clone)]
pub struct PeerKeys {
    /// `SHA-256(mldsa_pk)`.
    pub peer_id: PeerId,
    /// ML-DSA-87 public key.
    pub mldsa: mldsa87::PublicKey,
    /// Ed25519 public key.
    pub ed25519: [u8; 32],
}

impl core::fmt::Debug for PeerKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PeerKeys")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl PeerKeys {
    /// Parses both keys and checks that `peer_id` is the hash of the ML-DSA-87 key.
    pub fn new(peer_id: PeerId, mldsa_pk: &[u8], ed25519: &[u8; 32]) -> Result<Self, Error> {
        if crate::sha256(&[mldsa_pk]) != peer_id.0 {
            return Err(Error::PeerIdMismatch);
        }
        let mldsa =
            mldsa87::PublicKey::from_bytes(mldsa_pk).map_err(|_| Error::BadKey("ML-DSA-87"))?;
        Ok(PeerKeys {
            peer_id,
            mldsa,
            ed25519: *ed25519,
        })
    }

    /// Verifies both signatures over `domain || parts…`. Ed25519 first: it is ~50x cheaper, so
    /// garbage is refused before the expensive check.
    pub fn verify(
        &self,
        domain: &[u8],
        parts: &[&[u8]],
        mldsa_sig: &[u8; MLDSA87_SIGNATURE_LEN],
        ed25519_sig: &[u8; ED25519_SIGNATURE_LEN],
    ) -> Result<(), Error> {
        let msg = concat(domain, parts);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.ed25519)
            .verify(&msg, ed25519_sig)
            .map_err(|_| Error::BadEd25519Signature)?;
        let sig = mldsa87::DetachedSignature::from_bytes(mldsa_sig)
            .map_err(|_| Error::BadMlDsaSignature)?;
        mldsa87::verify_detached_signature(&sig, &msg, &self.mldsa)
            .map_err(|_| Error::BadMlDsaSignature)
    }
}

pub(crate) fn concat(domain: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(domain.len() + parts.iter().map(|p| p.len()).sum::<usize>());
    msg.extend_from_slice(domain);
    for p in parts {
        msg.extend_from_slice(p);
    }
    msg
}
