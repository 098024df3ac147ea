//! Strangers against a gateway, for `cargo xtask flood` (run in network namespaces). One mode
//! per process:
//!
//! - `--connections N`: N stranger identities (no network key) on one address each dial the
//!   target with a full handshake, 64 at a time, and hold what they get. Prints
//!   `{"phase":"connections","connected":C,"failed":F,"seconds":S}`, then holds until stdin
//!   closes.
//! - `--initials SECONDS`: handshake Initials as fast as this process makes them (a fresh
//!   ML-KEM-1024 + X25519 ClientHello each), from 4 endpoints, each attempt abandoned after
//!   2 s. Prints `{"phase":"initials","attempts":A,"seconds":S}`.
//! - `--member-dials N --network-key HEX`: one member dials the target N times, 250 ms apart,
//!   each a full member handshake (TLS, HELLO, INIT), and prints each one's time:
//!   `{"dial_ms":T,"ok":true}`.
//!
//! - `--announce SECONDS --network-key HEX`: a member's LAN discovery announcements, each naming
//!   a new random PeerId, sealed under the key, multicast from the `--bind` address as fast as
//!   this process seals them. Prints `{"phase":"announce","sent":N,"seconds":S}`.
//!
//! usage: flood --target PEERID@IP:PORT --bind IP (--connections N | --initials SECONDS |
//!        --member-dials N --network-key HEX)
//!        flood --bind IP --announce SECONDS --network-key HEX

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use shadowmesh::args::{network_key, parse_peer_addr, Opts};
use shadowmesh::dataplane::member_payload;
use shadowmesh::node::{Node, NodeConfig};
use shadowmesh_crypto::Identity;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = Opts::parse(&args).unwrap_or_else(|e| panic!("{}", e.msg));
    if let Some(secs) = o.get("--announce") {
        let bind: std::net::Ipv4Addr = o.need("--bind").unwrap().parse().unwrap();
        let nk = network_key(&o).unwrap_or_else(|e| panic!("{}", e.msg));
        announce(bind, &nk, Duration::from_secs(secs.parse().unwrap()));
        return;
    }
    let (target, addr) = parse_peer_addr(o.need("--target").unwrap()).unwrap();
    let bind: IpAddr = o.need("--bind").unwrap().parse().unwrap();
    let local = SocketAddr::new(bind, 0);
    shadowmesh::block_on_local(async move {
        if let Some(n) = o.get("--connections") {
            let n: usize = n.parse().unwrap();
            let t = Instant::now();
            let nodes: Vec<Rc<Node>> = (0..n)
                .map(|_| {
                    let mut cfg = NodeConfig::dht_only(local);
                    cfg.handshake_timeout = Duration::from_secs(5);
                    Rc::new(Node::bind(Identity::generate(), cfg).expect("bind"))
                })
                .collect();
            let mut held = Vec::new();
            let mut failed = 0;
            let mut set = tokio::task::JoinSet::new();
            let mut next = 0;
            while next < n || !set.is_empty() {
                while next < n && set.len() < 64 {
                    let node = nodes[next].clone();
                    set.spawn_local(async move { node.dial(addr, target, None).await });
                    next += 1;
                }
                match set.join_next().await {
                    Some(Ok(Ok(p))) => held.push(p),
                    _ => failed += 1,
                }
            }
            let still = held
                .iter()
                .filter(|p| p.conn.close_reason().is_none())
                .count();
            println!(
                "{{\"phase\":\"connections\",\"connected\":{still},\"failed\":{failed},\"seconds\":{:.2}}}",
                t.elapsed().as_secs_f64()
            );
            shadowmesh::until_stdin_closes().await;
            drop(held);
        } else if let Some(secs) = o.get("--initials") {
            let secs: f64 = secs.parse().unwrap();
            let nodes: Vec<Rc<Node>> = (0..4)
                .map(|_| Rc::new(Node::bind(Identity::generate(), NodeConfig::dht_only(local)).expect("bind")))
                .collect();
            let t = Instant::now();
            let mut attempts = 0u64;
            let mut set = tokio::task::JoinSet::new();
            while t.elapsed().as_secs_f64() < secs {
                for node in &nodes {
                    let node = node.clone();
                    set.spawn_local(async move {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(2),
                            node.dial_tls_only(addr, target),
                        )
                        .await;
                    });
                    attempts += 1;
                }
                // Bounded: at most 2,048 attempts outstanding.
                while set.len() >= 2048 {
                    set.join_next().await;
                }
                // Let the endpoints send what was queued.
                tokio::task::yield_now().await;
            }
            set.abort_all();
            println!(
                "{{\"phase\":\"initials\",\"attempts\":{attempts},\"seconds\":{:.2}}}",
                t.elapsed().as_secs_f64()
            );
        } else {
            let n: usize = o.parse_or("--member-dials", 10).unwrap();
            let nk = network_key(&o).unwrap_or_else(|e| panic!("{}", e.msg));
            let id = Identity::generate();
            let mut cfg = NodeConfig::new(local, nk.clone());
            cfg.payload = member_payload(&id.peer_id(), &nk);
            cfg.handshake_timeout = Duration::from_secs(5);
            let node = Node::bind(id, cfg).expect("bind");
            for _ in 0..n {
                let t = Instant::now();
                let r = node.dial(addr, target, None).await;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                match r {
                    Ok(p) => {
                        println!("{{\"dial_ms\":{ms:.1},\"ok\":true}}");
                        p.conn.close(0u32.into(), b"done");
                    }
                    Err(e) => println!("{{\"dial_ms\":{ms:.1},\"ok\":false,\"error\":\"{e}\"}}"),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    })
    .expect("tokio runtime");
}

/// Multicasts sealed announcements of random PeerIds from `bind` for `secs`.
fn announce(bind: std::net::Ipv4Addr, nk: &[u8; 32], secs: Duration) {
    use shadowmesh_proto::discovery::{window, Announce, GROUP_V4, PORT};
    use std::os::fd::AsRawFd;
    let sock = std::net::UdpSocket::bind((bind, 0)).expect("bind");
    sock.set_multicast_ttl_v4(1).unwrap();
    let ifaddr = libc::in_addr {
        s_addr: u32::from_ne_bytes(bind.octets()),
    };
    // SAFETY: setsockopt with a pointer to an in_addr and its size; the socket is open.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            (&ifaddr as *const libc::in_addr).cast(),
            std::mem::size_of::<libc::in_addr>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "IP_MULTICAST_IF");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t = Instant::now();
    let mut sent = 0u64;
    while t.elapsed() < secs {
        let mut peer = [0u8; 32];
        shadowmesh_crypto::random_bytes(&mut peer);
        let a = Announce {
            peer: shadowmesh_proto::PeerId(peer),
            port: 4433,
        };
        let b = shadowmesh_crypto::discovery::seal(nk, window(now), &a);
        if sock.send_to(&b, (GROUP_V4, PORT)).is_ok() {
            sent += 1;
        }
    }
    println!(
        "{{\"phase\":\"announce\",\"sent\":{sent},\"seconds\":{:.1}}}",
        t.elapsed().as_secs_f64()
    );
}
