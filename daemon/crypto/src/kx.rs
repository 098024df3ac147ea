//! Hybrid key exchange: ML-KEM-1024 + X25519.
//!
//! Share order follows X25519MLKEM768 in rustls and draft-ietf-tls-ecdhe-mlkem: ML-KEM first.
//! - initiator share = ML-KEM-1024 encapsulation key (1,568) || X25519 public key (32)
//! - responder share = ML-KEM-1024 ciphertext (1,568) || X25519 public key (32)
//! - secret = ML-KEM shared secret (32) || X25519 shared secret (32)
//!
//! The secret is secure if either component is.

use pqcrypto_mlkem::mlkem1024;
use pqcrypto_traits::kem::{Ciphertext as _, PublicKey as _, SharedSecret as _};
use ring::agreement;
use shadowmesh_proto::consts::{
    MLKEM1024_CIPHERTEXT_LEN, MLKEM1024_ENCAPS_KEY_LEN, X25519_PUBLIC_KEY_LEN,
};
use zeroize::Zeroizing;

use crate::Error;

/// Length of the initiator's share.
pub const INIT_SHARE_LEN: usize = MLKEM1024_ENCAPS_KEY_LEN + X25519_PUBLIC_KEY_LEN;
/// Length of the responder's share.
pub const RESP_SHARE_LEN: usize = MLKEM1024_CIPHERTEXT_LEN + X25519_PUBLIC_KEY_LEN;
/// Length of the combined secret.
pub const SECRET_LEN: usize = 64;

/// The combined secret, wiped when dropped.
pub type Secret = Zeroizing<[u8; SECRET_LEN]>;

/// An ML-KEM-1024 decapsulation key, wiped when dropped.
struct MlKemSecret(mlkem1024::SecretKey);

impl Drop for MlKemSecret {
    fn drop(&mut self) {
        crate::secret::wipe(&mut self.0);
    }
}

/// Copies a pqcrypto shared secret into `out` and wipes it.
fn take_shared(mut ss: mlkem1024::SharedSecret, out: &mut [u8]) {
    out.copy_from_slice(ss.as_bytes());
    crate::secret::wipe(&mut ss);
}

/// The initiator's half-finished exchange.
pub struct Initiator {
    mlkem_sk: MlKemSecret,
    x25519: agreement::EphemeralPrivateKey,
    share: Box<[u8; INIT_SHARE_LEN]>,
}

impl Initiator {
    /// Generates ephemeral ML-KEM-1024 and X25519 keys.
    pub fn generate() -> Self {
        let (pk, sk) = mlkem1024::keypair();
        let rng = ring::rand::SystemRandom::new();
        let x = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
            .expect("the OS random number generator failed");
        let xpk = x.compute_public_key().expect("X25519 public key");
        let mut share = Box::new([0u8; INIT_SHARE_LEN]);
        share[..MLKEM1024_ENCAPS_KEY_LEN].copy_from_slice(pk.as_bytes());
        share[MLKEM1024_ENCAPS_KEY_LEN..].copy_from_slice(xpk.as_ref());
        Initiator {
            mlkem_sk: MlKemSecret(sk),
            x25519: x,
            share,
        }
    }

    /// Our share, to send.
    pub fn share(&self) -> &[u8; INIT_SHARE_LEN] {
        &self.share
    }

    /// The ML-KEM encapsulation key part of our share.
    pub fn mlkem_ek(&self) -> &[u8; MLKEM1024_ENCAPS_KEY_LEN] {
        self.share[..MLKEM1024_ENCAPS_KEY_LEN]
            .try_into()
            .expect("length")
    }

    /// The X25519 part of our share.
    pub fn x25519_pk(&self) -> &[u8; X25519_PUBLIC_KEY_LEN] {
        self.share[MLKEM1024_ENCAPS_KEY_LEN..]
            .try_into()
            .expect("length")
    }

    /// Completes the exchange with the responder's share.
    pub fn finish(self, resp_share: &[u8]) -> Result<Secret, Error> {
        if resp_share.len() != RESP_SHARE_LEN {
            return Err(Error::KeyExchange);
        }
        let (ct, xpk) = resp_share.split_at(MLKEM1024_CIPHERTEXT_LEN);
        let ct = mlkem1024::Ciphertext::from_bytes(ct).map_err(|_| Error::KeyExchange)?;
        let ss = mlkem1024::decapsulate(&ct, &self.mlkem_sk.0);
        let mut out = Zeroizing::new([0u8; SECRET_LEN]);
        take_shared(ss, &mut out[..32]);
        agreement::agree_ephemeral(
            self.x25519,
            &agreement::UnparsedPublicKey::new(&agreement::X25519, xpk),
            |x| out[32..].copy_from_slice(x),
        )
        .map_err(|_| Error::KeyExchange)?;
        Ok(out)
    }
}

/// Answers an initiator's share: returns our share and the combined secret.
pub fn respond(init_share: &[u8]) -> Result<(Box<[u8; RESP_SHARE_LEN]>, Secret), Error> {
    if init_share.len() != INIT_SHARE_LEN {
        return Err(Error::KeyExchange);
    }
    let (ek, xpk) = init_share.split_at(MLKEM1024_ENCAPS_KEY_LEN);
    let ek = mlkem1024::PublicKey::from_bytes(ek).map_err(|_| Error::KeyExchange)?;
    let (ss, ct) = mlkem1024::encapsulate(&ek);
    let rng = ring::rand::SystemRandom::new();
    let x = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
        .expect("the OS random number generator failed");
    let my_xpk = x.compute_public_key().expect("X25519 public key");
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    take_shared(ss, &mut secret[..32]);
    agreement::agree_ephemeral(
        x,
        &agreement::UnparsedPublicKey::new(&agreement::X25519, xpk),
        |s| secret[32..].copy_from_slice(s),
    )
    .map_err(|_| Error::KeyExchange)?;
    let mut share = Box::new([0u8; RESP_SHARE_LEN]);
    share[..MLKEM1024_CIPHERTEXT_LEN].copy_from_slice(ct.as_bytes());
    share[MLKEM1024_CIPHERTEXT_LEN..].copy_from_slice(my_xpk.as_ref());
    Ok((share, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree_and_bad_shares_fail() {
        let i = Initiator::generate();
        let (resp, s_resp) = respond(i.share()).unwrap();
        let s_init = i.finish(&resp[..]).unwrap();
        assert_eq!(s_init, s_resp);
        assert!(respond(&[0u8; 10]).is_err());
        let i2 = Initiator::generate();
        assert!(i2.finish(&resp[..10]).is_err());
        // A low-order X25519 point (all zeros) is refused.
        let i3 = Initiator::generate();
        let mut zero = *resp;
        zero[MLKEM1024_CIPHERTEXT_LEN..].fill(0);
        assert_eq!(i3.finish(&zero[..]), Err(Error::KeyExchange));
    }
}
