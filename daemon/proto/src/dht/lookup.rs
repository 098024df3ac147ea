//! The iterative lookup: a state machine over the candidates closest to a target, modelled on
//! rust-libp2p's `ClosestPeersIter`, with time passed in.
//!
//! At most α requests are in flight; each answer adds the contacts it carried. When α answers in
//! a row bring nobody closer than the closest already known, the lookup is *stalled* and widens
//! to k parallel requests, so that it ends by having queried the k closest it can find. It ends
//! when the k closest known, non-failed candidates have all answered, or when nothing is left to
//! ask. A candidate that does not answer within the request timeout counts as failed (it no
//! longer blocks the lookup; a late answer is still used).

use core::time::Duration;
use std::collections::BTreeMap;

use super::wire::Contact;
use super::{ALPHA, K, LOOKUP_MAX_PEERS, REQUEST_TIMEOUT};
use crate::PeerId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotContacted,
    Waiting(Duration),
    Succeeded,
    Failed,
}

#[derive(Debug, Clone)]
struct Candidate {
    contact: Contact,
    state: State,
    /// 1 for the seeds, +1 for each answer that led to it.
    depth: u32,
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

/// One iterative lookup towards `target`. Bounded: at most [`LOOKUP_MAX_PEERS`] candidates.
#[derive(Debug, Clone)]
pub struct Lookup {
    target: [u8; 32],
    peers: BTreeMap<[u8; 32], Candidate>,
    in_flight: usize,
    no_progress: usize,
    stalled: bool,
    done: bool,
    sent: u32,
    timeout: Duration,
}

impl Lookup {
    /// A lookup for `target` starting from `seeds` (the routing table's closest).
    pub fn new(target: [u8; 32], seeds: impl IntoIterator<Item = Contact>) -> Self {
        let mut l = Lookup {
            target,
            peers: BTreeMap::new(),
            in_flight: 0,
            no_progress: 0,
            stalled: false,
            done: false,
            sent: 0,
            timeout: REQUEST_TIMEOUT,
        };
        for c in seeds {
            l.add(c, 1);
        }
        l
    }

    /// Overrides the per-request timeout.
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The target.
    pub fn target(&self) -> &[u8; 32] {
        &self.target
    }

    fn distance(&self, id: &PeerId) -> [u8; 32] {
        id.distance(&PeerId(self.target))
    }

