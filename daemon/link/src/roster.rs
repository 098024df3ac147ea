//! The members of our mesh, their records, and what their records are given.
//!
//! A record's prefixes are requests (DESIGN.md, "Routing a LAN"). [`Roster::judge`] weighs all
//! of them again whenever something changed (a member arrived, left or re-signed its record,
//! the configuration was reloaded): overlay IPv4 addresses by the collision rule
//! ([`overlay::settle_ipv4`], in which we take part, so the rule may move our own address),
//! overlay IPv6 addresses by derivation, and LAN routes by the [`RoutePolicy`], the member that
//! joined first keeping a contested prefix. The outcome is a route table for the forwarding
//! path, a per-member account for `peers --json`, and [`Output`]s for the shell: kernel routes
//! to install and withdraw, our address to move, refusals to log once.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use shadowmesh_proto::overlay::{self, Ipv4Verdict, V4Prefix, V6Prefix};
use shadowmesh_proto::policy::{Refusal, RoutePolicy};
use shadowmesh_proto::record::Payload;
use shadowmesh_proto::route::{InsertError, Prefix, RouteTable};
use shadowmesh_proto::PeerId;

/// What became of one member's prefixes (overlay addresses and LAN routes).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Judged {
    /// Installed (in the route table; LAN prefixes also in the kernel).
    pub accepted: Vec<Prefix>,
    /// Refused, with why.
    pub refused: Vec<(Prefix, Refusal)>,
}

/// One member as its record describes it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The payload of its newest record.
    pub payload: Payload,
    /// Its Ed25519 key (from the record).
    pub ed25519: [u8; 32],
    /// Its newest record's sequence number.
    pub seq: u64,
    /// Where we last reached it (the connection's remote address).
    pub endpoint: Option<SocketAddr>,
    judged: Judged,
}

impl Entry {
    /// What became of its prefixes at the last judgement.
    pub fn judged(&self) -> &Judged {
        &self.judged
    }

    /// Where to dial it, in order: where we last reached it, then each address its record
    /// gives, once each.
    pub fn dial_candidates(&self) -> Vec<SocketAddr> {
        let mut a: Vec<SocketAddr> = self.endpoint.into_iter().collect();
        for x in &self.payload.addrs {
            if !a.contains(x) {
                a.push(*x);
            }
        }
        a
    }
}

/// What a record did to the roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// A member we did not know.
    Added,
    /// A newer record of a member we knew.
    Replaced,
    /// The record we hold already, or an older one: nothing changed.
    Stale,
    /// The roster is full: the member was not added.
    Full,
}

/// What the shell must do after a judgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A member's prefix was refused that was not refused for this reason before: log it.
    Refused(PeerId, Prefix, Refusal),
    /// The collision rule gave our overlay IPv4 to a lower PeerId (or gave it back): move the
    /// tunnel's address and re-sign our record.
    Readdress {
        /// The address we held.
        from: Ipv4Addr,
        /// The address we hold now.
        to: Ipv4Addr,
        /// Its rehash counter.
        counter: u32,
    },
    /// Route `prefix` through the tunnel (a LAN of `owner`).
    InstallRoute(Prefix, PeerId),
    /// Remove our route to `prefix`.
    WithdrawRoute(Prefix),
}

/// Who we are in the mesh and what the roster may hold.
#[derive(Debug, Clone)]
pub struct RosterConfig {
    /// Our PeerId.
    pub me: PeerId,
    /// Our overlay IPv4 address and its collision counter.
    pub ipv4: (Ipv4Addr, u32),
    /// Our overlay IPv6 address (none without a network key).
    pub ipv6: Option<Ipv6Addr>,
    /// The mesh's overlay IPv4 /16.
    pub v4: V4Prefix,
    /// The mesh's overlay IPv6 /48.
    pub v6: V6Prefix,
    /// Which members' LAN routes we install (its `local` is replaced at each
    /// [`Roster::judge`]).
    pub policy: RoutePolicy,
    /// The most members held.
    pub capacity: usize,
}

