//! `cargo xtask demo`: a real mesh in network namespaces.
//!
//! ```text
//!            switch namespace: bridge br0, underlay 10.250.0.0/24
//!     seed 10.250.0.1    gw1 .11        gw2 .12        gw3 .13
//!     (DHT only)          |  lan0         |  lan0        |  lan0
//!                        lan1 host      lan2 host      lan3 host
//!                        192.168.1.2    192.168.2.2    192.168.3.2
//! ```
//! Each gateway runs `shadowmesh run` from a generated UCI file that names the seed and its LAN
//! (`list route '192.168.N.0/24'`); the gateways find each other through the seed, install each
//! other's LAN routes on their `smesh0`, and the LAN hosts ping and iperf3 each other through
//! the tunnels. With `--full` (what `cargo xtask test` runs) it then checks the failure cases
//! too: a node with the wrong network key, `kill -9` and restart of a gateway, a gateway moving
//! to a new underlay address, a spoofed source address, and SIGHUP with an added route.
//!
//! Every namespace, link and process it makes is removed on exit, on failure and on Ctrl-C.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab::*;
use crate::Result;

/// What a demo run measured.
#[derive(Default)]
pub struct Report {
    rows: Vec<(String, String)>,
    pub failures: Vec<String>,
    /// Relays the run measured: name, bytes forwarded, CPU milliseconds.
    pub relays: Vec<(String, u64, f64)>,
    /// CPU ms per GB: at a relay for relayed traffic, at the sender for direct traffic.
    pub cost: Option<(f64, f64)>,
    /// The longest stall of a transfer across a NAT rebinding, and across a relay's death (s).
    pub rebinding_gap_s: Option<f64>,
    pub relay_kill_gap_s: Option<f64>,
    /// When a renumbered gateway's observed addresses showed its new address (s after).
    pub renumbered_observed_s: Option<f64>,
    /// Rows are not printed as they come (the output is JSON).
    pub quiet: bool,
    /// The NAT lab's pairs, each as a JSON object.
    pub pairs_json: Vec<String>,
    /// The NAT lab's pairs that must go direct: how long each took (ms; `None`: it did not).
    pub direct_ms: Vec<Option<f64>>,
}

impl Report {
    fn row(&mut self, what: &str, value: String) {
        if !self.quiet {
            println!("  {what:<52} {value}");
        }
        self.rows.push((what.into(), value));
    }

    pub(crate) fn check(&mut self, what: &str, ok: bool, detail: String) {
        let mark = if ok { "ok" } else { "FAILED" };
        self.row(what, format!("{mark} ({detail})"));
        if !ok {
            self.failures.push(format!("{what}: {detail}"));
        }
    }

    /// Checks made.
    pub fn checks(&self) -> u64 {
        self.rows
            .iter()
            .filter(|(_, v)| v.starts_with("ok") || v.starts_with("FAILED"))
            .count() as u64
    }

    /// Takes in another run's checks and measurements (what was measured once, the last
    /// run's).
    pub(crate) fn absorb(&mut self, other: Report) {
        self.rows.extend(other.rows);
        self.failures.extend(other.failures);
        self.relays.extend(other.relays);
        self.pairs_json.extend(other.pairs_json);
        self.direct_ms.extend(other.direct_ms);
        self.cost = other.cost.or(self.cost);
        self.rebinding_gap_s = other.rebinding_gap_s.or(self.rebinding_gap_s);
        self.relay_kill_gap_s = other.relay_kill_gap_s.or(self.relay_kill_gap_s);
        self.renumbered_observed_s = other.renumbered_observed_s.or(self.renumbered_observed_s);
    }

    pub(crate) fn table(&self) -> String {
        let mut s = String::from("| check | result |\n| --- | --- |\n");
        for (a, b) in &self.rows {
            s += &format!("| {a} | {b} |\n");
        }
        s
    }
}

