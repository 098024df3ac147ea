//! A node behind a NAT learns its public address from the PONGs of nodes in other networks:
//! it asks a few on a timer, believes an address once two networks agree, reports the change
//! once, and then asks less often.

use std::net::SocketAddr;
use std::time::Duration;

use shadowmesh_proto::dht::node::{Dht, Output, RecordCheck};
use shadowmesh_proto::dht::observed::NatClass;
use shadowmesh_proto::dht::store::RecordMeta;
use shadowmesh_proto::dht::wire::{Contact, Request, Response, StoreCode};
use shadowmesh_proto::dht::{OBSERVE_INTERVAL, OBSERVE_PINGS, OBSERVE_RETRY};
use shadowmesh_proto::limit::source_key;
use shadowmesh_proto::PeerId;

struct NoRecords;
impl RecordCheck for NoRecords {
    type Record = Vec<u8>;
    fn check(&self, _: &Vec<u8>, _: u64) -> Result<RecordMeta, StoreCode> {
        Err(StoreCode::BadSignature)
    }
}

fn contact(i: u8, addr: &str) -> Contact {
    Contact {
        id: PeerId([i; 32]),
        ed25519: [i; 32],
        addr: addr.parse().unwrap(),
    }
}

/// The PINGs the node sent, by request id.
fn pings(d: &mut Dht<NoRecords>) -> Vec<(u64, Contact)> {
    let mut v = vec![];
    while let Some(o) = d.poll_output() {
        if let Output::Send {
            to,
            id,
            req: Request::Ping,
        } = o
        {
            v.push((id, to));
        }
    }
    v
}

#[test]
fn the_public_address_is_learnt_from_two_networks_and_then_checked_now_and_then() {
    let me = contact(0, "10.0.1.2:4433");
    let mut d = Dht::new(me, NoRecords, 1);
    let t0 = Duration::from_secs(100);
    // Off until asked for: no PINGs.
    d.handle_timeout(t0, 0);
    assert!(pings(&mut d).is_empty());
    d.set_observing(true, t0);
    // Nobody to ask yet: try again soon.
    d.handle_timeout(t0, 0);
    assert!(pings(&mut d).is_empty());
    assert_eq!(d.poll_timeout(), Some(t0 + OBSERVE_RETRY));
    // Contacts in three public networks, and two at private addresses (on our side of some
    // NAT: they would see our inside address).
    for (i, a) in [
        (1, "198.51.100.7:4433"),
        (2, "198.51.100.8:4433"),
        (3, "203.0.113.9:4433"),
        (4, "192.0.2.5:4433"),
        (5, "10.0.1.9:4433"),
        (6, "100.64.3.3:4433"),
    ] {
        d.add_contact(contact(i, a), t0);
    }
    let t1 = t0 + OBSERVE_RETRY;
    d.handle_timeout(t1, 0);
    let asked = pings(&mut d);
    assert_eq!(asked.len(), OBSERVE_PINGS);
    let mut nets: Vec<SocketAddr> = asked.iter().map(|(_, c)| source_key(c.addr)).collect();
    nets.sort();
    nets.dedup();
    assert_eq!(nets.len(), OBSERVE_PINGS, "each in another network");
    assert!(asked
        .iter()
        .all(|(_, c)| c.addr.ip().to_string() != "10.0.1.9"));
    // The NAT maps us to one public address and port whoever we talk to.
    let public: SocketAddr = "192.0.2.77:4433".parse().unwrap();
    let mut changed = vec![];
    for (id, c) in &asked {
        d.handle_response(*id, Response::Pong { observed: public }, t1, 0);
        while let Some(o) = d.poll_output() {
            if let Output::Observed(a) = o {
                changed.push((c.id, a));
            }
        }
    }
    assert_eq!(
        changed.len(),
        1,
        "reported once, when the second network agreed"
    );
    assert_eq!(changed[0].0, asked[1].1.id);
    assert_eq!(changed[0].1, [public]);
    assert_eq!(d.observed().addresses(t1), [public]);
    let local = ["10.0.1.2".parse().unwrap()];
    assert_eq!(
        d.observed().class(t1, 4433, &local),
        NatClass::EndpointIndependent
    );
    d.handle_timeout(t1 + OBSERVE_RETRY, 0);
    assert!(pings(&mut d).is_empty(), "known: not asked again so soon");
    // The same contacts each time: their connections stay open.
    d.handle_timeout(t1 + OBSERVE_INTERVAL, 0);
    let again = pings(&mut d);
    let ids = |v: &[(u64, Contact)]| {
        let mut ids: Vec<PeerId> = v.iter().map(|(_, c)| c.id).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&again), ids(&asked));
    // The router gets a new public address: as soon as two networks see it, it is reported.
    let moved: SocketAddr = "192.0.2.78:4433".parse().unwrap();
    let t2 = t1 + OBSERVE_INTERVAL;
    let mut reported = None;
    for (id, _) in &again {
        d.handle_response(*id, Response::Pong { observed: moved }, t2, 0);
        while let Some(o) = d.poll_output() {
            if let Output::Observed(a) = o {
                reported = Some(a);
            }
        }
    }
    assert_eq!(reported.as_deref(), Some(&[moved][..]));
    // A round that goes unanswered (the address may have just changed under us) is followed
    // by another soon, not a full interval later.
    let t3 = t2 + OBSERVE_INTERVAL;
    d.handle_timeout(t3, 0);
    assert_eq!(pings(&mut d).len(), OBSERVE_PINGS);
    let t4 = t3 + shadowmesh_proto::dht::REQUEST_TIMEOUT;
    d.handle_timeout(t4, 0);
    assert!(d.poll_timeout() <= Some(t4 + OBSERVE_RETRY));
    d.handle_timeout(t4 + OBSERVE_RETRY, 0);
    assert_eq!(pings(&mut d).len(), OBSERVE_PINGS);
}

