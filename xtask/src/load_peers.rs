//! `cargo xtask load-peers [--peers N] [--hold SECONDS] [--json] [--heaptrack FILE]`: one
//! member daemon (release build,
//! TUN and all) in a namespace, and the load generator (`daemon/shadowmesh/examples/loadgen.rs`)
//! in another holding N member connections to it. Reports the daemon's resident memory and idle
//! CPU with no peers and with N, the cost per peer, and the handshake rate in waves of rising
//! concurrency with the number of Retry (stateless cookie) answers in each, which shows where
//! the defence engages (`retry_above` in-flight handshakes, 16 by default).
//!
//! `--json` prints one object: `peers` (connected), `idle_rss_mib`, `rss_mib`, `kib_per_peer`,
//! `handshakes_per_s` (the best wave), `idle_cpu_percent`. `--heaptrack FILE` runs the daemon
//! under heaptrack and kills it at the end with every member still connected, so that
//! `heaptrack_print --print-leaks 1 FILE.zst` lists the heap as it was (its RSS figures include
//! heaptrack's own).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench_tunnel::{cpu_s, shadowmesh_pair_config};
use crate::lab;
use crate::lab::Lab;
use crate::{field, Result};

fn json_num(line: &str, key: &str) -> f64 {
    field(line, key).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// Entry point.
/// The first process under `pid` (children, then theirs) whose name is `comm`.
fn descendant(pid: u32, comm: &str) -> Option<u32> {
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        for c in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let name = std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
            if name.trim() == comm {
                return Some(c);
            }
            frontier.push(c);
        }
    }
    None
}

