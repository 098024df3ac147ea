//! `cargo xtask nat-lab [--json]` (root, network namespaces only): gateways behind NAT routers
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
//!   carrier-grade NAT router (`cgnN`, port-restricted too).
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

/// The NAT kinds of the lab's gateways, in order (`gw1`, `gw2`, ...).
const NATS: [&str; 5] = [
    "port-restricted",
    "port-restricted",
    "full-cone",
    "symmetric",
    "double",
];

/// How long a pair may take for its first ping reply.
const FIRST_PACKET: Duration = Duration::from_secs(2);
/// How long after the first ping a pair that can go direct may take to.
const DIRECT: Duration = Duration::from_secs(5);

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

/// Runs the lab with daemon binary `bin`; `json`: print the result as one JSON object.
pub fn run(bin: &Path, json: bool) -> Result<Report> {
    let mut names = vec!["seed".to_string(), "p".to_string(), "q".to_string()];
    names.extend((1..=NATS.len()).map(|i| format!("gw{i}")));
    let rep = lab::in_lab(bin, &names, |lab| scenario(lab, json))?;
    if !json {
        println!();
        println!("{}", rep.table());
    }
    Ok(rep)
}

/// Links namespace `ns` to the internet router `inet` on its own /24 `net` (`net.1` the
/// router, `net.2` the namespace, its default route).
fn uplink(inet: &str, ns: &str, dev: &str, net: &str) -> Result {
    let port = format!("to{}", net.replace('.', "x"));
    ip(&[
        "-n", inet, "link", "add", &port, "type", "veth", "peer", "name", dev, "netns", ns,
    ])?;
    ip(&[
        "-n",
        inet,
        "addr",
        "add",
        &format!("{net}.1/24"),
        "dev",
        &port,
    ])?;
    ip(&["-n", inet, "link", "set", &port, "up"])?;
    ip(&["-n", ns, "addr", "add", &format!("{net}.2/24"), "dev", dev])?;
    ip(&["-n", ns, "link", "set", dev, "up"])?;
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        &format!("{net}.1"),
    ])
}

/// The nftables rules of a NAT router of kind `kind` whose inside host is `inside`.
fn nat_rules(kind: &str, inside: &str) -> String {
    let post = match kind {
        "symmetric" => "oifname \"wan0\" masquerade random",
        _ => "oifname \"wan0\" masquerade",
    };
    let pre = match kind {
        "full-cone" => format!("iifname \"wan0\" udp dport 4433 dnat to {inside}:4433"),
        _ => String::new(),
    };
    // As a router's firewall does (OpenWrt's wan zone rejects input): nothing unsolicited
    // reaches the router itself. Without it, a packet from outside to the WAN port 4433 leaves
    // a conntrack entry that makes the NAT move our next mapping towards that sender to
    // another port.
    let input = "iifname \"wan0\" ct state new drop";
    format!(
        "table ip nat {{\n\tchain pre {{\n\t\ttype nat hook prerouting priority -100;\n\t\t{pre}\n\t}}\n\tchain post {{\n\t\ttype nat hook postrouting priority 100;\n\t\t{post}\n\t}}\n}}\ntable ip filter {{\n\tchain input {{\n\t\ttype filter hook input priority 0;\n\t\t{input}\n\t}}\n}}\n"
    )
}

