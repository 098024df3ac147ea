//! Protocol constants, each with where it comes from.

use core::time::Duration;

/// ML-DSA-87 public key length (FIPS 204, table 2).
pub const MLDSA87_PUBLIC_KEY_LEN: usize = 2592;
/// ML-DSA-87 secret key length (FIPS 204, table 2).
pub const MLDSA87_SECRET_KEY_LEN: usize = 4896;
/// ML-DSA-87 signature length (FIPS 204, table 2).
pub const MLDSA87_SIGNATURE_LEN: usize = 4627;
/// ML-KEM-1024 encapsulation key length (FIPS 203, table 3).
pub const MLKEM1024_ENCAPS_KEY_LEN: usize = 1568;
/// ML-KEM-1024 ciphertext length (FIPS 203, table 3).
pub const MLKEM1024_CIPHERTEXT_LEN: usize = 1568;
/// ML-KEM-1024 shared secret length (FIPS 203).
pub const MLKEM_SHARED_SECRET_LEN: usize = 32;
/// Ed25519 public key length (RFC 8032).
pub const ED25519_PUBLIC_KEY_LEN: usize = 32;
/// Ed25519 signature length (RFC 8032).
pub const ED25519_SIGNATURE_LEN: usize = 64;
/// X25519 public key length (RFC 7748).
pub const X25519_PUBLIC_KEY_LEN: usize = 32;
/// Length of a PeerId: SHA-256 of the ML-DSA-87 public key.
pub const PEER_ID_LEN: usize = 32;
/// Length of the mesh's shared network key (DESIGN.md, "Mesh membership").
pub const NETWORK_KEY_LEN: usize = 32;
/// Length of the TLS exporter value HELLO and INIT/RESP bind to.
pub const EXPORTER_LEN: usize = 32;
/// Length of the network-key proof (HMAC-SHA-256).
pub const NETKEY_PROOF_LEN: usize = 32;

/// SMSH frame magic, "SMSH" (seed, "Frame-Based Protocol").
pub const FRAME_MAGIC: u32 = 0x534D_5348;
/// SMSH frame version: 2 adds the receiver index to the seed's version 1.
pub const FRAME_VERSION: u16 = 0x0002;
/// SMSH header length: magic 4, version 2, type 1, flags 1, receiver index 4, sequence 8 and
/// length 2. (The seed says "16 bytes" for version 1, whose fields added up to 18; the
/// receiver index makes 22.)
pub const FRAME_HEADER_LEN: usize = 22;
/// ChaCha20-Poly1305 tag length (RFC 8439).
pub const AEAD_TAG_LEN: usize = 16;
/// Bytes SMSH adds to an inner packet: header plus tag.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + AEAD_TAG_LEN;
/// Largest plaintext a frame may carry: the u16 length field's range.
pub const FRAME_MAX_PAYLOAD: usize = u16::MAX as usize;

/// Width of the anti-replay bitmap in bits (RFC 6479 block layout, 64-bit blocks). 2048
/// tolerates the reordering a multi-queue path produces at gigabit rates without costing more
/// than 256 bytes per key.
pub const REPLAY_WINDOW_BITS: u64 = 2048;

/// Start a rekey after this long on one key (WireGuard `REKEY_AFTER_TIME`).
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// Never use a key longer than this (WireGuard `REJECT_AFTER_TIME`).
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Start a rekey after this many messages on one key (WireGuard `REKEY_AFTER_MESSAGES`).
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// Refuse to send or accept past this counter (WireGuard `REJECT_AFTER_MESSAGES`): leaves room
/// for the replay window below `u64::MAX`.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// Send a keepalive after this long without sending anything (WireGuard `KEEPALIVE_TIMEOUT`).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Give a session up when nothing authenticated arrived on it for this long: each side sends
/// at least a keepalive every [`KEEPALIVE_TIMEOUT`], so this is three of them lost in a row
/// and some. Longer than quinn's idle timeout (30 s), which ends a dead connection first; this
/// one ends a session whose frames stopped while its connection lives (keys gone, a lane that
/// drops them).
pub const SILENT_AFTER: Duration = Duration::from_secs(35);
/// Give a session up when data went out and nothing authenticated came back for this long
/// (WireGuard's `KEEPALIVE_TIMEOUT + REKEY_TIMEOUT`, after which it handshakes again): the other
/// side sends at least a keepalive every [`KEEPALIVE_TIMEOUT`], so its path is dead (a relay
/// gone, a NAT that lost our mapping for good). Keepalives alone never start this clock: a quiet
/// session is ended only by [`SILENT_AFTER`].
pub const UNANSWERED_AFTER: Duration = Duration::from_secs(15);
/// Give a session up when a REKEY_INIT got no answer for this long. It travels on the control
/// stream, which retransmits: no answer means the other side is gone or broken.
pub const REKEY_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Peer records expire at most this far in the future (DESIGN.md, "DHT").
pub const RECORD_MAX_LIFETIME_SECS: u64 = 24 * 3600;

