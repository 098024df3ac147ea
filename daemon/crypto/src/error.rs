//! The crypto crate's error type.

use core::fmt;

/// Why a cryptographic check or operation failed. Every variant is a refusal of input or state;
/// none is a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The bytes did not parse.
    Wire(shadowmesh_proto::Error),
    /// `SHA-256(ML-DSA-87 public key)` is not the claimed PeerId.
    PeerIdMismatch,
    /// The ML-DSA-87 signature did not verify.
    BadMlDsaSignature,
    /// The Ed25519 signature did not verify.
    BadEd25519Signature,
    /// A key is malformed (which one).
    BadKey(&'static str),
    /// The record is stored under a key other than `SHA-256(network_key || PeerId)`.
    WrongStorageKey,
    /// The peer could not prove knowledge of the network key.
    WrongNetworkKey,
    /// A message names a PeerId other than the one expected (which field).
    UnexpectedPeer(&'static str),
    /// The Ed25519 key authenticated by TLS is not the one in the peer's record.
    TlsKeyMismatch,
    /// A HELLO refers to a record the receiver does not hold, or holds at another sequence.
    UnknownRecord,
    /// AEAD authentication failed (tampered, truncated or wrong key).
    Decrypt,
    /// A key exchange failed (bad share or ciphertext length, low-order X25519 point).
    KeyExchange,
    /// No usable key for this key phase (never installed, or older than `REJECT_AFTER_TIME`).
    NoKey,
    /// A rekey message for another epoch, or a MAC failure on one.
    BadRekey,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Wire(e) => write!(f, "malformed: {e}"),
            Error::PeerIdMismatch => f.write_str("PeerId is not SHA-256 of the ML-DSA-87 key"),
            Error::BadMlDsaSignature => f.write_str("ML-DSA-87 signature invalid"),
            Error::BadEd25519Signature => f.write_str("Ed25519 signature invalid"),
            Error::BadKey(which) => write!(f, "malformed {which} key"),
            Error::WrongStorageKey => f.write_str("record stored under the wrong key"),
            Error::WrongNetworkKey => f.write_str("peer does not know the network key"),
            Error::UnexpectedPeer(field) => write!(f, "unexpected PeerId in {field}"),
            Error::TlsKeyMismatch => f.write_str("TLS key differs from the record's Ed25519 key"),
            Error::UnknownRecord => f.write_str("HELLO refers to a record we do not hold"),
            Error::Decrypt => f.write_str("authentication failed"),
            Error::KeyExchange => f.write_str("key exchange failed"),
            Error::NoKey => f.write_str("no usable key for this key phase"),
            Error::BadRekey => f.write_str("invalid rekey message"),
        }
    }
}

impl std::error::Error for Error {}

impl From<shadowmesh_proto::Error> for Error {
    fn from(e: shadowmesh_proto::Error) -> Self {
        Error::Wire(e)
    }
}