impl RosterConfig {
    /// The settings of member `me` whose record carries `payload` (its overlay addresses, and
    /// the routes it advertises as its own), in the mesh whose overlay IPv4 /16 is the one its
    /// address lies in and whose IPv6 /48 is `v6`; members' LAN routes accepted anywhere until
    /// the configuration narrows it. `None` if the payload claims no overlay IPv4 address.
    pub fn member(me: PeerId, payload: &Payload, v6: V6Prefix, capacity: usize) -> Option<Self> {
        let ipv4 = payload.ipv4?;
        let o = ipv4.octets();
        let v4 = V4Prefix { net: [o[0], o[1]] };
        Some(RosterConfig {
            me,
            ipv4: (ipv4, payload.ipv4_counter),
            ipv6: payload.ipv6,
            v4,
            v6,
            policy: RoutePolicy {
                accept_routes: true,
                accept: vec![],
                overlay: vec![v4.prefix(), v6.prefix()],
                own: payload
                    .routes
                    .iter()
                    .filter_map(|r| Prefix::new(r.addr, r.prefix_len))
                    .collect(),
                local: vec![],
            },
            capacity,
        })
    }
}

/// The record payload of member `me` of the mesh with `network_key`, before addresses and
/// routes: the overlay addresses it claims (IPv4 from the first rehash candidate in the default
/// `10.100.0.0/16`, IPv6 from the PeerId inside the mesh's /48).
pub fn member_payload(me: &PeerId, network_key: &[u8; 32]) -> Payload {
    member_payload_in(me, network_key, V4Prefix::default())
}

/// [`member_payload`] with the overlay IPv4 /16 `v4` (`option overlay_ipv4`).
pub fn member_payload_in(me: &PeerId, network_key: &[u8; 32], v4: V4Prefix) -> Payload {
    let (addr, counter) = overlay::ipv4_candidate(v4, me, 0);
    Payload {
        ipv4: Some(addr),
        ipv4_counter: counter,
        ipv6: Some(overlay::ipv6(V6Prefix::for_network(network_key), me)),
        ..Payload::default()
    }
}

/// The members, their records and the routes they hold.
pub struct Roster {
    /// Who we are and what we take (our own addresses change on a collision).
    cfg: RosterConfig,
    members: Members,
    /// The members in the order they arrived (on a conflict the earlier one keeps its prefix).
    arrivals: Vec<PeerId>,
    table: RouteTable<PeerId>,
    /// LAN prefixes installed in the kernel, with their owner.
    installed: BTreeMap<Prefix, PeerId>,
    /// The member our internet traffic goes to (what no member's prefix holds).
    exit: Option<PeerId>,
    out: VecDeque<Output>,
}

impl Roster {
    /// An empty roster.
    pub fn new(cfg: RosterConfig) -> Roster {
        let routes = cfg.capacity * 4;
        Roster {
            cfg,
            members: Members(Vec::new()),
            arrivals: Vec::new(),
            table: RouteTable::new(routes),
            installed: BTreeMap::new(),
            exit: None,
            out: VecDeque::new(),
        }
    }

    /// Takes member `pid`'s record (its payload, Ed25519 key and sequence number): a member we
    /// did not know is added in arrival order; one we knew takes the record if it is newer.
    /// Judge afterwards.
    pub fn record(&mut self, pid: PeerId, payload: Payload, ed25519: [u8; 32], seq: u64) -> Update {
        if let Some(e) = self.members.get_mut(&pid) {
            if seq <= e.seq {
                return Update::Stale;
            }
            e.payload = payload;
            e.ed25519 = ed25519;
            e.seq = seq;
            return Update::Replaced;
        }
        if self.members.len() >= self.cfg.capacity {
            return Update::Full;
        }
        self.arrivals.push(pid);
        self.members.insert(
            pid,
            Entry {
                payload,
                ed25519,
                seq,
                endpoint: None,
                judged: Judged::default(),
            },
        );
        Update::Added
    }

