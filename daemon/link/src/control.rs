//! A member's control messages (after the handshake: rekeys, its new record, the fast-lane
//! offer, peer exchange): what each asks of us. The rekey is answered here, on the session;
//! the rest the shell carries out, because it needs what the core does not hold (the record's
//! signature check, the connection's address, dialling).

use std::time::Duration;

use shadowmesh_proto::consts::CLOSE_PROTOCOL;
use shadowmesh_proto::dht::wire::{parse_addr, parse_contact_list, Contact};
use shadowmesh_proto::msg::{MsgType, PEERS_MAX};
use shadowmesh_proto::relay::Circuit;
use shadowmesh_proto::session::SessionState;

/// What a control message asks of the shell.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this message on the member's control stream.
    Send(MsgType, Vec<u8>),
    /// Close the member's connection with this QUIC application code: it broke the protocol.
    Close(u32, String),
    /// A record to verify (its signature, its owner is this member) and give to the roster.
    Record,
    /// The member takes data frames as plain UDP: send them to its connection's address.
    FastLane,
    /// Members this one holds sessions with, for the peer exchange to consider dialling.
    Learn(Vec<Contact>),
    /// The member cannot complete a dial of this contact: ask it to dial the member too.
    IntroduceReq(Contact),
    /// This contact is dialling us through NATs: dial it at once.
    Introduce(Contact),
    /// The member relays for members.
    Relay,
    /// The member, a relay, opened (or refused) a circuit for us.
    Circuit(Circuit),
    /// The member sees us at this address now (our address moved under a connection we
    /// dialled).
    Seen(std::net::SocketAddr),
    /// The hosts behind the member, by name (to keep, inside its accepted routes).
    LanNames(Vec<shadowmesh_proto::lan_names::LanName>),
    /// Our rekey completed: the session sends on the new keys.
    Rekeyed,
    /// Nothing to do; the reason, for the debug log.
    Ignore(String),
}

