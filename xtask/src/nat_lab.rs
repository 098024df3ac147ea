//! `cargo xtask nat-lab [--json] [--runs N]` (root, network namespaces only): gateways behind NAT routers
//! of different kinds, as home and office routers sit behind an ISP's modem.
//!
//! ```text
//!                      inet (the "internet": a router between public /24s)
//!        198.51.100.2 seed     203.0.113.2 p, 192.0.2.2 q (public members, relays)
//!        198.18.N.2 natN (WAN) --nftables NAT-- 10.N.0.1 | 10.N.0.2 gwN (a member)
//! ```
//!
//! The NAT kinds are built with nftables in each router namespace, each with a router's firewall
//! (nothing unsolicited reaches the router itself):
//! - `port-restricted`: `masquerade` (Linux keeps the source port where it can and maps one
//!   inside socket to one outside port for every destination, endpoint-independent; only
//!   answers from where the inside sent to get in);
//! - `full-cone`: the same, and every packet to the WAN's port 4433 forwarded inside;
//! - `symmetric`: `masquerade random` (another outside port per destination,
//!   endpoint-dependent);
//! - `double`: a port-restricted home router whose WAN is in 100.64.0.0/10, behind a
//!   carrier-grade NAT router (`cgnN`, port-restricted too);
//! - `address-restricted`: `masquerade`, and packets to the WAN's port 4433 forwarded inside
//!   from any port of an address the inside sent to (an nftables set it fills);
//! - `upnp`: port-restricted, and the router runs miniupnpd (Debian's `miniupnpd-nftables`,
//!   started by the lab in the router's namespace with a configuration of its own: NAT-PMP and
//!   PCP, no UPnP IGD; after the matrix, UPnP IGD alone), which forwards the port the gateway
//!   asks for. Its WAN is in
//!   198.20.7.0/24: miniupnpd refuses to map on a reserved address such as 198.18.0.0/15.
//!
//! Checked (these fail the run): each gateway learns the address other nodes see it at and the
//! class of its NAT (`status`: `observed`, `nat`), the public member that it has none; a
//! member's record carries its observed address; each gateway keeps two relays and its record
//! names them with its NAT class; every pair of members pings the other's
//! overlay address within 2 s, and goes direct within 5 s (`peers`: `path`) unless a symmetric
//! NAT faces a filtering one, where a public member relays; datagrams a stranger sends a relay
//! with made-up circuit ids go nowhere; iperf3 between two gateways completes while both their
//! routers lose every mapping (`conntrack -F`), and between a relayed pair while its relay is
//! killed (the other relay takes over). Last, a gateway behind a port-restricted NAT
//! restarts on another port and must reach another such gateway: only an introduction through
//! a member both hold links with (each dials the other at once) gets it through. The `upnp`
//! gateway maps its port (PCP), deletes the mapping when it stops, and, its router speaking
//! UPnP IGD alone, maps it over UPnP and deletes that too.
//!
//! Reported: the matrix of every pair: whether it worked, how long the first reply took, over
//! what path, when it went direct, and iperf3 TCP throughput over it (2 s); the bytes and CPU
//! time the relays spent, their CPU per relayed GB against a direct sender's per GB, and the
//! longest stall of each of the two transfers above.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::lab::{self, ip, sleep, Lab, Node};
use crate::mesh::Report;
use crate::{field, Result};

mod build;
mod events;
mod learn;
mod measure;
mod net;
use measure::transfer;
use measure::{clock_ticks, cpu_ticks, list_of, lookup, lookup_any, observed, relayed_bytes};
use net::{nat_rules, ns_of, Impairment};
pub(crate) use net::{nft, start_seed, uplink};

/// The NAT kinds of the lab's gateways, in order (`gw1`, `gw2`, ...).
const NATS: [&str; 7] = [
    "port-restricted",
    "port-restricted",
    "full-cone",
    "symmetric",
    "double",
    "address-restricted",
    "upnp",
];

