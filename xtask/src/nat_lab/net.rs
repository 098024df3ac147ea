//! Building the NAT lab's networks: uplinks to the internet router, NAT routers' rules, and
//! the delay and loss on the public side.

use std::time::{Duration, Instant};

use crate::lab::{self, ip, sleep, Lab, Node};
use crate::Result;

/// Links namespace `ns` to the internet router `inet` on its own /24 `net` (`net.1` the
/// router, `net.2` the namespace, its default route).
pub(crate) fn uplink(inet: &str, ns: &str, dev: &str, net: &str) -> Result {
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

/// Starts the DHT-only seed at 198.51.100.2 behind the internet router `inet`: the node, and
/// the bootstrap line members are given (`PEERID@198.51.100.2:4433`).
pub(crate) fn start_seed(lab: &mut Lab, inet: &str) -> Result<(Node, String)> {
    let seed_ns = lab.ns("seed")?;
    uplink(inet, &seed_ns, "eth0", "198.51.100")?;
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
    Ok((seed, format!("{seed_id}@198.51.100.2:4433")))
}

/// The tables and chains miniupnpd adds its port forwards to (`upnp_*` in its configuration),
/// hooked before the router's own: a forward it adds lets a packet in and rewrites where it
/// goes.
pub(super) const MINIUPNPD_TABLE: &str = "table inet miniupnpd {\n\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n\t\tjump miniupnpd\n\t}\n\tchain miniupnpd {\n\t}\n\tchain prerouting {\n\t\ttype nat hook prerouting priority -100; policy accept;\n\t\tjump prerouting_miniupnpd\n\t}\n\tchain postrouting {\n\t\ttype nat hook postrouting priority 100; policy accept;\n\t\tjump postrouting_miniupnpd\n\t}\n\tchain prerouting_miniupnpd {\n\t}\n\tchain postrouting_miniupnpd {\n\t}\n}\n";

/// miniupnpd's configuration for a router with `wan0` outside and `lan0` on `lan` (a /24's
/// first three octets): NAT-PMP and PCP only (no UPnP IGD: no HTTP port), mappings only for
/// the asker's own address, into [`MINIUPNPD_TABLE`].
pub(super) fn miniupnpd_conf(lan: &str, igd: bool) -> String {
    let (pmp, upnp) = if igd { ("no", "yes") } else { ("yes", "no") };
    format!(
        "ext_ifname=wan0\nlistening_ip=lan0\nhttp_port=0\nenable_natpmp={pmp}\nenable_upnp={upnp}\n\
         secure_mode=yes\nsystem_uptime=yes\nupnp_table_name=miniupnpd\n\
         upnp_nat_table_name=miniupnpd\nupnp_forward_chain=miniupnpd\n\
         upnp_nat_chain=prerouting_miniupnpd\nupnp_nat_postrouting_chain=postrouting_miniupnpd\n\
         uuid=3b8d4ff6-8ee9-4c5a-9a13-5e2b0f0c7a01\nallow 1024-65535 {lan}.0/24 1024-65535\n\
         deny 0-65535 0.0.0.0/0 0-65535\n"
    )
}

/// Starts miniupnpd in router namespace `router` (of gateway `i`), in the foreground as a
/// child of the lab: NAT-PMP and PCP, or (`igd`) UPnP IGD alone. One started before is
/// stopped first.
pub(super) fn start_miniupnpd(lab: &mut Lab, router: &str, i: usize, igd: bool) -> Result {
    let dir = lab.dir.join(format!("nat{i}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let pid = dir.join("pid");
    let old = std::fs::read_to_string(&pid)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    if let Some(at) = old.and_then(|p| lab.others.iter().position(|c| c.id() == p)) {
        let mut c = lab.others.remove(at);
        // SAFETY: kill(2) on a child we started and have not reaped. SIGTERM: it removes
        // its rules and exits.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let _ = c.wait();
    }
    let conf = dir.join("miniupnpd.conf");
    std::fs::write(&conf, miniupnpd_conf(&format!("10.{i}.0"), igd)).map_err(|e| e.to_string())?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .map_err(|e| e.to_string())?;
    let child = lab::netns_exec(
        router,
        &[
            "miniupnpd",
            "-d",
            "-f",
            &conf.to_string_lossy(),
            "-P",
            &pid.to_string_lossy(),
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(log)
    .spawn()
    .map_err(|e| format!("miniupnpd: {e}"))?;
    lab.others.push(child);
    Ok(())
}

/// The nftables rules of a NAT router of kind `kind` whose inside host is `inside`.
pub(super) fn nat_rules(kind: &str, inside: &str) -> String {
    let post = match kind {
        "symmetric" => "oifname \"wan0\" masquerade random",
        _ => "oifname \"wan0\" masquerade",
    };
    let pre = match kind {
        "full-cone" => format!("iifname \"wan0\" udp dport 4433 dnat to {inside}:4433"),
        // Only from addresses the inside sent to (any port of theirs).
        "address-restricted" => {
            format!("iifname \"wan0\" udp dport 4433 ip saddr @contacted dnat to {inside}:4433")
        }
        _ => String::new(),
    };
    // The addresses the inside sent to, for `address-restricted` (kept 5 minutes after the last
    // packet, as conntrack keeps a UDP stream).
    let contacted = if kind == "address-restricted" {
        "\tset contacted {\n\t\ttype ipv4_addr;\n\t\tflags dynamic, timeout;\n\t\ttimeout 5m;\n\t}\n\tchain out {\n\t\ttype filter hook forward priority 0;\n\t\toifname \"wan0\" update @contacted { ip daddr }\n\t}\n"
    } else {
        ""
    };
    // As a router's firewall does (OpenWrt's wan zone rejects input): nothing unsolicited
    // reaches the router itself. Without it, a packet from outside to the WAN port 4433 leaves
    // a conntrack entry that makes the NAT move our next mapping towards that sender to
    // another port.
    let input = "iifname \"wan0\" ct state new drop";
    format!(
        "table ip nat {{\n{contacted}\tchain pre {{\n\t\ttype nat hook prerouting priority -100;\n\t\t{pre}\n\t}}\n\tchain post {{\n\t\ttype nat hook postrouting priority 100;\n\t\t{post}\n\t}}\n}}\ntable ip filter {{\n\tchain input {{\n\t\ttype filter hook input priority 0;\n\t\t{input}\n\t}}\n}}\n"
    )
}

pub(crate) fn nft(ns: &str, rules: &str) -> Result {
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

/// Delay and loss on everything the "internet" router forwards: the packets go through a delay
/// line (`cargo xtask delay-line`, a TUN in its namespace; policy routing sends every packet
/// not coming from it to it) and nftables drops `loss` in a hundred on their way in.
pub(super) struct Impairment {
    inet: String,
    /// The delay line's PID (its `Child` is the lab's, which reaps it).
    line: u32,
}

impl Impairment {
    pub(super) fn on(lab: &mut Lab, inet: &str, delay_ms: u32, loss: u32) -> Result<Impairment> {
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
    pub(super) fn off(self) -> Result {
        let inet = &self.inet;
        ip(&["-n", inet, "rule", "del", "pref", "101"])?;
        ip(&["-n", inet, "rule", "del", "pref", "100"])?;
        nft(inet, "delete table inet impair")?;
        // SAFETY: kill(2) on the delay line we started; the lab holds it unreaped.
        unsafe { libc::kill(self.line as libc::pid_t, libc::SIGKILL) };
        Ok(())
    }
}

/// The namespace the lab made for `name`.
pub(super) fn ns_of(lab: &Lab, name: &str) -> String {
    format!("{}{name}", lab.tag)
}
