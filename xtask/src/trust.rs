//! The trust-boundary scenario (part of `cargo xtask test`, as root; alone: `cargo xtask trust`):
//! real daemons in network namespaces and a hostile member built by the test
//! (`daemon/shadowmesh/examples/hostile.rs`, which holds the network key and signs whatever
//! record it likes), tried against gateway B as a router owner would meet them:
//!
//! - gateway A has the same LAN as B (`192.168.1.0/24`, OpenWrt's default) and advertises it;
//! - the hostile member advertises `0.0.0.0/0`, `::/0`, a prefix inside the overlay, two `/25`s
//!   inside gateway C's `/24`, B's WAN prefix and B's LAN, claims A's overlay addresses, and
//!   sends B a peer list of loopback, broadcast and multicast addresses.
//!
//! B's kernel routing table (`ip route show table all`, both families) must be identical before
//! A and the hostile member join and after; every refusal must show in `peers --json`; B's LAN
//! hosts must still reach each other and C's LAN; A must keep its overlay addresses at B and C;
//! and nftables in B's namespace must count no packet sent to the addresses of the peer list.
//! Last, B's tunnel is set down and up (what netifd does to an interface it restarts): its routes
//! and IPv6 address must be back within 2 s.
//! Then a gateway whose clock is five years behind ([`crate::clock`]), and two gateways whose
//! PeerIds collide on their overlay IPv4 address ([`crate::collide`]).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::lab;
use crate::lab::{ip, member_of, members, ping, sleep, Lab, Node};
use crate::mesh::Report;
use crate::Result;

/// The prefixes the hostile member advertises, beside B's own LAN and WAN (added at run time).
const HOSTILE_ROUTES: [&str; 5] = [
    "0.0.0.0/0",
    "::/0",
    "10.100.0.0/24",
    "192.168.3.0/25",
    "192.168.3.128/25",
];

/// Addresses the hostile member's peer list points at; none may see a packet from B.
const REFLECT: [&str; 6] = [
    "127.0.0.1:22",
    "[::1]:4433",
    "255.255.255.255:4433",
    "224.0.0.1:4433",
    "[ff02::1]:4433",
    "0.0.0.0:4433",
];

/// Runs the scenario with daemon binary `bin` and the hostile member `hostile`.
pub fn run(bin: &Path, hostile: &Path) -> Result<Report> {
    let names = ["a", "b", "c"].map(String::from);
    let mut rep = lab::in_lab(bin, &names, |lab| scenario(lab, hostile))?;
    crate::clock::run(bin, &mut rep)?;
    crate::collide::run(bin, &mut rep)?;
    println!();
    println!("{}", rep.table());
    Ok(rep)
}

/// Every route of namespace `ns`, both families, all tables.
fn routes(ns: &str) -> Result<String> {
    let mut all = String::new();
    for fam in ["-4", "-6"] {
        let out = lab::netns_exec(ns, &["ip", fam, "route", "show", "table", "all"])
            .output()
            .map_err(|e| format!("ip route: {e}"))?;
        all += &String::from_utf8_lossy(&out.stdout);
    }
    Ok(all)
}

/// A gateway on the switch with a LAN bridge of `hosts` hosts (`net.2`, `net.3`, …).
fn gateway(
    lab: &mut Lab,
    sw: &str,
    name: &str,
    underlay: &str,
    net: &str,
    hosts: u8,
) -> Result<(String, Vec<String>)> {
    let ns = lab.underlay_ns(sw, name, underlay)?;
    ip(&["-n", &ns, "link", "add", "br-lan", "type", "bridge"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{net}.1/24"),
        "dev",
        "br-lan",
    ])?;
    ip(&["-n", &ns, "link", "set", "br-lan", "up"])?;
    let st = lab
        .exec(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err(format!("ip_forward in {ns}"));
    }
    let mut lan = vec![];
    for h in 0..hosts {
        let host = lab.ns(&format!("{name}h{h}"))?;
        let port = format!("p{h}");
        ip(&[
            "-n", &ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &host,
        ])?;
        ip(&["-n", &ns, "link", "set", &port, "master", "br-lan", "up"])?;
        lab::lan_host(&host, &format!("{net}.{}", h + 2), &format!("{net}.1"))?;
        lan.push(host);
    }
    Ok((ns, lan))
}

