//! The DHT simulator: the real sans-IO Kademlia engine ([`shadowmesh_proto::dht::node::Dht`])
//! for thousands of nodes in one process, on a virtual clock, over a simulated network with
//! lognormal latency, loss, churn, nodes killed without warning, and Sybil nodes.
//!
//! Everything is drawn from one seeded PRNG and every collection iterated is ordered, so the
//! same seed gives the same output in every field but `wall_seconds`. pqcrypto draws keys from
//! the OS, so simulated records use a same-sized stand-in: 7,500 bytes (a real record is 7,404
//! plus its payload), authenticated by a keyed SHA-256 tag that only the owner's secret yields.
//! Sybils can therefore serve genuine but stale records (an older sequence) or none, never
//! forged ones, which is exactly what real signatures allow.
//!
//! Timeline: 3 seeds; every other node joins through them (self-lookup, then a refresh of each
//! bucket); every honest node publishes its record (sequence 1) and later a newer one
//! (sequence 2); then `kill_fraction` of honest nodes die without warning; then `lookups`
//! lookups are measured, half FIND_VALUE (a random live owner's record, from a random live
//! node) and half FIND_NODE (a random id), with churn if asked.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shadowmesh_proto::dht::node::{Dht, LookupId, Output, RecordCheck, RequestId};
use shadowmesh_proto::dht::store::RecordMeta;
use shadowmesh_proto::dht::wire::{Contact, Request, Response, StoreCode};
use shadowmesh_proto::dht::K;
use shadowmesh_proto::PeerId;

/// Size of a simulated record, close to a real one.
pub const SIM_RECORD_LEN: usize = 7_500;
const UNIX_EPOCH_OFFSET: u64 = 1_800_000_000;

/// Simulation parameters.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Total nodes (honest and Sybil).
    pub nodes: usize,
    /// PRNG seed.
    pub seed: u64,
    /// Probability that any one message is lost.
    pub loss: f64,
    /// Fraction of honest nodes killed without warning after the network formed.
    pub kill_fraction: f64,
    /// Fraction of live nodes replaced (leave without warning, fresh nodes join) per virtual
    /// minute during the measured lookups.
    pub churn: f64,
    /// Fraction of all nodes that are Sybils.
    pub sybil_fraction: f64,
    /// Lookups measured (half FIND_VALUE, half FIND_NODE).
    pub lookups: usize,
    /// Median one-way latency.
    pub latency_median_ms: f64,
    /// Lognormal sigma of the latency.
    pub latency_sigma: f64,
    /// Disjoint paths per lookup.
    pub paths: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 1000,
            seed: 1,
            loss: 0.0,
            kill_fraction: 0.0,
            churn: 0.0,
            sybil_fraction: 0.0,
            lookups: 1000,
            latency_median_ms: 40.0,
            latency_sigma: 0.5,
            paths: shadowmesh_proto::dht::LOOKUP_PATHS,
        }
    }
}

mod result;
pub use result::{SimResult, Sweep};

/// splitmix64.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn bytes32(&mut self) -> [u8; 32] {
        let mut o = [0u8; 32];
        for c in o.chunks_mut(8) {
            c.copy_from_slice(&self.next_u64().to_be_bytes());
        }
        o
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.f64().max(1e-12);
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

type Rec = Arc<[u8]>;

/// The stand-in record check: a keyed SHA-256 tag only the owner's secret produces.
#[derive(Debug, Clone)]
struct SimCheck {
    secret: [u8; 32],
}

impl SimCheck {
    fn tag(&self, owner: &PeerId, key: &[u8; 32], seq: u64, expires: u64) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&self.secret);
        ctx.update(&owner.0);
        ctx.update(key);
        ctx.update(&seq.to_be_bytes());
        ctx.update(&expires.to_be_bytes());
        ctx.finish().as_ref().try_into().expect("32")
    }

    fn make(&self, owner: &PeerId, key: &[u8; 32], seq: u64, expires: u64) -> Rec {
        let mut v = vec![0u8; SIM_RECORD_LEN];
        v[..32].copy_from_slice(key);
        v[32..64].copy_from_slice(&owner.0);
        v[64..72].copy_from_slice(&seq.to_be_bytes());
        v[72..80].copy_from_slice(&expires.to_be_bytes());
        v[80..112].copy_from_slice(&self.tag(owner, key, seq, expires));
        v.into()
    }
}

