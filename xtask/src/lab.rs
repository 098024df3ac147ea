//! The namespace lab every scenario builds on: network namespaces, a bridge "switch", veth
//! links, LAN hosts, daemons started from generated UCI files, and the ping and iperf3 probes
//! that measure through them. Every namespace, link and process a [`Lab`] makes is removed when
//! it is dropped, on failure and on Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::Result;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM set a flag instead of killing us, so cleanup always runs. (Children in
/// our process group get the same Ctrl-C and end; we then notice the flag.)
pub(crate) fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

pub(crate) fn check_interrupt() -> Result {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

pub(crate) fn sleep(d: Duration) -> Result {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    Ok(())
}

/// Everything the scenario created; removed on drop.
pub struct Lab {
    pub(crate) tag: String,
    namespaces: Vec<String>,
    pub(crate) daemons: Vec<(String, Child)>,
    pub(crate) others: Vec<Child>,
    pub(crate) dir: PathBuf,
    pub(crate) bin: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in self.daemons.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in &mut self.others {
            let _ = c.kill();
            let _ = c.wait();
        }
        // What a test started in a namespace of ours without keeping its handle (the procd
        // stand-in's daemons): `ip netns del` would leave it running.
        for n in &self.namespaces {
            let pids = Command::new("ip")
                .args(["netns", "pids", n])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a process inside a namespace this lab created.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for n in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
            // Files `ip netns exec` mounts over /etc for it ([`Lab::etc_file`]).
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(n));
        }
        // `LAB_LOGS=DIR` keeps every daemon's whole log (DIR/NAME.log) for reading later.
        if let Some(keep) = std::env::var_os("LAB_LOGS") {
            let keep = PathBuf::from(keep);
            let _ = std::fs::create_dir_all(&keep);
            for (name, _) in &self.daemons {
                let _ = std::fs::copy(
                    self.dir.join(name).join("log"),
                    keep.join(format!("{name}.log")),
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `scenario` in a new lab with daemon binary `bin`, once `ip`, `ping` and `nft` are
/// there; if it fails, prints the logs of the daemons named `nodes`. The lab (namespaces,
/// processes, files) is gone when this returns.
pub(crate) fn in_lab(
    bin: &Path,
    nodes: &[String],
    scenario: impl FnOnce(&mut Lab) -> Result<crate::mesh::Report>,
) -> Result<crate::mesh::Report> {
    catch_signals();
    require_tools(
        &["ip", "ping", "nft"],
        "run .ci/setup (apt-get install iproute2 iputils-ping nftables)",
    )?;
    let mut lab = Lab::new(bin)?;
    let r = scenario(&mut lab);
    if r.as_ref().map_or(true, |rep| !rep.failures.is_empty()) {
        let nodes: Vec<Node> = nodes.iter().map(|n| lab.node_named(n)).collect();
        eprintln!("daemon logs:\n{}", lab.logs(&nodes));
    }
    r
}

pub(crate) fn ip(args: &[&str]) -> Result {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One gateway (or the seed) of the lab.
#[derive(Clone)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) ns: String,
    pub(crate) underlay: String,
    pub(crate) config: PathBuf,
    pub(crate) peer_id: String,
    pub(crate) lan: Option<u8>,
}

impl Lab {
    pub(crate) fn new(bin: &Path) -> Result<Lab> {
        let tag = format!("sm{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("shadowmesh-lab-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        Ok(Lab {
            tag,
            namespaces: vec![],
            daemons: vec![],
            others: vec![],
            dir,
            bin: bin.to_path_buf(),
        })
    }

    pub(crate) fn ns(&mut self, name: &str) -> Result<String> {
        let ns = format!("{}{}", self.tag, name);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Two namespaces joined by a veth pair, `10.251.0.1/24` and `10.251.0.2/24` on their
    /// `eth0` (the bench-tunnel, profile and load-peers setup).
    pub(crate) fn veth_pair(&mut self) -> Result<(String, String)> {
        let a = self.ns("a")?;
        let b = self.ns("b")?;
        ip(&[
            "-n", &a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b,
        ])?;
        for (ns, addr) in [(&a, "10.251.0.1/24"), (&b, "10.251.0.2/24")] {
            ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok((a, b))
    }

    /// A node of this lab by name, enough to read its log and reach its control socket.
    pub(crate) fn node_named(&self, name: &str) -> Node {
        Node {
            name: name.to_string(),
            ns: String::new(),
            underlay: String::new(),
            config: self.dir.join(name).join("shadowmesh.conf"),
            peer_id: String::new(),
            lan: None,
        }
    }

    pub(crate) fn exec(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }

    /// Sets `kv` (`name=value`) in namespace `ns`.
    pub(crate) fn sysctl(&self, ns: &str, kv: &str) -> Result {
        let st = self
            .exec(ns, &["sysctl", "-qw", kv])
            .status()
            .map_err(|e| e.to_string())?;
        st.success()
            .then_some(())
            .ok_or_else(|| format!("sysctl {kv} in {ns} failed"))
    }

    /// A namespace plugged into the switch with `addr`/24.
    pub(crate) fn underlay_ns(&mut self, sw: &str, name: &str, addr: &str) -> Result<String> {
        let ns = self.ns(name)?;
        let port = format!("{}p", name);
        ip(&[
            "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", sw,
        ])?;
        ip(&["-n", sw, "link", "set", &port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        Ok(ns)
    }

    /// A LAN behind gateway namespace `gw`: `192.168.i.1` on the gateway, a host at `.2`.
    pub(crate) fn lan(&mut self, gw: &str, i: u8) -> Result<String> {
        let host = self.ns(&format!("lan{i}"))?;
        ip(&[
            "-n", gw, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", &host,
        ])?;
        ip(&[
            "-n",
            gw,
            "addr",
            "add",
            &format!("192.168.{i}.1/24"),
            "dev",
            "lan0",
        ])?;
        ip(&["-n", gw, "link", "set", "lan0", "up"])?;
        lan_host(&host, &format!("192.168.{i}.2"), &format!("192.168.{i}.1"))?;
        self.sysctl(gw, "net.ipv4.ip_forward=1")?;
        Ok(host)
    }

    pub(crate) fn keygen(&self, name: &str) -> Result<(PathBuf, String)> {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        let key = d.join("key");
        let out = Command::new(&self.bin)
            .args(["keygen", "--out"])
            .arg(&key)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "keygen: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok((key, String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }

    /// Gives namespace `ns` its own `/etc/NAME` (`ip netns exec` mounts `/etc/netns/NS/NAME`
    /// over it, in the mount namespace it makes for the command); removed with the lab.
    pub(crate) fn etc_file(&self, ns: &str, name: &str, text: &str) -> Result {
        let d = Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        std::fs::write(d.join(name), text).map_err(|e| format!("{}: {e}", d.display()))
    }

    pub(crate) fn write_config(
        &self,
        name: &str,
        key: &Path,
        network_key: Option<&str>,
        seed: Option<&str>,
        routes: &[String],
    ) -> Result<PathBuf> {
        let d = self.dir.join(name);
        // `LAB_LOG_LEVEL=debug` for more than the daemons' defaults.
        let level = std::env::var("LAB_LOG_LEVEL").unwrap_or_else(|_| "info".into());
        let mut cfg = format!(
            "config shadowmesh 'main'\n\toption listen_port '4433'\n\toption key_file '{}'\n\toption state_dir '{}'\n\toption hosts_file '{}'\n\toption interface 'smesh0'\n\toption log_level '{level}'\n",
            key.display(),
            d.display(),
            d.join("hosts").display()
        );
        if let Some(nk) = network_key {
            cfg += &format!("\toption network_key '{nk}'\n");
        }
        if let Some(s) = seed {
            cfg += &format!("\tlist bootstrap '{s}'\n");
        }
        for r in routes {
            cfg += &format!("\tlist route '{r}'\n");
        }
        let path = d.join("shadowmesh.conf");
        std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
        Ok(path)
    }

    pub(crate) fn start(&mut self, node: &Node) -> Result {
        self.start_with(node, &[])
    }

    /// Starts `node`'s daemon under `prefix` (e.g. valgrind's command line).
    pub(crate) fn start_with(&mut self, node: &Node, prefix: &[&str]) -> Result {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(&node.name).join("log"))
            .map_err(|e| e.to_string())?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &node.ns])
            .args(prefix)
            .arg(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(&node.config)
            .env("SHADOWMESH_LOG_TIME", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = c.spawn().map_err(|e| e.to_string())?;
        self.daemons.push((node.name.clone(), child));
        Ok(())
    }

    pub(crate) fn daemon_pid(&self, name: &str) -> Option<u32> {
        self.daemons
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    /// Waits up to `limit` for daemon `name` (the last one started under that name) to exit.
    pub(crate) fn wait_daemon(&mut self, name: &str, limit: Duration) -> Result {
        let t = Instant::now();
        while t.elapsed() < limit {
            let exited = self
                .daemons
                .iter_mut()
                .rev()
                .find(|(n, _)| n == name)
                .map_or(Ok(true), |(_, c)| c.try_wait().map(|s| s.is_some()))
                .map_err(|e| e.to_string())?;
            if exited {
                return Ok(());
            }
            sleep(Duration::from_millis(200))?;
        }
        Err(format!("{name} did not exit in {} s", limit.as_secs()))
    }

    pub(crate) fn kill9(&mut self, name: &str) -> Result {
        let i = self
            .daemons
            .iter()
            .rposition(|(n, _)| n == name)
            .ok_or("no such daemon")?;
        let (_, mut c) = self.daemons.remove(i);
        c.kill().map_err(|e| e.to_string())?;
        let _ = c.wait();
        Ok(())
    }

    /// Waits up to `limit` for `name`'s daemon (the last started) to exit; whether it did.
    pub(crate) fn wait_exit(&mut self, name: &str, limit: Duration) -> Result<bool> {
        let t = Instant::now();
        loop {
            let c = self
                .daemons
                .iter_mut()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, c)| c)
                .ok_or("no such daemon")?;
            if c.try_wait().map_err(|e| e.to_string())?.is_some() {
                return Ok(true);
            }
            if t.elapsed() >= limit {
                return Ok(false);
            }
            sleep(Duration::from_millis(50))?;
        }
    }

    pub(crate) fn signal(&self, name: &str, sig: libc::c_int) -> Result {
        let pid = self.daemon_pid(name).ok_or("no such daemon")?;
        // SAFETY: kill(2) on a PID we started and have not reaped.
        if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
            return Err(format!("kill {pid}: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    pub(crate) fn ctl(&self, node: &Node, cmd: &str) -> String {
        Command::new(&self.bin)
            .arg(cmd)
            .arg("--config")
            .arg(&node.config)
            .arg("--json")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    pub(crate) fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name).join("log")).unwrap_or_default()
    }

    pub(crate) fn logs(&self, nodes: &[Node]) -> String {
        nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, tail(&self.log(&n.name), 30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A LAN host in namespace `host`: `addr/24` on its `eth0`, up, default route via `gateway`.
pub(crate) fn lan_host(host: &str, addr: &str, gateway: &str) -> Result {
    ip(&[
        "-n",
        host,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", host, "link", "set", "eth0", "up"])?;
    ip(&["-n", host, "route", "add", "default", "via", gateway])
}

pub(crate) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The `peers` array of a `peers --json` answer, split per member object.
pub(crate) fn members(json: &str) -> Vec<String> {
    let Some(start) = json.find("\"peers\":[") else {
        return vec![];
    };
    let body = &json[start + 9..];
    let mut out = vec![];
    let mut depth = 0;
    let mut cur = String::new();
    for ch in body.chars() {
        match ch {
            '{' => {
                depth += 1;
                cur.push(ch);
            }
            '}' => {
                depth -= 1;
                cur.push(ch);
                if depth == 0 {
                    out.push(std::mem::take(&mut cur));
                }
            }
            ']' if depth == 0 => break,
            _ if depth > 0 => cur.push(ch),
            _ => {}
        }
    }
    out
}

pub(crate) fn member_of<'a>(list: &'a [String], peer_id: &str) -> Option<&'a String> {
    list.iter()
        .find(|m| crate::field(m, "peer_id").as_deref() == Some(peer_id))
}

/// Result of a ping run.
pub(crate) struct Ping {
    pub(crate) sent: u32,
    pub(crate) received: u32,
    pub(crate) avg_ms: f64,
}

impl Ping {
    /// Reads ping(8)'s summary: "N packets transmitted, M received" and the rtt line (iputils
    /// and busybox both print these).
    pub(crate) fn parse(text: &str) -> Ping {
        let mut p = Ping {
            sent: 0,
            received: 0,
            avg_ms: 0.0,
        };
        for line in text.lines() {
            if line.contains("packets transmitted") {
                let nums: Vec<u32> = line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|w| w.parse().ok())
                    .collect();
                if nums.len() >= 2 {
                    p.sent = nums[0];
                    p.received = nums[1];
                }
            }
            if line.starts_with("rtt") || line.starts_with("round-trip") {
                p.avg_ms = line
                    .split(" = ")
                    .nth(1)
                    .and_then(|r| r.split('/').nth(1)?.parse().ok())
                    .unwrap_or(0.0);
            }
        }
        p
    }

    pub(crate) fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            100.0
        } else {
            100.0 * (self.sent - self.received) as f64 / self.sent as f64
        }
    }
}

pub(crate) fn ping(ns: &str, dst: &str, count: u32, interval: &str) -> Result<Ping> {
    check_interrupt()?;
    let out = netns_exec(
        ns,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            "1",
            dst,
        ],
    )
    .output()
    .map_err(|e| format!("ping: {e}"))?;
    let mut p = Ping::parse(&String::from_utf8_lossy(&out.stdout));
    if p.sent == 0 {
        p.sent = count;
    }
    Ok(p)
}

/// Pings once a second until one answer comes back; returns how long it took.
pub(crate) fn until_reachable(ns: &str, dst: &str, limit: Duration) -> Result<Option<Duration>> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if ping(ns, dst, 1, "0.2")?.received == 1 {
            return Ok(Some(t.elapsed()));
        }
    }
    Ok(None)
}

pub(crate) fn iperf3(
    lab: &mut Lab,
    server_ns: &str,
    client_ns: &str,
    dst: &str,
    secs: u32,
) -> Result<f64> {
    iperf3_streams(&mut lab.others, server_ns, client_ns, dst, secs, 1).map(|(mbps, _)| mbps)
}

/// `ip netns exec NS ARGS…`.
/// The packets counted by the first rule of nftables chain `inet TABLE CHAIN` in `ns` whose
/// line contains `rule` (0 if there is none).
pub(crate) fn nft_packets(ns: &str, table: &str, chain: &str, rule: &str) -> u64 {
    let out = netns_exec(ns, &["nft", "list", "chain", "inet", table, chain])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    out.lines()
        .find(|l| l.contains(rule) && l.contains("packets "))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn netns_exec(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// One iperf3 TCP run with `streams` parallel streams; returns (Mbit/s, bytes) as received.
pub(crate) fn iperf3_streams(
    procs: &mut Vec<Child>,
    server_ns: &str,
    client_ns: &str,
    dst: &str,
    secs: u32,
    streams: u32,
) -> Result<(f64, f64)> {
    let server = netns_exec(server_ns, &["iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 (install it: apt-get install iperf3): {e}"))?;
    procs.push(server);
    sleep(Duration::from_millis(500))?;
    let out = netns_exec(
        client_ns,
        &[
            "iperf3",
            "-c",
            dst,
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ],
    )
    .output()
    .map_err(|e| format!("iperf3: {e}"))?;
    check_interrupt()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // end.sum_received.{bytes, bits_per_second}
    let recv = text
        .rfind("\"sum_received\"")
        .map(|i| text[i..].replace([' ', '\n', '\t'], ""))
        .ok_or_else(|| format!("iperf3 failed: {}", tail(&text, 5)))?;
    let num = |k: &str| {
        crate::field(&recv, k)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or(format!("iperf3: no {k}"))
    };
    Ok((num("bits_per_second")? / 1e6, num("bytes")?))
}

/// Fails naming the first of `tools` that is not on PATH, with `hint`.
pub(crate) fn require_tools(tools: &[&str], hint: &str) -> Result {
    for tool in tools {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool} >/dev/null")])
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            return Err(format!("{tool} is missing: {hint}"));
        }
    }
    Ok(())
}
