//! `cargo xtask bench-tunnel [--json] [--seconds N]`: one run, three ways between the same two
//! network namespaces joined by a veth pair:
//!
//! - `raw`: the veth itself (the ceiling);
//! - `boringtun`: `boringtun-cli` from crates.io (installed on first use), configured with
//!   Debian's `wireguard-tools`;
//! - `shadowmesh`: two `shadowmesh run` daemons (release build), one bootstrapping from the other,
//!   data frames on the fast lane (plain UDP, the default);
//! - `shadowmesh-quic`: the same with `option fast_lane '0'` (data frames in QUIC datagrams).
//!
//! Latency of boringtun and shadowmesh is also compared at the same moments: pings in rounds
//! alternating between the two tunnels (the order swapped every round), once with both just up
//! (before any bulk traffic) and once after both carried it (`ping_fresh_ms`,
//! `ping_interleaved_ms`); the machine's noise moves both alike. Each round also gives a paired
//! ratio (shadowmesh's round median over boringtun's, seconds apart); their median is
//! `ping_fresh_round_ratio` / `ping_round_ratio` and cancels the drift over a run. The
//! shadowmesh daemons are up, idle, while boringtun is measured.
//!
//! For each: iperf3 TCP with 1 and 4 streams, ping RTT, the tunnel processes' CPU time per GB
//! carried (both ends summed, from `/proc/PID/stat`) and their peak RSS (`VmHWM`, the larger
//! end). Printed as a table with ratios to boringtun; `--json` prints
//! `{"peers":[{name, tcp1_mbps, tcp4_mbps, ping_ms, cpu_s_per_gb, rss_mib}]}` (CPU and RSS are
//! `null` for raw: the kernel does that work).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab;
use crate::lab::{ip, Lab, Node};
use crate::Result;

struct Row {
    name: &'static str,
    /// Median echo round trip (ms) of 500 pings before any bulk traffic.
    ping_p50_ms: f64,
    /// Median of 800 pings taken in rounds alternating with the other tunnel (boringtun and
    /// shadowmesh only), after the bulk traffic.
    ping_interleaved_ms: Option<f64>,
    /// The same, with both tunnels just up, before any bulk traffic through either.
    ping_fresh_ms: Option<f64>,
    /// ShadowMesh only: the median over rounds of its round median / boringtun's, and the
    /// rounds (of [`ROUNDS`]) in which it was the lower; before load, then after.
    ping_round_ratio: Option<[(f64, usize); 2]>,
    /// Resident set of the larger end once connected, before any traffic (MiB).
    idle_rss_mib: Option<f64>,
    tcp1: f64,
    tcp4: f64,
    ping_ms: f64,
    cpu_s_per_gb: Option<f64>,
    rss_mib: Option<f64>,
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User + system CPU seconds of `pid` so far.
pub(crate) fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; here 0-based after the name: 11 and 12.
    (ticks(11) + ticks(12)) / clk_tck()
}

/// Peak resident set of `pid`, MiB.
fn hwm_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

fn find_boringtun() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(Path::new(&h).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("boringtun-cli"))
        .find(|p| p.is_file())
}

pub(crate) fn ensure_tools() -> Result<PathBuf> {
    if Command::new("wg").arg("--version").output().is_err() {
        return Err("wg is missing: run .ci/setup (apt-get install wireguard-tools)".into());
    }
    if let Some(p) = find_boringtun() {
        return Ok(p);
    }
    eprintln!("installing boringtun-cli from crates.io (once)");
    crate::run(crate::cargo().args(["install", "boringtun-cli", "--locked"]))?;
    find_boringtun().ok_or_else(|| "boringtun-cli not found after cargo install".into())
}

