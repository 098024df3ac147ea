//! The DHT engine against a lying peer, on an in-memory network with a hand-driven clock: a
//! node that answers every FIND_NODE with 20 contacts that do not exist (they never answer)
//! does not stop a lookup from finding the true closest nodes.

use std::collections::BTreeMap;
use std::time::Duration;

use shadowmesh_proto::dht::node::{Dht, LookupOutcome, Output, RecordCheck};
use shadowmesh_proto::dht::store::RecordMeta;
use shadowmesh_proto::dht::wire::{Contact, Response, StoreCode};
use shadowmesh_proto::dht::{K, REQUEST_TIMEOUT};
use shadowmesh_proto::PeerId;

struct NoRecords;
impl RecordCheck for NoRecords {
    type Record = Vec<u8>;
    fn check(&self, _: &Vec<u8>, _: u64) -> Result<RecordMeta, StoreCode> {
        Err(StoreCode::BadSignature)
    }
}

fn id(i: u32) -> PeerId {
    let mut x = (i as u64 + 7).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut out = [0u8; 32];
    for c in out.chunks_mut(8) {
        x ^= x >> 31;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        c.copy_from_slice(&x.to_be_bytes());
    }
    PeerId(out)
}

fn contact(i: u32) -> Contact {
    Contact {
        id: id(i),
        ed25519: [0; 32],
        addr: format!("127.0.0.1:{}", 10_000 + i).parse().unwrap(),
    }
}

#[test]
fn bogus_contacts_do_not_stop_a_lookup() {
    const N: u32 = 60;
    const LIAR: u32 = 1;
    let mut nodes: BTreeMap<u32, Dht<NoRecords>> = (0..N)
        .map(|i| (i, Dht::new(contact(i), NoRecords, i as u64)))
        .collect();
    // Everyone knows a ring of neighbours plus the liar, so the liar is asked early.
    for i in 0..N {
        let d = nodes.get_mut(&i).unwrap();
        for j in 1..=6 {
            d.add_contact(contact((i + j) % N), Duration::ZERO);
        }
        d.add_contact(contact(LIAR), Duration::ZERO);
    }
    let by_addr: BTreeMap<_, _> = (0..N).map(|i| (contact(i).addr, i)).collect();
    let mut now = Duration::from_secs(1);
    let target = [0x42u8; 32];
    nodes.get_mut(&0).unwrap().find_node(target, now).unwrap();
    let mut done: Option<LookupOutcome<Vec<u8>>> = None;
    let mut bogus_sent = 0;
    for _ in 0..200 {
        // Deliver everything node 0 (and, transitively, the others) wants sent, instantly.
        let mut progressed = true;
        while progressed {
            progressed = false;
            let outs: Vec<_> =
                std::iter::from_fn(|| nodes.get_mut(&0).unwrap().poll_output()).collect();
            for o in outs {
                progressed = true;
                match o {
                    Output::LookupDone(x) => done = Some(x),
                    Output::Observed(_) | Output::Moved => {}
                    Output::Send { to, id: rid, req } => {
                        let Some(&dst) = by_addr.get(&to.addr) else {
                            bogus_sent += 1; // a contact that does not exist: never answers
                            continue;
                        };
                        let resp = if dst == LIAR {
                            let contacts = (0..K as u32)
                                .map(|k| Contact {
                                    id: PeerId([k as u8; 32]),
                                    ed25519: [0; 32],
                                    addr: format!("192.0.2.1:{}", 1000 + k).parse().unwrap(),
                                })
                                .collect();
                            Some(Response::Nodes { contacts })
                        } else {
                            nodes
                                .get_mut(&dst)
                                .unwrap()
                                .handle_request(contact(0), req, now, 0)
                        };
                        if let Some(r) = resp {
                            nodes.get_mut(&0).unwrap().handle_response(rid, r, now, 0);
                        }
                    }
                }
            }
        }
        if done.is_some() {
            break;
        }
        now += REQUEST_TIMEOUT;
        nodes.get_mut(&0).unwrap().handle_timeout(now, 0);
    }
    let done = done.expect("the lookup ended");
    assert!(bogus_sent > 0, "the liar's contacts were tried");
    // The true closest honest nodes (excluding the asker and the liar) were found.
    let mut truth: Vec<_> = (2..N)
        .map(|i| (id(i).distance(&PeerId(target)), id(i)))
        .collect();
    truth.sort();
    let found: Vec<PeerId> = done.closest.iter().map(|c| c.id).collect();
    let hits = truth[..5].iter().filter(|(_, p)| found.contains(p)).count();
    assert_eq!(
        hits, 5,
        "the 5 closest honest nodes must be in the result: {found:?}"
    );
    assert!(
        !found.iter().any(|p| p.0[1..] == [p.0[0]; 31]),
        "no bogus contact in the result"
    );
}

