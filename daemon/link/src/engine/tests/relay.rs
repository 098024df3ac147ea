//! Relays: circuits opened as introductions are made, the ends told, limits refused, and a
//! direct link replacing a relayed one.

use super::*;
use crate::paths::Paths;
use shadowmesh_proto::relay::{mapped, Circuit, CircuitStatus};

/// A link to member `n` at `at(n)` (or `addr`).
fn link_at(id: usize, n: u8, addr: SocketAddr, t: Duration) -> TestLink {
    let mut l = TestLink::new(id, 0, 10 + n as u32, t);
    l.paths = Paths::new(addr);
    l
}

fn circuits_in(out: &[Output<TestLink>]) -> Vec<(PeerId, Circuit)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Control(p, MsgType::Circuit, b) => Some((*p, Circuit::parse(b).unwrap())),
            _ => None,
        })
        .collect()
}

fn ask(e: &mut Engine<TestLink>, t: Duration, from: u8, to: u8) -> Vec<Output<TestLink>> {
    let req = contact_body(&[Contact {
        id: pid(to),
        ed25519: [to; 32],
        addr: at(to),
    }]);
    e.handle_control(t, pid(from), from as usize, MsgType::IntroduceReq, &req);
    drain(e)
}

#[test]
fn a_relay_opens_a_circuit_as_it_introduces_and_forwards_only_along_it() {
    let mut e = engine(vec![]);
    e.set_relay(true);
    for n in [1, 2] {
        e.handle_link_up(
            S(0),
            0,
            pid(n),
            link_at(n as usize, n, at(n), S(0)),
            record(n, &[]),
            at(n),
        );
    }
    let out = drain(&mut e);
    let told: Vec<PeerId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Control(p, MsgType::Relay, _) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(told, [pid(1), pid(2)], "members hear that we relay");

    let out = ask(&mut e, S(1), 1, 2);
    assert_eq!(contacts_in(&out, MsgType::Introduce).len(), 1);
    let c = circuits_in(&out);
    assert_eq!(c.len(), 2, "{out:?}");
    let (to_a, ca) = c[0];
    let (to_b, cb) = c[1];
    assert_eq!(
        (to_a, ca.peer.id, ca.status),
        (pid(1), pid(2), CircuitStatus::Accept)
    );
    assert_eq!(
        (to_b, cb.peer.id, cb.status),
        (pid(2), pid(1), CircuitStatus::Dial)
    );
    assert_eq!(cb.peer.addr, at(1), "the asker as we see it");
    // Datagrams go along the circuit, from each end's address only.
    assert_eq!(
        e.relay_forward(S(1), at(1), ca.id, 100),
        Some((at(2), cb.id))
    );
    assert_eq!(
        e.relay_forward(S(1), at(2), cb.id, 100),
        Some((at(1), ca.id))
    );
    assert_eq!(e.relay_forward(S(1), at(3), ca.id, 100), None);
    let r = e.relay().unwrap();
    assert_eq!((r.counters().packets, r.counters().dropped), (2, 1));
    // A member's link goes (replaced, redialled): its circuits stay, and expire unused.
    e.handle_link_down(&pid(2), 2);
    assert_eq!(
        e.relay_forward(S(2), at(1), ca.id, 100),
        Some((at(2), cb.id))
    );
    e.handle_timeout(S(2) + crate::relay::CIRCUIT_IDLE);
    assert_eq!(
        e.relay_forward(S(2) + crate::relay::CIRCUIT_IDLE, at(1), ca.id, 100),
        None
    );
    // Off: nothing is forwarded, nothing is opened.
    e.set_relay(false);
    assert!(e.relay().is_none());
    assert_eq!(e.relay_forward(S(1), at(1), ca.id, 100), None);
}

#[test]
fn a_relay_says_why_it_refuses() {
    let mut e = engine_of(vec![], 64);
    e.set_relay(true);
    for n in 1..=10u8 {
        e.handle_link_up(
            S(0),
            0,
            pid(n),
            link_at(n as usize, n, at(n), S(0)),
            record(n, &[]),
            at(n),
        );
    }
    drain(&mut e);
    // Member 1 asks for circuits to 2..: the fifth is over its limit.
    let mut statuses = vec![];
    for to in 2..=(2 + crate::relay::RELAY_CIRCUITS_PER_MEMBER as u8) {
        let out = ask(&mut e, S(1), 1, to);
        let mine: Vec<_> = circuits_in(&out)
            .into_iter()
            .filter(|(p, _)| *p == pid(1))
            .collect();
        statuses.push(mine[0].1.status);
    }
    assert_eq!(
        statuses.last(),
        Some(&CircuitStatus::MemberFull),
        "{statuses:?}"
    );
    assert!(statuses[..statuses.len() - 1]
        .iter()
        .all(|s| *s == CircuitStatus::Accept));
    // A member we hold no link with: we cannot reach it, and say so.
    let out = ask(&mut e, S(1), 3, 40);
    let c = circuits_in(&out);
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].0, c[0].1.status, c[0].1.id),
        (pid(3), CircuitStatus::Unreachable, 0)
    );
    // Not a relay: introductions only.
    let mut e = engine(vec![]);
    for n in [1, 2] {
        e.handle_link_up(
            S(0),
            0,
            pid(n),
            link_at(n as usize, n, at(n), S(0)),
            record(n, &[]),
            at(n),
        );
    }
    drain(&mut e);
    let out = ask(&mut e, S(1), 1, 2);
    assert!(circuits_in(&out).is_empty());
    assert_eq!(contacts_in(&out, MsgType::Introduce).len(), 1);
}

