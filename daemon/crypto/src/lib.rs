//! ShadowMesh cryptography.
//!
//! - [`identity`]: the node identity (ML-DSA-87 + Ed25519) and its key file.
//! - [`sign`]: dual signatures: both must verify.
//! - [`record`]: signing, verifying and opening peer records.
//! - [`kx`]: the hybrid ML-KEM-1024 + X25519 key exchange, shared by TLS and the end-to-end layer.
//! - [`tls`]: the rustls `CryptoProvider` quinn uses (hybrid group, Ed25519 raw public keys,
//!   ChaCha20-Poly1305 only).
//! - [`hello`]: HELLO, binding the QUIC session to the PeerId and the network key.
//! - [`aead`]: the SMSH frame AEAD.
//! - [`session`]: the end-to-end session: INIT/RESP, per-direction keys, replay, rekey.
//! - [`secret`]: the network key, wiped on drop.
//!
//! Primitive choices: ML-KEM and ML-DSA come from pqcrypto (PQClean, 5-7x faster than the pure
//! Rust crates, which stay as the independent cross-check in tests). Everything classical comes
//! from ring, which rustls needs anyway: a second implementation of SHA-256, HKDF, X25519,
//! Ed25519 or ChaCha20-Poly1305 would only cost flash. For the frame AEAD specifically, ring's
//! assembly ChaCha20-Poly1305 (with NEON on aarch64) replaces the `chacha20poly1305` crate named
//! in the plan: `cargo bench -p shadowmesh-crypto --bench primitives` (part of `cargo xtask
//! bench`) measures both side by side (BENCHMARKS.md), and the crate remains a dev-dependency
//! to cross-check ring.

#![deny(missing_docs)]

pub mod aead;
pub mod discovery;
pub mod error;
pub mod hello;
pub mod identity;
pub mod kx;
mod quic_keys;
pub mod record;
pub mod secret;
pub mod session;
pub mod sign;
pub mod tls;

pub use error::Error;
pub use identity::Identity;
pub use secret::NetworkKey;

/// Fills `out` from the operating system's CSPRNG.
pub fn random_bytes(out: &mut [u8]) {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(out)
        .expect("the OS random number generator failed");
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// HMAC-SHA-256 over the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign()
        .as_ref()
        .try_into()
        .expect("HMAC-SHA-256 is 32 bytes")
}

/// Constant-time equality.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct Len(usize);
impl ring::hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA-256 (RFC 5869): extract with `salt` from `ikm`, expand with `info` into `out`.
pub fn hkdf(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(ikm);
    prk.expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF output length within 255 * 32");
}

/// The DHT storage key of a mesh member's record: `SHA-256(network_key || PeerId)`.
pub fn storage_key(network_key: &[u8; 32], peer: &shadowmesh_proto::PeerId) -> [u8; 32] {
    sha256(&[network_key, &peer.0])
}
