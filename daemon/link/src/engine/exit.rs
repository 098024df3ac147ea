//! The exit: the member that our own and our LAN's internet traffic leaves through (its record
//! says it offers itself as one). What no member's prefix holds goes to it, and what it sends
//! back may come from any address outside the overlay ([`Roster::lookup`]). The kernel sends
//! the traffic into the tunnel (the shell's policy routing); without a usable exit it is
//! dropped here, never sent elsewhere.

use super::*;

/// With `auto`, an exit whose link has carried data unanswered this long is left for another
/// one whose link is open and answering (the link itself is given up only after
/// `UNANSWERED_AFTER`): a dead exit costs a LAN a few seconds, not fifteen.
pub const EXIT_UNANSWERED: Duration = Duration::from_secs(2);

/// What `option exit` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExitChoice {
    /// No exit: internet traffic leaves by the host's own uplink.
    #[default]
    None,
    /// This member.
    Peer(PeerId),
    /// The member offering an exit with the lowest round trip, kept until its link fails.
    Auto,
}

/// Where the exit stands, for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitState {
    /// None asked for.
    Off,
    /// Its link is open.
    Up,
    /// Asked for, but no link to it is open (being dialled, or down).
    Down,
    /// The member asked for is unknown or does not offer an exit (auto: none does).
    Unavailable,
}

impl ExitState {
    /// The name `status` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitState::Off => "off",
            ExitState::Up => "up",
            ExitState::Down => "down",
            ExitState::Unavailable => "unavailable",
        }
    }
}

impl<L: Link> Engine<L> {
    /// Sets the exit as `option exit` asks.
    pub fn set_exit(&mut self, choice: ExitChoice) {
        self.exit_choice = choice;
        self.choose_exit(None);
    }

    /// Looks at the exit again at `now` (the shell calls it every half second or so): with
    /// `auto`, one whose data has gone unanswered for [`EXIT_UNANSWERED`] is left for another
    /// that answers.
    pub fn recheck_exit(&mut self, now: Duration) {
        if self.exit_choice == ExitChoice::Auto {
            self.choose_exit(Some(now));
        }
    }

    /// The member our internet traffic goes to, and where it stands.
    pub fn exit(&self) -> (Option<PeerId>, ExitState) {
        let exit = self.roster.exit();
        let state = match (self.exit_choice, exit) {
            (ExitChoice::None, _) => ExitState::Off,
            (_, None) => ExitState::Unavailable,
            (_, Some(p)) if self.link_open(&p) => ExitState::Up,
            (_, Some(_)) => ExitState::Down,
        };
        (exit, state)
    }

    fn link_open(&self, pid: &PeerId) -> bool {
        self.members
            .get(pid)
            .is_some_and(|m| m.link.as_ref().is_some_and(|l| l.is_open()))
    }

    /// Whether member `pid` may be our exit: known, admitted, not us, and its record offers it.
    fn offers_exit(&self, pid: &PeerId) -> bool {
        *pid != self.roster.me()
            && self.admitted(pid)
            && self.roster.get(pid).is_some_and(|e| e.payload.exit)
    }

    /// Picks the exit again (after a record, a link up or down, a reconfiguration; at `now`,
    /// when given, links whose data went unanswered too long count as failing). `auto` keeps
    /// the one it has while its link is open (and answering) or being dialled; else it takes
    /// the answering linked one of lowest round trip, else any that offers one (the next
    /// packet dials it).
    pub(super) fn choose_exit(&mut self, now: Option<Duration>) {
        let failing = |l: &L| {
            now.is_some_and(|now| {
                l.activity()
                    .unanswered
                    .is_some_and(|t| now.saturating_sub(t) >= EXIT_UNANSWERED)
            })
        };
        let pick = match self.exit_choice {
            ExitChoice::None => None,
            ExitChoice::Peer(p) => Some(p).filter(|p| self.offers_exit(p)),
            ExitChoice::Auto => {
                let alive = |e: &Self, p: &PeerId| {
                    e.members.get(p).is_some_and(|m| match m.link.as_ref() {
                        Some(l) if l.is_open() => !failing(l),
                        _ => m.wait.dialling(),
                    })
                };
                match self.roster.exit() {
                    Some(p) if self.offers_exit(&p) && alive(self, &p) => Some(p),
                    current => {
                        let offering: Vec<PeerId> = self
                            .roster
                            .iter()
                            .map(|(p, _)| *p)
                            .filter(|p| self.offers_exit(p))
                            .collect();
                        // Direct before relayed, then the lowest round trip.
                        let mut best: Option<((bool, Duration), PeerId)> = None;
                        for p in &offering {
                            let link = self.members.get_mut(p).and_then(|m| m.link.as_mut());
                            let Some(l) = link.filter(|l| l.is_open() && !failing(l)) else {
                                continue;
                            };
                            let rtt = l.paths_mut().quic_rtt().unwrap_or(Duration::MAX);
                            let key = (l.relayed(), rtt);
                            if best.is_none_or(|(b, _)| key < b) {
                                best = Some((key, *p));
                            }
                        }
                        // None linked: the one we had if it still offers, else any that does.
                        best.map(|(_, p)| p)
                            .or(current.filter(|p| offering.contains(p)))
                            .or(offering.first().copied())
                    }
                }
            }
        };
        if pick != self.roster.exit() {
            self.roster.set_exit(pick);
        }
    }
}