fn out(c: &mut Command) -> Result<String> {
    let o = c.output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "{c:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The median round trip of 500 pings from namespace `ns` to `dst`, ms.
fn ping_median(ns: &str, dst: &str) -> Result<f64> {
    Ok(median(&mut ping_times(ns, dst, 500)?))
}

/// Round trips (ms) of `n` pings 5 ms apart.
fn ping_times(ns: &str, dst: &str, n: u32) -> Result<Vec<f64>> {
    let n = n.to_string();
    let out = lab::netns_exec(ns, &["ping", "-n", "-c", &n, "-i", "0.005", "-W", "1", dst])
        .output()
        .map_err(|e| format!("ping: {e}"))?;
    let t: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    if t.is_empty() {
        return Err(format!("no echo replies from {dst}"));
    }
    Ok(t)
}

/// Rounds of [`interleaved`] pings per tunnel.
const ROUNDS: usize = 12;

/// Pings through two tunnels taken in alternating rounds of 100, so that both see the same
/// moments of the machine's noise.
struct Interleaved {
    /// The median of all echoes, per tunnel (ms).
    medians: [f64; 2],
    /// The median over rounds of (second tunnel's round median / first's): each round's pair
    /// is taken seconds apart, so the machine's drift over the run cancels.
    round_ratio: f64,
    /// Rounds in which the second tunnel's median was the lower.
    second_lower: usize,
}

/// Pings `dsts` from namespace `ns` in [`ROUNDS`] rounds of 100 each, the order swapped every
/// round (ABBA: neither tunnel always follows the other).
fn interleaved(ns: &str, dsts: [&str; 2]) -> Result<Interleaved> {
    let mut all: [Vec<f64>; 2] = [vec![], vec![]];
    let mut ratios = vec![];
    for round in 0..ROUNDS {
        let mut med = [0.0; 2];
        for k in 0..2 {
            let i = if round % 2 == 0 { k } else { 1 - k };
            let mut t = ping_times(ns, dsts[i], 100)?;
            all[i].extend_from_slice(&t);
            med[i] = median(&mut t);
        }
        ratios.push(med[1] / med[0]);
    }
    Ok(Interleaved {
        medians: [median(&mut all[0]), median(&mut all[1])],
        second_lower: ratios.iter().filter(|r| **r < 1.0).count(),
        round_ratio: median(&mut ratios),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Measures one tunnel between `a` and `b` reaching `dst` (b's tunnel address), with the
/// tunnel processes `pids`.
fn measure(
    lab: &mut Lab,
    name: &'static str,
    (a, b): (&str, &str),
    dst: &str,
    pids: &[u32],
    secs: u32,
) -> Result<Row> {
    let idle_rss_mib = (!pids.is_empty()).then(|| {
        pids.iter()
            .map(|p| crate::rss_kib(*p) as f64 / 1024.0)
            .fold(0.0, f64::max)
    });
    // Warm the path (and any on-demand connection) first.
    let _ = lab::ping(a, dst, 3, "0.1")?;
    // Latency on a quiet tunnel: the median of 500 echoes 5 ms apart (the mean moves with the
    // machine's scheduling noise, the median much less).
    let ping_p50_ms = ping_median(a, dst)?;
    let cpu0: f64 = pids.iter().map(|p| cpu_s(*p)).sum();
    let (tcp1, bytes1) = lab::iperf3_streams(&mut lab.others, b, a, dst, secs, 1)?;
    let (tcp4, bytes4) = lab::iperf3_streams(&mut lab.others, b, a, dst, secs, 4)?;
    let cpu = pids.iter().map(|p| cpu_s(*p)).sum::<f64>() - cpu0;
    // 200 echoes 10 ms apart: the average over fewer moved with the machine's noise.
    let p = lab::ping(a, dst, 200, "0.01")?;
    let gb = (bytes1 + bytes4) / 1e9;
    let row = Row {
        name,
        ping_p50_ms,
        ping_interleaved_ms: None,
        ping_fresh_ms: None,
        ping_round_ratio: None,
        idle_rss_mib,
        tcp1,
        tcp4,
        ping_ms: p.avg_ms,
        cpu_s_per_gb: (!pids.is_empty() && gb > 0.0).then(|| cpu / gb),
        rss_mib: (!pids.is_empty()).then(|| pids.iter().map(|p| hwm_mib(*p)).fold(0.0, f64::max)),
    };
    eprintln!(
        "  {name:<10} tcp1 {tcp1:>8.0} Mbit/s  tcp4 {tcp4:>8.0} Mbit/s  ping {:.3} ms",
        p.avg_ms
    );
    Ok(row)
}

/// Two WireGuard key pairs (private, public), from wg(8).
fn wg_keys() -> Result<Vec<(String, String)>> {
    (0..2)
        .map(|_| {
            let private = out(Command::new("wg").arg("genkey"))?;
            let mut c = Command::new("wg");
            c.arg("pubkey").stdin(Stdio::piped()).stdout(Stdio::piped());
            let mut child = c.spawn().map_err(|e| e.to_string())?;
            std::io::Write::write_all(child.stdin.as_mut().ok_or("stdin")?, private.as_bytes())
                .map_err(|e| e.to_string())?;
            let o = child.wait_with_output().map_err(|e| e.to_string())?;
            Ok((
                private,
                String::from_utf8_lossy(&o.stdout).trim().to_string(),
            ))
        })
        .collect()
}

/// A boringtun tunnel between namespaces `a` (10.77.0.1) and `b` (10.77.0.2) over the veth pair
/// (10.251.0.1 / .2), each end started under `prefix`; returns both PIDs.
pub(crate) fn boringtun_pair(
    lab: &mut Lab,
    bt: &Path,
    (a, b): (&str, &str),
    prefix: &[&str],
) -> Result<(u32, u32)> {
    let keys = wg_keys()?;
    let tag = lab.tag.clone();
    let ends = [
        (a, "a", 0, 1, ("10.77.0.1", "10.77.0.2", "10.251.0.2:51820")),
        (b, "b", 1, 0, ("10.77.0.2", "10.77.0.1", "10.251.0.1:51820")),
    ];
    let mut pids = [0u32; 2];
    for (pid, (ns, side, me, peer, addrs)) in pids.iter_mut().zip(ends) {
        let dev = format!("{tag}{side}");
        *pid = boringtun_end(lab, bt, ns, &dev, &keys[me].0, &keys[peer].1, addrs, prefix)?;
    }
    Ok((pids[0], pids[1]))
}

/// One boringtun-cli end in `ns` (started under `prefix`: nothing, or valgrind), configured
/// with wg(8); returns its PID.
#[allow(clippy::too_many_arguments)]
fn boringtun_end(
    lab: &mut Lab,
    bt: &Path,
    ns: &str,
    dev: &str,
    key: &str,
    peer_pub: &str,
    (me, peer, endpoint): (&str, &str, &str),
    prefix: &[&str],
) -> Result<u32> {
    let mut argv: Vec<&str> = prefix.to_vec();
    argv.extend([
        bt.to_str().ok_or("path")?,
        dev,
        "--foreground",
        "--disable-drop-privileges",
        "--log",
        "/dev/null",
    ]);
    let child = lab
        .exec(ns, &argv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("boringtun-cli: {e}"))?;
    let pid = child.id();
    lab.others.push(child);
    // The UAPI socket appears once the device is up.
    let sock = Path::new("/var/run/wireguard").join(format!("{dev}.sock"));
    let t = Instant::now();
    let wait = if prefix.is_empty() { 10 } else { 120 };
    while !sock.exists() && t.elapsed() < Duration::from_secs(wait) {
        lab::sleep(Duration::from_millis(50))?;
    }
    let keyfile = lab.dir.join(format!("{dev}.key"));
    std::fs::write(&keyfile, key).map_err(|e| e.to_string())?;
    out(&mut lab.exec(
        ns,
        &[
            "wg",
            "set",
            dev,
            "private-key",
            keyfile.to_str().ok_or("path")?,
            "listen-port",
            "51820",
            "peer",
            peer_pub,
            "allowed-ips",
            &format!("{peer}/32"),
            "endpoint",
            endpoint,
        ],
    ))?;
    ip(&["-n", ns, "addr", "add", &format!("{me}/24"), "dev", dev])?;
    ip(&["-n", ns, "link", "set", dev, "mtu", "1420", "up"])?;
    Ok(pid)
}

/// Entry point.
pub fn run(bin: &Path, json: bool, secs: u32) -> Result {
    lab::catch_signals();
    let bt = ensure_tools()?;
    let mut lab = Lab::new(bin)?;
    let r = bench(&mut lab, &bt, secs);
    if r.is_err() {
        eprintln!("{}", lab.logs(&[]));
    }
    let rows = r?;
    drop(lab);
    let bt_row = rows.iter().find(|r| r.name == "boringtun");
    let ratio = |v: f64, f: fn(&Row) -> f64| match bt_row.map(f) {
        Some(b) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "-".into(),
    };
    let opt =
        |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
    println!("| tunnel | TCP 1 stream (Mbit/s) | TCP 4 streams (Mbit/s) | ping median, quiet (ms) | ping mean, after load (ms) | CPU s per GB | idle RSS (MiB) | peak RSS (MiB) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {:.0} ({}) | {:.0} ({}) | {:.3} ({}) | {:.3} ({}) | {} ({}) | {} | {} |",
            r.name,
            r.tcp1,
            ratio(r.tcp1, |b| b.tcp1),
            r.tcp4,
            ratio(r.tcp4, |b| b.tcp4),
            r.ping_p50_ms,
            ratio(r.ping_p50_ms, |b| b.ping_p50_ms),
            r.ping_ms,
            ratio(r.ping_ms, |b| b.ping_ms),
            opt(r.cpu_s_per_gb, 2),
            match r.cpu_s_per_gb {
                Some(c) => ratio(c, |b| b.cpu_s_per_gb.unwrap_or(0.0)),
                None => "-".into(),
            },
            opt(r.idle_rss_mib, 1),
            opt(r.rss_mib, 1)
        );
    }
    println!("(ratios in parentheses: to boringtun in the same run)");
    let inter: Vec<&Row> = rows
        .iter()
        .filter(|r| r.ping_interleaved_ms.is_some())
        .collect();
    if let [bt, sm] = inter[..] {
        let figures = [
            (" before any load", bt.ping_fresh_ms, sm.ping_fresh_ms),
            ("", bt.ping_interleaved_ms, sm.ping_interleaved_ms),
        ];
        let rounds = sm.ping_round_ratio.unwrap_or_default();
        for ((when, b, s), (ratio, lower)) in figures.into_iter().zip(rounds) {
            let (b, s) = (b.unwrap_or(0.0), s.unwrap_or(0.0));
            println!(
                "ping median, interleaved rounds{when} ({ROUNDS} x 100 each): boringtun {b:.3} ms, shadowmesh {s:.3} ms ({:.2}x); per round {ratio:.2}x, lower in {lower} of {ROUNDS}",
                s / b
            );
        }
    }
    if json {
        let js = |v: Option<f64>| {
            v.map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "null".into())
        };
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"name\":\"{}\",\"tcp1_mbps\":{:.1},\"tcp4_mbps\":{:.1},\"ping_ms\":{:.3},\"ping_p50_ms\":{:.3},\"ping_interleaved_ms\":{},\"ping_fresh_ms\":{},\"ping_round_ratio\":{},\"ping_fresh_round_ratio\":{},\"cpu_s_per_gb\":{},\"rss_mib\":{},\"idle_rss_mib\":{}}}",
                    r.name,
                    r.tcp1,
                    r.tcp4,
                    r.ping_ms,
                    r.ping_p50_ms,
                    js(r.ping_interleaved_ms),
                    js(r.ping_fresh_ms),
                    js(r.ping_round_ratio.map(|x| x[1].0)),
                    js(r.ping_round_ratio.map(|x| x[0].0)),
                    js(r.cpu_s_per_gb),
                    js(r.rss_mib),
                    js(r.idle_rss_mib)
                )
            })
            .collect();
        println!("{{\"seconds\":{secs},\"peers\":[{}]}}", items.join(","));
    }
    Ok(())
}

