//! The engine on virtual time, with link and session doubles.

use super::*;
use crate::double::TestLink;
use crate::roster::member_payload;
use crate::timers::Teardown;
use shadowmesh_proto::consts::{KEEPALIVE_TIMEOUT, REKEY_AFTER_TIME, SILENT_AFTER};
use shadowmesh_proto::dht::wire::parse_contact_list;
use shadowmesh_proto::overlay::V6Prefix;
use shadowmesh_proto::record::Route;

const S: fn(u64) -> Duration = Duration::from_secs;
const NK: [u8; 32] = [9; 32];

fn pid(n: u8) -> PeerId {
    PeerId([n; 32])
}

fn at(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, n], 4433))
}

fn engine(allowed: Vec<PeerId>) -> Engine<TestLink> {
    engine_of(allowed, 8)
}

fn engine_of(allowed: Vec<PeerId>, capacity: usize) -> Engine<TestLink> {
    let me = pid(0);
    let v6 = V6Prefix::for_network(&NK);
    let cfg = RosterConfig::member(me, &member_payload(&me, &NK), v6, capacity).unwrap();
    Engine::new(cfg, allowed)
}

/// Member `n`'s record: its overlay addresses, the LAN `routes`, reachable at `at(n)`.
fn record(n: u8, routes: &[(&str, u8)]) -> (Payload, [u8; 32], u64) {
    let mut p = member_payload(&pid(n), &NK);
    p.addrs = vec![at(n)];
    p.routes = routes
        .iter()
        .map(|(a, l)| Route {
            addr: a.parse().unwrap(),
            prefix_len: *l,
        })
        .collect();
    (p, [n; 32], 1)
}

fn up(e: &mut Engine<TestLink>, t: Duration, n: u8, link: TestLink) -> bool {
    e.handle_link_up(t, 0, pid(n), link, record(n, &[]), at(n))
}

/// Everything the engine asks, answering route reads with no host routes.
fn drain(e: &mut Engine<TestLink>) -> Vec<Output<TestLink>> {
    let mut v = vec![];
    while let Some(o) = e.poll_output() {
        if matches!(o, Output::ReadRoutes) {
            e.handle_local_routes(vec![]);
        }
        v.push(o);
    }
    v
}

fn ipv4_of(n: u8) -> IpAddr {
    IpAddr::V4(member_payload(&pid(n), &NK).ipv4.unwrap())
}

#[test]
fn a_packet_without_a_link_dials_once_and_waits_for_it() {
    let mut e = engine(vec![]);
    assert!(up(&mut e, S(0), 1, TestLink::new(1, 0, 11, S(0))));
    drain(&mut e);
    assert!(e.handle_link_down(&pid(1), 1));
    assert!(!e.handle_link_down(&pid(1), 1), "once");
    let dst = ipv4_of(1);
    for i in 0..PENDING_MAX as u8 + 2 {
        assert!(e.route(S(0), dst, &[i]).is_none(), "no link: held");
    }
    let out = drain(&mut e);
    assert_eq!(out.len(), 1, "one dial for the burst: {out:?}");
    assert!(
        matches!(&out[0], Output::Dial { pid: p, addrs, fresh: false, .. }
        if *p == pid(1) && addrs == &[at(1)])
    );
    assert_eq!(e.members().get(&pid(1)).unwrap().counters.tx_dropped, 2);
    // The link comes up: what waited goes out in order, then packets take the link.
    assert!(up(&mut e, S(1), 1, TestLink::new(2, 0, 12, S(1))));
    let sent: Vec<Vec<u8>> = drain(&mut e)
        .into_iter()
        .filter_map(|o| match o {
            Output::Send(p, b) if p == pid(1) => Some(b),
            _ => None,
        })
        .collect();
    let want: Vec<Vec<u8>> = (0..PENDING_MAX as u8).map(|i| vec![i]).collect();
    assert_eq!(sent, want);
    let (p, m) = e.route(S(0), dst, &[0]).expect("the live link");
    assert_eq!((p, m.link.as_ref().unwrap().id), (pid(1), 2));
    // An address no member holds goes nowhere and dials no one.
    assert!(e
        .route(S(0), "10.100.255.254".parse().unwrap(), &[0])
        .is_none());
    assert!(drain(&mut e).is_empty());
}

