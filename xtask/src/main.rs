//! `cargo xtask …`: the project's automation, in Rust, with no dependencies beyond std and libc.
//!
//! - `test [--fuzz-seconds N]`: formatting, clippy, every test, then each fuzz target for a
//!   bounded time. What CI runs.
//! - `bench [--quick]`: crypto primitive costs, frame AEAD against `openssl speed` and the
//!   RustCrypto crate, and the connection handshake (hybrid against classical-only, full against
//!   resumed, round trips), all in one run; prints a Markdown table of figures and ratios.
//! - `sim --nodes N --seed S [--loss P] [--kill-fraction F] [--churn R] [--sybil-fraction F]
//!   [--lookups Q] [--json]`: the DHT simulator (`daemon/sim`), built with the `sim` profile.
//! - `cross --target TRIPLE|all [--test] [--check-size]`: the Docker-free cross build of
//!   `shadowmesh` (stripped, static, size-tuned), its size, and with `--test` the sans-IO crate's
//!   tests under qemu-user. Recipes in `cross-toolchains/README.md`.
//! - `count-aead`: executed-instruction counts per 1,400-byte frame (seal + open) of ring's
//!   NEON ChaCha20-Poly1305 and the portable RustCrypto crate, under `qemu-aarch64 -singlestep`.
//! - `hil --backend virtual|ssh`: the hardware-in-the-loop scenario (`hw-tests/`); the virtual
//!   back end runs x86_64, aarch64, mipsel and mips daemons (qemu-user) in network namespaces;
//!   `--backend ssh --inventory FILE` runs on real boards ([`hil_ssh`]), `--backend ssh --lab`
//!   against stand-in boards (namespaces with sshd).
//! - `bench-tunnel [--json] [--seconds N]`: iperf3 and ping through raw veth, boringtun and
//!   ShadowMesh between two namespaces in one run, with CPU per GB and peak RSS
//!   ([`bench_tunnel`]).
//! - `dist [--no-build]`: OpenWrt `.ipk` packages from the cross builds into `target/dist/`
//!   ([`openwrt`]); `openwrt-test`: only the packaging, rpcd and LuCI tests ([`openwrt`],
//!   [`luci`]), which `test` also runs.
//! - `profile-tunnel [--lane udp|quic] [--traffic tcp|ping] [--megabytes N] [--bin PATH]`:
//!   instructions per packet by group (callgrind) and system calls per packet (strace) at both
//!   ends of the tunnel; with `--traffic ping`, per echo, beside boringtun's ([`profile`]).
//! - `load-peers [--peers N] [--hold SECONDS]`: one daemon holding N member connections from
//!   the load generator: memory and idle CPU per peer, handshake rate and where the Retry
//!   defence engages ([`load_peers`]).
//! - `demo [--full]`: the main job (as root): a seed and three gateways with a LAN each in
//!   network namespaces discover each other and carry ping and iperf3 between the LANs
//!   ([`mesh`]); `--full` adds the failure cases `test` checks. `demo --probe`: the older
//!   two-process handshake demo on loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod bench_tunnel;
mod boards;
mod clock;
mod collide;
mod flood;
mod hil_ssh;
mod load_peers;
mod luci;
mod mesh;
mod openwrt;
mod profile;
mod trust;

type Result<T = ()> = std::result::Result<T, String>;

