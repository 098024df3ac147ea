//! Relays kept: a member behind a NAT keeps links with [`RELAYS_KEPT`] members that relay
//! (of those it knows, the ones of lowest round trip) and names them in its record. A member
//! that cannot dial it asks them first for an introduction and a circuit: they are sure to
//! hold a link with it, where a member picked at random may not.

use super::*;

/// Relays a member behind a NAT keeps links with and names in its record.
pub const RELAYS_KEPT: usize = shadowmesh_proto::consts::RECORD_MAX_RELAYS;
/// How often the relays kept are checked (a lost one redialled, a replacement chosen).
pub const KEEP_CHECK: Duration = Duration::from_secs(5);
/// A relay whose link was lost is dialled again at most this often.
pub const KEEP_REDIAL: Duration = Duration::from_secs(30);

impl<L: Link> Engine<L> {
    /// Whether we keep links with relays and name them in our record (the shell turns it on
    /// when a NAT stands between us and the others, off when none does).
    pub fn set_keep_relays(&mut self, now: Duration, on: bool) {
        if !on {
            self.keep_at = None;
            self.kept.clear();
        } else if self.keep_at.is_none() {
            self.keep_at = Some(now);
        }
    }

    /// The relays we keep links with, for our record (empty unless keeping is on).
    pub fn kept_relays(&self) -> &[PeerId] {
        &self.kept
    }

    /// Whether member `pid` relays for members (it said so on its link, or its record does).
    pub fn is_relay(&self, pid: &PeerId) -> bool {
        self.members.get(pid).is_some_and(|m| m.relays)
            || self.roster.get(pid).is_some_and(|e| e.payload.relay)
    }

    /// The check every [`KEEP_CHECK`]: a relay kept stays while its direct link is open (each
    /// change re-signs our record); a lost one is replaced by the linked relay of lowest
    /// round trip, and while fewer than [`RELAYS_KEPT`] are linked, the lost ones are dialled
    /// again (each at most once per [`KEEP_REDIAL`]).
    pub(super) fn keep_relays(&mut self, now: Duration) {
        match self.keep_at {
            Some(at) if now >= at => self.keep_at = Some(now + KEEP_CHECK),
            _ => return,
        }
        let me = self.roster.me();
        let roster = &self.roster;
        let mut linked: Vec<(Duration, PeerId)> = Vec::new();
        let mut lost: Vec<PeerId> = Vec::new();
        for (p, m) in self.members.iter_mut() {
            let relay = m.relays || roster.get(p).is_some_and(|e| e.payload.relay);
            if !relay || *p == me {
                continue;
            }
            match m.link.as_mut().filter(|l| l.is_open()) {
                // A circuit through a circuit is not one: only a direct link makes a relay ours.
                Some(l) if l.relayed() => {}
                Some(l) => {
                    let rtt = l.paths_mut().quic_rtt().unwrap_or(Duration::MAX);
                    linked.push((rtt, *p));
                }
                None if !m.wait.dialling() => lost.push(*p),
                None => {}
            }
        }
        self.kept.retain(|p| linked.iter().any(|(_, q)| q == p));
        linked.sort_unstable();
        for (_, p) in linked {
            if self.kept.len() >= RELAYS_KEPT {
                break;
            }
            if !self.kept.contains(&p) {
                self.kept.push(p);
            }
        }
        let mut short = RELAYS_KEPT.saturating_sub(self.kept.len());
        for p in lost {
            if short == 0 {
                break;
            }
            if self.dial_relay(now, p) {
                short -= 1;
            }
        }
    }

    /// Dials relay `pid` (at most once per [`KEEP_REDIAL`]); whether a dial went out.
    pub(super) fn dial_relay(&mut self, now: Duration, pid: PeerId) -> bool {
        let Some(e) = self.roster.get(&pid) else {
            return false;
        };
        let addrs = e.dial_candidates();
        let ed25519 = e.ed25519;
        if addrs.is_empty() || self.keep_dialled.offer(now, pid) != Verdict::Dial {
            return false;
        }
        self.keep_dialled.finished();
        if let Some(m) = self.members.get_mut(&pid) {
            m.wait.dialling_now();
        }
        self.out.push_back(Output::Dial {
            pid,
            addrs,
            ed25519,
            fresh: false,
        });
        true
    }
}