#[test]
fn an_end_maps_the_circuit_dials_through_it_and_a_direct_link_replaces_it() {
    let mut e = engine(vec![]);
    e.set_fast_lane(true);
    // Member 5 is our relay; member 2 is behind a NAT we cannot open.
    e.handle_link_up(
        S(0),
        0,
        pid(5),
        link_at(5, 5, at(5), S(0)),
        record(5, &[]),
        at(5),
    );
    drain(&mut e);
    e.handle_control(S(0), pid(5), 5, MsgType::Relay, &[]);
    assert!(e.members().get(&pid(5)).unwrap().relays);
    let circuit = |status| {
        let mut b = vec![];
        Circuit {
            peer: Contact {
                id: pid(2),
                ed25519: [2; 32],
                addr: at(2),
            },
            id: 77,
            status,
        }
        .emit(&mut b);
        b
    };
    e.handle_control(
        S(1),
        pid(5),
        5,
        MsgType::Circuit,
        &circuit(CircuitStatus::Dial),
    );
    let out = drain(&mut e);
    assert!(
        matches!(&out[..], [Output::Circuit { relay, circuit: 77, peer, dial: true }]
            if *relay == pid(5) && peer.id == pid(2)),
        "{out:?}"
    );
    // Once per INTRODUCE_AGAIN through one relay; another relay's circuit is tried too.
    e.handle_control(
        S(2),
        pid(5),
        5,
        MsgType::Circuit,
        &circuit(CircuitStatus::Dial),
    );
    assert!(drain(&mut e).is_empty());
    e.handle_link_up(
        S(0),
        0,
        pid(6),
        link_at(6, 6, at(6), S(0)),
        record(6, &[]),
        at(6),
    );
    drain(&mut e);
    e.handle_control(
        S(2),
        pid(6),
        6,
        MsgType::Circuit,
        &circuit(CircuitStatus::Dial),
    );
    assert!(matches!(
        &drain(&mut e)[..],
        [Output::Circuit { relay, dial: true, .. }] if *relay == pid(6)
    ));
    // A refusal asks nothing of the shell but its log.
    e.handle_control(
        S(2),
        pid(5),
        5,
        MsgType::Circuit,
        &circuit(CircuitStatus::Full),
    );
    assert!(drain(&mut e).is_empty());

    // The relayed link comes up: the fast lane offered over it too, its address not published.
    let m = mapped(1);
    assert!(e.handle_link_up(S(2), 0, pid(2), link_at(20, 2, m, S(2)), record(2, &[]), m));
    let out = drain(&mut e);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Control(p, MsgType::FastLane, _) if *p == pid(2))));
    assert_eq!(e.roster().get(&pid(2)).unwrap().endpoint, None);
    e.handle_control(S(2), pid(2), 20, MsgType::FastLane, &[]);
    let l = e.link_mut(&pid(2)).unwrap();
    assert_eq!(
        l.paths.fast_addr(),
        Some(m),
        "to the circuit's local address"
    );
    // A direct link replaces it whatever the precedence; a relayed one never replaces that.
    let mut direct = link_at(21, 2, at(2), S(3));
    direct.precedence = 0;
    let mut again = link_at(22, 2, mapped(2), S(3));
    again.precedence = 99;
    e.link_mut(&pid(2)).unwrap().precedence = 50;
    assert!(e.handle_link_up(S(3), 0, pid(2), direct, record(2, &[]), at(2)));
    let out = drain(&mut e);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Close(l, _, _) if l.id == 20)));
    assert!(!e.handle_link_up(S(3), 0, pid(2), again, record(2, &[]), mapped(2)));
    assert!(drain(&mut e)
        .iter()
        .any(|o| matches!(o, Output::Close(l, _, _) if l.id == 22)));
    assert_eq!(e.link_mut(&pid(2)).unwrap().id, 21);
    // With a link held, a circuit to the member is not taken.
    e.handle_control(
        S(30),
        pid(5),
        5,
        MsgType::Circuit,
        &circuit(CircuitStatus::Dial),
    );
    assert!(drain(&mut e).is_empty());
}