impl RecordCheck for SimCheck {
    type Record = Rec;
    fn check(&self, r: &Rec, now_unix: u64) -> Result<RecordMeta, StoreCode> {
        if r.len() != SIM_RECORD_LEN {
            return Err(StoreCode::TooBig);
        }
        let key: [u8; 32] = r[..32].try_into().expect("len");
        let owner = PeerId(r[32..64].try_into().expect("len"));
        let seq = u64::from_be_bytes(r[64..72].try_into().expect("len"));
        let expires_at = u64::from_be_bytes(r[72..80].try_into().expect("len"));
        if r[80..112] != self.tag(&owner, &key, seq, expires_at) {
            return Err(StoreCode::BadSignature);
        }
        if expires_at <= now_unix || expires_at > now_unix + 24 * 3600 {
            return Err(StoreCode::Expired);
        }
        Ok(RecordMeta {
            key,
            owner,
            seq,
            expires_at,
        })
    }
}

enum Msg {
    Req(RequestId, Request<Rec>),
    Resp(RequestId, Response<Rec>),
}

enum Ev {
    Join(usize),
    Publish(usize, u64),
    Deliver {
        to: usize,
        from: usize,
        msg: Msg,
    },
    Wake(usize, u64),
    Measure {
        node: usize,
        find_value: Option<usize>,
    },
    Kill(usize),
    Churn,
}

struct Node {
    dht: Dht<SimCheck>,
    contact: Contact,
    alive: bool,
    sybil: bool,
    next_wake: u64,
}

struct Measured {
    find_value: Option<usize>,
    requester: usize,
}

struct Sim {
    cfg: SimConfig,
    rng: Rng,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    queue: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    now: u64,
    check: SimCheck,
    network_key: [u8; 32],
    seeds: Vec<usize>,
    stale: Vec<Option<Rec>>,
    measured: BTreeMap<(usize, LookupId), Measured>,
    outcomes: Vec<(
        Option<usize>,
        usize,
        shadowmesh_proto::dht::node::LookupOutcome<Rec>,
    )>,
    recalls: Vec<f64>,
    messages_total: u64,
    measure_end: u64,
}

const MS: u64 = 1000;
const SEC: u64 = 1_000_000;

