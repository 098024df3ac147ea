//! Two independent implementations must agree: pqcrypto (PQClean C, what ships) against the
//! RustCrypto `ml-kem` / `ml-dsa` crates, and ring's ChaCha20-Poly1305 (what ships) against the
//! RFC 8439 test vector and the RustCrypto `chacha20poly1305` crate.

use ml_dsa::signature::{Signer, Verifier};
use ml_dsa::{KeyGen, MlDsa87};
use ml_kem::kem::{Decapsulate, Encapsulate};
use ml_kem::{EncodedSizeUser, KemCore, MlKem1024};
use pqcrypto_mldsa::mldsa87;
use pqcrypto_mlkem::mlkem1024;
use pqcrypto_traits::kem::{Ciphertext as _, PublicKey as _, SecretKey as _, SharedSecret as _};
use pqcrypto_traits::sign::{DetachedSignature as _, PublicKey as _};
use shadowmesh_crypto::Identity;
use shadowmesh_proto::consts::*;

#[test]
fn mlkem1024_pqcrypto_to_rustcrypto_and_back() {
    let mut rng = rand::thread_rng();
    for _ in 0..8 {
        // pqcrypto key, RustCrypto encapsulates, pqcrypto decapsulates.
        let (pk, sk) = mlkem1024::keypair();
        assert_eq!(pk.as_bytes().len(), MLKEM1024_ENCAPS_KEY_LEN);
        let ek =
            <MlKem1024 as KemCore>::EncapsulationKey::from_bytes(pk.as_bytes().try_into().unwrap());
        let (ct, ss) = ek.encapsulate(&mut rng).unwrap();
        assert_eq!(ct.len(), MLKEM1024_CIPHERTEXT_LEN);
        let ct_pq = mlkem1024::Ciphertext::from_bytes(&ct).unwrap();
        assert_eq!(mlkem1024::decapsulate(&ct_pq, &sk).as_bytes(), &ss[..]);

        // RustCrypto key, pqcrypto encapsulates, RustCrypto decapsulates.
        let (dk, ek) = MlKem1024::generate(&mut rng);
        let pk = mlkem1024::PublicKey::from_bytes(&ek.as_bytes()).unwrap();
        let (ss, ct) = mlkem1024::encapsulate(&pk);
        let ct_rc = ct.as_bytes().try_into().unwrap();
        assert_eq!(&dk.decapsulate(ct_rc).unwrap()[..], ss.as_bytes());

        // Both encode decapsulation keys identically (FIPS 203 layout).
        let dk_pq = mlkem1024::SecretKey::from_bytes(&dk.as_bytes()).unwrap();
        assert_eq!(
            mlkem1024::decapsulate(&ct, &dk_pq).as_bytes(),
            ss.as_bytes()
        );
    }
}

#[test]
fn mldsa87_pqcrypto_to_rustcrypto_and_back() {
    let mut rng = rand::thread_rng();
    for i in 0..4u8 {
        let msg = [b"shadowmesh interop ".as_slice(), &[i; 100]].concat();

        // pqcrypto signs, RustCrypto verifies.
        let id = Identity::generate();
        let (m, _) = id.sign(b"", &[&msg]);
        assert_eq!(m.len(), MLDSA87_SIGNATURE_LEN);
        let vk = ml_dsa::VerifyingKey::<MlDsa87>::decode(
            id.mldsa_public().as_slice().try_into().unwrap(),
        );
        let sig = ml_dsa::Signature::<MlDsa87>::decode(m.as_slice().try_into().unwrap()).unwrap();
        assert!(vk.verify(&msg, &sig).is_ok());
        let mut bad = msg.clone();
        bad[0] ^= 1;
        assert!(vk.verify(&bad, &sig).is_err());

        // RustCrypto signs, pqcrypto verifies.
        let kp = MlDsa87::key_gen(&mut rng);
        let sig = kp.signing_key().sign(&msg);
        let pk = mldsa87::PublicKey::from_bytes(&kp.verifying_key().encode()).unwrap();
        assert_eq!(pk.as_bytes().len(), MLDSA87_PUBLIC_KEY_LEN);
        let sig_pq = mldsa87::DetachedSignature::from_bytes(&sig.encode()).unwrap();
        mldsa87::verify_detached_signature(&sig_pq, &msg, &pk).unwrap();
        assert!(mldsa87::verify_detached_signature(&sig_pq, &bad, &pk).is_err());
    }
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// RFC 8439 §2.8.2: AEAD_CHACHA20_POLY1305 test vector.
#[test]
fn chacha20poly1305_rfc8439_vector() {
    let key: [u8; 32] = unhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
        .try_into()
        .unwrap();
    let nonce: [u8; 12] = unhex("070000004041424344454647").try_into().unwrap();
    let aad = unhex("50515253c0c1c2c3c4c5c6c7");
    let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    let expect_ct = unhex(
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
         3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
         92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
         3ff4def08e4b7a9de576d26586cec64b6116",
    );
    let expect_tag = unhex("1ae10b594f09e26a7e902ecbd0600691");
    let out = shadowmesh_crypto::aead::seal_raw(&key, &nonce, &aad, pt);
    assert_eq!(&out[..pt.len()], &expect_ct[..]);
    assert_eq!(&out[pt.len()..], &expect_tag[..]);
}

/// ring (assembly: NEON on aarch64, SIMD on x86_64, portable C elsewhere; picked at run time)
/// and the portable RustCrypto crate agree on 10,000 random inputs up to 1,500 bytes: what CI
/// also runs under qemu-aarch64 to check the NEON path against the portable one.
#[test]
fn chacha20poly1305_ring_matches_rustcrypto() {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let mut x: u64 = 0x1234_5678_9abc_def0;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..10_000 {
        let len = (next() % 1501) as usize;
        let key: [u8; 32] = core::array::from_fn(|_| next() as u8);
        let nonce: [u8; 12] = core::array::from_fn(|_| next() as u8);
        let aad: Vec<u8> = (0..(next() % 40) as usize).map(|_| next() as u8).collect();
        let pt: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let ours = shadowmesh_crypto::aead::seal_raw(&key, &nonce, &aad, &pt);
        let theirs = chacha20poly1305::ChaCha20Poly1305::new(&key.into())
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: &pt,
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(ours, theirs, "input {i}, length {len}");
    }
}
