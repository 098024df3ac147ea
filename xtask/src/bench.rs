//! `cargo xtask bench`, `count-aead` and `count-handshake`: crypto primitive costs beside
//! OpenSSL and the RustCrypto crate, handshake costs, and executed instructions per frame and
//! per handshake under qemu.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::*;

/// Runs a bench binary and collects its `name value unit` lines.
pub(crate) fn bench_lines(cmd: &mut Command) -> Result<Vec<(String, f64, String)>> {
    eprintln!("+ {cmd:?}");
    let out = cmd
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed"));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (n, v, u) = (it.next()?, it.next()?.parse().ok()?, it.next()?);
            Some((n.to_string(), v, u.to_string()))
        })
        .collect())
}

/// OpenSSL's ChaCha20-Poly1305 seal throughput on 1,400-byte buffers, in MB/s.
pub(crate) fn openssl_chacha(seconds: u32, decrypt: bool) -> Result<f64> {
    let out = Command::new("openssl")
        .arg("speed")
        .args(if decrypt { &["-decrypt"][..] } else { &[] })
        .args([
            "-aead",
            "-bytes",
            "1400",
            "-evp",
            "chacha20-poly1305",
            "-seconds",
        ])
        .arg(seconds.to_string())
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.to_lowercase().starts_with("chacha20-poly1305"))
        .ok_or("openssl speed printed no ChaCha20-Poly1305 line")?;
    let k: f64 = line
        .split_whitespace()
        .last()
        .and_then(|v| v.trim_end_matches('k').parse().ok())
        .ok_or("openssl speed: unreadable figure")?;
    Ok(k * 1000.0 / 1e6)
}

pub(crate) fn bench(quick: bool) -> Result {
    let q: &[&str] = if quick { &["--", "--quick"] } else { &[] };
    let mut all = bench_lines(
        cargo()
            .args(["bench", "-p", "shadowmesh-crypto", "--bench", "primitives"])
            .args(q),
    )?;
    let ossl = openssl_chacha(if quick { 1 } else { 3 }, false)?;
    all.push(("openssl_seal_1400".into(), ossl, "MB/s".into()));
    let ossl_open = openssl_chacha(if quick { 1 } else { 3 }, true)?;
    all.push(("openssl_open_1400".into(), ossl_open, "MB/s".into()));
    all.extend(bench_lines(
        cargo()
            .args(["bench", "-p", "shadowmesh", "--bench", "handshake"])
            .args(q),
    )?);
    let get = |n: &str| {
        all.iter()
            .find(|(k, _, _)| k == n)
            .map(|x| x.1)
            .unwrap_or(f64::NAN)
    };
    println!("| figure | value | unit |");
    println!("| --- | ---: | --- |");
    for (n, v, u) in &all {
        println!("| {n} | {v:.2} | {u} |");
    }
    println!();
    println!("| ratio (same run) | value |");
    println!("| --- | ---: |");
    let ratios = [
        (
            "ring seal / OpenSSL seal (1,400 B)",
            get("aead_seal_ring_1400") / ossl,
        ),
        (
            "ring open / OpenSSL seal (1,400 B)",
            get("aead_open_ring_1400") / ossl,
        ),
        (
            "ring open without the ciphertext restore / OpenSSL open (1,400 B)",
            1.0 / (1.0 / get("aead_open_ring_1400") - 1.0 / get("copy_1400")) / ossl_open,
        ),
        (
            "RustCrypto seal / OpenSSL seal",
            get("aead_seal_rustcrypto_1400") / ossl,
        ),
        (
            "ring seal / RustCrypto seal",
            get("aead_seal_ring_1400") / get("aead_seal_rustcrypto_1400"),
        ),
        (
            "hybrid / classical full handshake time",
            get("hybrid_full_handshake") / get("classical_full_handshake"),
        ),
        (
            "hybrid / classical TLS-only time",
            get("hybrid_tls_only") / get("classical_tls_only"),
        ),
        (
            "hybrid / classical dialler bytes",
            get("hybrid_dialler_bytes") / get("classical_dialler_bytes"),
        ),
        (
            "hybrid / classical TLS dialler bytes",
            get("hybrid_tls_dialler_bytes") / get("classical_tls_dialler_bytes"),
        ),
        (
            "hybrid resumed / full TLS time",
            get("hybrid_tls_resumed") / get("hybrid_tls_full_pinned"),
        ),
    ];
    for (n, v) in ratios {
        println!("| {n} | {v:.2} |");
    }
    Ok(())
}

/// Instructions qemu-aarch64 executes for `aead_count IMPL n`.
pub(crate) fn qemu_instructions(bin: &Path, which: &str, n: u32) -> Result<u64> {
    qemu_count("qemu-aarch64", bin, &[which, &n.to_string()]).map(|(c, _)| c)
}

