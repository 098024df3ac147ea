//! `cargo xtask profile-tunnel [--lane udp|quic] [--megabytes N] [--bin PATH]`: where the data
//! path spends its work, per packet, for the sender and the receiver of a TCP stream through a
//! two-daemon tunnel (the bench-tunnel namespaces).
//!
//! - Instructions: both daemons run under `valgrind --tool=callgrind` with instrumentation off; it
//!   is switched on (`callgrind_control -i on`) only once the tunnel is up, so the handshake's
//!   post-quantum cryptography is not counted, and off after iperf3 has sent N MB. Every
//!   function's own (exclusive) count is put in one group by its symbol: AEAD (ring's ChaCha20 and
//!   Poly1305: ours and QUIC's packet protection alike), QUIC (quinn, quinn-proto, rustls),
//!   runtime (tokio, mio), copies (memcpy/memmove/memset), allocator, ours (shadowmesh crates),
//!   kernel entry (the libc syscall wrappers' user-space part), other. Callgrind counts user
//!   space only: exact and repeatable, whatever else the machine does.
//! - System calls: the same traffic without valgrind, with `strace -c -f` attached to each
//!   daemon; calls per packet by name.
//!
//! Packets are the daemons' own counters (`peers`: tx_packets at the sender, rx_packets at the
//! receiver) over the measured interval.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::bench_tunnel::shadowmesh_pair;
use crate::mesh::{self, Lab, Node};
use crate::Result;

const GROUPS: &[&str] = &[
    "AEAD",
    "QUIC",
    "runtime",
    "copies",
    "allocator",
    "ours",
    "kernel entry",
    "other",
];

fn group(sym: &str) -> &'static str {
    let s = sym.to_ascii_lowercase();
    if s.contains("chacha") || s.contains("poly1305") || s.contains("aead") && s.contains("ring") {
        "AEAD"
    } else if s.contains("quinn") || s.contains("rustls") {
        "QUIC"
    } else if s.contains("tokio") || s.contains("mio::") {
        "runtime"
    } else if s.contains("memcpy") || s.contains("memmove") || s.contains("memset") {
        "copies"
    } else if s.contains("malloc")
        || s.contains("free")
        || s.contains("realloc")
        || s.contains("alloc::alloc")
        || s.contains("__rust_alloc")
        || s.contains("__rust_dealloc")
    {
        "allocator"
    } else if s.contains("shadowmesh") {
        "ours"
    } else if [
        "sendmsg",
        "sendto",
        "recvmsg",
        "recvmmsg",
        "recvfrom",
        "__libc_read",
        "__libc_write",
        "epoll_wait",
        "syscall",
        "read",
        "write",
    ]
    .iter()
    .any(|w| s.ends_with(w) || s.contains(&format!("{w} ")))
    {
        "kernel entry"
    } else {
        "other"
    }
}