pub fn run(bin: &Path, args: &[String]) -> Result {
    lab::catch_signals();
    let peers = crate::flag_value(args, "--peers").unwrap_or(1000);
    let hold = crate::flag_value(args, "--hold").unwrap_or(30);
    let json = args.iter().any(|a| a == "--json");
    let heaptrack = args
        .iter()
        .position(|a| a == "--heaptrack")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let gen = crate::release_example("loadgen")?;
    let mut lab = Lab::new(bin)?;
    let (a, b) = lab.veth_pair()?;
    let nk: String = "6d".repeat(32);
    let (target, node) = shadowmesh_pair_config(&mut lab, &a, "target", &nk)?;
    match &heaptrack {
        Some(file) => lab.start_with(&node, &["heaptrack", "-o", file])?,
        None => lab.start(&node)?,
    }
    let child_pid = lab.daemon_pid("target").ok_or("no daemon")?;
    let control = lab.dir.join("target").join("control.sock");
    let t = Instant::now();
    while !control.exists() && t.elapsed() < Duration::from_secs(10) {
        lab::sleep(Duration::from_millis(100))?;
    }
    // Under heaptrack the child is its wrapper: measure (and at the end stop) the daemon.
    let pid = match heaptrack {
        Some(_) => descendant(child_pid, "shadowmesh").ok_or("no daemon under heaptrack")?,
        None => child_pid,
    };
    // Idle with no peers.
    lab::sleep(Duration::from_secs(2))?;
    let (c0, rss0) = (cpu_s(pid), crate::rss_kib(pid));
    lab::sleep(Duration::from_secs(10))?;
    let idle0 = (cpu_s(pid) - c0) / 10.0 * 100.0;
    eprintln!(
        "load-peers: target {} idle: {:.1} MiB, {idle0:.2}% CPU; {peers} peers from the generator",
        &target[..12],
        rss0 as f64 / 1024.0
    );

    // One address per few peers, as real gateways have (a gateway limits handshakes per
    // source address): 10.251.0.2-251 on the generator's side of the link.
    let mut binds = vec!["10.251.0.2".to_string()];
    for i in 3..=251 {
        let a = format!("10.251.0.{i}");
        crate::lab::ip(&["-n", &b, "addr", "add", &format!("{a}/32"), "dev", "eth0"])?;
        binds.push(a);
    }
    let binds = binds.join(",");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &b])
        .arg(&gen)
        .args([
            "--target",
            &format!("{target}@10.251.0.1:4433"),
            "--network-key",
            &nk,
            "--bind",
            &binds,
            "--peers",
            &peers.to_string(),
            "--control",
        ])
        .arg(&control)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("loadgen: {e}"))?;
    let stdin = child.stdin.take();
    let mut lines = BufReader::new(child.stdout.take().ok_or("stdout")?).lines();
    lab.others.push(child);
    let mut waves = Vec::new();
    let mut connected = 0.0;
    let t = Instant::now();
    for l in lines.by_ref() {
        let l = l.map_err(|e| e.to_string())?;
        eprintln!("  {l}");
        if l.contains("\"wave\"") {
            waves.push(l.clone());
        }
        if l.contains("\"ready\"") {
            connected = json_num(&l, "connected");
            break;
        }
        if t.elapsed() > Duration::from_secs(900) {
            return Err("the generator did not finish in 15 minutes".into());
        }
        lab::check_interrupt()?;
    }
    // Settle (the last handshakes' tasks, first keepalives), then measure idle with N peers.
    lab::sleep(Duration::from_secs(5))?;
    let status = lab.ctl(&node, "status");
    let (c1, rss1) = (cpu_s(pid), crate::rss_kib(pid));
    lab::sleep(Duration::from_secs(hold))?;
    let idle1 = (cpu_s(pid) - c1) / hold as f64 * 100.0;
    let rss_end = crate::rss_kib(pid);
    let status_end = lab.ctl(&node, "status");
    drop(stdin);
    let end = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    if let Some(file) = &heaptrack {
        // Killed with everything still allocated, so that heaptrack's "leaks" are the heap
        // with the members connected; the wrapper then writes the trace (the lab would kill
        // the wrapper too, before it does).
        // SAFETY: kill(2) on the daemon this run started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        lab.wait_daemon("target", Duration::from_secs(300))?;
        eprintln!("load-peers: heap trace in {file}.zst (heaptrack_print --print-leaks 1)");
    }
    drop(lab);

    let per_peer = (rss1.max(rss_end) as f64 - rss0 as f64) / connected.max(1.0);
    if json {
        let best = waves
            .iter()
            .map(|w| json_num(w, "per_second"))
            .fold(0.0, f64::max);
        println!(
            "{{\"peers\":{connected:.0},\"idle_rss_mib\":{:.2},\"rss_mib\":{:.2},\"kib_per_peer\":{per_peer:.2},\"handshakes_per_s\":{best:.1},\"idle_cpu_percent\":{idle1:.3}}}",
            rss0 as f64 / 1024.0,
            rss1.max(rss_end) as f64 / 1024.0
        );
        return Ok(());
    }
    println!("| measure | value |");
    println!("| --- | ---: |");
    println!("| peers connected (generator) | {connected:.0} of {peers} |");
    println!(
        "| members connected (daemon), at the start and end of the hold | {:.0}, {:.0} |",
        json_num(&status, "peers_connected"),
        json_num(&status_end, "peers_connected")
    );
    println!(
        "| still connected when the generator stopped | {:.0} |",
        json_num(&end, "still_connected")
    );
    println!("| RSS, no peers | {:.1} MiB |", rss0 as f64 / 1024.0);
    println!(
        "| RSS, {connected:.0} peers (start / end of {hold} s hold) | {:.1} / {:.1} MiB |",
        rss1 as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    println!("| per peer | {per_peer:.1} KiB |");
    println!("| idle CPU, no peers | {idle0:.2}% of a core |");
    println!("| idle CPU, {connected:.0} peers (keepalives, timers) | {idle1:.2}% of a core |");
    println!();
    println!("| handshakes in flight | handshakes | per second | Retry answers |");
    println!("| ---: | ---: | ---: | ---: |");
    for w in &waves {
        println!(
            "| {:.0} | {:.0} | {:.1} | {:.0} |",
            json_num(w, "concurrency"),
            json_num(w, "handshakes"),
            json_num(w, "per_second"),
            json_num(w, "retries")
        );
    }
    let _ = std::io::stdout().flush();
    Ok(())
}
