//! A client that completes TLS and then says nothing (no HELLO) must not hold up anyone else:
//! the node runs handshakes side by side, each bounded by the handshake timeout. With one
//! handshake at a time, the honest client below waited for the stalled one's 10 s timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shadowmesh::mesh::Mesh;
use shadowmesh::node::{Node, NodeConfig};
use shadowmesh_crypto::Identity;

const NK: [u8; 32] = [0x5a; 32];

#[test]
fn a_silent_client_does_not_block_the_next_handshake() {
    shadowmesh::block_on_local(async {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut cfg = NodeConfig::new(lo, NK);
        cfg.handshake_timeout = Duration::from_secs(10);
        let server = Mesh::new(Node::bind(Identity::generate(), cfg).unwrap()).unwrap();
        tokio::task::spawn_local(server.clone().run());
        let target = server.contact();

        // Three silent clients: TLS done, then nothing.
        let mut silent = Vec::new();
        for _ in 0..3 {
            let n = Node::bind(Identity::generate(), NodeConfig::new(lo, NK)).unwrap();
            let c = n.dial_tls_only(target.addr, target.id).await.unwrap();
            silent.push((n, c));
        }
        // An honest member completes its whole handshake while they wait.
        let honest = Node::bind(Identity::generate(), NodeConfig::new(lo, NK)).unwrap();
        let t = Instant::now();
        let peer = tokio::time::timeout(
            Duration::from_secs(5),
            honest.dial(target.addr, target.id, None),
        )
        .await
        .expect("the honest handshake waited for the silent clients")
        .expect("handshake");
        assert_eq!(peer.peer_id, target.id);
        assert!(t.elapsed() < Duration::from_secs(5));
        // The silent ones are still open (their handshakes are pending, not abandoned).
        assert!(silent.iter().all(|(_, c)| c.close_reason().is_none()));
    })
    .expect("tokio runtime");
}