/// How long a pair may take for its first ping reply.
const FIRST_PACKET: Duration = Duration::from_secs(2);
/// How long after the first ping a pair that can go direct may take to, at the 95th
/// percentile of the pairs (over every run).
const DIRECT: Duration = Duration::from_secs(5);
/// ... and at most, for each.
const DIRECT_WAIT: Duration = Duration::from_secs(10);

/// Whether a pair behind NATs of kinds `a` and `b` may stay relayed: a symmetric NAT facing a
/// filtering one (or another symmetric one), where nothing else crosses.
fn may_stay_relayed(a: &str, b: &str) -> bool {
    let stuck = |x: &str, y: &str| {
        x == "symmetric" && matches!(y, "port-restricted" | "symmetric" | "double")
    };
    stuck(a, b) || stuck(b, a)
}

/// One member of the lab: the public one or a gateway behind a NAT.
struct Member {
    node: Node,
    /// The NAT kind it sits behind (`none`: public).
    nat: &'static str,
    /// Its WAN address as the internet sees it.
    public_ip: String,
}

/// One pair's result.
struct Pair {
    a: usize,
    b: usize,
    path: &'static str,
    first_packet_ms: Option<f64>,
    /// From the first ping until a's link with b went direct; `None`: it did not (in
    /// [`DIRECT`]).
    direct_ms: Option<f64>,
    /// iperf3 TCP from a to b over the path, [`IPERF_SECONDS`] long.
    mbps: Option<f64>,
    /// When there was no reply: what a's `peers` said of b then.
    seen: String,
}

/// Seconds of iperf3 per pair that passes traffic.
const IPERF_SECONDS: u32 = 2;
/// How long after its router is renumbered a gateway must be reachable again.
const RENUMBERED: Duration = Duration::from_secs(60);
/// Seconds of iperf3 for the relay's cost per GB.
const COST_SECONDS: u32 = 5;
/// The public side's one-way delay (the delay line), and its loss in percent (nftables).
const DELAY_MS: u32 = 20;
const LOSS_PCT: u32 = 1;

/// Runs the lab `runs` times with daemon binary `bin`, each in a new lab; `json`: print the
/// result as one JSON object.
pub fn run(bin: &Path, json: bool, runs: u32) -> Result<Report> {
    let mut names = vec!["seed".to_string(), "p".to_string(), "q".to_string()];
    names.extend((1..=NATS.len()).map(|i| format!("gw{i}")));
    lab::require_tools(
        &["iperf3", "conntrack", "miniupnpd"],
        "run .ci/setup-tests (apt-get install iperf3 conntrack miniupnpd-nftables)",
    )?;
    let mut rep = Report::default();
    rep.quiet = json;
    for _ in 0..runs.max(1) {
        rep.absorb(lab::in_lab(bin, &names, |lab| scenario(lab, json))?);
    }
    // The pairs that can go direct do so within DIRECT at the 95th percentile (nearest rank;
    // one that never did counts as the slowest).
    let mut t: Vec<f64> = rep
        .direct_ms
        .iter()
        .map(|d| d.unwrap_or(f64::INFINITY))
        .collect();
    t.sort_by(f64::total_cmp);
    let p95 = t
        .get(((t.len() * 95).div_ceil(100)).saturating_sub(1))
        .copied();
    rep.check(
        &format!(
            "direct within {} s at the 95th percentile",
            DIRECT.as_secs()
        ),
        p95.is_some_and(|ms| ms <= DIRECT.as_secs_f64() * 1e3),
        format!(
            "{} ms over {} pairs in {} run(s)",
            p95.map_or("-".into(), |ms| format!("{ms:.0}")),
            t.len(),
            runs.max(1)
        ),
    );
    if json {
        let failures: Vec<String> = rep.failures.iter().map(|f| format!("{f:?}")).collect();
        let relays: Vec<String> = rep
            .relays
            .iter()
            .map(|(n, b, cpu)| format!("{{\"name\":\"{n}\",\"bytes\":{b},\"cpu_ms\":{cpu:.0}}}"))
            .collect();
        let gap = |g: Option<f64>| g.map_or("null".into(), |g| format!("{g:.1}"));
        let (rebind, kill) = (gap(rep.rebinding_gap_s), gap(rep.relay_kill_gap_s));
        let cost = rep.cost.map_or("null".into(), |(r, d)| {
            format!("{{\"relay_cpu_ms_per_gb\":{r:.0},\"direct_sender_cpu_ms_per_gb\":{d:.0}}}")
        });
        println!(
            "{{\"pairs\":[{}],\"runs\":{},\"direct_p95_ms\":{},\"relays\":[{}],\"cost\":{cost},\"rebinding_gap_s\":{rebind},\"relay_kill_gap_s\":{kill},\"failures\":[{}]}}",
            rep.pairs_json.join(","),
            runs.max(1),
            p95.filter(|v| v.is_finite()).map_or("null".into(), |v| format!("{v:.0}")),
            relays.join(","),
            failures.join(",")
        );
    } else {
        println!();
        println!("{}", rep.table());
    }
    Ok(rep)
}

