//! Introductions and relays: a dial that does not complete asks members we hold links with
//! to introduce us (each tells the other side to dial back); a member that relays also opens a
//! circuit between the two and tells both ends, one of which dials through it.

use super::*;

impl<L: Link> Engine<L> {
    /// Whether we relay for members (members we hold links with are told when it turns on;
    /// turning it off drops the circuits).
    pub fn set_relay(&mut self, on: bool) {
        if on && !self.relay_on {
            for (p, m) in self.members.iter() {
                if m.link.as_ref().is_some_and(|l| l.is_open() && !l.relayed()) {
                    self.out
                        .push_back(Output::Control(*p, MsgType::Relay, Vec::new()));
                }
            }
        }
        if !on {
            let counters = self.relay.counters();
            self.relay = Relay::new();
            self.relay.restore(counters);
        }
        self.relay_on = on;
    }

    /// What relaying carried and refused since start.
    pub fn relay_counters(&self) -> relaying::RelayCounters {
        self.relay.counters()
    }

    /// The circuits we carry, when we relay.
    pub fn relay(&self) -> Option<&Relay> {
        self.relay_on.then_some(&self.relay)
    }

    /// A relayed datagram of `len` bytes from `from` names circuit `id`: where it goes and the
    /// id its envelope carries on (`None`: dropped).
    #[inline]
    pub fn relay_forward(
        &mut self,
        now: Duration,
        from: SocketAddr,
        id: u32,
        len: usize,
    ) -> Option<(SocketAddr, u32)> {
        if !self.relay_on {
            return None;
        }
        self.relay.forward(now, from, id, len)
    }

    /// Call after the links' QUIC paths were read: a member whose connection to us migrated
    /// is told where we see it now ([`MsgType::Seen`]: its public address may have changed,
    /// and it cannot see that itself), and the circuits through us follow it there.
    pub fn paths_read(&mut self) {
        let mut told = Vec::new();
        for (p, m) in self.members.iter_mut() {
            if let Some(l) = m.link.as_mut().filter(|l| l.is_open()) {
                let moved = l.paths_mut().take_moved();
                let a = l.paths_mut().quic_addr();
                if moved && !l.dialled() && !l.relayed() {
                    told.push((*p, a));
                }
                if !self.relay.circuits().is_empty() {
                    self.relay.moved(p, a);
                }
            }
        }
        for (p, a) in told {
            let mut body = Vec::new();
            emit_addr(&a, &mut body);
            self.out.push_back(Output::Control(p, MsgType::Seen, body));
        }
    }

    /// A dial of `c` starts at `now`: if it has not completed after [`INTRODUCE_AFTER`], ask
    /// for an introduction.
    pub(super) fn introduce_later(&mut self, now: Duration, c: Contact) {
        if self.intro_at.len() < self.roster.capacity() {
            self.intro_at.push((now + INTRODUCE_AFTER, c));
        }
    }

    /// Asks up to [`INTRODUCERS`] members we hold links with to introduce us to `c`, whose
    /// dial has not completed: each tells `c` to dial us.
    pub(super) fn ask_introduction(&mut self, now: Duration, c: Contact) {
        let linked = |m: &Member<L>| m.link.as_ref().is_some_and(|l| l.is_open());
        if self.members.get(&c.id).is_some_and(linked) {
            return;
        }
        if self.intro_asked.offer(now, c.id) != Verdict::Dial {
            return;
        }
        self.intro_asked.finished();
        let mut body = Vec::new();
        emit_contact_list(&[c], &mut body);
        // The relays `c` keeps first (they hold a link with it for sure), then other relays
        // (one that holds a link with `c` opens a circuit as it introduces us), then anyone.
        let named = self
            .roster
            .get(&c.id)
            .map(|e| e.payload.relays.clone())
            .unwrap_or_default();
        let mut asked: Vec<(u8, PeerId)> = self
            .members
            .iter()
            .filter(|(p, m)| **p != c.id && linked(m))
            .map(|(p, _)| {
                let rank = if named.contains(p) {
                    0
                } else if self.is_relay(p) {
                    1
                } else {
                    2
                };
                (rank, *p)
            })
            .collect();
        asked.sort_unstable();
        let asked: Vec<PeerId> = asked
            .into_iter()
            .map(|(_, p)| p)
            .take(INTRODUCERS)
            .collect();
        for p in &asked {
            self.out
                .push_back(Output::Control(*p, MsgType::IntroduceReq, body.clone()));
        }
        // A relay it names that we hold no link with is dialled, and asked once linked.
        for r in named {
            let me = self.roster.me();
            if asked.contains(&r) || r == me || r == c.id {
                continue;
            }
            let room = self.intro_via.len() < self.roster.capacity();
            if room && self.dial_relay(now, r) {
                self.intro_via.push((r, c));
            }
        }
    }

    /// Our dial of relay `relay` completed: the introductions that waited for it are asked.
    pub(super) fn ask_via(&mut self, relay: &PeerId) {
        let mut i = 0;
        while i < self.intro_via.len() {
            if self.intro_via[i].0 != *relay {
                i += 1;
                continue;
            }
            let (_, c) = self.intro_via.swap_remove(i);
            let done = self
                .members
                .get(&c.id)
                .is_some_and(|m| m.link.as_ref().is_some_and(|l| l.is_open()));
            if !done {
                let mut body = Vec::new();
                emit_contact_list(&[c], &mut body);
                self.out
                    .push_back(Output::Control(*relay, MsgType::IntroduceReq, body));
            }
        }
    }

