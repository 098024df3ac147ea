//! The members we hold links with: at most one live link each (of two connections to one
//! member the one of higher precedence stays), the receiver index each link's frames name it
//! by, the packets waiting while a member is dialled, its traffic counters, and every link's
//! session timers in one queue.
//!
//! Generic over the link itself: the daemon's holds a QUIC connection and an end-to-end
//! session, a test's whatever it needs; the core asks of it only what [`Link`] says. Time is
//! the caller's monotonic clock, as a `Duration` since any fixed epoch.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use shadowmesh_proto::PeerId;

use shadowmesh_proto::session::SessionState;

use crate::paths::Paths;
use crate::pending::Pending;
use crate::timers::{check, Activity, Due, Timers};

/// What the core needs of a link: the daemon's holds a QUIC connection and an end-to-end
/// session; the core reads and drives the session and the paths, and never the connection.
pub trait Link {
    /// The end-to-end session (rekeys are answered and started on it).
    type Session: SessionState;
    /// Tells two connections apart (a member's links are compared by it).
    fn id(&self) -> usize;
    /// Whether the connection is still open.
    fn is_open(&self) -> bool;
    /// Of two open connections to one member, the higher stays.
    fn precedence(&self) -> (u64, bool);
    /// Settles two connections of equal precedence (dialled the same way, e.g. through two
    /// relays at once) that came up within [`DIAL_RACE`] of each other: both ends compute the
    /// same value for one connection (the daemon's from the TLS exporter), so both keep the
    /// same one whichever order their handshakes completed in.
    fn tiebreak(&self) -> u64 {
        0
    }
    /// Whether we dialled it (else the member did).
    fn dialled(&self) -> bool;
    /// The receiver index of its session: frames for it carry this.
    fn index(&self) -> u32;
    /// What its session did, for the timers.
    fn activity(&self) -> Activity;
    /// Its session.
    fn session_mut(&mut self) -> &mut Self::Session;
    /// The ways to the member over it.
    fn paths_mut(&mut self) -> &mut Paths;
    /// Whether it goes through a relay.
    fn relayed(&self) -> bool;
    /// Whether the member's end is on one of our LAN segments (found there, or at an address
    /// on a subnet of one of our interfaces): such a link is preferred to any other.
    fn on_lan(&self) -> bool {
        false
    }
}

/// Traffic counters of one member (and the totals).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Inner bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Inner bytes received and delivered.
    pub rx_bytes: u64,
    /// Packets received and delivered.
    pub rx_packets: u64,
    /// Received packets whose source the member does not own (dropped).
    pub rx_spoofed: u64,
    /// Received frames that failed authentication, replay or parsing (dropped).
    pub rx_invalid: u64,
    /// Packets dropped on the way out (no session, queue full, the connection refused).
    pub tx_dropped: u64,
}

/// What we hold for one member beside its record (which the [`crate::Roster`] keeps).
#[derive(Debug)]
pub struct Member<L> {
    /// The live link, if any.
    pub link: Option<L>,
    /// Traffic.
    pub counters: Counters,
    /// Unix time of the last completed handshake (0: never).
    pub last_handshake: u64,
    /// Packets waiting for a link, and whether one is being dialled.
    pub wait: Pending,
    /// The member said it relays for members ([`MsgType::Relay`]).
    ///
    /// [`MsgType::Relay`]: shadowmesh_proto::msg::MsgType::Relay
    pub relays: bool,
    /// When its link came up (the caller's monotonic clock).
    pub linked_at: Duration,
    /// Since a packet of ours found no link and dialled it: until its first link came up
    /// (what waited could go), and until a direct one did (`None`: not yet, or we did not
    /// wait for it). The start is kept until a direct link comes up.
    pub reach: Reach,
    /// The hosts behind it, as it named them ([`MsgType::LanNames`]), inside its accepted
    /// routes; kept while it has a link.
    ///
    /// [`MsgType::LanNames`]: shadowmesh_proto::msg::MsgType::LanNames
    pub lan_names: Vec<shadowmesh_proto::lan_names::LanName>,
}

