//! `cargo xtask hil`: the hardware-in-the-loop scenario; `--backend virtual` runs one mesh of
//! four architectures (qemu-user) in namespaces, `--backend ssh` real or stand-in boards
//! ([`crate::hil_ssh`]).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::*;

/// `cargo xtask hil --backend virtual`: one mesh of four architectures in network namespaces.
pub(crate) fn hil(args: &[String]) -> Result {
    let backend = args
        .iter()
        .position(|a| a == "--backend")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or("virtual");
    if backend == "ssh" {
        let secs = flag_value(args, "--seconds").unwrap_or(5) as u32;
        if args.iter().any(|a| a == "--lab") {
            return hil_ssh::lab(secs);
        }
        let inv = args
            .iter()
            .position(|a| a == "--inventory")
            .and_then(|i| args.get(i + 1))
            .ok_or("--backend ssh needs --inventory FILE (or --lab; see hw-tests/README.md)")?;
        return hil_ssh::run(Path::new(inv), secs);
    }
    if backend != "virtual" {
        return Err(format!("unknown back end {backend} (virtual | ssh)"));
    }
    let foreign = [
        "aarch64-unknown-linux-musl",
        "mipsel-unknown-linux-musl",
        "mips-unknown-linux-musl",
    ];
    for t in foreign {
        cross_build(t)?;
    }
    run(cargo().args(["build", "-p", "shadowmesh", "--bin", "shadowmesh"]))?;
    let host = bin_path();
    let mut lab = lab::Lab::new(&host)?;
    hil_virtual(&mut lab, &host, &foreign)
}

