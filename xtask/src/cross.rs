//! `cargo xtask cross`: the Docker-free cross builds (recipes in `cross-toolchains/README.md`),
//! size budgets from `boards/`, tests under qemu-user and cross-architecture interop.

use std::path::PathBuf;
use std::process::Command;

use crate::*;

/// (uses zig + nightly build-std, qemu runner)
pub(crate) fn cross_recipe(t: &str) -> Result<(bool, &'static str)> {
    Ok(match t {
        "aarch64-unknown-linux-musl" => (true, "qemu-aarch64"),
        "x86_64-unknown-linux-musl" => (false, ""),
        // 32-bit x86 runs natively here: the memory of a 32-bit router build (the MIPS and
        // ARMv7 boards are 32-bit) measured without an emulator's own in the figures.
        "i686-unknown-linux-musl" => (true, ""),
        "armv7-unknown-linux-musleabihf" => (true, "qemu-arm"),
        "mipsel-unknown-linux-musl" => (true, "qemu-mipsel -cpu 24Kc"),
        "mips-unknown-linux-musl" => (true, "qemu-mips -cpu 24Kc"),
        _ => return Err(format!("unsupported target {t}")),
    })
}

/// A cargo command set up for `t`: toolchain, C compiler, linker, runner, rustflags.
pub(crate) fn cross_cargo(t: &str, sub: &str) -> Result<Command> {
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
        // The router binaries abort on a panic without formatting its message: the panic
        // machinery is 144 KiB of an aarch64 binary (2,173 -> 2,029). The daemon parses every
        // untrusted input without panicking (fuzzed); procd restarts it if it ever does, and
        // the tests (and the x86_64 build) keep the messages.
        // Nothing unwinds in such a binary, so it carries no unwind tables either (.eh_frame
        // and its index: 2,594 -> 2,422 KiB on mipsel, 1,341 -> 1,305 on armv7).
        let panic = if sub == "test" {
            ""
        } else {
            c.env(
                format!("CFLAGS_{}", t.replace('-', "_")),
                "-fno-asynchronous-unwind-tables -fno-unwind-tables",
            );
            " -Zunstable-options -Cpanic=immediate-abort -Cforce-unwind-tables=no"
        };
        // ARMv7 code in Thumb-2, as Debian's armhf userland is built: 28% smaller (1,850 to
        // 1,341 KiB). The Cortex-A7/A9/A15 cores of these routers decode both instruction sets;
        // the hot paths are ring's assembly, which assembles for either.
        let thumb = if t.starts_with("armv7") {
            let key = format!("CFLAGS_{}", t.replace('-', "_"));
            let cflags = c
                .get_envs()
                .find(|(k, _)| *k == key.as_str())
                .and_then(|(_, v)| v)
                .map(|v| v.to_string_lossy().into_owned());
            c.env(&key, format!("{} -mthumb", cflags.unwrap_or_default()));
            " -C target-feature=+thumb-mode"
        } else {
            ""
        };
        c.env(
            format!("CARGO_TARGET_{up}_RUSTFLAGS"),
            format!("-C target-feature=+crt-static -C link-self-contained=no{panic}{thumb}"),
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

pub(crate) fn cross(args: &[String]) -> Result {
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
pub(crate) fn cross_build(t: &str) -> Result<PathBuf> {
    let mut c = cross_cargo(t, "build")?;
    c.args(["--release", "-p", "shadowmesh", "--bin", "shadowmesh"]);
    eprintln!("+ {c:?}");
    if !c.status().map_err(|e| e.to_string())?.success() {
        return Err(format!("cross build for {t} failed"));
    }
    let bin = target_dir().join(t).join("release").join("shadowmesh");
    strip_all(&bin)?;
    Ok(bin)
}

/// Removes what the linker's strip leaves that no loader reads: on mips, LLVM's `.pdr`
/// procedure descriptors (175 KiB of a 2,864 KiB mipsel binary). OpenWrt's own package build
/// strips every binary the same way (`rstrip.sh`), so this is also what a feed-built package
/// holds. The tool is the `rust-objcopy` (llvm-objcopy) that every rustc toolchain carries.
fn strip_all(bin: &std::path::Path) -> Result {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("rustc --print sysroot: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let objcopy = std::fs::read_dir(sysroot.join("lib/rustlib"))
        .map_err(|e| format!("{}: {e}", sysroot.display()))?
        .flatten()
        .map(|d| d.path().join("bin/rust-objcopy"))
        .find(|p| p.exists())
        .ok_or("no rust-objcopy in the Rust toolchain")?;
    run(Command::new(objcopy).arg("--strip-all").arg(bin))
}

pub(crate) fn check_sizes(sizes: &[(String, u64)]) -> Result {
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
pub(crate) fn run_target(t: &str, args: &[&str]) -> Result<String> {
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
pub(crate) fn interop(targets: &[&str]) -> Result {
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
