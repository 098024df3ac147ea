//! QUIC packet and header-protection keys for the one cipher suite (TLS_CHACHA20_POLY1305_SHA256),
//! and the TLS record keys rustls derives beside them, kept as their 32 key bytes.
//!
//! rustls' ring keys hold ring's key type, which is sized for its largest algorithm (AES-GCM's
//! expanded key and GHASH table: 544 bytes on x86_64, 272 for a header key), and quinn keeps
//! six of them per connection (packet keys for both directions, current and next phase, and the
//! header keys): about 2.6 KiB of every member's memory for what is 192 bytes of key. Here each
//! packet sets up its ChaCha20 key on the stack (a 32-byte copy). The packet protection is RFC
//! 9001 section 5.3, the header protection section 5.4 with ChaCha20 (5.4.4).
//!
//! rustls also sets up a TLS record encrypter and decrypter at each key change, QUIC or not
//! (1.1 KiB of ring keys per connection, kept for the connection's life). QUIC carries the
//! handshake in CRYPTO frames, so they protect nothing here; [`ChaChaRecords`] keeps them as
//! key bytes too, and protects records as RFC 8446 section 5.2 says should one ever be sent.

use ring::aead::{self, Aad, LessSafeKey, UnboundKey, CHACHA20_POLY1305};
use rustls::crypto::cipher::{
    make_tls13_aad, AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter,
    MessageEncrypter, Nonce, OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload,
    Tls13AeadAlgorithm, UnsupportedOperationError,
};
use rustls::quic;
use rustls::{ConnectionTrafficSecrets, ContentType, Error, ProtocolVersion};
use zeroize::Zeroize;

/// RFC 9001 section 6.6: AEAD_CHACHA20_POLY1305's integrity limit (forged packets tolerated);
/// its confidentiality limit exceeds the packet number space.
const INTEGRITY_LIMIT: u64 = 1 << 36;
const CONFIDENTIALITY_LIMIT: u64 = u64::MAX;

/// The QUIC half of [`crate::tls::provider`]'s cipher suite.
pub(crate) struct ChaChaQuic;

/// One key, wiped on drop.
struct KeyBytes([u8; 32]);

impl KeyBytes {
    fn new(key: AeadKey) -> Self {
        let mut k = [0u8; 32];
        k.copy_from_slice(key.as_ref());
        KeyBytes(k)
    }
}

impl Drop for KeyBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl quic::Algorithm for ChaChaQuic {
    fn packet_key(&self, key: AeadKey, iv: Iv) -> Box<dyn quic::PacketKey> {
        Box::new(PacketKey::new(key, iv))
    }

    fn header_protection_key(&self, key: AeadKey) -> Box<dyn quic::HeaderProtectionKey> {
        Box::new(HeaderKey(KeyBytes::new(key)))
    }

    fn aead_key_len(&self) -> usize {
        32
    }
}

/// A ChaCha20-Poly1305 key and IV; the nonce of message `n` is the IV XOR `n` (RFC 9001
/// section 5.3, RFC 8446 section 5.3).
struct PacketKey {
    key: KeyBytes,
    iv: Iv,
}

impl PacketKey {
    fn new(key: AeadKey, iv: Iv) -> Self {
        PacketKey {
            key: KeyBytes::new(key),
            iv,
        }
    }

    fn aead(&self, pn: u64) -> (LessSafeKey, aead::Nonce) {
        let key = LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &self.key.0).expect("32-byte ChaCha20 key"),
        );
        (
            key,
            aead::Nonce::assume_unique_for_key(Nonce::new(&self.iv, pn).0),
        )
    }
}

/// The TLS record half of [`crate::tls::provider`]'s cipher suite.
pub(crate) struct ChaChaRecords;

impl Tls13AeadAlgorithm for ChaChaRecords {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(PacketKey::new(key, iv))
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(PacketKey::new(key, iv))
    }

    fn key_len(&self) -> usize {
        32
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok(ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv })
    }
}

impl MessageEncrypter for PacketKey {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let total = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total);
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&[u8::from(msg.typ)]);
        let (key, nonce) = self.aead(seq);
        key.seal_in_place_append_tag(nonce, Aad::from(make_tls13_aad(total)), &mut payload)
            .map_err(|_| Error::EncryptError)?;
        // TLS 1.3 records carry the legacy version 0x0303 (RFC 8446 section 5.1).
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + CHACHA20_POLY1305.tag_len()
    }
}

