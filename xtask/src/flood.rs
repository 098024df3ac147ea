//! Strangers against a gateway (part of `cargo xtask test` as root; alone: `cargo xtask
//! flood [--seconds N]`): a release daemon in a network namespace; from a second namespace a
//! stranger opens 2,000 connections, then floods handshake Initials for 30 s
//! (`daemon/shadowmesh/examples/flood.rs`); from a third, a member keeps dialling, 250 ms apart,
//! each a full member handshake. The member's connect times during the flood (95th percentile
//! under 1 s), the daemon's peak RSS (under [`RSS_BOUND_MIB`]), how many stranger connections
//! it holds, and whether it serves at once after the flood are checked and reported.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::lab;
use crate::lab::{ip, Lab, Node};
use crate::mesh::Report;
use crate::Result;

/// The daemon's resident memory must stay under this during the flood: its idle ~5 MiB, up to
/// 64 handshakes in flight (~100 KiB each with quinn's buffers), 8 stranger connections from
/// the flooding source, the flood's Initials queued in its socket buffers (~2 MiB) and the
/// allocator's slack.
pub const RSS_BOUND_MIB: f64 = 48.0;

/// Runs the scenario with daemon `bin` and flood tool `flood`; the flood lasts `seconds`.
pub fn run(bin: &Path, flood: &Path, seconds: u64) -> Result<Report> {
    lab::catch_signals();
    lab::require_tools(&["ip"], "run .ci/setup (apt-get install iproute2)")?;
    let mut lab = Lab::new(bin)?;
    let r = scenario(&mut lab, flood, seconds);
    if r.as_ref().map_or(true, |rep| !rep.failures.is_empty()) {
        eprintln!("daemon log:\n{}", lab.logs(&[lab.node_named("target")]));
    }
    r
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Runs the member dialler for `n` dials; returns each dial's milliseconds and the failures.
fn member_dials(
    lab: &Lab,
    flood: &Path,
    ns: &str,
    args: &[&str],
    n: u32,
) -> Result<(Vec<f64>, u32)> {
    let out = lab
        .exec(ns, &[])
        .arg(flood)
        .args(args)
        .args(["--member-dials", &n.to_string()])
        .output()
        .map_err(|e| format!("flood: {e}"))?;
    let (mut ms, mut failed) = (vec![], 0);
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let t = crate::field(l, "dial_ms").and_then(|v| v.parse::<f64>().ok());
        match (t, l.contains("\"ok\":true")) {
            (Some(t), true) => ms.push(t),
            _ => failed += 1,
        }
    }
    Ok((ms, failed))
}