#[test]
fn a_dial_that_ends_without_a_link_drops_what_waited_and_lets_the_next_packet_try() {
    let mut e = engine(vec![]);
    up(&mut e, S(0), 1, TestLink::new(1, 0, 11, S(0)));
    drain(&mut e);
    e.handle_link_down(&pid(1), 1);
    let dst = ipv4_of(1);
    e.route(S(0), dst, b"a");
    e.route(S(0), dst, b"b");
    assert_eq!(drain(&mut e).len(), 1);
    e.handle_dial_end(&pid(1));
    assert_eq!(e.members().get(&pid(1)).unwrap().counters.tx_dropped, 2);
    e.route(S(0), dst, b"c");
    assert!(matches!(drain(&mut e)[..], [Output::Dial { .. }]));
}

#[test]
fn a_new_link_is_offered_the_fast_lane_and_told_who_else_is_here() {
    let mut e = engine(vec![]);
    e.set_fast_lane(true);
    up(&mut e, S(0), 1, TestLink::new(1, 0, 11, S(0)));
    let out = drain(&mut e);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Control(p, MsgType::FastLane, _) if *p == pid(1))));
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Control(_, MsgType::Peers, _))),
        "no one else yet"
    );
    up(&mut e, S(0), 2, TestLink::new(2, 0, 12, S(0)));
    let out = drain(&mut e);
    let peers_for = |out: &[Output<TestLink>], to: PeerId| -> Vec<(PeerId, SocketAddr)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Control(p, MsgType::Peers, b) if *p == to => Some(b),
                _ => None,
            })
            .flat_map(|b| parse_contact_list(b, PEERS_MAX).unwrap())
            .map(|c| (c.id, c.addr))
            .collect()
    };
    assert_eq!(
        peers_for(&out, pid(2)),
        [(pid(1), at(1))],
        "who else is here"
    );
    // ... and the new member is named to the one we held (which it may not be able to dial:
    // it joined later, from behind a NAT).
    assert_eq!(peers_for(&out, pid(1)), [(pid(2), at(2))]);
    // In a larger mesh, only the ANNOUNCE_TO members closest to the newcomer hear of it.
    let mut big = engine_of(vec![], 32);
    for n in 1..=20 {
        up(
            &mut big,
            S(0),
            n,
            TestLink::new(n as usize, 0, 100 + n as u32, S(0)),
        );
        drain(&mut big);
    }
    up(&mut big, S(0), 21, TestLink::new(21, 0, 121, S(0)));
    let out = drain(&mut big);
    let told: Vec<PeerId> = (1..=20)
        .map(pid)
        .filter(|p| !peers_for(&out, *p).is_empty())
        .collect();
    let mut nearest: Vec<PeerId> = (1..=20).map(pid).collect();
    nearest.sort_by_key(|p| p.0[0] ^ 21);
    nearest.truncate(ANNOUNCE_TO);
    nearest.sort();
    assert_eq!(told, nearest);
    // A member we knew coming back is no news.
    e.handle_link_down(&pid(2), 2);
    up(&mut e, S(1), 2, TestLink::new(3, 0, 13, S(1)));
    assert!(peers_for(&drain(&mut e), pid(1)).is_empty());
    // The member's own offer opens the lane at its QUIC path's address.
    e.handle_control(S(1), pid(1), 1, MsgType::FastLane, &[]);
    let l = e.members().get(&pid(1)).unwrap().link.as_ref().unwrap();
    assert_eq!(l.paths.fast_addr(), Some(at(1)));
}

