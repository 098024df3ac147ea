//! Relays kept by a member behind a NAT, and introductions asked of the relays a member names.

use super::*;

/// Member `n` linked, relaying for members when `relays`, its QUIC round trip `rtt_ms`.
fn up_relay(e: &mut Engine<TestLink>, t: Duration, n: u8, relays: bool, rtt_ms: u64) {
    let mut l = TestLink::new(n as usize, 0, 10 + n as u32, t);
    l.paths.quic_seen(at(n), Duration::from_millis(rtt_ms));
    let (mut p, ed, seq) = record(n, &[]);
    p.relay = relays;
    assert!(e.handle_link_up(t, 0, pid(n), l, (p, ed, seq), at(n)));
}

fn dials(out: &[Output<TestLink>]) -> Vec<PeerId> {
    out.iter()
        .filter_map(|o| match o {
            Output::Dial { pid, .. } => Some(*pid),
            _ => None,
        })
        .collect()
}

#[test]
fn a_member_behind_a_nat_keeps_the_two_relays_of_lowest_round_trip() {
    let mut e = engine(vec![]);
    up_relay(&mut e, S(0), 1, true, 40);
    up_relay(&mut e, S(0), 2, true, 10);
    up_relay(&mut e, S(0), 3, true, 20);
    up_relay(&mut e, S(0), 4, false, 1);
    drain(&mut e);
    e.handle_timeout(S(0));
    assert!(e.kept_relays().is_empty(), "not behind a NAT");
    e.set_keep_relays(S(1), true);
    assert_eq!(e.poll_timeout(), Some(S(1)));
    e.handle_timeout(S(1));
    assert_eq!(e.kept_relays(), [pid(2), pid(3)], "lowest round trip first");
    assert!(dials(&drain(&mut e)).is_empty());

    // A relay of lower round trip does not displace one kept (each change re-signs the record).
    up_relay(&mut e, S(2), 5, true, 1);
    drain(&mut e);
    e.handle_timeout(S(1) + KEEP_CHECK);
    assert_eq!(e.kept_relays(), [pid(2), pid(3)]);

    // One lost is replaced by the best linked one; with none left to link, the lost are
    // redialled, each once per KEEP_REDIAL.
    e.handle_link_down(&pid(2), 2);
    e.handle_timeout(S(1) + KEEP_CHECK * 2);
    assert_eq!(e.kept_relays(), [pid(3), pid(5)]);
    assert!(dials(&drain(&mut e)).is_empty(), "two are linked");
    for n in [1, 3, 5] {
        e.handle_link_down(&pid(n), n as usize);
    }
    let t = S(1) + KEEP_CHECK * 3;
    e.handle_timeout(t);
    assert!(e.kept_relays().is_empty());
    let d = dials(&drain(&mut e));
    assert_eq!(d.len(), RELAYS_KEPT, "{d:?}");
    assert!(!d.contains(&pid(4)), "not a relay");
    for p in &d {
        e.handle_dial_end(p);
    }
    e.handle_timeout(t + KEEP_CHECK);
    let again = dials(&drain(&mut e));
    assert!(
        again.iter().all(|p| !d.contains(p)),
        "the others first: {again:?}"
    );
    for p in &again {
        e.handle_dial_end(p);
    }
    e.handle_timeout(t + KEEP_REDIAL);
    assert!(!dials(&drain(&mut e)).is_empty(), "again after KEEP_REDIAL");

    e.set_keep_relays(t + KEEP_REDIAL, false);
    up_relay(&mut e, t + KEEP_REDIAL, 1, true, 5);
    drain(&mut e);
    e.handle_timeout(t + KEEP_REDIAL + KEEP_CHECK);
    assert!(e.kept_relays().is_empty());
    assert!(dials(&drain(&mut e)).is_empty());
}

#[test]
fn an_introduction_is_asked_first_of_the_relays_the_member_names() {
    let mut e = engine(vec![]);
    up_relay(&mut e, S(0), 1, true, 10);
    up_relay(&mut e, S(0), 2, true, 10);
    up_relay(&mut e, S(0), 3, false, 10);
    e.handle_control(S(0), pid(3), 3, MsgType::Relay, &[]);
    up_relay(&mut e, S(0), 6, true, 10);
    // Member 5 keeps relays 3 and 6 (3 said so on its link alone); it publishes no address,
    // and we reached it through a circuit (which leaves no address to dial either).
    let (mut p, ed, seq) = record(5, &[]);
    p.addrs.clear();
    p.relays = vec![pid(3), pid(6)];
    let l = TestLink::new(5, 0, 15, S(0));
    let circuit = shadowmesh_proto::relay::mapped(1);
    assert!(e.handle_link_up(S(0), 0, pid(5), l, (p, ed, seq), circuit));
    drain(&mut e);
    e.handle_link_down(&pid(5), 5);
    e.handle_link_down(&pid(6), 6);
    e.route(S(10), ipv4_of(5), &[0]);
    assert!(dials(&drain(&mut e)).is_empty(), "nowhere to dial");
    // With nowhere to dial, the introduction is asked at once (not INTRODUCE_AFTER later).
    assert!(e.poll_timeout() <= Some(S(10)));
    e.handle_timeout(S(10));
    let out = drain(&mut e);
    let asked: Vec<PeerId> = contacts_in(&out, MsgType::IntroduceReq)
        .iter()
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(asked, [pid(3), pid(1)], "its relay first, then a relay");
    assert_eq!(dials(&out), [pid(6)], "its other relay, which we lost");
    // That dial fails: relay 6 linked later is not asked (the introduction is long over).
    e.handle_dial_end(&pid(6));
    up_relay(&mut e, S(11), 6, true, 10);
    assert!(contacts_in(&drain(&mut e), MsgType::IntroduceReq).is_empty());
    // Both relays it names are linked: both are asked.
    e.handle_timeout(S(15));
    drain(&mut e);
    e.route(S(22), ipv4_of(5), &[0]);
    e.handle_timeout(S(22));
    let asked = contacts_in(&drain(&mut e), MsgType::IntroduceReq);
    let who: Vec<PeerId> = asked.iter().map(|(p, _)| *p).collect();
    assert_eq!(who, [pid(3), pid(6)]);
    // Relay 6 lost again: dialled (KEEP_REDIAL after the last), and asked once linked.
    e.handle_link_down(&pid(6), 6);
    e.handle_timeout(S(27));
    drain(&mut e);
    e.route(S(45), ipv4_of(5), &[0]);
    e.handle_timeout(S(45));
    let out = drain(&mut e);
    assert_eq!(dials(&out), [pid(6)]);
    up_relay(&mut e, S(45), 6, true, 10);
    let asked = contacts_in(&drain(&mut e), MsgType::IntroduceReq);
    assert_eq!(asked.len(), 1);
    assert_eq!((asked[0].0, asked[0].1.id), (pid(6), pid(5)));
}
