//! ShadowMesh protocol core, sans-IO.
//!
//! Nothing in this crate opens a socket, reads a clock or draws randomness: time is passed in
//! as explicit arguments (seconds since the Unix epoch for records, an opaque monotonic
//! [`core::time::Duration`] elsewhere) and random bytes are supplied by the caller. That keeps
//! every state machine deterministic, so it can be unit-tested, fuzzed and simulated at
//! thousands of nodes.
//!
//! Wire formats follow one rule: each format is parsed from a byte slice into a borrowed view
//! after every length has been checked, and emitted from a representation into a caller
//! buffer. All integers are big-endian (network byte order) on every target, including
//! big-endian mips and little-endian mipsel/aarch64/x86_64.
//!
//! Modules:
//! - [`consts`]: every protocol constant, with its source.
//! - [`peer`]: [`PeerId`] and hex helpers.
//! - [`overlay`]: overlay IPv4/IPv6 addresses derived from a PeerId, and the collision rule.
//! - [`frame`]: the 22-byte SMSH data-frame header.
//! - [`replay`]: the RFC 6479 sliding anti-replay window.
//! - [`record`]: the canonical byte layout of signed peer records and their payload.
//! - [`msg`]: control-stream messages (HELLO, INIT, RESP, REKEY) and their framing.
//! - [`route`]: longest-prefix match, source filtering, IP header addresses, ICMP too-big.
//! - [`policy`]: which prefixes advertised by members this gateway installs.
//! - [`limit`]: per-source token buckets and in-flight counts, bounded.
//! - [`join`]: the join string (network key and bootstrap gateways) a new gateway is given.
//! - [`relay`]: the relayed datagram's envelope, the circuit message, relayed members' local addresses.
//! - [`session`]: what an end-to-end session is to the code that drives it ([`session::SessionState`]).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod consts;
pub mod dht;
pub mod discovery;
pub mod dns;
pub mod error;
pub mod frame;
pub mod gso;
pub mod join;
pub mod lan_names;
pub mod limit;
pub mod msg;
pub mod overlay;
pub mod peer;
pub mod policy;
pub mod portmap;
pub mod record;
pub mod relay;
pub mod replay;
pub mod route;
pub mod session;
pub mod uci;

pub use error::Error;
pub use peer::PeerId;
