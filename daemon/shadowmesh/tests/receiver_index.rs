//! Frames find their session by the receiver index, from whatever address they come, and move
//! the path only once they authenticate.
//!
//! Two data planes on the fast lane over 127.0.0.1, B dialling A through a UDP forwarder of
//! the test's own (a NAT: A sees B at the forwarder's address). The forwarder holds back B's
//! SMSH frames and sends them, or altered copies, from a second address, as a NAT that
//! rebinds would, or an attacker who saw them. A replayed or forged frame from the new
//! address is refused and moves nothing: A keeps sending to B's old address. A fresh genuine
//! frame from there is delivered, and A's next frame goes there.

use std::cell::{Cell, RefCell};
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use shadowmesh::dataplane::{member_payload, Batch, DataPlane, DataPlaneConfig};
use shadowmesh::fastlane::is_frame;
use shadowmesh::node::{Node, NodeConfig};
use shadowmesh::tun::Tun;
use shadowmesh_crypto::Identity;
use tokio::net::UdpSocket;

const NK: [u8; 32] = [0x42; 32];

fn plane(id: &Identity) -> (NodeConfig, DataPlaneConfig) {
    let mut n = NodeConfig::new("127.0.0.1:0".parse::<SocketAddr>().unwrap(), NK);
    n.payload = member_payload(&id.peer_id(), &NK);
    let d = DataPlaneConfig::new(id.peer_id(), &n.payload, NK, vec![]).unwrap();
    (n, d)
}

/// The forwarder between B and A.
struct Nat {
    /// Faces B (B dials it).
    to_b: UdpSocket,
    /// Faces A: the address A first sees B at, and the one a rebinding moves B to.
    old: UdpSocket,
    new: UdpSocket,
    a: SocketAddr,
    b: Cell<Option<SocketAddr>>,
    /// Hold B's SMSH frames instead of forwarding them.
    hold: Cell<bool>,
    held: RefCell<Vec<Vec<u8>>>,
    /// Which of our A-facing addresses each SMSH frame from A arrived at.
    a_sent_to: RefCell<Vec<SocketAddr>>,
}

impl Nat {
    async fn forward_from_b(self: Rc<Self>) {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = self.to_b.recv_from(&mut buf).await {
            self.b.set(Some(from));
            if self.hold.get() && is_frame(&buf[..n]) {
                self.held.borrow_mut().push(buf[..n].to_vec());
            } else {
                let _ = self.old.send_to(&buf[..n], self.a).await;
            }
        }
    }

    async fn forward_from_a(self: Rc<Self>, new: bool) {
        let mut buf = vec![0u8; 65_536];
        let sock = if new { &self.new } else { &self.old };
        let at = sock.local_addr().unwrap();
        while let Ok((n, _)) = sock.recv_from(&mut buf).await {
            if is_frame(&buf[..n]) {
                self.a_sent_to.borrow_mut().push(at);
            }
            if let Some(b) = self.b.get() {
                let _ = self.to_b.send_to(&buf[..n], b).await;
            }
        }
    }

    /// Sends `frame` to A from the new address.
    async fn send_from_new(&self, frame: &[u8]) {
        self.new.send_to(frame, self.a).await.unwrap();
    }
}

/// An IPv4/UDP packet from `src` to `dst` (the receiving data plane checks the source only).
fn packet(src: Ipv4Addr, dst: Ipv4Addr, tag: u8) -> Vec<u8> {
    let mut p = vec![tag; 200];
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 200, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p
}

