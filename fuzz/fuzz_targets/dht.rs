//! DHT RPCs: request and response decoders, peer-exchange contact lists, observed addresses, and the engine answering whatever decodes (with
//! real record verification), so a hostile peer's bytes go through every path a request takes.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use shadowmesh_crypto::record::DhtRecordCheck;
use shadowmesh_proto::dht::node::Dht;
use shadowmesh_proto::dht::wire::{Contact, Request, Response};
use shadowmesh_proto::PeerId;

thread_local! {
    static DHT: RefCell<Dht<DhtRecordCheck>> = RefCell::new({
        let me = Contact { id: PeerId([7; 32]), ed25519: [0; 32], addr: "127.0.0.1:4433".parse().unwrap() };
        let mut d = Dht::new(me, DhtRecordCheck, 1);
        for i in 0..50u8 {
            let mut id = [i; 32];
            id[31] = i.wrapping_mul(37);
            d.add_contact(Contact { id: PeerId(id), ed25519: [i; 32], addr: format!("127.0.0.1:{}", 5000 + i as u16).parse().unwrap() }, Duration::ZERO);
        }
        d
    });
}

fuzz_target!(|data: &[u8]| {
    // Peer exchange bodies (control stream) are contact lists too.
    if let Ok(list) = shadowmesh_proto::dht::wire::parse_contact_list(data, shadowmesh_proto::msg::PEERS_MAX) {
        assert!(list.len() <= shadowmesh_proto::msg::PEERS_MAX);
    }
    // A member's "I see you at" body (control stream) is one address, re-encoded exactly.
    if let Ok(a) = shadowmesh_proto::dht::wire::parse_addr(data) {
        let mut out = Vec::new();
        shadowmesh_proto::dht::wire::emit_addr(&a, &mut out);
        assert_eq!(out, data);
    }
    if let Ok(resp) = Response::parse(data) {
        let mut out = Vec::new();
        resp.emit(&mut out).unwrap();
        assert_eq!(out, data);
    }
    if let Ok(req) = Request::parse(data) {
        let mut out = Vec::new();
        req.emit(&mut out).unwrap();
        assert_eq!(out, data);
        let owned: Request<Arc<[u8]>> = match req {
            Request::Ping => Request::Ping,
            Request::FindNode { target } => Request::FindNode { target },
            Request::FindValue { key, owner, known_seq } => Request::FindValue { key, owner, known_seq },
            Request::Store { record } => Request::Store { record: record.into() },
        };
        let from = Contact { id: PeerId([9; 32]), ed25519: [0; 32], addr: "127.0.0.1:9999".parse().unwrap() };
        DHT.with(|d| {
            let _ = d.borrow_mut().handle_request(from, owned, Duration::from_secs(1), 1_800_000_000);
        });
    }
});
