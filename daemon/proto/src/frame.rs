//! The SMSH data frame (DESIGN.md, "Data plane").
//!
//! ```text
//!  0               4       6   7               15      17  18
//! +---------------+-------+---+---------------+-------+---+----------------------+--------+
//! | magic "SMSH"  | ver=1 |typ| sequence u64  |length |rsv| ciphertext (length)  | tag 16 |
//! +---------------+-------+---+---------------+-------+---+----------------------+--------+
//! ```
//! Big-endian throughout. `length` counts the ciphertext bytes, which equal the plaintext bytes
//! (ChaCha20 is a stream cipher); the 16-byte Poly1305 tag follows. Reserved bit 0 is the key
//! phase; the other bits must be zero. The 18 header bytes are the AEAD's associated data and
//! the nonce is `0u32 || sequence`.

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
        Self::finish(frame, kind, be(7, 8), be(15, 2) as u16, b[17])
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
        let seq = r.u64()?;
        let len = r.u16()?;
        Self::finish(frame, kind, seq, len, r.u8()?)
    }

    /// The checks after the fixed fields.
    fn finish(
        frame: &[u8],
        kind: FrameType,
        seq: u64,
        len: u16,
        reserved: u8,
    ) -> Result<Header, Error> {
        if reserved & !1 != 0 {
            return Err(Error::InvalidField("reserved bits"));
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
            seq,
            len,
            key_phase: reserved & 1 == 1,
        })
    }

    /// Writes the 18 header bytes.
    pub fn emit(&self, out: &mut [u8; FRAME_HEADER_LEN]) {
        out[0..4].copy_from_slice(&FRAME_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&FRAME_VERSION.to_be_bytes());
        out[6] = self.kind as u8;
        out[7..15].copy_from_slice(&self.seq.to_be_bytes());
        out[15..17].copy_from_slice(&self.len.to_be_bytes());
        out[17] = self.key_phase as u8;
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
            seq: 0x0102_0304_0506_0708,
            len,
            key_phase: true,
        };
        let mut out = vec![0u8; Header::frame_len(len as usize).unwrap()];
        h.emit((&mut out[..FRAME_HEADER_LEN]).try_into().unwrap());
        out
    }

    #[test]
    fn layout_is_big_endian_and_18_bytes() {
        let f = frame(5);
        assert_eq!(
            &f[..18],
            &[0x53, 0x4d, 0x53, 0x48, 0, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 5, 1]
        );
        assert_eq!(f.len(), 18 + 5 + 16);
        let h = Header::parse(&f).unwrap();
        assert_eq!(h.seq, 0x0102_0304_0506_0708);
        assert!(h.key_phase);
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
        v[5] = 2;
        assert_eq!(Header::parse(&v), Err(Error::UnsupportedVersion(2)));
        let mut t = f.clone();
        t[6] = 9;
        assert_eq!(Header::parse(&t), Err(Error::UnknownType(9)));
        let mut r = f.clone();
        r[17] = 2;
        assert_eq!(Header::parse(&r), Err(Error::InvalidField("reserved bits")));
        assert!(Header::frame_len(70_000).is_err());
    }
}
