//! The link core as one engine: the members, their records and links, the routes they are
//! given, the packets waiting for a dial, peer exchange and every session's timers, behind
//! one set of inputs and outputs.
//!
//! The shell feeds it what happened: a link came up or went down
//! ([`Engine::handle_link_up`], [`Engine::handle_link_down`]), a control message arrived
//! ([`Engine::handle_control`]), a TUN packet has no link to go on ([`Engine::route`]), a dial
//! ended, the host's routes were read, time passed ([`Engine::handle_timeout`]). It carries out
//! what [`Engine::poll_output`] asks (close a connection, send a control message or a
//! keepalive, dial, install a route) and calls [`Engine::handle_timeout`] at
//! [`Engine::poll_timeout`]. Frames are opened and sealed by the shell on the member the engine
//! names (by destination address or by receiver index): that path allocates nothing and takes
//! no detour through the queue.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use shadowmesh_proto::consts::{
    CLOSE_AUTH_FAILED, CLOSE_BUSY, CLOSE_PROTOCOL, CLOSE_REPLACED, CLOSE_SESSION_DEAD,
};
use shadowmesh_proto::dht::wire::{emit_addr, emit_contact_list, Contact};
use shadowmesh_proto::msg::{MsgType, PEERS_MAX};
use shadowmesh_proto::record::Payload;
use shadowmesh_proto::relay::{Circuit, CircuitStatus};
use shadowmesh_proto::route::Prefix;
use shadowmesh_proto::session::SessionState;
use shadowmesh_proto::PeerId;

use crate::control::{self, Action};
use crate::exchange::{Exchange, Verdict};
use crate::members::{Link, LinkUp, Member, Members, Refusal};
use crate::relay::{self as relaying, Relay};
use crate::roster::{self, Roster, RosterConfig, Update};

/// Packets held per member while its connection is being dialled.
pub const PENDING_MAX: usize = 16;
/// Peer-exchange dials in flight at once (each is a handshake: ML-DSA work and ~50 KiB).
pub const LEARN_IN_FLIGHT: usize = 8;
/// A member named in peer exchange is dialled at most this often.
pub const LEARN_AGAIN: Duration = Duration::from_secs(60);
/// A dial of a member not complete after this long asks the members we hold links with to
/// introduce us: the member dials us too, which opens both NATs (a direct dial's handshake
/// takes a few round trips; one through two filtering NATs never completes alone).
pub const INTRODUCE_AFTER: Duration = Duration::from_secs(1);
/// Members asked to introduce us to one member.
pub const INTRODUCERS: usize = 2;
/// Members told of a member new to us (the closest to it by XOR distance): enough that a late
/// joiner behind a NAT is dialled by some at once; telling every member would cost a full mesh
/// N messages at each of N nodes per join (introductions reach the rest when they need it).
pub const ANNOUNCE_TO: usize = 8;
/// How long a member with no address to dial may take to reach us through an introduction or
/// a circuit before what was queued for it is dropped (and its next packet tries again).
pub const INTRODUCED_WITHIN: Duration = Duration::from_secs(5);
/// The address an introduction request names for a member that published none (the
/// introducer knows where it is).
const NO_ADDRESS: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));
/// Introductions acted on per PeerId (asked for, made, answered by a dial) at most this often.
pub const INTRODUCE_AGAIN: Duration = Duration::from_secs(10);

