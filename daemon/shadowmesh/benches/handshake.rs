//! Connection handshake cost on loopback: hybrid (ML-KEM-1024 + X25519) against the same code
//! with a classical-only (X25519) TLS provider, full against resumed, and round trips measured
//! through a delaying UDP relay. `cargo bench -p shadowmesh --bench handshake` (or
//! `cargo xtask bench`). Medians; one `name value unit` line per figure.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shadowmesh::node::{Node, NodeConfig, Peer};
use shadowmesh_crypto::tls::KxPolicy;
use shadowmesh_crypto::Identity;
use tokio::net::UdpSocket;

const NK: [u8; 32] = [0x42; 32];

fn node(kx: KxPolicy) -> Node {
    let mut c = NodeConfig::new("127.0.0.1:0".parse().unwrap(), NK);
    c.kx = kx;
    Node::bind(Identity::generate(), c).unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

async fn handshake(
    client: &Node,
    server: &Node,
    to: SocketAddr,
    pin: Option<[u8; 32]>,
) -> (Peer, Peer) {
    let (d, a) = tokio::join!(client.dial(to, server.peer_id(), pin), async {
        server.accept().await.unwrap()
    });
    (d.unwrap(), a.unwrap())
}

/// A UDP relay on loopback that delays every datagram by `one_way` in each direction.
async fn delay_relay(upstream: SocketAddr, one_way: Duration) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(upstream).await.unwrap();
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let addr = front.local_addr().unwrap();
    {
        let (front, back, client) = (front.clone(), back.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                let data = buf[..n].to_vec();
                let back = back.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(one_way).await;
                    let _ = back.send(&data).await;
                });
            }
        });
    }
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = back.recv(&mut buf).await {
            let to = *client.lock().unwrap();
            if let Some(to) = to {
                let data = buf[..n].to_vec();
                let front = front.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(one_way).await;
                    let _ = front.send_to(&data, to).await;
                });
            }
        }
    });
    addr
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 3 } else { 15 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, async {
        for (name, kx) in [
            ("hybrid", KxPolicy::Hybrid),
            ("classical", KxPolicy::ClassicalOnly),
        ] {
            let server = node(kx);
            let addr = server.local_addr().unwrap();
            let (mut total, mut tls, mut c_tx, mut s_tx, mut c_tls_tx, mut s_tls_tx) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            for _ in 0..n {
                // A fresh client each time: a full handshake, no resumption.
                let client = node(kx);
                let (d, l) = handshake(&client, &server, addr, None).await;
                total.push(d.stats.elapsed.as_secs_f64() * 1e3);
                tls.push(d.stats.tls_elapsed.as_secs_f64() * 1e3);
                c_tx.push(d.stats.udp_tx_bytes as f64);
                // The listener's counters only include its HELLO + RESP once they were sent.
                s_tx.push(l.conn.stats().udp_tx.bytes as f64);
                c_tls_tx.push(d.stats.tls_tx_bytes as f64);
                s_tls_tx.push(d.stats.tls_rx_bytes as f64);
                d.conn.close(0u32.into(), b"");
                client.shutdown().await;
            }
            println!("{name}_full_handshake {:.2} ms", median(total));
            println!("{name}_tls_only {:.2} ms", median(tls));
            println!("{name}_dialler_bytes {:.0} B", median(c_tx));
            println!("{name}_listener_bytes {:.0} B", median(s_tx));
            println!("{name}_tls_dialler_bytes {:.0} B", median(c_tls_tx));
            println!("{name}_tls_listener_bytes {:.0} B", median(s_tls_tx));

            // Resumption: one client dials the same pinned server again.
            let client = node(kx);
            let pin = Some(server.identity().ed25519_public());
            let (mut full, mut resumed, mut r_tx) = (vec![], vec![], vec![]);
            for _ in 0..n.min(8) {
                let client = node(kx);
                let (d, _l) = handshake(&client, &server, addr, pin).await;
                assert!(!d.stats.resumed);
                full.push(d.stats.tls_elapsed.as_secs_f64() * 1e3);
                tokio::time::sleep(Duration::from_millis(20)).await; // ticket arrives
                d.conn.close(0u32.into(), b"");
                let (d2, _l2) = handshake(&client, &server, addr, pin).await;
                assert!(d2.stats.resumed, "TLS session must resume");
                resumed.push(d2.stats.tls_elapsed.as_secs_f64() * 1e3);
                r_tx.push(d2.stats.tls_tx_bytes as f64);
                d2.conn.close(0u32.into(), b"");
            }
            drop(client);
            println!("{name}_tls_full_pinned {:.2} ms", median(full));
            println!("{name}_tls_resumed {:.2} ms", median(resumed));
            println!("{name}_tls_resumed_dialler_bytes {:.0} B", median(r_tx));

            // Round trips through a relay adding 25 ms each way (RTT 50 ms).
            let one_way = Duration::from_millis(25);
            let relay = delay_relay(addr, one_way).await;
            let rtt = 2.0 * one_way.as_secs_f64() * 1e3;
            let (mut rt_full, mut rt_tls, mut rt_res) = (vec![], vec![], vec![]);
            for _ in 0..3 {
                let client = node(kx);
                let (d, _l) = handshake(&client, &server, relay, pin).await;
                rt_full.push(d.stats.elapsed.as_secs_f64() * 1e3 / rtt);
                rt_tls.push(d.stats.tls_elapsed.as_secs_f64() * 1e3 / rtt);
                tokio::time::sleep(Duration::from_millis(120)).await;
                d.conn.close(0u32.into(), b"");
                let (d2, _l2) = handshake(&client, &server, relay, pin).await;
                assert!(d2.stats.resumed);
                rt_res.push(d2.stats.elapsed.as_secs_f64() * 1e3 / rtt);
                d2.conn.close(0u32.into(), b"");
            }
            println!("{name}_rtts_tls {:.2} rtt", median(rt_tls));
            println!("{name}_rtts_full {:.2} rtt", median(rt_full));
            println!("{name}_rtts_resumed_full {:.2} rtt", median(rt_res));
            server.shutdown().await;
        }
    });
}