    /// Notes where we reached member `pid`.
    pub fn set_endpoint(&mut self, pid: &PeerId, at: SocketAddr) {
        if let Some(e) = self.members.get_mut(pid) {
            e.endpoint = Some(at);
        }
    }

    /// Forgets member `pid`; judge afterwards.
    pub fn remove(&mut self, pid: &PeerId) -> bool {
        self.arrivals.retain(|p| p != pid);
        self.members.remove(pid).is_some()
    }

    /// Replaces our own routes and what we accept (configuration reload); judge afterwards.
    pub fn reconfigure(&mut self, own: Vec<Prefix>, accept_routes: bool, accept: Vec<Prefix>) {
        self.cfg.policy.own = own;
        self.cfg.policy.accept_routes = accept_routes;
        self.cfg.policy.accept = accept;
    }

    /// The most members it holds.
    pub fn capacity(&self) -> usize {
        self.cfg.capacity
    }

    /// Our PeerId.
    pub fn me(&self) -> PeerId {
        self.cfg.me
    }

    /// Member `pid`, if known.
    pub fn get(&self, pid: &PeerId) -> Option<&Entry> {
        self.members.get(pid)
    }

    /// Whether `pid` is a member we know.
    pub fn contains(&self, pid: &PeerId) -> bool {
        self.members.contains_key(pid)
    }

