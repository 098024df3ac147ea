//! The forwarding path allocates nothing of its own in steady state, on either lane.
//!
//! Two data planes on real quinn connections over 127.0.0.1 (stand-in TUN devices that count
//! what is written to them): 120,000 packets go from one side's TUN path (route lookup, seal,
//! `send_datagram` or, on the fast lane, `sendto`) to the other side's (open, replay check,
//! source check, TUN write). A counting allocator attributes each allocation to our forwarding
//! code, to the quinn calls it makes, or to everything else (quinn's endpoint driver, tokio);
//! after warm-up ours must be zero on both lanes, and on the fast lane the whole process's too
//! (quinn never sees those datagrams). The per-packet figures are printed for BENCHMARKS.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shadowmesh::dataplane::{alloc_probe, member_payload, DataPlane, DataPlaneConfig};
use shadowmesh::node::{Node, NodeConfig};
use shadowmesh::tun::Tun;
use shadowmesh_crypto::Identity;

struct Counting;
static OURS: AtomicU64 = AtomicU64::new(0);
static QUINN: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Allocations on this thread (each test runs its runtime, and so quinn's driver, on its own
    // thread, and the tests run in parallel).
    static MINE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = MINE.try_with(|c| c.set(c.get() + 1));
        // try_with: the flags' thread-local may be gone during thread teardown.
        if alloc_probe::in_ours() {
            OURS.fetch_add(1, Ordering::Relaxed);
        } else if alloc_probe::in_quinn() {
            QUINN.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const NK: [u8; 32] = [0x42; 32];
const PACKETS: u64 = 120_000;
const WARMUP: u64 = 10_000;

fn plane(id: &Identity) -> (NodeConfig, DataPlaneConfig) {
    let mut n = NodeConfig::new("127.0.0.1:0".parse::<SocketAddr>().unwrap(), NK);
    n.payload = member_payload(&id.peer_id());
    let d = DataPlaneConfig::new(id.peer_id(), &n.payload, NK, vec![]).unwrap();
    (n, d)
}

/// A 1,000-byte IPv4/UDP packet from `src` to `dst`.
fn packet(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        unreachable!()
    };
    let mut p = vec![0u8; 1000];
    p[..20].copy_from_slice(&[
        0x45, 0, 0x03, 0xe8, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    p[12..16].copy_from_slice(&s.octets());
    p[16..20].copy_from_slice(&d.octets());
    p
}

#[test]
fn quic_lane_allocates_nothing_of_ours() {
    run(false);
}

#[test]
fn fast_lane_allocates_nothing_at_all() {
    run(true);
}

fn run(fast: bool) {
    shadowmesh::block_on_local(async {
        let (ia, ib) = (Identity::generate(), Identity::generate());
        let (na, da) = plane(&ia);
        let (nb, db) = plane(&ib);
        let (a_v4, b_v4) = (da.ipv4, db.ipv4);
        let b_id = ib.peer_id();
        let pin = Some(ib.ed25519_public());
        let a = Node::bind(ia, na).unwrap();
        let b = Node::bind(ib, nb).unwrap();
        let addr = b.local_addr().unwrap();
        let (d, l) = tokio::join!(a.dial(addr, b_id, pin), async {
            b.accept().await.unwrap()
        });
        let dp_a = DataPlane::new(da, Tun::memory("a"), 1380);
        let dp_b = DataPlane::new(db, Tun::memory("b"), 1380);
        if fast {
            dp_a.enable_fast_lane(&a, true).unwrap();
            dp_b.enable_fast_lane(&b, true).unwrap();
        }
        assert!(dp_a.add_link(d.unwrap()));
        assert!(dp_b.add_link(l.unwrap()));
        if fast {
            // Both ends say they take frames on the fast lane; wait until A heard it.
            let t = tokio::time::Instant::now();
            while dp_a.members()[0].lane != "udp" && t.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(dp_a.members()[0].lane, "udp");
        } else {
            assert_eq!(dp_a.members()[0].lane, "quic");
        }

        let pkt = packet(IpAddr::V4(a_v4), IpAddr::V4(b_v4));
        let mut arena = DataPlane::arena();
        let mut batch = shadowmesh::dataplane::Batch::new();
        let mut sent = 0u64;
        let (mut ours0, mut quinn0, mut all0) = (0, 0, 0);
        let mut counting_from = None;
        while sent < PACKETS {
            if sent >= WARMUP && counting_from.is_none() {
                counting_from = Some(sent);
                // Wait for the warm-up packets to land, then start counting.
                wait_for(&dp_b, sent).await;
                ours0 = OURS.load(Ordering::Relaxed);
                quinn0 = QUINN.load(Ordering::Relaxed);
                all0 = MINE.with(|c| c.get());
            }
            for _ in 0..32 {
                dp_a.push_packet(&mut arena, &mut batch, &pkt);
                sent += 1;
            }
            // One burst: on the fast lane, one GSO send.
            dp_a.flush(&mut batch);
            // Keep quinn's send queue short: let the endpoints run until the receiver is
            // within 256 packets.
            let behind = |r: u64| sent.saturating_sub(r) > 256;
            let mut spins = 0;
            while behind(dp_b.tun().memory_written().0) && spins < 2000 {
                tokio::task::yield_now().await;
                spins += 1;
            }
            if behind(dp_b.tun().memory_written().0) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let received = wait_for(&dp_b, sent).await;
        let counted = sent - counting_from.expect("warm-up ended");
        assert!(counted >= 100_000);
        let ours = OURS.load(Ordering::Relaxed) - ours0;
        let quinn = QUINN.load(Ordering::Relaxed) - quinn0;
        let all = MINE.with(|c| c.get()) - all0;
        println!(
            "{} lane: packets sent {sent}, delivered {received}; over the {counted} after warm-up, per packet: \
             ours {:.4}, quinn calls from our path {:.4}, whole process (quinn's driver, tokio) {:.3}",
            if fast { "fast (plain UDP)" } else { "QUIC datagram" },
            ours as f64 / counted as f64,
            quinn as f64 / counted as f64,
            all as f64 / counted as f64
        );
        assert_eq!(ours, 0, "our forwarding code allocated {ours} times after warm-up");
        if fast {
            // Timers and wake-ups may allocate now and then; per packet, nothing.
            assert!(
                (all as f64) < counted as f64 * 0.001,
                "the process allocated {all} times for {counted} fast-lane packets"
            );
        }
        assert!(
            received >= sent * 99 / 100,
            "only {received} of {sent} packets delivered"
        );
        let members = dp_b.members();
        assert_eq!(members[0].counters.rx_spoofed, 0);
        assert_eq!(members[0].counters.rx_packets, received);
        assert_eq!(dp_b.tun().memory_written().1, received * 1000);
    })
    .expect("tokio runtime");
}

/// Lets the endpoints run until `dp` has written `n` packets (or 5 s pass); returns how many.
async fn wait_for(dp: &DataPlane, n: u64) -> u64 {
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while dp.tun().memory_written().0 < n && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    dp.tun().memory_written().0
}
