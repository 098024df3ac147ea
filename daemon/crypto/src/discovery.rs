//! Sealing and opening LAN announcements ([`shadowmesh_proto::discovery`]): ChaCha20-Poly1305
//! under `HKDF(network key, window)`, a random nonce, the clear header as associated data.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use shadowmesh_proto::discovery::{Announce, Header, ANNOUNCE_LEN, HEADER_LEN, NONCE_LEN};

use crate::Error;

fn key(network_key: &[u8; 32], window: u32) -> LessSafeKey {
    let mut k = [0u8; 32];
    crate::hkdf(
        b"shadowmesh/lan-discovery/v1",
        network_key,
        &[b"window", &window.to_be_bytes()],
        &mut k,
    );
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &k).expect("key length"));
    zeroize::Zeroize::zeroize(&mut k);
    key
}

/// `a`, sealed for the members of the mesh of `network_key` in time window `window`.
pub fn seal(network_key: &[u8; 32], window: u32, a: &Announce) -> [u8; ANNOUNCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    crate::random_bytes(&mut nonce);
    let mut out = [0u8; ANNOUNCE_LEN];
    let (head, body) = out.split_at_mut(HEADER_LEN);
    Header { window, nonce }.emit(head.try_into().expect("HEADER_LEN"));
    let (plain, tag_out) = body.split_at_mut(body.len() - 16);
    plain.copy_from_slice(&a.emit());
    let tag = key(network_key, window)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&*head),
            plain,
        )
        .expect("a short plaintext");
    tag_out.copy_from_slice(tag.as_ref());
    out
}

/// Opens an announcement heard in window `ours`: another mesh's, a stale one, or anything
/// malformed is an error, never a panic.
pub fn open(network_key: &[u8; 32], ours: u32, b: &[u8]) -> Result<Announce, Error> {
    let h = Header::parse(b).map_err(Error::Wire)?;
    if !h.timely(ours) {
        return Err(Error::Wire(shadowmesh_proto::Error::Expired));
    }
    let mut body = [0u8; ANNOUNCE_LEN - HEADER_LEN];
    body.copy_from_slice(&b[HEADER_LEN..]);
    let plain = key(network_key, h.window)
        .open_in_place(
            Nonce::assume_unique_for_key(h.nonce),
            Aad::from(&b[..HEADER_LEN]),
            &mut body,
        )
        .map_err(|_| Error::Decrypt)?;
    Announce::parse(plain).map_err(Error::Wire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowmesh_proto::PeerId;

    #[test]
    fn only_the_same_mesh_opens_and_nothing_stable_shows() {
        let (nk, other) = ([7u8; 32], [8u8; 32]);
        let a = Announce {
            peer: PeerId([0x42; 32]),
            port: 4433,
        };
        let one = seal(&nk, 100, &a);
        assert_eq!(open(&nk, 100, &one), Ok(a));
        assert_eq!(open(&nk, 101, &one), Ok(a), "a neighbouring window");
        assert_eq!(open(&other, 100, &one), Err(Error::Decrypt), "another mesh");
        assert!(open(&nk, 100 + 1000, &one).is_err(), "too old");
        // Neither the key nor the PeerId shows, and two announcements share nothing past the
        // header's magic, version and window.
        let two = seal(&nk, 100, &a);
        let three = seal(&nk, 101, &a);
        for b in [&one, &two, &three] {
            assert!(!b.windows(8).any(|w| w == &nk[..8] || w == &a.peer.0[..8]));
        }
        assert_eq!(one[..9], two[..9]);
        assert!(
            one[9..]
                .iter()
                .zip(&two[9..])
                .filter(|(x, y)| x == y)
                .count()
                < 8
        );
        assert!(
            one[9..]
                .iter()
                .zip(&three[9..])
                .filter(|(x, y)| x == y)
                .count()
                < 8
        );
        // Tampering anywhere fails.
        for i in 0..ANNOUNCE_LEN {
            let mut t = one;
            t[i] ^= 1;
            assert!(open(&nk, 100, &t).is_err(), "byte {i}");
        }
        assert!(open(&nk, 100, &one[..40]).is_err());
    }
}
