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
//! overlay address within 2 s, and goes direct within 5 s (`peers`: `path`) unless a symmetric
//! NAT faces a filtering one, where the public member relays; datagrams a stranger sends the
//! relay with made-up circuit ids go nowhere. Last, a gateway behind a port-restricted NAT
//! restarts on another port and must reach another such gateway: only an introduction through
//! a member both hold links with (each dials the other at once) gets it through.
//!
//! Reported: the matrix of every pair: whether it worked, how long the first reply took, over
//! what path, when it went direct, and iperf3 TCP throughput over it (2 s); the bytes and CPU
//! time the relay spent, and its CPU per relayed GB against a direct sender's per GB.

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

    // The relay's CPU time and bytes before the matrix (the public member relays; the seed
    // holds no network key, so it is no member and carries no circuits).
    let relays: Vec<&Node> = vec![&members[0].node];
    let cpu_before: Vec<u64> = relays.iter().map(|n| cpu_ticks(lab, &n.name)).collect();
    let bytes_before: Vec<u64> = relays.iter().map(|n| relayed_bytes(lab, n)).collect();

    // Every pair, each pinging the other's overlay address from its own namespace.
    let overlay: Vec<String> = status
        .iter()
        .map(|s| field(s, "overlay_ipv4").unwrap_or_default())
        .collect();
    let mut pairs = vec![];
    // Per pair with traffic: its path, and CPU ms per GB at the relay and at the sender.
    let mut cost: Vec<(&str, f64, f64)> = vec![];
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
            // CPU time of the relay and of the sending end over the iperf3 run.
            let cpu = |lab: &Lab| {
                (
                    cpu_ticks(lab, &relays[0].name),
                    cpu_ticks(lab, &from.node.name),
                )
            };
            let before = cpu(lab);
            let mbps = match first {
                Some(_) => {
                    let to = members[b].node.ns.clone();
                    Some(lab::iperf3(lab, &to, &from.node.ns, dst, IPERF_SECONDS)?)
                }
                None => None,
            };
            let after = cpu(lab);
            if let Some(m) = mbps.filter(|m| *m > 0.0) {
                let gb = m * IPERF_SECONDS as f64 / 8e3;
                let per_gb =
                    |a: u64, b: u64| a.saturating_sub(b) as f64 * 1e3 / clock_ticks() as f64 / gb;
                let relay_ms = per_gb(after.0, before.0);
                let sender_ms = per_gb(after.1, before.1);
                cost.push((path, relay_ms, sender_ms));
            }
            pairs.push(Pair {
                a,
                b,
                path,
                first_packet_ms: first,
                direct_ms,
                mbps,
            });
        }
    }
    // Every pair reaches the other within FIRST_PACKET, through a relay if need be. A pair
    // with an endpoint-independent side goes direct within DIRECT (one side public or
    // forwarding, or both dialling each other at once when introduced); a symmetric NAT facing
    // a port-restricted one (or another symmetric one) may stay relayed: nothing else crosses.
    for p in &pairs {
        let (a, b) = (&members[p.a], &members[p.b]);
        let stuck =
            |x: &str, y: &str| x == "symmetric" && matches!(y, "port-restricted" | "symmetric");
        let may_stay_relayed = stuck(a.nat, b.nat) || stuck(b.nat, a.nat);
        rep.check(
            &format!(
                "{} ({}) reaches {} ({})",
                a.node.name, a.nat, b.node.name, b.nat
            ),
            p.first_packet_ms
                .is_some_and(|ms| ms <= FIRST_PACKET.as_secs_f64() * 1e3),
            p.first_packet_ms.map_or("no reply".into(), |ms| {
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
    // What a relayed GB costs the relay, against what a direct GB costs its sender (pairs the
    // relay is not an end of; each iperf3 run's CPU time over the bytes it moved).
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let relayed = mean(
        cost.iter()
            .filter(|c| c.0 == "relayed")
            .map(|c| c.1)
            .collect(),
    );
    let direct = mean(
        cost.iter()
            .filter(|c| c.0 == "direct")
            .map(|c| c.2)
            .collect(),
    );
    if let (Some(r), Some(d)) = (relayed, direct) {
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
        let cost = rep.cost.map_or("null".into(), |(r, d)| {
            format!("{{\"relay_cpu_ms_per_gb\":{r:.0},\"direct_sender_cpu_ms_per_gb\":{d:.0}}}")
        });
        println!(
            "{{\"pairs\":[{}],\"runs\":1,\"relays\":[{}],\"cost\":{cost},\"failures\":[{}]}}",
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