pub(crate) fn hil_virtual(lab: &mut lab::Lab, host: &Path, foreign: &[&str]) -> Result {
    // A switch namespace with a bridge; one namespace per node, a veth into the bridge each.
    let sw = lab.ns("sw")?;
    lab::ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    lab::ip(&["-n", &sw, "link", "set", "br0", "up"])?;
    let archs: Vec<(&str, Option<&str>)> = std::iter::once(("x86_64", None))
        .chain(
            foreign
                .iter()
                .map(|t| (t.split('-').next().unwrap_or(t), Some(*t))),
        )
        .collect();
    let nk: String = "3c".repeat(32);
    let mut nodes = Vec::new();
    let dir = lab.dir.clone();
    for (i, (arch, target)) in archs.iter().enumerate() {
        let addr = format!("10.201.0.{}", i + 1);
        let ns = lab.underlay_ns(&sw, &format!("n{i}"), &addr)?;
        let d = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        let key = d.join("key");
        let out = Command::new(host)
            .args(["keygen", "--out"])
            .arg(&key)
            .output()
            .map_err(|e| e.to_string())?;
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        nodes.push((ns, arch.to_string(), *target, addr, d, key, pid));
    }
    let seed = format!("{}@{}:4433", nodes[0].6, nodes[0].3);
    let mut cfgs = Vec::new();
    for (i, (ns, _arch, target, addr, d, key, _)) in nodes.iter().enumerate() {
        let mut cfg = format!(
            "config shadowmesh 'main'\n\toption listen_address '{addr}'\n\toption listen_port '4433'\n\toption key_file '{}'\n\toption state_dir '{}'\n\toption network_key '{nk}'\n",
            key.display(),
            d.display()
        );
        if i > 0 {
            cfg += &format!("\tlist bootstrap '{seed}'\n");
        }
        if target.is_some_and(|t| t.starts_with("mips-")) {
            // qemu-mips cannot translate quinn-udp's sendmsg control messages (every send fails
            // with EINVAL): plain sendto/recvfrom there. Real ath79 boards are unaffected.
            cfg += "\toption plain_udp '1'\n";
        }
        let path = d.join("shadowmesh.conf");
        std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        match target {
            None => {
                c.arg(host);
            }
            Some(t) => {
                let (_, runner) = cross_recipe(t)?;
                c.args(runner.split_whitespace());
                c.arg(target_dir().join(t).join("release").join("shadowmesh"));
            }
        }
        c.arg("run").arg("--config").arg(&path);
        c.stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("log")).map_err(|e| e.to_string())?);
        lab.others.push(c.spawn().map_err(|e| e.to_string())?);
        cfgs.push(path);
    }
    let ctl = |cfg: &Path, args: &[&str]| -> String {
        Command::new(host)
            .args(args)
            .arg("--config")
            .arg(cfg)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let t0 = Instant::now();
    let mut converged = None;
    while t0.elapsed() < Duration::from_secs(90) {
        let all = cfgs.iter().all(|c| {
            field(&ctl(c, &["status"]), "dht_contacts")
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|n| n >= 3)
        });
        if all {
            converged = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let converged = converged.ok_or_else(|| {
        let logs: Vec<String> = nodes
            .iter()
            .map(|n| std::fs::read_to_string(n.4.join("log")).unwrap_or_default())
            .collect();
        format!(
            "the four nodes did not converge in 90 s; logs:\n{}",
            logs.join("\n---\n")
        )
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let mut rows = Vec::new();
    let mut ok = true;
    for (i, a) in nodes.iter().enumerate() {
        for (j, b) in nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            // Records appear once each node has joined and published (seconds under qemu).
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut r = ctl(&cfgs[i], &["dht", "--lookup", &b.6]);
            while field(&r, "found").as_deref() != Some("true") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
                r = ctl(&cfgs[i], &["dht", "--lookup", &b.6]);
            }
            let found = field(&r, "found").as_deref() == Some("true");
            ok &= found;
            rows.push((
                a.1.clone(),
                b.1.clone(),
                found,
                field(&r, "lookup_ms").unwrap_or_default(),
            ));
        }
    }
    // Through the tunnels: every node pings every other's overlay address, and each pair runs
    // a short iperf3 (TCP, one stream; the emulated daemons set the pace).
    let overlay: Vec<String> = cfgs
        .iter()
        .map(|c| field(&ctl(c, &["status"]), "overlay_ipv4").unwrap_or_default())
        .collect();
    let t_sessions = Instant::now();
    while t_sessions.elapsed() < Duration::from_secs(60) {
        let all = cfgs.iter().all(|c| {
            field(&ctl(c, &["status"]), "peers_connected")
                .and_then(|v| v.parse::<usize>().ok())
                .is_some_and(|n| n + 1 >= nodes.len())
        });
        if all {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut pings = Vec::new();
    for (i, a) in nodes.iter().enumerate() {
        for (j, b) in nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            // The first packets may wait for a session (ML-DSA under emulation): warm up.
            let deadline = Instant::now() + Duration::from_secs(20);
            while lab::ping(&a.0, &overlay[j], 1, "0.2")?.received == 0 && Instant::now() < deadline
            {
            }
            let mut p = lab::ping(&a.0, &overlay[j], 5, "0.2")?;
            if p.received < p.sent {
                p = lab::ping(&a.0, &overlay[j], 5, "0.2")?;
            }
            ok &= p.received == p.sent;
            pings.push((a.1.clone(), b.1.clone(), p.received, p.sent, p.avg_ms));
        }
    }
    let mut iperfs = Vec::new();
    for i in 0..nodes.len() {
        for j in i + 1..nodes.len() {
            // Emulated daemons on a busy host can miss iperf3's control handshake: one retry.
            let mut r =
                lab::iperf3_streams(&mut lab.others, &nodes[j].0, &nodes[i].0, &overlay[j], 2, 1);
            if r.is_err() {
                r = lab::iperf3_streams(
                    &mut lab.others,
                    &nodes[j].0,
                    &nodes[i].0,
                    &overlay[j],
                    2,
                    1,
                );
            }
            let mbps = match r {
                Ok((m, _)) => Some(m),
                Err(e) => {
                    eprintln!("iperf3 {} -> {}: {e}", nodes[i].1, nodes[j].1);
                    None
                }
            };
            ok &= mbps.is_some_and(|m| m > 0.0);
            iperfs.push((nodes[i].1.clone(), nodes[j].1.clone(), mbps));
        }
    }
    let rss: Vec<u64> = lab
        .others
        .iter()
        .take(nodes.len())
        .map(|p| rss_kib(p.id()))
        .collect();
    let mut md = String::from("# HIL report (virtual back end)\n\n");
    md += &format!("Four daemons in network namespaces (foreign architectures under qemu-user); DHT converged in {:.2} s.\n\n", converged.as_secs_f64());
    md += "| node | architecture | RSS (KiB, incl. qemu) |\n| --- | --- | ---: |\n";
    for (i, n) in nodes.iter().enumerate() {
        md += &format!("| n{i} | {} | {} |\n", n.1, rss[i]);
    }
    md += "\n| from | looks up | found | ms |\n| --- | --- | --- | ---: |\n";
    for (a, b, f, ms) in &rows {
        md += &format!("| {a} | {b} | {f} | {ms} |\n");
    }
    md += "\n| from | pings | received | avg ms |\n| --- | --- | ---: | ---: |\n";
    for (a, b, r, n, ms) in &pings {
        md += &format!("| {a} | {b} | {r}/{n} | {ms:.2} |\n");
    }
    md += "\n| iperf3 TCP 2 s | to | Mbit/s |\n| --- | --- | ---: |\n";
    for (a, b, m) in &iperfs {
        md += &format!(
            "| {a} | {b} | {} |\n",
            m.map(|m| format!("{m:.1}"))
                .unwrap_or_else(|| "failed".into())
        );
    }
    md += "\nForeign architectures run under qemu-user on this x86_64 host: their figures measure the emulator, not the boards.\n";
    let json_rows: Vec<String> = rows
        .iter()
        .map(|(a, b, f, ms)| {
            format!(
                "{{\"from\":\"{a}\",\"to\":\"{b}\",\"found\":{f},\"lookup_ms\":{}}}",
                if ms.is_empty() { "null" } else { ms }
            )
        })
        .collect();
    let json_nodes: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "{{\"arch\":\"{}\",\"peer_id\":\"{}\",\"rss_kib\":{}}}",
                n.1, n.6, rss[i]
            )
        })
        .collect();
    let json_pings: Vec<String> = pings
        .iter()
        .map(|(a, b, r, n, ms)| {
            format!("{{\"from\":\"{a}\",\"to\":\"{b}\",\"received\":{r},\"sent\":{n},\"avg_ms\":{ms:.3}}}")
        })
        .collect();
    let json_iperf: Vec<String> = iperfs
        .iter()
        .map(|(a, b, m)| {
            format!(
                "{{\"from\":\"{a}\",\"to\":\"{b}\",\"mbps\":{}}}",
                m.map(|m| format!("{m:.1}"))
                    .unwrap_or_else(|| "null".into())
            )
        })
        .collect();
    let json = format!(
        "{{\"backend\":\"virtual\",\"converged_s\":{:.3},\"nodes\":[{}],\"lookups\":[{}],\"pings\":[{}],\"iperf3\":[{}]}}",
        converged.as_secs_f64(),
        json_nodes.join(","),
        json_rows.join(","),
        json_pings.join(","),
        json_iperf.join(",")
    );
    let out = target_dir().join("hil");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    std::fs::write(out.join("report.md"), &md).map_err(|e| e.to_string())?;
    std::fs::write(out.join("report.json"), &json).map_err(|e| e.to_string())?;
    println!("{md}");
    println!(
        "report: {} and report.json",
        out.join("report.md").display()
    );
    if ok {
        Ok(())
    } else {
        Err("some lookups, pings or iperf3 runs across architectures failed".into())
    }
}
