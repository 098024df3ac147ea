//! `cargo xtask …`: the project's automation, in Rust, with no dependencies beyond std and libc.
//!
//! - `test [--fuzz-seconds N]`: formatting, clippy, every test, then each fuzz target for a
//!   bounded time. What CI runs.
//! - `bench [--quick]`: crypto primitive costs, frame AEAD against `openssl speed` and the
//!   RustCrypto crate, and the connection handshake (hybrid against classical-only, full against
//!   resumed, round trips), all in one run; prints a Markdown table of figures and ratios.
//! - `sim --nodes N (--seed S | --seeds A..B) [--loss P] [--kill-fraction F] [--churn R]
//!   [--sybil-fraction F] [--lookups Q] [--paths D] [--json]`: the DHT simulator
//!   (`daemon/sim`), built with the `sim` profile; `sim --bars [--seeds A..B] [--nodes N]`:
//!   the DHT's bars over several seeds ([`sim`]), which `test` checks on seeds 1..2.
//! - `cross --target TRIPLE|all [--test] [--check-size]`: the Docker-free cross build of
//!   `shadowmesh` (stripped, static, size-tuned), its size, and with `--test` the sans-IO crate's
//!   tests under qemu-user. Recipes in `cross-toolchains/README.md`.
//! - `count-aead`: executed-instruction counts per 1,400-byte frame (seal + open) of ring's
//!   NEON ChaCha20-Poly1305 and the portable RustCrypto crate, under `qemu-aarch64 -singlestep`.
//! - `count-handshake [--n N] [--target T]...`: executed instructions and bytes per full member
//!   handshake (both sides) under qemu-user, HELLO and INIT/RESP signed apart or in one flight.
//! - `hil --backend virtual|ssh`: the hardware-in-the-loop scenario (`hw-tests/`); the virtual
//!   back end runs x86_64, aarch64, mipsel and mips daemons (qemu-user) in network namespaces;
//!   `--backend ssh --inventory FILE` runs on real boards ([`hil_ssh`]), `--backend ssh --lab`
//!   against stand-in boards (namespaces with sshd).
//! - `bench-tunnel [--json] [--seconds N] [--bin PATH]`: iperf3 and ping through raw veth, boringtun and
//!   ShadowMesh between two namespaces in one run, with CPU per GB and peak RSS
//!   ([`bench_tunnel`]).
//! - `dist [--no-build]`: OpenWrt `.ipk` packages from the cross builds into `target/dist/`
//!   ([`openwrt`]); `openwrt-test`: only the packaging, rpcd and LuCI tests ([`openwrt`],
//!   [`luci`]), which `test` also runs.
//! - `profile-tunnel [--lane udp|quic] [--traffic tcp|ping] [--megabytes N] [--bin PATH]`:
//!   instructions per packet by group (callgrind) and system calls per packet (strace) at both
//!   ends of the tunnel; with `--traffic ping`, per echo, beside boringtun's ([`profile`]).
//! - `load-peers [--peers N] [--hold SECONDS] [--json] [--heaptrack FILE] [--bin PATH]`: one
//!   daemon holding N member connections from the load generator: memory and idle CPU per
//!   peer, handshake rate and where the Retry defence engages ([`load_peers`]).
//! - `demo [--full]`: the main job (as root): a seed and three gateways with a LAN each in
//!   network namespaces discover each other and carry ping and iperf3 between the LANs
//!   ([`mesh`]); `--full` adds the failure cases `test` checks. `demo --probe`: the older
//!   two-process handshake demo on loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod bench;
mod bench_tunnel;
mod boards;
mod clock;
mod collide;
mod cross;
mod delay_line;
mod demo;
mod exit_lab;
mod flood;
mod hil;
mod hil_ssh;
mod lab;
mod lan_lab;
mod load_peers;
mod luci;
mod mesh;
mod nat_lab;
mod openwrt;
mod profile;
mod sim;
mod size_report;
mod support;
mod test;
mod trust;