/// Runs the scenario with binary `bin`; `full` adds the failure cases.
pub fn run(bin: &Path, full: bool) -> Result<Report> {
    catch_signals();
    require_tools(
        &["ip", "ping", "iperf3"],
        "run .ci/setup (apt-get install iproute2 iputils-ping iperf3)",
    )?;
    let mut lab = Lab::new(bin)?;
    let r = scenario(&mut lab, full);
    if r.as_ref().map_or(true, |rep| !rep.failures.is_empty()) {
        eprintln!("daemon logs:\n{}", lab.logs(&lab_nodes(&lab)));
    }
    let tag = lab.tag.clone();
    let mut pids: Vec<u32> = lab.daemons.iter().map(|(_, c)| c.id()).collect();
    pids.extend(lab.others.iter().map(|c| c.id()));
    drop(lab);
    let mut rep = r?;
    // Nothing left behind: no namespace of ours, none of our processes.
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let left_ns = netns.lines().filter(|l| l.starts_with(&tag)).count();
    let left_procs = pids
        .iter()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .count();
    rep.check(
        "cleanup: no namespace or process left behind",
        left_ns == 0 && left_procs == 0,
        format!("{left_ns} namespaces, {left_procs} processes left"),
    );
    Ok(rep)
}

fn lab_nodes(lab: &Lab) -> Vec<Node> {
    ["seed", "gw1", "gw2", "gw3", "bad"]
        .iter()
        .map(|n| lab.node_named(n))
        .collect()
}

fn scenario(lab: &mut Lab, full: bool) -> Result<Report> {
    let mut rep = Report::default();
    let t0 = Instant::now();
    println!("building the lab: 1 seed, 3 gateways with a LAN host each, in network namespaces");
    let sw = lab.ns("sw")?;
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &sw, "link", "set", "br0", "up"])?;
    let nk = crate::support::random_network_key()?;

    let seed_ns = lab.underlay_ns(&sw, "seed", "10.250.0.1")?;
    let (seed_key, seed_id) = lab.keygen("seed")?;
    let seed = Node {
        name: "seed".into(),
        config: lab.write_config("seed", &seed_key, None, None, &[])?,
        ns: seed_ns,
        underlay: "10.250.0.1".into(),
        peer_id: seed_id.clone(),
        lan: None,
    };
    lab.start(&seed)?;
    let seed_addr = format!("{seed_id}@10.250.0.1:4433");
    let mut gws = vec![];
    for i in 1..=3u8 {
        let name = format!("gw{i}");
        let underlay = format!("10.250.0.{}", 10 + i);
        let ns = lab.underlay_ns(&sw, &name, &underlay)?;
        lab.lan(&ns, i)?;
        let (key, id) = lab.keygen(&name)?;
        let config = lab.write_config(
            &name,
            &key,
            Some(&nk),
            Some(&seed_addr),
            &[format!("192.168.{i}.0/24")],
        )?;
        let node = Node {
            name,
            ns,
            underlay,
            config,
            peer_id: id,
            lan: Some(i),
        };
        lab.start(&node)?;
        gws.push(node);
    }
    let lan_ns = |i: u8| format!("{}lan{i}", lab.tag);

    // Discovery: every gateway sees the other two connected, with their LAN routes.
    let t = Instant::now();
    let mut found = false;
    while t.elapsed() < Duration::from_secs(60) {
        sleep(Duration::from_millis(250))?;
        found = gws.iter().all(|g| {
            let list = members(&lab.ctl(g, "peers"));
            gws.iter().filter(|o| o.name != g.name).all(|o| {
                member_of(&list, &o.peer_id).is_some_and(|m| {
                    crate::field(m, "connected").as_deref() == Some("true")
                        && m.contains(&format!("192.168.{}.0/24", o.lan.unwrap_or(0)))
                })
            })
        });
        if found {
            break;
        }
    }
    rep.check(
        "gateways discovered each other through the seed",
        found,
        format!("{:.2} s", t.elapsed().as_secs_f64()),
    );
    if !found {
        return Err(format!("discovery failed:\n{}", lab.logs(&gws)));
    }

    // LAN to LAN.
    for dst in [2u8, 3] {
        let addr = format!("192.168.{dst}.2");
        // First packets may wait for routes to settle: not counted.
        until_reachable(&lan_ns(1), &addr, Duration::from_secs(10))?;
        let p = ping(&lan_ns(1), &addr, 50, "0.02")?;
        rep.check(
            &format!("ping 192.168.1.2 -> {addr} (50 packets)"),
            p.received == p.sent,
            format!("{:.0}% loss, avg {:.3} ms", p.loss_pct(), p.avg_ms),
        );
    }
    let v6 = lab.ctl(&gws[1], "status");
    if let Some(o6) = crate::field(&v6, "overlay_ipv6").filter(|s| !s.is_empty()) {
        let p = ping(&gws[0].ns, &o6, 10, "0.05")?;
        rep.check(
            "ping gw1 -> gw2 overlay IPv6",
            p.received == p.sent,
            format!("{o6}: {:.0}% loss, avg {:.3} ms", p.loss_pct(), p.avg_ms),
        );
    }
    let mbps = iperf3(lab, &lan_ns(2), &lan_ns(1), "192.168.2.2", 5)?;
    rep.check(
        "iperf3 TCP 192.168.1.2 -> 192.168.2.2 (5 s)",
        mbps > 0.0,
        format!("{mbps:.0} Mbit/s"),
    );

    if full {
        failure_cases(lab, &mut rep, &seed, &gws, &nk, &seed_addr)?;
    }
    println!();
    println!("{}", rep.table());
    println!("took {:.1} s", t0.elapsed().as_secs_f64());
    Ok(rep)
}

