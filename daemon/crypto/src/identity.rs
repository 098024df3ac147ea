//! The node identity and its key file.
//!
//! Key file layout, version 1 (7,562 bytes, big-endian):
//! ```text
//!   magic        "SMSHKEY\0"  8
//!   version      u16 = 1      2
//!   ed25519_seed [32]
//!   mldsa_pk     [2592]
//!   mldsa_sk     [4896]
//!   checksum     [32]         SHA-256 of everything before it
//! ```
//! This crate parses and serialises the bytes; the daemon's `keyfile` module does the file
//! I/O: written atomically (temporary file in the same directory, fsync, rename, fsync of the
//! directory) with mode 0600. A file that is truncated, corrupt, of another version, readable by
//! group or others, or whose two ML-DSA halves do not belong together is refused with an error
//! naming the file and the problem ([`KeyFileError`]); it is never regenerated, since that would
//! silently change the node's PeerId.

use std::fmt;
use std::path::PathBuf;

use pqcrypto_mldsa::mldsa87;
use pqcrypto_traits::sign::{DetachedSignature as _, PublicKey as _, SecretKey as _};
use shadowmesh_proto::consts::{
    ED25519_SIGNATURE_LEN, MLDSA87_PUBLIC_KEY_LEN, MLDSA87_SECRET_KEY_LEN, MLDSA87_SIGNATURE_LEN,
};
use shadowmesh_proto::PeerId;
use zeroize::{Zeroize, Zeroizing};

use crate::sign::{concat, PeerKeys};

const MAGIC: &[u8; 8] = b"SMSHKEY\0";
const VERSION: u16 = 1;
/// Exact length of a version-1 key file.
pub const KEY_FILE_LEN: usize = 8 + 2 + 32 + MLDSA87_PUBLIC_KEY_LEN + MLDSA87_SECRET_KEY_LEN + 32;

/// A node's long-term identity: ML-DSA-87 and Ed25519 key pairs.
pub struct Identity {
    peer_id: PeerId,
    mldsa_pk: mldsa87::PublicKey,
    mldsa_sk: mldsa87::SecretKey,
    ed25519_seed: [u8; 32],
    ed25519: ring::signature::Ed25519KeyPair,
}

impl Drop for Identity {
    fn drop(&mut self) {
        self.ed25519_seed.zeroize();
        crate::secret::wipe(&mut self.mldsa_sk);
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secret material.
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

/// What is wrong with a key file.
#[derive(Debug)]
pub enum KeyFileProblem {
    /// Reading or writing failed.
    Io(std::io::Error),
    /// Group or others may read it (the mode found).
    Permissions(u32),
    /// Not the expected length.
    Length(usize),
    /// Does not start with the key-file magic.
    Magic,
    /// A version this build does not read.
    Version(u16),
    /// The checksum does not match: the file is corrupt.
    Checksum,
    /// The keys in it are malformed or do not belong together.
    Inconsistent(&'static str),
}

/// A key-file error naming the file.
#[derive(Debug)]
pub struct KeyFileError {
    /// The file.
    pub path: PathBuf,
    /// The problem.
    pub problem: KeyFileProblem,
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        match &self.problem {
            KeyFileProblem::Io(e) => write!(f, "key file {p}: {e}"),
            KeyFileProblem::Permissions(mode) => write!(
                f,
                "key file {p}: mode {mode:04o} lets group or others read the private keys; \
                 run `chmod 600 {p}` if the keys were not exposed, else replace them"
            ),
            KeyFileProblem::Length(n) => write!(
                f,
                "key file {p}: truncated or padded: {n} bytes, expected {KEY_FILE_LEN}; \
                 refusing to replace it (the node's PeerId would change)"
            ),
            KeyFileProblem::Magic => write!(f, "key file {p}: not a ShadowMesh key file"),
            KeyFileProblem::Version(v) => {
                write!(
                    f,
                    "key file {p}: version {v} is not supported (this build reads {VERSION})"
                )
            }
            KeyFileProblem::Checksum => write!(
                f,
                "key file {p}: checksum mismatch, the file is corrupt; \
                 refusing to replace it (the node's PeerId would change)"
            ),
            KeyFileProblem::Inconsistent(what) => write!(f, "key file {p}: {what}"),
        }
    }
}

impl std::error::Error for KeyFileError {}

impl Identity {
    /// Generates a fresh identity from the OS random number generator.
    pub fn generate() -> Self {
        let (pk, sk) = mldsa87::keypair();
        let mut seed = Zeroizing::new([0u8; 32]);
        crate::random_bytes(&mut seed[..]);
        Self::from_parts(pk, sk, *seed)
    }

    fn from_parts(
        mldsa_pk: mldsa87::PublicKey,
        mldsa_sk: mldsa87::SecretKey,
        seed: [u8; 32],
    ) -> Self {
        let ed25519 = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .expect("any 32-byte seed is an Ed25519 key");
        Identity {
            peer_id: PeerId(crate::sha256(&[mldsa_pk.as_bytes()])),
            mldsa_pk,
            mldsa_sk,
            ed25519_seed: seed,
            ed25519,
        }
    }

    /// The PeerId: SHA-256 of the ML-DSA-87 public key.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The ML-DSA-87 public key.
    pub fn mldsa_public(&self) -> &[u8; MLDSA87_PUBLIC_KEY_LEN] {
        self.mldsa_pk
            .as_bytes()
            .try_into()
            .expect("ML-DSA-87 public key length")
    }

    /// The Ed25519 public key.
    pub fn ed25519_public(&self) -> [u8; 32] {
        use ring::signature::KeyPair;
        self.ed25519
            .public_key()
            .as_ref()
            .try_into()
            .expect("Ed25519 public key length")
    }

    /// The Ed25519 private key as PKCS#8 v1 DER, for rustls (the caller wipes it).
    pub fn ed25519_pkcs8(&self) -> Vec<u8> {
        // RFC 8410 OneAsymmetricKey v1: SEQUENCE { INTEGER 0, AlgorithmIdentifier id-Ed25519,
        // OCTET STRING { OCTET STRING seed } }.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&self.ed25519_seed);
        der
    }

    /// This identity's public keys, as a peer sees them.
    pub fn peer_keys(&self) -> PeerKeys {
        PeerKeys {
            peer_id: self.peer_id,
            mldsa: self.mldsa_pk,
            ed25519: self.ed25519_public(),
        }
    }

    /// Dual-signs `domain || parts…`: ML-DSA-87 and Ed25519 over the same bytes.
    pub fn sign(
        &self,
        domain: &[u8],
        parts: &[&[u8]],
    ) -> ([u8; MLDSA87_SIGNATURE_LEN], [u8; ED25519_SIGNATURE_LEN]) {
        let msg = concat(domain, parts);
        let m = mldsa87::detached_sign(&msg, &self.mldsa_sk);
        let e = self.ed25519.sign(&msg);
        (
            m.as_bytes().try_into().expect("ML-DSA-87 signature length"),
            e.as_ref().try_into().expect("Ed25519 signature length"),
        )
    }

    /// Stateless-reset key material for quinn, derived from the identity so that a restarted
    /// node can reset its peers' stale connections at once.
    pub fn stateless_reset_secret(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        crate::hkdf(
            b"shadowmesh/stateless-reset/v1",
            &self.ed25519_seed,
            &[b"reset"],
            &mut out,
        );
        out
    }

    /// Serialises the key file (wiped when dropped).
    pub fn to_key_file(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(KEY_FILE_LEN));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&self.ed25519_seed);
        out.extend_from_slice(self.mldsa_pk.as_bytes());
        out.extend_from_slice(self.mldsa_sk.as_bytes());
        let sum = crate::sha256(&[&out]);
        out.extend_from_slice(&sum);
        out
    }