    /// Adds a candidate; returns whether it was new and kept.
    fn add(&mut self, c: Contact, depth: u32) -> bool {
        let d = self.distance(&c.id);
        if self.peers.contains_key(&d) {
            return false;
        }
        if self.peers.len() >= LOOKUP_MAX_PEERS {
            // Make room by dropping the farthest candidate nobody is waiting on, if it is
            // farther than the newcomer.
            let far = self
                .peers
                .iter()
                .rev()
                .find(|(_, c)| !matches!(c.state, State::Waiting(_)))
                .map(|(k, _)| *k);
            match far {
                Some(far) if far > d => {
                    self.peers.remove(&far);
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
            },
        );
        true
    }

    /// The next action at `now`. Call until it returns [`Step::Wait`] or [`Step::Done`].
    pub fn next(&mut self, now: Duration) -> Step {
        if self.done {
            return Step::Done;
        }
        let parallelism = if self.stalled { K } else { ALPHA };
        let mut counting = true;
        let mut succeeded = 0;
        for cand in self.peers.values_mut() {
            match cand.state {
                State::Waiting(deadline) => {
                    if now >= deadline {
                        cand.state = State::Failed;
                        self.in_flight -= 1;
                    } else if self.in_flight >= parallelism {
                        return Step::Wait;
                    } else {
                        // A closer candidate is still pending: the k closest are not settled.
                        counting = false;
                    }
                }
                State::Succeeded => {
                    if counting {
                        succeeded += 1;
                        if succeeded >= K {
                            self.done = true;
                            return Step::Done;
                        }
                    }
                }
                State::NotContacted => {
                    if self.in_flight >= parallelism {
                        return Step::Wait;
                    }
                    cand.state = State::Waiting(now + self.timeout);
                    self.in_flight += 1;
                    self.sent += 1;
                    return Step::Send(cand.contact);
                }
                State::Failed => {}
            }
        }
        if self.in_flight > 0 {
            Step::Wait
        } else {
            self.done = true;
            Step::Done
        }
    }

    /// `from` answered with `contacts`.
    pub fn on_success(&mut self, from: &PeerId, contacts: &[Contact]) {
        let d = self.distance(from);
        let Some(c) = self.peers.get_mut(&d) else {
            return;
        };
        match c.state {
            State::Waiting(_) => self.in_flight -= 1,
            State::Failed => {} // late answer: still useful
            _ => return,
        }
        c.state = State::Succeeded;
        let depth = c.depth + 1;
        let closest_before = self.peers.keys().next().copied();
        for contact in contacts {
            self.add(*contact, depth);
        }
        let progressed = self.peers.keys().next().copied() != closest_before;
        if progressed {
            self.no_progress = 0;
            self.stalled = false;
        } else {
            self.no_progress += 1;
            if self.no_progress >= ALPHA {
                self.stalled = true;
            }
        }
    }

    /// `from` failed (refused, unreachable, or a malformed answer).
    pub fn on_failure(&mut self, from: &PeerId) {
        let d = self.distance(from);
        if let Some(c) = self.peers.get_mut(&d) {
            if let State::Waiting(_) = c.state {
                self.in_flight -= 1;
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

    /// Requests still awaited.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Successive request rounds: the longest chain of answers that led to a queried peer.
    pub fn hops(&self) -> u32 {
        self.peers
            .values()
            .filter(|c| matches!(c.state, State::Succeeded | State::Failed))
            .map(|c| c.depth)
            .max()
            .unwrap_or(0)
    }

    /// The earliest pending request deadline.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.peers
            .values()
            .filter_map(|c| match c.state {
                State::Waiting(t) => Some(t),
                _ => None,
            })
            .min()
    }

    /// The up to k closest candidates that answered, nearest first.
    pub fn result(&self) -> Vec<Contact> {
        self.peers
            .values()
            .filter(|c| c.state == State::Succeeded)
            .take(K)
            .map(|c| c.contact)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A toy network where node i knows nodes i ± 1..=4 (ids ordered by i): a lookup for
    /// node 0 from far away must walk down to it, never exceeding α in flight.
    #[test]
    fn walks_towards_the_target_and_ends() {
        let n = 400u32;
        let target = contact(0).id.0;
        let mut l = Lookup::new(target, [contact(n - 1), contact(n - 2)]);
        let t = Duration::ZERO;
        let mut queue = Vec::new();
        for _ in 0..10_000 {
            loop {
                match l.next(t) {
                    Step::Send(c) => queue.push(c),
                    Step::Wait => break,
                    Step::Done => break,
                }
            }
            assert!(l.in_flight() <= K);
            if l.is_done() {
                break;
            }
            let c = queue.remove(0);
            let i = u32::from_be_bytes(c.id.0[..4].try_into().unwrap());
            let known: Vec<_> = (i.saturating_sub(40)..i).map(contact).collect();
            l.on_success(&c.id, &known);
        }
        assert!(l.is_done());
        let r = l.result();
        assert_eq!(r.len(), K);
        assert_eq!(r[0], contact(0));
        assert!(l.hops() >= 2);
    }

    #[test]
    fn timeouts_fail_peers_and_do_not_block() {
        let mut l = Lookup::new([0; 32], (1..=5).map(contact));
        let mut sent = vec![];
        while let Step::Send(c) = l.next(Duration::ZERO) {
            sent.push(c);
        }
        assert_eq!(sent.len(), ALPHA);
        // Nobody answers: after the timeout the next ones are tried, then the lookup ends empty.
        let mut t = Duration::ZERO;
        for _ in 0..10 {
            t += REQUEST_TIMEOUT;
            while let Step::Send(_) = l.next(t) {}
        }
        assert!(l.is_done());
        assert!(l.result().is_empty());
        assert_eq!(l.sent(), 5);
    }
}
