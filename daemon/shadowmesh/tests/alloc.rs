//! The forwarding path allocates nothing of its own in steady state, on either lane.
//!
//! Two data planes on real quinn connections over 127.0.0.1 (stand-in TUN devices that count
//! what is written to them): 120,000 packets go from one side's TUN path (route lookup, seal,
//! `send_datagram` or, on the fast lane, `sendto`) to the other side's (open, replay check,
//! source check, TUN write). A counting allocator attributes each allocation to our forwarding
//! code, to the quinn calls it makes, or to everything else (quinn's endpoint driver, tokio);
//! after warm-up ours must be zero on both lanes, and on the fast lane the whole process's too
//! (quinn never sees those datagrams). The per-packet figures are printed for BENCHMARKS.md.
//!
//! A daemon on a real TUN forwards on its data-plane thread instead (`dpthread`): the third test
//! runs that, as root, in a network namespace of its own: kernel sockets send through a real
//! TUN device to the other side, and packets from the other side are written to the TUN and
//! received by a kernel socket. The data-plane thread must allocate nothing at all.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shadowmesh::dataplane::{alloc_probe, member_payload, DataPlane, DataPlaneConfig};
use shadowmesh::node::{Node, NodeConfig};
use shadowmesh::tun::Tun;
use shadowmesh_crypto::Identity;

struct Counting;
/// Allocations on data-plane threads (whatever the code).
static DATA_THREAD: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Allocations on this thread (each test runs its runtime, and so quinn's driver, on its own
    // thread, and the tests run in parallel).
    static MINE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    // Of those, by our forwarding code, and by the quinn calls it makes.
    static OURS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static QUINN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn count(c: &'static std::thread::LocalKey<std::cell::Cell<u64>>) {
    // try_with: the counters may be gone during thread teardown.
    let _ = c.try_with(|c| c.set(c.get() + 1));
}

fn mine(c: &'static std::thread::LocalKey<std::cell::Cell<u64>>) -> u64 {
    c.with(|c| c.get())
}

// SAFETY: every allocation is the system allocator's; counting changes nothing it returns.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(&MINE);
        if shadowmesh::dataplane::thread::on_data_thread() {
            DATA_THREAD.fetch_add(1, Ordering::Relaxed);
        }
        if alloc_probe::in_ours() {
            count(&OURS);
        } else if alloc_probe::in_quinn() {
            count(&QUINN);
        }
        // SAFETY: the caller's layout, passed on unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System.alloc` with layout `l` (above).
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const NK: [u8; 32] = [0x42; 32];
const PACKETS: u64 = 120_000;
const WARMUP: u64 = 10_000;

/// A node and data-plane configuration; `fast`: the fast lane on (the default), or off as
/// with `option fast_lane '0'` (QUIC then carries everything, with GSO).
fn plane(id: &Identity, fast: bool) -> (NodeConfig, DataPlaneConfig) {
    let mut n = NodeConfig::new("127.0.0.1:0".parse::<SocketAddr>().unwrap(), NK);
    n.fast_lane = fast;
    n.payload = member_payload(&id.peer_id(), &NK);
    let d = DataPlaneConfig::new(id.peer_id(), &n.payload, NK, vec![]).unwrap();
    (n, d)
}

/// Two data planes on nodes linked over 127.0.0.1 (A's on the TUN `tun_a` opens for its
/// overlay address, B's on a stand-in) and their overlay addresses. `fast`: as a daemon with
/// the fast lane on (the default) or off; returns once A sends on the lane that implies. The
/// nodes must outlive the planes.
async fn linked(
    fast: bool,
    tun_a: impl FnOnce(Ipv4Addr) -> Tun,
) -> ([Node; 2], Rc<DataPlane>, Rc<DataPlane>, [Ipv4Addr; 2]) {
    let (ia, ib) = (Identity::generate(), Identity::generate());
    let (na, da) = plane(&ia, fast);
    let (nb, db) = plane(&ib, fast);
    let b_id = ib.peer_id();
    let pin = Some(ib.ed25519_public());
    let a = Node::bind(ia, na).unwrap();
    let b = Node::bind(ib, nb).unwrap();
    let addr = b.local_addr().unwrap();
    let (d, l) = tokio::join!(a.dial(addr, b_id, pin), async { b.accept().await.unwrap() });
    let v4 = [da.roster.ipv4.0, db.roster.ipv4.0];
    let dp_a = DataPlane::new(da, tun_a(v4[0]), shadowmesh::node::DEFAULT_TUNNEL_MTU);
    let dp_b = DataPlane::new(db, Tun::memory("b"), shadowmesh::node::DEFAULT_TUNNEL_MTU);
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
    ([a, b], dp_a, dp_b, v4)
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
        let (_nodes, dp_a, dp_b, [a_v4, b_v4]) = linked(fast, |_| Tun::memory("a")).await;

        let pkt = udp_packet(a_v4, b_v4, 9, 1000);
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
                ours0 = mine(&OURS);
                quinn0 = mine(&QUINN);
                all0 = mine(&MINE);
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
        let ours = mine(&OURS) - ours0;
        let quinn = mine(&QUINN) - quinn0;
        let all = mine(&MINE) - all0;
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

/// An IPv4/UDP packet of `len` bytes from `src` to `dst`:`port`, header checksum set (the
/// kernel checks it), UDP checksum none.
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, port: u16, len: usize) -> Vec<u8> {
    let mut p = vec![0x5au8; len];
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum: u32 = p[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20..28].copy_from_slice(&[0x9c, 0x40, 0, 0, 0, 0, 0, 0]);
    p[22..24].copy_from_slice(&port.to_be_bytes());
    p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    p
}

#[test]
fn data_plane_thread_allocates_nothing_at_all() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: the data-plane thread test (needs root: a TUN device)");
        return;
    }
    std::thread::spawn(|| {
        // This thread's own network namespace (threads and processes it starts share it): the
        // TUN device and its route never touch the host's, and go with the last descriptor.
        // SAFETY: unshare has no memory preconditions; it affects this thread only.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip(8)");
        assert!(up.success());
        on_the_thread();
    })
    .join()
    .expect("the test thread");
}

