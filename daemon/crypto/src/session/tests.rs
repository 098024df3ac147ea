use super::*;
use std::time::Duration;

fn pair(now: Duration) -> (Session, Session) {
    let a = Identity::generate();
    let b = Identity::generate();
    let nk = [5u8; 32];
    let binding = [1u8; 32];
    let (st, init) = initiate(&a, &b.peer_id(), &binding);
    let (sb, resp) = respond(&b, &init, &a.peer_keys(), &binding, &nk, now).unwrap();
    let sa = st.finish(&resp, &b.peer_keys(), &nk, now).unwrap();
    (sa, sb)
}

fn frame(s: &mut Session, now: Duration, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; payload.len() + FRAME_OVERHEAD];
    f[FRAME_HEADER_LEN..FRAME_HEADER_LEN + payload.len()].copy_from_slice(payload);
    s.seal(now, FrameType::Data, &mut f).unwrap();
    f
}

#[test]
fn both_directions_and_replay() {
    let t0 = Duration::from_secs(1000);
    let (mut a, mut b) = pair(t0);
    let mut f = frame(&mut a, t0, b"ping");
    let copy = f.clone();
    assert_eq!(b.open(t0, &mut f).unwrap().1, b"ping");
    let mut again = copy.clone();
    assert!(matches!(
        b.open(t0, &mut again),
        Err(Error::Wire(shadowmesh_proto::Error::Replayed(0)))
    ));
    let mut g = frame(&mut b, t0, b"pong");
    assert_eq!(a.open(t0, &mut g).unwrap().1, b"pong");
    // A's own frame does not open at A: it names B's session, and with A's index written in
    // its place the tag fails (the keys differ per direction, and the header is covered).
    let mut own = frame(&mut a, t0, b"x");
    assert_eq!(
        a.open(t0, &mut own.clone()).unwrap_err(),
        Error::Wire(shadowmesh_proto::Error::InvalidField("receiver index"))
    );
    own[8..12].copy_from_slice(&a.index().to_be_bytes());
    assert_eq!(a.open(t0, &mut own).unwrap_err(), Error::Decrypt);
    assert_eq!(b.stats.replayed, 1);
}

#[test]
fn too_old_and_forged_frames_are_typed_errors() {
    let t0 = Duration::from_secs(1000);
    let (mut a, mut b) = pair(t0);
    let first = frame(&mut a, t0, b"first");
    for _ in 0..3000 {
        let mut f = frame(&mut a, t0, b"x");
        b.open(t0, &mut f).unwrap();
    }
    // Never delivered, now far behind the window: refused before decryption.
    let mut old = first.clone();
    assert!(matches!(
        b.open(t0, &mut old),
        Err(Error::Wire(shadowmesh_proto::Error::Replayed(0)))
    ));
    // Truncated and padded frames.
    let mut f = frame(&mut a, t0, b"abc");
    let n = f.len();
    assert!(matches!(
        b.open(t0, &mut f[..n - 1]),
        Err(Error::Wire(shadowmesh_proto::Error::Truncated { .. }))
    ));
    let mut g = f.clone();
    g.push(0);
    assert!(matches!(
        b.open(t0, &mut g),
        Err(Error::Wire(shadowmesh_proto::Error::TrailingBytes {
            extra: 1
        }))
    ));
    // A forged frame does not advance the window: the genuine one still opens.
    let mut forged = f.clone();
    forged[FRAME_HEADER_LEN + 1] ^= 0x80;
    assert_eq!(b.open(t0, &mut forged).unwrap_err(), Error::Decrypt);
    assert_eq!(b.open(t0, &mut f).unwrap().1, b"abc");
}

#[test]
fn wrong_binding_or_network_key_fails() {
    let t0 = Duration::from_secs(1000);
    let a = Identity::generate();
    let b = Identity::generate();
    let (st, init) = initiate(&a, &b.peer_id(), &[1; 32]);
    // Bound to another TLS session: the responder refuses the signature.
    assert_eq!(
        respond(&b, &init, &a.peer_keys(), &[2; 32], &[5; 32], t0).unwrap_err(),
        Error::BadEd25519Signature
    );
    // Different network keys: both sides "succeed" but derive different keys.
    let (mut sb, resp) = respond(&b, &init, &a.peer_keys(), &[1; 32], &[6; 32], t0).unwrap();
    let mut sa = st.finish(&resp, &b.peer_keys(), &[5; 32], t0).unwrap();
    let mut f = frame(&mut sa, t0, b"hi");
    assert_eq!(sb.open(t0, &mut f).unwrap_err(), Error::Decrypt);
}

