//! Two gateways whose PeerIds genuinely collide on their overlay IPv4 address (part of
//! `cargo xtask trust`). The test searches fresh identities (`shadowmesh keygen`) until two
//! PeerIds share their first two bytes, so both derive the same `10.100.X.Y` at counter 0 (the
//! birthday bound: about 320 keys). The higher PeerId H starts first and holds the address
//! alone with an observer gateway O; then the lower PeerId L joins. By the collision rule L
//! keeps the address and H rehashes: H must move its tunnel address and record, and every node
//! (O, L and H itself) must end up with the same owner for each address, reachable by ping.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::lab;
use crate::lab::{ip, member_of, members, ping, sleep, Lab, Node};
use crate::mesh::Report;
use crate::Result;

/// Adds the checks of the scenario to `rep`, daemon binary `bin`.
pub fn run(bin: &std::path::Path, rep: &mut Report) -> Result {
    let mut lab = Lab::new(bin)?;
    let r = scenario(&mut lab, rep);
    if r.is_err() || !rep.failures.is_empty() {
        let nodes: Vec<Node> = ["s", "h", "o", "l"]
            .iter()
            .map(|n| lab.node_named(n))
            .collect();
        eprintln!("daemon logs:\n{}", lab.logs(&nodes));
    }
    r
}

/// Generates identities under `dir` until two PeerIds share their first two bytes (and those are
/// a usable host part); returns (lower, higher) as (key file, PeerId), and how many keys it took.
fn colliding_pair(bin: &std::path::Path, dir: &std::path::Path) -> Result<[(PathBuf, String); 2]> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut seen: BTreeMap<String, (PathBuf, String)> = BTreeMap::new();
    for i in 0..20_000 {
        let key = dir.join(format!("k{i}"));
        let out = Command::new(bin)
            .args(["keygen", "--out"])
            .arg(&key)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("keygen: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let head = id.get(..4).ok_or("short PeerId")?.to_string();
        if head == "0000" || head == "ffff" {
            continue;
        }
        if let Some(other) = seen.remove(&head) {
            println!(
                "  {} keys generated: {} and {} collide",
                i + 1,
                &other.1[..12],
                &id[..12]
            );
            let mut pair = [other, (key, id)];
            pair.sort_by(|a, b| a.1.cmp(&b.1));
            return Ok(pair);
        }
        seen.insert(head, (key, id));
    }
    Err("no two of 20,000 PeerIds collide".into())
}

fn node(
    lab: &mut Lab,
    sw: &str,
    name: &str,
    addr: &str,
    key: (PathBuf, String),
    nk: Option<&str>,
    seed: Option<&str>,
) -> Result<Node> {
    let ns = lab.underlay_ns(sw, name, addr)?;
    std::fs::create_dir_all(lab.dir.join(name)).map_err(|e| e.to_string())?;
    Ok(Node {
        name: name.into(),
        config: lab.write_config(name, &key.0, nk, seed, &[])?,
        ns,
        underlay: addr.into(),
        peer_id: key.1,
        lan: None,
    })
}