/// A member that sees our connection to it migrate tells us where it sees us now
/// ([`Dht::seen`]): when that network saw us elsewhere before, we moved, and the others are
/// asked again within seconds rather than at the next interval.
#[test]
fn a_node_that_saw_us_elsewhere_makes_us_ask_the_others_at_once() {
    let me = contact(0, "10.0.1.2:4433");
    let mut d = Dht::new(me, NoRecords, 1);
    let t0 = Duration::from_secs(100);
    for (i, a) in [
        (1, "198.51.100.7:4433"),
        (2, "203.0.113.9:4433"),
        (3, "192.0.2.5:4433"),
    ] {
        d.add_contact(contact(i, a), t0);
    }
    d.set_observing(true, t0);
    d.handle_timeout(t0, 0);
    let public: SocketAddr = "198.18.2.2:4433".parse().unwrap();
    for (id, _) in pings(&mut d) {
        d.handle_response(id, Response::Pong { observed: public }, t0, 0);
    }
    let _ = pings(&mut d);
    assert_eq!(d.observed().addresses(t0), [public]);
    let moved_outputs = |d: &mut Dht<NoRecords>| {
        let mut n = 0;
        while let Some(o) = d.poll_output() {
            n += matches!(o, Output::Moved) as usize;
        }
        n
    };
    // A node in a network that never reported says nothing about a move.
    let t1 = t0 + Duration::from_secs(5);
    let renumbered: SocketAddr = "198.18.2.3:4433".parse().unwrap();
    d.seen(t1, "198.18.3.2:4433".parse().unwrap(), renumbered);
    assert_eq!(moved_outputs(&mut d), 0);
    // One that saw us at the old address does.
    d.seen(t1, "203.0.113.9:4433".parse().unwrap(), renumbered);
    assert_eq!(moved_outputs(&mut d), 1);
    assert!(
        d.observed().addresses(t1).contains(&renumbered),
        "two networks see the new address"
    );
    assert_eq!(
        d.poll_timeout(),
        Some(t1 + shadowmesh_proto::dht::MOVED_SETTLE)
    );
    d.handle_timeout(t1 + shadowmesh_proto::dht::MOVED_SETTLE, 0);
    assert_eq!(
        pings(&mut d).len(),
        OBSERVE_PINGS,
        "the others asked at once"
    );
    // Told again and again, it says so at most once per OBSERVE_RETRY.
    let t2 = t1 + Duration::from_secs(3);
    d.seen(t2, "203.0.113.9:4433".parse().unwrap(), public);
    assert_eq!(moved_outputs(&mut d), 0);
    d.seen(
        t1 + OBSERVE_RETRY,
        "203.0.113.9:4433".parse().unwrap(),
        renumbered,
    );
    assert_eq!(moved_outputs(&mut d), 1);
}

/// A link that went silent makes the node ask at once (once per OBSERVE_RETRY); after a move,
/// the next round asks twice as many networks, since some of the usual ones cannot be reached
/// until they dial the new address.
#[test]
fn a_silent_link_asks_now_and_a_move_asks_more_networks() {
    let me = contact(0, "10.0.1.2:4433");
    let mut d = Dht::new(me, NoRecords, 1);
    let t0 = Duration::from_secs(100);
    for i in 1..=8u8 {
        d.add_contact(contact(i, &format!("{}.0.113.9:4433", 10 + i * 20)), t0);
    }
    d.set_observing(true, t0);
    d.handle_timeout(t0, 0);
    let first = pings(&mut d);
    assert_eq!(first.len(), OBSERVE_PINGS);
    let public: SocketAddr = "198.18.2.2:4433".parse().unwrap();
    for (id, _) in &first {
        d.handle_response(*id, Response::Pong { observed: public }, t0, 0);
    }
    let _ = pings(&mut d);
    assert_eq!(d.poll_timeout(), Some(t0 + OBSERVE_INTERVAL));
    let t1 = t0 + Duration::from_secs(3);
    d.observe_soon(t1);
    assert_eq!(d.poll_timeout(), Some(t1), "asked now");
    d.handle_timeout(t1, 0);
    let again = pings(&mut d);
    assert_eq!(again.len(), OBSERVE_PINGS);
    // Not again within OBSERVE_RETRY.
    d.observe_soon(t1 + Duration::from_secs(1));
    assert!(d.poll_timeout() > Some(t1 + Duration::from_secs(1)));
    // One of them sees us elsewhere now: the next round asks twice as many.
    let moved: SocketAddr = "198.18.2.3:4433".parse().unwrap();
    d.handle_response(again[0].0, Response::Pong { observed: moved }, t1, 0);
    let t2 = t1 + shadowmesh_proto::dht::MOVED_SETTLE;
    d.handle_timeout(t2, 0);
    assert_eq!(pings(&mut d).len(), 2 * OBSERVE_PINGS);
}