fn member(
    lab: &mut Lab,
    name: &str,
    ns: String,
    underlay: &str,
    nk: &str,
    bootstrap: Option<&str>,
    routes: &[String],
) -> Result<Node> {
    let (key, id) = lab.keygen(name)?;
    let config = lab.write_config(name, &key, Some(nk), bootstrap, routes)?;
    Ok(Node {
        name: name.into(),
        ns,
        underlay: underlay.into(),
        config,
        peer_id: id,
        lan: None,
    })
}

/// Waits until `at` lists every one of `ids` as connected.
fn wait_connected(lab: &Lab, at: &Node, ids: &[&str], limit: Duration) -> Result<bool> {
    let t = Instant::now();
    while t.elapsed() < limit {
        let list = members(&lab.ctl(at, "peers"));
        if ids.iter().all(|id| {
            member_of(&list, id)
                .is_some_and(|m| crate::field(m, "connected").as_deref() == Some("true"))
        }) {
            return Ok(true);
        }
        sleep(Duration::from_millis(200))?;
    }
    Ok(false)
}

/// The `"prefix"` of each `routes_refused` entry of member object `m`, with its reason.
fn refused(m: &str) -> Vec<(String, String)> {
    let Some(i) = m.find("\"routes_refused\":[") else {
        return vec![];
    };
    let body = &m[i..];
    let body = &body[..body.find(']').unwrap_or(body.len())];
    body.split('{')
        .skip(1)
        .filter_map(|o| Some((crate::field(o, "prefix")?, crate::field(o, "reason")?)))
        .collect()
}