impl MessageDecrypter for PacketKey {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut msg.payload;
        if payload.len() < CHACHA20_POLY1305.tag_len() {
            return Err(Error::DecryptError);
        }
        let (key, nonce) = self.aead(seq);
        let aad = Aad::from(make_tls13_aad(payload.len()));
        let plain = key
            .open_in_place(nonce, aad, payload)
            .map_err(|_| Error::DecryptError)?
            .len();
        payload.truncate(plain);
        msg.into_tls13_unpadded_message()
    }
}

impl quic::PacketKey for PacketKey {
    fn encrypt_in_place(
        &self,
        packet_number: u64,
        header: &[u8],
        payload: &mut [u8],
    ) -> Result<quic::Tag, Error> {
        let (key, nonce) = self.aead(packet_number);
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(header), payload)
            .map_err(|_| Error::EncryptError)?;
        Ok(quic::Tag::from(tag.as_ref()))
    }

    fn decrypt_in_place<'a>(
        &self,
        packet_number: u64,
        header: &[u8],
        payload: &'a mut [u8],
    ) -> Result<&'a [u8], Error> {
        let (key, nonce) = self.aead(packet_number);
        let plain = key
            .open_in_place(nonce, Aad::from(header), payload)
            .map_err(|_| Error::DecryptError)?;
        Ok(plain)
    }

    fn tag_len(&self) -> usize {
        CHACHA20_POLY1305.tag_len()
    }

    fn confidentiality_limit(&self) -> u64 {
        CONFIDENTIALITY_LIMIT
    }

    fn integrity_limit(&self) -> u64 {
        INTEGRITY_LIMIT
    }
}

struct HeaderKey(KeyBytes);

impl HeaderKey {
    /// RFC 9001 section 5.4.1: the first byte's low bits (4 for a long header, 5 for a short
    /// one) and the packet number bytes XORed with the mask; `masked` says whether `first`
    /// arrives protected (its packet number length is then read after unmasking).
    fn apply(
        &self,
        sample: &[u8],
        first: &mut u8,
        packet_number: &mut [u8],
        masked: bool,
    ) -> Result<(), Error> {
        let hp = aead::quic::HeaderProtectionKey::new(&aead::quic::CHACHA20, &self.0 .0)
            .map_err(|_| Error::General("header protection key".into()))?;
        let mask = hp
            .new_mask(sample)
            .map_err(|_| Error::General("header protection sample length".into()))?;
        let (first_mask, pn_mask) = (mask[0], &mask[1..]);
        if packet_number.len() > pn_mask.len() {
            return Err(Error::General("packet number too long".into()));
        }
        let bits = if *first & 0x80 != 0 { 0x0f } else { 0x1f };
        let plain_first = if masked {
            *first ^ (first_mask & bits)
        } else {
            *first
        };
        let pn_len = (plain_first & 0x03) as usize + 1;
        *first ^= first_mask & bits;
        for (b, m) in packet_number.iter_mut().zip(pn_mask).take(pn_len) {
            *b ^= m;
        }
        Ok(())
    }
}

impl quic::HeaderProtectionKey for HeaderKey {
    fn encrypt_in_place(
        &self,
        sample: &[u8],
        first: &mut u8,
        packet_number: &mut [u8],
    ) -> Result<(), Error> {
        self.apply(sample, first, packet_number, false)
    }

    fn decrypt_in_place(
        &self,
        sample: &[u8],
        first: &mut u8,
        packet_number: &mut [u8],
    ) -> Result<(), Error> {
        self.apply(sample, first, packet_number, true)
    }