/// The prefixes in member object `m`'s `routes_accepted`.
fn accepted(m: &str) -> Vec<String> {
    let Some(i) = m.find("\"routes_accepted\":[") else {
        return vec![];
    };
    let body = &m[i + "\"routes_accepted\":[".len()..];
    body[..body.find(']').unwrap_or(0)]
        .split(',')
        .map(|s| s.trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn scenario(lab: &mut Lab, rep: &mut Report) -> Result {
    println!("two gateways whose PeerIds collide on their overlay IPv4 address");
    let [low, high] = colliding_pair(&lab.bin, &lab.dir.join("search"))?;
    let sw = lab.ns("sw")?;
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &sw, "link", "set", "br0", "up"])?;
    let nk: String = "5e".repeat(32);
    let s_key = lab.keygen("s")?;
    let s = node(lab, &sw, "s", "10.251.0.1", s_key, None, None)?;
    lab.start(&s)?;
    let seed = format!("{}@10.251.0.1:4433", s.peer_id);
    let h = node(lab, &sw, "h", "10.251.0.11", high, Some(&nk), Some(&seed))?;
    let o_key = lab.keygen("o")?;
    let o = node(lab, &sw, "o", "10.251.0.12", o_key, Some(&nk), Some(&seed))?;
    let l = node(lab, &sw, "l", "10.251.0.13", low, Some(&nk), Some(&seed))?;
    let status = |lab: &Lab, n: &Node, f: &str| crate::field(&lab.ctl(n, "status"), f);
    let connected = |lab: &Lab, at: &Node, id: &str| {
        member_of(&members(&lab.ctl(at, "peers")), id)
            .is_some_and(|m| crate::field(m, "connected").as_deref() == Some("true"))
    };

    // H holds the address alone first.
    lab.start(&h)?;
    lab.start(&o)?;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) && !connected(lab, &o, &h.peer_id) {
        sleep(Duration::from_millis(250))?;
    }
    let x = status(lab, &h, "overlay_ipv4").unwrap_or_default();
    rep.check(
        "the higher PeerId holds its first-choice address while alone",
        connected(lab, &o, &h.peer_id)
            && status(lab, &h, "overlay_ipv4_counter").as_deref() == Some("0"),
        format!(
            "{x}, counter {}",
            status(lab, &h, "overlay_ipv4_counter").unwrap_or_default()
        ),
    );

    // L arrives: it keeps the address, H moves.
    lab.start(&l)?;
    let t = Instant::now();
    let settled = |lab: &Lab| {
        [(&o, &h), (&o, &l), (&h, &l), (&l, &h)]
            .iter()
            .all(|(at, n)| connected(lab, at, &n.peer_id))
            && status(lab, &h, "overlay_ipv4").is_some_and(|a| a != x)
    };
    while t.elapsed() < Duration::from_secs(45) && !settled(lab) {
        sleep(Duration::from_millis(250))?;
    }
    let took = t.elapsed();
    let (l_v4, l_c) = (
        status(lab, &l, "overlay_ipv4").unwrap_or_default(),
        status(lab, &l, "overlay_ipv4_counter").unwrap_or_default(),
    );
    let (h_v4, h_c) = (
        status(lab, &h, "overlay_ipv4").unwrap_or_default(),
        status(lab, &h, "overlay_ipv4_counter").unwrap_or_default(),
    );
    rep.check(
        "when the lower PeerId joins it keeps the address and the higher one rehashes",
        l_v4 == x && l_c == "0" && h_v4 != x && h_v4.starts_with("10.100.") && h_c != "0",
        format!(
            "after {:.1} s: lower {l_v4} (counter {l_c}), higher {x} -> {h_v4} (counter {h_c})",
            took.as_secs_f64()
        ),
    );
    let tun = lab::netns_exec(&h.ns, &["ip", "-4", "-o", "addr", "show", "dev", "smesh0"])
        .output()
        .map_err(|e| e.to_string())?;
    let tun = String::from_utf8_lossy(&tun.stdout);
    rep.check(
        "the higher PeerId's tunnel carries its new address only",
        tun.contains(&format!(" {h_v4}/16")) && !tun.contains(&format!(" {x}/16")),
        tun.trim().to_string(),
    );

    // Every node that knows both agrees on the owner of each address.
    let mut views = vec![];
    for at in [&o, &l, &h] {
        let list = members(&lab.ctl(at, "peers"));
        for (n, addr) in [(&l, &l_v4), (&h, &h_v4)] {
            if at.name == n.name {
                continue;
            }
            let m = member_of(&list, &n.peer_id).cloned().unwrap_or_default();
            let ok = accepted(&m).contains(&format!("{addr}/32"))
                && crate::field(&m, "overlay_ipv4").as_deref() == Some(addr.as_str());
            views.push((
                format!("{} at {}", n.name.to_uppercase(), at.name.to_uppercase()),
                ok,
            ));
        }
    }
    rep.check(
        "every gateway installs the lower PeerId at the address and the higher at its rehash",
        views.iter().all(|(_, ok)| *ok),
        views
            .iter()
            .map(|(w, ok)| format!("{w} {}", if *ok { "ok" } else { "WRONG" }))
            .collect::<Vec<_>>()
            .join(", "),
    );
    lab::until_reachable(&o.ns, &h_v4, Duration::from_secs(10))?;
    let mut pings = vec![];
    for (from, to) in [(&o, &l_v4), (&o, &h_v4), (&l, &h_v4), (&h, &l_v4)] {
        let p = ping(&from.ns, to, 3, "0.2")?;
        pings.push((from.name.clone(), to.clone(), p.received, p.sent));
    }
    rep.check(
        "both addresses are reached from every gateway",
        pings.iter().all(|p| p.2 == p.3),
        pings
            .iter()
            .map(|(f, t, r, s)| format!("{f}->{t} {r}/{s}"))
            .collect::<Vec<_>>()
            .join(", "),
    );

    // A gateway whose own LAN lies inside the overlay refuses to start, and says what to do;
    // with another overlay_ipv4 it runs.
    let x_key = lab.keygen("x")?;
    let x = node(lab, &sw, "x", "10.251.0.14", x_key, Some(&nk), Some(&seed))?;
    ip(&["-n", &x.ns, "link", "add", "lan0", "type", "bridge"])?;
    ip(&["-n", &x.ns, "addr", "add", "10.100.9.1/24", "dev", "lan0"])?;
    ip(&["-n", &x.ns, "link", "set", "lan0", "up"])?;
    let out = lab::netns_exec(&x.ns, &["timeout", "20"])
        .arg(&lab.bin)
        .arg("run")
        .arg("--config")
        .arg(&x.config)
        .output()
        .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    let said = err
        .lines()
        .find(|l| l.contains("overlay"))
        .unwrap_or_default()
        .to_string();
    rep.check(
        "a gateway whose LAN is inside the overlay refuses to start and names the option",
        out.status.code() == Some(1)
            && said.contains("10.100.9.0/24")
            && said.contains("overlay_ipv4"),
        format!("exit {:?}: {said}", out.status.code()),
    );
    let cfg = std::fs::read_to_string(&x.config).map_err(|e| e.to_string())?;
    std::fs::write(&x.config, cfg + "\toption overlay_ipv4 '10.101.0.0/16'\n")
        .map_err(|e| e.to_string())?;
    lab.start(&x)?;
    let t = Instant::now();
    let mut v4 = None;
    while t.elapsed() < Duration::from_secs(10) && v4.is_none() {
        sleep(Duration::from_millis(200))?;
        v4 = status(lab, &x, "overlay_ipv4").filter(|a| !a.is_empty());
    }
    rep.check(
        "with option overlay_ipv4 '10.101.0.0/16' it runs, addressed in that /16",
        v4.as_deref().is_some_and(|a| a.starts_with("10.101.")),
        v4.unwrap_or_default(),
    );
    Ok(())
}
