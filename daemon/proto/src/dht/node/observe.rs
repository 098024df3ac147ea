//! Where other nodes see us ([`super::super::observed`]): asking them, and hearing that we moved.

use core::net::SocketAddr;
use core::time::Duration;

use super::super::kbucket::subnet_key;
use super::super::{K, MOVED_SETTLE, OBSERVE_INTERVAL, OBSERVE_PINGS, OBSERVE_RETRY};
use super::{Dht, Output, RecordCheck, ReqKind};
use crate::dht::wire::Request;

impl<C: RecordCheck> Dht<C> {
    /// A node at `reporter` told us, outside a PONG, that it sees us at `at` now (a member
    /// whose connection from us migrated). Counts as its PONG would.
    pub fn seen(&mut self, now: Duration, reporter: SocketAddr, at: SocketAddr) {
        self.report(now, reporter, at);
    }

    /// The node at `reporter` sees us at `at`. Only a node outside every private network sees
    /// our public side. When it saw us elsewhere before, we moved: the others are asked again
    /// at once, rather than after [`OBSERVE_INTERVAL`].
    pub(super) fn report(&mut self, now: Duration, reporter: SocketAddr, at: SocketAddr) {
        if subnet_key(&reporter).is_none() {
            return;
        }
        let before = self.observed.addresses(now);
        let quiet = self.last_moved.is_none_or(|t| now >= t + OBSERVE_RETRY);
        // We left the address it saw us at: whoever else saw us there is asked again.
        let moved = self.observed.moved(now, reporter, at).filter(|_| quiet);
        if let Some(old) = moved {
            self.observed.forget(old);
        }
        self.observed.report(now, reporter, at);
        let addrs = self.observed.addresses(now);
        if addrs != before {
            if !addrs.is_empty() && self.next_observe.is_some() {
                self.next_observe = Some(now + OBSERVE_INTERVAL);
            }
            self.out.push_back(Output::Observed(addrs));
        }
        if moved.is_some() {
            self.last_moved = Some(now);
            self.widen = true;
            // Soon, not now: the connections to the other observers that died with our old
            // address are being redialled.
            if let Some(t) = self.next_observe.as_mut() {
                *t = now + MOVED_SETTLE;
            }
            self.out.push_back(Output::Moved);
        }
    }

    /// A link of ours went silent: our address may have moved under us. The nodes we observe
    /// through are asked now rather than at the next interval (at most once per
    /// [`OBSERVE_RETRY`]).
    pub fn observe_soon(&mut self, now: Duration) {
        if self.last_soon.is_some_and(|t| now < t + OBSERVE_RETRY) {
            return;
        }
        if let Some(t) = self.next_observe.as_mut() {
            self.last_soon = Some(now);
            *t = (*t).min(now);
        }
    }

    /// Asks the [`OBSERVE_PINGS`] contacts closest to us with public addresses, each in another
    /// network, where they see us; again after [`OBSERVE_INTERVAL`], or [`OBSERVE_RETRY`] while no address
    /// has a quorum. A contact at a private, loopback or carrier-grade-NAT address, or in our
    /// own network, is not asked: it sees our inside.
    pub(super) fn observe(&mut self, now: Duration) {
        let target = self.local.id.0;
        let mine = subnet_key(&self.local.addr);
        let mut asked: Vec<[u8; 7]> = Vec::new();
        let want = OBSERVE_PINGS
            * if std::mem::take(&mut self.widen) {
                2
            } else {
                1
            };
        for c in self.table.closest(&target, K) {
            let Some(net) = subnet_key(&c.addr) else {
                continue;
            };
            if asked.len() >= want || Some(net) == mine || asked.contains(&net) {
                continue;
            }
            asked.push(net);
            self.send(c, Request::Ping, ReqKind::Ping { lru: false }, now);
        }
        let known = !self.observed.addresses(now).is_empty();
        self.next_observe = Some(
            now + if known {
                OBSERVE_INTERVAL
            } else {
                OBSERVE_RETRY
            },
        );
    }
}