    /// Member `from` asks us to introduce it to `c`: if we hold a link with `c`, `c` is told
    /// to dial `from` where we see it.
    pub(super) fn introduce(&mut self, now: Duration, from: PeerId, c: Contact) {
        let linked = self
            .members
            .get(&c.id)
            .is_some_and(|m| m.link.as_ref().is_some_and(|l| l.is_open()));
        let Some(e) = self.roster.get(&from) else {
            return;
        };
        let Some(at) = e.endpoint else {
            return;
        };
        // Once a while per requester and target: a gateway that just started asks for several
        // members at once.
        let mut pair = from;
        for (a, b) in pair.0.iter_mut().zip(c.id.0) {
            *a ^= b;
        }
        let asker = Contact {
            id: from,
            ed25519: e.ed25519,
            addr: at,
        };
        if c.id == from || self.intro_made.offer(now, pair) != Verdict::Dial {
            return;
        }
        self.intro_made.finished();
        if !linked {
            if self.relay_on {
                self.refuse_circuit(from, c, CircuitStatus::Unreachable);
            }
            return;
        }
        let mut body = Vec::new();
        emit_contact_list(&[asker], &mut body);
        self.out
            .push_back(Output::Control(c.id, MsgType::Introduce, body));
        if self.relay_on {
            self.open_circuit(now, asker, c);
        }
    }

    /// The quic address of member `pid`'s open, direct link.
    pub(super) fn direct_addr(&mut self, pid: &PeerId) -> Option<SocketAddr> {
        let l = self.members.get_mut(pid)?.link.as_mut()?;
        (l.is_open() && !l.relayed()).then(|| l.paths_mut().quic_addr())
    }

    /// As a relay: opens a circuit from `a` (who asked) to `b`, both members we hold direct
    /// links with, and tells both ends (`b` dials through it), or tells `a` why not.
    pub(super) fn open_circuit(&mut self, now: Duration, a: Contact, b: Contact) {
        let (Some(a_at), Some(b_at)) = (self.direct_addr(&a.id), self.direct_addr(&b.id)) else {
            self.refuse_circuit(a.id, b, CircuitStatus::Unreachable);
            return;
        };
        let b = Contact {
            addr: self
                .roster
                .get(&b.id)
                .and_then(|e| e.endpoint)
                .unwrap_or(b_at),
            ..b
        };
        match self.relay.open(now, (a.id, a_at), (b.id, b_at)) {
            Ok((ia, ib)) => {
                for (to, peer, id, status) in [
                    (a.id, b, ia, CircuitStatus::Accept),
                    (b.id, a, ib, CircuitStatus::Dial),
                ] {
                    let mut body = Vec::new();
                    Circuit { peer, id, status }.emit(&mut body);
                    self.out
                        .push_back(Output::Control(to, MsgType::Circuit, body));
                }
            }
            Err(relaying::Refused::Full) => self.refuse_circuit(a.id, b, CircuitStatus::Full),
            Err(relaying::Refused::MemberFull) => {
                self.refuse_circuit(a.id, b, CircuitStatus::MemberFull)
            }
        }
    }

    pub(super) fn refuse_circuit(&mut self, to: PeerId, peer: Contact, status: CircuitStatus) {
        let mut body = Vec::new();
        Circuit {
            peer,
            id: 0,
            status,
        }
        .emit(&mut body);
        self.out
            .push_back(Output::Control(to, MsgType::Circuit, body));
    }

    /// Member `relay` opened a circuit to `c.peer` for us (or refused one; the shell logs
    /// that): unless we hold a link with the member already, the shell maps it and, when we
    /// are the end that dials, dials through it.
    pub(super) fn circuit(&mut self, now: Duration, relay: PeerId, c: Circuit) {
        let id = c.peer.id;
        let linked = self
            .members
            .get(&id)
            .is_some_and(|m| m.link.as_ref().is_some_and(|l| l.is_open()));
        if !c.status.open() || id == self.roster.me() || id == relay || linked {
            return;
        }
        if !self.admitted(&id) {
            return;
        }
        let dial = c.status == CircuitStatus::Dial;
        if dial {
            // Per relay and member: when one relay's circuit fails, another's is tried.
            let mut pair = relay;
            for (a, b) in pair.0.iter_mut().zip(id.0) {
                *a ^= b;
            }
            if self.relay_dialled.offer(now, pair) != Verdict::Dial {
                return;
            }
            self.relay_dialled.finished();
            if let Some(m) = self.members.get_mut(&id) {
                m.wait.dialling_now();
            }
        }
        self.out.push_back(Output::Circuit {
            relay,
            circuit: c.id,
            peer: c.peer,
            dial,
        });
    }

    /// A member tells us that `c` is dialling us: dial it at once (where the introducer sees
    /// it first, then where its record says). A link we hold with `c` at another address is a
    /// stale one (it restarted, its NAT moved it): the dial is a new connection.
    pub(super) fn introduced(&mut self, now: Duration, c: Contact) {
        let held = self
            .members
            .get_mut(&c.id)
            .and_then(|m| m.link.as_mut())
            .filter(|l| l.is_open())
            .map(|l| l.paths_mut().iter().any(|p| p.addr == c.addr));
        if c.id == self.roster.me() || held == Some(true) || !self.admitted(&c.id) {
            return;
        }
        if self.intro_dialled.offer(now, c.id) != Verdict::Dial {
            return;
        }
        self.intro_dialled.finished();
        let mut addrs = vec![c.addr];
        if let Some(e) = self.roster.get(&c.id) {
            addrs.extend(e.dial_candidates().into_iter().filter(|a| *a != c.addr));
        }
        if let Some(m) = self.members.get_mut(&c.id) {
            m.wait.dialling_now();
        }
        self.out.push_back(Output::Dial {
            pid: c.id,
            addrs,
            ed25519: c.ed25519,
            fresh: held.is_some(),
        });
    }
}
