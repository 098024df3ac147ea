//! SMSH frames: the header decoder, the receiver-index peek the fast lane demultiplexes by, and
//! the whole receive path of a live session (parse, index, replay check, decrypt, mark) on
//! arbitrary datagrams, also with the session's own index written in (so that the input
//! reaches past the index check).
#![no_main]

use std::cell::RefCell;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use shadowmesh_crypto::session::{initiate, respond, Session};
use shadowmesh_crypto::Identity;
use shadowmesh_proto::consts::FRAME_HEADER_LEN;
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
    let peeked = Header::peek_receiver(data);
    if let Ok(h) = Header::parse(data) {
        let mut out = [0u8; FRAME_HEADER_LEN];
        h.emit(&mut out);
        assert_eq!(&out[..], &data[..FRAME_HEADER_LEN]);
        assert_eq!(peeked, Some(h.receiver));
    }
    SESSION.with(|s| {
        let (session, now) = &mut *s.borrow_mut();
        // Random bytes must never authenticate, for this session or any.
        let mut buf = data.to_vec();
        assert!(session.open(*now, &mut buf).is_err());
        if let Some(index) = buf.get_mut(8..12) {
            index.copy_from_slice(&session.index().to_be_bytes());
            assert!(session.open(*now, &mut buf).is_err());
        }
    });
});