/// Decides what message `t` with `body` from a member whose session is `session` asks for, at
/// `now`; `fast_lane` is whether we use the fast lane at all. A rekey is applied to `session`
/// here (a REKEY_INIT answered, a REKEY_RESP taken, which moves the sending key phase).
pub fn handle<S: SessionState>(
    now: Duration,
    session: &mut S,
    t: MsgType,
    body: &[u8],
    fast_lane: bool,
) -> Action {
    match t {
        MsgType::RekeyInit => match session.handle_rekey_init(now, body) {
            Ok(resp) => Action::Send(MsgType::RekeyResp, resp),
            Err(e) => Action::Close(CLOSE_PROTOCOL, format!("bad rekey: {e}")),
        },
        // A late or repeated answer is the member's mistake or the network's: the rekey timer
        // gives the session up if no good one comes.
        MsgType::RekeyResp => match session.handle_rekey_resp(now, body) {
            Ok(()) => Action::Rekeyed,
            Err(e) => Action::Ignore(format!("bad rekey answer: {e}")),
        },
        MsgType::Record => Action::Record,
        MsgType::FastLane if fast_lane => Action::FastLane,
        MsgType::Peers => match parse_contact_list(body, PEERS_MAX) {
            Ok(list) => Action::Learn(list),
            Err(e) => Action::Ignore(format!("bad peer list: {e}")),
        },
        MsgType::IntroduceReq | MsgType::Introduce => match parse_contact_list(body, 1) {
            Ok(list) if list.len() == 1 && t == MsgType::IntroduceReq => {
                Action::IntroduceReq(list[0])
            }
            Ok(list) if list.len() == 1 => Action::Introduce(list[0]),
            Ok(_) => Action::Ignore("an introduction names one contact".into()),
            Err(e) => Action::Ignore(format!("bad introduction: {e}")),
        },
        MsgType::Relay => Action::Relay,
        MsgType::Circuit => match Circuit::parse(body) {
            Ok(c) => Action::Circuit(c),
            Err(e) => Action::Ignore(format!("bad circuit: {e}")),
        },
        MsgType::LanNames => match shadowmesh_proto::lan_names::parse(body) {
            Ok(list) => Action::LanNames(list),
            Err(e) => Action::Ignore(format!("bad LAN names: {e}")),
        },
        MsgType::Seen => match parse_addr(body) {
            Ok(a) => Action::Seen(a),
            Err(e) => Action::Ignore(format!("bad address: {e}")),
        },
        other => Action::Ignore(format!("unexpected control message {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::double::Double;
    use shadowmesh_proto::dht::wire::emit_contact_list;
    use shadowmesh_proto::PeerId;

    const T: Duration = Duration::from_secs(1);

    #[test]
    fn a_rekey_init_is_answered_on_the_control_stream_and_a_bad_one_closes() {
        let mut s = Double::default();
        assert_eq!(
            handle(T, &mut s, MsgType::RekeyInit, &[1, 2, 3], true),
            Action::Send(MsgType::RekeyResp, vec![3, 2, 1])
        );
        s.refuse = true;
        assert_eq!(
            handle(T, &mut s, MsgType::RekeyInit, &[1], true),
            Action::Close(CLOSE_PROTOCOL, "bad rekey: wrong epoch".into())
        );
        assert_eq!(s.inits, 2);
    }

    #[test]
    fn a_bad_rekey_answer_is_only_logged() {
        let mut s = Double {
            refuse: true,
            ..Double::default()
        };
        assert!(matches!(
            handle(T, &mut s, MsgType::RekeyResp, &[9], true),
            Action::Ignore(why) if why.contains("no rekey in flight")
        ));
        assert_eq!(s.resps, 1);
    }

    #[test]
    fn the_fast_lane_offer_counts_only_where_we_use_it() {
        let mut s = Double::default();
        assert_eq!(
            handle(T, &mut s, MsgType::FastLane, &[], true),
            Action::FastLane
        );
        assert!(matches!(
            handle(T, &mut s, MsgType::FastLane, &[], false),
            Action::Ignore(_)
        ));
    }

    #[test]
    fn peer_lists_are_parsed_and_bounded() {
        let mut s = Double::default();
        let c = |i: u8| Contact {
            id: PeerId([i; 32]),
            ed25519: [i; 32],
            addr: ([192, 0, 2, i], 4433).into(),
        };
        let mut body = Vec::new();
        emit_contact_list(&[c(1), c(2)], &mut body);
        assert_eq!(
            handle(T, &mut s, MsgType::Peers, &body, true),
            Action::Learn(vec![c(1), c(2)])
        );
        let many: Vec<Contact> = (0..=PEERS_MAX as u8).map(c).collect();
        let mut body = Vec::new();
        emit_contact_list(&many, &mut body);
        assert!(matches!(
            handle(T, &mut s, MsgType::Peers, &body, true),
            Action::Ignore(why) if why.starts_with("bad peer list")
        ));
        assert!(matches!(
            handle(T, &mut s, MsgType::Peers, &body[..3], true),
            Action::Ignore(_)
        ));
    }

    #[test]
    fn introductions_name_exactly_one_contact() {
        let mut s = Double::default();
        let c = |i: u8| Contact {
            id: PeerId([i; 32]),
            ed25519: [i; 32],
            addr: ([192, 0, 2, i], 4433).into(),
        };
        let mut one = Vec::new();
        emit_contact_list(&[c(1)], &mut one);
        assert_eq!(
            handle(T, &mut s, MsgType::IntroduceReq, &one, true),
            Action::IntroduceReq(c(1))
        );
        assert_eq!(
            handle(T, &mut s, MsgType::Introduce, &one, true),
            Action::Introduce(c(1))
        );
        let mut two = Vec::new();
        emit_contact_list(&[c(1), c(2)], &mut two);
        let mut none = Vec::new();
        emit_contact_list(&[], &mut none);
        for body in [&two[..], &none[..], &one[..3]] {
            assert!(matches!(
                handle(T, &mut s, MsgType::Introduce, body, true),
                Action::Ignore(_)
            ));
        }
    }

    #[test]
    fn records_go_to_the_shell_and_handshake_messages_are_out_of_place() {
        let mut s = Double::default();
        assert_eq!(
            handle(T, &mut s, MsgType::Record, &[1], true),
            Action::Record
        );
        for t in [MsgType::Hello, MsgType::Init, MsgType::Resp] {
            assert!(matches!(
                handle(T, &mut s, t, &[], true),
                Action::Ignore(why) if why.starts_with("unexpected")
            ));
        }
    }
}
