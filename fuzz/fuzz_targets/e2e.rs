//! INIT, RESP and REKEY decoders, and the responder/rekey handlers on arbitrary bodies.
#![no_main]

use std::cell::RefCell;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use shadowmesh_crypto::session::{initiate, respond, Session};
use shadowmesh_crypto::Identity;
use shadowmesh_proto::msg::{Init, Rekey, Resp};

struct Fixture {
    a: Identity,
    b: Identity,
    responder: Session,
    now: Duration,
}

thread_local! {
    static FX: RefCell<Fixture> = RefCell::new({
        let now = Duration::from_secs(1);
        let a = Identity::generate();
        let b = Identity::generate();
        let (_st, init) = initiate(&a, &b.peer_id(), &[1; 32]);
        let (responder, _) = respond(&b, &init, &a.peer_keys(), &[1; 32], &[2; 32], now).unwrap();
        Fixture { a, b, responder, now }
    });
}

fuzz_target!(|data: &[u8]| {
    let _ = Init::parse(data);
    let _ = Resp::parse(data);
    let _ = Rekey::parse(data);
    FX.with(|f| {
        let f = &mut *f.borrow_mut();
        assert!(respond(&f.b, data, &f.a.peer_keys(), &[1; 32], &[2; 32], f.now).is_err());
        assert!(f.responder.handle_rekey_init(f.now, data).is_err());
    });
});