fn on_the_thread() {
    const EACH_WAY: u64 = 60_000;
    const WARM: u64 = 5_000;
    shadowmesh::block_on_local(async {
        // A: a real TUN with offload, as the daemon opens it; B: a stand-in that counts.
        let (_nodes, dp_a, dp_b, [a_v4, b_v4]) = linked(true, |v4| {
            Tun::open(
                "smalloc0",
                v4,
                None,
                shadowmesh::node::DEFAULT_TUNNEL_MTU,
                true,
            )
            .expect("TUN device")
        })
        .await;
        assert!(dp_a.has_thread(), "A forwards on a data-plane thread");
        assert!(!dp_b.has_thread());

        // To B: a kernel socket on A's tunnel address sends to B's (the /16 route is the TUN's).
        let tx = std::net::UdpSocket::bind((a_v4, 0)).unwrap();
        let payload = [0xa5u8; 972];
        // From B: packets to a kernel socket on A's tunnel address.
        let rx = std::net::UdpSocket::bind((a_v4, 0)).unwrap();
        rx.set_nonblocking(true).unwrap();
        let to_a = udp_packet(b_v4, a_v4, rx.local_addr().unwrap().port(), 1000);
        let mut arena = DataPlane::arena();
        let mut batch = shadowmesh::dataplane::Batch::new();
        let mut got = [0u8; 2048];
        let (mut sent, mut received) = (0u64, 0u64);
        let mut from_warm = None;
        let (mut data0, mut ours0) = (0, 0);
        while sent < EACH_WAY {
            if sent >= WARM && from_warm.is_none() {
                from_warm = Some(sent);
                data0 = DATA_THREAD.load(Ordering::Relaxed);
                ours0 = mine(&OURS);
            }
            for _ in 0..16 {
                tx.send_to(&payload, (b_v4, 9)).unwrap();
                dp_b.push_packet(&mut arena, &mut batch, &to_a);
                sent += 1;
            }
            dp_b.flush(&mut batch);
            // The runtime gives the data-plane thread its turn when it sleeps: wait until both
            // directions are within 64 packets (or 20 ms pass: the TUN queue may drop some).
            let end = tokio::time::Instant::now() + Duration::from_millis(20);
            loop {
                while let Ok(n) = rx.recv(&mut got) {
                    assert_eq!(n, 972);
                    received += 1;
                }
                let to_b = dp_b.tun().memory_written().0;
                if (to_b + 64 >= sent && received + 64 >= sent) || tokio::time::Instant::now() > end
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let end = tokio::time::Instant::now() + Duration::from_secs(2);
        while (dp_b.tun().memory_written().0 < sent || received < sent)
            && tokio::time::Instant::now() < end
        {
            while let Ok(n) = rx.recv(&mut got) {
                assert_eq!(n, 972);
                received += 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let counted = sent - from_warm.expect("warm-up ended");
        let data = DATA_THREAD.load(Ordering::Relaxed) - data0;
        let ours = mine(&OURS) - ours0;
        let to_b = dp_b.tun().memory_written().0;
        println!(
            "data-plane thread: {sent} packets each way (TUN to B: {to_b} delivered; B to TUN: \
             {received} received by a socket); over the {counted} after warm-up, allocations \
             per packet: on the data-plane thread {:.4}, ours on the runtime thread {:.4}",
            data as f64 / counted as f64,
            ours as f64 / counted as f64,
        );
        assert_eq!(
            data, 0,
            "the data-plane thread allocated {data} times after warm-up"
        );
        assert_eq!(
            ours, 0,
            "our forwarding code (runtime thread) allocated {ours} times"
        );
        assert!(to_b >= sent * 99 / 100, "B got {to_b} of {sent}");
        assert!(
            received >= sent * 99 / 100,
            "the socket got {received} of {sent}"
        );
        // A counts what it wrote to its TUN; the kernel may still drop a few on the way to the
        // socket when the machine is busy, so the count lies between the two ends.
        let a_rx = dp_a.members()[0].counters.rx_packets;
        assert!(
            (received..=sent).contains(&a_rx),
            "A counted {a_rx} received; the socket got {received} of {sent}"
        );
        assert_eq!(dp_b.members()[0].counters.rx_spoofed, 0);
    })
    .expect("tokio runtime");
}