fn scenario(lab: &mut Lab, hostile: &Path) -> Result<Report> {
    let mut rep = Report::default();
    let t0 = Instant::now();
    println!("trust boundaries: gateways A, B, C and a hostile member in network namespaces");
    let sw = lab.ns("sw")?;
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &sw, "link", "set", "br0", "up"])?;
    let nk: String = "7e".repeat(32);

    // B: the receiver, with two LAN hosts, a default route and an IPv6 one.
    let (b_ns, b_lan) = gateway(lab, &sw, "b", "10.250.0.12", "192.168.1", 2)?;
    ip(&[
        "-n",
        &b_ns,
        "route",
        "add",
        "default",
        "via",
        "10.250.0.254",
    ])?;
    ip(&["-n", &b_ns, "addr", "add", "fd55:1::12/64", "dev", "eth0"])?;
    ip(&[
        "-n",
        &b_ns,
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fd55:1::fe",
    ])?;
    let b = member(lab, "b", b_ns.clone(), "10.250.0.12", &nk, None, &[])?;
    lab.start(&b)?;
    let b_addr = format!("{}@10.250.0.12:4433", b.peer_id);
    // C: an honest gateway with its own LAN.
    let (c_ns, _) = gateway(lab, &sw, "c", "10.250.0.13", "192.168.3", 1)?;
    let c = member(
        lab,
        "c",
        c_ns,
        "10.250.0.13",
        &nk,
        Some(&b_addr),
        &["192.168.3.0/24".into()],
    )?;
    lab.start(&c)?;
    let up = wait_connected(lab, &b, &[&c.peer_id], Duration::from_secs(30))?;
    rep.check("B and C connect", up, String::new());
    if !up {
        return Ok(rep);
    }
    // B advertises no LAN (A will advertise the same one): B reaches C's LAN from its overlay
    // address.
    let reached = lab::until_reachable(&b_ns, "192.168.3.2", Duration::from_secs(10))?;
    rep.check(
        "B reaches C's LAN (192.168.3.2)",
        reached.is_some(),
        String::new(),
    );
    // IPv6 addresses finish duplicate address detection (their local routes appear then).
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let out = lab::netns_exec(&b_ns, &["ip", "-6", "addr", "show", "tentative"])
            .output()
            .map_err(|e| e.to_string())?;
        if out.stdout.is_empty() {
            break;
        }
        sleep(Duration::from_millis(200))?;
    }
    sleep(Duration::from_secs(1))?;
    let before = routes(&b_ns)?;

    // nftables counts what B sends to the addresses of the hostile peer list.
    let rules = "table inet smtrust {\n chain out {\n  type filter hook output priority 0;\n  \
        ip daddr { 127.0.0.1, 255.255.255.255, 224.0.0.1, 0.0.0.0 } udp dport { 22, 4433 } counter\n  \
        ip6 daddr { ::1, ff02::1 } udp dport 4433 counter\n }\n}\n";
    let mut nft = lab
        .exec(&b_ns, &["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    nft.stdin
        .take()
        .ok_or("nft stdin")?
        .write_all(rules.as_bytes())
        .map_err(|e| e.to_string())?;
    if !nft.wait().map_err(|e| e.to_string())?.success() {
        return Err("nft rules refused".into());
    }

    // A: the same LAN as B, advertised.
    let (a_ns, _a_lan) = gateway(lab, &sw, "a", "10.250.0.11", "192.168.1", 1)?;
    let a = member(
        lab,
        "a",
        a_ns,
        "10.250.0.11",
        &nk,
        Some(&b_addr),
        &["192.168.1.0/24".into()],
    )?;
    lab.start(&a)?;
    let up = wait_connected(lab, &b, &[&a.peer_id], Duration::from_secs(30))?
        && wait_connected(lab, &c, &[&a.peer_id], Duration::from_secs(30))?;
    rep.check("A joins (B and C see it)", up, String::new());
    let a_status = lab.ctl(&a, "status");
    let a_v4 = crate::field(&a_status, "overlay_ipv4").unwrap_or_default();
    let a_v6 = crate::field(&a_status, "overlay_ipv6").unwrap_or_default();
    // A prefix inside the mesh's IPv6 /48 (the first three groups of any member's address).
    let v6_net: Vec<&str> = a_v6.split(':').take(3).collect();
    let v6_inside = format!("{}:7::/64", v6_net.join(":"));

    // The hostile member, dialling B and C.
    let h_ns = lab.underlay_ns(&sw, "h", "10.250.0.66")?;
    let mut h_routes: Vec<String> = HOSTILE_ROUTES.iter().map(|s| s.to_string()).collect();
    h_routes.extend([
        v6_inside.clone(),
        "10.250.0.0/24".into(),
        "192.168.1.0/24".into(),
    ]);
    let c_addr = format!("{}@10.250.0.13:4433", c.peer_id);
    let mut hostiles = vec![];
    let mut h_ids = vec![];
    for (target, peers) in [(&b_addr, REFLECT.join(",")), (&c_addr, String::new())] {
        let mut cmd = lab.exec(&h_ns, &[]);
        cmd.arg(hostile)
            .args([
                "--target",
                target,
                "--network-key",
                &nk,
                "--bind",
                "10.250.0.66",
            ])
            .args(["--route", &h_routes.join(",")])
            .args(["--ipv4", &a_v4, "--ipv6", &a_v6]);
        if !peers.is_empty() {
            cmd.args(["--peers", &peers]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("hostile: {e}"))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("hostile stdout")?)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        h_ids.push(crate::field(&line, "peer_id").unwrap_or_default());
        rep.check(
            &format!("hostile member holds a session with {}", &target[..8]),
            line.contains("\"ready\""),
            line.trim().to_string(),
        );
        hostiles.push(child);
    }
    lab.others.extend(hostiles);
    let up = wait_connected(lab, &b, &[&h_ids[0]], Duration::from_secs(15))?;
    rep.check("B holds the hostile member's session", up, String::new());
    sleep(Duration::from_secs(2))?;

    let after = routes(&b_ns)?;
    let diff: Vec<String> = after
        .lines()
        .filter(|l| !before.lines().any(|b| b == *l))
        .map(|l| format!("+{l}"))
        .chain(
            before
                .lines()
                .filter(|l| !after.lines().any(|a| a == *l))
                .map(|l| format!("-{l}")),
        )
        .collect();
    rep.check(
        "B's routing table (all tables, IPv4 and IPv6) identical before and after A and the hostile member joined",
        diff.is_empty() && before.contains("default via 10.250.0.254"),
        if diff.is_empty() {
            format!("{} routes unchanged", before.lines().count())
        } else {
            diff.join("; ")
        },
    );

    let b_peers = members(&lab.ctl(&b, "peers"));
    let a_at_b = member_of(&b_peers, &a.peer_id).cloned().unwrap_or_default();
    let a_refused = refused(&a_at_b);
    rep.check(
        "B refuses A's 192.168.1.0/24 (B's own LAN) and says so in peers --json",
        a_refused == [("192.168.1.0/24".to_string(), "local".to_string())],
        format!("{a_refused:?}"),
    );
    let h_at_b = member_of(&b_peers, &h_ids[0]).cloned().unwrap_or_default();
    let h_refused = refused(&h_at_b);
    let want: Vec<(&str, &str)> = vec![
        ("0.0.0.0/0", "default"),
        ("::/0", "default"),
        ("10.100.0.0/24", "overlay"),
        (v6_inside.as_str(), "overlay"),
        ("192.168.3.0/25", "held"),
        ("192.168.3.128/25", "held"),
        ("10.250.0.0/24", "local"),
        ("192.168.1.0/24", "local"),
    ];
    let missing: Vec<String> = want
        .iter()
        .filter(|(p, r)| !h_refused.iter().any(|(q, s)| q == p && s == r))
        .map(|(p, r)| format!("{p} ({r})"))
        .collect();
    rep.check(
        "B refuses every hostile prefix (/0, ::/0, overlay, /25s inside C's /24, B's WAN and LAN) with its reason",
        missing.is_empty() && !h_at_b.is_empty(),
        if missing.is_empty() {
            format!("{} refused", h_refused.len())
        } else {
            format!("not refused as expected: {}", missing.join(", "))
        },
    );
    for (gw, peers) in [
        ("B", b_peers.clone()),
        ("C", members(&lab.ctl(&c, "peers"))),
    ] {
        let h = h_ids
            .iter()
            .find_map(|id| member_of(&peers, id))
            .cloned()
            .unwrap_or_default();
        let r = refused(&h);
        let claims = [a_v4.as_str(), a_v6.as_str()].iter().all(|addr| {
            r.iter()
                .any(|(p, why)| p.starts_with(&format!("{addr}/")) && why == "claim")
        });
        rep.check(
            &format!("{gw} refuses the hostile member's claim to A's overlay IPv4 and IPv6"),
            claims,
            format!("{r:?}"),
        );
    }

    // The mesh keeps working: B's LAN, C's LAN, A's overlay address.
    let p = ping(&b_lan[0], "192.168.1.3", 5, "0.1")?;
    rep.check(
        "B's LAN hosts still reach each other",
        p.received == p.sent,
        format!("{} of {}", p.received, p.sent),
    );
    let p = ping(&b_ns, "192.168.3.2", 5, "0.1")?;
    rep.check(
        "B still reaches C's LAN through the mesh",
        p.received == p.sent,
        format!("{} of {}", p.received, p.sent),
    );
    let p = ping(&b_ns, &a_v4, 5, "0.1")?;
    rep.check(
        "B still reaches A at A's overlay IPv4",
        p.received == p.sent,
        format!("{a_v4}: {} of {}", p.received, p.sent),
    );

    // No dial to what the peer list named.
    let out = lab
        .exec(&b_ns, &["nft", "list", "table", "inet", "smtrust"])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let counted: u64 = text
        .split("packets ")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    rep.check(
        "a peer list of loopback/broadcast/multicast addresses makes B dial none of them",
        out.status.success() && text.contains("counter") && counted == 0,
        format!("{counted} packets to them"),
    );

    // netifd bounces an interface it manages (an edit, `ifup`): the kernel drops every route
    // through the tunnel and its IPv6 address; the daemon puts them back.
    let b_v6 = crate::field(&lab.ctl(&b, "status"), "overlay_ipv6").unwrap_or_default();
    let ours = |ns: &str| -> Result<(bool, bool)> {
        let r = lab::netns_exec(
            ns,
            &["ip", "-4", "route", "show", "dev", "smesh0", "proto", "83"],
        )
        .output()
        .map_err(|e| e.to_string())?;
        let a = lab::netns_exec(ns, &["ip", "-6", "addr", "show", "dev", "smesh0"])
            .output()
            .map_err(|e| e.to_string())?;
        Ok((
            String::from_utf8_lossy(&r.stdout).contains("192.168.3.0/24"),
            !b_v6.is_empty() && String::from_utf8_lossy(&a.stdout).contains(&b_v6),
        ))
    };
    ip(&["-n", &b_ns, "link", "set", "smesh0", "down"])?;
    let gone = ours(&b_ns)?;
    ip(&["-n", &b_ns, "link", "set", "smesh0", "up"])?;
    let t = Instant::now();
    let mut back = ours(&b_ns)?;
    while back != (true, true) && t.elapsed() < Duration::from_secs(5) {
        sleep(Duration::from_millis(50))?;
        back = ours(&b_ns)?;
    }
    let took = t.elapsed();
    let p = ping(&b_ns, "192.168.3.2", 3, "0.2")?;
    rep.check(
        "after a down/up of B's tunnel its routes and IPv6 address are back within 2 s",
        gone == (false, false)
            && back == (true, true)
            && took < Duration::from_secs(2)
            && p.received == p.sent,
        format!(
            "down: route {}, address {}; back after {:.2} s; C's LAN {} of {}",
            gone.0,
            gone.1,
            took.as_secs_f64(),
            p.received,
            p.sent
        ),
    );
    println!();
    println!("{}", rep.table());
    println!("took {:.1} s", t0.elapsed().as_secs_f64());
    Ok(rep)
}
