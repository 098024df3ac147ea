//! SMSH frames: the header decoder, and the whole receive path of a live session (parse,
//! replay check, decrypt, mark) on arbitrary datagrams.
#![no_main]

use std::cell::RefCell;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use shadowmesh_crypto::session::{initiate, respond, Session};
use shadowmesh_crypto::Identity;
use shadowmesh_proto::frame::Header;

thread_local! {
    static SESSION: RefCell<(Session, Duration)> = RefCell::new({
        let now = Duration::from_secs(1);
        let a = Identity::generate();
        let b = Identity::generate();
        let (st, init) = initiate(&a, &b.peer_id(), &[1; 32]);
        let (sb, resp) = respond(&b, &init, &a.peer_keys(), &[1; 32], &[2; 32], now).unwrap();
        drop(st.finish(&resp, &b.peer_keys(), &[2; 32], now).unwrap());
        (sb, now)
    });
}

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        let mut out = [0u8; 18];
        h.emit(&mut out);
        assert_eq!(&out[..17], &data[..17]);
    }
    let mut buf = data.to_vec();
    SESSION.with(|s| {
        let (session, now) = &mut *s.borrow_mut();
        // Random bytes must never authenticate.
        assert!(session.open(*now, &mut buf).is_err());
    });
});
