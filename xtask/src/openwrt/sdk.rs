//! The OpenWrt SDK's build settings against ours.
//!
//! openwrt/packages' `lang/rust/rust-values.mk` builds every Rust package with
//! `CARGO_PROFILE_RELEASE_*` variables in the environment (opt-level `z`, `panic = "unwind"`,
//! overflow checks on, ...), which outrank `[profile.release]` in `Cargo.toml`: built that way,
//! the package would not be the binary `cargo xtask cross` builds and the tests run. So the
//! package Makefile names a profile of our own (`CARGO_PKG_PROFILE`), `[profile.openwrt]`,
//! which sets every key those variables touch itself. This check holds the two together.

use std::path::Path;

use super::ensure;
use crate::Result;

/// The profile keys rust-values.mk sets through `CARGO_PROFILE_RELEASE_*`.
pub(crate) const SDK_OVERRIDES: &[&str] = &[
    "codegen-units",
    "debug",
    "debug-assertions",
    "lto",
    "opt-level",
    "overflow-checks",
    "panic",
    "rpath",
];

/// Cargo's own value for `key` in the release profile when `Cargo.toml` sets none.
fn release_default(key: &str) -> &'static str {
    match key {
        "codegen-units" => "16",
        "opt-level" => "3",
        "panic" => "\"unwind\"",
        // debug, debug-assertions, lto, overflow-checks, rpath
        _ => "false",
    }
}

/// The `key = value` lines of `[section]` in a TOML file (values as written, comments cut).
pub(crate) fn section(toml: &str, name: &str) -> Vec<(String, String)> {
    let header = format!("[{name}]");
    let mut inside = false;
    let mut out = Vec::new();
    for line in toml.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            inside = line == header;
            continue;
        }
        if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// The settings the SDK's environment could change are set by `[profile.openwrt]` itself, and
/// equal what `[profile.release]` (the profile of `cargo xtask cross`) gives them.
pub(crate) fn profile_matches(cargo_toml: &str) -> Result {
    let release = section(cargo_toml, "profile.release");
    let openwrt = section(cargo_toml, "profile.openwrt");
    let get = |s: &[(String, String)], k: &str| {
        s.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
    };
    ensure(
        get(&openwrt, "inherits").as_deref() == Some("\"release\""),
        || "[profile.openwrt] must inherit \"release\" (its per-crate opt-levels)".into(),
    )?;
    for k in SDK_OVERRIDES {
        let ours = get(&openwrt, k)
            .ok_or_else(|| format!("[profile.openwrt] leaves `{k}` to the SDK's environment"))?;
        let want = get(&release, k).unwrap_or_else(|| release_default(k).to_string());
        ensure(ours == want, || {
            format!("[profile.openwrt] {k} = {ours}, but `cargo xtask cross` builds with {want}")
        })?;
    }
    Ok(())
}

/// The package Makefile builds with `[profile.openwrt]`: it sets `CARGO_PKG_PROFILE` after
/// rust-package.mk (which sets it to `release`).
pub(crate) fn makefile_uses_profile(makefile: &Path) -> Result {
    let text = std::fs::read_to_string(makefile).map_err(|e| e.to_string())?;
    let include = text
        .find("rust-package.mk")
        .ok_or("the Makefile does not include rust-package.mk")?;
    let set = text
        .rfind("CARGO_PKG_PROFILE:=openwrt")
        .ok_or("the Makefile does not set CARGO_PKG_PROFILE:=openwrt")?;
    ensure(set > include, || {
        "CARGO_PKG_PROFILE is set before rust-package.mk, which sets it again".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "[profile.release]\nopt-level = \"s\"\nlto = true\ncodegen-units = 1\npanic = \"abort\" # small\n\n[profile.openwrt]\ninherits = \"release\"\nopt-level = \"s\"\nlto = true\ncodegen-units = 1\npanic = \"abort\"\ndebug = false\ndebug-assertions = false\noverflow-checks = false\nrpath = false\n";

    #[test]
    fn a_profile_setting_every_key_like_release_passes() {
        profile_matches(OURS).unwrap();
    }

    #[test]
    fn a_key_left_to_the_sdk_or_set_otherwise_fails() {
        let missing = OURS.replace("overflow-checks = false\n", "");
        assert!(profile_matches(&missing)
            .unwrap_err()
            .contains("overflow-checks"));
        let other = OURS.replace("panic = \"abort\"\ndebug", "panic = \"unwind\"\ndebug");
        assert!(profile_matches(&other).unwrap_err().contains("panic"));
        let no_inherit = OURS.replace("inherits = \"release\"\n", "");
        assert!(profile_matches(&no_inherit).is_err());
    }

    #[test]
    fn the_repository_holds_them_together() {
        let root = crate::root();
        let toml = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        profile_matches(&toml).unwrap();
        makefile_uses_profile(&root.join("openwrt-package/shadowmesh/Makefile")).unwrap();
    }
}
