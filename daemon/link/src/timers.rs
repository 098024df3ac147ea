//! Session timers for every link, on one queue: when to send a keepalive, when to start a
//! rekey, and when to give a session up.
//!
//! WireGuard's timers, decided from what a session reports ([`Activity`]) rather than set and
//! reset on every packet: the forwarding path only stores the time of its last send and
//! receive (which the session does anyway), and a link is looked at when its earliest deadline
//! comes. Looking may find that traffic moved the deadline; the link is then put back at the
//! new one. So a thousand busy links cost nothing per packet and one wake-up each per
//! keepalive interval, where a tick per second per link (or one sweep of all links per
//! second) cost work in proportion to the members whether anything was due or not.
//!
//! - keepalive: nothing sent for [`KEEPALIVE_TIMEOUT`] (both sides; so each side hears from
//!   the other at least that often);
//! - rekey: the initiator, once its sending key is [`REKEY_AFTER_TIME`] old or has sealed
//!   [`REKEY_AFTER_MESSAGES`] frames, one rekey at a time;
//! - teardown ([`Teardown`]): nothing authenticated received for [`SILENT_AFTER`], the
//!   sending key older than [`REJECT_AFTER_TIME`] (nothing can be sent), a rekey unanswered
//!   for [`REKEY_ANSWER_TIMEOUT`], or data sent and nothing received for [`UNANSWERED_AFTER`]
//!   (a dead path: a relay gone, a NAT that dropped our mapping). The caller closes the link; the member stays known and its
//!   next packet dials it again.
//!
//! Time is the caller's monotonic clock, as a `Duration` since any fixed epoch.

use std::time::Duration;

use shadowmesh_proto::session::SessionState;

use shadowmesh_proto::consts::{
    KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME,
    REKEY_ANSWER_TIMEOUT, SILENT_AFTER, UNANSWERED_AFTER,
};

/// What a session did, as its timers need to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// Whether this side started the session (and so drives its rekeys).
    pub initiator: bool,
    /// When a frame was last sent (or the session began).
    pub last_sent: Duration,
    /// When an authenticated frame last arrived (or the session began).
    pub last_received: Duration,
    /// When the sending key was made and how many frames it sealed; `None`: no key.
    pub send_key: Option<(Duration, u64)>,
    /// When the rekey in flight started.
    pub rekey_started: Option<Duration>,
    /// When the first data frame went out that nothing answered since.
    pub unanswered: Option<Duration>,
}

/// Why a session is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teardown {
    /// Nothing authenticated arrived for [`SILENT_AFTER`].
    Silent,
    /// The sending key is gone or older than [`REJECT_AFTER_TIME`]: nothing can be sent.
    KeysExpired,
    /// A rekey got no answer for [`REKEY_ANSWER_TIMEOUT`].
    RekeyUnanswered,
    /// Data went out and nothing came back for [`UNANSWERED_AFTER`]: the path is dead.
    Unanswered,
}

impl Teardown {
    /// A few words for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Teardown::Silent => "nothing received",
            Teardown::KeysExpired => "keys expired",
            Teardown::RekeyUnanswered => "rekey unanswered",
            Teardown::Unanswered => "data unanswered",
        }
    }
}

/// What is due on one link now, and when to look at it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Send a keepalive.
    pub keepalive: bool,
    /// Start a rekey.
    pub rekey: bool,
    /// Give the session up (the other fields are then false).
    pub teardown: Option<Teardown>,
    /// When the next thing falls due, once the keepalive and rekey above are done; meaningless
    /// after a teardown.
    pub next: Duration,
}

/// What `s` tells the timers: one place for the daemon's links and for tests' doubles.
pub fn activity<S: SessionState>(s: &S) -> Activity {
    Activity {
        initiator: s.is_initiator(),
        last_sent: s.last_sent(),
        last_received: s.last_received(),
        send_key: s.send_key(),
        rekey_started: s.rekey_started(),
        unanswered: s.unanswered_since(),
    }
}

