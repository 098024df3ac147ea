//! Two link engines, each holding a real end-to-end session with the other, over a virtual
//! network (loss, reordering, a reliable control stream) on virtual time: frames find their
//! session by the receiver index, rekeys across the key-phase flip lose nothing, keepalives
//! keep a quiet session alive, and a session is given up when the other side goes silent or
//! never answers a rekey. Everything the engines ask for goes through `poll_output`, as in
//! the daemon.

use std::net::SocketAddr;
use std::time::Duration;

use shadowmesh_crypto::session::{initiate, respond, Session};
use shadowmesh_crypto::Identity;
use shadowmesh_link::control::Action;
use shadowmesh_link::engine::{Engine, Output};
use shadowmesh_link::members::Link;
use shadowmesh_link::paths::Paths;
use shadowmesh_link::roster::member_payload;
use shadowmesh_link::timers::{self, Activity, Teardown};
use shadowmesh_link::RosterConfig;
use shadowmesh_proto::consts::*;
use shadowmesh_proto::frame::{FrameType, Header};
use shadowmesh_proto::msg::MsgType;
use shadowmesh_proto::overlay::V6Prefix;
use shadowmesh_proto::PeerId;

const MS: fn(u64) -> Duration = Duration::from_millis;
const S: fn(u64) -> Duration = Duration::from_secs;

enum Msg {
    Frame(Vec<u8>),
    RekeyInit(Vec<u8>),
    RekeyResp(Vec<u8>),
}

/// A link as the core holds it: here the session and its paths.
struct SessionLink {
    id: usize,
    session: Session,
    paths: Paths,
}

impl std::fmt::Debug for SessionLink {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "link {}", self.id)
    }
}

impl Link for SessionLink {
    type Session = Session;
    fn id(&self) -> usize {
        self.id
    }
    fn is_open(&self) -> bool {
        true
    }
    fn precedence(&self) -> (u64, bool) {
        (0, false)
    }
    fn dialled(&self) -> bool {
        self.session.is_initiator()
    }
    fn index(&self) -> u32 {
        self.session.index()
    }
    fn activity(&self) -> Activity {
        timers::activity(&self.session)
    }
    fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }
    fn paths_mut(&mut self) -> &mut Paths {
        &mut self.paths
    }
    fn relayed(&self) -> bool {
        self.paths.relayed()
    }
}

struct Side {
    /// The other side, this side's only member.
    peer: PeerId,
    engine: Engine<SessionLink>,
    /// Data frames sent, by counter.
    sent: u64,
    /// Counters of the data frames opened, in arrival order.
    got: Vec<u64>,
    keepalives_sent: u64,
    keepalives_got: u64,
    /// Frames that named no session of ours.
    unknown_index: u64,
    /// Key phases seen on the frames this side opened.
    phases_seen: [bool; 2],
    dead: Option<(Duration, Teardown)>,
    /// What the session had done when it was given up.
    gone: Option<Activity>,
}

impl Side {
    fn new(t0: Duration, me: PeerId, peer: PeerId, session: Session) -> Side {
        let nk = [7u8; 32];
        let v6 = V6Prefix::for_network(&nk);
        let cfg = RosterConfig::member(me, &member_payload(&me, &nk), v6, 4).unwrap();
        let mut engine = Engine::new(cfg, vec![]);
        let at = SocketAddr::from(([192, 0, 2, 1], 4433));
        let paths = Paths::new(at);
        let link = SessionLink {
            id: 1,
            session,
            paths,
        };
        let record = (member_payload(&peer, &nk), [0; 32], 1);
        assert!(engine.handle_link_up(t0, 0, peer, link, record, at));
        // The roster asks for the host's routes once; there are none here.
        while let Some(o) = engine.poll_output() {
            match o {
                Output::ReadRoutes => engine.handle_local_routes(vec![]),
                Output::Route(_) => {}
                other => panic!("a new link asked for {other:?}"),
            }
        }
        Side {
            peer,
            engine,
            sent: 0,
            got: vec![],
            keepalives_sent: 0,
            keepalives_got: 0,
            unknown_index: 0,
            phases_seen: [false; 2],
            dead: None,
            gone: None,
        }
    }

    fn session(&self) -> &Session {
        let m = self.engine.members().get(&self.peer).unwrap();
        &m.link.as_ref().expect("a live session").session
    }