const FUZZ_TARGETS: &[&str] = &[
    "frame", "record", "hello", "e2e", "keyfile", "dht", "uci", "packet",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("fuzz") => fuzz(flag_value(&args[1..], "--seconds").unwrap_or(30)),
        Some("bench") => bench(args[1..].iter().any(|a| a == "--quick")),
        Some("sim") => sim(&args[1..]),
        Some("cross") => cross(&args[1..]),
        Some("dist") => openwrt::dist(&args[1..]).map(|_| ()),
        Some("openwrt-test") => openwrt_tests().and_then(|c| {
            c.failures
                .is_empty()
                .then_some(())
                .ok_or_else(|| c.failures.join("\n"))
        }),
        Some("count-aead") => count_aead(),
        Some("hil") => hil(&args[1..]),
        Some("flood") => release_bin().and_then(|bin| {
            let secs = flag_value(&args[1..], "--seconds").unwrap_or(30);
            let rep = flood::run(&bin, &release_example("flood")?, secs)?;
            rep.failures
                .is_empty()
                .then_some(())
                .ok_or_else(|| rep.failures.join("\n"))
        }),
        Some("trust") => release_bin().and_then(|bin| {
            let rep = trust::run(&bin, &release_example("hostile")?)?;
            rep.failures
                .is_empty()
                .then_some(())
                .ok_or_else(|| rep.failures.join("\n"))
        }),
        Some("load-peers") => release_bin().and_then(|b| load_peers::run(&b, &args[1..])),
        Some("profile-tunnel") => {
            let bin = match args.iter().position(|a| a == "--bin") {
                Some(i) => args
                    .get(i + 1)
                    .map(PathBuf::from)
                    .ok_or_else(|| "--bin needs a path".to_string()),
                None => symbols_bin(),
            };
            bin.and_then(|b| profile::run(&b, &args[1..]))
        }
        Some("bench-tunnel") => release_bin().and_then(|bin| {
            bench_tunnel::run(
                &bin,
                args.iter().any(|a| a == "--json"),
                flag_value(&args[1..], "--seconds").unwrap_or(5) as u32,
            )
        }),
        _ => Err("usage: cargo xtask <test [--fuzz-seconds N] | demo [--full|--probe] | fuzz [--seconds N] | bench [--quick] | bench-tunnel [--json] [--seconds N] | sim --nodes N --seed S [...] | cross --target T [--test] | hil --backend virtual | dist [--no-build] | openwrt-test | trust | flood [--seconds N]>".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn flag_value(args: &[String], name: &str) -> Option<u64> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn run(cmd: &mut Command) -> Result {
    eprintln!("+ {cmd:?}");
    let st = cmd
        .current_dir(root())
        .status()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {st}"))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn test(args: &[String]) -> Result {
    let fuzz_seconds = flag_value(args, "--fuzz-seconds").unwrap_or(20);
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let (mut passed, mut failed) = cargo_test(cargo().args(["test", "--workspace"]))?;
    // The demo scenario with its failure cases, in network namespaces: needs root.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let bin = release_bin()?;
        let hostile = release_example("hostile")?;
        let flooder = release_example("flood")?;
        for (what, rep) in [
            ("mesh scenario", mesh::run(&bin, true)?),
            ("trust-boundary scenario", trust::run(&bin, &hostile)?),
            ("stranger flood scenario", flood::run(&bin, &flooder, 30)?),
        ] {
            failed += rep.failures.len() as u64;
            passed += rep.checks() - rep.failures.len() as u64;
            if !rep.failures.is_empty() {
                println!("tests: {passed} passed, {failed} failed");
                return Err(format!("{what} failed:\n  {}", rep.failures.join("\n  ")));
            }
        }
    } else {
        println!("skipped: the namespace mesh and trust-boundary scenarios (need root)");
    }
    // The OpenWrt packages (built from the cross builds), their scripts against the OpenWrt
    // stand-ins, the rpcd backend and the LuCI views in headless Chromium.
    let pk = openwrt_tests()?;
    passed += pk.passed;
    failed += pk.failures.len() as u64;
    if !pk.failures.is_empty() {
        println!("tests: {passed} passed, {failed} failed");
        return Err(format!(
            "OpenWrt package tests failed:\n  {}",
            pk.failures.join("\n  ")
        ));
    }
    if fuzz_seconds > 0 {
        fuzz(fuzz_seconds)?;
    }
    // One plain closing line with the totals over every test binary.
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// The packaging, rpcd and LuCI tests (`cargo xtask openwrt-test` runs only these).
fn openwrt_tests() -> Result<openwrt::Checks> {
    let bin = release_bin()?;
    let mut pk = openwrt::Checks::default();
    openwrt::test_packages(&mut pk, true)?;
    openwrt::luci_static(&mut pk, &bin);
    luci::test(&mut pk, &bin)?;
    println!(
        "openwrt tests: {} passed, {} failed",
        pk.passed,
        pk.failures.len()
    );
    Ok(pk)
}

/// Runs `cargo test`, passing its output through, and sums its "test result" lines.
fn cargo_test(cmd: &mut Command) -> Result<(u64, u64)> {
    eprintln!("+ {cmd:?}");
    let mut child = cmd
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(|l| l.ok())
    {
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split([';', '.']) {
                let mut w = part.split_whitespace();
                if let (Some(n), Some(what)) =
                    (w.next().and_then(|n| n.parse::<u64>().ok()), w.next())
                {
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let st = child.wait().map_err(|e| e.to_string())?;
    if !st.success() || failed > 0 {
        return Err(format!(
            "cargo test failed ({passed} passed, {failed} failed)"
        ));
    }
    Ok((passed, failed))
}

/// Builds the fuzz targets (nightly + cargo-fuzz) and runs each for `seconds`.
fn fuzz(seconds: u64) -> Result {
    let have = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        if std::env::var_os("CI").is_some() {
            return Err(
                "cargo-fuzz or the nightly toolchain is missing (.ci/setup installs them)".into(),
            );
        }
        eprintln!("xtask: skipping fuzzing: install with `.ci/setup` (nightly + cargo-fuzz)");
        return Ok(());
    }
    let target_dir = fuzz_target_dir();
    let fuzz_dir = root().join("fuzz");
    let mut build = Command::new("cargo");
    build
        .args(["+nightly", "fuzz", "build", "-O", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&fuzz_dir);
    eprintln!("+ {build:?}");
    if !build.status().map_err(|e| e.to_string())?.success() {
        return Err("building fuzz targets failed".into());
    }
    for t in FUZZ_TARGETS {
        let corpus = target_dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus).map_err(|e| e.to_string())?;
        let mut c = Command::new("cargo");
        c.args(["+nightly", "fuzz", "run", "-O", "--target-dir"])
            .arg(&target_dir)
            .arg(t)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048")
            .current_dir(&fuzz_dir);
        eprintln!("+ fuzz {t} for {seconds} s");
        let out = c.output().map_err(|e| e.to_string())?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("fuzz target {t} failed:\n{log}"));
        }
        let runs = log
            .lines()
            .rev()
            .find(|l| l.starts_with("Done "))
            .unwrap_or("(no summary)");
        println!("fuzz {t:8} ok: {runs}");
    }
    Ok(())
}

fn fuzz_target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d).join("fuzz"),
        None => root().join("fuzz").join("target"),
    }
}

