//! `cargo xtask exit-lab` (root, network namespaces only): a LAN's internet traffic through
//! another gateway.
//!
//! ```text
//!                 inet (a router between public /24s)
//!   198.51.100.2 seed   203.0.113.2 b, 198.51.101.2 c (exit_node)   192.0.2.2 a   198.18.80.2 web
//!                                                192.168.10.1 a | 192.168.10.2 lan10
//! ```
//!
//! Checked, with `a`'s `option exit` set to `b`: `a` sees `b` offering an exit and uses it;
//! the LAN host reaches the web server and the server sees `b`'s address, never `a`'s or the
//! host's; `a`'s own link to `b` and its DHT stay on the uplink (the daemon's marked socket
//! keeps the main table: no loop); the LAN host still reaches `a`'s LAN address; with `b`
//! killed (`exit_fail` closed) nothing from the LAN host reaches the server by `a`'s uplink,
//! and traffic resumes within 5 s of `b`'s restart; on stop, `a`'s policy rules are gone. With
//! `exit 'auto'`: `a` takes an exit, and when it is killed traffic moves to the other within
//! 5 s. With `exit_fail 'open'` and the exit down, the LAN host's traffic leaves by `a`'s
//! uplink. DNS: the LAN host's query to `a`'s resolver (a stand-in for dnsmasq whose
//! upstream is the ISP's resolver on `a`'s WAN network) reaches the exit's resolver from `b`,
//! and the ISP's resolver is never asked.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::lab::{self, ip, sleep, Lab, Node};
use crate::mesh::Report;
use crate::nat_lab::uplink;
use crate::{field, Result};

/// The web server's address (behind the internet router).
const WEB: &str = "198.18.80.2";
/// The exits' addresses, a's, and the LAN host's.
const B: &str = "203.0.113.2";
const C: &str = "198.51.101.2";
const A: &str = "192.0.2.2";
const HOST: &str = "192.168.10.2";
/// The ISP's resolver (on a's WAN network) and the exit's (on b's).
const ISP_DNS: &str = "192.0.2.53";
const EXIT_DNS: &str = "203.0.113.53";
/// A second address of the web server's, in a's `list exit_bypass`.
const BYPASSED: &str = "198.18.80.3";
/// The same over IPv6.
const WEB6: &str = "2001:db8:80::2";
const B6: &str = "2001:db8:b::2";
const A6: &str = "2001:db8:a::2";
const HOST6: &str = "fd10::2";
/// How soon traffic must flow again after the exit returns, or through the next one.
const RESUME: Duration = Duration::from_secs(5);
/// Seconds of iperf3 through the exit and member to member.
const IPERF_SECONDS: u32 = 3;