/// Records are byte strings whose first 32 bytes are the storage key, the next 32 the owner and
/// the next 8 the sequence number (the real check with signatures lives in the crypto crate).
struct Plain;
impl RecordCheck for Plain {
    type Record = Vec<u8>;
    fn check(&self, r: &Vec<u8>, _: u64) -> Result<RecordMeta, StoreCode> {
        if r.len() < 72 {
            return Err(StoreCode::BadSignature);
        }
        Ok(RecordMeta {
            key: r[..32].try_into().unwrap(),
            owner: PeerId(r[32..64].try_into().unwrap()),
            seq: u64::from_be_bytes(r[64..72].try_into().unwrap()),
            expires_at: u64::MAX,
        })
    }
}

fn plain_record(key: [u8; 32], owner: PeerId, seq: u64) -> Vec<u8> {
    let mut r = key.to_vec();
    r.extend_from_slice(&owner.0);
    r.extend_from_slice(&seq.to_be_bytes());
    r
}

/// The owner answers FIND_VALUE for its own record even though it holds it for nobody else.
#[test]
fn the_owner_answers_for_its_own_record() {
    let me = contact(0);
    let mut d = Dht::new(me, Plain, 1);
    let key = [0x55; 32];
    let rec = plain_record(key, me.id, 7);
    d.publish(rec.clone(), 0, Duration::ZERO).unwrap();
    while d.poll_output().is_some() {}
    let ask = |d: &mut Dht<Plain>, known_seq| {
        d.handle_request(
            contact(3),
            shadowmesh_proto::dht::wire::Request::FindValue {
                key,
                owner: me.id,
                known_seq,
            },
            Duration::from_secs(1),
            0,
        )
    };
    assert!(matches!(ask(&mut d, 0), Some(Response::Value { record }) if record == rec));
    // Not newer than what the asker has: contacts instead.
    assert!(matches!(ask(&mut d, 7), Some(Response::Nodes { .. })));
}

/// A member that reaches us through a relay (its connection's address a local stand-in in
/// 240.0.0.0/8) is answered but never goes into the table, where others would be told of an
/// address none of them can dial.
#[test]
fn relayed_contacts_are_answered_and_not_learnt() {
    let mut d = Dht::new(contact(0), Plain, 1);
    let relayed = Contact {
        addr: shadowmesh_proto::relay::mapped(7),
        ..contact(5)
    };
    let r = d.handle_request(
        relayed,
        shadowmesh_proto::dht::wire::Request::Ping,
        Duration::from_secs(1),
        0,
    );
    assert!(matches!(r, Some(Response::Pong { .. })));
    assert!(!d.table().contains(&relayed.id));
    d.handle_request(
        contact(6),
        shadowmesh_proto::dht::wire::Request::Ping,
        Duration::from_secs(1),
        0,
    );
    assert!(d.table().contains(&contact(6).id), "a direct one is");
}