/// Children that are killed (by PID) and reaped when dropped, so that every exit path, including
/// errors, cleans up.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Pulls `"name":value` out of one JSON line (flat objects with no nested quotes in values).
fn field(line: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":");
    let start = line.find(&key)? + key.len();
    let rest = &line[start..];
    if let Some(s) = rest.strip_prefix('"') {
        s.split('"').next().map(str::to_string)
    } else {
        rest.split([',', '}']).next().map(str::to_string)
    }
}

fn bin_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target.join("debug").join("shadowmesh")
}

/// Builds `daemon/shadowmesh/examples/NAME.rs` (release, like the daemon under test) and
/// returns its path: the load generator, the hostile member, the flood tool.
pub(crate) fn release_example(name: &str) -> Result<PathBuf> {
    run(cargo().args(["build", "--release", "-p", "shadowmesh", "--example", name]))?;
    Ok(target_dir().join("release/examples").join(name))
}

fn release_bin() -> Result<PathBuf> {
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "shadowmesh",
        "--bin",
        "shadowmesh",
    ]))?;
    Ok(target_dir().join("release").join("shadowmesh"))
}

/// The release build with symbols (`--profile profiling`), for profilers.
fn symbols_bin() -> Result<PathBuf> {
    run(cargo().args([
        "build",
        "--profile",
        "profiling",
        "--package",
        "shadowmesh",
        "--bin",
        "shadowmesh",
    ]))?;
    Ok(target_dir().join("profiling").join("shadowmesh"))
}

