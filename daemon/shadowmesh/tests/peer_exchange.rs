//! Peer exchange over real QUIC on 127.0.0.1: B and C each connect only to A; A tells the
//! newcomer who else is in the mesh, and B and C end up connected to each other without any
//! DHT lookup, and carry a packet between them. A node with another network key that
//! connects to A is never offered to the members, and never gets a session.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use shadowmesh::dataplane::{member_payload, DataPlane, DataPlaneConfig};
use shadowmesh::mesh::Mesh;
use shadowmesh::node::{Node, NodeConfig};
use shadowmesh::tun::Tun;
use shadowmesh_crypto::Identity;
use shadowmesh_proto::PeerId;

const NK: [u8; 32] = [0x31; 32];

fn member(nk: [u8; 32]) -> (Rc<Mesh>, Rc<DataPlane>) {
    member_allowing(nk, vec![])
}

fn member_allowing(nk: [u8; 32], allowed: Vec<PeerId>) -> (Rc<Mesh>, Rc<DataPlane>) {
    let id = Identity::generate();
    let pid = id.peer_id();
    let mut cfg = NodeConfig::new("127.0.0.1:0".parse::<SocketAddr>().unwrap(), nk);
    cfg.payload = member_payload(&pid, &nk);
    cfg.handshake_timeout = Duration::from_secs(5);
    let dcfg = DataPlaneConfig::new(pid, &cfg.payload, nk, allowed).unwrap();
    let mesh = Mesh::new(Node::bind(id, cfg).unwrap()).unwrap();
    let dp = DataPlane::new(
        dcfg,
        Tun::memory("test"),
        shadowmesh::node::DEFAULT_TUNNEL_MTU,
    );
    mesh.attach(dp.clone());
    tokio::task::spawn_local(mesh.clone().run());
    (mesh, dp)
}

fn connected(dp: &DataPlane, peer: &PeerId) -> bool {
    dp.members()
        .iter()
        .any(|m| m.peer_id == *peer && m.connected)
}

async fn until(f: impl FnMut() -> bool) -> bool {
    until_within(500, f).await
}

/// Polls `f` every 10 ms, `tries` times.
async fn until_within(tries: u32, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..tries {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[test]
fn members_learn_each_other_through_a_common_member() {
    shadowmesh::block_on_local(async {
        let (a, dp_a) = member(NK);
        let (b, dp_b) = member(NK);
        let (c, dp_c) = member(NK);
        let (x, dp_x) = member([0x99; 32]);
        let (ida, idb, idc, idx) = (
            a.contact().id,
            b.contact().id,
            c.contact().id,
            x.contact().id,
        );

        b.connection(a.contact()).await.unwrap();
        assert!(until(|| connected(&dp_a, &idb)).await);
        // A node of another mesh reaches A's endpoint, but gets no session.
        let _ = x.connection(a.contact()).await;
        c.connection(a.contact()).await.unwrap();

        assert!(
            until(|| connected(&dp_b, &idc) && connected(&dp_c, &idb)).await,
            "B and C did not learn each other from A"
        );
        assert!(connected(&dp_b, &ida) && connected(&dp_c, &ida));
        for dp in [&dp_a, &dp_b, &dp_c] {
            assert!(dp.members().iter().all(|m| m.peer_id != idx));
        }
        assert!(dp_x.members().is_empty());
        assert_eq!(b.table_len(), 0, "no DHT contact was needed");

        // A packet from B's overlay address to C's crosses the exchanged connection.
        let (b4, _, _) = dp_b.addresses();
        let (c4, _, _) = dp_c.addresses();
        let mut pkt = vec![0u8; 100];
        pkt[..20].copy_from_slice(&[
            0x45, 0, 0, 100, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]);
        let (IpAddr::V4(b4), IpAddr::V4(c4)) = (IpAddr::V4(b4), IpAddr::V4(c4)) else {
            unreachable!()
        };
        pkt[12..16].copy_from_slice(&b4.octets());
        pkt[16..20].copy_from_slice(&c4.octets());
        // B and C may both have dialled: the connection one of them replaces takes the packets
        // sent on it in the meantime with it, so B sends until one arrives, as ping would.
        let mut arena = DataPlane::arena();
        let mut batch = shadowmesh::dataplane::Batch::new();
        let mut delivered = false;
        for _ in 0..50 {
            dp_b.push_packet(&mut arena, &mut batch, &pkt);
            dp_b.flush(&mut batch);
            if until_within(10, || dp_c.tun().memory_written().0 > 0).await {
                delivered = true;
                break;
            }
        }
        assert!(delivered, "no packet from B reached C");
        assert_eq!(dp_a.tun().memory_written().0, 0);
    })
    .expect("tokio runtime");
}

/// `list allowed_peer`: a member of the right mesh that is not on the list gets no session (and
/// neither end counts it as a member); one that is on it does.
#[test]
fn the_allowlist_admits_only_listed_members() {
    shadowmesh::block_on_local(async {
        let (b, dp_b) = member(NK);
        let (c, dp_c) = member(NK);
        let (a, dp_a) = member_allowing(NK, vec![b.contact().id]);
        let (ida, idb, idc) = (a.contact().id, b.contact().id, c.contact().id);
        b.connection(a.contact()).await.unwrap();
        let _ = c.connection(a.contact()).await;
        assert!(until(|| connected(&dp_a, &idb) && connected(&dp_b, &ida)).await);
        // Give C's attempt time to settle either way.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !connected(&dp_a, &idc),
            "A admitted a member not on its allowlist"
        );
        assert!(dp_a.members().iter().all(|m| m.peer_id != idc));
        assert!(!connected(&dp_c, &ida));
    })
    .expect("tokio runtime");
}