/// How long reaching a member took, from the packet that dialled it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    /// When our packet found no link (the caller's monotonic clock).
    pub started: Option<Duration>,
    /// From then until a link came up.
    pub first: Option<Duration>,
    /// From then until a direct link came up.
    pub direct: Option<Duration>,
}

impl Reach {
    /// A packet of ours found no link at `now`.
    pub fn start(&mut self, now: Duration) {
        *self = Reach {
            started: Some(now),
            ..Reach::default()
        };
    }

    /// A link (through a relay when `relayed`) came up at `now`.
    fn linked(&mut self, now: Duration, relayed: bool) {
        let Some(t0) = self.started else {
            return;
        };
        let took = now.saturating_sub(t0);
        self.first.get_or_insert(took);
        if !relayed {
            self.direct = Some(took);
            self.started = None;
        }
    }
}

impl<L> Default for Member<L> {
    fn default() -> Self {
        Member {
            link: None,
            counters: Counters::default(),
            last_handshake: 0,
            wait: Pending::default(),
            relays: false,
            linked_at: Duration::ZERO,
            reach: Reach::default(),
            lan_names: Vec::new(),
        }
    }
}

/// Two connections of equal precedence that come up within this of each other were dialled at
/// once (through two relays, or a redial racing a dial): [`Link::tiebreak`] picks one. Past it,
/// the newer replaces the older, which has likely died unnoticed (a NAT lost its mapping, a
/// relay went).
pub const DIAL_RACE: Duration = Duration::from_secs(5);

/// Why a new link was refused (the caller closes its connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// As many members as we take, and this is a new one.
    Full,
    /// The member's open link has the higher precedence: it stays.
    EarlierWins,
    /// Another member's link has the same receiver index (a one-in-four-million chance per
    /// link at a thousand members): the next dial picks another.
    IndexInUse,
}

impl Refusal {
    /// A few words for the log and the connection's close reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "member table full",
            Refusal::EarlierWins => "an earlier connection stays",
            Refusal::IndexInUse => "receiver index in use",
        }
    }
}

/// How a link goes, worst first: through a relay, direct, over the LAN.
fn rank<L: Link>(l: &L) -> u8 {
    match (l.relayed(), l.on_lan()) {
        (true, _) => 0,
        (false, false) => 1,
        (false, true) => 2,
    }
}

/// The outcome of [`Members::link_up`].
#[derive(Debug)]
pub enum LinkUp<L> {
    /// The link is the member's now. Close `replaced` (its earlier link, another connection);
    /// send `pending` (what waited for it) over the new one.
    Linked {
        /// The member's earlier link.
        replaced: Option<L>,
        /// Packets that waited for a link, oldest first.
        pending: VecDeque<Vec<u8>>,
    },
    /// Not taken: close it.
    Refused(L, Refusal),
}

/// The members, their links and the links' timers.
#[derive(Debug)]
pub struct Members<L> {
    map: BTreeMap<PeerId, Member<L>>,
    /// Receiver index → member, for the links that are up; the last answer is kept, since the
    /// frames of a burst are for one session.
    indexes: HashMap<u32, PeerId>,
    last: Option<(u32, PeerId)>,
    timers: Timers<PeerId>,
    capacity: usize,
}

impl<L: Link> Members<L> {
    /// No members; at most `capacity`.
    pub fn new(capacity: usize) -> Self {
        Members {
            map: BTreeMap::new(),
            indexes: HashMap::new(),
            last: None,
            timers: Timers::new(),
            capacity,
        }
    }