    fn session_mut(&mut self) -> Option<&mut Session> {
        let m = self.engine.parts_mut().1.get_mut(&self.peer)?;
        m.link.as_mut().map(|l| &mut l.session)
    }

    fn seal(&mut self, now: Duration, kind: FrameType, payload: &[u8]) -> Option<Vec<u8>> {
        let mut f = vec![0u8; FRAME_OVERHEAD + payload.len()];
        f[FRAME_HEADER_LEN..FRAME_HEADER_LEN + payload.len()].copy_from_slice(payload);
        self.session_mut()?.seal(now, kind, &mut f).ok()?;
        Some(f)
    }
}

/// Two sides, the network between them, and a virtual clock.
struct World {
    now: Duration,
    sides: [Side; 2],
    /// (arrival, to, message)
    wire: Vec<(Duration, usize, Msg)>,
    rng: u64,
    /// Per mille of data frames and keepalives lost.
    loss: u64,
    /// Drop everything side 1 sends from this time on.
    cut_1_from: Option<Duration>,
    /// Side 1 ignores rekeys.
    deaf_1: bool,
    lost: u64,
}

impl World {
    fn new(t0: Duration, loss: u64) -> World {
        let (a, b) = (Identity::generate(), Identity::generate());
        let nk = [7u8; 32];
        let binding = [3u8; 32];
        let (st, init) = initiate(&a, &b.peer_id(), &binding);
        let (sb, resp) = respond(&b, &init, &a.peer_keys(), &binding, &nk, t0).unwrap();
        let sa = st.finish(&resp, &b.peer_keys(), &nk, t0).unwrap();
        World {
            now: t0,
            sides: [
                Side::new(t0, a.peer_id(), b.peer_id(), sa),
                Side::new(t0, b.peer_id(), a.peer_id(), sb),
            ],
            wire: vec![],
            rng: 0x9E37_79B9_7F4A_7C15,
            loss,
            cut_1_from: None,
            deaf_1: false,
            lost: 0,
        }
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Frames take 5–45 ms (so they overtake each other) and some are lost; control messages
    /// take 20 ms and arrive in order, as on a stream.
    fn send(&mut self, from: usize, msg: Msg) {
        if from == 1 && self.cut_1_from.is_some_and(|t| self.now >= t) {
            return;
        }
        let delay = match msg {
            Msg::Frame(_) => {
                if self.rand() % 1000 < self.loss {
                    self.lost += 1;
                    return;
                }
                MS(5 + self.rand() % 41)
            }
            _ => MS(20),
        };
        self.wire.push((self.now + delay, 1 - from, msg));
    }

    fn send_data(&mut self, from: usize) {
        let now = self.now;
        let side = &mut self.sides[from];
        if side.dead.is_some() {
            return;
        }
        let n = side.sent;
        if let Some(f) = side.seal(now, FrameType::Data, &n.to_be_bytes()) {
            side.sent += 1;
            self.send(from, Msg::Frame(f));
        }
    }

    fn deliver(&mut self, to: usize, msg: Msg) {
        let now = self.now;
        if self.sides[to].dead.is_some() && !matches!(msg, Msg::Frame(_)) {
            return;
        }
        match msg {
            Msg::Frame(mut f) => {
                let phase = Header::parse(&f).unwrap().key_phase as usize;
                let side = &mut self.sides[to];
                let index = Header::peek_receiver(&f).unwrap();
                let Some((pid, m)) = side.engine.parts_mut().1.by_index(index) else {
                    side.unknown_index += 1;
                    return;
                };
                assert_eq!(pid, side.peer);
                let session = &mut m.link.as_mut().unwrap().session;
                let (kind, plain) = session
                    .open(now, &mut f)
                    .unwrap_or_else(|e| panic!("side {to} at {now:?}: {e}"));
                side.phases_seen[phase] = true;
                match kind {
                    FrameType::Data => side.got.push(u64::from_be_bytes(plain.try_into().unwrap())),
                    FrameType::Keepalive => side.keepalives_got += 1,
                }
            }
            // The control messages go through the engine, as in the daemon.
            Msg::RekeyInit(body) => {
                if to == 1 && self.deaf_1 {
                    return;
                }
                self.control(to, MsgType::RekeyInit, &body);
            }
            Msg::RekeyResp(body) => {
                let a = self.control(to, MsgType::RekeyResp, &body);
                assert_eq!(a, Some(Action::Rekeyed), "side {to} at {now:?}");
            }
        }
    }

    fn control(&mut self, k: usize, t: MsgType, body: &[u8]) -> Option<Action> {
        let (now, peer) = (self.now, self.sides[k].peer);
        let a = self.sides[k].engine.handle_control(now, peer, 1, t, body);
        self.outputs(k);
        a
    }

    /// Carries out what side `k`'s engine asks.
    fn outputs(&mut self, k: usize) {
        let now = self.now;
        while let Some(o) = self.sides[k].engine.poll_output() {
            match o {
                Output::Close(l, code, why) => {
                    assert_eq!(code, CLOSE_SESSION_DEAD, "side {k} at {now:?}: {why}");
                    let side = &mut self.sides[k];
                    let why = [
                        Teardown::Silent,
                        Teardown::KeysExpired,
                        Teardown::RekeyUnanswered,
                        Teardown::Unanswered,
                    ]
                    .into_iter()
                    .find(|t| t.as_str() == why)
                    .expect("a teardown");
                    side.dead = Some((now, why));
                    side.gone = Some(l.activity());
                }
                Output::Keepalive(_) => {
                    let f = self.sides[k].seal(now, FrameType::Keepalive, &[]).unwrap();
                    self.sides[k].keepalives_sent += 1;
                    self.send(k, Msg::Frame(f));
                }
                Output::Control(_, MsgType::RekeyInit, body) => self.send(k, Msg::RekeyInit(body)),
                Output::Control(_, MsgType::RekeyResp, body) => self.send(k, Msg::RekeyResp(body)),
                other => panic!("side {k} at {now:?}: {other:?}"),
            }
        }
    }

    /// Does what side `k`'s engine says is due.
    fn timers(&mut self, k: usize) {
        let now = self.now;
        self.sides[k].engine.handle_timeout(now);
        self.outputs(k);
    }

    /// Runs until `end`; each side sends a burst of three data frames every `every` (none if
    /// `None`).
    fn run(&mut self, end: Duration, every: Option<Duration>) {
        let mut next_data = every.map(|e| self.now + e);
        loop {
            let wire = self.wire.iter().map(|w| w.0).min();
            let next = [
                self.sides[0].engine.poll_timeout(),
                self.sides[1].engine.poll_timeout(),
                wire,
                next_data,
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next.filter(|&t| t <= end) else {
                break;
            };
            assert!(next >= self.now, "time runs forward");
            self.now = next;
            while let Some(i) = (0..self.wire.len())
                .filter(|&i| self.wire[i].0 <= self.now)
                .min_by_key(|&i| self.wire[i].0)
            {
                let (_, to, msg) = self.wire.remove(i);
                self.deliver(to, msg);
            }
            self.timers(0);
            self.timers(1);
            if next_data == Some(self.now) {
                for _ in 0..3 {
                    self.send_data(0);
                    self.send_data(1);
                }
                next_data = every.map(|e| self.now + e);
            }
        }
        self.now = end;
    }
}

#[test]
fn rekeys_across_the_key_phase_flip_lose_nothing() {
    let t0 = S(1_000);
    let mut w = World::new(t0, 20);
    // Traffic for 400 s: three rekeys, with frames in flight across each flip.
    w.run(t0 + S(400), Some(MS(250)));
    w.run(t0 + S(400) + MS(100), None);
    assert!(w.wire.is_empty());
    let (a, b) = (&w.sides[0], &w.sides[1]);
    assert_eq!((a.dead, b.dead), (None, None));
    assert_eq!(a.session().epoch(), 3, "a rekey every REKEY_AFTER_TIME");
    assert_eq!(b.session().epoch(), 3);
    assert!(a.phases_seen == [true, true] && b.phases_seen == [true, true]);
    // Every frame not lost on the wire was opened, whichever key sealed it.
    assert!(w.lost > 0, "the network lost frames");
    assert_eq!((a.got.len() + b.got.len()) as u64 + w.lost, a.sent + b.sent);
    assert_eq!(a.session().stats.rejected + b.session().stats.rejected, 0);
    assert_eq!(a.session().stats.replayed + b.session().stats.replayed, 0);
    let mut sorted = b.got.clone();
    sorted.sort();
    assert!(sorted != b.got, "frames arrived out of order");
    sorted.dedup();
    assert_eq!(sorted.len(), b.got.len(), "nothing delivered twice");
    // Busy both ways: no keepalive was needed.
    assert_eq!(a.keepalives_sent + b.keepalives_sent, 0);
}

#[test]
fn a_quiet_session_lives_on_keepalives() {
    let t0 = S(50);
    let mut w = World::new(t0, 0);
    w.run(t0 + S(600), None);
    w.run(t0 + S(600) + MS(100), None);
    let (a, b) = (&w.sides[0], &w.sides[1]);
    assert_eq!((a.dead, b.dead), (None, None));
    assert_eq!(a.keepalives_sent, 60, "one every KEEPALIVE_TIMEOUT");
    assert_eq!(b.keepalives_got, a.keepalives_sent);
    // Rekeys go on: each REKEY_AFTER_TIME after the last one's answer (40 ms there and back).
    assert_eq!(a.session().epoch(), 4);
}

#[test]
fn a_silent_member_is_given_up_and_then_so_are_we() {
    let t0 = S(0);
    let mut w = World::new(t0, 0);
    w.cut_1_from = Some(t0 + S(60));
    // Quiet: keepalives only, which never start the unanswered clock.
    w.run(t0 + S(200), None);
    // Side 1's last keepalive left before 60 s; side 0 gives up SILENT_AFTER after it arrived.
    let (at, why) = w.sides[0].dead.expect("side 0 gave up");
    assert_eq!(why, Teardown::Silent);
    let last = w.sides[0].gone.unwrap().last_received;
    assert!(last < t0 + S(60) && last > t0 + S(49), "{last:?}");
    assert_eq!(at, last + SILENT_AFTER);
    // Side 0 then sends nothing more; side 1 gives up in turn.
    let (at1, why1) = w.sides[1].dead.expect("side 1 gave up");
    assert_eq!(why1, Teardown::Silent);
    assert_eq!(at1, w.sides[1].gone.unwrap().last_received + SILENT_AFTER);
    assert!(at1 > at);
}

#[test]
fn data_that_goes_unanswered_gives_the_path_up_sooner() {
    let t0 = S(0);
    let mut w = World::new(t0, 0);
    w.cut_1_from = Some(t0 + S(60));
    w.run(t0 + S(200), Some(S(1)));
    // Side 1's last frame left just before 60 s; side 0's data from then on is unanswered,
    // and UNANSWERED_AFTER later side 0 gives up (20 s before silence would have).
    let (at, why) = w.sides[0].dead.expect("side 0 gave up");
    assert_eq!(why, Teardown::Unanswered);
    let gone = w.sides[0].gone.unwrap();
    let first = gone.unanswered.expect("data went unanswered");
    assert!(first >= gone.last_received && first < gone.last_received + S(1));
    assert_eq!(at, first + UNANSWERED_AFTER);
    assert!(at < gone.last_received + SILENT_AFTER);
    // Side 0 then sends nothing more; side 1's data goes unanswered in turn.
    let (at1, why1) = w.sides[1].dead.expect("side 1 gave up");
    assert_eq!(why1, Teardown::Unanswered);
    assert!(at1 > at && at1 <= at + UNANSWERED_AFTER + S(1), "{at1:?}");
}

#[test]
fn an_unanswered_rekey_gives_the_session_up() {
    let t0 = S(0);
    let mut w = World::new(t0, 0);
    w.deaf_1 = true;
    w.run(t0 + S(300), Some(S(1)));
    assert_eq!(
        w.sides[0].dead,
        Some((
            t0 + REKEY_AFTER_TIME + REKEY_ANSWER_TIMEOUT,
            Teardown::RekeyUnanswered
        ))
    );
    // What side 1 sent afterwards named a session side 0 no longer has: dropped unopened.
    assert!(w.sides[0].unknown_index > 0);
    // The responder never rekeyed: its key runs out unless it stops hearing first.
    let (_, why) = w.sides[1].dead.expect("side 1 gave up");
    assert!(matches!(
        why,
        Teardown::Silent | Teardown::KeysExpired | Teardown::Unanswered
    ));
}