    /// Parses a key file's bytes (no file-system checks).
    pub fn from_key_file(bytes: &[u8]) -> Result<Self, KeyFileProblem> {
        if bytes.len() >= 8 && &bytes[..8] != MAGIC {
            return Err(KeyFileProblem::Magic);
        }
        if bytes.len() >= 10 {
            let v = u16::from_be_bytes([bytes[8], bytes[9]]);
            if v != VERSION {
                return Err(KeyFileProblem::Version(v));
            }
        }
        if bytes.len() != KEY_FILE_LEN {
            return Err(KeyFileProblem::Length(bytes.len()));
        }
        let (body, sum) = bytes.split_at(KEY_FILE_LEN - 32);
        if !crate::ct_eq(&crate::sha256(&[body]), sum) {
            return Err(KeyFileProblem::Checksum);
        }
        let seed = Zeroizing::new(<[u8; 32]>::try_from(&body[10..42]).expect("length checked"));
        let pk = &body[42..42 + MLDSA87_PUBLIC_KEY_LEN];
        let sk = &body[42 + MLDSA87_PUBLIC_KEY_LEN..];
        let pk = mldsa87::PublicKey::from_bytes(pk)
            .map_err(|_| KeyFileProblem::Inconsistent("malformed ML-DSA-87 public key"))?;
        let sk = mldsa87::SecretKey::from_bytes(sk)
            .map_err(|_| KeyFileProblem::Inconsistent("malformed ML-DSA-87 secret key"))?;
        let id = Self::from_parts(pk, sk, *seed);
        // A file assembled from two different key pairs would pass the checksum; a signature
        // round trip proves the halves belong together.
        let probe = b"shadowmesh/key-file-self-test";
        let (m, _) = id.sign(b"", &[probe]);
        let sig = mldsa87::DetachedSignature::from_bytes(&m).expect("own signature length");
        mldsa87::verify_detached_signature(&sig, probe, &id.mldsa_pk).map_err(|_| {
            KeyFileProblem::Inconsistent("ML-DSA-87 secret and public keys do not match")
        })?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_bind_the_message() {
        let id = Identity::generate();
        let (m, e) = id.sign(b"dom", &[b"abc"]);
        let keys = id.peer_keys();
        keys.verify(b"dom", &[b"ab", b"c"], &m, &e).unwrap();
        assert_eq!(
            keys.verify(b"dom", &[b"abd"], &m, &e),
            Err(crate::Error::BadEd25519Signature)
        );
        assert_eq!(
            keys.verify(b"dxm", &[b"abc"], &m, &e),
            Err(crate::Error::BadEd25519Signature)
        );
        let mut m2 = m;
        m2[10] ^= 1;
        assert_eq!(
            keys.verify(b"dom", &[b"abc"], &m2, &e),
            Err(crate::Error::BadMlDsaSignature)
        );
    }
}