#[test]
fn strangers_refused_links_and_replaced_links_are_closed() {
    let mut e = engine(vec![pid(1), pid(2)]);
    assert!(!up(&mut e, S(0), 3, TestLink::new(3, 0, 13, S(0))));
    assert!(matches!(&drain(&mut e)[..], [Output::Close(l, CLOSE_AUTH_FAILED, _)] if l.id == 3));
    assert!(e.members().get(&pid(3)).is_none() && e.roster().get(&pid(3)).is_none());
    up(&mut e, S(0), 1, TestLink::new(1, 5, 11, S(0)));
    drain(&mut e);
    // A lower-precedence second connection is refused; a higher one replaces the first.
    assert!(!up(&mut e, S(0), 1, TestLink::new(2, 3, 12, S(0))));
    assert!(matches!(&drain(&mut e)[..], [Output::Close(l, CLOSE_REPLACED, _)] if l.id == 2));
    assert!(up(&mut e, S(0), 1, TestLink::new(4, 9, 14, S(0))));
    assert!(drain(&mut e)
        .iter()
        .any(|o| matches!(o, Output::Close(l, CLOSE_REPLACED, _) if l.id == 1)));
    // A second member may not take the first one's receiver index.
    assert!(!up(&mut e, S(0), 2, TestLink::new(5, 0, 14, S(0))));
    assert!(matches!(&drain(&mut e)[..], [Output::Close(l, CLOSE_PROTOCOL, _)] if l.id == 5));
}