impl Sim {
    fn storage_key(&self, owner: &PeerId) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&self.network_key);
        ctx.update(&owner.0);
        ctx.finish().as_ref().try_into().expect("32")
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn latency(&mut self) -> u64 {
        let ms = self.cfg.latency_median_ms * (self.cfg.latency_sigma * self.rng.normal()).exp();
        (ms * MS as f64) as u64
    }

    fn now_d(&self) -> Duration {
        Duration::from_micros(self.now)
    }

    fn now_unix(&self) -> u64 {
        UNIX_EPOCH_OFFSET + self.now / SEC
    }

    fn new_node(&mut self, sybil: bool) -> usize {
        let i = self.nodes.len();
        let id = PeerId(self.rng.bytes32());
        let addr = if sybil {
            // An attacker's few networks: the per-/24 bucket limit applies to them.
            SocketAddr::new(
                Ipv4Addr::new(203, 0, 113 + (i % 8) as u8, (i / 8 % 250) as u8 + 1).into(),
                4000 + (i / 2000) as u16,
            )
        } else {
            // Distinct public addresses.
            let x = (i as u32).wrapping_mul(2_654_435_761) % 200_000_000;
            SocketAddr::new(Ipv4Addr::from(0x0b00_0000 + x).into(), 4433)
        };
        let contact = Contact {
            id,
            ed25519: [0; 32],
            addr,
        };
        let seed = self.rng.next_u64();
        let mut dht = Dht::new(contact, self.check.clone(), seed);
        dht.set_lookup_paths(self.cfg.paths);
        self.nodes.push(Node {
            dht,
            contact,
            alive: true,
            sybil,
            next_wake: u64::MAX,
        });
        self.by_addr.insert(addr, i);
        self.stale.push(None);
        i
    }

    /// Sends everything node `n` wants sent, records finished lookups, reschedules its wake.
    fn drain(&mut self, n: usize) {
        while let Some(o) = self.nodes[n].dht.poll_output() {
            match o {
                Output::Send { to, id, req } => {
                    self.messages_total += 1;
                    if self.rng.f64() < self.cfg.loss {
                        continue;
                    }
                    let Some(&d) = self.by_addr.get(&to.addr) else {
                        continue;
                    };
                    let t = self.now + self.latency();
                    self.at(
                        t,
                        Ev::Deliver {
                            to: d,
                            from: n,
                            msg: Msg::Req(id, req),
                        },
                    );
                }
                Output::Observed(_) | Output::Moved => {}
                Output::LookupDone(out) => {
                    if let Some(m) = self.measured.remove(&(n, out.id)) {
                        if m.find_value.is_none() {
                            let r = self.recall(m.requester, &out.target, &out.closest);
                            self.recalls.push(r);
                        }
                        self.outcomes.push((m.find_value, m.requester, out));
                    }
                }
            }
        }
        if let Some(t) = self.nodes[n].dht.poll_timeout() {
            let t = t.as_micros() as u64;
            let t = t.max(self.now);
            if t < self.nodes[n].next_wake || self.nodes[n].next_wake <= self.now {
                self.nodes[n].next_wake = t;
                self.at(t, Ev::Wake(n, t));
            }
        }
    }

    fn recall(&self, requester: usize, target: &[u8; 32], got: &[Contact]) -> f64 {
        let t = PeerId(*target);
        let mut live: Vec<([u8; 32], PeerId)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| n.alive && !n.sybil && *i != requester)
            .map(|(_, n)| (n.contact.id.distance(&t), n.contact.id))
            .collect();
        let k = K.min(live.len());
        if k == 0 {
            return 1.0;
        }
        live.select_nth_unstable_by(k - 1, |a, b| a.0.cmp(&b.0));
        let truth: BTreeSet<PeerId> = live[..k].iter().map(|x| x.1).collect();
        got.iter().filter(|c| truth.contains(&c.id)).count() as f64 / k as f64
    }

    fn sybil_answer(&mut self, s: usize, req: Request<Rec>) -> Response<Rec> {
        let bogus = |sim: &mut Sim| {
            let mut contacts = Vec::new();
            for _ in 0..K {
                if sim.rng.f64() < 0.5 {
                    // A node that does not exist.
                    let i = sim.rng.below(1 << 20);
                    contacts.push(Contact {
                        id: PeerId(sim.rng.bytes32()),
                        ed25519: [0; 32],
                        addr: SocketAddr::new(
                            Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8).into(),
                            1,
                        ),
                    });
                } else {
                    // Another Sybil.
                    let j = sim.rng.below(sim.nodes.len());
                    if sim.nodes[j].sybil {
                        contacts.push(sim.nodes[j].contact);
                    }
                }
            }
            Response::Nodes { contacts }
        };
        match req {
            Request::Ping => Response::Pong {
                observed: self.nodes[s].contact.addr,
            },
            Request::Store { .. } => Response::Stored(StoreCode::Ok),
            Request::FindNode { .. } => bogus(self),
            Request::FindValue { owner, .. } => {
                let stale = self
                    .nodes
                    .iter()
                    .position(|n| n.contact.id == owner)
                    .and_then(|o| self.stale[o].clone());
                match stale {
                    Some(r) if self.rng.f64() < 0.7 => Response::Value { record: r },
                    _ => bogus(self),
                }
            }
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Join(n) => {
                for s in self.seeds.clone() {
                    if s != n {
                        let c = self.nodes[s].contact;
                        let now = self.now_d();
                        self.nodes[n].dht.add_contact(c, now);
                    }
                }
                let now = self.now_d();
                self.nodes[n].dht.bootstrap(now);
                self.drain(n);
            }
            Ev::Publish(n, seq) => {
                if !self.nodes[n].alive {
                    return;
                }
                let owner = self.nodes[n].contact.id;
                let key = self.storage_key(&owner);
                let rec = self
                    .check
                    .make(&owner, &key, seq, self.now_unix() + 6 * 3600);
                if seq == 1 {
                    self.stale[n] = Some(rec.clone());
                }
                let (now, nu) = (self.now_d(), self.now_unix());
                let _ = self.nodes[n].dht.publish(rec, nu, now);
                self.drain(n);
            }
            Ev::Deliver { to, from, msg } => {
                if !self.nodes[to].alive {
                    return;
                }
                match msg {
                    Msg::Req(id, req) => {
                        let resp = if self.nodes[to].sybil {
                            Some(self.sybil_answer(to, req))
                        } else {
                            let c = self.nodes[from].contact;
                            let (now, nu) = (self.now_d(), self.now_unix());
                            let r = self.nodes[to].dht.handle_request(c, req, now, nu);
                            self.drain(to);
                            r
                        };
                        if let Some(resp) = resp {
                            self.messages_total += 1;
                            if self.rng.f64() >= self.cfg.loss {
                                let t = self.now + self.latency();
                                self.at(
                                    t,
                                    Ev::Deliver {
                                        to: from,
                                        from: to,
                                        msg: Msg::Resp(id, resp),
                                    },
                                );
                            }
                        }
                    }
                    Msg::Resp(id, resp) => {
                        let (now, nu) = (self.now_d(), self.now_unix());
                        self.nodes[to].dht.handle_response(id, resp, now, nu);
                        self.drain(to);
                    }
                }
            }
            Ev::Wake(n, t) => {
                if !self.nodes[n].alive || self.nodes[n].next_wake != t {
                    return;
                }
                self.nodes[n].next_wake = u64::MAX;
                let (now, nu) = (self.now_d(), self.now_unix());
                self.nodes[n].dht.handle_timeout(now, nu);
                self.drain(n);
            }
            Ev::Measure { node, find_value } => {
                if !self.nodes[node].alive {
                    return;
                }
                let now = self.now_d();
                let id = match find_value {
                    Some(owner) => {
                        let o = self.nodes[owner].contact.id;
                        let key = self.storage_key(&o);
                        self.nodes[node].dht.find_value(key, o, 0, now)
                    }
                    None => {
                        let t = self.rng.bytes32();
                        self.nodes[node].dht.find_node(t, now)
                    }
                };
                if let Some(id) = id {
                    self.measured.insert(
                        (node, id),
                        Measured {
                            find_value,
                            requester: node,
                        },
                    );
                    self.drain(node);
                }
            }
            Ev::Kill(n) => self.nodes[n].alive = false,
            Ev::Churn => {
                if self.now >= self.measure_end {
                    return;
                }
                let live: Vec<usize> = (0..self.nodes.len())
                    .filter(|&i| self.nodes[i].alive && !self.nodes[i].sybil)
                    .collect();
                let per_sec = self.cfg.churn * live.len() as f64 / 60.0;
                let mut count = per_sec.floor() as usize;
                if self.rng.f64() < per_sec.fract() {
                    count += 1;
                }
                for _ in 0..count {
                    let v = live[self.rng.below(live.len())];
                    if !self.seeds.contains(&v) {
                        self.nodes[v].alive = false;
                    }
                    let n = self.new_node(false);
                    let t = self.now;
                    self.at(t, Ev::Join(n));
                    let tp = self.now + 10 * SEC;
                    self.at(tp, Ev::Publish(n, 2));
                }
                let t = self.now + SEC;
                self.at(t, Ev::Churn);
            }
        }
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}