fn nft(ns: &str, rules: &str) -> Result {
    use std::io::Write;
    let mut c = lab::netns_exec(ns, &["nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    c.stdin
        .take()
        .expect("piped")
        .write_all(rules.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = c.wait_with_output().map_err(|e| e.to_string())?;
    out.status.success().then_some(()).ok_or_else(|| {
        format!(
            "nft in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

fn scenario(lab: &mut Lab, json: bool) -> Result<Report> {
    let mut rep = Report::default();
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
    let p_ns = lab.ns("p")?;
    uplink(&inet, &p_ns, "eth0", "203.0.113")?;
    let (key, id) = lab.keygen("p")?;
    let node = Node {
        name: "p".into(),
        config: lab.write_config("p", &key, Some(&nk), Some(&boot), &[])?,
        ns: p_ns,
        underlay: "203.0.113.2".into(),
        peer_id: id,
        lan: None,
    };
    lab.start(&node)?;
    members.push(Member {
        node,
        nat: "none",
        public_ip: "203.0.113.2".into(),
    });
    // A second public member: a second relay, for when the first one dies.
    let q_ns = lab.ns("q")?;
    uplink(&inet, &q_ns, "eth0", "192.0.2")?;
    let (key, id) = lab.keygen("q")?;
    let node = Node {
        name: "q".into(),
        config: lab.write_config("q", &key, Some(&nk), Some(&boot), &[])?,
        ns: q_ns,
        underlay: "192.0.2.2".into(),
        peer_id: id,
        lan: None,
    };
    lab.start(&node)?;
    members.push(Member {
        node,
        nat: "none",
        public_ip: "192.0.2.2".into(),
    });
    for (i, kind) in NATS.iter().enumerate() {
        let i = i + 1;
        let name = format!("gw{i}");
        let router = lab.ns(&format!("nat{i}"))?;
        let wan = format!("198.18.{i}");
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
            while first.is_some() && t.elapsed() < DIRECT {
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
    // with an endpoint-independent side goes direct within DIRECT (one side public or
    // forwarding, or both dialling each other at once when introduced); a symmetric NAT facing
    // a port-restricted one (or another symmetric one) may stay relayed: nothing else crosses.
    for p in &pairs {
        let (a, b) = (&members[p.a], &members[p.b]);
        let stuck = |x: &str, y: &str| {
            x == "symmetric" && matches!(y, "port-restricted" | "symmetric" | "double")
        };
        let may_stay_relayed = stuck(a.nat, b.nat) || stuck(b.nat, a.nat);
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
        if !may_stay_relayed {
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
    for i in [0usize, 4, 5] {
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
    let mut seen = vec![];
    while t0.elapsed() < RENUMBERED {
        seen = observed(&lab.ctl(&members[3].node, "status"));
        if seen.iter().any(|a| a.starts_with("198.18.2.3:")) {
            break;
        }
        sleep(Duration::from_millis(500))?;
    }
    say(&format!(
        "gw2 observed at {seen:?} {:.1} s after the renumbering",
        t0.elapsed().as_secs_f64()
    ));
    rep.renumbered_observed_s = seen
        .iter()
        .any(|a| a.starts_with("198.18.2.3:"))
        .then(|| t0.elapsed().as_secs_f64());

    if json {
        let list: Vec<String> = pairs
            .iter()
            .map(|p| {
                let (a, b) = (&members[p.a], &members[p.b]);
                format!(
                    "{{\"a\":\"{}\",\"b\":\"{}\",\"a_nat\":\"{}\",\"b_nat\":\"{}\",\"path\":\"{}\",\"first_packet_ms\":{},\"direct_ms\":{},\"mbps\":{}}}",
                    a.node.name,
                    b.node.name,
                    a.nat,
                    b.nat,
                    p.path,
                    p.first_packet_ms.map_or("null".into(), |v| format!("{v:.0}")),
                    p.direct_ms.map_or("null".into(), |v| format!("{v:.0}")),
                    p.mbps.map_or("null".into(), |v| format!("{v:.0}")),
                )
            })
            .collect();
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
            "{{\"pairs\":[{}],\"runs\":1,\"relays\":[{}],\"cost\":{cost},\"rebinding_gap_s\":{rebind},\"relay_kill_gap_s\":{kill},\"failures\":[{}]}}",
            list.join(","),
            relays.join(","),
            failures.join(",")
        );
    } else {
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

/// `shadowmesh dht --lookup PEERID` at `node`: what the record it finds says.
fn lookup(lab: &Lab, node: &Node, peer_id: &str) -> String {
    std::process::Command::new(&lab.bin)
        .args(["dht", "--lookup", peer_id, "--json", "--config"])
        .arg(&node.config)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Delay and loss on everything the "internet" router forwards: the packets go through a delay
/// line (`cargo xtask delay-line`, a TUN in its namespace; policy routing sends every packet
/// not coming from it to it) and nftables drops `loss` in a hundred on their way in.
struct Impairment {
    inet: String,
    /// The delay line's PID (its `Child` is the lab's, which reaps it).
    line: u32,
}

impl Impairment {
    fn on(lab: &mut Lab, inet: &str, delay_ms: u32, loss: u32) -> Result<Impairment> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let exe = exe.to_string_lossy().to_string();
        let line = lab::netns_exec(inet, &[&exe, "delay-line", "dl0", &delay_ms.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("delay line: {e}"))?;
        let imp = Impairment {
            inet: inet.to_string(),
            line: line.id(),
        };
        // The lab ends it with the rest if anything below fails.
        lab.others.push(line);
        let t = Instant::now();
        while ip(&["-n", inet, "link", "show", "dl0"]).is_err() {
            if t.elapsed() > Duration::from_secs(5) {
                return Err("the delay line's device did not appear".into());
            }
            sleep(Duration::from_millis(50))?;
        }
        for k in ["all", "default", "dl0"] {
            lab.sysctl(inet, &format!("net.ipv4.conf.{k}.rp_filter=0"))?;
        }
        ip(&["-n", inet, "link", "set", "dl0", "up"])?;
        ip(&[
            "-n", inet, "route", "add", "default", "dev", "dl0", "table", "100",
        ])?;
        ip(&[
            "-n", inet, "rule", "add", "iif", "dl0", "lookup", "main", "pref", "100",
        ])?;
        ip(&["-n", inet, "rule", "add", "lookup", "100", "pref", "101"])?;
        nft(
            inet,
            &format!(
                "table inet impair {{\n chain loss {{\n  type filter hook forward priority 0; policy accept;\n  \
                 iifname != \"dl0\" numgen random mod 100 < {loss} drop\n }}\n}}\n"
            ),
        )?;
        Ok(imp)
    }

    /// Takes the delay and loss away (the delay line we started ends).
    fn off(self) -> Result {
        let inet = &self.inet;
        ip(&["-n", inet, "rule", "del", "pref", "101"])?;
        ip(&["-n", inet, "rule", "del", "pref", "100"])?;
        nft(inet, "delete table inet impair")?;
        // SAFETY: kill(2) on the delay line we started; the lab holds it unreaped.
        unsafe { libc::kill(self.line as libc::pid_t, libc::SIGKILL) };
        Ok(())
    }
}

/// What one iperf3 run across an event measured.
struct Transfer {
    /// iperf3 ended with its results.
    completed: bool,
    /// Its average, Mbit/s.
    mbps: f64,
    /// The longest run of half-second intervals that moved (almost) nothing, in seconds.
    gap_s: f64,
    /// What iperf3 said went wrong, if it did.
    error: Option<String>,
}

impl std::fmt::Display for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.completed {
            write!(
                f,
                "completed, {:.0} Mbit/s, longest gap {:.1} s",
                self.mbps, self.gap_s
            )
        } else {
            write!(
                f,
                "did not complete: {} (longest gap {:.1} s)",
                self.error.as_deref().unwrap_or("no result"),
                self.gap_s
            )
        }
    }
}

/// The namespace the lab made for `name`.
fn ns_of(lab: &Lab, name: &str) -> String {
    format!("{}{name}", lab.tag)
}

/// iperf3 TCP from `a` to `b` (at `dst`) for `secs`, with `event` done `at` into it; waits up
/// to two minutes past its end for it to finish.
fn transfer(
    lab: &mut Lab,
    a: &Node,
    b: &Node,
    dst: &str,
    secs: u32,
    at: Duration,
    event: impl FnOnce(&mut Lab) -> Result,
) -> Result<Transfer> {
    use std::process::Stdio;
    let server = lab::netns_exec(&b.ns, &["iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3: {e}"))?;
    lab.others.push(server);
    sleep(Duration::from_millis(500))?;
    let mut client = lab::netns_exec(
        &a.ns,
        &[
            "iperf3",
            "-c",
            dst,
            "-t",
            &secs.to_string(),
            "-i",
            "0.5",
            "-J",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .map_err(|e| format!("iperf3: {e}"))?;
    sleep(at)?;
    let done = event(lab);
    let limit = Instant::now() + Duration::from_secs(secs as u64 + 120);
    let completed = loop {
        match client.try_wait() {
            Ok(Some(s)) => break s.success(),
            Ok(None) if Instant::now() < limit => sleep(Duration::from_millis(200))?,
            _ => {
                let _ = client.kill();
                break false;
            }
        }
    };
    let mut text = String::new();
    if let Some(mut out) = client.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_string(&mut text);
    }
    let _ = client.wait();
    done?;
    let error = text.split("\"error\":").nth(1).map(|e| {
        e.trim()
            .trim_start_matches('"')
            .split('"')
            .next()
            .unwrap_or("")
            .to_string()
    });
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    // Each interval's "sum": {"start", "end", "seconds", "bytes", ...}.
    let intervals = text
        .split("\"intervals\":[")
        .nth(1)
        .and_then(|r| r.split("\"end\":{").next())
        .unwrap_or("");
    let mut gap = 0.0f64;
    let mut run = 0.0f64;
    for sum in intervals.split("\"sum\":{").skip(1) {
        let num = |k: &str| field(&format!("{{{sum}"), k).and_then(|v| v.parse::<f64>().ok());
        let (secs, bytes) = (num("seconds").unwrap_or(0.0), num("bytes").unwrap_or(0.0));
        // Under 1% of the interval at 10 Mbit/s: nothing got through.
        if bytes < secs * 10e6 / 8.0 / 100.0 {
            run += secs;
            gap = gap.max(run);
        } else {
            run = 0.0;
        }
    }
    let mbps = text
        .rfind("\"sum_received\"")
        .and_then(|i| field(&text[i..], "bits_per_second"))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |b| b / 1e6);
    Ok(Transfer {
        completed: completed && mbps > 0.0,
        mbps,
        gap_s: gap,
        error,
    })
}

/// User and system CPU time of daemon `name`, in clock ticks (0 if it is not running).
fn cpu_ticks(lab: &Lab, name: &str) -> u64 {
    let Some(pid) = lab.daemon_pid(name) else {
        return 0;
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: state is field 3; utime and stime are 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Bytes node `n` forwarded as a relay since it started (`status`'s `relay.bytes`).
fn relayed_bytes(lab: &Lab, n: &Node) -> u64 {
    let s = lab.ctl(n, "status");
    s.split("\"relay\":{")
        .nth(1)
        .and_then(|r| field(&format!("{{{r}"), "bytes"))
        .and_then(|b| b.parse().ok())
        .unwrap_or(0)
}

/// The `observed` list of a `status` line.
fn observed(status: &str) -> Vec<String> {
    let Some(rest) = status.split("\"observed\":[").nth(1) else {
        return vec![];
    };
    let list = rest.split(']').next().unwrap_or("");
    list.split(',')
        .map(|s| s.trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}
