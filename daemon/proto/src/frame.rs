//! The SMSH data frame (DESIGN.md, "Data plane").
//!
//! ```text
//!  0              4       6   7   8          12               20      22
//! +--------------+-------+---+---+----------+----------------+-------+---------------------+--------+
//! | magic "SMSH" | ver=2 |typ|flg| receiver | sequence u64   |length | ciphertext (length) | tag 16 |
//! +--------------+-------+---+---+----------+----------------+-------+---------------------+--------+
//! ```
//! Big-endian throughout. `receiver` is the index the receiving side chose for this session
//! (sent in its INIT or RESP), as in WireGuard: it finds the session whatever address the frame
//! came from, and the frame is then trusted only once it authenticates. `length` counts the
//! ciphertext bytes, which equal the plaintext bytes (ChaCha20 is a stream cipher); the 16-byte
//! Poly1305 tag follows. Flag bit 0 is the key phase; the other bits must be zero. The 22
//! header bytes are the AEAD's associated data and the nonce is `0u32 || sequence`.

use crate::consts::{
    AEAD_TAG_LEN, FRAME_HEADER_LEN, FRAME_MAGIC, FRAME_MAX_PAYLOAD, FRAME_OVERHEAD, FRAME_VERSION,
};
use crate::error::Reader;
use crate::Error;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// One IP packet.
    Data = 0x01,
    /// Nothing (an authenticated empty payload): keeps NAT bindings and liveness.
    Keepalive = 0x02,
}