fn bench(lab: &mut Lab, bt: &Path, secs: u32) -> Result<Vec<Row>> {
    let (a, b) = lab.veth_pair()?;
    let mut rows = vec![];
    eprintln!("bench-tunnel: {secs} s per iperf3 run, namespaces {a} and {b}");
    rows.push(measure(lab, "raw", (&a, &b), "10.251.0.2", &[], secs)?);

    // boringtun, configured with wg(8) over its UAPI socket.
    let (pa, pb) = boringtun_pair(lab, bt, (&a, &b), &[])?;
    // ShadowMesh, fast lane (the default), up beside boringtun before either carries bulk
    // traffic: the first latency comparison is taken at the same moments for both.
    let (dst, pids) = shadowmesh_pair(lab, (&a, &b), ("sma", "smb"), "", &[])?;
    let _ = lab::ping(&a, "10.77.0.2", 3, "0.1")?;
    let _ = lab::ping(&a, &dst, 3, "0.1")?;
    let fresh = interleaved(&a, ["10.77.0.2", &dst])?;
    eprintln!(
        "  interleaved ping medians before any load: boringtun {:.3} ms, shadowmesh {:.3} ms",
        fresh.medians[0], fresh.medians[1]
    );
    rows.push(measure(
        lab,
        "boringtun",
        (&a, &b),
        "10.77.0.2",
        &[pa, pb],
        secs,
    )?);
    rows.push(measure(lab, "shadowmesh", (&a, &b), &dst, &pids, secs)?);
    let after = interleaved(&a, ["10.77.0.2", &dst])?;
    eprintln!(
        "  interleaved ping medians: boringtun {:.3} ms, shadowmesh {:.3} ms",
        after.medians[0], after.medians[1]
    );
    for r in rows.iter_mut() {
        let i = match r.name {
            "boringtun" => 0,
            "shadowmesh" => 1,
            _ => continue,
        };
        r.ping_fresh_ms = Some(fresh.medians[i]);
        r.ping_interleaved_ms = Some(after.medians[i]);
        if i == 1 {
            r.ping_round_ratio = Some([
                (fresh.round_ratio, fresh.second_lower),
                (after.round_ratio, after.second_lower),
            ]);
        }
    }

    // Then with data frames in QUIC datagrams.
    lab.kill9("sma")?;
    lab.kill9("smb")?;
    let (dst, pids) = shadowmesh_pair(
        lab,
        (&a, &b),
        ("smqa", "smqb"),
        "\toption fast_lane '0'\n",
        &[],
    )?;
    rows.push(measure(
        lab,
        "shadowmesh-quic",
        (&a, &b),
        &dst,
        &pids,
        secs,
    )?);
    Ok(rows)
}

