//! The board profiles in `boards/`: the one list of router targets, OpenWrt architectures and
//! size budgets that `cross`, `dist` and `hil` read.

use std::path::PathBuf;

use crate::{root, Result};

/// One `boards/*.toml`, the keys xtask reads.
pub struct Board {
    /// The file's stem (`mt7621`), as `hil` inventories name it.
    pub profile: String,
    pub target: String,
    pub openwrt_arch: String,
    pub budget_kib: Option<u64>,
}

fn dir() -> PathBuf {
    root().join("boards")
}

/// `key = value` from a flat TOML file: the value without quotes and trailing comment.
fn value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| {
            v.split('#')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches('"')
                .to_string()
        })
    })
}

fn parse(profile: &str, text: &str) -> Result<Board> {
    let need = |k: &str| value(text, k).ok_or(format!("boards/{profile}.toml: no {k}"));
    Ok(Board {
        profile: profile.to_string(),
        target: need("target")?,
        openwrt_arch: need("openwrt_arch")?,
        budget_kib: value(text, "binary_size_budget_kib").and_then(|v| v.parse().ok()),
    })
}

/// One board by its profile name.
pub fn board(profile: &str) -> Result<Board> {
    let path = dir().join(format!("{profile}.toml"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("board profile {}: {e}", path.display()))?;
    parse(profile, &text)
}

/// Every board, sorted by profile name.
pub fn all() -> Result<Vec<Board>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir()).map_err(|e| format!("{}: {e}", dir().display()))? {
        let p = e.map_err(|e| e.to_string())?.path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let stem = p.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&p).map_err(|e| e.to_string())?;
        out.push(parse(&stem, &text)?);
    }
    out.sort_by(|a, b| a.profile.cmp(&b.profile));
    Ok(out)
}

/// The Rust targets the boards need, each once, sorted.
pub fn targets() -> Result<Vec<String>> {
    let mut t: Vec<String> = all()?.into_iter().map(|b| b.target).collect();
    t.sort();
    t.dedup();
    Ok(t)
}

/// Every OpenWrt architecture a board names, with the Rust target whose binary it runs, sorted.
pub fn arches() -> Result<Vec<(String, String)>> {
    let mut a: Vec<(String, String)> = all()?
        .into_iter()
        .map(|b| (b.openwrt_arch, b.target))
        .collect();
    a.sort();
    a.dedup();
    if let Some(w) = a.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!(
            "boards/: {} is given two targets ({} and {})",
            w[0].0, w[0].1, w[1].1
        ));
    }
    Ok(a)
}

/// The smallest budget any board gives for `target`.
pub fn budget_kib(target: &str) -> Result<Option<u64>> {
    Ok(all()?
        .into_iter()
        .filter(|b| b.target == target)
        .filter_map(|b| b.budget_kib)
        .min())
}