/// Instructions `runner` (a qemu-user command line) executes for `bin args`, one translation
/// block per instruction, each logged as one `Trace` line; and what the program printed.
fn qemu_count(runner: &str, bin: &Path, args: &[&str]) -> Result<(u64, String)> {
    let mut parts = runner.split_whitespace();
    let qemu = parts.next().ok_or("empty runner")?;
    let mut child = Command::new(qemu)
        .args(parts)
        .args(["-singlestep", "-d", "exec,nochain", "-D", "/dev/stdout"])
        .arg(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{qemu}: {e}"))?;
    let mut count = 0u64;
    let mut printed = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).split(b'\n') {
        let line = line.map_err(|e| e.to_string())?;
        if line.starts_with(b"Trace") {
            count += 1;
        } else if line.starts_with(b"tls_") {
            printed = String::from_utf8_lossy(&line).into_owned();
        }
    }
    let st = child.wait().map_err(|e| e.to_string())?;
    if !st.success() {
        return Err(format!("{qemu} {} {args:?}: {st}", bin.display()));
    }
    Ok((count, printed))
}

/// `cargo xtask count-handshake [--n N] [--target T]...`: executed instructions per full member
/// handshake on a direct connection (both sides: hybrid TLS, then HELLO, INIT and RESP;
/// `daemon/crypto/examples/handshake_count.rs`) under qemu-user, for mipsel and aarch64 (or the
/// targets named), with HELLO and INIT/RESP signed apart (as before one signature covered
/// both), in one flight, and in one flight with the listener's record already held; and the
/// bytes each side sent. Runs each mode for 0 and N (default 2) handshakes and divides the
/// difference.
pub(crate) fn count_handshake(args: &[String]) -> Result {
    let n = crate::flag_value(args, "--n").unwrap_or(2).max(1);
    let mut targets: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--target")
        .map(|w| w[1].as_str())
        .collect();
    if targets.is_empty() {
        targets = vec!["mipsel-unknown-linux-musl", "aarch64-unknown-linux-musl"];
    }
    let mut rows = Vec::new();
    for t in targets {
        let bin = crypto_example(t, "handshake_count")?;
        let (_, runner) = cross_recipe(t)?;
        let mut base_per = None;
        for mode in ["separate", "flight", "known"] {
            let (zero, _) = qemu_count(runner, &bin, &[mode, "0"])?;
            let (with, bytes) = qemu_count(runner, &bin, &[mode, &n.to_string()])?;
            let per = with.saturating_sub(zero) / n;
            let base = *base_per.get_or_insert(per);
            eprintln!("count-handshake: {t} {mode}: {per} instructions, {bytes}");
            rows.push((t, mode, per, per as f64 / base as f64, bytes));
        }
    }
    println!("| target | HELLO and INIT/RESP | instructions per handshake (both sides) | ratio | bytes sent per side (TLS; HELLO with INIT or RESP) |");
    println!("| --- | --- | ---: | ---: | --- |");
    for (t, mode, per, ratio, bytes) in rows {
        println!("| {t} | {mode} | {per} | {ratio:.2} | {bytes} |");
    }
    Ok(())
}

/// The release build of the crypto crate's example `name` for `t`; returns the binary.
fn crypto_example(t: &str, name: &str) -> Result<std::path::PathBuf> {
    let mut c = cross_cargo(t, "build")?;
    c.args(["--release", "-p", "shadowmesh-crypto", "--example", name]);
    eprintln!("+ {c:?}");
    if !c.status().map_err(|e| e.to_string())?.success() {
        return Err(format!("building {name} for {t} failed"));
    }
    Ok(target_dir()
        .join(t)
        .join("release")
        .join("examples")
        .join(name))
}

pub(crate) fn count_aead() -> Result {
    let bin = crypto_example("aarch64-unknown-linux-musl", "aead_count")?;
    let n = 20;
    println!("| aarch64, per 1,400-byte frame (seal + open) | executed instructions |");
    println!("| --- | ---: |");
    let mut per = Vec::new();
    for which in ["ring", "rustcrypto"] {
        let base = qemu_instructions(&bin, which, 0)?;
        let with = qemu_instructions(&bin, which, n)?;
        let p = with.saturating_sub(base) / n as u64;
        per.push(p);
        let label = if which == "ring" {
            "ring (NEON ChaCha20)"
        } else {
            "RustCrypto chacha20poly1305 (portable)"
        };
        println!("| {label} | {p} |");
    }
    println!(
        "| ratio portable / NEON | {:.2} |",
        per[1] as f64 / per[0].max(1) as f64
    );
    Ok(())
}
