//! `cargo xtask nat-lab [--json]` (root, network namespaces only): gateways behind NAT routers
//! of different kinds, as home and office routers sit behind an ISP's modem.
//!
//! ```text
//!                      inet (the "internet": a router between public /24s)
//!        198.51.100.2 seed     203.0.113.2 p (a public member)
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
//!   endpoint-dependent).
//!
//! Checked (these fail the run): each gateway learns the address other nodes see it at and the
//! class of its NAT (`status`: `observed`, `nat`), the public member that it has none; a
//! member's record carries its observed address; every pair of members pings the other's
//! overlay address within 5 s, except a symmetric NAT's gateway and a port-restricted one's:
//! without relays nothing crosses those two. Last, a gateway behind a port-restricted NAT
//! restarts on another port and must reach another such gateway: only an introduction through
//! a member both hold links with (each dials the other at once) gets it through.
//!
//! Reported: the matrix of every pair: whether it worked, how long the first reply took, over
//! what path, and iperf3 TCP throughput over it (2 s).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::lab::{self, ip, sleep, Lab, Node};
use crate::mesh::Report;
use crate::{field, Result};

/// The NAT kinds of the lab's gateways, in order (`gw1`, `gw2`, ...).
const NATS: [&str; 4] = [
    "port-restricted",
    "port-restricted",
    "full-cone",
    "symmetric",
];

/// How long a pair may take for its first ping reply.
const FIRST_PACKET: Duration = Duration::from_secs(5);

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
    /// iperf3 TCP from a to b over the path, [`IPERF_SECONDS`] long.
    mbps: Option<f64>,
}

/// Seconds of iperf3 per pair that passes traffic.
const IPERF_SECONDS: u32 = 2;

/// Runs the lab with daemon binary `bin`; `json`: print the result as one JSON object.
pub fn run(bin: &Path, json: bool) -> Result<Report> {
    let mut names = vec!["seed".to_string(), "p".to_string()];
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
        "building the NAT lab: a seed, a public member, {} gateways behind NAT routers",
        NATS.len()
    ));
    let inet = lab.ns("inet")?;
    lab.sysctl(&inet, "net.ipv4.ip_forward=1")?;
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
    for (i, kind) in NATS.iter().enumerate() {
        let i = i + 1;
        let name = format!("gw{i}");
        let router = lab.ns(&format!("nat{i}"))?;
        let wan = format!("198.18.{i}");
        uplink(&inet, &router, "wan0", &wan)?;
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

    // A gateway's record carries the address it was seen at: the public member finds it there.
    let gw1 = &members[1];
    let seen = observed(&status[1]).first().cloned().unwrap_or_default();
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
            let path = match first {
                Some(_) => "direct",
                None => "none",
            };
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
                mbps,
            });
        }
    }
    // Without relays, a symmetric NAT facing a port-restricted one cannot be crossed; every
    // other pair reaches: one side public or forwarding, or both endpoint-independent, the two
    // dialling each other at once when peer exchange names one to the other.
    for p in &pairs {
        let (a, b) = (&members[p.a], &members[p.b]);
        let blocked = |x: &str, y: &str| x == "symmetric" && y == "port-restricted";
        if blocked(a.nat, b.nat) || blocked(b.nat, a.nat) {
            continue;
        }
        rep.check(
            &format!(
                "{} ({}) reaches {} ({})",
                a.node.name, a.nat, b.node.name, b.nat
            ),
            p.first_packet_ms.is_some(),
            p.first_packet_ms.map_or("no reply".into(), |ms| {
                format!("first reply after {ms:.0} ms")
            }),
        );
    }
    // gw1 restarts on another port (a reboot, a NAT that moved it): gw2 still holds its old
    // connection, and gw2's NAT lets nothing in from gw1's new port. gw1 learns of gw2 from the
    // public member, and its dial only completes because the public member introduces them.
    lab.kill9(&members[1].node.name)?;
    let conf = std::fs::read_to_string(&members[1].node.config).map_err(|e| e.to_string())?;
    std::fs::write(
        &members[1].node.config,
        conf.replace("listen_port '4433'", "listen_port '4434'"),
    )
    .map_err(|e| e.to_string())?;
    lab.start(&members[1].node)?;
    let t = Instant::now();
    let up = lab::until_reachable(&members[1].node.ns, &overlay[2], Duration::from_secs(20))?;
    rep.check(
        "gw1, restarted on a new port, reaches gw2 (both port-restricted) through an introduction",
        up.is_some(),
        match up {
            Some(_) => format!("first reply after {:.1} s", t.elapsed().as_secs_f64()),
            None => "no reply in 20 s".into(),
        },
    );

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
                    p.first_packet_ms.map_or("null".into(), |v| format!("{v:.0}")),
                    p.mbps.map_or("null".into(), |v| format!("{v:.0}")),
                )
            })
            .collect();
        let failures: Vec<String> = rep.failures.iter().map(|f| format!("{f:?}")).collect();
        println!(
            "{{\"pairs\":[{}],\"runs\":1,\"failures\":[{}]}}",
            list.join(","),
            failures.join(",")
        );
    } else {
        println!();
        println!("| a | b | a's NAT | b's NAT | path | first packet | iperf3 TCP |");
        println!("| --- | --- | --- | --- | --- | ---: | ---: |");
        for p in &pairs {
            let (a, b) = (&members[p.a], &members[p.b]);
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                a.node.name,
                b.node.name,
                a.nat,
                b.nat,
                p.path,
                p.first_packet_ms
                    .map_or("-".into(), |ms| format!("{ms:.0} ms")),
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