fn scenario(lab: &mut Lab, flood: &Path, seconds: u64) -> Result<Report> {
    let mut rep = Report::default();
    let t0 = Instant::now();
    println!("strangers: a gateway, a flooding stranger and a member in network namespaces");
    let sw = lab.ns("sw")?;
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &sw, "link", "set", "br0", "up"])?;
    let nk: String = "5c".repeat(32);
    let t_ns = lab.underlay_ns(&sw, "t", "10.250.0.1")?;
    let (key, id) = lab.keygen("target")?;
    let target = Node {
        name: "target".into(),
        config: lab.write_config("target", &key, Some(&nk), None, &[])?,
        ns: t_ns,
        underlay: "10.250.0.1".into(),
        peer_id: id.clone(),
        lan: None,
    };
    lab.start(&target)?;
    let pid = lab.daemon_pid("target").ok_or("no daemon")?;
    let s_ns = lab.underlay_ns(&sw, "s", "10.250.0.66")?;
    let m_ns = lab.underlay_ns(&sw, "m", "10.250.0.10")?;
    let control = lab.dir.join("target").join("control.sock");
    let t = Instant::now();
    while !control.exists() && t.elapsed() < Duration::from_secs(10) {
        lab::sleep(Duration::from_millis(100))?;
    }
    let to = format!("{id}@10.250.0.1:4433");
    let member = [
        "--target",
        &to,
        "--bind",
        "10.250.0.10",
        "--network-key",
        &nk,
    ];
    let stranger = ["--target", &to, "--bind", "10.250.0.66"];

    let (mut quiet, qf) = member_dials(lab, flood, &m_ns, &member, 8)?;
    let rss0 = crate::rss_kib(pid) as f64 / 1024.0;
    rep.check(
        "a member connects to the idle gateway",
        qf == 0 && !quiet.is_empty(),
        format!(
            "{} dials, median {:.0} ms, idle RSS {rss0:.1} MiB",
            quiet.len(),
            percentile(&mut quiet, 0.5)
        ),
    );

    // 2,000 stranger connections from one address.
    let mut conns = lab
        .exec(&s_ns, &[])
        .arg(flood)
        .args(stranger)
        .args(["--connections", "2000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("flood: {e}"))?;
    let mut line = String::new();
    BufReader::new(conns.stdout.take().ok_or("stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    lab.others.push(conns);
    let status = lab.ctl(&target, "status");
    let held: u64 = crate::field(&status, "strangers")
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    rep.check(
        "a stranger opening 2,000 connections from one address holds at most 8",
        held <= 8,
        format!(
            "{} held by the gateway; the stranger saw {}",
            held,
            line.trim()
        ),
    );
    let rss_conns = crate::rss_kib(pid) as f64 / 1024.0;

    // The Initial flood, with the member dialling through it and RSS sampled.
    let mut fl = lab
        .exec(&s_ns, &[])
        .arg(flood)
        .args(stranger)
        .args(["--initials", &seconds.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("flood: {e}"))?;
    let flood_out = fl.stdout.take().ok_or("stdout")?;
    lab.others.push(fl);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        let until = Instant::now() + Duration::from_secs(seconds);
        std::thread::spawn(move || {
            while Instant::now() < until {
                peak.fetch_max(crate::rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    lab::sleep(Duration::from_secs(2))?;
    // About 250 ms apart, through the rest of the flood.
    let n = ((seconds.saturating_sub(4)) * 1000 / 350).max(8) as u32;
    let (mut during, df) = member_dials(lab, flood, &m_ns, &member, n)?;
    let _ = sampler.join();
    let mut flood_line = String::new();
    BufReader::new(flood_out)
        .read_line(&mut flood_line)
        .map_err(|e| e.to_string())?;
    let status = lab.ctl(&target, "status");
    let num = |k: &str| crate::field(&status, k).unwrap_or_default();
    let p95 = percentile(&mut during, 0.95);
    rep.check(
        &format!(
            "during a {seconds} s Initial flood a member connects in under 1 s (95th percentile)"
        ),
        df == 0 && p95 < 1000.0,
        format!(
            "{} dials, {df} failed, median {:.0} ms, p95 {p95:.0} ms, max {:.0} ms; flood {}; \
             retries {}, refused {} (in flight) + {} (source)",
            during.len(),
            percentile(&mut during, 0.5),
            percentile(&mut during, 1.0),
            flood_line.trim(),
            num("handshake_retries"),
            num("handshakes_refused"),
            num("handshakes_refused_source"),
        ),
    );
    let peak_mib = peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0;
    rep.check(
        &format!("the gateway's RSS stays under {RSS_BOUND_MIB} MiB"),
        peak_mib < RSS_BOUND_MIB && peak_mib > 0.0,
        format!("idle {rss0:.1} MiB, after the connections {rss_conns:.1}, peak in the flood {peak_mib:.1}"),
    );
    let (mut after, af) = member_dials(lab, flood, &m_ns, &member, 8)?;
    rep.check(
        "after the flood a member connects at once",
        af == 0 && !after.is_empty(),
        format!(
            "{} dials, median {:.0} ms",
            after.len(),
            percentile(&mut after, 0.5)
        ),
    );
    println!();
    println!("{}", rep.table());
    println!("took {:.1} s", t0.elapsed().as_secs_f64());
    Ok(rep)
}