/// Delivers what every node wants sent, instantly, until nothing is left; a request for which
/// `lost(from, to)` holds is never delivered (it will time out). Returns the requests sent.
fn pump(
    nodes: &mut BTreeMap<u32, Dht<NoRecords>>,
    now: Duration,
    lost: &dyn Fn(u32, u32) -> bool,
) -> usize {
    let by_addr: BTreeMap<_, _> = nodes.keys().map(|&i| (contact(i).addr, i)).collect();
    let mut sent = 0;
    loop {
        let mut work = Vec::new();
        for (&i, d) in nodes.iter_mut() {
            while let Some(o) = d.poll_output() {
                if let Output::Send { to, id, req } = o {
                    work.push((i, by_addr[&to.addr], id, req));
                }
            }
        }
        if work.is_empty() {
            return sent;
        }
        for (from, to, rid, req) in work {
            sent += 1;
            if lost(from, to) {
                continue;
            }
            let resp = nodes
                .get_mut(&to)
                .unwrap()
                .handle_request(contact(from), req, now, 0);
            if let Some(r) = resp {
                nodes
                    .get_mut(&from)
                    .unwrap()
                    .handle_response(rid, r, now, 0);
            }
        }
    }
}

/// Nodes that start together: node 2 joins through the seed, which names node 1, whose
/// answer is lost (a connection still being set up). Node 2's join ends knowing only the seed
/// and node 1 never heard of node 2; nothing would ask again before the bucket refresh 15
/// minutes later. The lookup for our own id that a short table repeats after the join makes
/// them meet within seconds; a node whose table the join filled sends nothing more.
#[test]
fn a_young_network_meets_after_the_join() {
    use shadowmesh_proto::dht::REJOIN_FIRST;
    let mut nodes: BTreeMap<u32, Dht<NoRecords>> = (0..3)
        .map(|i| (i, Dht::new(contact(i), NoRecords, i as u64)))
        .collect();
    let mut now = Duration::from_secs(1);
    nodes.get_mut(&1).unwrap().add_contact(contact(0), now);
    nodes.get_mut(&1).unwrap().bootstrap(now).unwrap();
    pump(&mut nodes, now, &|_, _| false);
    nodes.get_mut(&2).unwrap().add_contact(contact(0), now);
    nodes.get_mut(&2).unwrap().bootstrap(now).unwrap();
    let early = |from: u32, to: u32| (from, to) == (2, 1);
    pump(&mut nodes, now, &early);
    now += REQUEST_TIMEOUT;
    nodes.get_mut(&2).unwrap().handle_timeout(now, 0);
    pump(&mut nodes, now, &early);
    assert!(
        !nodes[&1].table().contains(&id(2)),
        "node 1 never heard of 2"
    );
    // From here on nothing is lost.
    let mut met = None;
    while now < Duration::from_secs(60) {
        let next = nodes
            .values()
            .filter_map(|d| d.poll_timeout())
            .min()
            .unwrap();
        now = next.max(now + Duration::from_millis(1));
        for d in nodes.values_mut() {
            d.handle_timeout(now, 0);
        }
        pump(&mut nodes, now, &|_, _| false);
        if nodes[&1].table().contains(&id(2)) && nodes[&2].table().contains(&id(1)) {
            met = Some(now);
            break;
        }
    }
    let met = met.expect("nodes 1 and 2 meet");
    assert!(met <= Duration::from_secs(1) + REQUEST_TIMEOUT + REJOIN_FIRST + REJOIN_FIRST);

    // A node whose join filled its table (K contacts or more) does not look itself up again.
    let n = K as u32 + 5;
    let mut big: BTreeMap<u32, Dht<NoRecords>> = (0..n)
        .map(|i| (i, Dht::new(contact(i), NoRecords, i as u64)))
        .collect();
    let t0 = Duration::from_secs(1);
    for i in 1..n {
        big.get_mut(&i).unwrap().add_contact(contact(0), t0);
        big.get_mut(&i).unwrap().bootstrap(t0).unwrap();
        pump(&mut big, t0, &|_, _| false);
    }
    big.get_mut(&0).unwrap().add_contact(contact(1), t0);
    big.get_mut(&0).unwrap().bootstrap(t0).unwrap();
    pump(&mut big, t0, &|_, _| false);
    assert!(big[&0].table().len() >= K);
    let d = big.get_mut(&0).unwrap();
    d.handle_timeout(t0 + REJOIN_FIRST, 0);
    let sent = std::iter::from_fn(|| d.poll_output())
        .filter(|o| matches!(o, Output::Send { .. }))
        .count();
    assert_eq!(sent, 0, "a full table sends nothing at the rejoin time");
}