    /// How many members we know.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether we know no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member, in PeerId order.
    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &Entry)> {
        self.members.iter()
    }

    /// The member that holds the prefix `addr` falls in (longest match); else, outside the
    /// overlay, the exit (what goes to the internet, and what may come from it).
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<PeerId> {
        match self.table.lookup(addr) {
            Some(p) => Some(p),
            None => self.exit.filter(|_| {
                !self.cfg.v4.prefix().contains(addr) && !self.cfg.v6.prefix().contains(addr)
            }),
        }
    }

    /// Sends what no member's prefix holds to member `exit` (or nowhere).
    pub fn set_exit(&mut self, exit: Option<PeerId>) {
        self.exit = exit;
    }

    /// The member our internet traffic goes to, if any.
    pub fn exit(&self) -> Option<PeerId> {
        self.exit
    }

    /// Our overlay addresses: IPv4 with its rehash counter, and IPv6.
    pub fn addresses(&self) -> (Ipv4Addr, u32, Option<Ipv6Addr>) {
        (self.cfg.ipv4.0, self.cfg.ipv4.1, self.cfg.ipv6)
    }

    /// The LAN routes installed in the kernel (as the last judgement asked), with their owner.
    pub fn installed(&self) -> impl Iterator<Item = (&Prefix, &PeerId)> {
        self.installed.iter()
    }

    /// The next thing the shell must do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Judges every member's prefixes again, given `local`: this host's addresses and routes
    /// other than ours (the members' underlay addresses are added here). Rebuilds the route
    /// table and queues what the shell must do.
    pub fn judge(&mut self, local: Vec<Prefix>) {
        let mut policy = self.cfg.policy.clone();
        policy.local = local;
        // The underlay paths to members: a route over one of them would loop the tunnel.
        policy.local.extend(
            self.members
                .values()
                .filter_map(|m| m.endpoint)
                .map(|e| Prefix::host(e.ip())),
        );
        let mut table = RouteTable::new(self.cfg.capacity * 4);
        // One account per member, in the members' (PeerId) order.
        let ids: Vec<PeerId> = self.members.keys().copied().collect();
        let mut verdicts: Vec<Judged> = vec![Judged::default(); ids.len()];
        let at = |pid: &PeerId| ids.binary_search(pid).expect("judged members exist");
        // Overlay IPv4 by the collision rule, settled alike at every node; we take part.
        let claims = self
            .members
            .iter()
            .filter_map(|(p, m)| Some((*p, m.payload.ipv4?, m.payload.ipv4_counter)));
        let mine = overlay::settle_ipv4(self.cfg.v4, Some(&self.cfg.me), claims, |pid, a, v| {
            let p = Prefix::host(IpAddr::V4(a));
            let verdict = match v {
                Ipv4Verdict::Owner => table.insert(p, pid).map_err(|e| refusal(p, e)),
                Ipv4Verdict::Held(owner) => Err(Refusal::Held(p, owner)),
                Ipv4Verdict::NotDerived => Err(Refusal::Claim),
                Ipv4Verdict::Skipped => Err(Refusal::Rehash),
            };
            verdicts[at(&pid)].note(p, verdict);
        });
        // Overlay IPv6: the PeerId's bits in the mesh's /48 (80 bits: no collision rule).
        for (i, (pid, m)) in self.members.iter().enumerate() {
            let Some(a) = m.payload.ipv6 else { continue };
            let p = Prefix::host(IpAddr::V6(a));
            let verdict = if overlay::ipv6(self.cfg.v6, pid) != a {
                Err(Refusal::Claim)
            } else if Some(a) == self.cfg.ipv6 {
                Err(Refusal::Held(p, self.cfg.me))
            } else {
                table.insert(p, *pid).map_err(|e| refusal(p, e))
            };
            verdicts[i].note(p, verdict);
        }
        // LAN routes, in the order members arrived.
        let entries: Vec<&Entry> = self.members.values().collect();
        for pid in &self.arrivals {
            let i = at(pid);
            let (pid, m) = (*pid, entries[i]);
            let j = &mut verdicts[i];
            for p in m
                .payload
                .routes
                .iter()
                .filter_map(|r| Prefix::new(r.addr, r.prefix_len))
            {
                let verdict = policy
                    .judge(p, pid, &table)
                    .and_then(|()| table.insert(p, pid).map_err(|e| refusal(p, e)));
                j.note(p, verdict);
            }
        }
        for ((pid, m), j) in self.members.iter_mut().zip(verdicts) {
            let pid = *pid;
            for (p, why) in &j.refused {
                if !m.judged.refused.contains(&(*p, *why)) {
                    self.out.push_back(Output::Refused(pid, *p, *why));
                }
            }
            m.judged = j;
        }
        if let Some(new) = mine.filter(|m| *m != self.cfg.ipv4) {
            self.out.push_back(Output::Readdress {
                from: self.cfg.ipv4.0,
                to: new.0,
                counter: new.1,
            });
            self.cfg.ipv4 = new;
        }
        self.table = table;
        self.sync_installed();
    }

    /// Queues the kernel route changes that make ours match the table (overlay addresses are
    /// covered by the tunnel's own /16 and /48).
    fn sync_installed(&mut self) {
        // Inserted one by one: `collect` would instantiate a stable sort of (Prefix, PeerId),
        // 12 KiB of mips code for a map of a few dozen routes.
        let mut want: BTreeMap<Prefix, PeerId> = BTreeMap::new();
        for (p, owner) in self.table.iter() {
            if !(p.len == 32 && p.addr.is_ipv4() || p.len == 128 && p.addr.is_ipv6()) {
                want.insert(p, owner);
            }
        }
        for p in self.installed.keys().filter(|p| !want.contains_key(p)) {
            self.out.push_back(Output::WithdrawRoute(*p));
        }
        for (p, owner) in &want {
            if !self.installed.contains_key(p) {
                self.out.push_back(Output::InstallRoute(*p, *owner));
            }
        }
        self.installed = want;
    }
}

/// The members sorted by PeerId: a Vec rather than a map, since each map type instantiated
/// costs a router's flash several KiB, and members are looked up by binary search and added or
/// removed rarely.
struct Members(Vec<(PeerId, Entry)>);

impl Members {
    fn find(&self, pid: &PeerId) -> Result<usize, usize> {
        self.0.binary_search_by(|e| e.0.cmp(pid))
    }

    fn get(&self, pid: &PeerId) -> Option<&Entry> {
        self.find(pid).ok().map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, pid: &PeerId) -> Option<&mut Entry> {
        self.find(pid).ok().map(|i| &mut self.0[i].1)
    }