/// What the shell must do.
#[derive(Debug)]
pub enum Output<L> {
    /// Close this connection with the QUIC application code and reason (a link replaced,
    /// refused, given up, or of a member no longer allowed).
    Close(L, u32, String),
    /// Send a message on the member's control stream.
    Control(PeerId, MsgType, Vec<u8>),
    /// Send the member's live link a keepalive.
    Keepalive(PeerId),
    /// Send this packet, which waited for the member's link, over it.
    Send(PeerId, Vec<u8>),
    /// Connect to the member at these addresses in turn (a new connection when `fresh`), then
    /// call [`Engine::handle_dial_end`].
    Dial {
        /// The member.
        pid: PeerId,
        /// Where to try, in order.
        addrs: Vec<SocketAddr>,
        /// Its Ed25519 key (checked in the handshake).
        ed25519: [u8; 32],
        /// Open a new connection even if one is live.
        fresh: bool,
    },
    /// Connect to a node a member named in peer exchange, then call
    /// [`Engine::handle_learn_end`].
    Learn(Contact),
    /// Verify this record (its signature, its owner is the member) and give its payload to
    /// [`Engine::handle_record`].
    Record(PeerId, Vec<u8>),
    /// Read the host's routes and give them to [`Engine::handle_local_routes`].
    ReadRoutes,
    /// What a judgement of the members' prefixes asks (install, withdraw, readdress, log).
    Route(roster::Output),
    /// The member at `reporter` (the far end of a connection we dialled) sees us at `at` now:
    /// a report for the addresses our record carries ([`shadowmesh_proto::dht::Dht::seen`]).
    Seen {
        /// The member's address.
        reporter: SocketAddr,
        /// Ours, as it sees it.
        at: SocketAddr,
    },
    /// Member `relay` opened a circuit to `peer` for us: give `peer` a local address that
    /// reaches `relay`'s address with `circuit` in the envelope, and when `dial`, dial `peer`
    /// there (a new connection, through the relay).
    Circuit {
        /// The relay.
        relay: PeerId,
        /// The id our envelopes carry.
        circuit: u32,
        /// The member at the other end.
        peer: Contact,
        /// We dial; else the other end does.
        dial: bool,
    },
}

/// The link core.
pub struct Engine<L> {
    roster: Roster,
    members: Members<L>,
    exchange: Exchange,
    /// If not empty, the only PeerIds admitted.
    allowed: Vec<PeerId>,
    /// Whether we take data frames as plain UDP (then we offer it to every new link).
    fast_lane: bool,
    /// A [`Output::ReadRoutes`] is out and not answered yet.
    reading: bool,
    /// Dials under way, and when to ask for an introduction if they have not completed.
    intro_at: Vec<(Duration, Contact)>,
    /// Introductions we ask for (per member), make (per requester and member), and answer
    /// with a dial (per member): each once per [`INTRODUCE_AGAIN`].
    intro_asked: Exchange,
    intro_made: Exchange,
    intro_dialled: Exchange,
    /// Whether we relay for members, and the circuits we carry.
    relay_on: bool,
    relay: Relay,
    /// Circuits we were told to dial through, per relay and member, once per
    /// [`INTRODUCE_AGAIN`].
    relay_dialled: Exchange,
    /// Members with no address to dial, waiting for an introduction or a circuit: the wait
    /// ends (and what was queued for them is dropped) at the deadline.
    intro_wait: Vec<(Duration, PeerId)>,
    /// The next check of the relays we keep (`None`: we keep none).
    keep_at: Option<Duration>,
    /// The relays we keep links with and name in our record.
    kept: Vec<PeerId>,
    /// Relays we dialled to keep or to ask, each once per [`KEEP_REDIAL`].
    keep_dialled: Exchange,
    /// Introductions to ask of a member's relay once our dial of the relay completes.
    intro_via: Vec<(PeerId, Contact)>,
    /// What `option exit` asks (the roster holds the member chosen).
    exit_choice: ExitChoice,
    out: VecDeque<Output<L>>,
}

impl<L: Link> Engine<L> {
    /// No members yet; `cfg` says who we are and what we install, `allowed` whom we admit
    /// (everyone if empty).
    pub fn new(cfg: RosterConfig, allowed: Vec<PeerId>) -> Engine<L> {
        let capacity = cfg.capacity;
        Engine {
            roster: Roster::new(cfg),
            members: Members::new(capacity),
            exchange: Exchange::new(LEARN_IN_FLIGHT, LEARN_AGAIN, capacity),
            allowed,
            fast_lane: false,
            reading: false,
            intro_at: Vec::new(),
            intro_asked: Exchange::new(capacity, INTRODUCE_AGAIN, capacity),
            intro_made: Exchange::new(capacity, INTRODUCE_AGAIN, capacity),
            intro_dialled: Exchange::new(capacity, INTRODUCE_AGAIN, capacity),
            relay_on: false,
            relay: Relay::new(),
            relay_dialled: Exchange::new(capacity, INTRODUCE_AGAIN, capacity),
            intro_wait: Vec::new(),
            keep_at: None,
            kept: Vec::new(),
            keep_dialled: Exchange::new(capacity, KEEP_REDIAL, capacity),
            intro_via: Vec::new(),
            exit_choice: ExitChoice::None,
            out: VecDeque::new(),
        }
    }