/// What is due on a session with `a`'s activity at `now`.
pub fn check(now: Duration, a: &Activity) -> Due {
    let since = |t: Duration| now.saturating_sub(t);
    let teardown = match a.send_key {
        _ if since(a.last_received) >= SILENT_AFTER => Some(Teardown::Silent),
        _ if a.unanswered.is_some_and(|t| since(t) >= UNANSWERED_AFTER) => {
            Some(Teardown::Unanswered)
        }
        None => Some(Teardown::KeysExpired),
        Some((made, _)) if since(made) >= REJECT_AFTER_TIME => Some(Teardown::KeysExpired),
        _ if a
            .rekey_started
            .is_some_and(|t| since(t) >= REKEY_ANSWER_TIMEOUT) =>
        {
            Some(Teardown::RekeyUnanswered)
        }
        _ => None,
    };
    if teardown.is_some() {
        return Due {
            keepalive: false,
            rekey: false,
            teardown,
            next: now,
        };
    }
    let keepalive = since(a.last_sent) >= KEEPALIVE_TIMEOUT;
    let (made, sealed) = a.send_key.unwrap_or_default();
    let rekey = a.initiator
        && a.rekey_started.is_none()
        && (since(made) >= REKEY_AFTER_TIME || sealed >= REKEY_AFTER_MESSAGES);
    // The deadlines as they stand once this call's work is done.
    let last_sent = if keepalive { now } else { a.last_sent };
    let rekey_started = if rekey { Some(now) } else { a.rekey_started };
    let mut next = (last_sent + KEEPALIVE_TIMEOUT)
        .min(a.last_received + SILENT_AFTER)
        .min(made + REJECT_AFTER_TIME);
    if let Some(t) = a.unanswered {
        next = next.min(t + UNANSWERED_AFTER);
    }
    match rekey_started {
        Some(t) => next = next.min(t + REKEY_ANSWER_TIMEOUT),
        None if a.initiator => next = next.min(made + REKEY_AFTER_TIME),
        None => {}
    }
    Due {
        keepalive,
        rekey,
        teardown: None,
        next,
    }
}

/// Deadlines of many links in one queue, earliest first. The caller bounds how many keys it
/// arms (one per link). A Vec sorted latest first, not a tree: at a thousand links each
/// operation moves a few KiB at most, and on the routers every map type instantiated costs
/// 5-7 KiB of flash.
#[derive(Debug)]
pub struct Timers<K> {
    queue: Vec<(Duration, K)>,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Timers { queue: Vec::new() }
    }
}