#[test]
fn records_are_checked_by_the_shell_and_a_newer_one_moves_the_routes() {
    let mut e = engine(vec![]);
    e.handle_link_up(
        S(0),
        0,
        pid(1),
        TestLink::new(1, 0, 11, S(0)),
        record(1, &[("192.168.10.0", 24)]),
        at(1),
    );
    let out = drain(&mut e);
    let installed: Vec<String> = out
        .iter()
        .filter_map(|o| match o {
            Output::Route(roster::Output::InstallRoute(p, _)) => Some(p.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(installed, ["192.168.10.0/24"]);
    // The member's new record goes to the shell to verify; a control message on a
    // connection that is not the member's link is ignored.
    assert!(e
        .handle_control(S(1), pid(1), 99, MsgType::Record, b"rec")
        .is_none());
    assert_eq!(
        e.handle_control(S(1), pid(1), 1, MsgType::Record, b"rec"),
        Some(Action::Record)
    );
    assert!(matches!(&drain(&mut e)[..], [Output::Record(p, b)] if *p == pid(1) && b == b"rec"));
    let (mut p, _, _) = record(1, &[("192.168.20.0", 24)]);
    p.addrs.clear();
    assert!(e.handle_record(&pid(1), p.clone(), 2));
    let out = drain(&mut e);
    assert!(out.iter().any(|o| matches!(o, Output::Route(roster::Output::WithdrawRoute(p)) if p.to_string() == "192.168.10.0/24")));
    assert!(out.iter().any(|o| matches!(o, Output::Route(roster::Output::InstallRoute(p, _)) if p.to_string() == "192.168.20.0/24")));
    assert!(
        !e.handle_record(&pid(1), p.clone(), 2),
        "the same sequence number again"
    );
    assert!(!e.handle_record(&pid(7), p, 3), "not a member");
    assert!(drain(&mut e).is_empty());
}

#[test]
fn a_members_lan_names_are_kept_inside_its_routes_while_it_is_linked() {
    use shadowmesh_proto::lan_names::{emit, LanName};
    let mut e = engine(vec![]);
    e.handle_link_up(
        S(0),
        0,
        pid(1),
        TestLink::new(1, 0, 11, S(0)),
        record(1, &[("192.168.10.0", 24)]),
        at(1),
    );
    drain(&mut e);
    let n = |l: &str, ip: &str| LanName {
        label: l.into(),
        addr: ip.parse().unwrap(),
    };
    let mut body = Vec::new();
    emit(
        &[n("printer", "192.168.10.50"), n("bank", "192.168.99.1")],
        &mut body,
    )
    .unwrap();
    e.handle_control(S(1), pid(1), 1, MsgType::LanNames, &body);
    let names = |e: &Engine<TestLink>| e.members().get(&pid(1)).unwrap().lan_names.clone();
    assert_eq!(
        names(&e),
        [n("printer", "192.168.10.50")],
        "a name outside the member's own LAN is not kept"
    );
    // The next list replaces it; a malformed one changes nothing.
    let mut none = Vec::new();
    emit(&[], &mut none).unwrap();
    e.handle_control(S(2), pid(1), 1, MsgType::LanNames, &body[..5]);
    assert_eq!(names(&e).len(), 1);
    e.handle_control(S(2), pid(1), 1, MsgType::LanNames, &none);
    assert!(names(&e).is_empty());
    e.handle_control(S(3), pid(1), 1, MsgType::LanNames, &body);
    assert!(e.handle_link_down(&pid(1), 1));
    assert!(names(&e).is_empty(), "gone with the link");
}

#[test]
fn peer_exchange_dials_few_and_each_peer_once_a_while() {
    let mut e = engine(vec![]);
    up(&mut e, S(0), 1, TestLink::new(1, 0, 11, S(0)));
    drain(&mut e);
    let c = |n: u8| Contact {
        id: pid(n),
        ed25519: [n; 32],
        addr: at(n),
    };
    let mut list = vec![c(0), c(1)];
    list.extend((10..30).map(c));
    let mut body = vec![];
    emit_contact_list(&list, &mut body);
    e.handle_control(S(5), pid(1), 1, MsgType::Peers, &body);
    let learn: Vec<PeerId> = drain(&mut e)
        .into_iter()
        .filter_map(|o| match o {
            Output::Learn(c) => Some(c.id),
            _ => None,
        })
        .collect();
    let want: Vec<PeerId> = (10..10 + LEARN_IN_FLIGHT as u8).map(pid).collect();
    assert_eq!(
        learn, want,
        "not ourselves, not a member we hold, at most {LEARN_IN_FLIGHT}"
    );
    // Those dials do not complete: the member that named them is asked to introduce us.
    e.handle_timeout(S(5) + INTRODUCE_AFTER);
    let asked = contacts_in(&drain(&mut e), MsgType::IntroduceReq);
    let named: Vec<PeerId> = asked.iter().map(|(_, c)| c.id).collect();
    assert_eq!(named, want);
    assert!(asked.iter().all(|(p, _)| *p == pid(1)));
    for _ in 0..LEARN_IN_FLIGHT {
        e.handle_learn_end();
    }
    e.handle_control(S(6), pid(1), 1, MsgType::Peers, &body);
    let again = drain(&mut e)
        .iter()
        .filter(|o| matches!(o, Output::Learn(c) if c.id == pid(10)))
        .count();
    assert_eq!(again, 0, "tried a second ago");
    for _ in 0..LEARN_IN_FLIGHT {
        e.handle_learn_end();
    }
    e.handle_control(S(6) + LEARN_AGAIN, pid(1), 1, MsgType::Peers, &body);
    assert!(drain(&mut e)
        .iter()
        .any(|o| matches!(o, Output::Learn(c) if c.id == pid(10))));
}

#[test]
fn timers_send_keepalives_and_give_a_silent_session_up() {
    let mut e = engine(vec![]);
    up(&mut e, S(0), 1, TestLink::new(1, 0, 11, S(0)));
    drain(&mut e);
    assert_eq!(e.poll_timeout(), Some(S(0)));
    e.handle_timeout(S(0));
    assert!(drain(&mut e).is_empty(), "nothing due on a fresh session");
    // Quiet: a keepalive every KEEPALIVE_TIMEOUT, each "sent" by the shell.
    let t = e.poll_timeout().unwrap();
    assert_eq!(t, KEEPALIVE_TIMEOUT);
    e.handle_timeout(t);
    assert!(matches!(&drain(&mut e)[..], [Output::Keepalive(p)] if *p == pid(1)));
    let s = &mut e
        .parts_mut()
        .1
        .get_mut(&pid(1))
        .unwrap()
        .link
        .as_mut()
        .unwrap()
        .session;
    s.last_sent = t;
    // The member goes silent: the session is given up and its connection closed.
    let mut now;
    let closed = loop {
        now = e.poll_timeout().expect("a deadline");
        e.handle_timeout(now);
        let s = &mut e
            .parts_mut()
            .1
            .get_mut(&pid(1))
            .and_then(|m| m.link.as_mut());
        if let Some(l) = s {
            l.session.last_sent = now;
        }
        if let Some(Output::Close(l, code, why)) = drain(&mut e)
            .into_iter()
            .find(|o| matches!(o, Output::Close(..)))
        {
            break (l.id, code, why);
        }
    };
    assert_eq!(now, SILENT_AFTER);
    assert_eq!(
        closed,
        (1, CLOSE_SESSION_DEAD, Teardown::Silent.as_str().to_string())
    );
    assert!(
        e.members().get(&pid(1)).unwrap().link.is_none(),
        "the member stays, its link goes"
    );
    assert_eq!(e.poll_timeout(), None);
    assert!(
        !e.handle_link_down(&pid(1), 1),
        "the connection's end changes nothing more"
    );
}

#[test]
fn the_initiator_rekeys_on_the_control_stream() {
    let mut e = engine(vec![]);
    let mut ours = TestLink::new(1, 0, 11, S(0));
    ours.session.initiator = true;
    up(&mut e, S(0), 1, ours);
    drain(&mut e);
    let mut now = S(0);
    let rekey = loop {
        e.handle_timeout(now);
        let l = e
            .parts_mut()
            .1
            .get_mut(&pid(1))
            .unwrap()
            .link
            .as_mut()
            .unwrap();
        l.session.last_sent = now;
        l.session.last_received = now;
        if let Some(b) = drain(&mut e).into_iter().find_map(|o| match o {
            Output::Control(_, MsgType::RekeyInit, b) => Some(b),
            _ => None,
        }) {
            break b;
        }
        now = e.poll_timeout().unwrap();
    };
    assert_eq!(now, REKEY_AFTER_TIME);
    assert_eq!(rekey, [0x4b]);
    // The answer completes it on the session.
    let a = e.handle_control(now + S(1), pid(1), 1, MsgType::RekeyResp, &[1]);
    assert_eq!(a, Some(Action::Rekeyed));
    let s = &e
        .members()
        .get(&pid(1))
        .unwrap()
        .link
        .as_ref()
        .unwrap()
        .session;
    assert_eq!((s.rekey_started, s.send_key), (None, Some((now + S(1), 0))));
}

#[test]
fn a_reload_forgets_members_no_longer_allowed_and_redials_only_accepted_links() {
    let mut e = engine(vec![]);
    up(&mut e, S(0), 1, TestLink::new(1, 0, 11, S(0)));
    let mut dialled = TestLink::new(2, 0, 12, S(0));
    dialled.dialled = true;
    up(&mut e, S(0), 2, dialled);
    drain(&mut e);
    e.redial_accepted();
    let out = drain(&mut e);
    assert!(matches!(&out[..], [Output::Dial { pid: p, fresh: true, .. }] if *p == pid(1)));
    assert!(e.members().get(&pid(1)).unwrap().wait.dialling());
    e.reconfigure(vec![pid(2)], vec![], true, vec![]);
    let out = drain(&mut e);
    assert!(matches!(&out[0], Output::Close(l, CLOSE_AUTH_FAILED, _) if l.id == 1));
    assert!(matches!(out[1], Output::ReadRoutes));
    assert!(e.members().get(&pid(1)).is_none() && e.roster().get(&pid(1)).is_none());
    assert!(
        e.route(S(0), ipv4_of(1), &[0]).is_none(),
        "its address routes nowhere now"
    );
    assert!(e.route(S(0), ipv4_of(2), &[0]).is_some());
}

fn contact_body(c: &[Contact]) -> Vec<u8> {
    let mut b = vec![];
    emit_contact_list(c, &mut b);
    b
}

fn contacts_in(out: &[Output<TestLink>], t: MsgType) -> Vec<(PeerId, Contact)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Control(p, tt, b) if *tt == t => Some((*p, b)),
            _ => None,
        })
        .flat_map(|(p, b)| {
            parse_contact_list(b, 1)
                .unwrap()
                .into_iter()
                .map(move |c| (p, c))
        })
        .collect()
}

