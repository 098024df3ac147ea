//! Secrets that wipe themselves.
//!
//! Key material this crate holds in its own memory is overwritten when it is dropped: the
//! network key, the Ed25519 seed and the ML-DSA-87 secret key of an [`crate::Identity`], the
//! key file's bytes, and the end-to-end session's derived keys and chaining key. What ring keeps
//! inside its own key objects (the expanded ChaCha20 key of a `LessSafeKey`, an
//! `Ed25519KeyPair`, an X25519 ephemeral key) is out of reach: ring does not wipe them.

use core::fmt;
use core::ops::Deref;

use zeroize::Zeroize;

/// The mesh's network key: wiped on drop, never printed, not `Copy` (each copy is a value
/// that is wiped when it goes, not a stray one).
#[derive(Clone, PartialEq, Eq)]
pub struct NetworkKey([u8; 32]);

impl NetworkKey {
    /// Wraps key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        NetworkKey(bytes)
    }
}

impl NetworkKey {
    /// Parses 64 hex digits straight into the key (no stray copy of the bytes is left).
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut k = NetworkKey([0; 32]);
        shadowmesh_proto::peer::decode_hex_into(s, &mut k.0).ok()?;
        Some(k)
    }
}

impl From<[u8; 32]> for NetworkKey {
    fn from(bytes: [u8; 32]) -> Self {
        NetworkKey(bytes)
    }
}

impl Deref for NetworkKey {
    type Target = [u8; 32];
    fn deref(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for NetworkKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NetworkKey(..)")
    }
}

/// Zeroes `v`'s bytes, volatile so the stores are not removed as dead. For pqcrypto's keys and
/// shared secrets: `Copy` newtypes over byte arrays whose bytes are private, so `Zeroize`
/// cannot reach them.
pub(crate) fn wipe<T: Copy>(v: &mut T) {
    // SAFETY: the slice covers exactly `v`, which is live, exclusively borrowed and initialised;
    // `T: Copy` has no drop glue, and the types this is used for are byte arrays, for which all
    // zeroes is a valid value.
    let bytes = unsafe {
        core::slice::from_raw_parts_mut(v as *mut T as *mut u8, core::mem::size_of::<T>())
    };
    bytes.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let k = NetworkKey::new([0xab; 32]);
        let s = format!("{k:?} {:?}", Some(k.clone()));
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
        assert_eq!(*k, [0xab; 32]);
    }

    #[test]
    fn wipe_overwrites() {
        let mut k = [7u8; 48];
        wipe(&mut k);
        assert_eq!(k, [0; 48]);
    }
}