impl<K: Ord + Copy> Timers<K> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `k`'s deadline to `at`, replacing the one it had.
    pub fn arm(&mut self, k: K, at: Duration) {
        self.disarm(&k);
        let i = self.queue.partition_point(|e| *e > (at, k));
        self.queue.insert(i, (at, k));
    }

    /// Removes `k`'s deadline.
    pub fn disarm(&mut self, k: &K) {
        if let Some(i) = self.queue.iter().position(|(_, q)| q == k) {
            self.queue.remove(i);
        }
    }

    /// `k`'s deadline.
    pub fn deadline(&self, k: &K) -> Option<Duration> {
        self.queue.iter().find(|(_, q)| q == k).map(|(at, _)| *at)
    }

    /// The earliest deadline: wake up then.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.queue.last().map(|(at, _)| *at)
    }

    /// Takes one key whose deadline is at or before `now` (earliest first); it is disarmed
    /// until armed again.
    pub fn pop_expired(&mut self, now: Duration) -> Option<K> {
        match self.queue.last() {
            Some((at, _)) if *at <= now => self.queue.pop().map(|(_, k)| k),
            _ => None,
        }
    }

    /// Keys armed.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none is armed.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn fresh(t: Duration, initiator: bool) -> Activity {
        Activity {
            initiator,
            last_sent: t,
            last_received: t,
            send_key: Some((t, 0)),
            rekey_started: None,
            unanswered: None,
        }
    }

    #[test]
    fn data_unanswered_for_fifteen_seconds_gives_the_path_up() {
        let mut a = fresh(S(0), false);
        // Data out at 20 (a keepalive came in at 18): answered by 30 at the latest, else dead.
        a.last_received = S(18);
        a.last_sent = S(34);
        a.unanswered = Some(S(20));
        let d = check(S(34), &a);
        assert_eq!(d.teardown, None);
        assert_eq!(d.next, S(35), "watched until then");
        assert_eq!(check(S(35), &a).teardown, Some(Teardown::Unanswered));
        // Answered: only silence counts again.
        a.unanswered = None;
        assert_eq!(check(S(40), &a).teardown, None);
    }

    #[test]
    fn a_quiet_link_sends_keepalives_and_nothing_else() {
        let a = fresh(S(100), false);
        let d = check(S(100), &a);
        assert_eq!((d.keepalive, d.rekey, d.teardown), (false, false, None));
        assert_eq!(d.next, S(110), "the first keepalive");
        let d = check(S(110), &a);
        assert!(d.keepalive && !d.rekey && d.teardown.is_none());
        assert_eq!(d.next, S(120), "the next one, after this one is sent");
    }

    #[test]
    fn traffic_moves_the_keepalive_later() {
        let mut a = fresh(S(0), false);
        a.last_sent = S(7);
        let d = check(S(10), &a);
        assert!(!d.keepalive);
        assert_eq!(d.next, S(17));
    }

    #[test]
    fn only_the_initiator_rekeys_once_at_a_time_and_waits_for_the_answer() {
        let i = fresh(S(0), true);
        assert_eq!(check(S(0), &i).next, S(10));
        let mut busy = i;
        busy.last_sent = S(119);
        busy.last_received = S(119);
        let d = check(S(119), &busy);
        assert_eq!((d.rekey, d.next), (false, S(120)));
        let d = check(S(120), &busy);
        assert!(d.rekey && d.teardown.is_none());
        assert_eq!(
            d.next,
            S(129),
            "the keepalive comes before the rekey answer's timeout"
        );
        busy.rekey_started = Some(S(120));
        busy.last_sent = S(150);
        busy.last_received = S(150);
        let d = check(S(149), &busy);
        assert!(!d.rekey, "one rekey at a time");
        assert_eq!(d.next, S(150), "when the rekey is given up");
        assert_eq!(
            check(S(150), &busy).teardown,
            Some(Teardown::RekeyUnanswered)
        );
        let mut responder = busy;
        responder.initiator = false;
        responder.rekey_started = None;
        assert!(!check(S(170), &responder).rekey);
        // Nor does the counter make a responder rekey.
        responder.send_key = Some((S(150), REKEY_AFTER_MESSAGES));
        assert!(!check(S(160), &responder).rekey);
        let mut counted = fresh(S(0), true);
        counted.send_key = Some((S(0), REKEY_AFTER_MESSAGES));
        assert!(
            check(S(1), &counted).rekey,
            "the initiator rekeys by count too"
        );
    }

    #[test]
    fn teardowns() {
        let a = fresh(S(0), false);
        assert_eq!(check(S(34), &a).teardown, None);
        assert_eq!(check(S(35), &a).teardown, Some(Teardown::Silent));
        let mut talking = a;
        talking.last_received = S(179);
        talking.last_sent = S(179);
        assert_eq!(check(S(179), &talking).next, S(180), "the key's end");
        assert_eq!(
            check(S(180), &talking).teardown,
            Some(Teardown::KeysExpired)
        );
        talking.send_key = None;
        assert_eq!(
            check(S(179), &talking).teardown,
            Some(Teardown::KeysExpired)
        );
    }

    #[test]
    fn deadlines_come_out_earliest_first_and_rearming_replaces() {
        let mut t = Timers::new();
        assert_eq!(t.poll_timeout(), None);
        t.arm('a', S(30));
        t.arm('b', S(10));
        t.arm('c', S(20));
        t.arm('b', S(40));
        assert_eq!((t.len(), t.poll_timeout()), (3, Some(S(20))));
        assert_eq!(t.pop_expired(S(19)), None);
        assert_eq!(t.pop_expired(S(35)), Some('c'));
        assert_eq!(t.pop_expired(S(35)), Some('a'));
        assert_eq!(t.pop_expired(S(35)), None);
        assert_eq!(t.deadline(&'b'), Some(S(40)));
        t.disarm(&'b');
        assert!(t.is_empty());
        assert_eq!(t.pop_expired(S(100)), None);
        // Equal deadlines come out in key order; re-arming moves a key, never duplicates it.
        let mut q = Timers::new();
        for (k, at) in [(5u32, 7), (3, 7), (9, 2), (1, 7), (3, 1)] {
            q.arm(k, S(at));
        }
        assert_eq!(q.len(), 4);
        let order: Vec<u32> = std::iter::from_fn(|| q.pop_expired(S(10))).collect();
        assert_eq!(order, [3, 9, 1, 5]);
    }
}