/// Runs the lab with daemon binary `bin`.
pub fn run(bin: &Path) -> Result<Report> {
    let names: Vec<String> = ["seed", "a", "b", "c"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    lab::in_lab(bin, &names, scenario)
}

/// What `status` says of the exit: `(peer, state)`.
fn exit_of(status: &str) -> (String, String) {
    let obj = status
        .split("\"exit\":{")
        .nth(1)
        .and_then(|r| r.split('}').next())
        .map(|r| format!("{{{r}}}"))
        .unwrap_or_default();
    (
        field(&obj, "peer").unwrap_or_default(),
        field(&obj, "state").unwrap_or_default(),
    )
}

/// Packets the web server received from `src` (an nftables counter in its namespace).
fn web_saw(web: &str, src: &str) -> u64 {
    lab::nft_packets(web, "saw", "in", &format!(" saddr {src} "))
}

fn scenario(lab: &mut Lab) -> Result<Report> {
    let mut rep = Report::default();
    let inet = lab.ns("inet")?;
    lab.sysctl(&inet, "net.ipv4.ip_forward=1")?;
    let nk = crate::support::random_network_key()?;

    lab.sysctl(&inet, "net.ipv6.conf.all.forwarding=1")?;
    let web = lab.ns("web")?;
    uplink(&inet, &web, "eth0", "198.18.80")?;
    uplink6(&inet, &web, "198.18.80", "eth0", "80")?;
    ip(&[
        "-n",
        &web,
        "addr",
        "add",
        &format!("{BYPASSED}/24"),
        "dev",
        "eth0",
    ])?;
    let mut counters = String::new();
    for src in [B, C, A, HOST] {
        counters += &format!("\t\tip saddr {src} counter\n");
    }
    for src in [B6, A6, HOST6] {
        counters += &format!("\t\tip6 saddr {src} counter\n");
    }
    crate::nat_lab::nft(
        &web,
        &format!("table inet saw {{\n\tchain in {{\n\t\ttype filter hook input priority 0;\n{counters}\t}}\n}}\n"),
    )?;

    let (_seed, boot) = crate::nat_lab::start_seed(lab, &inet)?;

    // b and c offer themselves as exits.
    let mut exits = vec![];
    for (name, net) in [("b", "203.0.113"), ("c", "198.51.101")] {
        let ns = lab.ns(name)?;
        lab.etc_file(&ns, "resolv.conf", &format!("nameserver {EXIT_DNS}\n"))?;
        uplink(&inet, &ns, "eth0", net)?;
        uplink6(&inet, &ns, net, "eth0", name)?;
        let (key, id) = lab.keygen(name)?;
        let conf = lab.write_config(name, &key, Some(&nk), Some(&boot), &[])?;
        set_option(&conf, "exit_node", "1")?;
        let node = Node {
            name: name.into(),
            config: conf,
            ns,
            underlay: format!("{net}.2"),
            peer_id: id,
            lan: None,
        };
        lab.start(&node)?;
        exits.push(node);
    }
    let (b, c) = (exits[0].clone(), exits[1].clone());

    // a uses b, for itself and its LAN.
    let a_ns = lab.ns("a")?;
    uplink(&inet, &a_ns, "eth0", "192.0.2")?;
    uplink6(&inet, &a_ns, "192.0.2", "eth0", "a")?;
    let host = lab.lan(&a_ns, 10)?;
    // A second LAN behind a (another subnet, routed by a).
    let host2 = lab.ns("lan11")?;
    ip(&[
        "-n", &a_ns, "link", "add", "lan1", "type", "veth", "peer", "name", "eth0", "netns", &host2,
    ])?;
    ip(&["-n", &a_ns, "addr", "add", "192.168.11.1/24", "dev", "lan1"])?;
    ip(&["-n", &a_ns, "link", "set", "lan1", "up"])?;
    lab::lan_host(&host2, "192.168.11.2", "192.168.11.1")?;
    lab.sysctl(&a_ns, "net.ipv6.conf.all.forwarding=1")?;
    for (ns, addr, dev) in [(&a_ns, "fd10::1/64", "lan0"), (&host, "fd10::2/64", "eth0")] {
        ip(&["-n", ns, "-6", "addr", "add", addr, "dev", dev, "nodad"])?;
    }
    ip(&[
        "-n", &host, "-6", "route", "add", "default", "via", "fd10::1",
    ])?;
    let (a_key, a_id) = lab.keygen("a")?;
    let a_conf = lab.write_config(
        "a",
        &a_key,
        Some(&nk),
        Some(&boot),
        &["192.168.10.0/24".into(), "fd10::/64".into()],
    )?;
    set_option(&a_conf, "exit", &b.peer_id)?;
    let a = Node {
        name: "a".into(),
        config: a_conf,
        ns: a_ns,
        underlay: A.into(),
        peer_id: a_id,
        lan: None,
    };
    lab.start(&a)?;

    // a sees b offering an exit and takes it.
    let (peer, state, took) = wait_exit_up(lab, &a)?;
    rep.check(
        "a uses b as its exit",
        peer == b.peer_id && state == "up",
        format!("exit {peer:.12} {state} after {took:.1} s"),
    );
    let peers = lab::members(&lab.ctl(&a, "peers"));
    let offers = lab::member_of(&peers, &b.peer_id).and_then(|m| field(m, "exit"));
    rep.check(
        "a's peers: b offers an exit",
        offers.as_deref() == Some("true"),
        format!("exit {}", offers.unwrap_or_default()),
    );

    // The LAN host reaches the web server, which sees b's address and never a's.
    let up = lab::until_reachable(&host, WEB, Duration::from_secs(10))?;
    let ping = lab::ping(&host, WEB, 5, "0.2")?;
    let (from_b, from_a, from_host) = (web_saw(&web, B), web_saw(&web, A), web_saw(&web, HOST));
    rep.check(
        "the LAN host reaches the internet through b, seen at b's address",
        up.is_some() && ping.loss_pct() < 50.0 && from_b >= 5 && from_a == 0 && from_host == 0,
        format!(
            "{:.0}% loss; the server saw {from_b} packets from b, {from_a} from a, {from_host} from the LAN host",
            ping.loss_pct()
        ),
    );

    // The same over IPv6: the server sees b's IPv6 address.
    let ping6 = lab::ping(&host, WEB6, 5, "0.2")?;
    let (from_b6, from_a6, from_host6) =
        (web_saw(&web, B6), web_saw(&web, A6), web_saw(&web, HOST6));
    rep.check(
        "IPv6: the LAN host reaches the internet through b, seen at b's address",
        ping6.loss_pct() < 50.0 && from_b6 >= 3 && from_a6 == 0 && from_host6 == 0,
        format!(
            "{:.0}% loss; the server saw {from_b6} packets from b, {from_a6} from a, {from_host6} from the LAN host",
            ping6.loss_pct()
        ),
    );

    // DNS: the LAN host asks a's resolver (a stand-in for dnsmasq whose upstream is the ISP's
    // resolver on a's WAN network); the query reaches the exit's resolver, from b, and the
    // ISP's resolver sees nothing.
    // Resolvers: the local ISP's on a's WAN network, the exit's on b's (both in the internet
    // router's namespace), each logging who asks.
    let script = lab.dir.join("dns.py");
    std::fs::write(&script, include_str!("exit_lab/dns.py")).map_err(|e| e.to_string())?;
    let script = script.to_string_lossy().to_string();
    let mut logs = vec![];
    for (addr, port) in [(ISP_DNS, "to192x0x2"), (EXIT_DNS, "to203x0x113")] {
        let log = lab.dir.join(format!("dns-{addr}.log"));
        std::fs::write(&log, "").map_err(|e| e.to_string())?;
        logs.push(log.clone());
        spawn_dns(
            lab,
            &inet,
            &["serve", addr, WEB, &log.to_string_lossy()],
            &script,
            Some((port, addr)),
        )?;
    }
    lab.etc_file(&host, "resolv.conf", "nameserver 192.168.10.1\n")?;
    spawn_dns(
        lab,
        &a.ns,
        &["forward", "192.168.10.1", ISP_DNS],
        &script,
        None,
    )?;
    sleep(Duration::from_millis(300))?;
    let got = lab::netns_exec(&host, &["getent", "hosts", "web.example"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let askers = |log: &std::path::PathBuf| std::fs::read_to_string(log).unwrap_or_default();
    let (isp, exit_dns) = (askers(&logs[0]), askers(&logs[1]));
    rep.check(
        "DNS from the LAN host reaches the exit's resolver, from b, and never the ISP's",
        got.starts_with(WEB) && isp.is_empty() && exit_dns.lines().any(|l| l == B),
        format!(
            "getent: {got:?}; the exit's resolver was asked by {:?}, the ISP's by {:?}",
            exit_dns.lines().collect::<Vec<_>>(),
            isp.lines().collect::<Vec<_>>()
        ),
    );

    // a's own underlay traffic keeps the main table: its link to b and its DHT stay up.
    let st = lab.ctl(&a, "status");
    let contacts = field(&st, "dht_contacts")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let peers = lab::members(&lab.ctl(&a, "peers"));
    let linked = lab::member_of(&peers, &b.peer_id).and_then(|m| field(m, "connected"));
    let endpoint = lab::member_of(&peers, &b.peer_id).and_then(|m| field(m, "endpoint"));
    rep.check(
        "a's link to b and its DHT stay on the uplink (no loop)",
        linked.as_deref() == Some("true")
            && endpoint.as_deref() == Some("203.0.113.2:4433")
            && contacts > 0,
        format!(
            "connected {}, endpoint {}, {contacts} DHT contacts",
            linked.unwrap_or_default(),
            endpoint.unwrap_or_default()
        ),
    );
    let local = lab::ping(&host, "192.168.10.1", 3, "0.2")?;
    let other = lab::ping(&host, "192.168.11.2", 3, "0.2")?;
    rep.check(
        "the LAN hosts still reach a's LAN address and each other",
        local.loss_pct() == 0.0 && other.loss_pct() == 0.0,
        format!(
            "{:.0}% loss to a, {:.0}% to the other LAN's host",
            local.loss_pct(),
            other.loss_pct()
        ),
    );

    // TCP through the exit, against member to member: its SYN and the server's SYN-ACK have
    // their MSS clamped to the tunnel's MTU at a and at b.
    let via_exit = lab::iperf3(lab, &web, &host, WEB, IPERF_SECONDS)?;
    let b_overlay = field(&lab.ctl(&b, "status"), "overlay_ipv4").unwrap_or_default();
    let direct = lab::iperf3(lab, &b.ns, &a.ns, &b_overlay, IPERF_SECONDS)?;
    let (clamped_a, clamped_b) = (
        clamp_hits(&a.ns, "shadowmesh_mss"),
        clamp_hits(&b.ns, "shadowmesh_exit"),
    );
    println!(
        "TCP from the LAN host to the web server through b: {via_exit:.0} Mbit/s; a to b member to member: {direct:.0} Mbit/s ({:.2}x)",
        if direct > 0.0 { via_exit / direct } else { 0.0 }
    );
    rep.check(
        "TCP through the exit, its MSS clamped at both ends",
        via_exit > 0.0 && clamped_a > 0 && clamped_b > 0,
        format!(
            "{via_exit:.0} Mbit/s (member to member {direct:.0}); SYNs clamped: {clamped_a} at a, {clamped_b} at b"
        ),
    );

    // b dies: with exit_fail closed, nothing of the LAN host's leaves by a's uplink, and
    // traffic resumes soon after b is back.
    lab.kill9("b")?;
    let leaked =
        |web: &str| web_saw(web, A) + web_saw(web, HOST) + web_saw(web, A6) + web_saw(web, HOST6);
    let before = leaked(&web);
    let lost = lab::ping(&host, WEB, 10, "0.2")?;
    let lost6 = lab::ping(&host, WEB6, 5, "0.2")?;
    let after = leaked(&web);
    rep.check(
        "b killed: the LAN host's traffic does not leak by a's uplink (exit_fail closed), IPv4 and IPv6",
        after == before && lost.loss_pct() == 100.0 && lost6.loss_pct() == 100.0,
        format!(
            "{:.0}% loss; {} packets reached the server from a or the LAN host",
            lost.loss_pct(),
            after - before
        ),
    );
    lab.start(&b)?;
    let back = lab::until_reachable(&host, WEB, Duration::from_secs(20))?;
    rep.check(
        "b back: the LAN host's traffic resumes within 5 s",
        back.is_some_and(|t| t <= RESUME),
        back.map_or("no reply in 20 s".into(), |t| {
            format!("first reply {:.1} s after b started", t.as_secs_f64())
        }),
    );

    // On stop, a's rules are gone.
    let held = our_rules(&a.ns);
    lab.signal("a", libc::SIGTERM)?;
    let exited = lab.wait_exit("a", Duration::from_secs(10))?;
    let left = our_rules(&a.ns);
    rep.check(
        "a's policy rules are removed when it stops",
        held == 4 && exited && left == 0,
        format!("{held} rules (IPv4 and IPv6) while running; exited {exited}; {left} left"),
    );

    // exit 'auto': a takes the nearest exit; when it dies, traffic moves to the other.
    set_option(&a.config, "exit", "auto")?;
    std::fs::write(
        &a.config,
        std::fs::read_to_string(&a.config).map_err(|e| e.to_string())?
            + &format!("\tlist exit_bypass '{BYPASSED}/32'\n"),
    )
    .map_err(|e| e.to_string())?;
    lab.start(&a)?;
    let (peer, state, took) = wait_exit_up(lab, &a)?;
    let first = exits.iter().find(|n| n.peer_id == peer).cloned();
    rep.check(
        "exit auto: a takes an exit",
        first.is_some() && state == "up",
        format!("exit {peer:.12} {state} after {took:.1} s"),
    );
    // A destination in exit_bypass keeps a's uplink: the server sees the LAN host's own
    // address (a does not masquerade; its answers do not come back, the counter tells).
    let before = web_saw(&web, HOST);
    let _ = lab::ping(&host, BYPASSED, 3, "0.2")?;
    let bypassed = web_saw(&web, HOST) - before;
    rep.check(
        "exit_bypass: that destination leaves by a's uplink",
        bypassed >= 3,
        format!("the server saw {bypassed} packets at {BYPASSED} from the LAN host itself"),
    );
    if let Some(first) = first {
        let other = if first.name == "b" { &c } else { &b };
        let up = lab::until_reachable(&host, WEB, Duration::from_secs(10))?;
        let before = web_saw(&web, &other.underlay);
        lab.kill9(&first.name)?;
        let t = Instant::now();
        let moved = up.and(lab::until_reachable(&host, WEB, Duration::from_secs(20))?);
        let took = t.elapsed();
        let (now, _, _) = wait_exit_up(lab, &a)?;
        rep.check(
            &format!(
                "exit auto: {} killed, traffic moves to {} within 5 s",
                first.name, other.name
            ),
            moved.is_some()
                && took <= RESUME
                && now == other.peer_id
                && web_saw(&web, &other.underlay) > before,
            format!(
                "first reply through {} {:.1} s after the kill",
                other.name,
                took.as_secs_f64()
            ),
        );
        lab.kill9(&other.name)?;
    }
    lab.signal("a", libc::SIGTERM)?;
    lab.wait_exit("a", Duration::from_secs(10))?;

    // exit_fail open: while the exit is down, the LAN host's traffic leaves by a's uplink.
    set_option(&a.config, "exit", &b.peer_id)?;
    set_option(&a.config, "exit_fail", "open")?;
    lab.start(&a)?;
    sleep(Duration::from_secs(2))?;
    let before = web_saw(&web, HOST);
    let _ = lab::ping(&host, WEB, 5, "0.2")?;
    let after = web_saw(&web, HOST);
    let (_, state) = exit_of(&lab.ctl(&a, "status"));
    rep.check(
        "exit_fail open: with the exit down, the LAN host's traffic leaves by a's uplink",
        after >= before + 5 && our_rules(&a.ns) == 0,
        format!(
            "exit {state}; the server saw {} packets from the LAN host itself",
            after - before
        ),
    );
    Ok(rep)
}

/// IPv6 on the link `uplink` made between `inet` and `ns` (for IPv4 network `v4net`):
/// `2001:db8:ID::1/64` on the internet's side, `::2` on `ns`'s device `dev`, its default
/// route through the first.
fn uplink6(inet: &str, ns: &str, v4net: &str, dev: &str, id: &str) -> Result {
    let port = format!("to{}", v4net.replace('.', "x"));
    let net = format!("2001:db8:{id}::");
    ip(&[
        "-n",
        inet,
        "-6",
        "addr",
        "add",
        &format!("{net}1/64"),
        "dev",
        &port,
        "nodad",
    ])?;
    ip(&[
        "-n",
        ns,
        "-6",
        "addr",
        "add",
        &format!("{net}2/64"),
        "dev",
        dev,
        "nodad",
    ])?;
    ip(&[
        "-n",
        ns,
        "-6",
        "route",
        "add",
        "default",
        "via",
        &format!("{net}1"),
    ])
}

/// Packets the MSS clamping rule of nftables table `table` in `ns` hit.
fn clamp_hits(ns: &str, table: &str) -> u64 {
    lab::nft_packets(ns, table, "clamp", "counter")
}

/// Runs the DNS stand-in `script` with `args` in namespace `ns` (a child of the lab's), after
/// adding address `with.1` to device `with.0` there.
fn spawn_dns(
    lab: &mut Lab,
    ns: &str,
    args: &[&str],
    script: &str,
    with: Option<(&str, &str)>,
) -> Result {
    if let Some((dev, addr)) = with {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/32"), "dev", dev])?;
    }
    let mut cmd = vec!["python3", script];
    cmd.extend_from_slice(args);
    let child = lab::netns_exec(ns, &cmd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    lab.others.push(child);
    Ok(())
}

/// Waits up to 20 s for `node`'s exit to be up: the exit's PeerId, its state, the seconds.
fn wait_exit_up(lab: &Lab, node: &Node) -> Result<(String, String, f64)> {
    let t = Instant::now();
    loop {
        let (peer, state) = exit_of(&lab.ctl(node, "status"));
        if state == "up" || t.elapsed() >= Duration::from_secs(20) {
            return Ok((peer, state, t.elapsed().as_secs_f64()));
        }
        sleep(Duration::from_millis(200))?;
    }
}

/// Sets `option name 'value'` in the configuration file at `path` (replaced, or appended).
fn set_option(path: &Path, name: &str, value: &str) -> Result {
    let s = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let line = format!("\toption {name} '{value}'");
    let mut lines: Vec<String> = s
        .lines()
        .filter(|l| !l.trim_start().starts_with(&format!("option {name} ")))
        .map(str::to_string)
        .collect();
    lines.push(line);
    std::fs::write(path, lines.join("\n") + "\n").map_err(|e| e.to_string())
}

/// Our policy rules in namespace `ns`, IPv4 and IPv6.
fn our_rules(ns: &str) -> usize {
    ["-4", "-6"]
        .iter()
        .map(|f| {
            lab::netns_exec(ns, &["ip", f, "rule", "show"])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .filter(|l| l.starts_with("32760:") || l.starts_with("32761:"))
                        .count()
                })
                .unwrap_or(0)
        })
        .sum()
}
