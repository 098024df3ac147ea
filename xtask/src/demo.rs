//! `cargo xtask demo`: the main job (the namespace mesh, [`crate::mesh`]) and the older
//! two-process handshake demo on loopback (`--probe`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::*;

pub(crate) fn demo(args: &[String]) -> Result {
    if !args.iter().any(|a| a == "--probe") {
        let bin = release_bin()?;
        let rep = mesh::run(&bin, args.iter().any(|a| a == "--full"))?;
        return if rep.failures.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "demo checks failed:\n  {}",
                rep.failures.join("\n  ")
            ))
        };
    }
    run(cargo().args(["build", "--package", "shadowmesh", "--bin", "shadowmesh"]))?;
    let bin = bin_path();
    let dir = std::env::temp_dir().join(format!("shadowmesh-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = demo_in(&bin, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

pub(crate) fn demo_in(bin: &Path, dir: &Path) -> Result {
    let nk_hex = crate::support::random_network_key()?;
    let nk_file = dir.join("network_key");
    std::fs::write(&nk_file, &nk_hex).map_err(|e| e.to_string())?;
    let key_a = dir.join("a.key");
    let key_b = dir.join("b.key");
    for k in [&key_a, &key_b] {
        let out = Command::new(bin)
            .arg("keygen")
            .arg("--out")
            .arg(k)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("keygen: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    let mut procs = Procs(Vec::new());
    let mut listener = Command::new(bin)
        .args([
            "probe",
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
            "--key",
        ])
        .arg(&key_a)
        .arg("--network-key-file")
        .arg(&nk_file)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting listener: {e}"))?;
    let stdout = listener.stdout.take().expect("piped");
    procs.0.push(listener);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let listening = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "listener did not start".to_string())?;
    let a_id = field(&listening, "peer_id").ok_or("listener: no peer_id")?;
    let a_addr = field(&listening, "addr").ok_or("listener: no addr")?;

    let t0 = Instant::now();
    let out = Command::new(bin)
        .args([
            "probe",
            "--log-level",
            "warn",
            "--count",
            "2000",
            "--size",
            "1200",
            "--rekey",
            "--attack",
            "--key",
        ])
        .arg(&key_b)
        .arg("--network-key-file")
        .arg(&nk_file)
        .arg("--connect")
        .arg(format!("{a_id}@{a_addr}"))
        .output()
        .map_err(|e| format!("starting dialler: {e}"))?;
    let dialler = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!(
            "dialler failed:\n{dialler}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // The listener reports the dialler's connection when it closes.
    let mut l_peer = None;
    let mut l_closed = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while l_closed.is_none() && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("\"event\":\"peer\"") => l_peer = Some(line),
            Ok(line) if line.contains("\"event\":\"closed\"") => l_closed = Some(line),
            _ => {}
        }
    }
    drop(procs);
    let elapsed = t0.elapsed();
    let d_peer = dialler
        .lines()
        .find(|l| l.contains("\"event\":\"peer\""))
        .ok_or("dialler: no peer event")?;
    let d_sum = dialler
        .lines()
        .find(|l| l.contains("\"event\":\"summary\""))
        .ok_or("dialler: no summary")?;
    let l_peer = l_peer.ok_or("listener never reported the dialler")?;
    let l_closed = l_closed.ok_or("listener never reported the connection closing")?;
    let b_id = field(&l_peer, "peer_id").unwrap_or_default();
    let f = |l: &str, n: &str| field(l, n).unwrap_or_else(|| "?".into());

    println!();
    println!("ShadowMesh loopback demo: two daemons, one post-quantum hop");
    println!("  node A (listener)  {a_id}  udp {a_addr}");
    println!("  node B (dialler)   {b_id}");
    println!();
    println!("  step                               result");
    println!("  ---------------------------------  ------------------------------------------");
    println!(
        "  QUIC/TLS 1.3, ML-KEM-1024+X25519   established in {} ms (rtt {} ms)",
        f(d_peer, "handshake_ms"),
        f(d_peer, "rtt_ms")
    );
    println!(
        "  handshake bytes B->A / A->B        {} / {}",
        f(d_peer, "udp_tx_bytes"),
        f(d_peer, "udp_rx_bytes")
    );
    println!(
        "  A proved PeerId to B (HELLO)       {}",
        ok(f(d_peer, "peer_id") == a_id)
    );
    println!(
        "  B proved PeerId to A (HELLO)       {}",
        ok(!b_id.is_empty() && b_id != a_id)
    );
    println!(
        "  encrypted frames B->A->B           {} of {} echoed ({} bytes each way)",
        f(d_sum, "echoed"),
        f(d_sum, "sent"),
        f(d_sum, "bytes_each_way")
    );
    println!(
        "  rekey halfway (ML-KEM+X25519)      epoch {} on both ends ({} on A)",
        f(d_sum, "epoch"),
        f(&l_closed, "rekeys")
    );
    println!(
        "  replayed frame                     refused by A: replayed={}",
        f(&l_closed, "replayed")
    );
    println!(
        "  tampered frame                     refused by A: rejected={}",
        f(&l_closed, "rejected")
    );
    println!(
        "  total                              {:.2} s",
        elapsed.as_secs_f64()
    );
    println!();
    let good = f(d_peer, "peer_id") == a_id
        && f(d_sum, "echoed") == f(d_sum, "sent")
        && f(d_sum, "epoch") == "1"
        && f(&l_closed, "rekeys") == "1"
        && f(&l_closed, "replayed") == "1"
        && f(&l_closed, "rejected") == "1";
    if good {
        println!("demo: ok");
        Ok(())
    } else {
        Err(format!(
            "demo: unexpected outcome\n{dialler}{l_peer}\n{l_closed}"
        ))
    }
}
