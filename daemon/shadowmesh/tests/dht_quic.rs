//! The DHT over real QUIC on 127.0.0.1: one DHT-only seed and five members join through the
//! seed, publish their signed records, and every member finds every other member's record.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use shadowmesh::mesh::Mesh;
use shadowmesh::node::{Node, NodeConfig};
use shadowmesh_crypto::record::verify_record;
use shadowmesh_crypto::Identity;

const NK: [u8; 32] = [0x77; 32];

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[test]
fn seed_and_five_members_find_every_record() {
    shadowmesh::block_on_local(async {
        let seed =
            Mesh::new(Node::bind(Identity::generate(), NodeConfig::dht_only(loopback())).unwrap())
                .unwrap();
        tokio::task::spawn_local(seed.clone().run());
        let mut members: Vec<Rc<Mesh>> = Vec::new();
        for _ in 0..5 {
            let m = Mesh::new(
                Node::bind(Identity::generate(), NodeConfig::new(loopback(), NK)).unwrap(),
            )
            .unwrap();
            tokio::task::spawn_local(m.clone().run());
            m.add_contact(seed.contact());
            let joined = m.bootstrap().await.expect("bootstrap lookup");
            assert!(!joined.closest.is_empty(), "joined through the seed");
            let rec = m.node().record().to_vec();
            let put = m
                .publish(rec.into())
                .await
                .expect("record verifies")
                .expect("lookup");
            assert!(put.stores_sent >= 1);
            members.push(m);
        }
        // Let the last STOREs land.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut slowest = Duration::ZERO;
        for a in &members {
            for b in &members {
                if Rc::ptr_eq(a, b) {
                    continue;
                }
                let owner = b.node().peer_id();
                let key = shadowmesh_crypto::storage_key(&NK, &owner);
                let t = Instant::now();
                let found = a.find_value(key, owner).await.expect("lookup ran");
                slowest = slowest.max(t.elapsed());
                let rec = found.record.unwrap_or_else(|| {
                    panic!(
                        "{} did not find {}'s record",
                        a.node().peer_id().short(),
                        owner.short()
                    )
                });
                let v = verify_record(&rec, shadowmesh::unix_now()).unwrap();
                assert_eq!(v.peer_id(), owner);
                // Only members can read the payload.
                v.open_payload(&NK).unwrap();
            }
        }
        assert!(seed.table_len() >= 5, "the seed learned every member");
        assert!(members.iter().all(|m| m.table_len() >= 3));
        eprintln!("slowest lookup on loopback: {slowest:?}");
    })
    .expect("tokio runtime");
}

/// Table poisoning over QUIC: a liar's FIND_NODE answers name a real peer at an address of the
/// liar's choosing. The asker reaches the real peer over the connection it already has, and its
/// table keeps the real peer's address.
#[test]
fn a_poisoned_contact_does_not_move_a_real_peer() {
    shadowmesh::block_on_local(async {
        let node = || {
            let m = Mesh::new(
                Node::bind(Identity::generate(), NodeConfig::dht_only(loopback())).unwrap(),
            )
            .unwrap();
            tokio::task::spawn_local(m.clone().run());
            m
        };
        let (me, liar, real) = (node(), node(), node());
        let real_c = real.contact();
        // The liar believes (and tells) that the real peer lives at a port where nobody is.
        let mut evil = real_c;
        evil.addr.set_port(9);
        evil.ed25519 = [6; 32];
        liar.add_contact(evil);
        me.add_contact(liar.contact());
        // `me` holds a connection to the real peer already (a member link, say), and learns
        // of it in the DHT only through the liar.
        me.connection(real_c)
            .await
            .expect("connect to the real peer");
        for _ in 0..3 {
            me.find_node(real_c.id.0).await.expect("lookup ran");
        }
        let seen = me
            .contacts()
            .into_iter()
            .find(|c| c.id == real_c.id)
            .expect("the real peer stays in the table");
        assert_eq!(seen.addr, real_c.addr, "the real address, not the liar's");
        assert_ne!(seen.ed25519, [6; 32]);
    })
    .expect("tokio runtime");
}
