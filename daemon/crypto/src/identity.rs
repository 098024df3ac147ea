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
//! Written atomically (temporary file in the same directory, fsync, rename, fsync of the
//! directory) with mode 0600. A file that is truncated, corrupt, of another version, readable by
//! group or others, or whose two ML-DSA halves do not belong together is refused with an error
//! naming the file and the problem; it is never regenerated, since that would silently change
//! the node's PeerId.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

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

    /// Loads the key file at `path`, checking its permissions first.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let err = |problem| KeyFileError {
            path: path.to_owned(),
            problem,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(KeyFileProblem::Io(e)))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(err(KeyFileProblem::Permissions(mode)));
            }
        }
        if meta.len() > 2 * KEY_FILE_LEN as u64 {
            return Err(err(KeyFileProblem::Length(meta.len() as usize)));
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| err(KeyFileProblem::Io(e)))?);
        Self::from_key_file(&bytes).map_err(err)
    }

    /// Writes the key file atomically with mode 0600. Fails if `path` exists.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyFileError> {
        let err = |e| KeyFileError {
            path: path.to_owned(),
            problem: KeyFileProblem::Io(e),
        };
        if path.exists() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "refusing to overwrite an existing key file",
            )));
        }
        write_atomic(path, &self.to_key_file(), 0o600).map_err(err)
    }

    /// Loads `path`, or creates a new identity there if (and only if) the file does not exist.
    /// Returns the identity and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyFileError> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Self::generate();
                id.save_new(path)?;
                Ok((id, true))
            }
            _ => Ok((Self::load(path)?, false)),
        }
    }
}

/// Writes `data` to `path` atomically: a temporary file beside it with `mode`, fsync, rename,
/// fsync of the directory. Readers see the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let _ = mode;
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("smsh-keytest-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn create_load_and_refuse_bad_files() {
        let d = tmpdir("a");
        let p = d.join("key");
        let (id, created) = Identity::load_or_create(&p).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (again, created) = Identity::load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(again.peer_id(), id.peer_id());
        assert_eq!(again.ed25519_public(), id.ed25519_public());

        let good = std::fs::read(&p).unwrap();
        let write = |bytes: &[u8]| {
            let _ = std::fs::remove_file(&p);
            write_atomic(&p, bytes, 0o600).unwrap();
        };
        // Truncated.
        write(&good[..good.len() - 1]);
        let e = Identity::load_or_create(&p).unwrap_err();
        assert!(matches!(e.problem, KeyFileProblem::Length(_)), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()));
        assert_eq!(
            std::fs::read(&p).unwrap().len(),
            good.len() - 1,
            "never regenerated"
        );
        // Corrupt.
        let mut bad = good.clone();
        bad[100] ^= 1;
        write(&bad);
        assert!(matches!(
            Identity::load(&p).unwrap_err().problem,
            KeyFileProblem::Checksum
        ));
        // Wrong version.
        let mut v2 = good.clone();
        v2[9] = 2;
        write(&v2);
        assert!(matches!(
            Identity::load(&p).unwrap_err().problem,
            KeyFileProblem::Version(2)
        ));
        // Not a key file.
        write(b"hello world, not a key");
        assert!(matches!(
            Identity::load(&p).unwrap_err().problem,
            KeyFileProblem::Magic
        ));
        // Halves from two identities, checksum recomputed.
        let other = Identity::generate().to_key_file();
        let mut mixed = good[..KEY_FILE_LEN - 32].to_vec();
        mixed[42 + MLDSA87_PUBLIC_KEY_LEN..]
            .copy_from_slice(&other[42 + MLDSA87_PUBLIC_KEY_LEN..KEY_FILE_LEN - 32]);
        let sum = crate::sha256(&[&mixed]);
        mixed.extend_from_slice(&sum);
        write(&mixed);
        assert!(matches!(
            Identity::load(&p).unwrap_err().problem,
            KeyFileProblem::Inconsistent(_)
        ));
        // World-readable.
        write(&good);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = Identity::load(&p).unwrap_err();
            assert!(
                matches!(e.problem, KeyFileProblem::Permissions(0o644)),
                "{e}"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

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
