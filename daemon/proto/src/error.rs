//! The one error type of the protocol core. Every decoder returns it; none panics on input.

use core::fmt;

/// Why a piece of wire data or a protocol step was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The input ended before a field that must be there (`need` bytes, `got` available).
    Truncated {
        /// Bytes the format needs at this point.
        need: usize,
        /// Bytes that were there.
        got: usize,
    },
    /// The input is longer than the format allows or than its own length field says.
    TrailingBytes {
        /// Bytes left over.
        extra: usize,
    },
    /// A length field or a count exceeds its hard limit.
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its value.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame does not start with the SMSH magic.
    BadMagic(u32),
    /// A version this implementation does not speak.
    UnsupportedVersion(u16),
    /// An unknown frame or message type.
    UnknownType(u8),
    /// A field holds a value the format forbids (named).
    InvalidField(&'static str),
    /// The sequence number is older than the replay window or was seen already.
    Replayed(u64),
    /// The sequence number is past the limit after which a key must not be used.
    CounterExhausted,
    /// A record's expiry time has passed.
    Expired,
    /// A record claims to live longer than allowed, or was issued after it expires.
    BadLifetime,
    /// A record was issued later than now plus the clock tolerance.
    NotYetValid,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated { need, got } => write!(f, "truncated: need {need} bytes, got {got}"),
            Error::TrailingBytes { extra } => write!(f, "{extra} unexpected trailing bytes"),
            Error::TooLarge { what, len, max } => write!(f, "{what} too large: {len} > {max}"),
            Error::BadMagic(m) => write!(f, "bad magic {m:#010x}"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported version {v}"),
            Error::UnknownType(t) => write!(f, "unknown type {t:#04x}"),
            Error::InvalidField(name) => write!(f, "invalid field: {name}"),
            Error::Replayed(seq) => write!(f, "sequence {seq} replayed or too old"),
            Error::CounterExhausted => write!(f, "message counter exhausted for this key"),
            Error::Expired => write!(f, "record expired"),
            Error::BadLifetime => write!(f, "record lifetime out of range"),
            Error::NotYetValid => write!(f, "record issued in the future (check the clock)"),
        }
    }
}

impl std::error::Error for Error {}

/// A bounds-checked big-endian reader over a byte slice.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let rest = self.buf.len() - self.pos;
        if rest < n {
            return Err(Error::Truncated {
                need: self.pos + n,
                got: self.buf.len(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<&'a [u8; N], Error> {
        let b = self.bytes(N)?;
        Ok(b.try_into().expect("length checked"))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(*self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(*self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(*self.array()?))
    }

    /// A one-byte count of `what`, at most `max`.
    pub(crate) fn count(&mut self, what: &'static str, max: usize) -> Result<usize, Error> {
        let len = self.u8()? as usize;
        if len > max {
            return Err(Error::TooLarge { what, len, max });
        }
        Ok(len)
    }

    /// A one-byte length and that many bytes of a DNS label ([`crate::dns::is_label`]), or
    /// nothing when the length is 0 and `empty` allows it; else `InvalidField(what)`.
    pub(crate) fn label(&mut self, what: &'static str, empty: bool) -> Result<&'a str, Error> {
        let n = self.u8()? as usize;
        let b = self.bytes(n)?;
        core::str::from_utf8(b)
            .ok()
            .filter(|s| (empty && s.is_empty()) || crate::dns::is_label(s))
            .ok_or(Error::InvalidField(what))
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<(), Error> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            extra => Err(Error::TrailingBytes { extra }),
        }
    }
}