fn send(dp: &DataPlane, p: &[u8]) {
    let mut arena = DataPlane::arena();
    let mut batch = Batch::new();
    dp.push_packet(&mut arena, &mut batch, p);
    dp.flush(&mut batch);
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(tokio::time::Instant::now() < end, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A settles: whatever it was sent has arrived and been looked at.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[test]
fn a_frame_from_a_new_address_moves_the_path_only_once_it_authenticates() {
    shadowmesh::block_on_local(async {
        let (ia, ib) = (Identity::generate(), Identity::generate());
        let (na, da) = plane(&ia);
        let (nb, db) = plane(&ib);
        let (a_id, a_pin) = (ia.peer_id(), Some(ia.ed25519_public()));
        let a = Node::bind(ia, na).unwrap();
        let b = Node::bind(ib, nb).unwrap();
        let lo = "127.0.0.1:0";
        let nat = Rc::new(Nat {
            to_b: UdpSocket::bind(lo).await.unwrap(),
            old: UdpSocket::bind(lo).await.unwrap(),
            new: UdpSocket::bind(lo).await.unwrap(),
            a: a.local_addr().unwrap(),
            b: Cell::new(None),
            hold: Cell::new(false),
            held: RefCell::new(vec![]),
            a_sent_to: RefCell::new(vec![]),
        });
        let (old, new) = (nat.old.local_addr().unwrap(), nat.new.local_addr().unwrap());
        tokio::task::spawn_local(nat.clone().forward_from_b());
        tokio::task::spawn_local(nat.clone().forward_from_a(false));
        tokio::task::spawn_local(nat.clone().forward_from_a(true));

        let via = nat.to_b.local_addr().unwrap();
        let (dialled, accepted) = tokio::join!(b.dial(via, a_id, a_pin), async {
            a.accept().await.unwrap()
        });
        let (va, vb) = (da.roster.ipv4.0, db.roster.ipv4.0);
        let dp_a = DataPlane::new(da, Tun::memory("a"), shadowmesh::node::DEFAULT_TUNNEL_MTU);
        let dp_b = DataPlane::new(db, Tun::memory("b"), shadowmesh::node::DEFAULT_TUNNEL_MTU);
        dp_a.enable_fast_lane(&a, true).unwrap();
        dp_b.enable_fast_lane(&b, true).unwrap();
        assert!(dp_a.add_link(accepted.unwrap()));
        assert!(dp_b.add_link(dialled.unwrap()));
        until("both ends on the fast lane", || {
            dp_a.members()[0].lane == "udp" && dp_b.members()[0].lane == "udp"
        })
        .await;
        assert_eq!(dp_a.members()[0].endpoint, Some(old), "A sees B at the NAT");

        // A's frames go to where it sees B.
        send(&dp_a, &packet(va, vb, 1));
        until("A's frame reached B", || dp_b.tun().memory_written().0 == 1).await;
        assert_eq!(nat.a_sent_to.borrow().last(), Some(&old));

        // Two frames from B, held back.
        nat.hold.set(true);
        send(&dp_b, &packet(vb, va, 2));
        send(&dp_b, &packet(vb, va, 3));
        until("B's frames held", || nat.held.borrow().len() == 2).await;
        let (f1, f2) = {
            let h = nat.held.borrow();
            (h[0].clone(), h[1].clone())
        };
        let delivered = || dp_a.tun().memory_written().0;
        let invalid = || dp_a.members()[0].counters.rx_invalid;

        // The first, from the old address: delivered.
        nat.old.send_to(&f1, nat.a).await.unwrap();
        until("f1 delivered", || delivered() == 1).await;

        // Replayed from the new address: refused, and A's path stays.
        nat.send_from_new(&f1).await;
        settle().await;
        assert_eq!((delivered(), invalid()), (1, 1), "a replay is refused");
        send(&dp_a, &packet(va, vb, 4));
        until("A's frame reached B", || dp_b.tun().memory_written().0 == 2).await;
        assert_eq!(
            nat.a_sent_to.borrow().last(),
            Some(&old),
            "a replay moves nothing"
        );

        // Forged (one bit of the tag) from the new address: refused, the path stays.
        let mut forged = f2.clone();
        *forged.last_mut().unwrap() ^= 1;
        nat.send_from_new(&forged).await;
        settle().await;
        assert_eq!((delivered(), invalid()), (1, 2), "a forgery is refused");
        // Another index: no session of A's, dropped before any key is tried.
        let mut stranger = f2.clone();
        stranger[8] ^= 0xff;
        nat.send_from_new(&stranger).await;
        settle().await;
        assert_eq!(
            (delivered(), invalid()),
            (1, 2),
            "no session has that index"
        );
        send(&dp_a, &packet(va, vb, 5));
        until("A's frame reached B", || dp_b.tun().memory_written().0 == 3).await;
        assert_eq!(
            nat.a_sent_to.borrow().last(),
            Some(&old),
            "a forgery moves nothing"
        );

        // The genuine frame from the new address (only it: QUIC still comes from the old one):
        // delivered, and A follows.
        nat.send_from_new(&f2).await;
        until("f2 delivered", || delivered() == 2).await;
        assert_eq!(invalid(), 2);
        send(&dp_a, &packet(va, vb, 6));
        until("A's frame reached B", || dp_b.tun().memory_written().0 == 4).await;
        assert_eq!(
            nat.a_sent_to.borrow().last(),
            Some(&new),
            "an authenticated frame moves the path"
        );
        assert_eq!(dp_a.members()[0].counters.rx_spoofed, 0);
        // `peers` shows both paths: the fast lane at the new address, just heard from, and
        // the QUIC connection still at the old one.
        let paths = dp_a.members()[0].paths.clone();
        let kinds: Vec<_> = paths.iter().map(|(p, _)| (p.kind.name(), p.addr)).collect();
        assert_eq!(kinds, [("quic", old), ("udp", new)]);
        assert!(
            paths[1].1.is_some_and(|ago| ago < Duration::from_secs(5)),
            "{paths:?}"
        );
        drop((a, b));
    })
    .expect("tokio runtime");
}