/// One member daemon's key and config in namespace `ns` (not started): its PeerId and node.
pub(crate) fn shadowmesh_pair_config(
    lab: &mut Lab,
    ns: &str,
    name: &str,
    nk: &str,
) -> Result<(String, Node)> {
    let (key, id) = lab.keygen(name)?;
    let config = lab.write_config(name, &key, Some(nk), None, &[])?;
    Ok((
        id.clone(),
        Node {
            name: name.into(),
            config,
            ns: ns.to_string(),
            underlay: String::new(),
            peer_id: id,
            lan: None,
        },
    ))
}

/// Two ShadowMesh daemons, `names.0` in `a` bootstrapping from `names.1` in `b`, with `extra`
/// appended to both configs, each started under `prefix` (nothing, or valgrind); returns b's
/// overlay address and both PIDs (a's first) once they are connected.
pub(crate) fn shadowmesh_pair(
    lab: &mut Lab,
    (a, b): (&str, &str),
    names: (&str, &str),
    extra: &str,
    prefix: &[&str],
) -> Result<(String, Vec<u32>)> {
    let nk: String = "6d".repeat(32);
    let (key_b, id_b) = lab.keygen(names.1)?;
    let (key_a, _) = lab.keygen(names.0)?;
    let seed = format!("{id_b}@10.251.0.2:4433");
    let cfg_b = lab.write_config(names.1, &key_b, Some(&nk), None, &[])?;
    let cfg_a = lab.write_config(names.0, &key_a, Some(&nk), Some(&seed), &[])?;
    for c in [&cfg_a, &cfg_b] {
        let mut text = std::fs::read_to_string(c).map_err(|e| e.to_string())?;
        text.push_str(extra);
        std::fs::write(c, text).map_err(|e| e.to_string())?;
    }
    let node_b = Node {
        name: names.1.into(),
        config: cfg_b.clone(),
        ns: b.to_string(),
        underlay: "10.251.0.2".into(),
        peer_id: id_b.clone(),
        lan: None,
    };
    let node_a = Node {
        name: names.0.into(),
        config: cfg_a.clone(),
        ns: a.to_string(),
        underlay: "10.251.0.1".into(),
        peer_id: String::new(),
        lan: None,
    };
    lab.start_with(&node_b, prefix)?;
    lab.start_with(&node_a, prefix)?;
    let t = Instant::now();
    let mut dst = String::new();
    let wait = if prefix.is_empty() { 30 } else { 300 };
    while t.elapsed() < Duration::from_secs(wait) {
        lab::sleep(Duration::from_millis(200))?;
        let list = lab::members(&lab.ctl(&node_a, "peers"));
        if lab::member_of(&list, &id_b)
            .is_some_and(|m| crate::field(m, "connected").as_deref() == Some("true"))
        {
            dst = crate::field(&lab.ctl(&node_b, "status"), "overlay_ipv4").unwrap_or_default();
            break;
        }
    }
    if dst.is_empty() {
        return Err(format!(
            "the two ShadowMesh daemons did not connect:\n{}",
            lab.logs(&[node_a, node_b])
        ));
    }
    let pids: Vec<u32> = [names.0, names.1]
        .iter()
        .filter_map(|n| lab.daemon_pid(n))
        .collect();
    Ok((dst, pids))
}