/// Runs one simulation.
pub fn run(cfg: &SimConfig) -> SimResult {
    let wall = Instant::now();
    let mut rng = Rng(cfg.seed ^ 0x5348_4144_4f57_4d45);
    let check = SimCheck {
        secret: rng.bytes32(),
    };
    let network_key = rng.bytes32();
    let mut sim = Sim {
        cfg: cfg.clone(),
        rng,
        nodes: Vec::with_capacity(cfg.nodes),
        by_addr: HashMap::new(),
        queue: BTreeMap::new(),
        seq: 0,
        now: 0,
        check,
        network_key,
        seeds: vec![],
        stale: vec![],
        measured: BTreeMap::new(),
        outcomes: vec![],
        recalls: vec![],
        messages_total: 0,
        measure_end: u64::MAX,
    };
    let n_sybil = (cfg.nodes as f64 * cfg.sybil_fraction).round() as usize;
    let n_honest = cfg.nodes - n_sybil;
    let mut kinds: Vec<bool> = (0..cfg.nodes).map(|i| i >= n_honest).collect();
    // Seeds first and honest; the rest shuffled so Sybils join throughout.
    for i in (4..kinds.len()).rev() {
        let j = 3 + sim.rng.below(i - 2);
        kinds.swap(i, j);
    }
    for &s in &kinds {
        sim.new_node(s);
    }
    sim.seeds = vec![0, 1, 2];
    for s in 0..3 {
        for o in 0..3 {
            if s != o {
                let c = sim.nodes[o].contact;
                sim.nodes[s].dht.add_contact(c, Duration::ZERO);
            }
        }
    }
    let spacing = 4 * MS;
    for n in 0..cfg.nodes {
        sim.at(100 * MS + n as u64 * spacing, Ev::Join(n));
    }
    let formed = 100 * MS + cfg.nodes as u64 * spacing + 60 * SEC;
    let honest: Vec<usize> = (0..cfg.nodes).filter(|&i| !sim.nodes[i].sybil).collect();
    for &n in &honest {
        let t1 = formed + sim.rng.below(20_000) as u64 * MS;
        let t2 = formed + 30 * SEC + sim.rng.below(20_000) as u64 * MS;
        sim.at(t1, Ev::Publish(n, 1));
        sim.at(t2, Ev::Publish(n, 2));
    }
    let t_kill = formed + 70 * SEC;
    let n_kill = (honest.len() as f64 * cfg.kill_fraction).round() as usize;
    let mut victims = honest.clone();
    for i in (1..victims.len()).rev() {
        let j = sim.rng.below(i + 1);
        victims.swap(i, j);
    }
    let killed: BTreeSet<usize> = victims[..n_kill].iter().copied().collect();
    for &v in &killed {
        sim.at(t_kill, Ev::Kill(v));
    }
    let live: Vec<usize> = honest
        .iter()
        .copied()
        .filter(|i| !killed.contains(i))
        .collect();
    let t_measure = t_kill + 5 * SEC;
    for q in 0..cfg.lookups {
        let node = live[sim.rng.below(live.len())];
        let fv = if q % 2 == 0 {
            let mut o = live[sim.rng.below(live.len())];
            while o == node && live.len() > 1 {
                o = live[sim.rng.below(live.len())];
            }
            Some(o)
        } else {
            None
        };
        sim.at(
            t_measure + q as u64 * 20 * MS,
            Ev::Measure {
                node,
                find_value: fv,
            },
        );
    }
    sim.measure_end = t_measure + cfg.lookups as u64 * 20 * MS;
    if cfg.churn > 0.0 {
        sim.at(t_measure, Ev::Churn);
    }
    let stop = sim.measure_end + 60 * SEC;
    while let Some(((t, _), ev)) = sim.queue.pop_first() {
        if t > stop {
            break;
        }
        sim.now = t;
        sim.step(ev);
        if t > sim.measure_end && sim.measured.is_empty() {
            break;
        }
    }

    let newest = 2u64;
    let fv: Vec<_> = sim.outcomes.iter().filter(|o| o.0.is_some()).collect();
    let ok = fv
        .iter()
        .filter(|o| {
            o.2.record
                .as_ref()
                .and_then(|r| sim.check.check(r, UNIX_EPOCH_OFFSET + sim.now / SEC).ok())
                .is_some_and(|m| {
                    m.seq == newest && Some(m.owner) == o.0.map(|x| sim.nodes[x].contact.id)
                })
        })
        .count();
    let mut hops: Vec<f64> = sim.outcomes.iter().map(|o| o.2.hops as f64).collect();
    let mut lat: Vec<f64> = sim
        .outcomes
        .iter()
        .map(|o| (o.2.finished - o.2.started).as_secs_f64() * 1e3)
        .collect();
    let n_out = sim.outcomes.len().max(1) as f64;
    let msgs = sim
        .outcomes
        .iter()
        .map(|o| o.2.messages as f64)
        .sum::<f64>()
        / n_out;
    let bytes = sim.outcomes.iter().map(|o| o.2.bytes as f64).sum::<f64>() / n_out;
    let tables: Vec<usize> = sim
        .nodes
        .iter()
        .filter(|n| n.alive && !n.sybil)
        .map(|n| n.dht.table().len())
        .collect();
    SimResult {
        config: cfg.clone(),
        lookup_success: ok as f64 / fv.len().max(1) as f64,
        closest_k_recall: sim.recalls.iter().sum::<f64>() / sim.recalls.len().max(1) as f64,
        hops_p50: percentile(&mut hops, 50.0),
        hops_p95: percentile(&mut hops, 95.0),
        latency_ms_p50: percentile(&mut lat, 50.0),
        latency_ms_p95: percentile(&mut lat, 95.0),
        latency_ms_p99: percentile(&mut lat, 99.0),
        messages_per_lookup: msgs,
        bytes_per_lookup: bytes,
        lookups_done: sim.outcomes.len(),
        messages_total: sim.messages_total,
        table_max: tables.iter().copied().max().unwrap_or(0),
        table_mean: tables.iter().sum::<usize>() as f64 / tables.len().max(1) as f64,
        virtual_seconds: sim.now as f64 / SEC as f64,
        wall_seconds: wall.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_network_finds_everything_and_replays_exactly() {
        let cfg = SimConfig {
            nodes: 200,
            seed: 7,
            lookups: 100,
            ..Default::default()
        };
        let a = run(&cfg);
        assert_eq!(a.lookups_done, 100);
        assert!(a.lookup_success >= 0.99, "{}", a.to_json());
        assert!(a.closest_k_recall >= 0.95, "{}", a.to_json());
        let b = run(&cfg);
        let strip = |s: String| s.split(",\"wall_seconds\"").next().unwrap().to_string();
        assert_eq!(strip(a.to_json()), strip(b.to_json()));
    }
}
