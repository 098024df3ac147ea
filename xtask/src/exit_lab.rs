//! `cargo xtask exit-lab` (root, network namespaces only): a LAN's internet traffic through
//! another gateway.
//!
//! ```text
//!                 inet (a router between public /24s)
//!   198.51.100.2 seed   203.0.113.2 b (exit_node)   192.0.2.2 a (exit = b)   198.18.80.2 web
//!                                                   192.168.10.1 a | 192.168.10.2 lan10
//! ```
//!
//! Checked: `a` sees `b` offering an exit and uses it; the LAN host reaches the web server and
//! the server sees `b`'s address, never `a`'s; `a`'s own link to `b` and its DHT stay up (the
//! daemon's marked socket keeps the main table: no loop); the LAN host still reaches `a`'s LAN
//! address; with `b` killed (`exit_fail` closed), nothing from the LAN host reaches the server
//! by `a`'s uplink; on stop, `a`'s policy rules are gone; restarted with `exit_fail` open
//! while `b` is down, the LAN host's traffic leaves by `a`'s uplink.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::lab::{self, sleep, Lab, Node};
use crate::mesh::Report;
use crate::nat_lab::uplink;
use crate::{field, Result};

/// The web server's address (behind the internet router).
const WEB: &str = "198.18.80.2";

/// Runs the lab with daemon binary `bin`.
pub fn run(bin: &Path) -> Result<Report> {
    let names: Vec<String> = ["seed", "a", "b"].iter().map(|s| s.to_string()).collect();
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
    let out = lab::netns_exec(web, &["nft", "list", "chain", "inet", "saw", "in"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    out.lines()
        .find(|l| l.contains(&format!("ip saddr {src} ")))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn scenario(lab: &mut Lab) -> Result<Report> {
    let mut rep = Report::default();
    let inet = lab.ns("inet")?;
    lab.sysctl(&inet, "net.ipv4.ip_forward=1")?;
    let nk = crate::support::random_network_key()?;

    let web = lab.ns("web")?;
    uplink(&inet, &web, "eth0", "198.18.80")?;
    crate::nat_lab::nft(
        &web,
        "table inet saw {\n\tchain in {\n\t\ttype filter hook input priority 0;\n\t\tip saddr 203.0.113.2 counter\n\t\tip saddr 192.0.2.2 counter\n\t\tip saddr 192.168.10.2 counter\n\t}\n}\n",
    )?;

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

    // b offers itself as an exit.
    let b_ns = lab.ns("b")?;
    uplink(&inet, &b_ns, "eth0", "203.0.113")?;
    let (b_key, b_id) = lab.keygen("b")?;
    let b_conf = lab.write_config("b", &b_key, Some(&nk), Some(&boot), &[])?;
    append(&b_conf, "\toption exit_node '1'\n")?;
    let b = Node {
        name: "b".into(),
        config: b_conf,
        ns: b_ns,
        underlay: "203.0.113.2".into(),
        peer_id: b_id.clone(),
        lan: None,
    };
    lab.start(&b)?;

    // a uses it, for itself and its LAN.
    let a_ns = lab.ns("a")?;
    uplink(&inet, &a_ns, "eth0", "192.0.2")?;
    let host = lab.lan(&a_ns, 10)?;
    let (a_key, a_id) = lab.keygen("a")?;
    let a_conf = lab.write_config(
        "a",
        &a_key,
        Some(&nk),
        Some(&boot),
        &["192.168.10.0/24".into()],
    )?;
    append(&a_conf, &format!("\toption exit '{b_id}'\n"))?;
    let a = Node {
        name: "a".into(),
        config: a_conf,
        ns: a_ns,
        underlay: "192.0.2.2".into(),
        peer_id: a_id,
        lan: None,
    };
    lab.start(&a)?;

    // a sees b offering an exit and takes it.
    let t = Instant::now();
    let mut st = String::new();
    while t.elapsed() < Duration::from_secs(20) {
        st = lab.ctl(&a, "status");
        if exit_of(&st).1 == "up" {
            break;
        }
        sleep(Duration::from_millis(200))?;
    }
    let (peer, state) = exit_of(&st);
    rep.check(
        "a uses b as its exit",
        peer == b_id && state == "up",
        format!(
            "exit {peer:.12} {state} after {:.1} s",
            t.elapsed().as_secs_f64()
        ),
    );
    let peers = lab::members(&lab.ctl(&a, "peers"));
    let offers = lab::member_of(&peers, &b_id).and_then(|m| field(m, "exit"));
    rep.check(
        "a's peers: b offers an exit",
        offers.as_deref() == Some("true"),
        format!("exit {}", offers.unwrap_or_default()),
    );

    // The LAN host reaches the web server, which sees b's address and never a's.
    let up = lab::until_reachable(&host, WEB, Duration::from_secs(10))?;
    let ping = lab::ping(&host, WEB, 5, "0.2")?;
    let (from_b, from_a, from_host) = (
        web_saw(&web, "203.0.113.2"),
        web_saw(&web, "192.0.2.2"),
        web_saw(&web, "192.168.10.2"),
    );
    rep.check(
        "the LAN host reaches the internet through b, seen at b's address",
        up.is_some() && ping.loss_pct() < 50.0 && from_b >= 5 && from_a == 0 && from_host == 0,
        format!(
            "{:.0}% loss; the server saw {from_b} packets from b, {from_a} from a, {from_host} from the LAN host",
            ping.loss_pct()
        ),
    );

    // a's own underlay traffic keeps the main table: its link to b and its DHT stay up.
    let st = lab.ctl(&a, "status");
    let contacts = field(&st, "dht_contacts")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let peers = lab::members(&lab.ctl(&a, "peers"));
    let linked = lab::member_of(&peers, &b_id).and_then(|m| field(m, "connected"));
    let endpoint = lab::member_of(&peers, &b_id).and_then(|m| field(m, "endpoint"));
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
    rep.check(
        "the LAN host still reaches a's LAN address",
        local.loss_pct() == 0.0,
        format!("{:.0}% loss", local.loss_pct()),
    );

    // b dies: with exit_fail closed, nothing of the LAN host's leaves by a's uplink.
    lab.kill9("b")?;
    let before = web_saw(&web, "192.0.2.2") + web_saw(&web, "192.168.10.2");
    let lost = lab::ping(&host, WEB, 10, "0.2")?;
    let after = web_saw(&web, "192.0.2.2") + web_saw(&web, "192.168.10.2");
    rep.check(
        "b killed: the LAN host's traffic does not leak by a's uplink (exit_fail closed)",
        after == before && lost.loss_pct() == 100.0,
        format!(
            "{:.0}% loss; {} packets reached the server from a or the LAN host",
            lost.loss_pct(),
            after - before
        ),
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

    // exit_fail open: while the exit is down, the LAN host's traffic leaves by a's uplink.
    append(&a.config, "\toption exit_fail 'open'\n")?;
    lab.start(&a)?;
    sleep(Duration::from_secs(2))?;
    let before = web_saw(&web, "192.168.10.2");
    let _ = lab::ping(&host, WEB, 5, "0.2")?;
    let after = web_saw(&web, "192.168.10.2");
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

/// Appends `text` to the configuration file at `path`.
fn append(path: &Path, text: &str) -> Result {
    let mut s = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    s.push_str(text);
    std::fs::write(path, s).map_err(|e| e.to_string())
}
