//! `cargo xtask hil --backend ssh --inventory FILE`: the HIL scenario on real boards over SSH.
//!
//! The inventory has one node per line (`#` starts a comment):
//!
//! ```text
//! # name    role     profile   address      ssh command
//! partner   partner  x86_64    192.0.2.1    ssh root@192.0.2.1
//! rpi4      board    rpi4      192.0.2.10   ssh -p 2222 root@192.0.2.10
//! ```
//!
//! `profile` names a file in `boards/` (its `target` picks the binary); `address` is where the
//! other nodes reach this one; the ssh command is run with a remote command appended, so a jump
//! host or options go there. Exactly one `partner`: the far end of every measurement.
//!
//! For each node: the right binary is built and copied over the ssh command's stdin, a key and a
//! UCI file are made in `/tmp/shadowmesh-hil-NAME`, and the daemon starts (the boards bootstrap
//! from the partner). Then for each board: ping and iperf3 (TCP, 1 and 4 streams) to the
//! partner through the tunnel, the board daemon's CPU seconds per GB and peak RSS; then the same
//! through kernel WireGuard between the same two hosts, where the kernel has it. Everything is
//! stopped and removed afterwards, also on failure. Report: `target/hil/ssh-report.{md,json}`.
//!
//! `--lab` builds stand-in boards here instead (network namespaces each running its own
//! `sshd`, reached from a controller namespace) and runs the very same code against them: CI's
//! check that this back end works, no board needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab;
use crate::Result;

/// One inventory line.
#[derive(Debug, Clone)]
struct Host {
    name: String,
    partner: bool,
    profile: String,
    address: String,
    ssh: Vec<String>,
}

fn parse_inventory(text: &str) -> Result<Vec<Host>> {
    let mut hosts = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 5 {
            return Err(format!(
                "inventory line {}: expected NAME ROLE PROFILE ADDRESS SSH-COMMAND…",
                i + 1
            ));
        }
        let partner = match w[1] {
            "partner" => true,
            "board" => false,
            r => {
                return Err(format!(
                    "inventory line {}: role '{r}' (board | partner)",
                    i + 1
                ))
            }
        };
        hosts.push(Host {
            name: w[0].into(),
            partner,
            profile: w[2].into(),
            address: w[3].into(),
            ssh: w[4..].iter().map(|s| s.to_string()).collect(),
        });
    }
    if hosts.iter().filter(|h| h.partner).count() != 1 {
        return Err("the inventory needs exactly one partner".into());
    }
    if hosts.iter().all(|h| h.partner) {
        return Err("the inventory has no board".into());
    }
    Ok(hosts)
}

impl Host {
    fn dir(&self) -> String {
        format!("/tmp/shadowmesh-hil-{}", self.name)
    }

    fn cmd(&self, remote: &str) -> Command {
        let mut c = Command::new(&self.ssh[0]);
        c.args(&self.ssh[1..]).arg(remote);
        c
    }

