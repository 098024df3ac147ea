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