#[test]
fn a_dial_that_does_not_complete_asks_the_members_we_hold_for_an_introduction() {
    let mut e = engine(vec![]);
    for n in 1..=4 {
        up(
            &mut e,
            S(0),
            n,
            TestLink::new(n as usize, 0, 10 + n as u32, S(0)),
        );
    }
    drain(&mut e);
    e.handle_link_down(&pid(4), 4);
    e.route(S(10), ipv4_of(4), &[0]);
    assert!(matches!(drain(&mut e)[..], [Output::Dial { .. }]));
    e.handle_timeout(S(10) + INTRODUCE_AFTER - Duration::from_millis(1));
    assert!(
        contacts_in(&drain(&mut e), MsgType::IntroduceReq).is_empty(),
        "not yet"
    );
    assert!(e.poll_timeout() <= Some(S(10) + INTRODUCE_AFTER));
    e.handle_timeout(S(10) + INTRODUCE_AFTER);
    let asked = contacts_in(&drain(&mut e), MsgType::IntroduceReq);
    let who: Vec<PeerId> = asked.iter().map(|(p, _)| *p).collect();
    assert_eq!(who.len(), INTRODUCERS);
    assert!(!who.contains(&pid(4)));
    assert!(asked.iter().all(|(_, c)| c.id == pid(4) && c.addr == at(4)));
    // The dial failed; the next one soon after asks no one again.
    e.handle_dial_end(&pid(4));
    e.route(S(12), ipv4_of(4), &[0]);
    e.handle_timeout(S(12) + INTRODUCE_AFTER);
    assert!(contacts_in(&drain(&mut e), MsgType::IntroduceReq).is_empty());
    // A dial that completes in time asks no one.
    e.handle_dial_end(&pid(4));
    e.route(S(30), ipv4_of(4), &[0]);
    up(&mut e, S(30), 4, TestLink::new(5, 0, 15, S(30)));
    e.handle_timeout(S(30) + INTRODUCE_AFTER);
    assert!(contacts_in(&drain(&mut e), MsgType::IntroduceReq).is_empty());
}