    fn sample_len(&self) -> usize {
        aead::quic::CHACHA20.sample_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::quic::Algorithm;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 9001 appendix A.5: a ChaCha20-Poly1305 short header packet, byte for byte.
    #[test]
    fn rfc9001_a5_chacha20_short_header_packet() {
        let key: [u8; 32] = hex("c6d98ff3441c3fe1b2182094f69caa2ed4b716b65488960a7a984979fb23e1c8")
            .try_into()
            .unwrap();
        let iv: [u8; 12] = hex("e0459b3474bdd0e44a41c144").try_into().unwrap();
        let hp: [u8; 32] = hex("25a282b9e82f06f21f488917a4fc8f1b73573685608597d0efcb076b0ab7a7a4")
            .try_into()
            .unwrap();
        let pk = ChaChaQuic.packet_key(AeadKey::from(key), Iv::from(iv));
        let hk = ChaChaQuic.header_protection_key(AeadKey::from(hp));

        let pn = 654_360_564u64;
        let mut header = hex("4200bff4");
        let mut payload = hex("01");
        let tag = pk.encrypt_in_place(pn, &header, &mut payload).unwrap();
        payload.extend_from_slice(tag.as_ref());
        let sample = payload[1..17].to_vec();
        let (first, pn_bytes) = header.split_at_mut(1);
        hk.encrypt_in_place(&sample, &mut first[0], pn_bytes)
            .unwrap();
        let mut packet = header.clone();
        packet.extend_from_slice(&payload);
        assert_eq!(packet, hex("4cfe4189655e5cd55c41f69080575d7999c25a5bfb"));

        // And back: unmask the header, then open the payload; a flipped bit fails.
        let (first, pn_bytes) = header.split_at_mut(1);
        hk.decrypt_in_place(&sample, &mut first[0], pn_bytes)
            .unwrap();
        assert_eq!(header, hex("4200bff4"));
        let mut body = packet[4..].to_vec();
        assert_eq!(pk.decrypt_in_place(pn, &header, &mut body).unwrap(), [1]);
        let mut bad = packet[4..].to_vec();
        bad[3] ^= 1;
        assert!(pk.decrypt_in_place(pn, &header, &mut bad).is_err());
    }

    /// TLS records sealed with the key bytes are byte for byte what ring's own rustls keys seal,
    /// and each side opens the other's; a flipped bit, a wrong sequence number or a record
    /// shorter than a tag fails.
    #[test]
    fn tls_records_match_rings_keys() {
        use rustls::crypto::cipher::{InboundOpaqueMessage, OutboundChunks, OutboundPlainMessage};
        let ring = rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256
            .tls13()
            .unwrap()
            .aead_alg;
        let (key, iv) = ([7u8; 32], [9u8; 12]);
        let mut ours = ChaChaRecords.encrypter(AeadKey::from(key), Iv::from(iv));
        let mut theirs = ring.encrypter(AeadKey::from(key), Iv::from(iv));
        let body = b"a handshake message";
        let plain = || OutboundPlainMessage {
            typ: ContentType::Handshake,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(body),
        };
        for seq in [0u64, 1, 1 << 40] {
            let a = ours.encrypt(plain(), seq).unwrap().encode();
            let b = theirs.encrypt(plain(), seq).unwrap().encode();
            assert_eq!(a, b, "sequence {seq}");
            assert_eq!(a.len(), 5 + ours.encrypted_payload_len(body.len()));
        }
        let sealed = ours.encrypt(plain(), 5).unwrap().encode();
        let open = |dec: &mut Box<dyn MessageDecrypter>, rec: &[u8], seq| {
            let mut payload = rec[5..].to_vec();
            let msg = InboundOpaqueMessage::new(
                ContentType::ApplicationData,
                ProtocolVersion::TLSv1_2,
                &mut payload,
            );
            dec.decrypt(msg, seq).map(|m| (m.typ, m.payload.to_vec()))
        };
        let mut dec = ChaChaRecords.decrypter(AeadKey::from(key), Iv::from(iv));
        let mut ring_dec = ring.decrypter(AeadKey::from(key), Iv::from(iv));
        let want = (ContentType::Handshake, body.to_vec());
        assert_eq!(open(&mut dec, &sealed, 5).unwrap(), want);
        assert_eq!(open(&mut ring_dec, &sealed, 5).unwrap(), want);
        assert!(open(&mut dec, &sealed, 6).is_err());
        let mut bad = sealed.clone();
        bad[9] ^= 1;
        assert!(open(&mut dec, &bad, 5).is_err());
        assert!(open(&mut dec, &sealed[..5 + 15], 5).is_err());
    }
}
