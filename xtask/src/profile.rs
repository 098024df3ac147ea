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
//!
//! `--traffic ping`: the latency case instead of the bulk one. 200 echoes, 20 ms apart, through
//! the tunnel; counts are per echo (one packet each way) at the pinging and the echoing end,
//! and boringtun-cli runs the same 200 echoes under callgrind in the same run, so the user-space
//! work of one round trip is compared with WireGuard's. (Instructions are not time: a wake-up
//! after a quiet spell runs with cold caches, so the more code and data a round trip touches,
//! the more it costs beyond its count.)

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::bench_tunnel::shadowmesh_pair;
use crate::lab;
use crate::lab::{Lab, Node};
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
    let s = lab::netns_exec(server, &["iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    lab.others.push(s);
    lab::sleep(Duration::from_millis(500))?;
    let out = lab::netns_exec(client, &["iperf3", "-c", dst, "-n", &format!("{mb}M")])
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
    lab::catch_signals();
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
    let ping = match args
        .iter()
        .position(|a| a == "--traffic")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or("tcp")
    {
        "tcp" => false,
        "ping" => true,
        t => return Err(format!("--traffic tcp|ping, not {t}")),
    };
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
    if ping {
        eprintln!("profile-tunnel: lane {lane}, {ECHOES} echoes, daemons under callgrind (slow)");
    } else {
        eprintln!("profile-tunnel: lane {lane}, {mb} MB of TCP, daemons under callgrind (slow)");
    }
    let (dst, pids) = shadowmesh_pair(&mut lab, (&a, &b), ("pa", "pb"), extra, &prefix)?;
    let (na, nb) = (lab.node_named("pa"), lab.node_named("pb"));
    let (tx0, rx0) = (
        counter(&lab, &na, "tx_packets"),
        counter(&lab, &nb, "rx_packets"),
    );
    if ping {
        // Start-up work (joining the DHT, publishing the signed record: an ML-DSA-87 signature
        // is millions of instructions) would land on a few hundred echoes; let it pass.
        lab::sleep(Duration::from_secs(15))?;
        echoes(&a, &dst, 20)?;
    }
    for p in &pids {
        crate::run(Command::new("callgrind_control").args(["-i", "on", &p.to_string()]))?;
    }
    if ping {
        echoes(&a, &dst, ECHOES)?;
    } else {
        iperf_bytes(&mut lab, &b, &a, &dst, mb)?;
    }
    for p in &pids {
        crate::run(Command::new("callgrind_control").args(["-d", &p.to_string()]))?;
        crate::run(Command::new("callgrind_control").args(["-i", "off", &p.to_string()]))?;
    }
    let (tx, rx) = if ping {
        (ECHOES as u64, ECHOES as u64)
    } else {
        (
            counter(&lab, &na, "tx_packets") - tx0,
            counter(&lab, &nb, "rx_packets") - rx0,
        )
    };
    let mut ir = Vec::new();
    let roles = if ping {
        ["pinging end", "echoing end"]
    } else {
        ["sender", "receiver"]
    };
    for (role, pid, packets) in [(roles[0], pids[0], tx), (roles[1], pids[1], rx)] {
        let (total, groups) = annotate(&last_dump(&cg, pid, role)?)?;
        ir.push((role, packets, total, groups));
    }
    lab.kill9("pa")?;
    lab.kill9("pb")?;
    if ping {
        // boringtun, the same echoes, under callgrind too.
        let bt = crate::bench_tunnel::ensure_tools()?;
        let (pa, pb) = crate::bench_tunnel::boringtun_pair(&mut lab, &bt, (&a, &b), &prefix)?;
        // The handshake, outside the count.
        let _ = lab::ping(&a, "10.77.0.2", 5, "0.2")?;
        for p in [pa, pb] {
            crate::run(Command::new("callgrind_control").args(["-i", "on", &p.to_string()]))?;
        }
        echoes(&a, "10.77.0.2", ECHOES)?;
        for p in [pa, pb] {
            crate::run(Command::new("callgrind_control").args(["-d", &p.to_string()]))?;
            crate::run(Command::new("callgrind_control").args(["-i", "off", &p.to_string()]))?;
        }
        for (role, pid) in [
            ("boringtun, pinging end", pa),
            ("boringtun, echoing end", pb),
        ] {
            let (total, groups) = annotate(&last_dump(&cg, pid, role)?)?;
            ir.push((role, ECHOES as u64, total, groups));
        }
    }

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
    lab::sleep(Duration::from_millis(500))?;
    let (tx, rx) = if ping {
        echoes(&a, &dst, 2 * ECHOES)?;
        (2 * ECHOES as u64, 2 * ECHOES as u64)
    } else {
        iperf_bytes(&mut lab, &b, &a, &dst, mb * 4)?;
        (
            counter(&lab, &na, "tx_packets") - tx0,
            counter(&lab, &nb, "rx_packets") - rx0,
        )
    };
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

    let unit = if ping { "echo" } else { "packet" };
    if ping {
        println!("### Instructions per echo, lane `{lane}` ({ECHOES} echoes through the tunnel)\n");
    } else {
        println!(
            "### Instructions per packet, lane `{lane}` ({mb} MB of TCP through the tunnel)\n"
        );
    }
    let heads: Vec<&str> = ir.iter().map(|r| r.0).collect();
    println!("| group | {} |", heads.join(" | "));
    println!("| --- |{}", " ---: |".repeat(ir.len()));
    for g in GROUPS {
        let cells: Vec<String> = ir
            .iter()
            .map(|(_, p, t, gr)| {
                let v = gr.get(g).copied().unwrap_or(0);
                format!(
                    "{:.0} ({:.0}%)",
                    v as f64 / (*p).max(1) as f64,
                    100.0 * v as f64 / (*t).max(1) as f64
                )
            })
            .collect();
        println!("| {g} | {} |", cells.join(" | "));
    }
    let totals: Vec<String> = ir
        .iter()
        .map(|(_, p, t, _)| format!("**{:.0}**", *t as f64 / (*p).max(1) as f64))
        .collect();
    println!("| **total** | {} |", totals.join(" | "));
    if ping && ir.len() == 4 {
        let per = |i: usize| ir[i].2 as f64 / ir[i].1.max(1) as f64;
        println!(
            "\n(ShadowMesh / boringtun per echo: pinging end {:.2}x, echoing end {:.2}x)\n",
            per(0) / per(2).max(1.0),
            per(1) / per(3).max(1.0)
        );
    } else {
        println!(
            "\n(packets: sender {} sent, receiver {} received)\n",
            ir[0].1, ir[1].1
        );
    }
    println!("### System calls per {unit}, lane `{lane}`\n");
    println!("| call | {} | {} |", roles[0], roles[1]);
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
        "\n({unit}s: {} at the {}, {} at the {})",
        sys[0].0, roles[0], sys[1].0, roles[1]
    );
    Ok(())
}

/// Echoes in the `--traffic ping` case.
const ECHOES: u32 = 200;

/// `n` pings from namespace `ns` to `dst`, 20 ms apart; fails if one is lost.
fn echoes(ns: &str, dst: &str, n: u32) -> Result {
    let p = lab::ping(ns, dst, n, "0.02")?;
    if p.received < n {
        return Err(format!("{} of {n} echoes from {dst} came back", p.received));
    }
    Ok(())
}

/// The dump `callgrind_control -d` made for `pid` (the file named by PID alone carries the
/// final dump at exit).
fn last_dump(dir: &Path, pid: u32, role: &str) -> Result<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("cg.{pid}.")))
        })
        .collect();
    files.sort();
    files
        .pop()
        .ok_or_else(|| format!("no callgrind dump for {role} (pid {pid})"))
}