#[test]
fn an_introducer_tells_the_member_it_holds_and_no_one_else() {
    let mut e = engine(vec![]);
    up(&mut e, S(0), 1, TestLink::new(1, 0, 11, S(0)));
    up(&mut e, S(0), 2, TestLink::new(2, 0, 12, S(0)));
    drain(&mut e);
    let req = contact_body(&[Contact {
        id: pid(2),
        ed25519: [2; 32],
        addr: at(2),
    }]);
    e.handle_control(S(1), pid(1), 1, MsgType::IntroduceReq, &req);
    let told = contacts_in(&drain(&mut e), MsgType::Introduce);
    assert_eq!(told.len(), 1);
    let (to, c) = told[0];
    assert_eq!(
        (to, c.id, c.addr, c.ed25519),
        (pid(2), pid(1), at(1), [1; 32])
    );
    // Once per INTRODUCE_AGAIN per requester and member; another member at once.
    e.handle_control(S(2), pid(1), 1, MsgType::IntroduceReq, &req);
    assert!(drain(&mut e).is_empty());
    up(&mut e, S(0), 3, TestLink::new(3, 0, 13, S(0)));
    drain(&mut e);
    let req3 = contact_body(&[Contact {
        id: pid(3),
        ed25519: [3; 32],
        addr: at(3),
    }]);
    e.handle_control(S(2), pid(1), 1, MsgType::IntroduceReq, &req3);
    let told = contacts_in(&drain(&mut e), MsgType::Introduce);
    assert_eq!(told.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [pid(3)]);
    // Not to a member we hold no link with, nor to the requester itself.
    e.handle_link_down(&pid(2), 2);
    e.handle_control(S(20), pid(1), 1, MsgType::IntroduceReq, &req);
    let me = contact_body(&[Contact {
        id: pid(1),
        ed25519: [1; 32],
        addr: at(1),
    }]);
    e.handle_control(S(40), pid(1), 1, MsgType::IntroduceReq, &me);
    assert!(drain(&mut e).is_empty());
}