#[test]
fn rekey_switches_phase_and_old_keys_expire() {
    let t0 = Duration::from_secs(1000);
    let (mut a, mut b) = pair(t0);
    let t1 = t0 + REKEY_AFTER_TIME;
    assert_eq!(
        b.start_rekey(t1).unwrap_err(),
        Error::BadRekey,
        "only the initiator drives rekeys"
    );
    // A frame sealed on the old key, in flight during the rekey.
    let mut in_flight = frame(&mut a, t1, b"old");
    let init = a.start_rekey(t1).unwrap();
    assert_eq!(a.rekey_started(), Some(t1));
    assert_eq!(
        a.start_rekey(t1).unwrap_err(),
        Error::BadRekey,
        "one at a time"
    );
    let resp = b.handle_rekey_init(t1, &init).unwrap();
    // B still sends on phase 0 until it sees A use the new keys.
    let mut f = frame(&mut b, t1, b"b-old");
    assert!(!Header::parse(&f).unwrap().key_phase);
    assert_eq!(a.open(t1, &mut f).unwrap().1, b"b-old");
    a.handle_rekey_resp(t1, &resp).unwrap();
    assert_eq!(a.rekey_started(), None);
    assert_eq!(a.send_key(), Some((t1, 0)));
    let mut f = frame(&mut a, t1, b"new");
    assert!(Header::parse(&f).unwrap().key_phase);
    assert_eq!(b.open(t1, &mut f).unwrap().1, b"new");
    let mut f = frame(&mut b, t1, b"b-new");
    assert!(
        Header::parse(&f).unwrap().key_phase,
        "B switched after A's first new frame"
    );
    assert_eq!(a.open(t1, &mut f).unwrap().1, b"b-new");
    // The old-phase frame still opens during the overlap...
    let mut late = in_flight.clone();
    assert_eq!(b.open(t1, &mut late).unwrap().1, b"old");
    // ...but not once the old keys are older than REJECT_AFTER_TIME.
    let t2 = t0 + REJECT_AFTER_TIME + Duration::from_secs(1);
    let mut old = frame_phase0_copy(&mut in_flight);
    assert_eq!(b.open(t2, &mut old).unwrap_err(), Error::NoKey);
    assert_eq!((a.epoch(), b.epoch()), (1, 1));
    // A replayed or forged rekey message is refused.
    assert_eq!(b.handle_rekey_init(t1, &init).unwrap_err(), Error::BadRekey);
    let mut forged = a.start_rekey(t1).unwrap();
    let n = forged.len();
    forged[n - 1] ^= 1;
    assert_eq!(
        b.handle_rekey_init(t1, &forged).unwrap_err(),
        Error::BadRekey
    );
}

fn frame_phase0_copy(f: &mut [u8]) -> Vec<u8> {
    // Bump the sequence number so the replay window does not decide first.
    let mut g = f.to_vec();
    g[19] = g[19].wrapping_add(1);
    g
}

#[test]
fn expired_send_key_refuses_to_seal() {
    let t0 = Duration::from_secs(1000);
    let (mut a, _) = pair(t0);
    let mut f = vec![0u8; 10 + FRAME_OVERHEAD];
    assert_eq!(
        a.seal(t0 + REJECT_AFTER_TIME, FrameType::Data, &mut f),
        Err(Error::NoKey)
    );
    assert_eq!(a.last_sent(), t0, "a refused seal is not a send");
}

#[test]
fn frames_carry_the_receivers_index() {
    let t0 = Duration::from_secs(1);
    let (mut a, mut b) = pair(t0);
    assert_eq!((a.peer_index(), b.peer_index()), (b.index(), a.index()));
    let f = frame(&mut a, t0, b"to b");
    assert_eq!(Header::parse(&f).unwrap().receiver, b.index());
    // Another index in the header: refused before any key is tried, and the tag covers
    // the header, so changing it back is all a forger can do.
    let mut other = f.clone();
    other[8] ^= 0x80;
    assert_eq!(
        b.open(t0, &mut other).unwrap_err(),
        Error::Wire(shadowmesh_proto::Error::InvalidField("receiver index"))
    );
    assert_eq!(b.stats.rejected, 1);
    let mut f = f;
    assert_eq!(b.open(t0, &mut f).unwrap().1, b"to b");
    // A third session with the same peer has other indexes.
    let (c, _) = pair(t0);
    assert_ne!(c.index(), a.index());
}

