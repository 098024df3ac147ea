//! Seals and opens N 1,400-byte frames with one implementation, for counting executed
//! instructions under qemu-user (`-singlestep -d exec,nochain`), where timing means nothing:
//! `aead_count ring|rustcrypto N`. `cargo xtask cross-count` runs it for N = 0 and N = 100 and
//! reports the difference per frame.

use std::hint::black_box;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("ring");
    let n: u32 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1);
    let key = [7u8; 32];
    let aad = [1u8; 18];
    let mut buf = vec![0x5au8; 1400];
    match which {
        "ring" => {
            use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
            let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
            for i in 0..n {
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
                let tag = k
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut buf,
                    )
                    .unwrap();
                let mut ct = buf.clone();
                ct.extend_from_slice(tag.as_ref());
                let pt = k
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut ct)
                    .unwrap();
                black_box(pt);
            }
        }
        "rustcrypto" => {
            use chacha20poly1305::aead::{AeadInPlace, KeyInit};
            let c = chacha20poly1305::ChaCha20Poly1305::new(&key.into());
            for i in 0..n {
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
                let tag = c
                    .encrypt_in_place_detached(&nonce.into(), &aad, &mut buf)
                    .unwrap();
                let mut ct = buf.clone();
                c.decrypt_in_place_detached(&nonce.into(), &aad, &mut ct, &tag)
                    .unwrap();
                black_box(ct);
            }
        }
        other => {
            eprintln!("unknown implementation {other}");
            std::process::exit(2);
        }
    }
}
