//! A hostile mesh member for the trust-boundary scenarios (`cargo xtask test` runs it in a
//! network namespace): it holds the network key, so it passes every handshake, and then claims
//! what a member must not get: LAN routes that are not its own (a default route, another
//! gateway's LAN, the overlay, the receiver's WAN), other members' overlay addresses, and
//! `Peers` lists that point at loopback, broadcast and multicast addresses.
//!
//! It signs whatever record it is told to: the daemon's own configuration checks (which refuse
//! `list route '0.0.0.0/0'`) are exactly what it bypasses.
//!
//! usage: hostile --target PEERID@IP:PORT --network-key HEX --bind IP
//!        [--route CIDR,CIDR,...] [--ipv4 ADDR --ipv4-counter N] [--ipv6 ADDR]
//!        [--peers ADDR,ADDR,...]
//!
//! Prints `{"phase":"ready",...}` once the session is up (and the peer list sent), then holds
//! the connection until stdin closes.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use shadowmesh::args::{network_key, parse_peer_addr, Opts};
use shadowmesh::config::parse_cidr;
use shadowmesh::dataplane::member_payload;
use shadowmesh::node::{write_msg, Node, NodeConfig};
use shadowmesh_crypto::Identity;
use shadowmesh_proto::dht::wire::{emit_contact_list, Contact};
use shadowmesh_proto::msg::MsgType;
use shadowmesh_proto::PeerId;

fn list<'a>(o: &'a Opts, name: &str) -> Vec<&'a str> {
    o.get(name)
        .map(|v| v.split(',').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = Opts::parse(&args).unwrap_or_else(|e| panic!("{}", e.msg));
    let (target, addr) = parse_peer_addr(o.need("--target").unwrap()).unwrap();
    let nk = network_key(&o).unwrap_or_else(|e| panic!("{}", e.msg));
    let bind: IpAddr = o.need("--bind").unwrap().parse().unwrap();
    let id = Identity::generate();
    let mut payload = member_payload(&id.peer_id(), &nk);
    payload.routes = list(&o, "--route")
        .into_iter()
        .map(|r| parse_cidr(r).unwrap_or_else(|e| panic!("{r}: {e}")))
        .collect();
    if let Some(a) = o.get("--ipv4") {
        payload.ipv4 = Some(a.parse().unwrap());
        payload.ipv4_counter = o.parse_or("--ipv4-counter", 0).unwrap();
    }
    if let Some(a) = o.get("--ipv6") {
        payload.ipv6 = Some(a.parse().unwrap());
    }
    let peers: Vec<Contact> = list(&o, "--peers")
        .into_iter()
        .enumerate()
        .map(|(i, a)| Contact {
            // Made-up members: PeerIds nobody holds, at the addresses given.
            id: PeerId([i as u8 + 1; 32]),
            ed25519: [0; 32],
            addr: a.parse::<SocketAddr>().unwrap(),
        })
        .collect();

    shadowmesh::block_on_local(async move {
        let mut cfg = NodeConfig::new(SocketAddr::new(bind, 0), nk);
        cfg.payload = payload;
        cfg.handshake_timeout = Duration::from_secs(10);
        let node = Node::bind(id, cfg).expect("bind");
        let mut peer = match node.dial(addr, target, None).await {
            Ok(p) => p,
            Err(e) => {
                println!("{{\"phase\":\"failed\",\"error\":\"{e}\"}}");
                return;
            }
        };
        if !peers.is_empty() {
            let mut body = Vec::new();
            emit_contact_list(&peers, &mut body);
            write_msg(&mut peer.control, MsgType::Peers, &body)
                .await
                .expect("peer list sent");
        }
        println!(
            "{{\"phase\":\"ready\",\"peer_id\":\"{}\",\"peers_sent\":{}}}",
            node.peer_id(),
            peers.len()
        );
        shadowmesh::until_stdin_closes().await;
        drop(peer);
    })
    .expect("tokio runtime");
}
