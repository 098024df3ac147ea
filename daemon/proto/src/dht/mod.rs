//! Kademlia DHT, sans-IO (DESIGN.md, "DHT (Kademlia)").
//!
//! - [`wire`]: compact, versioned, size-limited RPC codec (PING, FIND_NODE, FIND_VALUE, STORE).
//! - [`kbucket`]: the 256-bucket routing table: LRU with ping-before-evict, a replacement cache,
//!   per-/24 and per-/48 limits (loopback and private ranges exempt).
//! - [`lookup`]: the iterative lookup state machine (α = 3, k = 20, stall detection), modelled on
//!   rust-libp2p's `ClosestPeersIter`, over S/Kademlia's disjoint paths, with soft timeouts
//!   from each contact's measured round trip ([`rtt`]).
//! - [`store`]: the bounded record store (one record per storage key, highest sequence wins).
//! - [`node`]: [`node::Dht`], the engine tying them together: answers requests, drives lookups,
//!   refreshes buckets, republishes. It is driven by explicit `now` arguments and emits
//!   [`node::Output`]s; it never touches a socket or a clock. Record signatures are checked
//!   through the [`node::RecordCheck`] trait (real ML-DSA + Ed25519 in the daemon, a
//!   same-sized stand-in in the simulator).
//!
//! Time is a [`core::time::Duration`] since an arbitrary epoch chosen by the driver (the
//! daemon's start, or the simulator's virtual clock zero).

pub mod kbucket;
pub mod lookup;
pub mod node;
pub mod observed;
pub mod rtt;
pub mod store;
pub mod wire;

use core::time::Duration;

/// Bucket size and lookup result size (Kademlia paper, seed).
pub const K: usize = 20;
/// Lookup parallelism (Kademlia paper).
pub const ALPHA: usize = 3;
/// How long a request may take before it counts as failed (the contact is charged a failure).
/// A lookup stops waiting for it sooner: see [`rtt`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The shortest soft timeout: a round trip measured at a millisecond still gets this long.
pub const RTO_MIN: Duration = Duration::from_millis(100);
/// The soft timeout before any round trip was measured (QUIC's initial PTO is about 1 s).
pub const RTO_INITIAL: Duration = Duration::from_secs(1);
/// Disjoint paths per lookup (S/Kademlia's `d`): see [`lookup`].
pub const LOOKUP_PATHS: usize = 2;
/// How often a bucket nobody looked into is refreshed (Kademlia paper: one hour; shorter here
/// because router meshes are small and churn is daily power cycles).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// When a node whose table is still short of [`K`] contacts looks itself up again after its
/// join (then after doubling gaps): see [`node::Dht::bootstrap`].
pub const REJOIN_FIRST: Duration = Duration::from_secs(5);
/// How often an owner republishes its record (DESIGN.md).
pub const REPUBLISH_INTERVAL: Duration = Duration::from_secs(3600);
/// Holders drop a record this long after its last STORE (DESIGN.md: "some hours").
pub const RECORD_HOLD: Duration = Duration::from_secs(4 * 3600);
/// Most records one node holds for others: 1,024 x ~7.5 KB = ~7.7 MB at worst, within a
/// 128 MB router's means. A 10,000-node DHT stores 20 replicas per record, ~20 per node.
pub const MAX_RECORDS: usize = 1024;
/// Most contacts the replacement cache of one bucket keeps.
pub const REPLACEMENT_CACHE: usize = K;
/// Most contacts from one /24 (IPv4) or /48 (IPv6) in one bucket.
pub const MAX_PER_SUBNET: usize = 2;
/// Most candidates one lookup path tracks.
pub const LOOKUP_MAX_PEERS: usize = 3 * K;
/// Distinct holders whose answers a FIND_VALUE collects before it stops early (the newest
/// of their records wins, so one stale or lying holder cannot decide the result).
pub const VALUE_QUORUM: usize = 3;
/// How often a node asks a few others where they see it ([`observed`]): PINGs to the
/// [`OBSERVE_PINGS`] contacts closest to it in different networks, the same ones each time (so
/// the connections stay open: a PING is a request, and an idle stranger's connection closes
/// after a minute).
pub const OBSERVE_INTERVAL: Duration = Duration::from_secs(45);
/// ... and how soon again while no address has a quorum yet.
pub const OBSERVE_RETRY: Duration = Duration::from_secs(15);
/// Contacts asked each time.
pub const OBSERVE_PINGS: usize = 3;
/// After a node saw us move ([`node::Output::Moved`]), how soon the others are asked: time
/// for the connections we had accepted, dead now, to be dialled again from our new address.
pub const MOVED_SETTLE: Duration = Duration::from_secs(2);
