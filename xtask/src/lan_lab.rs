//! `cargo xtask lan-lab` (root, network namespaces only): gateways that find each other on
//! a shared LAN segment with nothing configured but the network key.
//!
//! ```text
//!   segment 10.77.0.0/24 (a bridge): a .1, b .2, c .3 (another mesh), d .4, e .5, spy .9
//!   a's LAN 192.168.21.0/24, b's 192.168.22.0/24
//!   d and e also have uplinks to an internet router, with a seed behind it
//! ```
//!
//! Checked: `a` and `b` (same network key, no bootstrap, no seed) link within 10 s of `b`'s
//! start and their LANs reach each other; `c` (another key) on the same segment is never
//! dialled, though `a` and `b` hear it; what the passive listener captures holds neither the
//! network key nor a PeerId, and no two announcements share their sealed bytes; `d` and `e`,
//! linked around through the internet while their announcements are blocked, move to the LAN
//! path once the announcements flow (`peers --json`: `lan` and the endpoint).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::lab::{self, ip, sleep, Lab, Node};
use crate::mesh::Report;
use crate::nat_lab::{nft, uplink};
use crate::{field, Result};

/// The discovery group and port (`shadowmesh_proto::discovery`).
const GROUP: &str = "224.0.0.167";
const PORT: u16 = 4432;
/// How soon the second gateway must be reached after it starts.
const FOUND: Duration = Duration::from_secs(10);
/// How soon a member's name is in the hosts file (written every 2 s).
const NAMED: Duration = Duration::from_secs(5);

