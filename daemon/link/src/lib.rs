//! The ShadowMesh link core, sans-IO: what a gateway knows about the other members of its mesh
//! and what it does about it, with no socket, TUN, runtime or clock of its own. The daemon's data
//! plane feeds it what happened (a member's record arrived, a member went, the host's routes
//! were read) and carries out what it asks for (install or withdraw a kernel route, move our
//! overlay address); tests drive it directly.
//!
//! - [`engine`]: all of the below behind one set of inputs (`handle_*`) and outputs
//!   (`poll_output`, `poll_timeout`): what the daemon's data plane drives.
//! - [`roster`]: the members, their records (a newer sequence number replaces an older one), the
//!   order they joined in, and the judgement of every prefix they claim: overlay addresses by
//!   the collision rule, LAN routes by the [`RoutePolicy`](shadowmesh_proto::policy::RoutePolicy).
//! - [`members`]: the members' links (one live link each, the receiver index that names it,
//!   traffic counters) and their session timers.
//! - [`control`]: what a member's control message asks of us (rekeys answered here).
//! - [`exchange`]: which members named in peer exchange we dial, and when.
//! - [`paths`]: the ways a member is reached (its QUIC connection, the fast lane), each with
//!   its own liveness; a path moves only on an authenticated frame; a direct
//!   link replaces one through a relay.
//! - [`relay`]: the circuits this node carries as a relay, and their limits.
//! - [`pending`]: packets for a member without a link, queued while it is dialled.
//! - [`timers`]: every session's keepalive, rekey and teardown deadlines in one queue.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod control;
#[cfg(test)]
mod double;
pub mod engine;
pub mod exchange;
pub mod members;
pub mod paths;
pub mod pending;
pub mod relay;
pub mod roster;
pub mod timers;

pub use roster::{Entry, Judged, Output, Roster, RosterConfig};
