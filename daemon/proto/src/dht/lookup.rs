//! The iterative lookup: a state machine over the candidates closest to a target, modelled on
//! rust-libp2p's `ClosestPeersIter`, with time passed in, split into S/Kademlia's disjoint paths.
//!
//! - **Paths.** The seeds are dealt to `d` paths in turn; a contact an answer names joins the
//!   path of the node that named it, unless a path already has it. So no node is asked by two
//!   paths, and a Sybil on one path can only lead that path astray: the others still reach the
//!   target (Baumgart and Mies, "S/Kademlia", 2007). The result merges the paths.
//! - **Parallelism.** Each path keeps at most α requests in flight that are still expected to
//!   answer. When α answers in a row bring it nobody closer, it is *stalled* and widens to its
//!   share of k (k / d), so a stalled lookup has about k in flight, however many paths.
//! - **Timeouts.** Each request has a soft deadline from the contact's measured round trip
//!   ([`super::rtt::Rtt`]). Past it the contact is *slow*: it no longer holds a slot or blocks
//!   the end, so one dead contact never stalls a step; a late answer is still used. The hard
//!   timeout (the engine's) makes it failed.
//! - **The end.** The lookup ends when the k closest candidates of all paths together that have
//!   not failed and are not slow have all answered, or when nothing is left to ask. (Each path
//!   waiting for k answers of its own, as S/Kademlia has it, doubled the requests of a
//!   two-path lookup in the simulator and added a third to its latency; merged, the paths
//!   still never share a node, and a Sybil that captures one cannot steer the others.)
//! - **Consistency.** A Kademlia node knows its neighbourhood: asked for a target near it, it
//!   names nodes near the target. An answer that names none within the k closest known (the
//!   lookup's *radius*) is not from a node that routes, and it does not count among the k
//!   closest or go into the result. This keeps out nodes that answer with made-up or random
//!   contacts; a node that routes correctly but drops what it is asked to store is not caught
//!   here.

use core::time::Duration;
use std::collections::BTreeMap;

use super::wire::Contact;
use super::{ALPHA, K, LOOKUP_MAX_PEERS};
use crate::PeerId;

/// Most disjoint paths one lookup runs.
pub const MAX_PATHS: usize = 4;

type Distance = [u8; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotContacted,
    /// Asked; expected to answer before this soft deadline.
    Waiting(Duration),
    /// Asked, and past its soft deadline: it may still answer.
    Slow,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone)]
struct Candidate {
    contact: Contact,
    state: State,
    /// 1 for the seeds, +1 for each answer that led to it.
    depth: u32,
    path: u8,
    /// The distance of the closest contact its answer named, other than itself.
    named: Option<Distance>,
    /// It answered with a value (a FIND_VALUE holder names no contacts).
    value: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Path {
    in_flight: usize,
    no_progress: usize,
    stalled: bool,
    len: usize,
}

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send the lookup's request to this contact, then call [`Lookup::next`] again.
    Send(Contact),
    /// Wait for an answer or a timeout.
    Wait,
    /// The lookup is over.
    Done,
}

/// One iterative lookup towards `target`. Bounded: at most [`LOOKUP_MAX_PEERS`] candidates per
/// path, and twice as many requests.
#[derive(Debug, Clone)]
pub struct Lookup {
    target: [u8; 32],
    peers: BTreeMap<Distance, Candidate>,
    paths: [Path; MAX_PATHS],
    n_paths: usize,
    /// Candidates dropped to make room after they were asked (the first 8 bytes of their
    /// PeerId), at most [`LOOKUP_MAX_PEERS`] per path: so a path asks at most twice that.
    asked: Vec<u64>,
    done: bool,
    sent: u32,
}

impl Lookup {
    /// A lookup for `target` over `paths` disjoint paths (1 to [`MAX_PATHS`]), starting from
    /// `seeds` (the routing table's closest, nearest first).
    pub fn new(target: [u8; 32], seeds: impl IntoIterator<Item = Contact>, paths: usize) -> Self {
        let mut l = Lookup {
            target,
            peers: BTreeMap::new(),
            paths: [Path::default(); MAX_PATHS],
            n_paths: paths.clamp(1, MAX_PATHS),
            asked: Vec::new(),
            done: false,
            sent: 0,
        };
        for (i, c) in seeds.into_iter().enumerate() {
            l.add(c, 1, (i % l.n_paths) as u8);
        }
        l
    }