    /// A member's link came up (its handshake completed at Unix time `unix_now`).
    pub fn link_up(&mut self, now: Duration, pid: PeerId, link: L, unix_now: u64) -> LinkUp<L> {
        let known = self.map.get(&pid);
        if known.is_none() && self.map.len() >= self.capacity {
            return LinkUp::Refused(link, Refusal::Full);
        }
        if let Some((old, at)) = known.and_then(|m| Some((m.link.as_ref()?, m.linked_at))) {
            // A link over the LAN replaces any other and a direct one replaces one through a
            // relay, never the other way round; between two of a kind, the precedence (the
            // same at both ends) decides, and between two racing dials the tiebreak.
            let (ro, rn) = (rank(old), rank(&link));
            let (a, b) = (old.precedence(), link.precedence());
            let earlier_wins = match ro.cmp(&rn) {
                core::cmp::Ordering::Greater => true,
                core::cmp::Ordering::Less => false,
                _ if a == b && now < at + DIAL_RACE => old.tiebreak() > link.tiebreak(),
                _ => a > b,
            };
            if old.is_open() && old.id() != link.id() && earlier_wins {
                return LinkUp::Refused(link, Refusal::EarlierWins);
            }
        }
        if self.indexes.get(&link.index()).is_some_and(|p| *p != pid) {
            return LinkUp::Refused(link, Refusal::IndexInUse);
        }
        self.forget_indexes(&pid);
        self.indexes.insert(link.index(), pid);
        let m = self.map.entry(pid).or_default();
        m.reach.linked(now, link.relayed());
        let replaced = m.link.take().filter(|old| old.id() != link.id());
        m.link = Some(link);
        m.last_handshake = unix_now;
        m.linked_at = now;
        let pending = m.wait.linked();
        self.timers.arm(pid, now);
        LinkUp::Linked { replaced, pending }
    }

    /// The connection `id` of `pid` ended (or is to be closed): if it is the member's link,
    /// the member has none now (it stays known), and the link is returned.
    pub fn link_down(&mut self, pid: &PeerId, id: usize) -> Option<L> {
        let m = self.map.get_mut(pid)?;
        if m.link.as_ref().is_none_or(|l| l.id() != id) {
            return None;
        }
        let l = m.link.take();
        m.lan_names.clear();
        self.forget_indexes(pid);
        self.timers.disarm(pid);
        l
    }

    /// Forgets `pid` altogether; returns what we held for it.
    pub fn remove(&mut self, pid: &PeerId) -> Option<Member<L>> {
        self.forget_indexes(pid);
        self.timers.disarm(pid);
        self.map.remove(pid)
    }

    fn forget_indexes(&mut self, pid: &PeerId) {
        self.indexes.retain(|_, p| p != pid);
        self.last = None;
    }

    /// The member whose link's session has receiver index `index`.
    pub fn by_index(&mut self, index: u32) -> Option<(PeerId, &mut Member<L>)> {
        let pid = match self.last {
            Some((i, p)) if i == index => p,
            _ => {
                let p = *self.indexes.get(&index)?;
                self.last = Some((index, p));
                p
            }
        };
        self.map.get_mut(&pid).map(|m| (pid, m))
    }

