//! The engine's public types: what it is asked, what it reports, its counters.

use core::net::SocketAddr;
use core::time::Duration;

use crate::dht::store::RecordMeta;
use crate::dht::wire::{Contact, Request, StoreCode};
use crate::PeerId;

/// Verifies records for the engine: signatures, PeerId binding, time window.
pub trait RecordCheck {
    /// The record type (bytes, or a shared handle to them).
    type Record: Clone + AsRef<[u8]>;
    /// Checks `record` at `now_unix`; returns what the engine needs, or why it was refused.
    fn check(&self, record: &Self::Record, now_unix: u64) -> Result<RecordMeta, StoreCode>;
}

/// Identifies a lookup.
pub type LookupId = u64;
/// Identifies an outgoing request.
pub type RequestId = u64;

/// Most lookups one node runs at once (each holds at most k requests in flight).
pub const MAX_LOOKUPS: usize = 64;
/// Requests one source address may make in a burst.
pub const RATE_BURST: u32 = 64;
/// Requests per second one source address may make, sustained.
pub const RATE_PER_SEC: u32 = 32;
/// Held records re-replicated per minute at most (1,024 records take about an hour).
pub const REPLICATE_PER_TICK: usize = 16;
/// Most source addresses the rate limiter tracks.
pub const RATE_TRACKED: usize = 4096;

/// What a lookup looks for.
#[derive(Debug, Clone)]
pub enum Query<R> {
    /// The k closest nodes to the target.
    FindNode,
    /// `owner`'s record under the target key, newer than `known_seq`.
    FindValue {
        /// The record's owner.
        owner: PeerId,
        /// Sequence already known (0 = none).
        known_seq: u64,
    },
    /// Find the k closest to the record's key, then STORE it there.
    Put {
        /// The record.
        record: R,
    },
    /// Refresh a bucket (a FIND_NODE whose result is not reported).
    Refresh,
}

/// A finished lookup.
#[derive(Debug, Clone)]
pub struct LookupOutcome<R> {
    /// Which lookup.
    pub id: LookupId,
    /// Its target (node id or storage key).
    pub target: [u8; 32],
    /// The k closest nodes that answered, nearest first.
    pub closest: Vec<Contact>,
    /// FIND_VALUE: the newest valid record found.
    pub record: Option<R>,
    /// Successive request rounds.
    pub hops: u32,
    /// Requests sent.
    pub messages: u32,
    /// Bytes of requests sent and answers received.
    pub bytes: u64,
    /// When it started and ended.
    pub started: Duration,
    /// When it ended.
    pub finished: Duration,
    /// Put: STOREs sent.
    pub stores_sent: u32,
}

/// What the engine wants done.
#[derive(Debug, Clone)]
pub enum Output<R> {
    /// Send `req` to `to`; report the answer with `id`.
    Send {
        /// Destination.
        to: Contact,
        /// Request id to report the answer under.
        id: RequestId,
        /// The request.
        req: Request<R>,
    },
    /// A lookup (other than a refresh) finished.
    LookupDone(LookupOutcome<R>),
    /// The addresses other nodes see us at changed ([`super::Dht::observed`]): our record may need
    /// them.
    Observed(Vec<SocketAddr>),
    /// A node that saw us at one address before sees us at another now: our public address
    /// moved (a renumbered router, a new uplink), and connections others dialled to us are
    /// dead ends (QUIC servers cannot migrate). At most once per [`super::super::OBSERVE_RETRY`].
    Moved,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DhtStats {
    /// Requests answered.
    pub requests_answered: u64,
    /// Requests dropped by the rate limiter.
    pub rate_limited: u64,
    /// STOREs refused.
    pub stores_refused: u64,
    /// Records in answers that failed verification or did not match the query.
    pub bogus_records: u64,
    /// Requests that timed out.
    pub timeouts: u64,
}
