//! The DHT engine with real record signatures: what STORE refuses, and what FIND_VALUE ignores.

use std::sync::Arc;
use std::time::Duration;

use shadowmesh_crypto::record::{build_record, DhtRecordCheck, RecordParams};
use shadowmesh_crypto::Identity;
use shadowmesh_proto::dht::node::{Dht, Output};
use shadowmesh_proto::dht::wire::{Contact, Request, Response, StoreCode};
use shadowmesh_proto::record::Payload;
use shadowmesh_proto::PeerId;

const NOW: u64 = 1_800_000_000;
const NK: [u8; 32] = [3; 32];

fn contact(id: PeerId, port: u16) -> Contact {
    Contact {
        id,
        ed25519: [0; 32],
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
    }
}

fn record(id: &Identity, seq: u64, issued: u64, expires: u64) -> Arc<[u8]> {
    let p = Payload::default();
    build_record(
        id,
        &NK,
        &RecordParams {
            seq,
            issued_at: issued,
            expires_at: expires,
            payload: &p,
        },
    )
    .unwrap()
    .into()
}

fn store(d: &mut Dht<DhtRecordCheck>, from: Contact, rec: Arc<[u8]>) -> StoreCode {
    match d.handle_request(
        from,
        Request::Store { record: rec },
        Duration::from_secs(1),
        NOW,
    ) {
        Some(Response::Stored(c)) => c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn store_refuses_forged_stale_expired_and_oversized() {
    let holder = Identity::generate();
    let mut d = Dht::new(contact(holder.peer_id(), 1), DhtRecordCheck, 1);
    let owner = Identity::generate();
    let from = contact(owner.peer_id(), 2);

    let v2 = record(&owner, 2, NOW, NOW + 3600);
    assert_eq!(store(&mut d, from, v2.clone()), StoreCode::Ok);
    // Stale: a valid older record.
    assert_eq!(
        store(&mut d, from, record(&owner, 1, NOW, NOW + 3600)),
        StoreCode::Outdated
    );
    // Forged: one flipped bit anywhere in the body or a signature.
    for at in [40, 2000, v2.len() - 100, v2.len() - 1] {
        let mut f = v2.to_vec();
        f[at] ^= 1;
        assert_eq!(
            store(&mut d, from, f.into()),
            StoreCode::BadSignature,
            "bit at {at}"
        );
    }
    // Expired, and expiring too far ahead.
    assert_eq!(
        store(&mut d, from, record(&owner, 3, NOW - 7200, NOW - 1)),
        StoreCode::Expired
    );
    assert_eq!(
        store(&mut d, from, record(&owner, 4, NOW, NOW + 25 * 3600)),
        StoreCode::Expired
    );
    // Oversized.
    let big: Arc<[u8]> = vec![0u8; shadowmesh_proto::consts::RECORD_MAX_LEN + 1].into();
    assert_eq!(store(&mut d, from, big), StoreCode::TooBig);
    assert_eq!(d.store().len(), 1);
    assert_eq!(d.stats.stores_refused, 8);
}

/// A node looks up owner A's record; the only peer it asks answers with a valid record of
/// owner B (a different storage key). The engine must ignore it.
#[test]
fn find_value_ignores_records_for_other_keys() {
    let me = Identity::generate();
    let liar = Identity::generate();
    let a = Identity::generate();
    let b = Identity::generate();
    let mut d = Dht::new(contact(me.peer_id(), 1), DhtRecordCheck, 1);
    d.add_contact(contact(liar.peer_id(), 2), Duration::ZERO);
    let key_a = shadowmesh_crypto::storage_key(&NK, &a.peer_id());
    d.find_value(key_a, a.peer_id(), 0, Duration::ZERO).unwrap();
    let Some(Output::Send { id, .. }) = d.poll_output() else {
        panic!("no request")
    };
    d.handle_response(
        id,
        Response::Value {
            record: record(&b, 9, NOW, NOW + 3600),
        },
        Duration::from_millis(10),
        NOW,
    );
    let done = lookup_done(&mut d);
    assert!(
        done.record.is_none(),
        "a record for another key must not be returned"
    );
    assert_eq!(d.stats.bogus_records, 1);

    // The genuine one is accepted.
    d.find_value(key_a, a.peer_id(), 0, Duration::from_secs(1))
        .unwrap();
    let Some(Output::Send { id, .. }) = d.poll_output() else {
        panic!("no request")
    };
    d.handle_response(
        id,
        Response::Value {
            record: record(&a, 5, NOW, NOW + 3600),
        },
        Duration::from_secs(1),
        NOW,
    );
    let done = lookup_done(&mut d);
    assert!(done.record.is_some());
}

fn lookup_done(
    d: &mut Dht<DhtRecordCheck>,
) -> shadowmesh_proto::dht::node::LookupOutcome<Arc<[u8]>> {
    std::iter::from_fn(|| d.poll_output())
        .find_map(|o| match o {
            Output::LookupDone(x) => Some(x),
            _ => None,
        })
        .expect("lookup ends")
}

#[test]
fn flood_from_one_address_is_rate_limited_while_others_are_served() {
    let me = Identity::generate();
    let mut d = Dht::new(contact(me.peer_id(), 1), DhtRecordCheck, 1);
    let flooder = contact(PeerId([1; 32]), 2);
    let other = contact(PeerId([2; 32]), 3);
    let t = Duration::from_secs(10);
    let answered = (0..1000)
        .filter(|_| d.handle_request(flooder, Request::Ping, t, NOW).is_some())
        .count();
    assert!(answered < 100, "flood answered {answered} times");
    assert!(
        d.handle_request(other, Request::Ping, t, NOW).is_some(),
        "others still served"
    );
    assert!(d.stats.rate_limited >= 900);
    // The budget refills over time.
    assert!(d
        .handle_request(flooder, Request::Ping, t + Duration::from_secs(2), NOW)
        .is_some());
}

/// A node that holds the record itself answers its own lookup with it.
#[test]
fn find_value_answers_from_the_local_store() {
    let me = Identity::generate();
    let owner = Identity::generate();
    let mut d = Dht::new(contact(me.peer_id(), 1), DhtRecordCheck, 1);
    assert_eq!(
        store(
            &mut d,
            contact(owner.peer_id(), 2),
            record(&owner, 3, NOW, NOW + 3600)
        ),
        StoreCode::Ok
    );
    let key = shadowmesh_crypto::storage_key(&NK, &owner.peer_id());
    d.find_value(key, owner.peer_id(), 0, Duration::from_secs(2))
        .unwrap();
    // The one contact we know (the owner, who stored it) answers with nothing useful.
    let Some(Output::Send { id, .. }) = d.poll_output() else {
        panic!("no request")
    };
    d.handle_response(
        id,
        Response::Nodes { contacts: vec![] },
        Duration::from_secs(2),
        NOW,
    );
    let done = lookup_done(&mut d);
    assert!(
        done.record.is_some(),
        "our own copy is the answer when nobody else has it"
    );
}

/// A STORE flood from throwaway identities on one host: at most a sixteenth of the store is
/// theirs, the records held before survive, and other hosts still store.
#[test]
fn a_store_flood_from_throwaway_identities_leaves_the_real_records() {
    let holder = Identity::generate();
    let mut d = Dht::new(contact(holder.peer_id(), 1), DhtRecordCheck, 1);
    let owner = Identity::generate();
    let real = record(&owner, 7, NOW, NOW + 3600);
    assert_eq!(
        store(&mut d, contact(owner.peer_id(), 2), real),
        StoreCode::Ok
    );
    let mut ok = 0;
    for i in 0..100u16 {
        let junk = Identity::generate();
        // One host (one IP), each identity from its own port: the rate limiter lets each in.
        let code = store(
            &mut d,
            contact(junk.peer_id(), 10_000 + i),
            record(&junk, 1, NOW, NOW + 3600),
        );
        ok += (code == StoreCode::Ok) as usize;
    }
    // (Fewer than the quota when the flooders, now in our table, are closer to some keys.)
    assert!(ok <= shadowmesh_proto::dht::store::MAX_PER_SOURCE, "{ok}");
    let key = shadowmesh_crypto::storage_key(&NK, &owner.peer_id());
    assert!(d.store().get(&key, &owner.peer_id(), 0).is_some());
    assert_eq!(d.store().len(), 1 + ok);
}

/// A FIND_NODE answer that names a real peer at an attacker's address and key: the request
/// to it travels over the existing connection to the real peer, and the table learns the
/// connection's address and key, never the ones in the answer; failures at the made-up address
/// do not evict the real entry.
#[test]
fn poisoned_contacts_do_not_replace_or_evict_real_entries() {
    let me = Identity::generate();
    let liar = Identity::generate();
    let real = Identity::generate();
    let mut d = Dht::new(contact(me.peer_id(), 1), DhtRecordCheck, 1);
    let real_c = Contact {
        id: real.peer_id(),
        ed25519: [7; 32],
        addr: "192.0.2.7:4433".parse().unwrap(),
    };
    let evil = Contact {
        id: real.peer_id(),
        ed25519: [6; 32],
        addr: "203.0.113.66:4433".parse().unwrap(),
    };
    d.add_contact(contact(liar.peer_id(), 2), Duration::ZERO);
    let entry = |d: &Dht<DhtRecordCheck>| {
        d.table()
            .entries()
            .find(|e| e.contact.id == real.peer_id())
            .map(|e| e.contact)
    };
    let t = |ms| Duration::from_millis(ms);
    for round in 0..3u64 {
        d.find_node(real.peer_id().0, t(round * 100)).unwrap();
        // Everyone asked answers: the liar with the poisoned contact; the real peer (asked at
        // the made-up address) over its real connection the first time, then the made-up
        // address fails.
        let mut asked_evil = false;
        for step in 0..4 {
            let now = t(round * 100 + 10 * (step + 1));
            let mut sends = vec![];
            while let Some(o) = d.poll_output() {
                if let Output::Send { id, to, .. } = o {
                    sends.push((id, to));
                }
            }
            for (id, to) in sends {
                if to.id == liar.peer_id() {
                    let contacts = vec![evil];
                    d.handle_response(id, Response::Nodes { contacts }, now, NOW);
                } else if to == evil && round == 0 {
                    asked_evil = true;
                    let nodes = Response::Nodes { contacts: vec![] };
                    d.handle_response_via(id, real_c, nodes, now, NOW);
                } else if to == evil {
                    asked_evil = true;
                    d.handle_failure(id, now);
                } else {
                    d.handle_response(id, Response::Nodes { contacts: vec![] }, now, NOW);
                }
            }
        }
        if round == 0 {
            assert!(
                asked_evil,
                "the lookup asks the named peer at the made-up address"
            );
        }
        assert_eq!(
            entry(&d),
            Some(real_c),
            "round {round}: the real entry, as proven"
        );
    }
}