use bench::{bench, count_aead, count_handshake};
use cross::{cross, cross_build, cross_cargo, cross_recipe};
use demo::demo;
use hil::hil;
use support::{field, ok, rss_kib, Procs};
use test::{fuzz, openwrt_tests, test};

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("fuzz") => fuzz(flag_value(&args[1..], "--seconds").unwrap_or(30)),
        Some("bench") => bench(args[1..].iter().any(|a| a == "--quick")),
        Some("sim") => sim::sim(&args[1..]),
        Some("cross") => cross(&args[1..]),
        Some("dist") => openwrt::dist(&args[1..]).map(|_| ()),
        Some("openwrt-test") => openwrt_tests().and_then(|c| {
            c.failures
                .is_empty()
                .then_some(())
                .ok_or_else(|| c.failures.join("\n"))
        }),
        Some("count-aead") => count_aead(),
        Some("count-handshake") => count_handshake(&args[1..]),
        Some("hil") => hil(&args[1..]),
        Some("flood") => release_bin().and_then(|bin| {
            let secs = flag_value(&args[1..], "--seconds").unwrap_or(30);
            let rep = flood::run(&bin, &release_example("flood")?, secs)?;
            rep.failures
                .is_empty()
                .then_some(())
                .ok_or_else(|| rep.failures.join("\n"))
        }),
        Some("delay-line") => match (args.get(1), args.get(2).and_then(|m| m.parse().ok())) {
            (Some(dev), Some(ms)) => delay_line::run(dev, std::time::Duration::from_millis(ms)),
            _ => Err("usage: cargo xtask delay-line DEV MS (the NAT lab runs it)".into()),
        },
        Some("nat-lab") => release_bin().and_then(|bin| {
            let json = args[1..].iter().any(|a| a == "--json");
            let runs = match args.iter().position(|a| a == "--runs") {
                Some(i) => args
                    .get(i + 1)
                    .and_then(|n| n.parse::<u32>().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--runs takes a number of runs (1 or more)")?,
                None => 1,
            };
            let rep = nat_lab::run(&bin, json, runs)?;
            rep.failures
                .is_empty()
                .then_some(())
                .ok_or_else(|| rep.failures.join("\n"))
        }),
        Some("exit-lab") => release_bin().and_then(|bin| {
            let rep = exit_lab::run(&bin)?;
            rep.failures
                .is_empty()
                .then_some(())
                .ok_or_else(|| rep.failures.join("\n"))
        }),
        Some("size-report") => size_report::size_report(&args[1..]),
        Some("lan-lab") => release_bin().and_then(|bin| {
            let rep = lan_lab::run(&bin, &release_example("flood")?)?;
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
        // `--bin PATH`: another build of the daemon (an older main, say, or one with symbols
        // for `--heaptrack`) measured by the same harness.
        Some("load-peers") => bin_arg(&args, release_bin).and_then(|b| load_peers::run(&b, &args[1..])),
        Some("profile-tunnel") => {
            bin_arg(&args, symbols_bin).and_then(|b| profile::run(&b, &args[1..]))
        }
        Some("bench-tunnel") => bin_arg(&args, release_bin).and_then(|bin| {
            bench_tunnel::run(
                &bin,
                args.iter().any(|a| a == "--json"),
                flag_value(&args[1..], "--seconds").unwrap_or(5) as u32,
            )
        }),
        _ => Err("usage: cargo xtask <test [--fuzz-seconds N] | demo [--full|--probe] | fuzz [--seconds N] | bench [--quick] | bench-tunnel [--json] [--seconds N] [--bin PATH] | sim --nodes N --seed S [...] | sim --bars [--seeds A..B] | cross --target T [--test] | hil --backend virtual | dist [--no-build] | openwrt-test | trust | nat-lab [--json] [--runs N] | exit-lab | lan-lab | size-report [--json] [--target T]... | count-handshake [--n N] [--target T]... | delay-line DEV MS | flood [--seconds N]>".into()),
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

/// The daemon that `--bin PATH` names, or `build()`'s.
fn bin_arg(args: &[String], build: fn() -> Result<PathBuf>) -> Result<PathBuf> {
    match args.iter().position(|a| a == "--bin") {
        Some(i) => args
            .get(i + 1)
            .map(PathBuf::from)
            .ok_or_else(|| "--bin needs a path".to_string()),
        None => build(),
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}
