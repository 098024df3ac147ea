//! The SMSH frame AEAD: ChaCha20-Poly1305 (RFC 8439) with the 22-byte header as associated data
//! and `0u32 || sequence` as the nonce. Sealing and opening work in place on the caller's
//! buffer: nothing is allocated per packet.
//!
//! Backed by ring's assembly implementation (SIMD on x86_64, NEON on aarch64, portable C
//! elsewhere); see the crate docs for why it replaces the `chacha20poly1305` crate here.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use shadowmesh_proto::consts::{AEAD_TAG_LEN, FRAME_HEADER_LEN};
use shadowmesh_proto::frame::Header;

use crate::Error;

/// One direction's frame key: the 32 key bytes, wiped on drop.
///
/// ring's key type is sized for its largest algorithm (AES-GCM's expanded key and GHASH table:
/// 544 bytes on x86_64), and a session holds four frame keys (two directions, two key phases):
/// 2.1 KiB of every member's memory. Kept as bytes, each seal and open sets up the ChaCha20
/// key on the stack (a 32-byte copy) instead.
pub struct FrameKey([u8; 32]);

impl Drop for FrameKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl core::fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("FrameKey(..)")
    }
}

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

impl FrameKey {
    /// A key from 32 bytes.
    pub fn new(key: &[u8; 32]) -> Self {
        FrameKey(*key)
    }

    fn key(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &self.0)
                .expect("ChaCha20-Poly1305 key is 32 bytes"),
        )
    }

    /// Seals a frame in place. `frame` is `header room (22) || plaintext (header.len) || tag
    /// room (16)`; the header is written, the plaintext encrypted and the tag appended.
    pub fn seal(&self, header: &Header, frame: &mut [u8]) -> Result<(), Error> {
        let total = Header::frame_len(header.len as usize)?;
        if frame.len() != total {
            return Err(Error::Wire(shadowmesh_proto::Error::InvalidField(
                "frame buffer length",
            )));
        }
        let (hdr, rest) = frame.split_at_mut(FRAME_HEADER_LEN);
        header.emit(hdr.try_into().expect("FRAME_HEADER_LEN bytes"));
        let (body, tag_out) = rest.split_at_mut(header.len as usize);
        let tag = self
            .key()
            .seal_in_place_separate_tag(nonce(header.seq), Aad::from(&*hdr), body)
            .map_err(|_| Error::Decrypt)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens a frame in place whose header was already parsed (and replay-checked). Returns the
    /// plaintext, a sub-slice of `frame`.
    pub fn open<'a>(&self, header: &Header, frame: &'a mut [u8]) -> Result<&'a mut [u8], Error> {
        debug_assert_eq!(
            frame.len(),
            FRAME_HEADER_LEN + header.len as usize + AEAD_TAG_LEN
        );
        let (hdr, rest) = frame.split_at_mut(FRAME_HEADER_LEN);
        self.key()
            .open_in_place(nonce(header.seq), Aad::from(&*hdr), rest)
            .map_err(|_| Error::Decrypt)
    }
}

/// Seals `plaintext` with the raw RFC 8439 interface (12-byte nonce, arbitrary AAD), returning
/// ciphertext || tag. Used by the conformance tests and benchmarks.
pub fn seal_raw(key: &[u8; 32], nonce12: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("key length"));
    let mut buf = plaintext.to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(*nonce12),
        Aad::from(aad),
        &mut buf,
    )
    .expect("in-range length");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowmesh_proto::frame::FrameType;

    #[test]
    fn seal_open_and_every_bit_flip_fails() {
        let k = FrameKey::new(&[9; 32]);
        let payload = b"an IP packet, more or less";
        let h = Header {
            kind: FrameType::Data,
            receiver: 9,
            seq: 77,
            len: payload.len() as u16,
            key_phase: false,
        };
        let mut f = vec![0u8; Header::frame_len(payload.len()).unwrap()];
        f[FRAME_HEADER_LEN..FRAME_HEADER_LEN + payload.len()].copy_from_slice(payload);
        k.seal(&h, &mut f).unwrap();
        let sealed = f.clone();
        let h2 = Header::parse(&f).unwrap();
        assert_eq!(k.open(&h2, &mut f).unwrap(), payload);
        for bit in 0..sealed.len() * 8 {
            let mut g = sealed.clone();
            g[bit / 8] ^= 1 << (bit % 8);
            // Either the header no longer parses or the tag fails: never accepted.
            if let Ok(hg) = Header::parse(&g) {
                assert_eq!(k.open(&hg, &mut g), Err(Error::Decrypt), "bit {bit}");
            }
        }
    }
}
