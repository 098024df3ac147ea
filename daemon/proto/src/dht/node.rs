//! The DHT engine: one node's Kademlia logic, sans-IO.
//!
//! Drive it like quinn-proto's `Connection`:
//! - deliver each incoming request with [`Dht::handle_request`] and send back what it returns
//!   (`None`: do not answer, the sender is over its rate limit);
//! - deliver each answer to a request it asked for with [`Dht::handle_response`], or
//!   [`Dht::handle_failure`] when the request could not be sent or its stream failed;
//! - call [`Dht::handle_timeout`] at [`Dht::poll_timeout`] (request timeouts, bucket refresh,
//!   republish, record expiry);
//! - after each call, drain [`Dht::poll_output`]: requests to send and finished lookups.
//!
//! It reads no clock: `now` is a monotonic [`Duration`] from an epoch the driver picks, and
//! `now_unix` the wall clock in seconds for record expiry. Its only randomness is a PRNG seeded
//! by the driver, so a seeded simulation replays exactly.

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

use super::kbucket::{bucket_index, subnet_key, Insert, RoutingTable};
use super::lookup::{Lookup, Step};
use super::observed::Observed;
use super::rtt::Rtt;
use super::store::{RecordMeta, RecordStore};
use super::wire::{Contact, Request, Response, StoreCode};
use super::{K, LOOKUP_PATHS, REFRESH_INTERVAL, REJOIN_FIRST, REPUBLISH_INTERVAL, REQUEST_TIMEOUT};
use super::{MOVED_SETTLE, OBSERVE_RETRY};
use super::{RTO_INITIAL, VALUE_QUORUM};
use crate::limit::TokenBuckets;
use crate::PeerId;

mod observe;
mod types;

pub use types::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqKind {
    Ping { lru: bool },
    Lookup(LookupId),
    Store,
}

#[derive(Debug, Clone)]
struct Pending {
    to: Contact,
    kind: ReqKind,
    sent: Duration,
    deadline: Duration,
}

#[derive(Debug)]
struct LookupState<R> {
    lookup: Lookup,
    query: Query<R>,
    best: Option<(R, u64)>,
    /// We hold the record ourselves.
    held: bool,
    /// Who answered with a valid record (each a candidate, so bounded as they are).
    holders: Vec<PeerId>,
    bytes: u64,
    started: Duration,
}

impl<R> LookupState<R> {
    /// A FIND_VALUE has its answer: [`VALUE_QUORUM`] holders (ourselves included) among the k
    /// closest known, with everyone closer asked. A holder that answered early, when few
    /// candidates were known, counts only once the lookup has settled up to it: Sybils far
    /// from the key serving a stale record do not end the lookup.
    fn quorum(&self) -> bool {
        if !matches!(self.query, Query::FindValue { .. }) {
            return false;
        }
        let among = self
            .holders
            .iter()
            .filter(|h| self.lookup.is_among_closest(h, K) && self.lookup.settled_to(h))
            .count();
        usize::from(self.held) + among >= VALUE_QUORUM
    }
}

/// One node's DHT.
pub struct Dht<C: RecordCheck> {
    local: Contact,
    table: RoutingTable,
    store: RecordStore<C::Record>,
    check: C,
    lookups: BTreeMap<LookupId, LookupState<C::Record>>,
    pending: BTreeMap<RequestId, Pending>,
    out: VecDeque<Output<C::Record>>,
    next_id: u64,
    rng: u64,
    own: Option<(C::Record, RecordMeta)>,
    last_publish: Duration,
    last_refresh_check: Duration,
    rate: TokenBuckets<SocketAddr>,
    joining: Option<LookupId>,
    /// While the table holds fewer than [`K`] contacts after the join: when to look ourselves
    /// up again, and the gap after that one.
    rejoin: Option<(Duration, Duration)>,
    observed: Observed,
    /// When to ask where others see us next; `None`: we do not ask ([`Dht::set_observing`]).
    next_observe: Option<Duration>,
    /// When we last said [`Output::Moved`].
    last_moved: Option<Duration>,
    /// When [`Dht::observe_soon`] last moved the next observation up.
    last_soon: Option<Duration>,
    /// The next observation asks twice as many networks (we just moved: some of the usual
    /// ones may be out of reach until they dial us again).
    widen: bool,
    /// Round trips measured to anyone: the soft timeout for a contact not measured yet.
    rtt: Rtt,
    /// Disjoint paths per lookup.
    paths: usize,
    /// Counters.
    pub stats: DhtStats,
}