#[test]
fn an_introduction_is_answered_by_one_dial() {
    let mut e = engine(vec![]);
    up(&mut e, S(0), 1, TestLink::new(1, 0, 11, S(0)));
    drain(&mut e);
    let far: SocketAddr = "198.51.100.9:40000".parse().unwrap();
    let intro = contact_body(&[Contact {
        id: pid(5),
        ed25519: [5; 32],
        addr: far,
    }]);
    e.handle_control(S(1), pid(1), 1, MsgType::Introduce, &intro);
    let out = drain(&mut e);
    assert!(
        matches!(&out[..], [Output::Dial { pid: p, addrs, ed25519, fresh: false }]
        if *p == pid(5) && addrs == &[far] && *ed25519 == [5; 32])
    );
    e.handle_control(S(2), pid(1), 1, MsgType::Introduce, &intro);
    assert!(drain(&mut e).is_empty(), "once per INTRODUCE_AGAIN");
    // Not a member we hold a link with there, not ourselves, not one the allowlist refuses.
    for (n, addr) in [(1, at(1)), (0, far)] {
        let c = contact_body(&[Contact {
            id: pid(n),
            ed25519: [n; 32],
            addr,
        }]);
        e.handle_control(S(30), pid(1), 1, MsgType::Introduce, &c);
    }
    assert!(drain(&mut e).is_empty());
    // A member we hold a link with at another address moved (it restarted behind its NAT):
    // a new connection.
    up(&mut e, S(0), 2, TestLink::new(2, 0, 12, S(0)));
    drain(&mut e);
    let moved = contact_body(&[Contact {
        id: pid(2),
        ed25519: [2; 32],
        addr: far,
    }]);
    e.handle_control(S(31), pid(1), 1, MsgType::Introduce, &moved);
    assert!(
        matches!(&drain(&mut e)[..], [Output::Dial { pid: p, fresh: true, .. }] if *p == pid(2))
    );
    let mut only = engine(vec![pid(1)]);
    up(&mut only, S(0), 1, TestLink::new(1, 0, 11, S(0)));
    drain(&mut only);
    only.handle_control(S(1), pid(1), 1, MsgType::Introduce, &intro);
    assert!(drain(&mut only).is_empty());
}

#[test]
fn a_member_whose_connection_migrated_is_told_where_we_see_it() {
    use shadowmesh_proto::dht::wire::{emit_addr, parse_addr};
    let mut e = engine(vec![]);
    // Member 1 dialled us; member 2 we dialled.
    assert!(up(&mut e, S(0), 1, TestLink::new(1, 0, 11, S(0))));
    let mut ours = TestLink::new(2, 0, 12, S(0));
    ours.dialled = true;
    assert!(up(&mut e, S(0), 2, ours));
    drain(&mut e);
    let seen = |out: &[Output<TestLink>]| -> Vec<(PeerId, SocketAddr)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Control(p, MsgType::Seen, b) => Some((*p, parse_addr(b).unwrap())),
                _ => None,
            })
            .collect()
    };
    e.paths_read();
    assert!(seen(&drain(&mut e)).is_empty(), "nothing moved");
    let moved = SocketAddr::from(([198, 51, 100, 9], 5000));
    for n in [1, 2] {
        e.link_mut(&pid(n))
            .unwrap()
            .paths
            .quic_seen(moved, Duration::from_millis(5));
    }
    e.paths_read();
    assert_eq!(
        seen(&drain(&mut e)),
        [(pid(1), moved)],
        "told once, and only the member that dialled (a server's side cannot move)"
    );
    e.paths_read();
    assert!(seen(&drain(&mut e)).is_empty());

    // What a member says of us counts from the far end of a connection we dialled only.
    let mut body = Vec::new();
    emit_addr(&moved, &mut body);
    let reports = |e: &mut Engine<TestLink>| -> Vec<(SocketAddr, SocketAddr)> {
        drain(e)
            .into_iter()
            .filter_map(|o| match o {
                Output::Seen { reporter, at } => Some((reporter, at)),
                _ => None,
            })
            .collect()
    };
    e.handle_control(S(1), pid(1), 1, MsgType::Seen, &body);
    assert!(reports(&mut e).is_empty(), "we accepted that one");
    e.handle_control(S(1), pid(2), 2, MsgType::Seen, &body);
    assert_eq!(reports(&mut e), [(moved, moved)]);
    e.handle_control(S(1), pid(2), 2, MsgType::Seen, &[4, 1]);
    assert!(reports(&mut e).is_empty(), "a bad body is ignored");
}

mod exit;
mod keep;
mod relay;