fn failure_cases(
    lab: &mut Lab,
    rep: &mut Report,
    seed: &Node,
    gws: &[Node],
    _nk: &str,
    seed_addr: &str,
) -> Result {
    let _ = seed;
    let lan1 = format!("{}lan1", lab.tag);
    let sw = format!("{}sw", lab.tag);

    // A node with another network key: joins the DHT, but no member admits it.
    let bad_ns = lab.underlay_ns(&sw, "bad", "10.250.0.66")?;
    let (bad_key, bad_id) = lab.keygen("bad")?;
    let other_key: String = "5a".repeat(32);
    let bad = Node {
        name: "bad".into(),
        config: lab.write_config("bad", &bad_key, Some(&other_key), Some(seed_addr), &[])?,
        ns: bad_ns.clone(),
        underlay: "10.250.0.66".into(),
        peer_id: bad_id.clone(),
        lan: None,
    };
    lab.start(&bad)?;
    // Give it time to join and meet the gateways through the DHT.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        sleep(Duration::from_millis(500))?;
        let s = lab.ctl(&bad, "status");
        if crate::field(&s, "dht_contacts")
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|n| n >= 3)
        {
            break;
        }
    }
    let gw1_status = lab.ctl(&gws[0], "status");
    let gw1_v4 = crate::field(&gw1_status, "overlay_ipv4").unwrap_or_default();
    let p = ping(&bad_ns, &gw1_v4, 5, "0.2")?;
    let admitted = gws
        .iter()
        .any(|g| member_of(&members(&lab.ctl(g, "peers")), &bad_id).is_some());
    let bad_peers = members(&lab.ctl(&bad, "peers"));
    rep.check(
        "wrong network key: no member admits it, no packet through",
        p.received == 0 && !admitted && bad_peers.is_empty(),
        format!(
            "{} of {} pings to {gw1_v4} answered; admitted by a gateway: {admitted}",
            p.received, p.sent
        ),
    );

    // A spoofed source: gw1's LAN host sends as if from gw3's LAN.
    let before = rx_spoofed(lab, &gws[1], &gws[0].peer_id);
    ip(&["-n", &lan1, "addr", "add", "192.168.3.99/32", "dev", "eth0"])?;
    let _ = lab
        .exec(
            &lan1,
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                "5",
                "-i",
                "0.1",
                "-W",
                "1",
                "-I",
                "192.168.3.99",
                "192.168.2.2",
            ],
        )
        .output();
    ip(&["-n", &lan1, "addr", "del", "192.168.3.99/32", "dev", "eth0"])?;
    let after = rx_spoofed(lab, &gws[1], &gws[0].peer_id);
    rep.check(
        "spoofed source (gw1 sends from gw3's LAN) dropped by gw2",
        after >= before + 5,
        format!("gw2 counted {} spoofed packets from gw1", after - before),
    );

    // kill -9 and restart: same identity, traffic resumes.
    let gw3 = gws[2].clone();
    lab.kill9(&gw3.name)?;
    sleep(Duration::from_secs(1))?;
    let t = Instant::now();
    lab.start(&gw3)?;
    let back = until_reachable(&lan1, "192.168.3.2", Duration::from_secs(30))?.map(|_| t.elapsed());
    let same_id =
        crate::field(&lab.ctl(&gw3, "status"), "peer_id").as_deref() == Some(gw3.peer_id.as_str());
    rep.check(
        "kill -9 of gw3 and restart: traffic resumes within 10 s, same identity",
        back.is_some_and(|d| d <= Duration::from_secs(10)) && same_id,
        match back {
            Some(d) => format!("{:.2} s after restart", d.as_secs_f64()),
            None => "not within 30 s".into(),
        },
    );

    // gw2 moves to a new underlay address.
    let gw2 = &gws[1];
    let hs_before = last_handshakes(lab, gw2);
    let t = Instant::now();
    // (Deleting a subnet's primary address also deletes its secondaries: old one first.)
    ip(&[
        "-n",
        &gw2.ns,
        "addr",
        "del",
        &format!("{}/24", gw2.underlay),
        "dev",
        "eth0",
    ])?;
    ip(&[
        "-n",
        &gw2.ns,
        "addr",
        "add",
        "10.250.0.112/24",
        "dev",
        "eth0",
    ])?;
    let back = until_reachable(&lan1, "192.168.2.2", Duration::from_secs(30))?;
    let elapsed = t.elapsed();
    sleep(Duration::from_secs(1))?;
    let hs_after = last_handshakes(lab, gw2);
    let migrated: Vec<String> = hs_before
        .iter()
        .filter(|(id, role, hs)| {
            role == "dialled" && hs_after.iter().any(|(i2, _, h2)| i2 == id && h2 == hs)
        })
        .map(|(id, _, _)| id[..8].to_string())
        .collect();
    let dialled = hs_before.iter().filter(|(_, r, _)| r == "dialled").count();
    rep.check(
        "gw2 moves to 10.250.0.112: traffic resumes within 10 s",
        back.is_some_and(|d| d <= Duration::from_secs(10)),
        format!(
            "{:.2} s; {} of {} connections gw2 dialled migrated without a new handshake",
            elapsed.as_secs_f64(),
            migrated.len(),
            dialled
        ),
    );
    if dialled > 0 {
        rep.check(
            "connections the mover dialled migrated (no new handshake)",
            migrated.len() == dialled,
            format!("{} of {dialled}", migrated.len()),
        );
    }

    // SIGHUP with an added route, while other traffic flows.
    let gw3 = &gws[2];
    let lan3 = format!("{}lan3", lab.tag);
    ip(&[
        "-n",
        &gw3.ns,
        "addr",
        "add",
        "192.168.33.1/24",
        "dev",
        "lan0",
    ])?;
    ip(&["-n", &lan3, "addr", "add", "192.168.33.2/24", "dev", "eth0"])?;
    let cfg = std::fs::read_to_string(&gw3.config).map_err(|e| e.to_string())?;
    std::fs::write(&gw3.config, cfg + "\tlist route '192.168.33.0/24'\n")
        .map_err(|e| e.to_string())?;
    let bg = lab
        .exec(
            &lan1,
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                "60",
                "-i",
                "0.1",
                "-W",
                "1",
                "192.168.2.2",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    sleep(Duration::from_secs(1))?;
    let t = Instant::now();
    lab.signal(&gw3.name, libc::SIGHUP)?;
    let mut learned = None;
    while t.elapsed() < Duration::from_secs(10) && learned.is_none() {
        if member_of(&members(&lab.ctl(&gws[0], "peers")), &gw3.peer_id)
            .is_some_and(|m| m.contains("192.168.33.0/24"))
        {
            learned = Some(t.elapsed());
        }
        sleep(Duration::from_millis(20))?;
    }
    let reached =
        until_reachable(&lan1, "192.168.33.2", Duration::from_secs(20))?.map(|_| t.elapsed());
    let out = bg.wait_with_output().map_err(|e| e.to_string())?;
    let bg = Ping::parse(&String::from_utf8_lossy(&out.stdout));
    let lost = if bg.sent == 0 {
        u32::MAX
    } else {
        bg.sent - bg.received
    };
    rep.check(
        "SIGHUP adds route 192.168.33.0/24 on gw3: reachable, other traffic kept",
        reached.is_some() && lost == 0,
        format!(
            "gw1 had the route after {}, reachable after {}; {lost} of 60 background pings lost",
            learned
                .map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or_else(|| "never".into()),
            reached
                .map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or_else(|| "never".into())
        ),
    );
    // An invalid file on reload: the error is logged and the running configuration stays.
    let good = std::fs::read_to_string(&gw3.config).map_err(|e| e.to_string())?;
    std::fs::write(&gw3.config, good.clone() + "\toption listen_port '70000'\n")
        .map_err(|e| e.to_string())?;
    lab.signal(&gw3.name, libc::SIGHUP)?;
    sleep(Duration::from_secs(1))?;
    let alive = lab
        .daemon_pid(&gw3.name)
        .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
    let p = ping(&lan1, "192.168.33.2", 10, "0.05")?;
    let logged = lab
        .log(&gw3.name)
        .contains("keeping the running configuration");
    std::fs::write(&gw3.config, good.clone()).map_err(|e| e.to_string())?;
    rep.check(
        "SIGHUP with an invalid file: error logged, old config kept, traffic flows",
        alive && logged && p.received == p.sent,
        format!(
            "daemon running: {alive}; error logged: {logged}; {} of {} pings",
            p.received, p.sent
        ),
    );
    // A restart-only option changed: reported in `status` until the file agrees again.
    let pending =
        |lab: &Lab| crate::field(&lab.ctl(gw3, "status"), "restart_pending").unwrap_or_default();
    std::fs::write(&gw3.config, good.clone() + "\toption mtu '1300'\n")
        .map_err(|e| e.to_string())?;
    lab.signal(&gw3.name, libc::SIGHUP)?;
    sleep(Duration::from_secs(1))?;
    let waiting = pending(lab);
    std::fs::write(&gw3.config, good).map_err(|e| e.to_string())?;
    lab.signal(&gw3.name, libc::SIGHUP)?;
    sleep(Duration::from_secs(1))?;
    let cleared = pending(lab);
    rep.check(
        "SIGHUP with a new mtu: status reports it waiting for a restart, and no longer once the file is back",
        waiting.contains("\"mtu\"") && cleared == "[]",
        format!("restart_pending {waiting}, then {cleared}"),
    );
    Ok(())
}

fn rx_spoofed(lab: &Lab, at: &Node, from: &str) -> u64 {
    member_of(&members(&lab.ctl(at, "peers")), from)
        .and_then(|m| crate::field(m, "rx_spoofed"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (peer, "dialled"|"accepted", last_handshake) for each member of `node`.
fn last_handshakes(lab: &Lab, node: &Node) -> Vec<(String, String, String)> {
    members(&lab.ctl(node, "peers"))
        .iter()
        .map(|m| {
            (
                crate::field(m, "peer_id").unwrap_or_default(),
                crate::field(m, "role").unwrap_or_default(),
                crate::field(m, "connection_id").unwrap_or_default(),
            )
        })
        .collect()
}