    /// Whether we offer the fast lane to new links.
    pub fn set_fast_lane(&mut self, on: bool) {
        self.fast_lane = on;
    }

    /// Whether `pid` may be a member.
    pub fn admitted(&self, pid: &PeerId) -> bool {
        self.allowed.is_empty() || self.allowed.contains(pid)
    }

    /// The members' records and routes.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// The members' links and counters.
    pub fn members(&self) -> &Members<L> {
        &self.members
    }

    /// Both, with the links to change (what the shell's `peers` and path reads need).
    pub fn parts_mut(&mut self) -> (&Roster, &mut Members<L>) {
        (&self.roster, &mut self.members)
    }

    /// Member `pid`'s live link.
    pub fn link_mut(&mut self, pid: &PeerId) -> Option<&mut L> {
        self.members.get_mut(pid).and_then(|m| m.link.as_mut())
    }

    /// The next thing the shell must do.
    pub fn poll_output(&mut self) -> Option<Output<L>> {
        self.out.pop_front()
    }

    /// Whether something waits in [`Engine::poll_output`].
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// When to call [`Engine::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let intro = self
            .intro_at
            .iter()
            .map(|(t, _)| *t)
            .chain(self.intro_wait.iter().map(|(t, _)| *t))
            .chain(self.keep_at)
            .min();
        match (self.members.poll_timeout(), intro) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn judge_later(&mut self) {
        if !self.reading {
            self.reading = true;
            self.out.push_back(Output::ReadRoutes);
        }
    }

