//! The ShadowMesh daemon and CLI.
//!
//! The protocol logic lives in `shadowmesh-proto` and `shadowmesh-link` (sans-IO) and
//! `shadowmesh-crypto`; this crate is the I/O shell around them:
//!
//! - QUIC endpoints driven by a task of their own ([`quic`]), the connection handshake
//!   ([`node`]), the DHT over QUIC ([`mesh`]);
//! - the data plane ([`dataplane`], with its own thread), the fast lane's socket
//!   ([`fastlane`], [`udp`], [`plainudp`]), the TUN device ([`tun`]) and rtnetlink ([`netlink`]);
//! - the daemon's wiring, cache and reload ([`daemon`]), its configuration ([`config`]) and
//!   control socket ([`control`]);
//! - the command line ([`cli`], options and errors in [`args`]), joining a mesh ([`join`]), the
//!   LuCI rpcd plugin ([`rpcd`]), the `probe` and `selftest` diagnostics, key files
//!   ([`keyfile`]), JSON output ([`json`]) and the logger ([`logger`]).
//!
//! No module imports one that imports it back: the data plane reaches the DHT side through
//! [`dataplane::Dialer`].

pub mod args;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod exit;

pub mod fastlane;
pub mod hosts;
pub mod join;
pub mod json;
pub mod keyfile;
pub mod lan;
pub mod logger;
pub mod mesh;
pub mod names;
pub mod netlink;
pub mod node;
pub mod plainudp;
pub mod portmap;
pub mod probe;
pub mod quic;
pub mod relayed;
pub mod rpcd;
pub mod selftest;
pub mod tun;
pub mod udp;

/// Runs `f` as the daemon runs: on a tokio `current_thread` runtime, inside a `LocalSet` (so
/// `spawn_local` works). For the daemon, and for tests, examples and tools that drive nodes and
/// data planes the same way.
///
/// The thread holds a [`dataplane::thread::Baton`] whenever it runs and hands it to the data plane's
/// own thread while the runtime sleeps in `epoll_wait` (tokio's park and unpark hooks).
pub fn block_on_local<F: std::future::Future>(f: F) -> std::io::Result<F::Output> {
    let baton = std::sync::Arc::new(dataplane::thread::Baton::default());
    let (park, unpark) = (baton.clone(), baton.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(move || park.give())
        .on_thread_unpark(move || unpark.take())
        .build()?;
    baton.take();
    let local = tokio::task::LocalSet::new();
    let out = dataplane::thread::with_baton(baton.clone(), || local.block_on(&rt, f));
    // Tasks (and with them the data plane) are dropped with the baton held.
    drop(local);
    drop(rt);
    baton.give();
    Ok(out)
}

/// Now on the monotonic clock, as the time since the daemon first asked: what sessions and
/// the link core's timers count in (they own no clock, so that tests run them on virtual time).
pub fn mono_now() -> std::time::Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// Options changed in the file that take effect only at the next restart (the last reload's
/// finding; empty when the file and the running daemon agree). A mutex, set once per reload.
static RESTART_PENDING: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

/// Records what the last reload found waiting for a restart.
pub fn set_restart_pending(options: Vec<&'static str>) {
    *RESTART_PENDING.lock().unwrap_or_else(|e| e.into_inner()) = options;
}

/// What waits for a restart (`status`'s `restart_pending`).
pub fn restart_pending() -> Vec<&'static str> {
    RESTART_PENDING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// What the system clock reads, Unix seconds.
fn system_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seconds added to an unset system clock, learnt from peers ([`learn_time`]). A mutex, not an
/// `AtomicI64`: 32-bit MIPS has no 64-bit atomics, and this is read per record, not per packet.
static CLOCK_OFFSET: std::sync::Mutex<i64> = std::sync::Mutex::new(0);

/// Now as Unix seconds (for record times). The one place the daemon reads the wall clock:
/// the system clock when it is plausible, else the system clock plus the offset learnt from
/// peers ([`learn_time`]).
pub fn unix_now() -> u64 {
    let sys = system_now();
    if !clock_unset() {
        return sys;
    }
    let off = *CLOCK_OFFSET.lock().unwrap_or_else(|e| e.into_inner());
    (sys as i64).saturating_add(off).max(0) as u64
}

/// Whether the system clock reads earlier than any correct clock can
/// ([`shadowmesh_proto::consts::MIN_PLAUSIBLE_UNIX`]).
pub fn clock_unset() -> bool {
    system_now() < shadowmesh_proto::consts::MIN_PLAUSIBLE_UNIX
}

/// The offset [`unix_now`] adds to the unset system clock (0 once the clock is set).
pub fn clock_offset() -> i64 {
    if clock_unset() {
        *CLOCK_OFFSET.lock().unwrap_or_else(|e| e.into_inner())
    } else {
        0
    }
}

/// Takes `peer_now`, a peer's clock, as the time while ours is unset (and `peer_now` is
/// plausible); returns whether our notion of now moved by more than the clock tolerance.
pub fn learn_time(peer_now: u64) -> bool {
    use shadowmesh_proto::consts::{CLOCK_TOLERANCE_SECS, MIN_PLAUSIBLE_UNIX};
    if !clock_unset() || peer_now < MIN_PLAUSIBLE_UNIX {
        return false;
    }
    let before = unix_now();
    *CLOCK_OFFSET.lock().unwrap_or_else(|e| e.into_inner()) = peer_now as i64 - system_now() as i64;
    let moved = before.abs_diff(peer_now) > CLOCK_TOLERANCE_SECS;
    if moved {
        log::warn!(
            "the system clock is unset: taking a peer's time, {} s ahead of it, until it is set",
            peer_now as i64 - system_now() as i64
        );
    }
    moved
}

/// Resolves when standard input closes (or yields anything): how the test tools in
/// `examples/` are told to let go of the connections they hold.
#[doc(hidden)]
pub async fn until_stdin_closes() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let _ = std::io::Read::read(&mut std::io::stdin(), &mut buf);
        let _ = tx.send(());
    });
    let _ = rx.await;
}