/// Exclusive instruction counts per group from one callgrind output file.
fn annotate(file: &Path) -> Result<(u64, BTreeMap<&'static str, u64>)> {
    let out = Command::new("callgrind_annotate")
        .args(["--threshold=100", "--inclusive=no", "--auto=no"])
        .arg(file)
        .output()
        .map_err(|e| format!("callgrind_annotate: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut groups = BTreeMap::new();
    let mut total = 0u64;
    for l in text.lines() {
        let l = l.trim();
        // "1,234,567 (12.34%)  file:function [object]" or "1,234,567  file:function"
        let Some((num, rest)) = l.split_once(char::is_whitespace) else {
            continue;
        };
        let Ok(n) = num.replace(',', "").parse::<u64>() else {
            continue;
        };
        if rest.contains("PROGRAM TOTALS") {
            total = n;
            continue;
        }
        let sym = rest
            .trim_start()
            .trim_start_matches(|c: char| {
                c == '(' || c.is_ascii_digit() || c == '.' || c == '%' || c == ')'
            })
            .trim();
        if sym.is_empty() || !sym.contains(':') {
            continue;
        }
        *groups.entry(group(sym)).or_insert(0) += n;
    }
    if total == 0 {
        let keep = std::env::temp_dir().join("shadowmesh-callgrind.out");
        let _ = std::fs::copy(file, &keep);
        return Err(format!(
            "{}: no totals in callgrind_annotate's output (file kept as {}):\n{}",
            file.display(),
            keep.display(),
            text.lines().take(30).collect::<Vec<_>>().join("\n")
        ));
    }
    let counted: u64 = groups.values().sum();
    // Functions under the threshold go to "other".
    *groups.entry("other").or_insert(0) += total.saturating_sub(counted);
    Ok((total, groups))
}

fn counter(lab: &Lab, node: &Node, field: &str) -> u64 {
    let peers = lab.ctl(node, "peers");
    crate::field(&peers, field)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn iperf_bytes(lab: &mut Lab, server: &str, client: &str, dst: &str, mb: u32) -> Result {
    let s = mesh::netns_exec(server, &["iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    lab.others.push(s);
    mesh::sleep(Duration::from_millis(500))?;
    let out = mesh::netns_exec(client, &["iperf3", "-c", dst, "-n", &format!("{mb}M")])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "iperf3: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
    Ok(())
}

/// Entry point.
pub fn run(bin: &Path, args: &[String]) -> Result {
    mesh::catch_signals();
    let lane = args
        .iter()
        .position(|a| a == "--lane")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or("udp");
    let extra = match lane {
        "udp" => "",
        "quic" => "\toption fast_lane '0'\n",
        l => return Err(format!("--lane udp|quic, not {l}")),
    };
    let mb = crate::flag_value(args, "--megabytes").unwrap_or(8) as u32;
    for tool in [
        "valgrind",
        "callgrind_annotate",
        "callgrind_control",
        "strace",
        "iperf3",
    ] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool} >/dev/null")])
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            return Err(format!(
                "{tool} is missing: apt-get install valgrind strace iperf3"
            ));
        }
    }
    let mut lab = Lab::new(bin)?;
    let (a, b) = lab.veth_pair()?;

    // 1. Instructions, under callgrind.
    let cg = lab.dir.join("cg");
    std::fs::create_dir_all(&cg).map_err(|e| e.to_string())?;
    let out_file = format!("--callgrind-out-file={}/cg.%p", cg.display());
    let prefix = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        out_file.as_str(),
    ];
    eprintln!("profile-tunnel: lane {lane}, {mb} MB of TCP, daemons under callgrind (slow)");
    let (dst, pids) = shadowmesh_pair(&mut lab, (&a, &b), ("pa", "pb"), extra, &prefix)?;
    let (na, nb) = (lab.node_named("pa"), lab.node_named("pb"));
    let (tx0, rx0) = (
        counter(&lab, &na, "tx_packets"),
        counter(&lab, &nb, "rx_packets"),
    );
    for p in &pids {
        crate::run(Command::new("callgrind_control").args(["-i", "on", &p.to_string()]))?;
    }
    iperf_bytes(&mut lab, &b, &a, &dst, mb)?;
    for p in &pids {
        crate::run(Command::new("callgrind_control").args(["-d", &p.to_string()]))?;
        crate::run(Command::new("callgrind_control").args(["-i", "off", &p.to_string()]))?;
    }
    let (tx, rx) = (
        counter(&lab, &na, "tx_packets") - tx0,
        counter(&lab, &nb, "rx_packets") - rx0,
    );
    let mut ir = Vec::new();
    for (role, pid, packets) in [("sender", pids[0], tx), ("receiver", pids[1], rx)] {
        // The dump made by `-d` (the file named by PID carries the final dump at exit).
        let mut files: Vec<_> = std::fs::read_dir(&cg)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("cg.{pid}.")))
            })
            .collect();
        files.sort();
        let f = files
            .last()
            .ok_or_else(|| format!("no callgrind dump for {role} (pid {pid})"))?;
        let (total, groups) = annotate(f)?;
        ir.push((role, packets, total, groups));
    }
    lab.kill9("pa")?;
    lab.kill9("pb")?;

    // 2. System calls, without valgrind.
    let (dst, pids) = shadowmesh_pair(&mut lab, (&a, &b), ("sa", "sb"), extra, &[])?;
    let (na, nb) = (lab.node_named("sa"), lab.node_named("sb"));
    let (tx0, rx0) = (
        counter(&lab, &na, "tx_packets"),
        counter(&lab, &nb, "rx_packets"),
    );
    let mut tracers = Vec::new();
    for (i, p) in pids.iter().enumerate() {
        let f = lab.dir.join(format!("strace.{i}"));
        let c = Command::new("strace")
            .args(["-c", "-f", "-o"])
            .arg(&f)
            .args(["-p", &p.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        tracers.push((c, f));
    }
    mesh::sleep(Duration::from_millis(500))?;
    iperf_bytes(&mut lab, &b, &a, &dst, mb * 4)?;
    let (tx, rx) = (
        counter(&lab, &na, "tx_packets") - tx0,
        counter(&lab, &nb, "rx_packets") - rx0,
    );
    let mut sys = Vec::new();
    for (i, (mut c, f)) in tracers.into_iter().enumerate() {
        // SAFETY: kill with a PID we spawned.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let _ = c.wait();
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let packets = if i == 0 { tx } else { rx };
        let mut calls = BTreeMap::new();
        for l in text.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            // % time, seconds, usecs/call, calls, [errors], syscall
            if w.len() >= 5 && w[0].parse::<f64>().is_ok() {
                if let (Ok(n), Some(name)) = (w[3].parse::<u64>(), w.last()) {
                    if *name != "total" {
                        calls.insert(name.to_string(), n);
                    }
                }
            }
        }
        sys.push((packets, calls));
    }
    drop(lab);

    println!("### Instructions per packet, lane `{lane}` ({mb} MB of TCP through the tunnel)\n");
    println!("| group | sender | receiver |");
    println!("| --- | ---: | ---: |");
    for g in GROUPS {
        let cell = |i: usize| {
            let (_, p, t, gr) = &ir[i];
            let v = gr.get(g).copied().unwrap_or(0);
            format!(
                "{:.0} ({:.0}%)",
                v as f64 / (*p).max(1) as f64,
                100.0 * v as f64 / (*t).max(1) as f64
            )
        };
        println!("| {g} | {} | {} |", cell(0), cell(1));
    }
    println!(
        "| **total** | **{:.0}** | **{:.0}** |",
        ir[0].2 as f64 / ir[0].1.max(1) as f64,
        ir[1].2 as f64 / ir[1].1.max(1) as f64
    );
    println!(
        "\n(packets: sender {} sent, receiver {} received)\n",
        ir[0].1, ir[1].1
    );
    println!("### System calls per packet, lane `{lane}`\n");
    println!("| call | sender | receiver |");
    println!("| --- | ---: | ---: |");
    let mut names: Vec<&String> = sys.iter().flat_map(|(_, c)| c.keys()).collect();
    names.sort();
    names.dedup();
    let per = |i: usize, n: &str| {
        let (p, c) = &sys[i];
        c.get(n).copied().unwrap_or(0) as f64 / (*p).max(1) as f64
    };
    let mut totals = [0.0, 0.0];
    for n in names {
        let (s, r) = (per(0, n), per(1, n));
        totals[0] += s;
        totals[1] += r;
        if s >= 0.005 || r >= 0.005 {
            println!("| {n} | {s:.3} | {r:.3} |");
        }
    }
    println!("| **all** | **{:.3}** | **{:.3}** |", totals[0], totals[1]);
    println!(
        "\n(packets: sender {} sent, receiver {} received)",
        sys[0].0, sys[1].0
    );
    Ok(())
}
