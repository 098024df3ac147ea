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
//!   PCP, no UPnP IGD), which forwards the port the gateway asks for. Its WAN is in
//!   198.20.7.0/24: miniupnpd refuses to map on a reserved address such as 198.18.0.0/15.
//!
//! Checked (these fail the run): each gateway learns the address other nodes see it at and the
//! class of its NAT (`status`: `observed`, `nat`), the public member that it has none; a
//! member's record carries its observed address; every pair of members pings the other's
//! overlay address within 2 s, and goes direct within 5 s (`peers`: `path`) unless a symmetric
//! NAT faces a filtering one, where a public member relays; datagrams a stranger sends a relay
//! with made-up circuit ids go nowhere; iperf3 between two gateways completes while both their
//! routers lose every mapping (`conntrack -F`), and between a relayed pair while its relay is
//! killed (the other relay takes over). Last, a gateway behind a port-restricted NAT
//! restarts on another port and must reach another such gateway: only an introduction through
//! a member both hold links with (each dials the other at once) gets it through.
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

mod measure;
mod net;
use measure::{clock_ticks, cpu_ticks, lookup, observed, relayed_bytes, transfer};
use net::{nat_rules, nft, ns_of, uplink, Impairment};

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
    say(&format!(
        "building the NAT lab: a seed, two public members, {} gateways behind NAT routers",
        NATS.len()
    ));
    let inet = lab.ns("inet")?;
    lab.sysctl(&inet, "net.ipv4.ip_forward=1")?;
    let impairment = Impairment::on(lab, &inet, DELAY_MS, LOSS_PCT)?;
    say(&format!(
        "the public side: {DELAY_MS} ms of delay and {LOSS_PCT}% loss per crossing"
    ));
    let nk = crate::support::random_network_key()?;

    let seed_ns = lab.ns("seed")?;
    uplink(&inet, &seed_ns, "eth0", "198.51.100")?;
    let (seed_key, seed_id) = lab.keygen("seed")?;
    let seed = Node {
        name: "seed".into(),
        config: lab.write_config("seed", &seed_key, None, None, &[])?,
        ns: seed_ns,
        underlay: "198.51.100.2".into(),
        peer_id: seed_id.clone(),
        lan: None,
    };
    lab.start(&seed)?;
    let boot = format!("{seed_id}@198.51.100.2:4433");

    let mut members = vec![];
    // Two public members (the second a relay for when the first one dies).
    for (name, net) in [("p", "203.0.113"), ("q", "192.0.2")] {
        let ns = lab.ns(name)?;
        uplink(&inet, &ns, "eth0", net)?;
        let (key, id) = lab.keygen(name)?;
        let node = Node {
            name: name.into(),
            config: lab.write_config(name, &key, Some(&nk), Some(&boot), &[])?,
            ns,
            underlay: format!("{net}.2"),
            peer_id: id,
            lan: None,
        };
        lab.start(&node)?;
        members.push(Member {
            node,
            nat: "none",
            public_ip: format!("{net}.2"),
        });
    }
    for (i, kind) in NATS.iter().enumerate() {
        let i = i + 1;
        let name = format!("gw{i}");
        let router = lab.ns(&format!("nat{i}"))?;
        let wan = if *kind == "upnp" {
            format!("198.20.{i}")
        } else {
            format!("198.18.{i}")
        };
        if *kind == "double" {
            // A home router behind the ISP's carrier-grade NAT: the home router's WAN is in
            // 100.64.0.0/10, and the carrier's router masquerades that to the internet.
            let cgn = lab.ns(&format!("cgn{i}"))?;
            uplink(&inet, &cgn, "wan0", &wan)?;
            lab.sysctl(&cgn, "net.ipv4.ip_forward=1")?;
            ip(&[
                "-n", &cgn, "link", "add", "lan0", "type", "veth", "peer", "name", "wan0", "netns",
                &router,
            ])?;
            let home_wan = format!("100.64.{i}.2");
            ip(&[
                "-n",
                &cgn,
                "addr",
                "add",
                &format!("100.64.{i}.1/24"),
                "dev",
                "lan0",
            ])?;
            ip(&["-n", &cgn, "link", "set", "lan0", "up"])?;
            ip(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("{home_wan}/24"),
                "dev",
                "wan0",
            ])?;
            ip(&["-n", &router, "link", "set", "wan0", "up"])?;
            ip(&[
                "-n",
                &router,
                "route",
                "add",
                "default",
                "via",
                &format!("100.64.{i}.1"),
            ])?;
            nft(&cgn, &nat_rules("port-restricted", &home_wan))?;
        } else {
            uplink(&inet, &router, "wan0", &wan)?;
        }
        lab.sysctl(&router, "net.ipv4.ip_forward=1")?;
        let gw = lab.ns(&name)?;
        ip(&[
            "-n", &router, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns",
            &gw,
        ])?;
        let inside = format!("10.{i}.0.2");
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("10.{i}.0.1/24"),
            "dev",
            "lan0",
        ])?;
        ip(&["-n", &router, "link", "set", "lan0", "up"])?;
        ip(&[
            "-n",
            &gw,
            "addr",
            "add",
            &format!("{inside}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &gw, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &gw,
            "route",
            "add",
            "default",
            "via",
            &format!("10.{i}.0.1"),
        ])?;
        nft(&router, &nat_rules(kind, &inside))?;
        if *kind == "upnp" {
            nft(&router, net::MINIUPNPD_TABLE)?;
            let dir = lab.dir.join(format!("nat{i}"));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let conf = dir.join("miniupnpd.conf");
            std::fs::write(&conf, net::miniupnpd_conf(&format!("10.{i}.0")))
                .map_err(|e| e.to_string())?;
            let log = std::fs::File::create(dir.join("log")).map_err(|e| e.to_string())?;
            let (conf, pid) = (conf.to_string_lossy(), dir.join("pid"));
            let child = lab::netns_exec(
                &router,
                &["miniupnpd", "-d", "-f", &conf, "-P", &pid.to_string_lossy()],
            )
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("miniupnpd: {e}"))?;
            lab.others.push(child);
        }
        let (key, id) = lab.keygen(&name)?;
        // gw3 knows the seed by name only, as a home router knows another by its dynamic-DNS
        // name: its namespace's /etc/hosts has it.
        let boot = if *kind == "full-cone" {
            lab.etc_file(&gw, "hosts", "198.51.100.2 seed.mesh.example\n")?;
            format!("{seed_id}@seed.mesh.example:4433")
        } else {
            boot.clone()
        };
        let node = Node {
            config: lab.write_config(&name, &key, Some(&nk), Some(&boot), &[])?,
            name,
            ns: gw,
            underlay: inside,
            peer_id: id,
            lan: None,
        };
        lab.start(&node)?;
        members.push(Member {
            node,
            nat: kind,
            public_ip: format!("{wan}.2"),
        });
    }

    // Every member learns where others see it, and what NAT it is behind.
    let t = Instant::now();
    let want = |m: &Member| match m.nat {
        "none" => "none",
        "symmetric" => "endpoint-dependent",
        _ => "endpoint-independent",
    };
    let mut status: Vec<String> = vec![String::new(); members.len()];
    while t.elapsed() < Duration::from_secs(60) {
        sleep(Duration::from_millis(500))?;
        for (m, s) in members.iter().zip(status.iter_mut()) {
            *s = lab.ctl(&m.node, "status");
        }
        let settled = members.iter().zip(&status).all(|(m, s)| {
            field(s, "nat").as_deref() == Some(want(m))
                && (m.nat == "symmetric" || observed(s).len() == 1)
        });
        if settled {
            break;
        }
    }
    let learnt = t.elapsed();
    for (m, s) in members.iter().zip(&status) {
        let nat = field(s, "nat").unwrap_or_default();
        let observed = observed(s);
        // Behind an endpoint-independent NAT, one address: the WAN's, with whatever port the
        // NAT mapped 4433 to (Linux keeps the port where it can, not always); behind a
        // symmetric one, none (no port is seen twice); a public member, its own.
        let right = match m.nat {
            "symmetric" => observed.is_empty(),
            "none" => observed == [format!("{}:4433", m.public_ip)],
            _ => observed.len() == 1 && observed[0].starts_with(&format!("{}:", m.public_ip)),
        };
        rep.check(
            &format!(
                "{} ({}) learns its NAT and public address",
                m.node.name, m.nat
            ),
            nat == want(m) && right,
            format!(
                "nat {nat}, observed {observed:?}, within {:.1} s",
                learnt.as_secs_f64()
            ),
        );
    }

    // The gateway behind the router that maps ports asked it to, and got its port forwarded.
    for (m, st) in members.iter().zip(&status).filter(|(m, _)| m.nat == "upnp") {
        let pm = st
            .split("\"port_mapping\":")
            .nth(1)
            .and_then(|r| r.split('}').next())
            .unwrap_or_default()
            .to_string();
        rep.check(
            &format!("{} ({}) maps its port on its router", m.node.name, m.nat),
            pm.contains("\"state\":\"mapped\"")
                && pm.contains(&format!("\"external\":\"{}:", m.public_ip)),
            format!("port_mapping {pm}}}"),
        );
    }

    // gw3 was given its seed by name: it joined through it.
    let gw3 = &members[4];
    let contacts = field(&status[4], "dht_contacts")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    rep.check(
        "gw3 joins through a bootstrap given by name (its /etc/hosts)",
        status[4].contains("seed.mesh.example:4433") && contacts > 0,
        format!(
            "{contacts} DHT contacts; {}",
            lab.log(&gw3.node.name)
                .lines()
                .find(|l| l.contains("resolving"))
                .unwrap_or("resolved")
        ),
    );

    // A gateway's record carries the address it was seen at: the public member finds it there.
    let gw1 = &members[2];
    let seen = observed(&status[2]).first().cloned().unwrap_or_default();
    let t = Instant::now();
    let mut found = String::new();
    while t.elapsed() < Duration::from_secs(20) {
        found = lookup(lab, &members[0].node, &gw1.node.peer_id);
        if found.contains(&format!("\"{seen}\"")) {
            break;
        }
        sleep(Duration::from_millis(500))?;
    }
    rep.check(
        "gw1's record carries its observed address",
        !seen.is_empty() && found.contains(&format!("\"{seen}\"")),
        match found.split("\"addrs\":").nth(1) {
            Some(a) => format!("addrs {}", a.trim_end_matches('}')),
            None => found.clone(),
        },
    );

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
                    let peers = lab::members(&lab.ctl(&from.node, "peers"));
                    let m = lab::member_of(&peers, &members[b].node.peer_id);
                    let f = |k: &str| m.and_then(|m| field(m, k)).unwrap_or_default();
                    format!(
                        "{}'s view: connected {}, path {}, endpoint {}, lane {}, tx {} rx {} dropped {}",
                        from.node.name,
                        f("connected"),
                        f("path"),
                        f("endpoint"),
                        f("lane"),
                        f("tx_packets"),
                        f("rx_packets"),
                        f("tx_dropped")
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

    // What a relayed GB costs its relay, against what a direct GB costs its sender: gw1 to gw4
    // (relayed) and gw1 to gw3 (direct), each run's CPU time over the bytes it moved.
    let mut cost = [0.0f64; 2];
    for (i, b) in [5usize, 4].into_iter().enumerate() {
        let (from, to) = (members[2].node.clone(), members[b].node.clone());
        let peers = lab::members(&lab.ctl(&from, "peers"));
        let via = lab::member_of(&peers, &to.peer_id)
            .and_then(|m| field(m, "relay"))
            .and_then(|r| relays.iter().find(|n| n.peer_id == r))
            .map(|n| n.name.clone());
        let who = if i == 0 {
            via.clone()
        } else {
            Some(from.name.clone())
        };
        let Some(who) = who else {
            break;
        };
        let before = cpu_ticks(lab, &who);
        let mbps = lab::iperf3(lab, &to.ns, &from.ns, &overlay[b], COST_SECONDS)?;
        let ms = cpu_ticks(lab, &who).saturating_sub(before) as f64 * 1e3 / clock_ticks() as f64;
        let gb = mbps * COST_SECONDS as f64 / 8e3;
        cost[i] = if gb > 0.0 { ms / gb } else { 0.0 };
        say(&format!(
            "{} to {} ({}): {mbps:.0} Mbit/s, {ms:.0} ms of CPU at {who}",
            from.name,
            to.name,
            if i == 0 { "relayed" } else { "direct" }
        ));
    }
    if cost.iter().all(|c| *c > 0.0) {
        let (r, d) = (cost[0], cost[1]);
        say(&format!(
            "CPU per GB: {r:.0} ms at the relay for a relayed pair, {d:.0} ms at the sender of a direct one ({:.2}x)",
            r / d
        ));
        rep.cost = Some((r, d));
    }
    // A stranger (the seed holds no network key) sends the relay envelopes with made-up
    // circuit ids: none is forwarded, each is counted as dropped.
    let relay = &members[0];
    let dropped = |s: &str| {
        s.split("\"relay\":{")
            .nth(1)
            .and_then(|r| field(&format!("{{{r}"), "dropped"))
            .and_then(|b| b.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = dropped(&lab.ctl(&relay.node, "status"));
    let forged = (1..=20u32)
        .map(|i| {
            format!(
                "printf 'SMSH\\xff\\x01\\x00\\x00\\x00\\x{i:02x}forged' > /dev/udp/{}/4433",
                relay.public_ip
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let _ = lab::netns_exec(&seed.ns, &["bash", "-c", &forged]).status();
    sleep(Duration::from_millis(500))?;
    let after = dropped(&lab.ctl(&relay.node, "status"));
    rep.check(
        "a stranger's relayed datagrams go nowhere",
        after >= before + 20,
        format!(
            "20 sent, {} dropped by the relay",
            after.saturating_sub(before)
        ),
    );

    // NAT rebinding mid-transfer: both routers of a direct pair lose every mapping at once
    // (conntrack flushed); the next packets each side sends map afresh and meet, as a hole
    // punch does.
    let (a, b) = (members[2].node.clone(), members[3].node.clone());
    let nats = [ns_of(lab, "nat1"), ns_of(lab, "nat2")];
    let t = transfer(lab, &a, &b, &overlay[3], 10, Duration::from_secs(3), |_| {
        for n in &nats {
            let ok = lab::netns_exec(n, &["conntrack", "-F"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!(
                    "conntrack -F in {n} failed (apt-get install conntrack)"
                ));
            }
        }
        Ok(())
    })?;
    say(&format!("NAT rebinding mid-transfer: {t}"));
    rep.check(
        "gw1 to gw2: iperf3 completes across both NATs losing their mappings",
        t.completed,
        t.to_string(),
    );
    rep.rebinding_gap_s = Some(t.gap_s);

    // The relay of a relayed pair dies mid-transfer: the pair's data goes unanswered, its link
    // is given up after UNANSWERED_AFTER, and the next packets are introduced again through the
    // other relay.
    let (a, b) = (members[3].node.clone(), members[5].node.clone());
    let peers = lab::members(&lab.ctl(&a, "peers"));
    let via = lab::member_of(&peers, &b.peer_id)
        .and_then(|m| field(m, "relay"))
        .and_then(|r| relays.iter().find(|n| n.peer_id == r).cloned());
    match via {
        Some(r) => {
            let other = relays.iter().find(|n| n.name != r.name).cloned();
            let t = transfer(
                lab,
                &a,
                &b,
                &overlay[5],
                20,
                Duration::from_secs(4),
                |lab| lab.kill9(&r.name),
            )?;
            let peers = lab::members(&lab.ctl(&a, "peers"));
            let now_via = lab::member_of(&peers, &b.peer_id).and_then(|m| field(m, "relay"));
            say(&format!(
                "relay {} killed mid-transfer (gw2 to gw4): {t}; now through {}",
                r.name,
                now_via.as_deref().map_or("nothing".into(), |v| relays
                    .iter()
                    .find(|n| n.peer_id == v)
                    .map_or(v.to_string(), |n| n.name.clone()))
            ));
            rep.check(
                &format!("gw2 to gw4: iperf3 completes when relay {} dies", r.name),
                t.completed && now_via.is_some() && now_via == other.map(|o| o.peer_id),
                t.to_string(),
            );
            rep.relay_kill_gap_s = Some(t.gap_s);
        }
        None => rep.check(
            "gw2 to gw4 goes through a relay before one is killed",
            false,
            "not relayed".into(),
        ),
    }

    // gw1 restarts on another port (a reboot, a NAT that moved it): gw2 still holds its old
    // connection, and gw2's NAT lets nothing in from gw1's new port. gw1 learns of gw2 from the
    // public member, and its dial only completes because the public member introduces them.
    let gw1 = members[2].node.clone();
    lab.kill9(&gw1.name)?;
    let conf = std::fs::read_to_string(&gw1.config).map_err(|e| e.to_string())?;
    std::fs::write(
        &gw1.config,
        conf.replace("listen_port '4433'", "listen_port '4434'"),
    )
    .map_err(|e| e.to_string())?;
    lab.start(&gw1)?;
    let t = Instant::now();
    let up = lab::until_reachable(&gw1.ns, &overlay[3], Duration::from_secs(20))?;
    rep.check(
        "gw1, restarted on a new port, reaches gw2 (both port-restricted) through an introduction",
        up.is_some(),
        match up {
            Some(_) => format!("first reply after {:.1} s", t.elapsed().as_secs_f64()),
            None => "no reply in 20 s".into(),
        },
    );

    // gw2's home router gets a new public address from its ISP (the lab renumbers its WAN
    // side, and its mappings go with the old one). Nothing changes on gw2 itself: its members
    // find the links to the old address dead (their data unanswered, or silence) and meet it
    // again by dialling and introductions, and gw2 learns its new address from other nodes.
    let nat2 = ns_of(lab, "nat2");
    ip(&["-n", &nat2, "addr", "del", "198.18.2.2/24", "dev", "wan0"])?;
    ip(&["-n", &nat2, "addr", "add", "198.18.2.3/24", "dev", "wan0"])?;
    ip(&[
        "-n",
        &nat2,
        "route",
        "replace",
        "default",
        "via",
        "198.18.2.1",
    ])?;
    let _ = lab::netns_exec(&nat2, &["conntrack", "-F"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let t0 = Instant::now();
    // From members the events above left alone (a relay was killed, gw1 restarted).
    for i in [4usize, 5, 6] {
        let from = &members[i];
        let left = RENUMBERED.saturating_sub(t0.elapsed());
        let up = lab::until_reachable(&from.node.ns, &overlay[3], left)?;
        rep.check(
            &format!(
                "{} reaches gw2 again after gw2's router was renumbered",
                from.node.name
            ),
            up.is_some(),
            match up {
                Some(_) => format!("{:.1} s after the renumbering", t0.elapsed().as_secs_f64()),
                None => format!("no reply in {} s", RENUMBERED.as_secs()),
            },
        );
    }
    // gw2 learns its new address from the nodes that see it, and republishes its record.
    let (mut seen, mut found) = (vec![], String::new());
    let moved =
        |seen: &[String]| !seen.is_empty() && seen.iter().all(|a| a.starts_with("198.18.2.3:"));
    while t0.elapsed() < RENUMBERED {
        seen = observed(&lab.ctl(&members[3].node, "status"));
        if moved(&seen) {
            // Through a public member still running (one of the two relays was killed).
            found = lookup(lab, &members[0].node, &members[3].node.peer_id);
            if !found.contains("\"addrs\"") {
                found = lookup(lab, &members[1].node, &members[3].node.peer_id);
            }
            if found.contains("\"198.18.2.3:") && !found.contains("\"198.18.2.2:") {
                break;
            }
        }
        sleep(Duration::from_millis(500))?;
    }
    let took = t0.elapsed().as_secs_f64();
    rep.check(
        "gw2 learns its new address and republishes its record",
        moved(&seen) && found.contains("\"198.18.2.3:"),
        format!(
            "observed {seen:?} {took:.1} s after the renumbering; a public member finds addrs {}",
            found
                .split("\"addrs\":")
                .nth(1)
                .map_or("-", |a| a.trim_end_matches('}'))
        ),
    );
    rep.renumbered_observed_s = moved(&seen).then_some(took);

    // A gateway that stops deletes the mapping it holds on its router.
    if let Some(i) = NATS.iter().position(|k| *k == "upnp") {
        let (name, router) = (format!("gw{}", i + 1), ns_of(lab, &format!("nat{}", i + 1)));
        let forwards = || {
            lab::netns_exec(
                &router,
                &[
                    "nft",
                    "list",
                    "chain",
                    "inet",
                    "miniupnpd",
                    "prerouting_miniupnpd",
                ],
            )
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).matches("dnat").count())
            .unwrap_or(0)
        };
        let before = forwards();
        lab.signal(&name, libc::SIGTERM)?;
        let t = Instant::now();
        while forwards() > 0 && t.elapsed() < Duration::from_secs(10) {
            sleep(Duration::from_millis(100))?;
        }
        let after = forwards();
        rep.check(
            &format!("{name} deletes its port mapping when it stops"),
            before > 0 && after == 0,
            format!(
                "{before} forward(s) on the router before SIGTERM, {after} {:.1} s after",
                t.elapsed().as_secs_f64()
            ),
        );
    }

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
