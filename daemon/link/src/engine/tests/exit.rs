//! The exit: internet traffic to the member chosen, answers from anywhere outside the overlay
//! accepted from it alone, nothing to a member that does not offer one.

use super::*;

const INTERNET: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 80));

/// Member `n` linked, offering an exit when `exit`, with LAN `routes`, round trip `rtt_ms`.
fn up_member(e: &mut Engine<TestLink>, n: u8, exit: bool, routes: &[(&str, u8)], rtt_ms: u64) {
    let mut l = TestLink::new(n as usize, 0, 10 + n as u32, S(0));
    l.paths.quic_seen(at(n), Duration::from_millis(rtt_ms));
    let (mut p, ed, seq) = record(n, routes);
    p.exit = exit;
    assert!(e.handle_link_up(S(0), 0, pid(n), l, (p, ed, seq), at(n)));
    drain(e);
}

#[test]
fn internet_traffic_goes_to_the_exit_chosen_and_only_if_it_offers_one() {
    let mut e = engine(vec![]);
    up_member(&mut e, 2, true, &[], 10);
    up_member(&mut e, 3, false, &[("192.168.3.0", 24)], 10);
    assert_eq!(e.exit(), (None, ExitState::Off));
    assert_eq!(
        e.roster().lookup(INTERNET),
        None,
        "no exit: not ours to carry"
    );

    e.set_exit(ExitChoice::Peer(pid(2)));
    assert_eq!(e.exit(), (Some(pid(2)), ExitState::Up));
    let r = e.roster();
    assert_eq!(r.lookup(INTERNET), Some(pid(2)));
    assert_eq!(r.lookup("2001:db8::1".parse().unwrap()), Some(pid(2)));
    assert_eq!(
        r.lookup("192.168.3.7".parse().unwrap()),
        Some(pid(3)),
        "a member's LAN stays its own"
    );
    assert_eq!(r.lookup(ipv4_of(3)), Some(pid(3)));
    // An overlay address no member holds goes nowhere (not out through the exit).
    let unowned = IpAddr::V4(std::net::Ipv4Addr::new(10, 100, 255, 254));
    assert_eq!(r.lookup(unowned), None);
    assert!(e
        .route(S(1), INTERNET, &[0])
        .is_some_and(|(p, _)| p == pid(2)));

    // A member that does not offer an exit is never one: its traffic is dropped, not sent.
    e.set_exit(ExitChoice::Peer(pid(3)));
    assert_eq!(e.exit(), (None, ExitState::Unavailable));
    assert!(e.route(S(1), INTERNET, &[0]).is_none());
    assert!(drain(&mut e).is_empty(), "nothing dialled");
    // Nor are we.
    e.set_exit(ExitChoice::Peer(pid(0)));
    assert_eq!(e.exit(), (None, ExitState::Unavailable));

    // The exit down: its traffic waits for a dial of it (and is dropped if that fails).
    e.set_exit(ExitChoice::Peer(pid(2)));
    e.handle_link_down(&pid(2), 2);
    assert_eq!(e.exit(), (Some(pid(2)), ExitState::Down));
    assert!(e.route(S(2), INTERNET, &[0]).is_none());
    assert!(matches!(&drain(&mut e)[..], [Output::Dial { pid: p, .. }] if *p == pid(2)));
    // It stops offering one: no exit.
    let (p, _, _) = record(2, &[]);
    assert!(e.handle_record(&pid(2), p, 2));
    assert_eq!(e.exit(), (None, ExitState::Unavailable));
}

#[test]
fn auto_takes_the_nearest_exit_and_keeps_it_until_its_link_fails() {
    let mut e = engine(vec![]);
    e.set_exit(ExitChoice::Auto);
    assert_eq!(e.exit(), (None, ExitState::Unavailable));
    up_member(&mut e, 2, true, &[], 30);
    assert_eq!(e.exit().0, Some(pid(2)));
    up_member(&mut e, 3, true, &[], 10);
    assert_eq!(e.exit().0, Some(pid(2)), "kept while its link is open");
    e.handle_link_down(&pid(2), 2);
    assert_eq!(e.exit(), (Some(pid(3)), ExitState::Up));
    // Another exit gone too: the one we had stays chosen (the next packet dials it).
    e.handle_link_down(&pid(3), 3);
    assert_eq!(e.exit(), (Some(pid(3)), ExitState::Down));
    up_member(&mut e, 4, false, &[], 1);
    assert_eq!(e.exit().0, Some(pid(3)), "4 offers none");
    e.set_exit(ExitChoice::None);
    assert_eq!(e.exit(), (None, ExitState::Off));
    assert_eq!(e.roster().lookup(INTERNET), None);
}

#[test]
fn auto_leaves_an_exit_whose_data_goes_unanswered() {
    let mut e = engine(vec![]);
    e.set_exit(ExitChoice::Auto);
    up_member(&mut e, 2, true, &[], 10);
    up_member(&mut e, 3, true, &[], 30);
    assert_eq!(e.exit().0, Some(pid(2)));
    // Data to 2 goes unanswered from 100 s: kept until EXIT_UNANSWERED has passed.
    e.link_mut(&pid(2)).unwrap().session.unanswered = Some(S(100));
    e.recheck_exit(S(100) + EXIT_UNANSWERED - Duration::from_millis(1));
    assert_eq!(e.exit().0, Some(pid(2)));
    e.recheck_exit(S(100) + EXIT_UNANSWERED);
    assert_eq!(e.exit(), (Some(pid(3)), ExitState::Up));
    // 2 answers again: 3 stays (sticky).
    e.link_mut(&pid(2)).unwrap().session.unanswered = None;
    e.recheck_exit(S(110));
    assert_eq!(e.exit().0, Some(pid(3)));
    // Both failing: the one we have stays (nothing better to go to).
    for n in [2, 3] {
        e.link_mut(&pid(n)).unwrap().session.unanswered = Some(S(110));
    }
    e.recheck_exit(S(120));
    assert_eq!(e.exit().0, Some(pid(3)));
    // A member chosen by PeerId is never left for another.
    e.set_exit(ExitChoice::Peer(pid(2)));
    e.recheck_exit(S(130));
    assert_eq!(e.exit().0, Some(pid(2)));
}