/// Runs the lab with daemon binary `bin` and the `flood` example `flooder`.
pub fn run(bin: &Path, flooder: &Path) -> Result<Report> {
    let names: Vec<String> = ["a", "b", "c", "d", "e", "seed"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    lab::in_lab(bin, &names, |lab| scenario(lab, flooder))
}

/// A gateway on the segment at `10.77.0.{n}`, LAN `lan` (third octet) behind it if any, with
/// `extra` configuration lines: the node and its LAN host's namespace.
fn gateway(
    lab: &mut Lab,
    sw: &str,
    name: &str,
    n: u8,
    nk: &str,
    lan: Option<u8>,
    extra: &str,
) -> Result<(Node, String)> {
    let ns = lab.underlay_ns(sw, name, &format!("10.77.0.{n}"))?;
    let mut routes = vec![];
    let mut host = String::new();
    if let Some(i) = lan {
        host = lab.lan(&ns, i)?;
        routes.push(format!("192.168.{i}.0/24"));
    }
    let (key, id) = lab.keygen(name)?;
    let conf = lab.write_config(name, &key, Some(nk), None, &routes)?;
    // `extra` replaces the options it sets.
    let set: Vec<&str> = extra
        .lines()
        .filter_map(|l| l.trim().strip_prefix("option ")?.split_whitespace().next())
        .collect();
    let mut text: String = std::fs::read_to_string(&conf)
        .map_err(|e| e.to_string())?
        .lines()
        .filter(|l| {
            let o = l
                .trim()
                .strip_prefix("option ")
                .and_then(|r| r.split_whitespace().next());
            o.is_none_or(|o| !set.contains(&o))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    text += "\tlist discovery_interface 'eth0'\n";
    // c and d are named alike: the lower PeerId keeps the name, the other is suffixed.
    let named = match name {
        "a" => "alpha",
        "b" => "office",
        _ => "same",
    };
    text += &format!("\toption name '{named}'\n");
    text += extra;
    std::fs::write(&conf, text).map_err(|e| e.to_string())?;
    let node = Node {
        name: name.into(),
        config: conf,
        ns,
        underlay: format!("10.77.0.{n}"),
        peer_id: id,
        lan,
    };
    Ok((node, host))
}

/// UDP packets to port 4433 that arrived in `ns` (an nftables counter there).
fn quic_in(ns: &str) -> u64 {
    lab::nft_packets(ns, "seen", "in", "dport 4433")
}

/// `status`'s `lan_discovery.NAME` counter.
fn discovery_count(status: &str, name: &str) -> u64 {
    status
        .split("\"lan_discovery\":")
        .nth(1)
        .and_then(|r| field(r, name))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn scenario(lab: &mut Lab, flooder: &Path) -> Result<Report> {
    let mut rep = Report::default();
    let sw = lab.ns("sw")?;
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &sw, "link", "set", "br0", "up"])?;
    let (nk, other) = (
        crate::support::random_network_key()?,
        crate::support::random_network_key()?,
    );

    // The passive listener.
    let spy = lab.underlay_ns(&sw, "spy", "10.77.0.9")?;
    let heard = lab.dir.join("spy.txt");
    let script = lab.dir.join("spy.py");
    std::fs::write(&script, include_str!("lan_lab/spy.py")).map_err(|e| e.to_string())?;
    let child = lab::netns_exec(
        &spy,
        &[
            "python3",
            &script.to_string_lossy(),
            GROUP,
            &PORT.to_string(),
            "10.77.0.9",
            &heard.to_string_lossy(),
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .map_err(|e| format!("python3: {e}"))?;
    lab.others.push(child);

    // a's resolver: dnsmasq as OpenWrt starts it (the hosts directory as addn-hosts), told of
    // a new hosts file through its pid file. b shares its DHCP hosts: a printer's lease.
    let (a_dir, b_dir) = (lab.dir.join("a"), lab.dir.join("b"));
    let hosts_dir = a_dir.join("hosts.d");
    std::fs::create_dir_all(&hosts_dir).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&b_dir).map_err(|e| e.to_string())?;
    let leases = b_dir.join("dhcp.leases");
    // And 200 more leases: b shares 64 at most, and a keeps no more.
    let mut text = "1999999999 02:00:00:00:22:50 192.168.22.50 Printer 01:02:00:00:00:22:50\n\
                    1999999999 02:00:00:00:22:51 192.168.22.51 * *\n"
        .to_string();
    for i in 0..200u32 {
        text += &format!(
            "1999999999 02:00:00:00:{:02x}:{:02x} 192.168.22.{} zz-host-{i} *\n",
            i / 256,
            i % 256,
            60 + i % 190
        );
    }
    std::fs::write(&leases, text).map_err(|e| e.to_string())?;
    let a_extra = format!(
        "\toption hosts_file '{}'\n\toption dnsmasq_pidfile '{}'\n",
        hosts_dir.join("shadowmesh").display(),
        a_dir.join("dnsmasq.pid").display()
    );
    let b_extra = format!(
        "\toption share_lan_names '1'\n\toption dhcp_leases '{}'\n",
        leases.display()
    );
    let (a, host_a) = gateway(lab, &sw, "a", 1, &nk, Some(21), &a_extra)?;
    let (b, host_b) = gateway(lab, &sw, "b", 2, &nk, Some(22), &b_extra)?;
    let (c, _) = gateway(lab, &sw, "c", 3, &other, None, "")?;
    ip(&[
        "-n",
        &host_b,
        "addr",
        "add",
        "192.168.22.50/24",
        "dev",
        "eth0",
    ])?;
    lab.etc_file(&host_a, "resolv.conf", "nameserver 192.168.21.1\n")?;
    let dnsmasq = lab::netns_exec(
        &a.ns,
        &[
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=192.168.21.1",
            "--user=root",
            "--group=root",
            &format!("--addn-hosts={}", hosts_dir.display()),
            &format!("--pid-file={}", a_dir.join("dnsmasq.pid").display()),
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .map_err(|e| format!("dnsmasq: {e}"))?;
    lab.others.push(dnsmasq);
    nft(
        &c.ns,
        "table inet seen {\n\tchain in {\n\t\ttype filter hook input priority 0;\n\t\tudp dport 4433 counter\n\t}\n}\n",
    )?;
    lab.start(&a)?;
    lab.start(&c)?;
    sleep(Duration::from_secs(2))?;
    lab.start(&b)?;
    let t0 = Instant::now();
    let up = lab::until_reachable(&host_a, "192.168.22.2", FOUND)?;
    rep.check(
        "a and b (no bootstrap, no seed) find each other on the segment; their LANs reach each other",
        up.is_some(),
        match up {
            Some(_) => format!(
                "a LAN host reached the other LAN {:.1} s after b started",
                t0.elapsed().as_secs_f64()
            ),
            None => format!("no reply in {} s", FOUND.as_secs()),
        },
    );
    let back = lab::ping(&host_b, "192.168.21.2", 3, "0.2")?;
    rep.check(
        "b's LAN host reaches a's",
        back.loss_pct() == 0.0,
        format!("{}% loss", back.loss_pct()),
    );
    let peers = lab::members(&lab.ctl(&a, "peers"));
    let lan = lab::member_of(&peers, &b.peer_id).and_then(|m| field(m, "lan"));
    let endpoint = lab::member_of(&peers, &b.peer_id).and_then(|m| field(m, "endpoint"));
    rep.check(
        "a's peers: b on the LAN",
        lan.as_deref() == Some("true") && endpoint.as_deref() == Some("10.77.0.2:4433"),
        format!(
            "lan {}, endpoint {}",
            lan.unwrap_or_default(),
            endpoint.unwrap_or_default()
        ),
    );

    // Names: a's hosts file serves b as office.mesh on b's overlay addresses, and itself
    // (looked at every 2 s), and the printer behind b as printer.office.mesh.
    let b_v4 = lab::member_of(&peers, &b.peer_id)
        .and_then(|m| field(m, "overlay_ipv4"))
        .unwrap_or_default();
    let t = Instant::now();
    let (mut hosts, mut dns_name) = (String::new(), String::new());
    let named = |hosts: &str, dns_name: &str| {
        hosts.contains(&format!("{b_v4} office.mesh office\n"))
            && hosts.contains(" alpha.mesh alpha\n")
            && hosts.contains("192.168.22.50 printer.office.mesh printer.office\n")
            && hosts
                .lines()
                .filter(|l| l.contains(".office.mesh "))
                .count()
                == 64
            && dns_name == "office.mesh"
    };
    while t.elapsed() < NAMED {
        hosts = std::fs::read_to_string(hosts_dir.join("shadowmesh")).unwrap_or_default();
        dns_name = lab::member_of(&lab::members(&lab.ctl(&a, "peers")), &b.peer_id)
            .and_then(|m| field(m, "dns_name"))
            .unwrap_or_default();
        if named(&hosts, &dns_name) {
            break;
        }
        sleep(Duration::from_millis(200))?;
    }
    rep.check(
        "a's hosts file names b (office.mesh), a (alpha.mesh) and b's printer (printer.office.mesh); of b's 201 named leases, 64 (the bound)",
        named(&hosts, &dns_name),
        format!(
            "dns_name {dns_name:?}; {} of b's hosts; hosts: {:?}",
            hosts.lines().filter(|l| l.contains(".office.mesh ")).count(),
            hosts.lines().skip(1).take(6).collect::<Vec<_>>()
        ),
    );

    // A LAN host of a resolves both names through a's dnsmasq and pings them.
    let mut resolved = vec![];
    for name in ["office.mesh", "printer.office.mesh"] {
        let t = Instant::now();
        let mut got = String::new();
        while t.elapsed() < NAMED {
            got = lab::netns_exec(&host_a, &["getent", "ahostsv4", name])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            if !got.is_empty() {
                break;
            }
            sleep(Duration::from_millis(200))?;
        }
        let addr = got
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let loss = if addr.is_empty() {
            100.0
        } else {
            lab::ping(&host_a, name, 3, "0.2")?.loss_pct()
        };
        resolved.push((name, addr, loss));
    }
    rep.check(
        "a LAN host behind a resolves office.mesh and printer.office.mesh through a's dnsmasq and pings both",
        resolved[0].1 == b_v4 && resolved[1].1 == "192.168.22.50" && resolved.iter().all(|r| r.2 == 0.0),
        format!("{resolved:?}"),
    );

    // c, of another mesh, hears a and b and they hear it; nobody dials anybody across.
    sleep(Duration::from_secs(3))?;
    let (sa, sc) = (lab.ctl(&a, "status"), lab.ctl(&c, "status"));
    let (a_foreign, c_foreign) = (
        discovery_count(&sa, "foreign"),
        discovery_count(&sc, "foreign"),
    );
    let (c_dials, into_c) = (discovery_count(&sc, "dials"), quic_in(&c.ns));
    let c_members = lab::members(&lab.ctl(&c, "peers")).len();
    rep.check(
        "c (another network key) on the same segment is never dialled, nor dials",
        a_foreign > 0 && c_foreign > 0 && c_dials == 0 && into_c == 0 && c_members == 0,
        format!(
            "a could not open {a_foreign} announcement(s), c {c_foreign}; c dialled {c_dials}, \
             {into_c} QUIC packet(s) reached c, c has {c_members} member(s)"
        ),
    );

    // What a passive listener heard.
    let text = std::fs::read_to_string(&heard).unwrap_or_default();
    let caps: Vec<(String, Vec<u8>)> = text
        .lines()
        .filter_map(|l| {
            let (src, hex) = l.split_once(' ')?;
            let bytes = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Some((src.to_string(), bytes))
        })
        .collect();
    let secrets: Vec<Vec<u8>> = [&nk, &other, &a.peer_id, &b.peer_id, &c.peer_id]
        .iter()
        .map(|h| {
            (0..h.len() / 2)
                .filter_map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
                .collect()
        })
        .collect();
    let leaks = caps
        .iter()
        .filter(|(_, b)| {
            secrets
                .iter()
                .any(|s| s.windows(8).any(|w| b.windows(8).any(|x| x == w)))
        })
        .count();
    let mut sealed: Vec<&[u8]> = caps
        .iter()
        .map(|(_, b)| b.get(9..).unwrap_or(&[]))
        .collect();
    sealed.sort();
    sealed.dedup();
    let window = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 300) as u32;
    let in_window = caps
        .iter()
        .filter(|(_, b)| {
            b.get(5..9)
                .is_some_and(|w| u32::from_be_bytes(w.try_into().expect("4")).abs_diff(window) <= 1)
        })
        .count();
    let from: Vec<&str> = {
        let mut v: Vec<&str> = caps.iter().map(|(s, _)| s.as_str()).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    rep.check(
        "announcements on the wire hold neither the network key nor a PeerId, and no two share their tag",
        caps.len() >= 6 && from.len() == 3 && leaks == 0 && sealed.len() == caps.len() && in_window == caps.len(),
        format!(
            "{} captured from {from:?}, {} byte(s) each; {leaks} with a key's or PeerId's bytes; \
             {} distinct sealed parts; {in_window} in this time window",
            caps.len(),
            caps.first().map_or(0, |(_, b)| b.len()),
            sealed.len()
        ),
    );

    // A member floods the segment with announcements, each naming a new PeerId: a keeps at
    // most 32 neighbours, opens at most 20 a second, dials a burst of 4 then one per 5 s, and
    // its LAN still reaches b's.
    let before = lab.ctl(&a, "status");
    let flood_ns = lab.underlay_ns(&sw, "f", "10.77.0.8")?;
    let secs = 3;
    let out = lab::netns_exec(
        &flood_ns,
        &[
            &flooder.to_string_lossy(),
            "--bind",
            "10.77.0.8",
            "--announce",
            &secs.to_string(),
            "--network-key",
            &nk,
        ],
    )
    .output()
    .map_err(|e| format!("flood: {e}"))?;
    let sent: u64 = String::from_utf8_lossy(&out.stdout)
        .split("\"sent\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let after = lab.ctl(&a, "status");
    let delta = |k: &str| discovery_count(&after, k).saturating_sub(discovery_count(&before, k));
    let neighbours = after
        .split("\"neighbours\":[")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .map_or(0, |r| r.matches('@').count());
    let still = lab::ping(&host_a, "192.168.22.2", 3, "0.2")?;
    // Opened: at most a burst of 20 and 20 a second; dials: a burst of 4 and one per 5 s.
    let opened = delta("heard") + delta("foreign");
    rep.check(
        "a member's announcement flood stays within the bounds (32 neighbours, 20 opened a second, 4 dials then 1 per 5 s)",
        sent > 1000
            && delta("limited") > 0
            && opened <= 20 * (secs + 2)
            && delta("dials") <= 4 + (secs + 1) / 5 + 1
            && neighbours <= 32
            && still.loss_pct() == 0.0,
        format!(
            "{sent} sent in {secs} s; a opened {opened}, dropped {} unopened, dialled {}, keeps {neighbours} neighbours; {}% loss between the LANs",
            delta("limited"),
            delta("dials"),
            still.loss_pct()
        ),
    );

    // d and e, bootstrapped through a seed, linked around through the internet while their
    // announcements are dropped; then the LAN path.
    let inet = lab.ns("inet")?;
    lab.sysctl(&inet, "net.ipv4.ip_forward=1")?;
    let (_seed, boot) = crate::nat_lab::start_seed(lab, &inet)?;
    let third = crate::support::random_network_key()?;
    let mut de = vec![];
    for (name, n, net) in [("d", 4u8, "203.0.113"), ("e", 5, "192.0.2")] {
        let (node, _) = gateway(
            lab,
            &sw,
            name,
            n,
            &third,
            None,
            &format!("\tlist bootstrap '{boot}'\n"),
        )?;
        uplink(&inet, &node.ns, "eth1", net)?;
        nft(
            &node.ns,
            "table inet hush {\n\tchain out {\n\t\ttype filter hook output priority 0;\n\t\tudp dport 4432 drop\n\t}\n}\n",
        )?;
        lab.start(&node)?;
        de.push((node, format!("{net}.2:4433")));
    }
    let ((d, _), (e, e_wan)) = (de[0].clone(), de[1].clone());
    let endpoint_of = |lab: &Lab, from: &Node, to: &Node| {
        let peers = lab::members(&lab.ctl(from, "peers"));
        let m = lab::member_of(&peers, &to.peer_id)
            .cloned()
            .unwrap_or_default();
        (
            field(&m, "endpoint").unwrap_or_default(),
            field(&m, "lan").unwrap_or_default(),
            field(&m, "connected").unwrap_or_default(),
        )
    };
    let t = Instant::now();
    let mut before = (String::new(), String::new(), String::new());
    while t.elapsed() < Duration::from_secs(20) {
        before = endpoint_of(lab, &d, &e);
        if before.2 == "true" {
            break;
        }
        sleep(Duration::from_millis(200))?;
    }
    rep.check(
        "d and e (announcements dropped) link around through the internet",
        before.2 == "true" && before.0 == e_wan && before.1 == "false",
        format!("endpoint {}, lan {}", before.0, before.1),
    );
    for (node, _) in &de {
        lab::netns_exec(&node.ns, &["nft", "delete", "table", "inet", "hush"])
            .status()
            .map_err(|e| e.to_string())?;
    }
    let t = Instant::now();
    let mut after = before.clone();
    while t.elapsed() < Duration::from_secs(40) {
        after = endpoint_of(lab, &d, &e);
        if after.1 == "true" {
            break;
        }
        sleep(Duration::from_millis(200))?;
    }
    let from_e = endpoint_of(lab, &e, &d);
    rep.check(
        "d and e move to the LAN path once they hear each other (peers --json at both ends)",
        after.0 == "10.77.0.5:4433" && after.1 == "true" && from_e.1 == "true",
        format!(
            "d sees e at {} (lan {}) after {:.1} s; e sees d at {} (lan {})",
            after.0,
            after.1,
            t.elapsed().as_secs_f64(),
            from_e.0,
            from_e.1
        ),
    );
    let overlay_e = lab::members(&lab.ctl(&d, "peers"))
        .iter()
        .find(|m| field(m, "peer_id").as_deref() == Some(e.peer_id.as_str()))
        .and_then(|m| field(m, "overlay_ipv4"))
        .unwrap_or_default();
    let p = lab::ping(&d.ns, &overlay_e, 5, "0.2")?;
    rep.check(
        "d reaches e's overlay address over the LAN link",
        p.loss_pct() == 0.0,
        format!("{}% loss to {overlay_e}", p.loss_pct()),
    );
    // d and e both claim "same": the lower PeerId keeps it, at both ends.
    let (low, high) = if d.peer_id < e.peer_id {
        (&d, &e)
    } else {
        (&e, &d)
    };
    let served = |from: &Node, of: &Node| {
        if from.peer_id == of.peer_id {
            field(&lab.ctl(from, "status"), "dns_name").unwrap_or_default()
        } else {
            lab::member_of(&lab::members(&lab.ctl(from, "peers")), &of.peer_id)
                .and_then(|m| field(m, "dns_name"))
                .unwrap_or_default()
        }
    };
    let suffixed = format!("same-{}.mesh", &high.peer_id[..4]);
    let want = ["same.mesh", "same.mesh", &suffixed, &suffixed];
    let t = Instant::now();
    let mut seen: Vec<String> = vec![];
    while t.elapsed() < NAMED {
        seen = [(&d, low), (&e, low), (&d, high), (&e, high)]
            .iter()
            .map(|(f, o)| served(f, o))
            .collect();
        if seen == want {
            break;
        }
        sleep(Duration::from_millis(200))?;
    }
    rep.check(
        "a name claimed twice: the lower PeerId keeps it, the other is suffixed, alike at both ends",
        seen == want,
        format!("{seen:?}"),
    );
    Ok(rep)
}
