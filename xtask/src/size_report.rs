//! `cargo xtask size-report [--json] [--target T]...`: where the router binary's bytes go, per
//! crate, for aarch64 and mipsel (or the targets named). Each target is built as
//! `cargo xtask cross` builds it, but with its symbols kept (`CARGO_PROFILE_RELEASE_STRIP=false`,
//! in a target directory of its own so that the stripped build stays), and `nm` sizes every
//! defined symbol. A symbol counts for the crate its demangled path starts with; a generic
//! function counts for the crate that defines it (`core`, `alloc`, `std`: what our code and the
//! others instantiate), and a symbol with no Rust path for C and assembly (ring's and
//! pqcrypto's).
//!
//! Printed: a table of crates, largest first, each with its role: ours, one the design card
//! chose (tokio, quinn, rustls, pqcrypto, ring in place of chacha20poly1305, heapless, tun, log,
//! ...), or pulled in by those. The stripped size is `llvm-objcopy --strip-all` of the same build. `--json`: `{"targets":[...],"crates":[{"crate","role","kib":
//! {TARGET: KiB}}],"total_kib":{TARGET: KiB},"stripped_kib":{TARGET: KiB}}`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::*;

/// The targets reported unless others are named.
const DEFAULT_TARGETS: [&str; 2] = ["aarch64-unknown-linux-musl", "mipsel-unknown-linux-musl"];

/// The crates the design card names (and ring, which replaced chacha20poly1305, measured).
const DESIGN_CARD: &[&str] = &[
    "tokio",
    "quinn",
    "quinn_proto",
    "quinn_udp",
    "rustls",
    "pqcrypto_mlkem",
    "pqcrypto_mldsa",
    "pqcrypto_internals",
    "pqcrypto_traits",
    "ring",
    "chacha20poly1305",
    "heapless",
    "tun",
    "uci_rs",
    "smol_str",
    "log",
];

/// Who a crate is to us.
fn role(krate: &str) -> &'static str {
    if krate.starts_with("shadowmesh") {
        "ours"
    } else if DESIGN_CARD.contains(&krate) {
        "design card"
    } else if ["core", "alloc", "std", "compiler_builtins", "[C/asm]"].contains(&krate) {
        "std and C"
    } else {
        "pulled in"
    }
}