    fn contains_key(&self, pid: &PeerId) -> bool {
        self.find(pid).is_ok()
    }

    /// Adds `pid` (not yet a member).
    fn insert(&mut self, pid: PeerId, e: Entry) {
        if let Err(i) = self.find(&pid) {
            self.0.insert(i, (pid, e));
        }
    }

    fn remove(&mut self, pid: &PeerId) -> Option<Entry> {
        self.find(pid).ok().map(|i| self.0.remove(i).1)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (&PeerId, &Entry)> {
        self.0.iter().map(|(p, e)| (p, e))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&PeerId, &mut Entry)> {
        self.0.iter_mut().map(|(p, e)| (&*p, e))
    }

    fn keys(&self) -> impl Iterator<Item = &PeerId> {
        self.0.iter().map(|e| &e.0)
    }

    fn values(&self) -> impl Iterator<Item = &Entry> {
        self.0.iter().map(|e| &e.1)
    }
}

impl Judged {
    fn note(&mut self, p: Prefix, verdict: Result<(), Refusal>) {
        match verdict {
            Ok(()) => self.accepted.push(p),
            Err(why) => self.refused.push((p, why)),
        }
    }
}

/// A route table's refusal as a policy refusal.
fn refusal(p: Prefix, e: InsertError<PeerId>) -> Refusal {
    match e {
        InsertError::Full => Refusal::Full,
        InsertError::Taken(other) => Refusal::Held(p, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowmesh_proto::record::Route;

    #[test]
    fn a_member_s_settings_come_from_its_payload() {
        let me = pid(1, 2, 3);
        let mut p = payload(&me, 0, &["192.168.1.0/24"]);
        p.ipv4 = Some(Ipv4Addr::new(10, 101, 7, 9));
        p.ipv4_counter = 2;
        let c = RosterConfig::member(me, &p, v6(), 8).unwrap();
        assert_eq!(c.ipv4, (Ipv4Addr::new(10, 101, 7, 9), 2));
        assert_eq!(c.v4, V4Prefix { net: [10, 101] });
        assert_eq!(
            c.policy.own,
            [Prefix::new("192.168.1.0".parse().unwrap(), 24).unwrap()]
        );
        assert!(c.policy.accept_routes && c.policy.accept.is_empty());
        assert_eq!(c.capacity, 8);
        p.ipv4 = None;
        assert!(
            RosterConfig::member(me, &p, v6(), 8).is_none(),
            "a seed claims no address"
        );
    }

    #[test]
    fn dial_candidates_start_where_we_last_reached_the_member_and_repeat_nothing() {
        let a = |p: u16| SocketAddr::from(([192, 0, 2, 1], p));
        let mut e = Entry {
            payload: Payload {
                addrs: vec![a(2), a(1), a(3), a(2)],
                ..Payload::default()
            },
            ed25519: [0; 32],
            seq: 1,
            endpoint: None,
            judged: Judged::default(),
        };
        assert_eq!(e.dial_candidates(), [a(2), a(1), a(3)]);
        e.endpoint = Some(a(1));
        assert_eq!(e.dial_candidates(), [a(1), a(2), a(3)]);
        e.endpoint = Some(a(9));
        assert_eq!(e.dial_candidates(), [a(9), a(2), a(1), a(3)]);
    }

    const NK: [u8; 32] = [0x42; 32];

    fn pid(b0: u8, b1: u8, fill: u8) -> PeerId {
        let mut a = [fill; 32];
        a[0] = b0;
        a[1] = b1;
        PeerId(a)
    }

    fn v6() -> V6Prefix {
        V6Prefix::for_network(&NK)
    }

    /// The payload member `id` claims: its counter-`counter` IPv4, its IPv6, `routes`.
    fn payload(id: &PeerId, counter: u32, routes: &[&str]) -> Payload {
        let (a, c) = overlay::ipv4_candidate(V4Prefix::default(), id, counter);
        Payload {
            ipv4: Some(a),
            ipv4_counter: c,
            ipv6: Some(overlay::ipv6(v6(), id)),
            routes: routes
                .iter()
                .map(|r| {
                    let (a, l) = r.split_once('/').unwrap();
                    Route {
                        addr: a.parse().unwrap(),
                        prefix_len: l.parse().unwrap(),
                    }
                })
                .collect(),
            ..Payload::default()
        }
    }

    fn roster(me: PeerId, own: &[&str]) -> Roster {
        let p = payload(&me, 0, own);
        let cfg = RosterConfig::member(me, &p, v6(), 64).unwrap();
        assert_eq!(cfg.v4, V4Prefix::default(), "the /16 our address lies in");
        assert_eq!(
            cfg.policy.overlay,
            [V4Prefix::default().prefix(), v6().prefix()]
        );
        assert_eq!(cfg.policy.own.len(), own.len(), "our routes are our own");
        Roster::new(cfg)
    }

    fn prefix(s: &str) -> Prefix {
        let (a, l) = s.split_once('/').unwrap();
        Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
    }

    fn drain(r: &mut Roster) -> Vec<Output> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    #[test]
    fn routes_are_installed_once_and_withdrawn_with_their_member() {
        let mut r = roster(pid(1, 1, 1), &["192.168.1.0/24"]);
        let b = pid(2, 2, 2);
        assert_eq!(
            r.record(b, payload(&b, 0, &["192.168.2.0/24"]), [0; 32], 5),
            Update::Added
        );
        r.judge(vec![]);
        assert_eq!(
            drain(&mut r),
            vec![Output::InstallRoute(prefix("192.168.2.0/24"), b)]
        );
        assert_eq!(r.lookup("192.168.2.7".parse().unwrap()), Some(b));
        let b4 = r.get(&b).unwrap().payload.ipv4.unwrap();
        assert_eq!(r.lookup(b4.into()), Some(b));
        // Judging again with nothing changed asks for nothing.
        r.judge(vec![]);
        assert_eq!(drain(&mut r), vec![]);
        assert!(r.remove(&b));
        r.judge(vec![]);
        assert_eq!(
            drain(&mut r),
            vec![Output::WithdrawRoute(prefix("192.168.2.0/24"))]
        );
        assert_eq!(r.lookup("192.168.2.7".parse().unwrap()), None);
    }

    #[test]
    fn a_newer_record_replaces_an_older_one_and_its_routes() {
        let mut r = roster(pid(1, 1, 1), &[]);
        let b = pid(2, 2, 2);
        r.record(b, payload(&b, 0, &["10.1.0.0/16"]), [0; 32], 5);
        r.judge(vec![]);
        drain(&mut r);
        assert_eq!(
            r.record(b, payload(&b, 0, &["10.9.0.0/16"]), [0; 32], 5),
            Update::Stale
        );
        assert_eq!(
            r.record(b, payload(&b, 0, &["10.9.0.0/16"]), [0; 32], 4),
            Update::Stale
        );
        assert_eq!(
            r.record(b, payload(&b, 0, &["10.2.0.0/16"]), [0; 32], 6),
            Update::Replaced
        );
        r.judge(vec![]);
        assert_eq!(
            drain(&mut r),
            vec![
                Output::WithdrawRoute(prefix("10.1.0.0/16")),
                Output::InstallRoute(prefix("10.2.0.0/16"), b)
            ]
        );
        assert_eq!(r.get(&b).unwrap().seq, 6);
    }

    #[test]
    fn conflicts_go_to_the_first_member_and_are_reported_once() {
        let mut r = roster(pid(1, 1, 1), &["192.168.1.0/24"]);
        let (b, c) = (pid(9, 9, 9), pid(3, 3, 3));
        // B arrives first (though its PeerId is higher) and holds the /24.
        r.record(b, payload(&b, 0, &["192.168.3.0/24"]), [0; 32], 1);
        r.record(
            c,
            payload(
                &c,
                0,
                &[
                    "192.168.3.0/25",
                    "192.168.1.0/24",
                    "0.0.0.0/0",
                    "10.77.0.0/16",
                ],
            ),
            [0; 32],
            1,
        );
        let wan = prefix("10.77.0.0/16");
        r.judge(vec![wan]);
        let out = drain(&mut r);
        let refused: Vec<(Prefix, &str)> = out
            .iter()
            .filter_map(|o| match o {
                Output::Refused(who, p, why) if *who == c => Some((*p, why.code())),
                _ => None,
            })
            .collect();
        assert_eq!(
            refused,
            vec![
                (prefix("192.168.3.0/25"), "held"),
                (prefix("192.168.1.0/24"), "own"),
                (prefix("0.0.0.0/0"), "default"),
                (wan, "local"),
            ]
        );
        assert!(out.contains(&Output::InstallRoute(prefix("192.168.3.0/24"), b)));
        assert_eq!(r.lookup("192.168.3.5".parse().unwrap()), Some(b));
        // Judged again: the refusals stand but are not reported again.
        r.judge(vec![wan]);
        assert_eq!(drain(&mut r), vec![]);
        assert_eq!(r.get(&c).unwrap().judged().refused.len(), 4);
        // B leaves: C's /25 is free now.
        r.remove(&b);
        r.judge(vec![wan]);
        let out = drain(&mut r);
        assert!(out.contains(&Output::InstallRoute(prefix("192.168.3.0/25"), c)));
        assert!(out.contains(&Output::WithdrawRoute(prefix("192.168.3.0/24"))));
    }

    #[test]
    fn a_member_underlay_address_is_never_routed_into_the_tunnel() {
        let mut r = roster(pid(1, 1, 1), &[]);
        let (b, c) = (pid(2, 2, 2), pid(3, 3, 3));
        r.record(b, payload(&b, 0, &[]), [0; 32], 1);
        r.set_endpoint(&b, "203.0.113.7:4433".parse().unwrap());
        r.record(c, payload(&c, 0, &["203.0.113.0/24"]), [0; 32], 1);
        r.judge(vec![]);
        assert_eq!(
            r.get(&c).unwrap().judged().refused,
            vec![(
                prefix("203.0.113.0/24"),
                Refusal::Local(prefix("203.0.113.7/32"))
            )]
        );
    }

    #[test]
    fn our_address_moves_when_a_lower_peer_id_claims_it_and_comes_back() {
        // We and L derive the same address at counter 0; L is lower.
        let me = pid(7, 7, 9);
        let l = pid(7, 7, 1);
        let mut r = roster(me, &[]);
        let (x, _, _) = r.addresses();
        r.record(l, payload(&l, 0, &[]), [0; 32], 1);
        r.judge(vec![]);
        let out = drain(&mut r);
        let (to, counter) = match out.as_slice() {
            [Output::Readdress { from, to, counter }] if *from == x => (*to, *counter),
            other => panic!("{other:?}"),
        };
        assert!(counter >= 1 && to != x);
        assert_eq!(r.addresses().0, to);
        assert_eq!(r.lookup(x.into()), Some(l));
        // L moves away (its record now claims a rehash it is not entitled to): its claim is
        // refused, and the address is ours again.
        r.record(l, payload(&l, 1, &[]), [0; 32], 2);
        r.judge(vec![]);
        let out = drain(&mut r);
        assert!(out.contains(&Output::Readdress {
            from: to,
            to: x,
            counter: 0
        }));
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Refused(who, _, Refusal::Rehash) if *who == l)));
    }

    #[test]
    fn the_roster_is_bounded() {
        let mut r = roster(pid(1, 1, 1), &[]);
        r.cfg.capacity = 2;
        for i in 0..2 {
            let p = pid(50 + i, 0, 0);
            assert_eq!(r.record(p, payload(&p, 0, &[]), [0; 32], 1), Update::Added);
        }
        let p = pid(60, 0, 0);
        assert_eq!(r.record(p, payload(&p, 0, &[]), [0; 32], 1), Update::Full);
        assert_eq!(r.len(), 2);
    }
}