impl<C: RecordCheck> core::fmt::Debug for Dht<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Dht")
            .field("local", &self.local.id)
            .field("table", &self.table.len())
            .field("records", &self.store.len())
            .field("lookups", &self.lookups.len())
            .finish_non_exhaustive()
    }
}

impl<C: RecordCheck> Dht<C> {
    /// A node with contact `local`, record checker `check` and PRNG seed `seed`.
    pub fn new(local: Contact, check: C, seed: u64) -> Self {
        Dht {
            local,
            table: RoutingTable::new(local.id),
            store: RecordStore::near(local.id),
            check,
            lookups: BTreeMap::new(),
            pending: BTreeMap::new(),
            out: VecDeque::new(),
            next_id: 1,
            rng: seed | 1,
            own: None,
            last_publish: Duration::ZERO,
            last_refresh_check: Duration::ZERO,
            rate: TokenBuckets::new(RATE_BURST, RATE_PER_SEC, RATE_TRACKED),
            joining: None,
            rejoin: None,
            observed: Observed::new(),
            next_observe: None,
            last_moved: None,
            last_soon: None,
            widen: false,
            rtt: Rtt::default(),
            paths: LOOKUP_PATHS,
            stats: DhtStats::default(),
        }
    }

    /// Our contact.
    pub fn local(&self) -> &Contact {
        &self.local
    }

    /// The routing table.
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// Records held for others.
    pub fn store(&self) -> &RecordStore<C::Record> {
        &self.store
    }

    /// What other nodes saw of our address.
    pub fn observed(&self) -> &Observed {
        &self.observed
    }

    /// Whether to ask other nodes where they see us (PINGs every [`super::OBSERVE_INTERVAL`]; see
    /// [`super::observed`]). Off until set: a node that needs no address of its own (a test,
    /// the simulator) sends no such PINGs. PONGs are read either way.
    pub fn set_observing(&mut self, on: bool, now: Duration) {
        self.next_observe = on.then_some(now);
    }

    /// Sets the number of disjoint paths later lookups take (1 to
    /// [`super::lookup::MAX_PATHS`]; [`LOOKUP_PATHS`] by default).
    pub fn set_lookup_paths(&mut self, paths: usize) {
        self.paths = paths;
    }