    /// A member's connection authenticated at `now` (Unix time `unix_now`): `payload`, `ed25519`
    /// and `seq` are from its record, `at` is where it is. Returns whether the link was
    /// taken; if not, an [`Output::Close`] for it follows. A taken link is offered the fast
    /// lane and told who else is in the mesh, and a member new to us is named to the others;
    /// what waited for it goes out.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_link_up(
        &mut self,
        now: Duration,
        unix_now: u64,
        pid: PeerId,
        link: L,
        record: (Payload, [u8; 32], u64),
        at: SocketAddr,
    ) -> bool {
        if !self.admitted(&pid) {
            let why = "not on the allowlist".to_string();
            self.out
                .push_back(Output::Close(link, CLOSE_AUTH_FAILED, why));
            return false;
        }
        let pending = match self.members.link_up(now, pid, link, unix_now) {
            LinkUp::Linked { replaced, pending } => {
                if let Some(old) = replaced {
                    let why = "replaced".to_string();
                    self.out.push_back(Output::Close(old, CLOSE_REPLACED, why));
                }
                pending
            }
            LinkUp::Refused(link, why) => {
                let code = match why {
                    Refusal::EarlierWins => CLOSE_REPLACED,
                    Refusal::Full => CLOSE_BUSY,
                    Refusal::IndexInUse => CLOSE_PROTOCOL,
                };
                self.out
                    .push_back(Output::Close(link, code, why.as_str().to_string()));
                return false;
            }
        };
        let (payload, ed25519, seq) = record;
        let added = self.roster.record(pid, payload, ed25519, seq) == Update::Added;
        // A relayed link's address is ours alone (a local stand-in for the circuit).
        let relayed = shadowmesh_proto::relay::is_mapped(at);
        if !relayed {
            self.roster.set_endpoint(&pid, at);
        }
        self.judge_later();
        if added {
            // A member new to us is news to the others we hold links with: one that cannot be
            // dialled from outside its NAT (it joined after them) is then dialled by them.
            let mut body = Vec::new();
            emit_contact_list(
                &[Contact {
                    id: pid,
                    ed25519,
                    addr: at,
                }],
                &mut body,
            );
            let mut told: Vec<PeerId> = self
                .members
                .iter()
                .filter(|(p, m)| **p != pid && m.link.is_some())
                .map(|(p, _)| *p)
                .collect();
            let distance = |p: &PeerId| {
                let mut d = p.0;
                for (a, b) in d.iter_mut().zip(pid.0) {
                    *a ^= b;
                }
                d
            };
            told.sort_unstable_by_key(distance);
            for p in told.into_iter().take(ANNOUNCE_TO) {
                self.out
                    .push_back(Output::Control(p, MsgType::Peers, body.clone()));
            }
        }
        if self.fast_lane {
            self.out
                .push_back(Output::Control(pid, MsgType::FastLane, Vec::new()));
        }
        if self.relay_on && !relayed {
            self.out
                .push_back(Output::Control(pid, MsgType::Relay, Vec::new()));
        }
        let list = self.contacts(Some(&pid));
        if !list.is_empty() {
            let mut body = Vec::new();
            emit_contact_list(&list, &mut body);
            self.out
                .push_back(Output::Control(pid, MsgType::Peers, body));
        }
        for p in pending {
            self.out.push_back(Output::Send(pid, p));
        }
        if !relayed && !self.intro_via.is_empty() {
            self.ask_via(&pid);
        }
        if self.exit_choice != ExitChoice::None {
            self.choose_exit(None);
        }
        true
    }

    /// Contacts of the members we hold live links with, except `except` (at most what one
    /// peer-exchange message carries).
    pub fn contacts(&self, except: Option<&PeerId>) -> Vec<Contact> {
        self.members
            .iter()
            .filter(|(p, m)| Some(*p) != except && m.link.is_some())
            .filter_map(|(p, _)| {
                let e = self.roster.get(p)?;
                Some(Contact {
                    id: *p,
                    ed25519: e.ed25519,
                    addr: e.endpoint?,
                })
            })
            .take(PEERS_MAX)
            .collect()
    }

    /// Connection `id` of member `pid` ended. Whether it was the member's link (the member
    /// stays known; its next packet dials again).
    /// Circuits through us stay (a link replaced or redialled comes back at the same address,
    /// or [`Engine::paths_read`] moves them); unused, they expire.
    pub fn handle_link_down(&mut self, pid: &PeerId, id: usize) -> bool {
        let was = self.members.link_down(pid, id).is_some();
        if was && self.exit_choice != ExitChoice::None {
            self.choose_exit(None);
        }
        was
    }

    /// A control message `t` with `body` arrived at `now` on connection `id` of member `pid`.
    /// A rekey is answered here; one on a connection that is not the member's link is ignored.
    /// Returns what the message asked, for the shell's log.
    pub fn handle_control(
        &mut self,
        now: Duration,
        pid: PeerId,
        id: usize,
        t: MsgType,
        body: &[u8],
    ) -> Option<Action> {
        let fast_lane = self.fast_lane;
        let action = {
            let l = self
                .members
                .get_mut(&pid)
                .and_then(|m| m.link.as_mut())
                .filter(|l| l.id() == id)?;
            let a = control::handle(now, l.session_mut(), t, body, fast_lane);
            // As a relay only over a direct link (a circuit through a circuit is not one).
            let relays = a == Action::Relay && !l.relayed();
            // Only the far end of a connection we dialled, directly, sees where we are: our
            // side of a connection we accepted cannot move (QUIC servers do not migrate).
            let seen = match a {
                Action::Seen(at) if l.dialled() && !l.relayed() => {
                    Some((l.paths_mut().quic_addr(), at))
                }
                _ => None,
            };
            if a == Action::FastLane {
                l.paths_mut().offer_fast();
            }
            if relays {
                if let Some(m) = self.members.get_mut(&pid) {
                    m.relays = true;
                }
            }
            if let Some((reporter, at)) = seen {
                self.out.push_back(Output::Seen { reporter, at });
            }
            a
        };
        match &action {
            Action::Send(t, body) => self.out.push_back(Output::Control(pid, *t, body.clone())),
            Action::Close(code, why) => {
                if let Some(l) = self.members.link_down(&pid, id) {
                    self.out.push_back(Output::Close(l, *code, why.clone()));
                }
            }
            Action::Record => self.out.push_back(Output::Record(pid, body.to_vec())),
            Action::Learn(list) => self.learn(now, list),
            Action::IntroduceReq(c) => self.introduce(now, pid, *c),
            Action::Introduce(c) => self.introduced(now, *c),
            Action::Circuit(c) => self.circuit(now, pid, *c),
            Action::LanNames(list) => {
                let accepted = self
                    .roster
                    .get(&pid)
                    .map(|e| e.judged().accepted.clone())
                    .unwrap_or_default();
                if let Some(m) = self.members.get_mut(&pid) {
                    m.lan_names = list
                        .iter()
                        .filter(|n| accepted.iter().any(|p| p.contains(n.addr)))
                        .cloned()
                        .collect();
                }
            }
            Action::FastLane
            | Action::Relay
            | Action::Seen(_)
            | Action::Rekeyed
            | Action::Ignore(_) => {}
        }
        Some(action)
    }

    /// Member `pid`'s newly signed record, checked by the shell, carries `payload` with
    /// sequence number `seq`. Whether it replaced the one we held.
    pub fn handle_record(&mut self, pid: &PeerId, payload: Payload, seq: u64) -> bool {
        let Some(ed) = self.roster.get(pid).map(|e| e.ed25519) else {
            return false;
        };
        let replaced = self.roster.record(*pid, payload, ed, seq) == Update::Replaced;
        if replaced {
            self.judge_later();
            if self.exit_choice != ExitChoice::None {
                self.choose_exit(None);
            }
        }
        replaced
    }

    /// Our own record changed: every connected member gets it.
    pub fn announce(&mut self, record: &[u8]) {
        for (p, m) in self.members.iter() {
            if m.link.is_some() {
                let body = record.to_vec();
                self.out
                    .push_back(Output::Control(*p, MsgType::Record, body));
            }
        }
    }

    /// The host's addresses and routes other than ours, as the shell read them after an
    /// [`Output::ReadRoutes`]: every member's prefixes are judged again.
    pub fn handle_local_routes(&mut self, local: Vec<Prefix>) {
        self.reading = false;
        self.roster.judge(local);
        while let Some(o) = self.roster.poll_output() {
            self.out.push_back(Output::Route(o));
        }
    }

    /// Dials the members a member told us about that we are not connected to: each PeerId at
    /// most once per [`LEARN_AGAIN`], at most [`LEARN_IN_FLIGHT`] at a time, so that `Peers`
    /// messages cannot make us dial in bulk.
    fn learn(&mut self, now: Duration, list: &[Contact]) {
        let me = self.roster.me();
        for c in list {
            let known = self
                .members
                .get(&c.id)
                .is_some_and(|m| m.link.is_some() || m.wait.dialling());
            if c.id == me || known || !self.admitted(&c.id) {
                continue;
            }
            match self.exchange.offer(now, c.id) {
                Verdict::Dial => {
                    self.introduce_later(now, *c);
                    self.out.push_back(Output::Learn(*c));
                }
                Verdict::Recent => {}
                Verdict::Busy => return,
            }
        }
    }

    /// A peer-exchange dial ([`Output::Learn`]) ended.
    pub fn handle_learn_end(&mut self) {
        self.exchange.finished();
    }

    /// The member a TUN packet to `dst` goes to, with its live link, for the shell to seal
    /// the packet on. A member without one gets `packet` queued (at most [`PENDING_MAX`];
    /// more are dropped and counted) and, if no dial is under way, an [`Output::Dial`].
    /// `None` also when no member holds `dst`.
    /// A dial that has not completed after [`INTRODUCE_AFTER`] asks for an introduction.
    #[inline]
    pub fn route(
        &mut self,
        now: Duration,
        dst: IpAddr,
        packet: &[u8],
    ) -> Option<(PeerId, &mut Member<L>)> {
        let pid = self.roster.lookup(dst)?;
        let m = self.members.get_mut(&pid)?;
        if m.link.is_none() {
            let held = m.wait.hold(packet, PENDING_MAX);
            if !held.queued {
                m.counters.tx_dropped += 1;
            }
            if held.dial {
                m.reach.start(now);
                if let Some(e) = self.roster.get(&pid) {
                    let addrs = e.dial_candidates();
                    let c = Contact {
                        id: pid,
                        ed25519: e.ed25519,
                        addr: addrs.first().copied().unwrap_or(NO_ADDRESS),
                    };
                    let room = self.roster.capacity();
                    // With nowhere to dial, there is no dial to give its second.
                    let ask = if addrs.is_empty() {
                        now
                    } else {
                        now + INTRODUCE_AFTER
                    };
                    if self.intro_at.len() < room {
                        self.intro_at.push((ask, c));
                    }
                    if addrs.is_empty() {
                        // Nowhere to dial (behind a NAT that maps every destination apart, it
                        // publishes no address): only an introduction or a circuit opens a
                        // path, from its side.
                        if self.intro_wait.len() < room {
                            self.intro_wait.push((now + INTRODUCED_WITHIN, pid));
                        }
                    } else {
                        self.out.push_back(Output::Dial {
                            pid,
                            addrs,
                            ed25519: e.ed25519,
                            fresh: false,
                        });
                    }
                }
            }
            return None;
        }
        Some((pid, m))
    }

    /// A dial of `pid` ended: if it left the member without an open link, what waited for it
    /// is dropped (and counted), and its next packet may dial again. (A dial can succeed
    /// without a new link: an earlier connection won, or the node was not a member.)
    pub fn handle_dial_end(&mut self, pid: &PeerId) {
        if let Some(m) = self.members.get_mut(pid) {
            if m.link.as_ref().is_none_or(|l| !l.is_open()) {
                m.counters.tx_dropped += m.wait.failed() as u64;
                // A relay we dialled to ask for introductions: they are not asked of it.
                self.intro_via.retain(|(r, _)| r != pid);
            }
        }
        if self.exit_choice != ExitChoice::None {
            self.choose_exit(None);
        }
    }

    /// Re-dials, on new connections, the members whose connections we accepted (after our
    /// address changed: a QUIC server cannot migrate, so those connections are dead ends), and
    /// the relays we hold no link with (whichever died of the move before we noticed it).
    pub fn redial_accepted(&mut self) {
        let mut dials = Vec::new();
        for (p, m) in self.members.iter_mut() {
            let relay_lost = m.relays && m.link.is_none();
            if relay_lost || m.link.as_ref().is_some_and(|l| !l.dialled()) {
                m.wait.dialling_now();
                dials.push(*p);
            }
        }
        for pid in dials {
            if let Some(e) = self.roster.get(&pid) {
                self.out.push_back(Output::Dial {
                    pid,
                    addrs: e.dial_candidates(),
                    ed25519: e.ed25519,
                    fresh: true,
                });
            }
        }
    }

    /// Does what the session timers say is due at `now`: a keepalive, a rekey (started here,
    /// its message sent on the control stream), or giving the session up (its connection is
    /// closed; the member stays, and its next packet dials again).
    pub fn handle_timeout(&mut self, now: Duration) {
        let due: Vec<Contact> = self
            .intro_at
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, c)| *c)
            .collect();
        self.intro_at.retain(|(t, _)| *t > now);
        let waited: Vec<PeerId> = self
            .intro_wait
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, p)| *p)
            .collect();
        self.intro_wait.retain(|(t, _)| *t > now);
        for p in waited {
            self.handle_dial_end(&p);
        }
        self.relay.expire(now);
        for c in due {
            self.ask_introduction(now, c);
        }
        self.keep_relays(now);
        while let Some((pid, due)) = self.members.pop_due(now) {
            if let Some(why) = due.teardown {
                let id = self
                    .members
                    .get(&pid)
                    .and_then(|m| m.link.as_ref())
                    .map(|l| l.id());
                if let Some(l) = id.and_then(|id| self.members.link_down(&pid, id)) {
                    let why = why.as_str().to_string();
                    self.out
                        .push_back(Output::Close(l, CLOSE_SESSION_DEAD, why));
                }
                continue;
            }
            if due.keepalive {
                self.out.push_back(Output::Keepalive(pid));
            }
            if due.rekey {
                let l = self.members.get_mut(&pid).and_then(|m| m.link.as_mut());
                if let Some(Ok(body)) = l.map(|l| l.session_mut().start_rekey(now)) {
                    self.out
                        .push_back(Output::Control(pid, MsgType::RekeyInit, body));
                }
            }
        }
    }

    /// Replaces the allowlist and the route policy (configuration reload): members no longer
    /// allowed are forgotten and their connections closed; every prefix is judged again.
    pub fn reconfigure(
        &mut self,
        allowed: Vec<PeerId>,
        own: Vec<Prefix>,
        accept_routes: bool,
        accept: Vec<Prefix>,
    ) {
        self.allowed = allowed;
        self.roster.reconfigure(own, accept_routes, accept);
        let gone: Vec<PeerId> = self
            .members
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !self.admitted(p))
            .collect();
        for p in gone {
            self.roster.remove(&p);
            if let Some(l) = self.members.remove(&p).and_then(|m| m.link) {
                self.out
                    .push_back(Output::Close(l, CLOSE_AUTH_FAILED, "not allowed".into()));
            }
        }
        self.judge_later();
        self.choose_exit(None);
    }
}

mod exit;
mod intro;
mod keep;
pub use exit::{ExitChoice, ExitState, EXIT_UNANSWERED};
pub use keep::{KEEP_CHECK, KEEP_REDIAL, RELAYS_KEPT};
#[cfg(test)]
mod tests;