    /// The target.
    pub fn target(&self) -> &[u8; 32] {
        &self.target
    }

    /// The number of disjoint paths.
    pub fn paths(&self) -> usize {
        self.n_paths
    }

    fn tag(id: &PeerId) -> u64 {
        u64::from_be_bytes([
            id.0[0], id.0[1], id.0[2], id.0[3], id.0[4], id.0[5], id.0[6], id.0[7],
        ])
    }

    fn distance(&self, id: &PeerId) -> Distance {
        id.distance(&PeerId(self.target))
    }

    /// Adds a candidate to `path`; returns whether it was new and kept.
    fn add(&mut self, c: Contact, depth: u32, path: u8) -> bool {
        let d = self.distance(&c.id);
        if self.peers.contains_key(&d) {
            return false;
        }
        let p = usize::from(path);
        let tag = Self::tag(&c.id);
        if self.asked.contains(&tag) {
            return false;
        }
        if self.paths[p].len >= LOOKUP_MAX_PEERS {
            // Make room by dropping the path's farthest candidate nobody is waiting on, if it
            // is farther than the newcomer. One that was asked is remembered, so that it is
            // not asked again, while there is room to remember it.
            let remember = self.asked.len() < LOOKUP_MAX_PEERS * self.n_paths;
            let far = self
                .peers
                .iter()
                .rev()
                .find(|(_, c)| {
                    c.path == path
                        && match c.state {
                            State::NotContacted => true,
                            State::Succeeded | State::Failed => remember,
                            State::Waiting(_) | State::Slow => false,
                        }
                })
                .map(|(k, _)| *k);
            match far {
                Some(far) if far > d => {
                    if let Some(gone) = self.peers.remove(&far) {
                        if gone.state != State::NotContacted {
                            self.asked.push(Self::tag(&gone.contact.id));
                        }
                    }
                    self.paths[p].len -= 1;
                }
                _ => return false,
            }
        }
        self.peers.insert(
            d,
            Candidate {
                contact: c,
                state: State::NotContacted,
                depth,
                path,
                named: None,
                value: false,
            },
        );
        self.paths[p].len += 1;
        true
    }

    /// The distance of the k-th closest candidate that has not failed (the farthest, with fewer),
    /// and how many there are.
    fn radius(&self) -> (Option<Distance>, usize) {
        let mut n = 0;
        let mut last = None;
        for (d, c) in &self.peers {
            if c.state != State::Failed {
                n += 1;
                last = Some(*d);
                if n == K {
                    break;
                }
            }
        }
        (last, n)
    }

    /// Whether an answer from `c` is one a routing node gives (see the module's notes).
    fn consistent(c: &Candidate, radius: (Option<Distance>, usize)) -> bool {
        c.value
            || radius.1 <= 1
            || match (c.named, radius.0) {
                (Some(named), Some(r)) => named <= r,
                _ => false,
            }
    }

    /// The next action at `now`; `rto(contact)` is the soft deadline for a request to it. Call
    /// until it returns [`Step::Wait`] or [`Step::Done`].
    ///
    /// Each path asks its closest candidate not asked yet while it has fewer than α (k when
    /// stalled) requests out that are still expected to answer. The lookup ends when the k
    /// closest candidates of all paths together that have not failed and are not slow have
    /// answered (as routing nodes do), or when nothing is left to ask.
    pub fn next(&mut self, now: Duration, rto: impl Fn(&Contact) -> Duration) -> Step {
        if self.done {
            return Step::Done;
        }
        for c in self.peers.values_mut() {
            if matches!(c.state, State::Waiting(t) if now >= t) {
                c.state = State::Slow;
                self.paths[usize::from(c.path)].in_flight -= 1;
            }
        }
        let radius = self.radius();
        let mut counting = true;
        let mut settled = 0;
        let mut answered = false;
        let mut slow = false;
        let mut send = None;
        for (d, cand) in &self.peers {
            let path = &self.paths[usize::from(cand.path)];
            match cand.state {
                State::Waiting(_) => counting = false,
                State::Slow => slow = true,
                State::Succeeded => {
                    answered = true;
                    if counting && Self::consistent(cand, radius) {
                        settled += 1;
                        if settled >= K {
                            break;
                        }
                    }
                }
                State::NotContacted => {
                    counting = false;
                    // A path asks its closest candidate, however far: asking only within the
                    // k closest of all paths halved the requests in the simulator, but made
                    // lookups a third slower and left routing tables a third smaller. A
                    // stalled path widening to k rather than k / d cost 45% more requests
                    // for 11% less latency.
                    let parallelism = if path.stalled {
                        K.div_ceil(self.n_paths)
                    } else {
                        ALPHA
                    };
                    if path.in_flight < parallelism {
                        send = Some(*d);
                        break;
                    }
                }
                State::Failed => {}
            }
        }
        if let Some(d) = send {
            let cand = self.peers.get_mut(&d).expect("scanned");
            cand.state = State::Waiting(now + rto(&cand.contact));
            self.paths[usize::from(cand.path)].in_flight += 1;
            self.sent += 1;
            return Step::Send(cand.contact);
        }
        // Nothing to ask now: wait for requests still expected to answer, and for slow ones
        // only while nobody has answered at all.
        if settled < K && (self.in_flight() > 0 || (slow && !answered)) {
            return Step::Wait;
        }
        self.done = true;
        Step::Done
    }

