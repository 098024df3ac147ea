//! Test doubles: a session that keeps only what the timers read and answers rekeys as told,
//! and a link that holds one.

use std::net::SocketAddr;
use std::time::Duration;

use shadowmesh_proto::session::SessionState;

use crate::members::Link;
use crate::paths::Paths;
use crate::timers::{self, Activity};

/// A session double.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Double {
    pub initiator: bool,
    pub last_sent: Duration,
    pub last_received: Duration,
    pub send_key: Option<(Duration, u64)>,
    pub rekey_started: Option<Duration>,
    pub unanswered: Option<Duration>,
    /// Refuse every rekey message.
    pub refuse: bool,
    pub inits: usize,
    pub resps: usize,
}

impl Double {
    /// A session that began at `t` on our side (`initiator`) or the member's.
    pub fn at(t: Duration, initiator: bool) -> Double {
        Double {
            initiator,
            last_sent: t,
            last_received: t,
            send_key: Some((t, 0)),
            ..Double::default()
        }
    }
}

impl SessionState for Double {
    type Error = &'static str;
    fn is_initiator(&self) -> bool {
        self.initiator
    }
    fn last_sent(&self) -> Duration {
        self.last_sent
    }
    fn last_received(&self) -> Duration {
        self.last_received
    }
    fn send_key(&self) -> Option<(Duration, u64)> {
        self.send_key
    }
    fn rekey_started(&self) -> Option<Duration> {
        self.rekey_started
    }
    fn unanswered_since(&self) -> Option<Duration> {
        self.unanswered
    }
    fn start_rekey(&mut self, now: Duration) -> Result<Vec<u8>, &'static str> {
        if !self.initiator {
            return Err("responder");
        }
        self.rekey_started = Some(now);
        Ok(vec![0x4b])
    }
    fn handle_rekey_init(&mut self, now: Duration, body: &[u8]) -> Result<Vec<u8>, &'static str> {
        self.inits += 1;
        if self.refuse {
            return Err("wrong epoch");
        }
        self.send_key = Some((now, 0));
        Ok(body.iter().rev().copied().collect())
    }
    fn handle_rekey_resp(&mut self, now: Duration, _: &[u8]) -> Result<(), &'static str> {
        self.resps += 1;
        if self.refuse || self.rekey_started.is_none() {
            return Err("no rekey in flight");
        }
        self.rekey_started = None;
        self.send_key = Some((now, 0));
        Ok(())
    }
}

/// A link double.
#[derive(Debug, Clone)]
pub struct TestLink {
    pub id: usize,
    pub open: bool,
    pub precedence: u64,
    pub tiebreak: u64,
    pub index: u32,
    pub dialled: bool,
    pub lan: bool,
    pub session: Double,
    pub paths: Paths,
}

impl TestLink {
    /// Connection `id` with `precedence` and receiver index `index`, its session begun at `t`
    /// by the member.
    pub fn new(id: usize, precedence: u64, index: u32, t: Duration) -> TestLink {
        TestLink {
            id,
            open: true,
            precedence,
            tiebreak: 0,
            index,
            dialled: false,
            lan: false,
            session: Double::at(t, false),
            paths: Paths::new(SocketAddr::from(([192, 0, 2, 1], 4433))),
        }
    }
}

impl Link for TestLink {
    type Session = Double;
    fn id(&self) -> usize {
        self.id
    }
    fn is_open(&self) -> bool {
        self.open
    }
    fn precedence(&self) -> (u64, bool) {
        (self.precedence, false)
    }
    fn tiebreak(&self) -> u64 {
        self.tiebreak
    }
    fn dialled(&self) -> bool {
        self.dialled
    }
    fn index(&self) -> u32 {
        self.index
    }
    fn activity(&self) -> Activity {
        timers::activity(&self.session)
    }
    fn session_mut(&mut self) -> &mut Double {
        &mut self.session
    }
    fn relayed(&self) -> bool {
        self.paths.relayed()
    }
    fn on_lan(&self) -> bool {
        self.lan
    }
    fn paths_mut(&mut self) -> &mut Paths {
        &mut self.paths
    }
}
