//! What `peers` and `status` report of the members: the core's view of each, with what quinn
//! knows of its connection.

use super::*;

/// What `peers` reports for one member.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    /// PeerId.
    pub peer_id: PeerId,
    /// Overlay IPv4.
    pub ipv4: Option<Ipv4Addr>,
    /// The rehash counter its record gives for it.
    pub ipv4_counter: u32,
    /// Overlay IPv6.
    pub ipv6: Option<Ipv6Addr>,
    /// Advertised LAN routes.
    pub routes: Vec<Prefix>,
    /// Its prefixes (overlay addresses and LAN routes) this gateway installed.
    pub routes_accepted: Vec<Prefix>,
    /// Its prefixes this gateway refused, with the reason.
    pub routes_refused: Vec<(Prefix, Refusal)>,
    /// The sequence number of its record we hold.
    pub record_seq: u64,
    /// Remote UDP address of the live connection (or the last one).
    pub endpoint: Option<SocketAddr>,
    /// Whether a session is up.
    pub connected: bool,
    /// quinn's smoothed RTT.
    pub rtt: Option<Duration>,
    /// Traffic.
    pub counters: Counters,
    /// Unix time of the last completed handshake (0: never).
    pub last_handshake: u64,
    /// Completed rekeys on the current session.
    pub rekeys: u32,
    /// Who dialled the live connection: "dialled" (we did), "accepted", or "".
    pub role: &'static str,
    /// quinn's id of the live connection (unchanged across a migration; a new handshake
    /// makes a new one).
    pub connection_id: u64,
    /// How data frames travel: "udp" (the fast lane), "quic" (QUIC datagrams), or "".
    pub lane: &'static str,
    /// The live link's paths, each with how long ago an authenticated frame came over it.
    pub paths: Vec<(Path, Option<Duration>)>,
    /// The relay the live link goes through, if it does.
    pub relay: Option<PeerId>,
    /// From our packet that found no link: until the first link, and until a direct one.
    pub reach: shadowmesh_link::members::Reach,
    /// The NAT it sits behind, as its record says.
    pub nat: shadowmesh_proto::dht::observed::NatClass,
    /// It offers itself as an exit.
    pub exit: bool,
    /// The link is on the LAN (`crate::lan::on_link`).
    pub lan: bool,
    /// The name its record claims.
    pub name: String,
    /// The hosts behind it, as it named them.
    pub lan_names: Vec<shadowmesh_proto::lan_names::LanName>,
}

/// What `status` reports of relaying: ours for others, and the relays our links go through.
#[derive(Debug, Clone, Default)]
pub struct RelayInfo {
    /// Whether we relay for members.
    pub on: bool,
    /// The totals (kept across turning it off and on).
    pub counters: shadowmesh_link::relay::RelayCounters,
    /// The circuits we carry now.
    pub circuits: Vec<shadowmesh_link::relay::Circuit>,
    /// The relays our members' links go through.
    pub in_use: Vec<PeerId>,
    /// The relays we keep links with (behind a NAT) and name in our record.
    pub kept: Vec<PeerId>,
}

impl DataPlane {
    /// Every member, for `shadowmesh peers`.
    pub fn members(&self) -> Vec<MemberInfo> {
        let mesh = self.mesh_side();
        let relayed = mesh.as_ref().map(|m| m.node().demux().relayed());
        let relay_of = |a: SocketAddr| relayed.and_then(|r| r.get(a)).map(|e| e.relay);
        let core = self.core.borrow();
        let roster = core.roster();
        let now = crate::mono_now();
        core.members()
            .iter()
            .filter_map(|(p, m)| Some((p, m, roster.get(p)?)))
            .map(|(p, m, e)| {
                let live = m.link.as_ref().filter(|l| l.conn.close_reason().is_none());
                MemberInfo {
                    peer_id: *p,
                    ipv4: e.payload.ipv4,
                    ipv4_counter: e.payload.ipv4_counter,
                    ipv6: e.payload.ipv6,
                    routes_accepted: e.judged().accepted.clone(),
                    routes_refused: e.judged().refused.clone(),
                    record_seq: e.seq,
                    routes: e
                        .payload
                        .routes
                        .iter()
                        .filter_map(|r| Prefix::new(r.addr, r.prefix_len))
                        .collect(),
                    endpoint: live.map(|l| l.conn.remote_address()).or(e.endpoint),
                    connected: live.is_some(),
                    rtt: live.map(|l| l.conn.rtt()),
                    counters: m.counters,
                    last_handshake: m.last_handshake,
                    rekeys: live.map(|l| l.session.epoch()).unwrap_or(0),
                    role: match live.map(|l| l.role) {
                        Some(Role::Dialler) => "dialled",
                        Some(Role::Listener) => "accepted",
                        None => "",
                    },
                    connection_id: live.map(|l| l.conn.stable_id() as u64).unwrap_or(0),
                    lane: match live.map(|l| l.paths.fast_addr().is_some()) {
                        Some(true) => "udp",
                        Some(false) => "quic",
                        None => "",
                    },
                    paths: live
                        .map(|l| {
                            l.paths
                                .iter()
                                .map(|p| (*p, p.last_received.map(|t| now.saturating_sub(t))))
                                .collect()
                        })
                        .unwrap_or_default(),
                    relay: live.and_then(|l| relay_of(l.conn.remote_address())),
                    reach: m.reach,
                    nat: e.payload.nat,
                    exit: e.payload.exit,
                    lan: live.is_some_and(|l| l.lan),
                    name: e.payload.name.clone(),
                    lan_names: m.lan_names.clone(),
                }
            })
            .collect()
    }

    /// What we relay, and through which relays our links go.
    pub fn relay_info(&self) -> RelayInfo {
        let mut in_use: Vec<PeerId> = self.members().iter().filter_map(|m| m.relay).collect();
        in_use.sort_unstable();
        in_use.dedup();
        let core = self.core.borrow();
        let r = core.relay();
        RelayInfo {
            on: r.is_some(),
            counters: core.relay_counters(),
            circuits: r.map(|r| r.circuits().to_vec()).unwrap_or_default(),
            in_use,
            kept: core.kept_relays().to_vec(),
        }
    }

    /// Members with a live session.
    pub fn connected(&self) -> usize {
        self.core.borrow().members().connected()
    }

    /// Our overlay addresses, and the rehash counter of the IPv4 one.
    pub fn addresses(&self) -> (Ipv4Addr, u32, Option<Ipv6Addr>) {
        self.core.borrow().roster().addresses()
    }
}
