//! The ShadowMesh daemon and CLI.
//!
//! The protocol logic lives in `shadowmesh-proto` (sans-IO) and `shadowmesh-crypto`; this crate
//! is the thin I/O shell: the quinn endpoint and the connection handshake driver ([`node`]),
//! the command line ([`cli`]), and the `probe` diagnostic ([`probe`]).

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod dpthread;
pub mod fastlane;
pub mod json;
pub mod logger;
pub mod mesh;
pub mod netlink;
pub mod node;
pub mod plainudp;
pub mod probe;
pub mod rpcd;
pub mod selftest;
pub mod tun;
pub mod udp;

/// Runs `f` as the daemon runs: on a tokio `current_thread` runtime, inside a `LocalSet` (so
/// `spawn_local` works). For the daemon, and for tests, examples and tools that drive nodes and
/// data planes the same way.
///
/// The thread holds a [`dpthread::Baton`] whenever it runs and hands it to the data plane's
/// own thread while the runtime sleeps in `epoll_wait` (tokio's park and unpark hooks).
pub fn block_on_local<F: std::future::Future>(f: F) -> std::io::Result<F::Output> {
    let baton = std::sync::Arc::new(dpthread::Baton::default());
    let (park, unpark) = (baton.clone(), baton.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(move || park.give())
        .on_thread_unpark(move || unpark.take())
        .build()?;
    baton.take();
    let local = tokio::task::LocalSet::new();
    let out = dpthread::with_baton(baton.clone(), || local.block_on(&rt, f));
    // Tasks (and with them the data plane) are dropped with the baton held.
    drop(local);
    drop(rt);
    baton.give();
    Ok(out)
}

/// Now as Unix seconds (for record times). The one place the daemon reads the wall clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