    /// The round trip measured to anyone, smoothed.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt.srtt()
    }

    /// Lookups under way.
    pub fn lookups_running(&self) -> usize {
        self.lookups.len()
    }

    fn random(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            // splitmix64
            self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            chunk.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
        }
        out
    }

    /// Adds a contact known out of band (bootstrap seed, routing-table cache).
    pub fn add_contact(&mut self, c: Contact, now: Duration) {
        self.heard_from(c, now);
    }

    fn heard_from(&mut self, c: Contact, now: Duration) {
        // A member that reaches us through a relay is known here by a local stand-in address
        // (240.0.0.0/8) that no other node can dial: answered, never passed on.
        if c.id == self.local.id || crate::relay::is_mapped(c.addr) {
            return;
        }
        if let Insert::PingLru(lru) = self.table.insert(c, now) {
            self.send(lru, Request::Ping, ReqKind::Ping { lru: true }, now);
        }
    }

    /// A record under `key` from `owner` newer than `known_seq` that we hold: one stored for
    /// others, or our own (its owner is always an authority for it, even when it is not among
    /// the nodes closest to the key: a lookup that reaches the owner finds the record even if
    /// every holder is gone). Replicating our own record to each node new to our table that is
    /// among the k closest to its key ("store on join") was tried and cut the simulator's
    /// 20%-Sybil lookup success from 0.973 to 0.951 (mean of seeds 1-3): it is not done.
    fn held(&self, key: &[u8; 32], owner: &PeerId, known_seq: u64) -> Option<(C::Record, u64)> {
        if let Some((r, m)) = self.store.get(key, owner, known_seq) {
            return Some((r.clone(), m.seq));
        }
        self.own
            .as_ref()
            .filter(|(_, m)| m.key == *key && m.owner == *owner && m.seq > known_seq)
            .map(|(r, m)| (r.clone(), m.seq))
    }

    fn send(&mut self, to: Contact, req: Request<C::Record>, kind: ReqKind, now: Duration) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = req.encoded_len() as u64;
        self.pending.insert(
            id,
            Pending {
                to,
                kind,
                sent: now,
                deadline: now + REQUEST_TIMEOUT,
            },
        );
        self.out.push_back(Output::Send { to, id, req });
        bytes
    }

    /// Joins the network: a lookup for our own id (fills the buckets near us; the periodic
    /// refresh fills the rest). Add the seeds with [`Dht::add_contact`] first.
    ///
    /// In a young network the seeds may know nobody else yet when we ask them (nodes that
    /// start together all join through a seed that has just started too), and nobody would
    /// look for us again until the next bucket refresh. So while the table holds fewer than
    /// [`K`] contacts, the lookup for our own id is repeated [`REJOIN_FIRST`] after the join,
    /// then after gaps that double up to [`REFRESH_INTERVAL`]: a few messages in a small
    /// network, none in one where the join filled the table.
    pub fn bootstrap(&mut self, now: Duration) -> Option<LookupId> {
        let me = self.local.id.0;
        self.joining = self.start(me, Query::FindNode, now);
        self.joining
    }

    fn refresh_buckets(&mut self, now: Duration) {
        if self.table.is_empty() {
            return;
        }
        for b in self.table.due_for_refresh(now) {
            let r = self.random();
            let target = self.table.random_id_in_bucket(b, r);
            self.table.touch_bucket(b, now);
            if self.start(target, Query::Refresh, now).is_none() {
                break;
            }
        }
    }

    /// Starts a FIND_NODE lookup.
    pub fn find_node(&mut self, target: [u8; 32], now: Duration) -> Option<LookupId> {
        self.start(target, Query::FindNode, now)
    }

    /// Starts a FIND_VALUE lookup for `owner`'s record under `key`.
    pub fn find_value(
        &mut self,
        key: [u8; 32],
        owner: PeerId,
        known_seq: u64,
        now: Duration,
    ) -> Option<LookupId> {
        self.start(key, Query::FindValue { owner, known_seq }, now)
    }

    /// Publishes our own record: stores it at the k closest nodes now, and again every
    /// [`REPUBLISH_INTERVAL`] (call again at once when its contents change).
    pub fn publish(
        &mut self,
        record: C::Record,
        now_unix: u64,
        now: Duration,
    ) -> Result<Option<LookupId>, StoreCode> {
        let meta = self.check.check(&record, now_unix)?;
        let id = self.put(record.clone(), now_unix, now)?;
        self.own = Some((record, meta));
        self.last_publish = now;
        Ok(id)
    }

    /// Stores `record` (e.g. someone else's, re-replicated) at the k closest to its key.
    pub fn put(
        &mut self,
        record: C::Record,
        now_unix: u64,
        now: Duration,
    ) -> Result<Option<LookupId>, StoreCode> {
        let meta = self.check.check(&record, now_unix)?;
        Ok(self.start(meta.key, Query::Put { record }, now))
    }

    /// Starts a lookup; `None` when [`MAX_LOOKUPS`] are already running.
    fn start(
        &mut self,
        target: [u8; 32],
        query: Query<C::Record>,
        now: Duration,
    ) -> Option<LookupId> {
        if self.lookups.len() >= MAX_LOOKUPS {
            return None;
        }
        if let Some(b) = bucket_index(&self.local.id, &target) {
            self.table.touch_bucket(b, now);
        }
        let id = self.next_id;
        self.next_id += 1;
        let seeds = self.table.closest_live(&target, K);
        // A record we hold ourselves is an answer like any holder's (in a small or young
        // network we may be the only holder).
        let best = match &query {
            Query::FindValue { owner, known_seq } => self.held(&target, owner, *known_seq),
            _ => None,
        };
        self.lookups.insert(
            id,
            LookupState {
                lookup: Lookup::new(target, seeds, self.paths),
                query,
                held: best.is_some(),
                best,
                holders: Vec::new(),
                bytes: 0,
                started: now,
            },
        );
        self.drive(id, now);
        Some(id)
    }

    fn drive(&mut self, id: LookupId, now: Duration) {
        loop {
            let Some(st) = self.lookups.get_mut(&id) else {
                return;
            };
            if st.quorum() {
                st.lookup.finish();
            }
            let (table, rtt) = (&self.table, &self.rtt);
            let rto = |c: &Contact| {
                table
                    .rtt(&c.id)
                    .unwrap_or(*rtt)
                    .rto()
                    .unwrap_or(RTO_INITIAL)
            };
            match st.lookup.next(now, rto) {
                Step::Send(to) => {
                    let target = *st.lookup.target();
                    let req = match &st.query {
                        Query::FindValue { owner, known_seq } => Request::FindValue {
                            key: target,
                            owner: *owner,
                            known_seq: st.best.as_ref().map(|b| b.1).unwrap_or(*known_seq),
                        },
                        _ => Request::FindNode { target },
                    };
                    let bytes = self.send(to, req, ReqKind::Lookup(id), now);
                    if let Some(st) = self.lookups.get_mut(&id) {
                        st.bytes += bytes;
                    }
                }
                Step::Wait => return,
                Step::Done => {
                    self.finish(id, now);
                    return;
                }
            }
        }
    }

    fn finish(&mut self, id: LookupId, now: Duration) {
        let Some(st) = self.lookups.remove(&id) else {
            return;
        };
        // Requests still in flight for it no longer count.
        for p in self.pending.values_mut() {
            if p.kind == ReqKind::Lookup(id) {
                p.kind = ReqKind::Store; // answers will only update the table
            }
        }
        if self.joining == Some(id) {
            // Joined: now there are nodes to ask where they see us.
            if self.next_observe.is_some() {
                self.next_observe = Some(now);
            }
            self.rejoin = Some((now + REJOIN_FIRST, REJOIN_FIRST));
        }
        // Nodes near the target that answered with nobody near it do not route: they are not
        // offered to others or asked first until they are heard from again.
        for c in st.lookup.non_routing() {
            self.table.failed_at(&c.id, &c.addr, now);
        }
        let closest = st.lookup.result();
        let mut stores_sent = 0;
        let report = match st.query {
            Query::Refresh => false,
            Query::Put { ref record } => {
                for c in &closest {
                    self.send(
                        *c,
                        Request::Store {
                            record: record.clone(),
                        },
                        ReqKind::Store,
                        now,
                    );
                    stores_sent += 1;
                }
                true
            }
            _ => true,
        };
        if report {
            self.out.push_back(Output::LookupDone(LookupOutcome {
                id,
                target: *st.lookup.target(),
                closest,
                record: st.best.map(|b| b.0),
                hops: st.lookup.hops(),
                messages: st.lookup.sent(),
                bytes: st.bytes,
                started: st.started,
                finished: now,
                stores_sent,
            }));
        }
    }

    fn allow(&mut self, from: &SocketAddr, now: Duration) -> bool {
        // Public addresses are limited per IP; exempt (private, loopback) ones per socket
        // address, or every peer on one LAN or test host would share one budget.
        let key = if subnet_key(from).is_some() {
            SocketAddr::new(from.ip(), 0)
        } else {
            *from
        };
        self.rate.allow(key, now)
    }

    /// Answers a request from `from` (whose PeerId the transport authenticated). `None`: the
    /// sender is over its rate limit; send nothing.
    pub fn handle_request(
        &mut self,
        from: Contact,
        req: Request<C::Record>,
        now: Duration,
        now_unix: u64,
    ) -> Option<Response<C::Record>> {
        if !self.allow(&from.addr, now) {
            self.stats.rate_limited += 1;
            return None;
        }
        self.heard_from(from, now);
        self.stats.requests_answered += 1;
        let nodes = |t: &RoutingTable, target: &[u8; 32]| Response::Nodes {
            contacts: t
                .closest_live(target, K + 1)
                .into_iter()
                .filter(|c| c.id != from.id)
                .take(K)
                .collect(),
        };
        Some(match req {
            Request::Ping => Response::Pong {
                observed: from.addr,
            },
            Request::FindNode { target } => nodes(&self.table, &target),
            Request::FindValue {
                key,
                owner,
                known_seq,
            } => match self.held(&key, &owner, known_seq) {
                Some((record, _)) => Response::Value { record },
                None => nodes(&self.table, &key),
            },
            Request::Store { record } => {
                let code = match self.check.check(&record, now_unix) {
                    // Only for keys we are among the k closest to (that we know of): anyone
                    // else's throwaway records would fill the store for nothing.
                    Ok(meta) if !self.among_closest(&meta.key) => StoreCode::Full,
                    Ok(meta) => self.store.put(record, meta, from.addr.ip(), now, now_unix),
                    Err(code) => code,
                };
                if code != StoreCode::Ok {
                    self.stats.stores_refused += 1;
                }
                Response::Stored(code)
            }
        })
    }

    /// Whether we are among the [`K`] nodes closest to `key` that our table knows.
    fn among_closest(&self, key: &[u8; 32]) -> bool {
        let t = PeerId(*key);
        let mine = self.local.id.distance(&t);
        self.table
            .closest(key, K)
            .iter()
            .filter(|c| c.id.distance(&t) < mine)
            .count()
            < K
    }

    /// Delivers the answer to request `id`, which came from exactly the contact it was sent
    /// to (the simulator's network). The daemon says where it came from instead:
    /// [`Dht::handle_response_via`].
    pub fn handle_response(
        &mut self,
        id: RequestId,
        resp: Response<C::Record>,
        now: Duration,
        now_unix: u64,
    ) {
        let Some(to) = self.pending.get(&id).map(|p| p.to) else {
            return;
        };
        self.handle_response_via(id, to, resp, now, now_unix);
    }

    /// Delivers the answer to request `id` that arrived over an authenticated connection to
    /// `via` (its PeerId as the handshake proved it, the address and key of that connection).
    /// The routing table learns `via`, never the contact the request was addressed to: a
    /// FIND_NODE answer may name a real PeerId at an attacker's address, and a request to it
    /// that travelled over an existing connection to the real peer proves nothing about that
    /// address. An answer from another PeerId than the one asked is a failure.
    pub fn handle_response_via(
        &mut self,
        id: RequestId,
        via: Contact,
        resp: Response<C::Record>,
        now: Duration,
        now_unix: u64,
    ) {
        self.handle_response_timed(id, via, resp, None, now, now_unix);
    }

    /// [`Dht::handle_response_via`], with the request's own round trip when the driver knows
    /// it better than the time since the engine asked for the request (which includes dialling
    /// a connection first: a handshake's time is no measure of how soon the contact answers).
    pub fn handle_response_timed(
        &mut self,
        id: RequestId,
        via: Contact,
        resp: Response<C::Record>,
        rtt: Option<Duration>,
        now: Duration,
        now_unix: u64,
    ) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        if via.id != p.to.id {
            self.failed(p, now);
            return;
        }
        self.heard_from(via, now);
        let rtt = rtt.unwrap_or_else(|| now.saturating_sub(p.sent));
        self.table.rtt_sample(&via.id, rtt);
        self.rtt.sample(rtt);
        if let Response::Pong { observed } = &resp {
            self.report(now, via.addr, *observed);
        }
        match p.kind {
            ReqKind::Ping { lru: true } => self.table.ping_result(&p.to.id, true, now),
            ReqKind::Ping { lru: false } | ReqKind::Store => {}
            ReqKind::Lookup(lid) => {
                let resp_bytes = resp.encoded_len() as u64;
                let me = self.local.id;
                let Some(st) = self.lookups.get_mut(&lid) else {
                    return;
                };
                st.bytes += resp_bytes;
                match resp {
                    Response::Nodes { contacts } => {
                        let contacts: Vec<Contact> =
                            contacts.into_iter().filter(|c| c.id != me).collect();
                        st.lookup.on_success(&p.to.id, &contacts);
                    }
                    Response::Value { record } => {
                        let target = *st.lookup.target();
                        let valid_seq = match (&st.query, self.check.check(&record, now_unix)) {
                            (Query::FindValue { owner, known_seq }, Ok(m))
                                if m.key == target && m.owner == *owner && m.seq > *known_seq =>
                            {
                                Some(m.seq)
                            }
                            _ => None,
                        };
                        if let Some(seq) = valid_seq {
                            if !st.holders.contains(&p.to.id) {
                                st.holders.push(p.to.id);
                            }
                            if st.best.as_ref().is_none_or(|b| seq > b.1) {
                                st.best = Some((record, seq));
                            }
                            st.lookup.on_value(&p.to.id);
                        } else {
                            self.stats.bogus_records += 1;
                            st.lookup.on_failure(&p.to.id);
                        }
                    }
                    _ => st.lookup.on_failure(&p.to.id),
                }
                self.drive(lid, now);
            }
        }
    }

    /// Request `id` failed before an answer (unreachable, refused, malformed answer).
    pub fn handle_failure(&mut self, id: RequestId, now: Duration) {
        if let Some(p) = self.pending.remove(&id) {
            self.failed(p, now);
        }
    }

    fn failed(&mut self, p: Pending, now: Duration) {
        // An unanswered observation: our address may have just changed under us; ask again
        // soon (other contacts may answer, or new connections).
        // Right after a link went silent, again within MOVED_SETTLE: the shell closes a
        // connection whose request went unanswered, so the next round dials afresh.
        if p.kind == (ReqKind::Ping { lru: false }) {
            let urgent = self.last_soon.is_some_and(|s| now < s + OBSERVE_RETRY);
            let again = if urgent { MOVED_SETTLE } else { OBSERVE_RETRY };
            if let Some(t) = self.next_observe.as_mut() {
                *t = (*t).min(now + again);
            }
        }
        match p.kind {
            ReqKind::Ping { lru: true } => self.table.ping_result(&p.to.id, false, now),
            _ => {
                self.table.failed_at(&p.to.id, &p.to.addr, now);
            }
        }
        if let ReqKind::Lookup(lid) = p.kind {
            if let Some(st) = self.lookups.get_mut(&lid) {
                st.lookup.on_failure(&p.to.id);
            }
            self.drive(lid, now);
        }
    }

    /// When [`Dht::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let hard = self.pending.values().map(|p| p.deadline);
        let soft = self
            .lookups
            .values()
            .filter_map(|l| l.lookup.next_deadline());
        let req = hard.chain(soft).min();
        let mut periodic = self.last_refresh_check + Duration::from_secs(60);
        if let Some(t) = self.next_observe {
            periodic = periodic.min(t);
        }
        if let Some((t, _)) = self.rejoin {
            periodic = periodic.min(t);
        }
        Some(req.map_or(periodic, |r| r.min(periodic)))
    }

    /// Expires requests, refreshes stale buckets, republishes our record, drops old records.
    pub fn handle_timeout(&mut self, now: Duration, now_unix: u64) {
        let expired: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                self.stats.timeouts += 1;
                self.failed(p, now);
            }
        }
        let ids: Vec<LookupId> = self.lookups.keys().copied().collect();
        for id in ids {
            self.drive(id, now);
        }
        if self.next_observe.is_some_and(|t| now >= t) {
            self.observe(now);
        }
        if let Some((at, gap)) = self.rejoin.filter(|(at, _)| now >= *at) {
            let gap = gap * 2;
            self.rejoin = (gap <= REFRESH_INTERVAL).then_some((at.max(now) + gap, gap));
            if self.table.len() < K && !self.table.is_empty() {
                let me = self.local.id.0;
                self.start(me, Query::Refresh, now);
            }
        }
        if now >= self.last_refresh_check + Duration::from_secs(60) {
            self.last_refresh_check = now;
            self.store.expire(now, now_unix);
            self.refresh_buckets(now);
            // Re-replicate what nobody refreshed for an hour, a few per minute.
            for record in
                self.store
                    .due_for_replication(now, REPUBLISH_INTERVAL, REPLICATE_PER_TICK)
            {
                if self.put(record, now_unix, now).ok().flatten().is_none() {
                    break;
                }
            }
            if let Some((rec, _)) = self.own.clone() {
                if now >= self.last_publish + REPUBLISH_INTERVAL {
                    let _ = self.publish(rec, now_unix, now);
                }
            }
        }
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output<C::Record>> {
        self.out.pop_front()
    }

    /// Whether a refresh is needed soon (for tests and the simulator).
    pub fn refresh_interval() -> Duration {
        REFRESH_INTERVAL
    }
}
