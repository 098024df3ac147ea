//! `cargo xtask test` and `cargo xtask fuzz`: formatting, clippy, every test, the OpenWrt
//! and LuCI checks, and bounded fuzz runs.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::*;

pub(crate) const FUZZ_TARGETS: &[&str] = &[
    "frame",
    "record",
    "hello",
    "e2e",
    "keyfile",
    "dht",
    "uci",
    "packet",
    "join",
    "relay",
    "portmap",
    "upnp",
    "dns",
    "discovery",
    "names",
];

pub(crate) fn test(args: &[String]) -> Result {
    let fuzz_seconds = flag_value(args, "--fuzz-seconds").unwrap_or(20);
    // What the tests need beyond the main job's set-up (emulators, cross toolchains, Chromium,
    // apk-tools, cargo-fuzz, ...), installed idempotently: a no-op when all is there.
    if !args.iter().any(|a| a == "--no-setup") {
        let setup = root().join(".ci/setup-tests");
        eprintln!("+ {}", setup.display());
        let ok = Command::new(&setup)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("{}: {e}", setup.display()))?
            .success();
        if !ok {
            return Err(format!(
                "{} failed (it installs the tests' tools with apt and rustup: run it as root, or pass --no-setup)",
                setup.display()
            ));
        }
    }
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
    // The DHT's bars at 10,000 nodes on two seeds (`cargo xtask sim --bars` takes ten).
    let (sim_passed, sim_failures) = crate::sim::bars("10000", "1..2")?;
    passed += sim_passed;
    if !sim_failures.is_empty() {
        failed += sim_failures.len() as u64;
        println!("tests: {passed} passed, {failed} failed");
        return Err(format!("DHT bars failed:\n  {}", sim_failures.join("\n  ")));
    }
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
            ("NAT lab", nat_lab::run(&bin, false, 1)?),
            ("exit lab", exit_lab::run(&bin)?),
            ("LAN lab", crate::lan_lab::run(&bin, &flooder)?),
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
pub(crate) fn openwrt_tests() -> Result<openwrt::Checks> {
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
pub(crate) fn cargo_test(cmd: &mut Command) -> Result<(u64, u64)> {
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
pub(crate) fn fuzz(seconds: u64) -> Result {
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

pub(crate) fn fuzz_target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d).join("fuzz"),
        None => root().join("fuzz").join("target"),
    }
}