    /// The earliest deadline of any link's timers: call [`Members::pop_due`] then.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.timers.poll_timeout()
    }

    /// One link whose deadline passed, and what is due on it: send a keepalive, start a rekey,
    /// or give the session up (close the link; [`Members::link_down`] follows). Its next
    /// deadline is set, assuming the keepalive and rekey are done. `None` once nothing more is
    /// due at `now`.
    pub fn pop_due(&mut self, now: Duration) -> Option<(PeerId, Due)> {
        while let Some(pid) = self.timers.pop_expired(now) {
            let Some(l) = self
                .map
                .get(&pid)
                .and_then(|m| m.link.as_ref())
                .filter(|l| l.is_open())
            else {
                continue;
            };
            let due = check(now, &l.activity());
            if due.teardown.is_none() {
                self.timers.arm(pid, due.next);
            }
            return Some((pid, due));
        }
        None
    }

    /// The member `pid`.
    pub fn get(&self, pid: &PeerId) -> Option<&Member<L>> {
        self.map.get(pid)
    }

    /// The member `pid`, to change.
    pub fn get_mut(&mut self, pid: &PeerId) -> Option<&mut Member<L>> {
        self.map.get_mut(pid)
    }

    /// Every member, by PeerId.
    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &Member<L>)> {
        self.map.iter()
    }

    /// Every member, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&PeerId, &mut Member<L>)> {
        self.map.iter_mut()
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Members whose link is up and open.
    pub fn connected(&self) -> usize {
        self.map
            .values()
            .filter(|m| m.link.as_ref().is_some_and(|l| l.is_open()))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    type Test = crate::double::TestLink;

    fn link(id: usize, precedence: u64, index: u32, t: Duration) -> Test {
        Test::new(id, precedence, index, t)
    }

    fn pid(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    fn linked(up: LinkUp<Test>) -> (Option<Test>, VecDeque<Vec<u8>>) {
        match up {
            LinkUp::Linked { replaced, pending } => (replaced, pending),
            LinkUp::Refused(_, why) => panic!("refused: {why:?}"),
        }
    }

    fn refused(up: LinkUp<Test>) -> Refusal {
        match up {
            LinkUp::Refused(_, why) => why,
            LinkUp::Linked { .. } => panic!("linked"),
        }
    }

    #[test]
    fn packets_wait_for_the_link_and_go_with_it() {
        let mut m = Members::<Test>::new(8);
        assert!(m
            .link_up(S(0), pid(1), link(1, 5, 11, S(0)), 100)
            .is_linked());
        assert!(m.link_down(&pid(1), 1).is_some());
        let w = &mut m.get_mut(&pid(1)).unwrap().wait;
        assert!(w.hold(b"one", 16).dial);
        assert!(!w.hold(b"two", 16).dial, "one dial at a time");
        let (replaced, pending) = linked(m.link_up(S(5), pid(1), link(2, 5, 12, S(5)), 105));
        assert!(replaced.is_none(), "the old link was already gone");
        assert_eq!(pending, [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(m.get(&pid(1)).unwrap().last_handshake, 105);
        assert_eq!(m.by_index(12).map(|(p, _)| p), Some(pid(1)));
        assert!(m.by_index(11).is_none(), "the old session's index is gone");
    }

    #[test]
    fn of_two_connections_the_higher_precedence_stays() {
        let mut m = Members::<Test>::new(8);
        linked(m.link_up(S(0), pid(1), link(1, 7, 11, S(0)), 0));
        assert_eq!(
            refused(m.link_up(S(0), pid(1), link(2, 3, 12, S(0)), 0)),
            Refusal::EarlierWins
        );
        assert_eq!(m.by_index(11).map(|(p, _)| p), Some(pid(1)));
        assert!(m.by_index(12).is_none());
        let (replaced, _) = linked(m.link_up(S(0), pid(1), link(3, 9, 13, S(0)), 0));
        assert_eq!(
            replaced.map(|l| l.id),
            Some(1),
            "the caller closes the earlier one"
        );
        // A closed earlier link does not stand in the way, whatever its precedence.
        m.get_mut(&pid(1)).unwrap().link.as_mut().unwrap().open = false;
        let (replaced, _) = linked(m.link_up(S(0), pid(1), link(4, 1, 14, S(0)), 0));
        assert_eq!(replaced.map(|l| l.id), Some(3));
        // The end of a connection that is no longer the member's link changes nothing.
        assert!(m.link_down(&pid(1), 3).is_none());
        assert_eq!(m.connected(), 1);
        assert!(m.link_down(&pid(1), 4).is_some());
        assert_eq!((m.connected(), m.len()), (0, 1), "the member stays known");
    }

    #[test]
    fn a_link_over_the_lan_beats_any_other() {
        let mut m = Members::<Test>::new(8);
        linked(m.link_up(S(0), pid(1), link(1, 9, 11, S(0)), 0));
        let mut lan = link(2, 1, 12, S(0));
        lan.lan = true;
        let (replaced, _) = linked(m.link_up(S(0), pid(1), lan, 0));
        assert_eq!(replaced.map(|l| l.id), Some(1), "whatever the precedence");
        assert_eq!(
            refused(m.link_up(S(60), pid(1), link(3, 9, 13, S(60)), 0)),
            Refusal::EarlierWins,
            "nor is it replaced by a later one around the internet"
        );
        m.get_mut(&pid(1)).unwrap().link.as_mut().unwrap().open = false;
        linked(m.link_up(S(61), pid(1), link(4, 9, 14, S(61)), 0));
    }

    #[test]
    fn racing_dials_end_on_the_same_connection_at_both_ends() {
        let racer = |id: usize, tiebreak: u64| {
            let mut l = link(id, 5, 20 + id as u32, S(0));
            l.tiebreak = tiebreak;
            l
        };
        // One end completes A then B, the other B then A: both keep B (the higher tiebreak).
        let mut one = Members::<Test>::new(8);
        linked(one.link_up(S(10), pid(1), racer(1, 3), 0));
        let (replaced, _) = linked(one.link_up(S(11), pid(1), racer(2, 9), 0));
        assert_eq!(replaced.map(|l| l.id), Some(1));
        let mut other = Members::<Test>::new(8);
        linked(other.link_up(S(10), pid(1), racer(2, 9), 0));
        assert_eq!(
            refused(other.link_up(S(11), pid(1), racer(1, 3), 0)),
            Refusal::EarlierWins
        );
        assert_eq!(one.get(&pid(1)).unwrap().link.as_ref().unwrap().id, 2);
        assert_eq!(other.get(&pid(1)).unwrap().link.as_ref().unwrap().id, 2);
        // Past the race, a new connection is a redial: it replaces the old link, likely dead.
        let (replaced, _) = linked(one.link_up(S(11) + DIAL_RACE, pid(1), racer(3, 1), 0));
        assert_eq!(replaced.map(|l| l.id), Some(2));
    }

    #[test]
    fn no_member_takes_another_ones_index_and_the_table_is_bounded() {
        let mut m = Members::<Test>::new(2);
        linked(m.link_up(S(0), pid(1), link(1, 0, 7, S(0)), 0));
        assert_eq!(
            refused(m.link_up(S(0), pid(2), link(2, 0, 7, S(0)), 0)),
            Refusal::IndexInUse
        );
        assert!(
            m.get(&pid(2)).is_none(),
            "nothing held for a refused stranger"
        );
        linked(m.link_up(S(0), pid(2), link(3, 0, 8, S(0)), 0));
        assert_eq!(
            refused(m.link_up(S(0), pid(3), link(4, 0, 9, S(0)), 0)),
            Refusal::Full
        );
        // A known member may always come back.
        m.link_down(&pid(2), 3);
        linked(m.link_up(S(1), pid(2), link(5, 0, 10, S(1)), 0));
        assert_eq!(m.by_index(7).map(|(p, _)| p), Some(pid(1)));
        assert_eq!(m.by_index(10).map(|(p, _)| p), Some(pid(2)));
        m.remove(&pid(1));
        assert!(
            m.by_index(7).is_none(),
            "the remembered answer goes with the member"
        );
        assert_eq!(
            m.poll_timeout(),
            Some(S(1)),
            "pid(1)'s deadline went with it"
        );
    }

    #[test]
    fn timers_run_for_links_that_are_up_and_stop_with_them() {
        let mut m = Members::<Test>::new(8);
        linked(m.link_up(S(0), pid(1), link(1, 0, 1, S(0)), 0));
        linked(m.link_up(S(0), pid(2), link(2, 0, 2, S(0)), 0));
        assert_eq!(
            m.poll_timeout(),
            Some(S(0)),
            "a new link is looked at at once"
        );
        let mut due = vec![];
        while let Some((p, d)) = m.pop_due(S(0)) {
            due.push((p, d.keepalive, d.next));
        }
        assert_eq!(due, [(pid(1), false, S(10)), (pid(2), false, S(10))]);
        let (p, d) = m.pop_due(S(10)).unwrap();
        assert!(d.keepalive && p == pid(1));
        // pid(2)'s connection ends before its deadline: nothing is due for it any more.
        m.link_down(&pid(2), 2);
        assert!(m.pop_due(S(10)).is_none());
        assert_eq!(m.poll_timeout(), Some(S(20)));
        // pid(1) goes silent: given up at SILENT_AFTER, and not looked at again.
        let mut t = S(20);
        let gone = loop {
            let (_, d) = m.pop_due(t).expect("a deadline");
            if let Some(why) = d.teardown {
                break (t, why);
            }
            t = d.next;
        };
        assert_eq!(gone, (S(35), crate::timers::Teardown::Silent));
        assert_eq!(m.poll_timeout(), None);
    }

    impl LinkUp<Test> {
        fn is_linked(&self) -> bool {
            matches!(self, LinkUp::Linked { .. })
        }
    }
}