    /// Runs `remote` and returns its stdout; fails with its stderr.
    fn run(&self, remote: &str) -> Result<String> {
        let o = self
            .cmd(remote)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", self.ssh[0]))?;
        if !o.status.success() {
            return Err(format!(
                "{}: `{remote}` failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    fn bin(&self) -> String {
        format!("{}/shadowmesh", self.dir())
    }

    fn conf(&self) -> String {
        format!("{}/shadowmesh.conf", self.dir())
    }

    fn ctl(&self, what: &str) -> String {
        self.run(&format!(
            "{} {what} --config {} --json",
            self.bin(),
            self.conf()
        ))
        .unwrap_or_default()
    }
}

/// Stops and removes what the run started on every host, also on failure.
struct Remote<'a> {
    hosts: &'a [Host],
}

impl Drop for Remote<'_> {
    fn drop(&mut self) {
        for h in self.hosts {
            let d = h.dir();
            // Only the PIDs we recorded; then the WireGuard link we made; then the directory.
            let _ = h.run(&format!(
                "for f in {d}/*.pid; do [ -f \"$f\" ] && kill \"$(cat \"$f\")\" 2>/dev/null; done; \
                 sleep 1; ip link del smhilwg 2>/dev/null; rm -rf {d}; true"
            ));
        }
    }
}

fn target_of(profile: &str) -> Result<Option<String>> {
    let t = crate::boards::board(profile)?.target;
    // The host's own build serves x86_64 (partner hosts are usually PCs).
    Ok((t != "x86_64-unknown-linux-gnu" && t != "x86_64-unknown-linux-musl").then_some(t))
}

fn build(target: &Option<String>) -> Result<PathBuf> {
    match target {
        None => crate::release_bin(),
        Some(t) => crate::cross_build(t),
    }
}

fn deploy(h: &Host, bin: &Path) -> Result {
    let d = h.dir();
    h.run(&format!("rm -rf {d} && mkdir -p {d} && chmod 700 {d}"))?;
    let file = std::fs::File::open(bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let o = h
        .cmd(&format!(
            "cat > {0}/shadowmesh && chmod 755 {0}/shadowmesh",
            d
        ))
        .stdin(file)
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "{}: copying the binary failed: {}",
            h.name,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

fn write_remote(h: &Host, path: &str, content: &str) -> Result {
    let mut child = h
        .cmd(&format!("cat > {path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::io::Write::write_all(child.stdin.as_mut().ok_or("stdin")?, content.as_bytes())
        .map_err(|e| e.to_string())?;
    drop(child.stdin.take());
    let st = child.wait().map_err(|e| e.to_string())?;
    st.success()
        .then_some(())
        .ok_or_else(|| format!("{}: writing {path} failed", h.name))
}

/// CPU seconds and peak RSS (MiB) of a remote process.
fn proc_stats(h: &Host, pid: &str) -> (f64, f64) {
    let stat = h.run(&format!("cat /proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (t(11) + t(12)) / 100.0;
    let hwm = h
        .run(&format!("grep VmHWM /proc/{pid}/status"))
        .ok()
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, hwm / 1024.0)
}

struct Measured {
    tcp1: Option<f64>,
    tcp4: Option<f64>,
    ping_ms: Option<f64>,
    loss: Option<f64>,
    bytes: f64,
}

fn iperf(board: &Host, dst: &str, secs: u32, streams: u32) -> Option<(f64, f64)> {
    let out = board
        .run(&format!(
            "iperf3 -c {dst} -p 5299 -t {secs} -P {streams} -J"
        ))
        .ok()?;
    let recv = out
        .rfind("\"sum_received\"")
        .map(|i| out[i..].replace([' ', '\n', '\t'], ""))?;
    let bps = crate::field(&recv, "bits_per_second")?
        .parse::<f64>()
        .ok()?;
    let bytes = crate::field(&recv, "bytes")?.parse::<f64>().ok()?;
    Some((bps / 1e6, bytes))
}

fn measure(board: &Host, dst: &str, secs: u32) -> Measured {
    let ping = board
        .run(&format!("ping -n -q -c 20 -i 0.2 -W 2 {dst}"))
        .unwrap_or_default();
    let p = lab::Ping::parse(&ping);
    let loss = (p.sent > 0).then(|| p.loss_pct());
    let ping_ms = (p.received > 0).then_some(p.avg_ms);
    let t1 = iperf(board, dst, secs, 1);
    let t4 = iperf(board, dst, secs, 4);
    Measured {
        tcp1: t1.map(|x| x.0),
        tcp4: t4.map(|x| x.0),
        ping_ms,
        loss,
        bytes: t1.map(|x| x.1).unwrap_or(0.0) + t4.map(|x| x.1).unwrap_or(0.0),
    }
}

/// Kernel WireGuard between `board` and `partner` (10.78.0.0/24), if both kernels have it.
fn kernel_wg(board: &Host, partner: &Host) -> Result<bool> {
    let have = |h: &Host| {
        h.run("ip link add smhilwg type wireguard && echo ok")
            .map(|o| o == "ok")
            .unwrap_or(false)
    };
    if !have(partner) || !have(board) {
        return Ok(false);
    }
    let key = |h: &Host| -> Result<(String, String)> {
        let k = h.run("wg genkey")?;
        let p = h.run(&format!("echo {k} | wg pubkey"))?;
        Ok((k, p))
    };
    let (kb, pb) = key(board)?;
    let (kp, pp) = key(partner)?;
    for (h, k, peer_pub, me, peer, endpoint) in [
        (board, &kb, &pp, "10.78.0.2", "10.78.0.1", &partner.address),
        (partner, &kp, &pb, "10.78.0.1", "10.78.0.2", &board.address),
    ] {
        let d = h.dir();
        h.run(&format!(
            "echo {k} > {d}/wg.key && wg set smhilwg private-key {d}/wg.key listen-port 51821 \
             peer {peer_pub} allowed-ips {peer}/32 endpoint {endpoint}:51821 && \
             ip addr add {me}/24 dev smhilwg && ip link set smhilwg mtu 1420 up"
        ))?;
    }
    Ok(true)
}

/// Entry point: runs the scenario on the hosts of `inventory`.
pub fn run(inventory: &Path, secs: u32) -> Result {
    let text = std::fs::read_to_string(inventory)
        .map_err(|e| format!("inventory {}: {e}", inventory.display()))?;
    let hosts = parse_inventory(&text)?;
    scenario(&hosts, secs)
}

fn scenario(hosts: &[Host], secs: u32) -> Result {
    let partner = hosts.iter().find(|h| h.partner).expect("one partner");
    for h in hosts {
        let arch = h.run("uname -m")?;
        let bin = build(&target_of(&h.profile)?)?;
        eprintln!("{}: {arch}, deploying {}", h.name, bin.display());
        deploy(h, &bin)?;
    }
    let _cleanup = Remote { hosts };
    let nk = crate::support::random_network_key()?;
    let mut ids = vec![];
    for h in hosts {
        let id = h.run(&format!("{} keygen --out {}/key", h.bin(), h.dir()))?;
        ids.push(id);
    }
    let partner_id = &ids[hosts.iter().position(|h| h.partner).expect("partner")];
    for h in hosts {
        let d = h.dir();
        let mut cfg = format!(
            "config shadowmesh 'main'\n\toption listen_port '4433'\n\toption key_file '{d}/key'\n\toption state_dir '{d}'\n\toption interface 'smhil0'\n\toption network_key '{nk}'\n"
        );
        if !h.partner {
            cfg += &format!("\tlist bootstrap '{partner_id}@{}:4433'\n", partner.address);
        }
        write_remote(h, &h.conf(), &cfg)?;
        h.run(&format!(
            "{} run --config {} </dev/null >{d}/log 2>&1 & echo $! > {d}/daemon.pid",
            h.bin(),
            h.conf()
        ))?;
    }
    // Every board connected to the partner.
    let t = Instant::now();
    let boards: Vec<(&Host, &String)> =
        hosts.iter().zip(&ids).filter(|(h, _)| !h.partner).collect();
    loop {
        let list = lab::members(&partner.ctl("peers"));
        let up = boards.iter().all(|(_, id)| {
            lab::member_of(&list, id)
                .is_some_and(|m| crate::field(m, "connected").as_deref() == Some("true"))
        });
        if up {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let logs: Vec<String> = hosts
                .iter()
                .map(|h| {
                    format!(
                        "--- {} ---\n{}",
                        h.name,
                        h.run(&format!("tail -20 {}/log", h.dir()))
                            .unwrap_or_default()
                    )
                })
                .collect();
            return Err(format!(
                "boards did not connect to the partner in 60 s:\n{}",
                logs.join("\n")
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let converged = t.elapsed();
    let dst = crate::field(&partner.ctl("status"), "overlay_ipv4").unwrap_or_default();
    let pd = partner.dir();
    partner.run(&format!("iperf3 -s -p 5299 -D -I {pd}/iperf3.pid"))?;
    std::thread::sleep(Duration::from_millis(500));

    let mut md = format!(
        "# HIL report (ssh back end)\n\n{} boards and a partner; all connected in {:.2} s. TCP for {secs} s per run.\n\n\
         | board | path | TCP 1 stream (Mbit/s) | TCP 4 streams (Mbit/s) | ping (ms) | loss | daemon CPU s per GB | daemon peak RSS (MiB) |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        boards.len(),
        converged.as_secs_f64()
    );
    let mut json_rows = vec![];
    let mut ok = true;
    let opt =
        |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
    let js = |v: Option<f64>| {
        v.map(|x| format!("{x:.3}"))
            .unwrap_or_else(|| "null".into())
    };
    for (b, _) in &boards {
        let pid = b.run(&format!("cat {}/daemon.pid", b.dir()))?;
        let (cpu0, _) = proc_stats(b, &pid);
        let m = measure(b, &dst, secs);
        let (cpu1, rss) = proc_stats(b, &pid);
        let cpu_gb = (m.bytes > 0.0).then(|| (cpu1 - cpu0) / (m.bytes / 1e9));
        ok &= m.tcp1.is_some() && m.loss == Some(0.0);
        let mut rows = vec![("shadowmesh", m, cpu_gb, Some(rss))];
        let mut note = String::new();
        match kernel_wg(b, partner) {
            Ok(true) => rows.push((
                "kernel WireGuard",
                measure(b, "10.78.0.1", secs),
                None,
                None,
            )),
            Ok(false) => {
                note = format!(
                "| {} | kernel WireGuard | unavailable (no wireguard in a kernel) | | | | | |\n",
                b.name
            )
            }
            Err(e) => {
                note = format!(
                    "| {} | kernel WireGuard | failed: {e} | | | | | |\n",
                    b.name
                )
            }
        }
        for (path, m, cpu, rss) in rows {
            md += &format!(
                "| {} | {path} | {} | {} | {} | {} | {} | {} |\n",
                b.name,
                opt(m.tcp1, 0),
                opt(m.tcp4, 0),
                opt(m.ping_ms, 3),
                opt(m.loss, 0),
                opt(cpu, 2),
                opt(rss, 1)
            );
            json_rows.push(format!(
                "{{\"board\":\"{}\",\"profile\":\"{}\",\"path\":\"{path}\",\"tcp1_mbps\":{},\"tcp4_mbps\":{},\"ping_ms\":{},\"loss_pct\":{},\"cpu_s_per_gb\":{},\"rss_mib\":{}}}",
                b.name,
                b.profile,
                js(m.tcp1),
                js(m.tcp4),
                js(m.ping_ms),
                js(m.loss),
                js(cpu),
                js(rss)
            ));
        }
        md += &note;
    }
    let json = format!(
        "{{\"backend\":\"ssh\",\"converged_s\":{:.3},\"seconds\":{secs},\"rows\":[{}]}}",
        converged.as_secs_f64(),
        json_rows.join(",")
    );
    let out = crate::target_dir().join("hil");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    std::fs::write(out.join("ssh-report.md"), &md).map_err(|e| e.to_string())?;
    std::fs::write(out.join("ssh-report.json"), &json).map_err(|e| e.to_string())?;
    println!("{md}");
    println!("report: {}", out.join("ssh-report.md").display());
    if ok {
        Ok(())
    } else {
        Err("a board could not pass traffic to the partner through the tunnel".into())
    }
}

/// `--lab`: stand-in boards in network namespaces, each with its own sshd, driven from a
/// controller namespace through the same code path as real boards.
pub fn lab(secs: u32) -> Result {
    lab::catch_signals();
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.exists() {
        return Err("sshd is missing: run .ci/setup (apt-get install openssh-server)".into());
    }
    let bin = crate::release_bin()?;
    let mut lab = lab::Lab::new(&bin)?;
    let dir = lab.dir.clone();
    let sw = lab.ns("sw")?;
    lab::ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    lab::ip(&["-n", &sw, "link", "set", "br0", "up"])?;
    let ctl = lab.underlay_ns(&sw, "ctl", "10.202.0.100")?;
    let key = dir.join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .map_err(|e| format!("ssh-keygen: {e}"))?;
    if !st.success() {
        return Err("ssh-keygen failed".into());
    }
    std::fs::create_dir_all("/run/sshd").map_err(|e| e.to_string())?;
    let mut inventory = String::from("# stand-in boards (network namespaces with sshd)\n");
    for (name, role, addr) in [
        ("partner", "partner", "10.202.0.1"),
        ("board1", "board", "10.202.0.2"),
    ] {
        let ns = lab.underlay_ns(&sw, name, addr)?;
        let d = dir.join(format!("sshd-{name}"));
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        let hostkey = d.join("host_key");
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&hostkey)
            .status()
            .map_err(|e| e.to_string())?;
        std::fs::copy(key.with_extension("pub"), d.join("authorized_keys"))
            .map_err(|e| e.to_string())?;
        let cfg = d.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "ListenAddress {addr}\nPort 22\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile {}\n",
                hostkey.display(),
                d.join("authorized_keys").display(),
                d.join("sshd.pid").display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let child = lab
            .exec(&ns, &[sshd.to_str().ok_or("path")?, "-D", "-e", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("sshd: {e}"))?;
        lab.others.push(child);
        inventory += &format!(
            "{name} {role} x86_64 {addr} ip netns exec {ctl} ssh -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout=5 root@{addr}\n",
            key.display()
        );
    }
    let path = dir.join("inventory");
    std::fs::write(&path, &inventory).map_err(|e| e.to_string())?;
    // Wait for both sshd to answer.
    let hosts = parse_inventory(&inventory)?;
    for h in &hosts {
        let t = Instant::now();
        while h.run("true").is_err() {
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!("{}: sshd did not answer", h.name));
            }
            lab::sleep(Duration::from_millis(200))?;
        }
    }
    println!("inventory ({}):\n{inventory}", path.display());
    scenario(&hosts, secs)
}