#[test]
fn introductions_are_asked_of_relays_first() {
    let mut e = engine_of(vec![], 16);
    for n in 1..=6u8 {
        e.handle_link_up(
            S(0),
            0,
            pid(n),
            link_at(n as usize, n, at(n), S(0)),
            record(n, &[]),
            at(n),
        );
    }
    drain(&mut e);
    e.handle_control(S(0), pid(6), 6, MsgType::Relay, &[]);
    e.handle_link_down(&pid(4), 4);
    e.route(S(10), ipv4_of(4), &[0]);
    drain(&mut e);
    e.handle_timeout(S(10) + INTRODUCE_AFTER);
    let asked: Vec<PeerId> = contacts_in(&drain(&mut e), MsgType::IntroduceReq)
        .iter()
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(asked.len(), INTRODUCERS);
    assert_eq!(asked[0], pid(6), "the relay first: {asked:?}");
}

#[test]
fn a_member_with_no_address_is_reached_by_introduction_alone() {
    let mut e = engine(vec![]);
    e.handle_link_up(
        S(0),
        0,
        pid(5),
        link_at(5, 5, at(5), S(0)),
        record(5, &[]),
        at(5),
    );
    // Member 4 published no address (a symmetric NAT) and never linked with us directly.
    let mut r = record(4, &[]);
    r.0.addrs.clear();
    e.handle_link_up(
        S(0),
        0,
        pid(4),
        link_at(4, 4, mapped(9), S(0)),
        r,
        mapped(9),
    );
    drain(&mut e);
    e.handle_link_down(&pid(4), 4);
    assert!(e.route(S(10), ipv4_of(4), &[1]).is_none());
    assert!(e.route(S(10), ipv4_of(4), &[2]).is_none());
    assert!(drain(&mut e).is_empty(), "nothing to dial");
    e.handle_timeout(S(10) + INTRODUCE_AFTER);
    let asked = contacts_in(&drain(&mut e), MsgType::IntroduceReq);
    assert_eq!(asked.len(), 1);
    assert_eq!((asked[0].0, asked[0].1.id), (pid(5), pid(4)));
    // What waited goes out when the member reaches us in time.
    let m = mapped(10);
    assert!(e.handle_link_up(
        S(12),
        0,
        pid(4),
        link_at(41, 4, m, S(12)),
        record(4, &[]),
        m
    ));
    let sent = drain(&mut e)
        .into_iter()
        .filter(|o| matches!(o, Output::Send(p, _) if *p == pid(4)))
        .count();
    assert_eq!(sent, 2);
    // Not in time: the queue is dropped at INTRODUCED_WITHIN and the next packet tries again.
    e.handle_link_down(&pid(4), 41);
    assert!(e.route(S(20), ipv4_of(4), &[3]).is_none());
    e.handle_timeout(S(20) + INTRODUCED_WITHIN);
    drain(&mut e);
    let m = e.members().get(&pid(4)).unwrap();
    assert_eq!(m.counters.tx_dropped, 1);
    assert!(!m.wait.dialling());
}

#[test]
fn peers_learn_how_long_the_first_packet_and_the_direct_path_took() {
    let mut e = engine(vec![]);
    up(&mut e, S(0), 2, TestLink::new(2, 0, 12, S(0)));
    drain(&mut e);
    let reach = |e: &Engine<TestLink>| e.members().get(&pid(2)).unwrap().reach;
    assert_eq!(reach(&e).first, None, "a link we did not wait for");
    e.handle_link_down(&pid(2), 2);
    let ms = Duration::from_millis;
    e.route(S(10), ipv4_of(2), &[0]);
    drain(&mut e);
    // Through a relay first: what waited goes, the path is not direct yet.
    let relayed = link_at(3, 2, mapped(1), S(10));
    assert!(e.handle_link_up(
        S(10) + ms(300),
        0,
        pid(2),
        relayed,
        record(2, &[]),
        mapped(1)
    ));
    assert_eq!((reach(&e).first, reach(&e).direct), (Some(ms(300)), None));
    // Then a direct link replaces it.
    let direct = link_at(4, 2, at(2), S(12));
    assert!(e.handle_link_up(S(12), 0, pid(2), direct, record(2, &[]), at(2)));
    assert_eq!(
        (reach(&e).first, reach(&e).direct),
        (Some(ms(300)), Some(ms(2000)))
    );
    // A later link (the member redialled us) changes neither.
    let again = link_at(5, 2, at(2), S(40));
    assert!(e.handle_link_up(S(40), 0, pid(2), again, record(2, &[]), at(2)));
    assert_eq!(reach(&e).direct, Some(ms(2000)));
}