    /// `from` answered with `contacts`.
    pub fn on_success(&mut self, from: &PeerId, contacts: &[Contact]) {
        let d = self.distance(from);
        let Some(c) = self.peers.get_mut(&d) else {
            return;
        };
        let p = c.path;
        match c.state {
            State::Waiting(_) => self.paths[usize::from(p)].in_flight -= 1,
            State::Failed | State::Slow => {} // late answer: still useful
            _ => return,
        }
        c.state = State::Succeeded;
        let depth = c.depth + 1;
        let target = PeerId(self.target);
        c.named = contacts
            .iter()
            .filter(|x| x.id != *from)
            .map(|x| x.id.distance(&target))
            .min();
        let closest_before = self.closest_of(p);
        for contact in contacts {
            self.add(*contact, depth, p);
        }
        let path = &mut self.paths[usize::from(p)];
        if self
            .peers
            .range(..closest_before.unwrap_or([0xff; 32]))
            .any(|(_, c)| c.path == p)
        {
            path.no_progress = 0;
            path.stalled = false;
        } else {
            path.no_progress += 1;
            if path.no_progress >= ALPHA {
                path.stalled = true;
            }
        }
    }

    /// `from` answered with a value (a FIND_VALUE holder).
    pub fn on_value(&mut self, from: &PeerId) {
        self.on_success(from, &[]);
        let d = self.distance(from);
        if let Some(c) = self.peers.get_mut(&d) {
            c.value = true;
        }
    }

    fn closest_of(&self, p: u8) -> Option<Distance> {
        self.peers
            .iter()
            .find(|(_, c)| c.path == p)
            .map(|(d, _)| *d)
    }

    /// `from` failed (refused, unreachable, timed out, or a malformed answer).
    pub fn on_failure(&mut self, from: &PeerId) {
        let d = self.distance(from);
        if let Some(c) = self.peers.get_mut(&d) {
            if let State::Waiting(_) = c.state {
                self.paths[usize::from(c.path)].in_flight -= 1;
            }
            if c.state != State::Succeeded {
                c.state = State::Failed;
            }
        }
    }

    /// Whether `id` is among the `n` closest candidates that have not failed. Records are
    /// stored at the k closest nodes, so a value from anyone farther is no evidence of what
    /// the holders have (a Sybil on the path could serve a stale one).
    pub fn is_among_closest(&self, id: &PeerId, n: usize) -> bool {
        let d = self.distance(id);
        self.peers
            .range(..d)
            .filter(|(_, c)| c.state != State::Failed)
            .count()
            < n
    }

    /// Whether every candidate closer than `id` has been asked and answered or given up on:
    /// `id` is among the closest this lookup can find, not merely among the closest it knows
    /// so far.
    pub fn settled_to(&self, id: &PeerId) -> bool {
        let d = self.distance(id);
        self.peers
            .range(..d)
            .all(|(_, c)| !matches!(c.state, State::NotContacted | State::Waiting(_)))
    }

    /// Ends the lookup now (e.g. a FIND_VALUE collected enough answers).
    pub fn finish(&mut self) {
        self.done = true;
    }

    /// Whether it is over.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// Requests still expected to answer (not slow).
    pub fn in_flight(&self) -> usize {
        self.paths.iter().map(|p| p.in_flight).sum()
    }

