//! Peer identifiers.

use core::fmt;
use core::str::FromStr;

use crate::consts::PEER_ID_LEN;
use crate::Error;

/// `PeerId = SHA-256(ML-DSA-87 public key)`: 32 bytes, shown as lowercase hex.
///
/// Ordering is bytewise, which is also the order of XOR distance from zero; the "lower PeerId"
/// of the tie-break rules is this order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PeerId(pub [u8; PEER_ID_LEN]);

impl PeerId {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; PEER_ID_LEN] {
        &self.0
    }

    /// XOR distance to another id (Kademlia metric).
    pub fn distance(&self, other: &PeerId) -> [u8; PEER_ID_LEN] {
        let mut d = [0u8; PEER_ID_LEN];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        d
    }

    /// A short form for logs: the first 8 hex digits.
    pub fn short(&self) -> ShortId<'_> {
        ShortId(self)
    }
}

/// Display adapter returned by [`PeerId::short`].
pub struct ShortId<'a>(&'a PeerId);

impl fmt::Display for ShortId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0 .0[..4])
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl FromStr for PeerId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut out = [0u8; PEER_ID_LEN];
        decode_hex_into(s, &mut out).map_err(|_| Error::InvalidField("peer id (64 hex digits)"))?;
        Ok(PeerId(out))
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Decodes hex (either case) into `out`, which must be exactly half as long as `s`.
pub fn decode_hex_into(s: &str, out: &mut [u8]) -> Result<(), Error> {
    let s = s.as_bytes();
    if s.len() != out.len() * 2 {
        return Err(Error::InvalidField("hex length"));
    }
    fn nibble(c: u8) -> Result<u8, Error> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(Error::InvalidField("hex digit")),
        }
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(s[2 * i])? << 4) | nibble(s[2 * i + 1])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let id = PeerId([0xab; 32]);
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s, to_hex(&[0xab; 32]));
        assert_eq!(s.parse::<PeerId>().unwrap(), id);
        assert_eq!(s.to_uppercase().parse::<PeerId>().unwrap(), id);
        assert!(s[..63].parse::<PeerId>().is_err());
        assert!(format!("{}g", &s[..63]).parse::<PeerId>().is_err());
        assert_eq!(id.short().to_string(), "abababab");
    }

    #[test]
    fn distance_is_xor() {
        let a = PeerId([0b1010_0000; 32]);
        let b = PeerId([0b0110_0000; 32]);
        assert_eq!(a.distance(&b)[0], 0b1100_0000);
        assert_eq!(a.distance(&a), [0; 32]);
    }
}