/// The crate a demangled symbol belongs to: the first path segment; for `<Type as Trait>::f`,
/// the type's crate, or the trait's where the type is no path (`&T`, `[T]`); `[C/asm]` for a
/// name without a Rust path.
pub(crate) fn crate_of(sym: &str) -> String {
    let first = |s: &str| -> Option<String> {
        let s = s.trim_start_matches(['&', '*', '[', '(', '<']);
        let s = s
            .trim_start_matches("mut ")
            .trim_start_matches("const ")
            .trim_start_matches("dyn ");
        let i = s.find("::")?;
        let head = &s[..i];
        (!head.is_empty() && head.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .then(|| head.to_string())
    };
    if let Some(inner) = sym.strip_prefix('<') {
        if let Some((ty, tr)) = inner.split_once(" as ") {
            return first(ty)
                .or_else(|| first(tr))
                .unwrap_or_else(|| "[C/asm]".into());
        }
    }
    first(sym).unwrap_or_else(|| "[C/asm]".into())
}

/// Bytes per crate from `nm -S -C --defined-only` output: `ADDR SIZE TYPE NAME` lines.
pub(crate) fn per_crate(nm: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for l in nm.lines() {
        let mut w = l.splitn(4, ' ');
        let (Some(_addr), Some(size), Some(kind), Some(name)) =
            (w.next(), w.next(), w.next(), w.next())
        else {
            continue;
        };
        // Code and read-only data (T/t, R/r), and data (D/d, B/b): what the file carries.
        if !"TtRrDdBbWwVv".contains(kind) || kind.len() != 1 {
            continue;
        }
        let Ok(size) = u64::from_str_radix(size, 16) else {
            continue;
        };
        *out.entry(crate_of(name)).or_insert(0) += size;
    }
    out
}

/// Builds `t` with symbols and returns the unstripped binary.
fn build_unstripped(t: &str) -> Result<std::path::PathBuf> {
    let dir = target_dir().join("size-report");
    let mut c = cross::cross_cargo(t, "build")?;
    c.env("CARGO_PROFILE_RELEASE_STRIP", "false")
        .env("CARGO_TARGET_DIR", &dir)
        .args(["--release", "-p", "shadowmesh", "--bin", "shadowmesh"]);
    eprintln!("+ {c:?}");
    if !c.status().map_err(|e| e.to_string())?.success() {
        return Err(format!("build for {t} failed"));
    }
    Ok(dir.join(t).join("release").join("shadowmesh"))
}

fn nm(bin: &Path) -> Result<String> {
    let out = Command::new("nm")
        .args(["-S", "-C", "--defined-only"])
        .arg(bin)
        .output()
        .map_err(|e| format!("nm: {e} (binutils)"))?;
    if !out.status.success() {
        return Err(format!(
            "nm {}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn size_report(args: &[String]) -> Result {
    let json = args.iter().any(|a| a == "--json");
    let mut targets: Vec<String> = args
        .windows(2)
        .filter(|w| w[0] == "--target")
        .map(|w| w[1].clone())
        .collect();
    if targets.is_empty() {
        targets = DEFAULT_TARGETS.iter().map(|t| t.to_string()).collect();
    }
    let mut table: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let (mut total, mut stripped) = (BTreeMap::new(), BTreeMap::new());
    for t in &targets {
        let bin = build_unstripped(t)?;
        let crates = per_crate(&nm(&bin)?);
        total.insert(t.clone(), crates.values().sum::<u64>());
        for (k, v) in crates {
            table.entry(k).or_default().insert(t.clone(), v);
        }
        // The shipped size, for comparison: the same build stripped.
        let s = bin.with_extension("stripped");
        let ok = Command::new("llvm-objcopy")
            .args(["--strip-all"])
            .arg(&bin)
            .arg(&s)
            .status()
            .is_ok_and(|st| st.success());
        if ok {
            stripped.insert(t.clone(), std::fs::metadata(&s).map_or(0, |m| m.len()));
        }
    }
    let mut rows: Vec<(&String, &BTreeMap<String, u64>)> = table.iter().collect();
    let first = targets[0].clone();
    rows.sort_by_key(|(k, v)| {
        (
            std::cmp::Reverse(v.get(&first).copied().unwrap_or(0)),
            (*k).clone(),
        )
    });
    let kib = |b: u64| (b as f64 / 1024.0 * 10.0).round() / 10.0;
    if json {
        let crates: Vec<String> = rows
            .iter()
            .map(|(k, v)| {
                let per: Vec<String> = targets
                    .iter()
                    .map(|t| format!("\"{t}\":{}", kib(v.get(t).copied().unwrap_or(0))))
                    .collect();
                format!(
                    "{{\"crate\":\"{k}\",\"role\":\"{}\",\"kib\":{{{}}}}}",
                    role(k),
                    per.join(",")
                )
            })
            .collect();
        let map = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(t, b)| format!("\"{t}\":{}", kib(*b)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let ts: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        println!(
            "{{\"targets\":[{}],\"crates\":[{}],\"total_kib\":{{{}}},\"stripped_kib\":{{{}}}}}",
            ts.join(","),
            crates.join(","),
            map(&total),
            map(&stripped)
        );
        return Ok(());
    }
    println!("| crate | role | {} |", targets.join(" KiB | ") + " KiB");
    println!("| --- | --- |{}", " ---: |".repeat(targets.len()));
    for (k, v) in &rows {
        let cells: Vec<String> = targets
            .iter()
            .map(|t| format!("{:.1}", kib(v.get(t).copied().unwrap_or(0))))
            .collect();
        println!("| {k} | {} | {} |", role(k), cells.join(" | "));
    }
    let mut by_role: BTreeMap<&str, BTreeMap<&String, u64>> = BTreeMap::new();
    for (k, v) in &table {
        for (t, b) in v {
            *by_role.entry(role(k)).or_default().entry(t).or_insert(0) += b;
        }
    }
    println!();
    for (r, v) in &by_role {
        let cells: Vec<String> = targets
            .iter()
            .map(|t| format!("{t} {:.1} KiB", kib(v.get(t).copied().unwrap_or(0))))
            .collect();
        println!("{r}: {}", cells.join(", "));
    }
    for t in &targets {
        println!(
            "{t}: symbols {:.1} KiB, stripped binary {:.1} KiB",
            kib(total.get(t).copied().unwrap_or(0)),
            kib(stripped.get(t).copied().unwrap_or(0))
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_go_to_their_crates() {
        assert_eq!(
            crate_of("quinn_proto::connection::Connection::poll"),
            "quinn_proto"
        );
        assert_eq!(
            crate_of("<alloc::vec::Vec<T> as core::clone::Clone>::clone"),
            "alloc"
        );
        assert_eq!(crate_of("<&mut T as core::fmt::Debug>::fmt"), "core");
        assert_eq!(
            crate_of("<quinn::endpoint::Endpoint as core::ops::drop::Drop>::drop"),
            "quinn"
        );
        assert_eq!(crate_of("ring_core_0_17_chacha20_ctr32"), "[C/asm]");
        assert_eq!(crate_of("PQCLEAN_MLDSA87_CLEAN_crypto_sign"), "[C/asm]");
        let nm = "0000000000401000 0000000000000100 T shadowmesh::main\n\
                  0000000000401100 0000000000000020 t shadowmesh_proto::frame::Header::parse\n\
                  0000000000402000 0000000000000010 R ring_core_table\n\
                  0000000000403000 0000000000000008 U not_defined\n\
                  garbage\n";
        let m = per_crate(nm);
        assert_eq!(m["shadowmesh"], 0x100);
        assert_eq!(m["shadowmesh_proto"], 0x20);
        assert_eq!(m["[C/asm]"], 0x10);
        assert_eq!(m.len(), 3);
        assert_eq!(role("shadowmesh_link"), "ours");
        assert_eq!(role("quinn_proto"), "design card");
        assert_eq!(role("aws_lc_rs"), "pulled in");
    }
}