impl TryFrom<u8> for FrameType {
    type Error = Error;
    fn try_from(v: u8) -> Result<Self, Error> {
        match v {
            0x01 => Ok(FrameType::Data),
            0x02 => Ok(FrameType::Keepalive),
            t => Err(Error::UnknownType(t)),
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub kind: FrameType,
    /// The index the receiver chose for this session.
    pub receiver: u32,
    /// Per-key, per-direction message counter; also the nonce.
    pub seq: u64,
    /// Ciphertext length (excluding the tag).
    pub len: u16,
    /// Key phase bit: selects which of the two live keys protects this frame.
    pub key_phase: bool,
}

impl Header {
    /// Parses the header of a complete frame and checks that the frame is exactly as long as the
    /// header says: `FRAME_HEADER_LEN + len + AEAD_TAG_LEN`.
    pub fn parse(frame: &[u8]) -> Result<Header, Error> {
        // Every frame on the data path has the whole header: read it at fixed offsets (the
        // field-by-field reader cost ~360 instructions per frame, measured with callgrind).
        let Some(b) = frame.first_chunk::<FRAME_HEADER_LEN>() else {
            return Self::parse_short(frame);
        };
        let be = |at: usize, n: usize| b[at..at + n].iter().fold(0u64, |v, x| v << 8 | *x as u64);
        let magic = be(0, 4) as u32;
        if magic != FRAME_MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let version = be(4, 2) as u16;
        if version != FRAME_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let kind = FrameType::try_from(b[6])?;
        Self::finish(
            frame,
            kind,
            b[7],
            be(8, 4) as u32,
            be(12, 8),
            be(20, 2) as u16,
        )
    }

    /// The receiver index of what looks like a frame (magic and version right, long enough),
    /// read before anything else is checked: it says which session's key to try.
    pub fn peek_receiver(frame: &[u8]) -> Option<u32> {
        let b = frame.first_chunk::<12>()?;
        if b[..4] != FRAME_MAGIC.to_be_bytes() || b[4..6] != FRAME_VERSION.to_be_bytes() {
            return None;
        }
        Some(u32::from_be_bytes([b[8], b[9], b[10], b[11]]))
    }

    /// [`Header::parse`] of fewer bytes than a header: the first field that does not fit is
    /// the error (after any field before it that is wrong).
    #[cold]
    fn parse_short(frame: &[u8]) -> Result<Header, Error> {
        let mut r = Reader::new(frame);
        let magic = r.u32()?;
        if magic != FRAME_MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let version = r.u16()?;
        if version != FRAME_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let kind = FrameType::try_from(r.u8()?)?;
        let flags = r.u8()?;
        if flags & !1 != 0 {
            return Err(Error::InvalidField("flag bits"));
        }
        let receiver = r.u32()?;
        let seq = r.u64()?;
        let len = r.u16()?;
        Self::finish(frame, kind, flags, receiver, seq, len)
    }

    /// The checks after the fixed fields.
    fn finish(
        frame: &[u8],
        kind: FrameType,
        flags: u8,
        receiver: u32,
        seq: u64,
        len: u16,
    ) -> Result<Header, Error> {
        if flags & !1 != 0 {
            return Err(Error::InvalidField("flag bits"));
        }
        let total = FRAME_OVERHEAD + len as usize;
        if frame.len() < total {
            return Err(Error::Truncated {
                need: total,
                got: frame.len(),
            });
        }
        if frame.len() > total {
            return Err(Error::TrailingBytes {
                extra: frame.len() - total,
            });
        }
        if kind == FrameType::Keepalive && len != 0 {
            return Err(Error::InvalidField("keepalive with payload"));
        }
        Ok(Header {
            kind,
            receiver,
            seq,
            len,
            key_phase: flags & 1 == 1,
        })
    }

    /// Writes the 22 header bytes.
    pub fn emit(&self, out: &mut [u8; FRAME_HEADER_LEN]) {
        out[0..4].copy_from_slice(&FRAME_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&FRAME_VERSION.to_be_bytes());
        out[6] = self.kind as u8;
        out[7] = self.key_phase as u8;
        out[8..12].copy_from_slice(&self.receiver.to_be_bytes());
        out[12..20].copy_from_slice(&self.seq.to_be_bytes());
        out[20..22].copy_from_slice(&self.len.to_be_bytes());
    }

    /// Total frame length for a payload of `len` bytes, or an error past the u16 range.
    pub fn frame_len(payload_len: usize) -> Result<usize, Error> {
        if payload_len > FRAME_MAX_PAYLOAD {
            return Err(Error::TooLarge {
                what: "frame payload",
                len: payload_len,
                max: FRAME_MAX_PAYLOAD,
            });
        }
        Ok(FRAME_HEADER_LEN + payload_len + AEAD_TAG_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u16) -> Vec<u8> {
        let h = Header {
            kind: FrameType::Data,
            receiver: 0xA1B2_C3D4,
            seq: 0x0102_0304_0506_0708,
            len,
            key_phase: true,
        };
        let mut out = vec![0u8; Header::frame_len(len as usize).unwrap()];
        h.emit((&mut out[..FRAME_HEADER_LEN]).try_into().unwrap());
        out
    }

    #[test]
    fn layout_is_big_endian_and_22_bytes() {
        let f = frame(5);
        assert_eq!(
            &f[..22],
            &[
                0x53, 0x4d, 0x53, 0x48, 0, 2, 1, 1, 0xA1, 0xB2, 0xC3, 0xD4, 1, 2, 3, 4, 5, 6, 7, 8,
                0, 5
            ]
        );
        assert_eq!(f.len(), 22 + 5 + 16);
        let h = Header::parse(&f).unwrap();
        assert_eq!((h.receiver, h.seq), (0xA1B2_C3D4, 0x0102_0304_0506_0708));
        assert!(h.key_phase);
        assert_eq!(Header::peek_receiver(&f), Some(0xA1B2_C3D4));
        assert_eq!(Header::peek_receiver(&f[..12]), Some(0xA1B2_C3D4));
        assert_eq!(Header::peek_receiver(&f[..11]), None);
        let mut v1 = f.clone();
        v1[5] = 1;
        assert_eq!(Header::peek_receiver(&v1), None, "a version 1 frame");
        assert_eq!(Header::parse(&v1), Err(Error::UnsupportedVersion(1)));
    }

    /// The fixed-offset parse agrees with the field-by-field one (which parses any length) on
    /// every single-byte change of each header byte and on every length around the frame's.
    #[test]
    fn fixed_offsets_agree_with_the_reader() {
        let f = frame(5);
        for at in 0..FRAME_HEADER_LEN {
            for v in [0u8, 1, 2, 3, 0x48, 0x53, 0x80, 0xff] {
                let mut m = f.clone();
                m[at] = v;
                assert_eq!(
                    Header::parse(&m),
                    Header::parse_short(&m),
                    "byte {at} = {v}"
                );
            }
        }
        let mut long = f.clone();
        long.extend_from_slice(&[0; 4]);
        for n in 0..=long.len() {
            assert_eq!(
                Header::parse(&long[..n]),
                Header::parse_short(&long[..n]),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn every_malformation_is_a_typed_error() {
        let f = frame(5);
        assert!(matches!(
            Header::parse(&f[..10]),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            Header::parse(&f[..f.len() - 1]),
            Err(Error::Truncated { .. })
        ));
        let mut long = f.clone();
        long.push(0);
        assert_eq!(Header::parse(&long), Err(Error::TrailingBytes { extra: 1 }));
        let mut m = f.clone();
        m[0] ^= 1;
        assert!(matches!(Header::parse(&m), Err(Error::BadMagic(_))));
        let mut v = f.clone();
        v[5] = 3;
        assert_eq!(Header::parse(&v), Err(Error::UnsupportedVersion(3)));
        let mut t = f.clone();
        t[6] = 9;
        assert_eq!(Header::parse(&t), Err(Error::UnknownType(9)));
        let mut r = f.clone();
        r[7] = 2;
        assert_eq!(Header::parse(&r), Err(Error::InvalidField("flag bits")));
        assert!(Header::frame_len(70_000).is_err());
    }
}
