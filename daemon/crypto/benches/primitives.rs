//! Costs of the primitives the handshake and data path use, and frame AEAD throughput.
//! `cargo bench -p shadowmesh-crypto --bench primitives` (or `cargo xtask bench`, which adds
//! OpenSSL's figure from the same run). Prints one `name value unit` line per figure; medians
//! of 5 samples.

use std::hint::black_box;
use std::time::{Duration, Instant};

use pqcrypto_mldsa::mldsa87;
use pqcrypto_mlkem::mlkem1024;
use shadowmesh_crypto::aead::FrameKey;
use shadowmesh_crypto::session::{initiate, respond};
use shadowmesh_crypto::Identity;
use shadowmesh_proto::consts::{FRAME_HEADER_LEN, FRAME_OVERHEAD};
use shadowmesh_proto::frame::{FrameType, Header};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median time per call of `f`, in microseconds, over 5 samples of `iters` calls.
fn per_op(iters: u32, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..iters {
                    f();
                }
                t.elapsed().as_secs_f64() * 1e6 / iters as f64
            })
            .collect(),
    )
}

/// Median throughput of `f` processing `bytes` per call, in MB/s (10^6 bytes), 5 samples of
/// about `dur` each.
fn throughput(bytes: usize, dur: Duration, mut f: impl FnMut()) -> f64 {
    median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                let mut n = 0u64;
                while t.elapsed() < dur {
                    for _ in 0..64 {
                        f();
                    }
                    n += 64;
                }
                (n as f64 * bytes as f64) / t.elapsed().as_secs_f64() / 1e6
            })
            .collect(),
    )
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let dur = Duration::from_millis(if quick { 50 } else { 400 });
    let k = if quick { 1 } else { 4 };

    let (pk, sk) = mlkem1024::keypair();
    let (_, ct) = mlkem1024::encapsulate(&pk);
    println!(
        "mlkem1024_keygen {:.1} us",
        per_op(50 * k, || {
            black_box(mlkem1024::keypair());
        })
    );
    println!(
        "mlkem1024_encaps {:.1} us",
        per_op(50 * k, || {
            black_box(mlkem1024::encapsulate(&pk));
        })
    );
    println!(
        "mlkem1024_decaps {:.1} us",
        per_op(50 * k, || {
            black_box(mlkem1024::decapsulate(&ct, &sk));
        })
    );

    let (dpk, dsk) = mldsa87::keypair();
    let msg = [7u8; 200];
    let sig = mldsa87::detached_sign(&msg, &dsk);
    println!(
        "mldsa87_keygen {:.1} us",
        per_op(10 * k, || {
            black_box(mldsa87::keypair());
        })
    );
    println!(
        "mldsa87_sign {:.1} us",
        per_op(20 * k, || {
            black_box(mldsa87::detached_sign(&msg, &dsk));
        })
    );
    println!(
        "mldsa87_verify {:.1} us",
        per_op(50 * k, || assert!(mldsa87::verify_detached_signature(
            &sig, &msg, &dpk
        )
        .is_ok()))
    );

    let id = Identity::generate();
    let keys = id.peer_keys();
    let (m, e) = id.sign(b"d", &[&msg]);
    println!(
        "dual_sign {:.1} us",
        per_op(20 * k, || {
            black_box(id.sign(b"d", &[&msg]));
        })
    );
    println!(
        "dual_verify {:.1} us",
        per_op(50 * k, || keys.verify(b"d", &[&msg], &m, &e).unwrap())
    );
    let ed = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[1; 32]).unwrap();
    let edsig = ed.sign(&msg);
    let edpk = ring::signature::KeyPair::public_key(&ed).as_ref().to_vec();
    println!(
        "ed25519_sign {:.1} us",
        per_op(200 * k, || {
            black_box(ed.sign(&msg));
        })
    );
    println!(
        "ed25519_verify {:.1} us",
        per_op(200 * k, || {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &edpk)
                .verify(&msg, edsig.as_ref())
                .unwrap()
        })
    );
    println!(
        "hybrid_kx_both_sides {:.1} us",
        per_op(50 * k, || {
            let i = shadowmesh_crypto::kx::Initiator::generate();
            let (r, _) = shadowmesh_crypto::kx::respond(i.share()).unwrap();
            black_box(i.finish(&r[..]).unwrap());
        })
    );
    let b = Identity::generate();
    println!(
        "e2e_init_resp_both_sides {:.1} us",
        per_op(5 * k, || {
            let now = Duration::ZERO;
            let (st, init) = initiate(&id, &b.peer_id(), &[1; 32]);
            let (_s, resp) = respond(&b, &init, &id.peer_keys(), &[1; 32], &[2; 32], now).unwrap();
            black_box(st.finish(&resp, &b.peer_keys(), &[2; 32], now).unwrap());
        })
    );

    // Frame AEAD, 1,400-byte payloads (the inner packet of a 1500-byte path).
    const N: usize = 1400;
    let fk = FrameKey::new(&[3; 32]);
    let mut frame = vec![0u8; N + FRAME_OVERHEAD];
    let mut seq = 0u64;
    println!(
        "aead_seal_ring_1400 {:.0} MB/s",
        throughput(N, dur, || {
            let h = Header {
                kind: FrameType::Data,
                receiver: 1,
                seq,
                len: N as u16,
                key_phase: false,
            };
            seq += 1;
            fk.seal(&h, &mut frame).unwrap();
        })
    );
    let h = Header {
        kind: FrameType::Data,
        receiver: 1,
        seq: 1,
        len: N as u16,
        key_phase: false,
    };
    fk.seal(&h, &mut frame).unwrap();
    let sealed = frame.clone();
    // Opening in place destroys the ciphertext, so each round restores it first; the copy is
    // timed alone too, so that the open itself can be compared with OpenSSL's decryption.
    println!(
        "aead_open_ring_1400 {:.0} MB/s",
        throughput(N, dur, || {
            frame.copy_from_slice(&sealed);
            black_box(fk.open(&h, &mut frame).unwrap());
        })
    );
    println!(
        "copy_1400 {:.0} MB/s",
        throughput(N, dur, || {
            frame.copy_from_slice(black_box(&sealed));
            black_box(&mut frame);
        })
    );
    {
        use chacha20poly1305::aead::{AeadInPlace, KeyInit};
        let c = chacha20poly1305::ChaCha20Poly1305::new(&[3u8; 32].into());
        let mut buf = vec![0u8; N];
        let aad = [0u8; FRAME_HEADER_LEN];
        println!(
            "aead_seal_rustcrypto_1400 {:.0} MB/s",
            throughput(N, dur, || {
                black_box(
                    c.encrypt_in_place_detached(&[0u8; 12].into(), &aad, &mut buf)
                        .unwrap(),
                );
            })
        );
    }
    // The whole per-frame session path: seal on one side, parse + replay + open on the other.
    let now = Duration::ZERO;
    let (st, init) = initiate(&id, &b.peer_id(), &[1; 32]);
    let (mut sb, resp) = respond(&b, &init, &id.peer_keys(), &[1; 32], &[2; 32], now).unwrap();
    let mut sa = st.finish(&resp, &b.peer_keys(), &[2; 32], now).unwrap();
    println!(
        "session_seal_open_1400 {:.0} MB/s",
        throughput(N, dur, || {
            sa.seal(now, FrameType::Data, &mut frame).unwrap();
            black_box(sb.open(now, &mut frame).unwrap());
        })
    );
}