    /// Successive request rounds: the longest chain of answers that led to a queried peer.
    pub fn hops(&self) -> u32 {
        self.peers
            .values()
            .filter(|c| matches!(c.state, State::Succeeded | State::Failed | State::Slow))
            .map(|c| c.depth)
            .max()
            .unwrap_or(0)
    }

    /// The earliest soft deadline of a request still expected to answer.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.peers
            .values()
            .filter_map(|c| match c.state {
                State::Waiting(t) => Some(t),
                _ => None,
            })
            .min()
    }

    /// Candidates among the k closest that answered with nobody near the target: not routing
    /// nodes (see the module's notes).
    pub fn non_routing(&self) -> impl Iterator<Item = &Contact> {
        let radius = self.radius();
        self.peers
            .iter()
            .filter(move |(d, c)| {
                c.state == State::Succeeded
                    && radius.0.is_some_and(|r| **d <= r)
                    && !Self::consistent(c, radius)
            })
            .map(|(_, c)| &c.contact)
    }

    /// The up to k closest candidates that answered as routing nodes do, nearest first, over
    /// every path.
    pub fn result(&self) -> Vec<Contact> {
        let radius = self.radius();
        self.peers
            .values()
            .filter(|c| c.state == State::Succeeded && Self::consistent(c, radius))
            .take(K)
            .map(|c| c.contact)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::REQUEST_TIMEOUT;

    fn contact(i: u32) -> Contact {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_be_bytes());
        id[4] = 1;
        Contact {
            id: PeerId(id),
            ed25519: [0; 32],
            addr: "127.0.0.1:1".parse().unwrap(),
        }
    }

    /// A toy network where node i knows nodes i ± 1..=40 (ids ordered by i).
    fn neighbours(i: u32) -> Vec<Contact> {
        (i.saturating_sub(40)..i + 40)
            .filter(|&j| j != i)
            .map(contact)
            .collect()
    }

    fn index(c: &Contact) -> u32 {
        u32::from_be_bytes(c.id.0[..4].try_into().unwrap())
    }

    /// Runs a lookup for node 0 from far away over `paths` paths, everyone answering in turn.
    fn walk(paths: usize) -> (Lookup, Vec<Contact>) {
        let n = 400u32;
        let target = contact(0).id.0;
        let seeds = (n - 6..n).rev().map(contact);
        let mut l = Lookup::new(target, seeds, paths);
        let t = Duration::ZERO;
        let mut queue = Vec::new();
        let mut asked = Vec::new();
        for _ in 0..10_000 {
            while let Step::Send(c) = l.next(t, |_| REQUEST_TIMEOUT) {
                queue.push(c);
                asked.push(c);
            }
            assert!(l.in_flight() <= K * paths);
            if l.is_done() {
                break;
            }
            let c = queue.remove(0);
            l.on_success(&c.id, &neighbours(index(&c)));
        }
        assert!(l.is_done());
        (l, asked)
    }

    /// The lookup walks down to the target and ends with the k closest, never asking a node
    /// twice; with three paths too, at a cost in requests.
    #[test]
    fn walks_towards_the_target_and_ends() {
        let (one, asked_one) = walk(1);
        let r = one.result();
        assert_eq!(
            r.iter().map(index).collect::<Vec<_>>(),
            (0..K as u32).collect::<Vec<_>>()
        );
        assert!(one.hops() >= 2);
        let (three, asked_three) = walk(3);
        assert_eq!(three.paths(), 3);
        assert_eq!(three.result()[0], contact(0));
        for asked in [&asked_one, &asked_three] {
            let mut ids: Vec<u32> = asked.iter().map(index).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), asked.len(), "a node was asked twice");
        }
        assert!(asked_three.len() > asked_one.len());
    }

    /// Paths share no node: a node named by answers on two paths is asked by the first only.
    #[test]
    fn paths_are_disjoint() {
        let mut l = Lookup::new([0; 32], [contact(100), contact(101)], 2);
        let Step::Send(a) = l.next(Duration::ZERO, |_| REQUEST_TIMEOUT) else {
            panic!()
        };
        let Step::Send(b) = l.next(Duration::ZERO, |_| REQUEST_TIMEOUT) else {
            panic!()
        };
        assert_eq!((index(&a), index(&b)), (100, 101));
        // Both name node 50; it joins the first path to name it, and is asked once.
        l.on_success(&a.id, &[contact(50)]);
        l.on_success(&b.id, &[contact(50), contact(60)]);
        let mut next = vec![];
        while let Step::Send(c) = l.next(Duration::ZERO, |_| REQUEST_TIMEOUT) {
            next.push(index(&c));
        }
        next.sort_unstable();
        assert_eq!(next, [50, 60]);
        let d = |i| contact(i).id.distance(&PeerId([0; 32]));
        assert_eq!(l.peers[&d(50)].path, 0);
        assert_eq!(l.peers[&d(60)].path, 1);
    }

    /// A contact past its soft deadline frees its slot at once and does not hold up the end; its
    /// late answer is still used.
    #[test]
    fn slow_contacts_do_not_stall_the_lookup() {
        let rto = |_: &Contact| Duration::from_millis(100);
        let mut l = Lookup::new([0; 32], (1..=6).map(contact), 1);
        let mut sent = vec![];
        while let Step::Send(c) = l.next(Duration::ZERO, rto) {
            sent.push(index(&c));
        }
        assert_eq!(sent, [1, 2, 3]);
        // Nodes 1 and 2 do not answer in time; 3 answers, and the slot it frees goes to 4.
        l.on_success(&contact(3).id, &[contact(4), contact(5)]);
        while let Step::Send(c) = l.next(Duration::from_millis(50), rto) {
            sent.push(index(&c));
        }
        assert_eq!(sent, [1, 2, 3, 4]);
        // Past 1's and 2's soft deadlines: their slots go to 5 and 6, long before the hard
        // timeout.
        while let Step::Send(c) = l.next(Duration::from_millis(100), rto) {
            sent.push(index(&c));
        }
        assert_eq!(sent, [1, 2, 3, 4, 5, 6]);
        assert_eq!(l.in_flight(), 3);
        for i in [4, 5, 6] {
            l.on_success(&contact(i).id, &[contact(3), contact(4), contact(5)]);
        }
        // A late answer from slow node 2.
        l.on_success(&contact(2).id, &[contact(3)]);
        assert_eq!(l.next(Duration::from_millis(150), rto), Step::Done);
        let got: Vec<u32> = l.result().iter().map(index).collect();
        assert_eq!(
            got,
            [2, 3, 4, 5, 6],
            "slow node 1 is left out, late node 2 is in"
        );
    }

    #[test]
    fn timeouts_fail_peers_and_do_not_block() {
        let rto = |_: &Contact| Duration::from_millis(300);
        let mut l = Lookup::new([0; 32], (1..=5).map(contact), 1);
        let mut sent = vec![];
        while let Step::Send(c) = l.next(Duration::ZERO, rto) {
            sent.push(c);
        }
        assert_eq!(sent.len(), ALPHA);
        // Nobody answers: after each soft deadline the next ones are tried.
        let t = Duration::from_millis(300);
        while let Step::Send(c) = l.next(t, rto) {
            sent.push(c);
        }
        assert_eq!(sent.len(), 5);
        // Nobody answered at all: the lookup waits for late answers until the hard timeouts.
        assert_eq!(l.next(Duration::from_secs(1), rto), Step::Wait);
        for c in &sent {
            l.on_failure(&c.id);
        }
        assert_eq!(l.next(REQUEST_TIMEOUT, rto), Step::Done);
        assert!(l.result().is_empty());
        assert_eq!(l.sent(), 5);
    }

    /// An answer that names nobody near the target (made-up or random contacts) does not count
    /// among the k closest and stays out of the result; answers that route do.
    #[test]
    fn answers_that_do_not_route_stay_out_of_the_result() {
        let mut l = Lookup::new([0; 32], (1..=30).map(contact), 1);
        let far: Vec<Contact> = (0..K as u32).map(|i| contact(1_000_000 + i)).collect();
        let t = Duration::ZERO;
        for _ in 0..100 {
            let mut sent = vec![];
            while let Step::Send(c) = l.next(t, |_| REQUEST_TIMEOUT) {
                sent.push(c);
            }
            if l.is_done() {
                break;
            }
            for c in sent {
                // Nodes 5 and 7 answer with contacts far from the target.
                match index(&c) {
                    5 | 7 => l.on_success(&c.id, &far),
                    i => l.on_success(&c.id, &neighbours(i)[..6]),
                }
            }
        }
        assert!(l.is_done());
        let got: Vec<u32> = l.result().iter().map(index).collect();
        assert_eq!(got.len(), K);
        assert!(!got.contains(&5) && !got.contains(&7), "{got:?}");
        assert_eq!(got[..6], [0, 1, 2, 3, 4, 6]);
    }
}