fn demo(args: &[String]) -> Result {
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

fn demo_in(bin: &Path, dir: &Path) -> Result {
    let mut nk = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut nk))
        .map_err(|e| e.to_string())?;
    let nk_hex: String = nk.iter().map(|b| format!("{b:02x}")).collect();
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

fn ok(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

/// Runs a bench binary and collects its `name value unit` lines.
fn bench_lines(cmd: &mut Command) -> Result<Vec<(String, f64, String)>> {
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
fn openssl_chacha(seconds: u32, decrypt: bool) -> Result<f64> {
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

fn bench(quick: bool) -> Result {
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

fn sim(args: &[String]) -> Result {
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--profile",
            "sim",
            "--package",
            "shadowmesh-sim",
            "--",
        ])
        .args(args))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// (uses zig + nightly build-std, qemu runner)
fn cross_recipe(t: &str) -> Result<(bool, &'static str)> {
    Ok(match t {
        "aarch64-unknown-linux-musl" => (false, "qemu-aarch64"),
        "x86_64-unknown-linux-musl" => (false, ""),
        "armv7-unknown-linux-musleabihf" => (true, "qemu-arm"),
        "mipsel-unknown-linux-musl" => (true, "qemu-mipsel -cpu 24Kc"),
        "mips-unknown-linux-musl" => (true, "qemu-mips -cpu 24Kc"),
        _ => return Err(format!("unsupported target {t}")),
    })
}

/// A cargo command set up for `t`: toolchain, C compiler, linker, runner, rustflags.
fn cross_cargo(t: &str, sub: &str) -> Result<Command> {
    let (zig, runner) = cross_recipe(t)?;
    let up = t.to_uppercase().replace('-', "_");
    let mut c;
    if zig {
        // cargo-zigbuild links with zig (which carries musl for every target); it has a `test`
        // subcommand too, so the runner below executes the tests under qemu.
        c = Command::new("cargo-zigbuild");
        c.arg(if sub == "test" { "test" } else { "zigbuild" });
        // `cargo xtask` runs under stable cargo, which exports CARGO=<stable cargo>; zigbuild
        // would call that one and refuse -Z. Let rustup pick nightly instead.
        c.env_remove("CARGO")
            .env_remove("RUSTC")
            .env("RUSTUP_TOOLCHAIN", "nightly");
        c.args(["-Zbuild-std=std,panic_abort", "--target", t]);
        if sub != "test" {
            // No std features: above all not `backtrace`, whose symbolizer (gimli, addr2line,
            // zlib) is 275 KiB of a stripped mips binary that has no symbols to show anyway
            // (3,070 -> 2,795 KiB). A panic still prints its message.
            c.arg("-Zbuild-std-features=");
        }
        c.env(
            format!("CARGO_TARGET_{up}_RUSTFLAGS"),
            "-C target-feature=+crt-static -C link-self-contained=no",
        );
    } else {
        c = Command::new("cargo");
        c.arg(sub).args(["--target", t]);
        c.env(format!("CARGO_TARGET_{up}_LINKER"), "rust-lld");
        if t.starts_with("x86_64") {
            // The host gcc, as for aarch64 (pqcrypto's headers use glibc's __GNUC_PREREQ, which
            // musl-gcc lacks); the objects call only memcpy/memset-class functions musl has.
            c.env("CC_x86_64_unknown_linux_musl", "gcc");
        }
        if t.starts_with("aarch64") {
            c.env("CC_aarch64_unknown_linux_musl", "aarch64-linux-gnu-gcc");
            c.env("AR_aarch64_unknown_linux_musl", "aarch64-linux-gnu-ar");
        }
        c.env(
            format!("CARGO_TARGET_{up}_RUSTFLAGS"),
            "-C target-feature=+crt-static",
        );
    }
    if !runner.is_empty() {
        c.env(format!("CARGO_TARGET_{up}_RUNNER"), runner);
    }
    c.current_dir(root());
    Ok(c)
}

fn cross(args: &[String]) -> Result {
    let target = args
        .iter()
        .position(|a| a == "--target")
        .and_then(|i| args.get(i + 1))
        .ok_or("cross needs --target TRIPLE (or --target all)")?;
    let test = args.iter().any(|a| a == "--test");
    let all = boards::targets()?;
    let targets: Vec<&str> = if target == "all" {
        all.iter().map(String::as_str).collect()
    } else {
        vec![target.as_str()]
    };
    let mut sizes = Vec::new();
    for t in &targets {
        let bin = cross_build(t)?;
        let size = std::fs::metadata(&bin)
            .map_err(|e| format!("{}: {e}", bin.display()))?
            .len();
        sizes.push((t.to_string(), size));
        if test {
            // The protocol crate's unit tests and the engine test (the memory test measures the
            // host's allocator and takes minutes under emulation).
            let mut runs = vec![vec!["-p", "shadowmesh-proto", "--lib", "--test", "engine"]];
            if t.starts_with("aarch64") {
                // The NEON ChaCha20-Poly1305 (ring) against the portable crate, 10,000 inputs.
                runs.push(vec!["-p", "shadowmesh-crypto", "--test", "interop"]);
            }
            for args in runs {
                let mut c = cross_cargo(t, "test")?;
                c.args(args);
                eprintln!("+ {c:?}");
                if !c.status().map_err(|e| e.to_string())?.success() {
                    return Err(format!("tests for {t} failed"));
                }
            }
        }
    }
    println!("| target | stripped binary |");
    println!("| --- | ---: |");
    for (t, s) in &sizes {
        println!("| {t} | {} KiB |", s / 1024);
    }
    if args.iter().any(|a| a == "--check-size") {
        check_sizes(&sizes)?;
    }
    if args.iter().any(|a| a == "--interop") {
        interop(&targets)?;
    }
    Ok(())
}

/// The release build of `shadowmesh` for `t`; returns the binary.
fn cross_build(t: &str) -> Result<PathBuf> {
    let mut c = cross_cargo(t, "build")?;
    c.args(["--release", "-p", "shadowmesh", "--bin", "shadowmesh"]);
    eprintln!("+ {c:?}");
    if !c.status().map_err(|e| e.to_string())?.success() {
        return Err(format!("cross build for {t} failed"));
    }
    Ok(target_dir().join(t).join("release").join("shadowmesh"))
}

fn check_sizes(sizes: &[(String, u64)]) -> Result {
    for (t, s) in sizes {
        match boards::budget_kib(t)? {
            Some(b) if s / 1024 > b => {
                return Err(format!(
                    "{t}: stripped binary is {} KiB, over the {b} KiB budget in boards/",
                    s / 1024
                ))
            }
            Some(b) => println!("size {t}: {} KiB within the {b} KiB budget", s / 1024),
            None => println!("size {t}: {} KiB (no budget in boards/)", s / 1024),
        }
    }
    Ok(())
}

/// Runs a cross-built binary under its qemu runner.
fn run_target(t: &str, args: &[&str]) -> Result<String> {
    let (_, runner) = cross_recipe(t)?;
    let bin = target_dir().join(t).join("release").join("shadowmesh");
    let mut parts = runner.split_whitespace();
    let mut c = match parts.next() {
        Some(q) => {
            let mut c = Command::new(q);
            c.args(parts).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    c.args(args);
    let out = c.output().map_err(|e| format!("{t}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{t} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Same key file, same `id --json` everywhere; records and frames made on one architecture
/// verify on every other.
fn interop(targets: &[&str]) -> Result {
    // The host side is the debug build (the demo's): the comparison is about formats, not speed.
    run(cargo().args(["build", "-p", "shadowmesh", "--bin", "shadowmesh"]))?;
    let host = bin_path();
    let dir = std::env::temp_dir().join(format!("shadowmesh-interop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = (|| -> Result {
        let key = dir.join("node.key");
        let key_s = key.to_str().ok_or("non-UTF-8 temp path")?;
        let h = |args: &[&str]| -> Result<String> {
            let out = Command::new(&host)
                .args(args)
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "host {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        h(&["keygen", "--out", key_s])?;
        let want = h(&["id", "--key", key_s, "--json"])?;
        let host_dir = dir.join("host");
        h(&[
            "selftest",
            "--key",
            key_s,
            "--write",
            host_dir.to_str().unwrap_or_default(),
        ])?;
        for t in targets {
            let got = run_target(t, &["id", "--key", key_s, "--json"])?;
            if got != want {
                return Err(format!(
                    "{t}: id --json differs from x86_64:\n{got}\n{want}"
                ));
            }
            run_target(
                t,
                &[
                    "selftest",
                    "--verify",
                    host_dir.to_str().unwrap_or_default(),
                ],
            )?;
            let tdir = dir.join(t);
            run_target(
                t,
                &[
                    "selftest",
                    "--key",
                    key_s,
                    "--write",
                    tdir.to_str().unwrap_or_default(),
                ],
            )?;
            h(&["selftest", "--verify", tdir.to_str().unwrap_or_default()])?;
            println!("interop {t}: same PeerId and addresses; its record and frame verify on x86_64 and x86_64's on it");
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Instructions qemu-aarch64 executes for `aead_count IMPL n`.
fn qemu_instructions(bin: &Path, which: &str, n: u32) -> Result<u64> {
    let out = Command::new("qemu-aarch64")
        .args(["-singlestep", "-d", "exec,nochain", "-D", "/dev/stdout"])
        .arg(bin)
        .args([which, &n.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("qemu-aarch64: {e}"))?;
    let mut count = 0u64;
    for line in BufReader::new(out.stdout.expect("piped")).split(b'\n') {
        if line.map_err(|e| e.to_string())?.starts_with(b"Trace") {
            count += 1;
        }
    }
    Ok(count)
}

fn count_aead() -> Result {
    let t = "aarch64-unknown-linux-musl";
    let mut c = cross_cargo(t, "build")?;
    c.args([
        "--release",
        "-p",
        "shadowmesh-crypto",
        "--example",
        "aead_count",
    ]);
    eprintln!("+ {c:?}");
    if !c.status().map_err(|e| e.to_string())?.success() {
        return Err("building aead_count failed".into());
    }
    let bin = target_dir()
        .join(t)
        .join("release")
        .join("examples")
        .join("aead_count");
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

pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// `cargo xtask hil --backend virtual`: one mesh of four architectures in network namespaces.
fn hil(args: &[String]) -> Result {
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
        let mut c = cross_cargo(t, "build")?;
        c.args(["--release", "-p", "shadowmesh", "--bin", "shadowmesh"]);
        eprintln!("+ {c:?}");
        if !c.status().map_err(|e| e.to_string())?.success() {
            return Err(format!("cross build for {t} failed"));
        }
    }
    run(cargo().args(["build", "-p", "shadowmesh", "--bin", "shadowmesh"]))?;
    let host = bin_path();
    let mut lab = mesh::Lab::new(&host)?;
    hil_virtual(&mut lab, &host, &foreign)
}

fn hil_virtual(lab: &mut mesh::Lab, host: &Path, foreign: &[&str]) -> Result {
    // A switch namespace with a bridge; one namespace per node, a veth into the bridge each.
    let sw = lab.ns("sw")?;
    mesh::ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    mesh::ip(&["-n", &sw, "link", "set", "br0", "up"])?;
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
            while mesh::ping(&a.0, &overlay[j], 1, "0.2")?.received == 0
                && Instant::now() < deadline
            {}
            let mut p = mesh::ping(&a.0, &overlay[j], 5, "0.2")?;
            if p.received < p.sent {
                p = mesh::ping(&a.0, &overlay[j], 5, "0.2")?;
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
                mesh::iperf3_streams(&mut lab.others, &nodes[j].0, &nodes[i].0, &overlay[j], 2, 1);
            if r.is_err() {
                r = mesh::iperf3_streams(
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