fn scenario(lab: &mut Lab, json: bool) -> Result<Report> {
    let mut rep = Report::default();
    rep.quiet = json;
    let say = |s: &str| {
        if !json {
            println!("{s}");
        }
    };
    let (seed, members, impairment) = build::build(lab, &say)?;
    let status = learn::learn(lab, &members, &mut rep)?;

    // The relays' CPU time and bytes before the matrix (the public members relay; the seed
    // holds no network key, so it is no member and carries no circuits).
    let relays: Vec<Node> = vec![members[0].node.clone(), members[1].node.clone()];
    let cpu_before: Vec<u64> = relays.iter().map(|n| cpu_ticks(lab, &n.name)).collect();
    let bytes_before: Vec<u64> = relays.iter().map(|n| relayed_bytes(lab, n)).collect();

    // Every pair, each pinging the other's overlay address from its own namespace.
    let overlay: Vec<String> = status
        .iter()
        .map(|s| field(s, "overlay_ipv4").unwrap_or_default())
        .collect();
    let mut pairs = vec![];
    for (a, from) in members.iter().enumerate() {
        for (b, dst) in overlay.iter().enumerate().skip(a + 1) {
            let t = Instant::now();
            let up = lab::until_reachable(&from.node.ns, dst, FIRST_PACKET)?;
            let first = up.map(|_| t.elapsed().as_secs_f64() * 1e3);
            // The path a's link with b takes, until it goes direct.
            let mut path = if first.is_some() { "relayed" } else { "none" };
            let mut direct_ms = None;
            let wait = if may_stay_relayed(from.nat, members[b].nat) {
                DIRECT
            } else {
                DIRECT_WAIT
            };
            while first.is_some() && t.elapsed() < wait {
                let peers = lab::members(&lab.ctl(&from.node, "peers"));
                let m = lab::member_of(&peers, &members[b].node.peer_id);
                if m.and_then(|m| field(m, "path")).as_deref() == Some("direct")
                    && m.and_then(|m| field(m, "connected")).as_deref() == Some("true")
                {
                    path = "direct";
                    direct_ms = Some(t.elapsed().as_secs_f64() * 1e3);
                    break;
                }
                sleep(Duration::from_millis(100))?;
            }
            let mbps = match first {
                Some(_) => {
                    let to = members[b].node.ns.clone();
                    Some(lab::iperf3(lab, &to, &from.node.ns, dst, IPERF_SECONDS)?)
                }
                None => None,
            };
            pairs.push(Pair {
                a,
                b,
                path,
                first_packet_ms: first,
                direct_ms,
                mbps,
                seen: if first.is_none() {
                    // Both ends' view of the link, for the failure's line.
                    let view = |of: &Node, other: &Node| {
                        let peers = lab::members(&lab.ctl(of, "peers"));
                        let m = lab::member_of(&peers, &other.peer_id);
                        let f = |k: &str| m.and_then(|m| field(m, k)).unwrap_or_default();
                        format!(
                            "{}'s view: connected {}, path {}, endpoint {}, lane {}, tx {} rx {} dropped {}, rekeys {}, connection {}",
                            of.name,
                            f("connected"),
                            f("path"),
                            f("endpoint"),
                            f("lane"),
                            f("tx_packets"),
                            f("rx_packets"),
                            f("tx_dropped"),
                            f("rekeys"),
                            f("connection_id")
                        )
                    };
                    format!(
                        "{}; {}",
                        view(&from.node, &members[b].node),
                        view(&members[b].node, &from.node)
                    )
                } else {
                    String::new()
                },
            });
        }
    }
    // Every pair reaches the other within FIRST_PACKET, through a relay if need be. A pair
    // with an endpoint-independent side goes direct within DIRECT_WAIT (one side public or
    // forwarding, or both dialling each other at once when introduced), and the pairs within
    // DIRECT at the 95th percentile (checked over the runs, in `run`).
    for p in &pairs {
        let (a, b) = (&members[p.a], &members[p.b]);
        rep.check(
            &format!(
                "{} ({}) reaches {} ({})",
                a.node.name, a.nat, b.node.name, b.nat
            ),
            p.first_packet_ms
                .is_some_and(|ms| ms <= FIRST_PACKET.as_secs_f64() * 1e3),
            p.first_packet_ms
                .map_or(format!("no reply; {}", p.seen), |ms| {
                    format!("first reply after {ms:.0} ms, {}", p.path)
                }),
        );
        if !may_stay_relayed(a.nat, b.nat) {
            rep.direct_ms.push(p.direct_ms);
            rep.check(
                &format!("{} and {} go direct", a.node.name, b.node.name),
                p.direct_ms.is_some(),
                p.direct_ms.map_or(format!("still {}", p.path), |ms| {
                    format!("direct after {ms:.0} ms")
                }),
            );
        }
    }
    // What the relays carried for the matrix, and the CPU time they took doing it.
    let tick = 1e3 / clock_ticks() as f64;
    for (i, n) in relays.iter().enumerate() {
        let bytes = relayed_bytes(lab, n).saturating_sub(bytes_before[i]);
        let cpu_ms = cpu_ticks(lab, &n.name).saturating_sub(cpu_before[i]) as f64 * tick;
        say(&format!(
            "relay {}: {:.1} MB forwarded, {cpu_ms:.0} ms of CPU over the matrix",
            n.name,
            bytes as f64 / 1e6
        ));
        rep.relays.push((n.name.clone(), bytes, cpu_ms));
    }
    // The public side clean again for what follows: costs and stalls measured without the
    // loss's noise.
    impairment.off()?;

    events::events(lab, &seed, &members, &overlay, &relays, &mut rep, &say)?;

    for p in &pairs {
        let (a, b) = (&members[p.a], &members[p.b]);
        rep.pairs_json.push(format!(
            "{{\"a\":\"{}\",\"b\":\"{}\",\"a_nat\":\"{}\",\"b_nat\":\"{}\",\"path\":\"{}\",\"first_packet_ms\":{},\"direct_ms\":{},\"mbps\":{}}}",
            a.node.name,
            b.node.name,
            a.nat,
            b.nat,
            p.path,
            p.first_packet_ms.map_or("null".into(), |v| format!("{v:.0}")),
            p.direct_ms.map_or("null".into(), |v| format!("{v:.0}")),
            p.mbps.map_or("null".into(), |v| format!("{v:.0}")),
        ));
    }
    if !json {
        println!();
        println!("| a | b | a's NAT | b's NAT | path | first packet | direct | iperf3 TCP |");
        println!("| --- | --- | --- | --- | --- | ---: | ---: | ---: |");
        for p in &pairs {
            let (a, b) = (&members[p.a], &members[p.b]);
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                a.node.name,
                b.node.name,
                a.nat,
                b.nat,
                p.path,
                p.first_packet_ms
                    .map_or("-".into(), |ms| format!("{ms:.0} ms")),
                p.direct_ms.map_or("-".into(), |ms| format!("{ms:.0} ms")),
                p.mbps.map_or("-".into(), |m| format!("{m:.0} Mbit/s"))
            );
        }
    }
    Ok(rep)
}