/// No correct clock reads earlier than this (2026-11-01, before this version was written): a
/// router without a real-time clock that boots at its image's build date, or at 1970, reads
/// earlier, says so, and takes the time its peers tell it until the clock is set.
pub const MIN_PLAUSIBLE_UNIX: u64 = 1_793_491_200;

/// How far two clocks may disagree before a record looks expired or not yet issued: ten
/// minutes, well inside a record's hourly refresh and 6 h lifetime.
pub const CLOCK_TOLERANCE_SECS: u64 = 600;
/// Largest record accepted anywhere (the fixed part is ~7.4 KB; the payload is bounded).
pub const RECORD_MAX_LEN: usize = 8 * 1024;
/// Largest encrypted record payload.
pub const RECORD_MAX_PAYLOAD_LEN: usize = 1024;
/// Most reachable addresses a record may list.
pub const RECORD_MAX_ADDRS: usize = 8;
/// Most LAN routes a record may advertise.
pub const RECORD_MAX_ROUTES: usize = 32;
/// Most relays a record may name (a node behind NAT keeps two).
pub const RECORD_MAX_RELAYS: usize = 2;

/// Largest control message body (a HELLO carrying a full record is ~12.4 KB).
pub const CONTROL_MAX_BODY: usize = 16 * 1024;

/// QUIC application error code: HELLO failed (bad signature, bad record, wrong PeerId).
pub const CLOSE_AUTH_FAILED: u32 = 0x5301;
/// QUIC application error code: the peer could not prove knowledge of the network key.
pub const CLOSE_WRONG_NETWORK: u32 = 0x5302;
/// QUIC application error code: a newer connection to the same PeerId replaced this one.
pub const CLOSE_REPLACED: u32 = 0x5303;
/// QUIC application error code: protocol violation on the control stream.
pub const CLOSE_PROTOCOL: u32 = 0x5304;
/// QUIC application error code: this node holds as many connections of this kind (or from
/// this source) as it takes.
pub const CLOSE_BUSY: u32 = 0x5305;
/// QUIC application error code: a stranger's connection carried no DHT request for a while.
pub const CLOSE_IDLE: u32 = 0x5306;
/// QUIC application error code: the HELLO's record is expired or not yet valid by our clock;
/// the reason carries our clock (Unix seconds, u64 big-endian), which a node whose own clock is
/// unset uses to learn the time ([`MIN_PLAUSIBLE_UNIX`]).
pub const CLOSE_CLOCK: u32 = 0x5307;
/// QUIC application error code: the end-to-end session is given up (nothing arrived on it for
/// [`SILENT_AFTER`], its keys expired, or a rekey got no answer); the next packet dials again.
pub const CLOSE_SESSION_DEAD: u32 = 0x5308;
/// QUIC application error code: orderly shutdown.
pub const CLOSE_SHUTDOWN: u32 = 0x5300;

/// TLS named group for hybrid ML-KEM-1024 + X25519, from the private-use range
/// `0xFE00..=0xFEFF` (RFC 8446 §4.2.7): no standard code point exists for this pair.
pub const HYBRID_GROUP_CODE_POINT: u16 = 0xFE31;

/// Default UDP listen port (the seed's bootstrap examples use 4433).
pub const DEFAULT_PORT: u16 = 4433;