#[test]
fn reports_when_it_last_sent_and_received() {
    let t0 = Duration::from_secs(5);
    let (mut a, mut b) = pair(t0);
    let t1 = t0 + Duration::from_secs(3);
    let mut f = frame(&mut a, t1, b"x");
    assert_eq!((a.last_sent(), a.send_key()), (t1, Some((t0, 1))));
    let t2 = t1 + Duration::from_secs(1);
    let mut forged = f.clone();
    forged[FRAME_HEADER_LEN] ^= 1;
    assert!(b.open(t2, &mut forged).is_err());
    assert_eq!(
        b.last_received(),
        t0,
        "a refused frame is not a sign of life"
    );
    b.open(t2, &mut f).unwrap();
    assert_eq!(b.last_received(), t2);
}

#[test]
fn the_first_unanswered_data_frame_is_remembered_until_something_opens() {
    let t0 = Duration::from_secs(5);
    let (mut a, mut b) = pair(t0);
    assert_eq!(a.unanswered_since(), None);
    // A keepalive starts nothing; data does, and more data keeps the first time.
    let mut k = vec![0u8; FRAME_OVERHEAD];
    a.seal(t0, FrameType::Keepalive, &mut k).unwrap();
    assert_eq!(a.unanswered_since(), None);
    let t1 = t0 + Duration::from_secs(1);
    let _ = frame(&mut a, t1, b"x");
    let _ = frame(&mut a, t1 + Duration::from_secs(2), b"y");
    assert_eq!(a.unanswered_since(), Some(t1));
    // A forged answer clears nothing; a real one (a keepalive too) does.
    let mut back = vec![0u8; FRAME_OVERHEAD];
    b.seal(t1, FrameType::Keepalive, &mut back).unwrap();
    let mut forged = back.clone();
    forged[FRAME_HEADER_LEN] ^= 1;
    assert!(a.open(t1, &mut forged).is_err());
    assert_eq!(a.unanswered_since(), Some(t1));
    a.open(t1, &mut back).unwrap();
    assert_eq!(a.unanswered_since(), None);
}

/// One signature per side over HELLO and INIT (RESP): the sessions agree, every byte of either
/// HELLO is covered, and the flight's signatures are not interchangeable with the plain ones.
#[test]
fn a_flight_signs_hello_and_init_together() {
    let t0 = Duration::from_secs(1000);
    let (a, b) = (Identity::generate(), Identity::generate());
    let (nk, exporter) = ([5u8; 32], [7u8; 32]);
    let hello_a = b"the dialler's HELLO".to_vec();
    let hello_b = b"the listener's HELLO".to_vec();
    let (st, init) = initiate_after_hello(&a, &b.peer_id(), &exporter, &hello_a);
    let flight = Flight {
        peer_hello: &hello_a,
        my_hello: &hello_b,
    };

    // The dialler's HELLO is proven by its INIT: a changed byte, another exporter, or the INIT
    // taken as a plain one all fail.
    let mut forged = hello_a.clone();
    forged[4] ^= 1;
    let bad = |r: Result<(Session, Vec<u8>), Error>| {
        assert!(matches!(
            r.map(|_| ()),
            Err(Error::BadEd25519Signature | Error::BadMlDsaSignature)
        ))
    };
    bad(respond_in_flight(
        &b,
        &init,
        &a.peer_keys(),
        &exporter,
        &nk,
        Flight {
            peer_hello: &forged,
            my_hello: &hello_b,
        },
        t0,
    ));
    bad(respond_in_flight(
        &b,
        &init,
        &a.peer_keys(),
        &[8; 32],
        &nk,
        flight,
        t0,
    ));
    bad(respond(&b, &init, &a.peer_keys(), &exporter, &nk, t0));
    assert!(verify_init_after_hello(&b, &init, &a.peer_keys(), &exporter, &forged).is_err());
    verify_init_after_hello(&b, &init, &a.peer_keys(), &exporter, &hello_a).unwrap();

    let (mut sb, resp) =
        respond_in_flight(&b, &init, &a.peer_keys(), &exporter, &nk, flight, t0).unwrap();
    // The listener's HELLO is proven by its RESP in the same way.
    let mut forged_b = hello_b.clone();
    forged_b[0] ^= 0x80;
    let (st2, init2) = initiate_after_hello(&a, &b.peer_id(), &exporter, &hello_a);
    let (_, resp2) =
        respond_in_flight(&b, &init2, &a.peer_keys(), &exporter, &nk, flight, t0).unwrap();
    assert!(st2
        .finish_after_hello(&resp2, &forged_b, &b.peer_keys(), &nk, t0)
        .is_err());
    let mut sa = st
        .finish_after_hello(&resp, &hello_b, &b.peer_keys(), &nk, t0)
        .unwrap();
    let mut f = frame(&mut sa, t0, b"one flight");
    assert_eq!(sb.open(t0, &mut f).unwrap().1, b"one flight");
    let mut g = frame(&mut sb, t0, b"back");
    assert_eq!(sa.open(t0, &mut g).unwrap().1, b"back");
}
