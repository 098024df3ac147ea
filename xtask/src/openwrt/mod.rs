//! `cargo xtask dist`: OpenWrt packages from the Docker-free cross builds, without the SDK: an
//! `.ipk` for 24.10 ([`ipk`]) and an `.apk` for 25.12 ([`apk`]) for every architecture a board
//! in `boards/` names, and `luci-app-shadowmesh` in both formats; and the packaging tests
//! `cargo xtask test` runs on them.
//!
//! opkg, rpcd, ubus, uci, procd and /lib/functions.sh exist in no registry this project reaches;
//! the tests use the stand-ins in `openwrt-package/tests/standins/` ([`standins`]), and each
//! test's name says when it does. `apk` is the real apk-tools v3, built by `.ci/apk-tools`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{root, Result};

pub mod apk;
mod ipk;
mod sdk;
mod standins;

/// The package release appended to the crate version (`0.1.0-r1`), as the SDK Makefile's
/// PKG_RELEASE.
const RELEASE: u32 = 1;

/// Where packages go.
pub fn dist_dir() -> PathBuf {
    root().join("target").join("dist")
}

/// The workspace version (`[workspace.package] version`).
pub fn version() -> Result<String> {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).map_err(|e| e.to_string())?;
    let v = text
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "version").then(|| v.trim().trim_matches('"').to_string())
        })
        .ok_or("no [workspace.package] version in Cargo.toml")?;
    Ok(format!("{v}-r{RELEASE}"))
}

/// One file of a package: its path in the image, where it comes from, its mode.
struct Entry {
    path: &'static str,
    src: PathBuf,
    mode: u32,
}

fn pkg_files(bin: &Path) -> Vec<Entry> {
    let f = root().join("openwrt-package/shadowmesh/files");
    vec![
        Entry {
            path: "usr/sbin/shadowmesh",
            src: bin.to_path_buf(),
            mode: 0o755,
        },
        Entry {
            path: "etc/init.d/shadowmesh",
            src: f.join("shadowmesh.init"),
            mode: 0o755,
        },
        // INSTALL_CONF's mode: the network key lives in it.
        Entry {
            path: "etc/config/shadowmesh",
            src: f.join("shadowmesh.config"),
            mode: 0o600,
        },
        Entry {
            path: "etc/uci-defaults/90-shadowmesh",
            src: f.join("shadowmesh.uci-defaults"),
            mode: 0o755,
        },
        Entry {
            path: "lib/upgrade/keep.d/shadowmesh",
            src: f.join("shadowmesh.keep"),
            mode: 0o644,
        },
        Entry {
            path: "usr/libexec/rpcd/shadowmesh",
            src: f.join("shadowmesh.rpcd"),
            mode: 0o755,
        },
        Entry {
            path: "usr/libexec/shadowmesh/uci-remove",
            src: f.join("shadowmesh.uci-remove"),
            mode: 0o755,
        },
    ]
}

/// The LuCI app's files (architecture `all`).
fn luci_files() -> Result<Vec<(String, PathBuf, u32)>> {
    let base = root().join("luci-app/luci-app-shadowmesh");
    let mut out = Vec::new();
    for (dir, prefix) in [("htdocs", "www"), ("root", "")] {
        let mut stack = vec![base.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
                let p = e.map_err(|e| e.to_string())?.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p
                    .strip_prefix(base.join(dir))
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                let path = if prefix.is_empty() {
                    rel
                } else {
                    format!("{prefix}/{rel}")
                };
                out.push((path, p, 0o644));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// OpenWrt's standard control scripts (package.mk), quoted so shellcheck passes.
pub(crate) const POSTINST: &str = "#!/bin/sh\n[ \"${IPKG_NO_SCRIPT}\" = \"1\" ] && exit 0\n[ -s \"${IPKG_INSTROOT}/lib/functions.sh\" ] || exit 0\n# shellcheck source=/dev/null\n. \"${IPKG_INSTROOT}/lib/functions.sh\"\ndefault_postinst \"$0\" \"$@\"\n";
pub(crate) const PRERM: &str = "#!/bin/sh\n[ -s \"${IPKG_INSTROOT}/lib/functions.sh\" ] || exit 0\n# shellcheck source=/dev/null\n. \"${IPKG_INSTROOT}/lib/functions.sh\"\ndefault_prerm \"$0\" \"$@\"\n[ -n \"${IPKG_INSTROOT}\" ] || [ \"${PKG_UPGRADE}\" = \"1\" ] || /usr/libexec/shadowmesh/uci-remove\n";
/// The daemon package's own removal step (the SDK Makefile's `Package/shadowmesh/prerm`): the
/// network and firewall sections its uci-defaults added go with it, not on an upgrade.
pub(crate) const PRERM_PKG: &str = "[ -n \"${IPKG_INSTROOT}\" ] || [ \"${PKG_UPGRADE}\" = \"1\" ] || /usr/libexec/shadowmesh/uci-remove\n";
/// luci.mk's postinst: a live system drops LuCI's caches and reloads rpcd (new ACL); an image
/// build has nothing to reload.
pub(crate) const LUCI_POSTINST: &str = "#!/bin/sh\n[ -n \"${IPKG_INSTROOT}\" ] || {\n\trm -f /tmp/luci-indexcache.*\n\trm -rf /tmp/luci-modulecache/\n\t/etc/init.d/rpcd reload 2>/dev/null\n\texit 0\n}\n";

/// Runs `sh -c script` in `dir`; fails with its stderr.
pub(crate) fn sh(dir: &Path, script: &str) -> Result {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A reproducible `tar | gzip -n` of `dir`'s contents (`./` first, names sorted, root-owned).
pub(crate) const TAR: &str =
    "tar --format=gnu --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -cf -";

pub(crate) fn set_mode(p: &Path, mode: u32) -> Result {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}

/// One package to write.
pub(crate) struct Pkg<'a> {
    pub name: &'a str,
    /// OpenWrt's architecture, `all` for the LuCI app.
    pub arch: &'a str,
    /// Comma-separated, as opkg writes them.
    pub depends: &'a str,
    pub description: &'a str,
    /// (image path, source, mode)
    pub files: &'a [(String, PathBuf, u32)],
    /// The package's own `postinst` body, run after OpenWrt's `default_postinst`.
    pub postinst: Option<&'a str>,
    /// The package's own `prerm` body, run after OpenWrt's `default_prerm`.
    pub prerm: Option<&'a str>,
    pub conffiles: &'a [&'a str],
}

/// Copies a package's files into `data` with their modes; directories 0755 whatever the umask.
/// Returns the sum of the file sizes.
pub(crate) fn stage(files: &[(String, PathBuf, u32)], data: &Path) -> Result<u64> {
    std::fs::create_dir_all(data).map_err(|e| e.to_string())?;
    let mut size = 0u64;
    for (path, src, mode) in files {
        let dst = data.join(path);
        std::fs::create_dir_all(dst.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::copy(src, &dst).map_err(|e| format!("{}: {e}", src.display()))?;
        set_mode(&dst, *mode)?;
        size += std::fs::metadata(&dst).map_err(|e| e.to_string())?.len();
    }
    sh(data, "find . -type d -exec chmod 0755 {} +")?;
    Ok(size)
}

/// `cargo xtask dist [--no-build]`: the cross builds, then for every OpenWrt architecture in
/// `boards/` a `shadowmesh` `.ipk` (`target/dist/`) and `.apk` (`target/dist/apk/ARCH/`, with
/// `luci-app-shadowmesh` and an index: a local repository), and `luci-app-shadowmesh` as `.ipk`.
pub fn dist(args: &[String]) -> Result<Vec<PathBuf>> {
    let out = dist_dir();
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    apk::tool()?;
    if !args.iter().any(|a| a == "--no-build") {
        for t in crate::boards::targets()? {
            crate::cross_build(&t)?;
        }
    }
    let luci_files = luci_files()?;
    let luci = Pkg {
        name: "luci-app-shadowmesh",
        arch: "all",
        depends: "shadowmesh, luci-base, luci-lib-uqr",
        description:
            "LuCI pages for ShadowMesh: settings and status (peers, network key with QR code).",
        files: &luci_files,
        postinst: Some(LUCI_POSTINST),
        prerm: None,
        conffiles: &[],
    };
    let mut built = Vec::new();
    for (arch, t) in crate::boards::arches()? {
        let bin = crate::target_dir()
            .join(&t)
            .join("release")
            .join("shadowmesh");
        if !bin.exists() {
            return Err(format!(
                "{}: missing (run `cargo xtask dist` without --no-build)",
                bin.display()
            ));
        }
        let files: Vec<(String, PathBuf, u32)> = pkg_files(&bin)
            .into_iter()
            .map(|e| (e.path.to_string(), e.src, e.mode))
            .collect();
        let pkg = Pkg {
            name: "shadowmesh",
            arch: &arch,
            depends: "kmod-tun",
            description: "Decentralized post-quantum mesh VPN: Kademlia DHT discovery, ML-DSA-87 + Ed25519 identities, ML-KEM-1024 + X25519 in QUIC, LAN-to-LAN tunnels.",
            files: &files,
            postinst: None,
            prerm: Some(PRERM_PKG),
            conffiles: &["/etc/config/shadowmesh"],
        };
        built.push(ipk::build(&pkg, &out)?);
        let repo = apk::arch_dir(&out, &arch);
        let _ = std::fs::remove_dir_all(&repo);
        built.push(apk::build(&pkg, &repo)?);
        built.push(apk::build(&luci, &repo)?);
        apk::index(&repo)?;
    }
    built.push(ipk::build(&luci, &out)?);
    for p in &built {
        let size = std::fs::metadata(p).map_err(|e| e.to_string())?.len();
        println!("dist: {} ({} KiB)", p.display(), size / 1024);
    }
    Ok(built)
}

/// Pass/fail bookkeeping for the packaging tests.
#[derive(Default)]
pub struct Checks {
    pub passed: u64,
    pub failures: Vec<String>,
}

impl Checks {
    pub(crate) fn check(&mut self, name: &str, r: Result) {
        match r {
            Ok(()) => {
                println!("ok   {name}");
                self.passed += 1;
            }
            Err(e) => {
                println!("FAIL {name}: {e}");
                self.failures.push(format!("{name}: {e}"));
            }
        }
    }
}

pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

pub(crate) fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

/// The ELF machine of a binary (e_machine, in the file's own byte order).
pub(crate) fn elf_machine(p: &Path) -> Result<u16> {
    let b = std::fs::read(p).map_err(|e| e.to_string())?;
    ensure(b.len() > 20 && &b[..4] == b"\x7fELF", || {
        "not an ELF file".into()
    })?;
    Ok(if b[5] == 2 {
        u16::from_be_bytes([b[18], b[19]])
    } else {
        u16::from_le_bytes([b[18], b[19]])
    })
}

/// Checks that `bin` is an ELF for OpenWrt architecture `arch` (machine and byte order).
pub(crate) fn check_elf(bin: &Path, arch: &str) -> Result {
    let m = elf_machine(bin)?;
    let b = std::fs::read(bin).map_err(|e| e.to_string())?;
    let (want, order) = expected_machine(arch);
    ensure(m == want && b[5] == order, || {
        format!(
            "binary is ELF machine {m} order {}, {arch} needs {want} order {order}",
            b[5]
        )
    })
}

/// The ELF machine and byte order each OpenWrt architecture needs.
pub(crate) fn expected_machine(arch: &str) -> (u16, u8) {
    match arch {
        "x86_64" => (62, 1),
        a if a.starts_with("aarch64") => (183, 1),
        a if a.starts_with("arm_") => (40, 1),
        "mipsel_24kc" => (8, 1),
        _ => (8, 2),
    }
}

/// The packaging tests: builds the packages (unless `--no-build`), opens every one (tar/gzip for
/// `.ipk`, `apk adbdump` and `apk extract` for `.apk`), installs the x86_64 ones into image roots
/// (by hand as the 24.10 image builder does, with `apk add --root` as 25.12's does) and removes
/// them, checks the shell scripts and runs them against the stand-ins.
pub fn test_packages(checks: &mut Checks, build: bool) -> Result {
    let no_build = ["--no-build".to_string()];
    let pkgs = dist(if build { &[] } else { &no_build })?;
    let work = std::env::temp_dir().join(format!("shadowmesh-pkgtest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let mut apk_arches = Vec::new();
    for p in &pkgs {
        let n = p.file_name().unwrap().to_string_lossy().to_string();
        if n.ends_with(".ipk") {
            checks.check(
                &format!("package {n}: opened with tar/gzip, control, conffiles, modes, ELF"),
                ipk::check(p, &work.join("open")),
            );
            continue;
        }
        let arch = p
            .parent()
            .and_then(Path::file_name)
            .map(|a| a.to_string_lossy().to_string())
            .unwrap_or_default();
        let (name, want_arch) = if n.starts_with("luci-app-") {
            ("luci-app-shadowmesh", "all")
        } else {
            apk_arches.push(arch.clone());
            ("shadowmesh", arch.as_str())
        };
        checks.check(
            &format!("package {arch}/{n}: apk adbdump (name, version, arch, depends, scripts, modes), apk extract, ELF"),
            apk::check(p, name, want_arch, &work.join("open-apk")),
        );
    }
    checks.check(
        "an .ipk and an .apk for every OpenWrt architecture in boards/",
        (|| {
            let arches = crate::boards::arches()?;
            for (a, _) in &arches {
                let ipk = format!("shadowmesh_{}_{a}.ipk", version()?);
                ensure(pkgs.iter().any(|p| p.ends_with(&ipk)), || {
                    format!("no {ipk}")
                })?;
                ensure(apk_arches.contains(a), || format!("no .apk for {a}"))?;
            }
            ensure(arches.len() >= 6, || {
                format!("{} architectures", arches.len())
            })
        })(),
    );
    let x86 = pkgs
        .iter()
        .find(|p| p.to_string_lossy().ends_with("_x86_64.ipk"))
        .ok_or("no x86_64 package")?;
    checks.check(
        "postinst with IPKG_INSTROOT in an image root enables the service (stand-in functions.sh, rc.common)",
        ipk::postinst_in_image_root(x86, &work.join("image")),
    );
    checks.check(
        "apk add --root (x86_64, local repository, stand-in kmod-tun and luci-base), post-install enables the service, pre-deinstall and apk del remove every file (stand-in functions.sh, rc.common)",
        apk::install_and_remove(&apk::arch_dir(&dist_dir(), "x86_64"), &work.join("apk-image")),
    );
    checks.check(
        "SDK recipe: CARGO_PKG_PROFILE=openwrt after rust-package.mk, and [profile.openwrt] sets every key rust-values.mk overrides as [profile.release] (cargo xtask cross) has it",
        std::fs::read_to_string(crate::root().join("Cargo.toml"))
            .map_err(|e| e.to_string())
            .and_then(|t| sdk::profile_matches(&t))
            .and_then(|()| {
                sdk::makefile_uses_profile(
                    &crate::root().join("openwrt-package/shadowmesh/Makefile"),
                )
            }),
    );
    checks.check(
        "sh -n and shellcheck: init, uci-defaults, rpcd, postinst, prerm, apk scripts, stand-ins",
        standins::shell_checks(&work),
    );
    let rootfs = work.join("image/rootfs");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        checks.check(
            "init script start_service against the recording procd stand-in (uci stand-in)",
            standins::init_script(&rootfs, &work),
        );
        checks.check(
            "init script reload, option by option: restart-only options start a new instance (new environment digest, firewall port follows), the rest SIGHUP (procd and uci stand-ins)",
            standins::reload(&rootfs, &work),
        );
    } else {
        println!("skipped: init script start and reload (need root for a private mount namespace)");
    }
    checks.check(
        "uci-defaults and uci-remove: interface, zone (input REJECT), ping rule, forwardings, idempotent, reload on a running router, removal of only what was added (uci, ubus, reload_config stand-ins)",
        standins::uci_defaults(&rootfs, &work),
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// `node --check` on every view and a parse of the menu and ACL JSON, checking that they name
/// only views and rpcd methods that exist.
pub fn luci_static(checks: &mut Checks, bin: &Path) {
    let base = root().join("luci-app/luci-app-shadowmesh");
    let views = base.join("htdocs/luci-static/resources/view/shadowmesh");
    checks.check(
        "node --check on every LuCI view",
        (|| {
            let mut n = 0;
            for e in std::fs::read_dir(&views).map_err(|e| e.to_string())? {
                let p = e.map_err(|e| e.to_string())?.path();
                if p.extension().is_some_and(|x| x == "js") {
                    output(Command::new("node").arg("--check").arg(&p))?;
                    n += 1;
                }
            }
            ensure(n >= 2, || format!("{n} views"))
        })(),
    );
    checks.check(
        "menu and ACL JSON parse and name only what exists",
        (|| {
            let script = root().join("luci-app/tests/check-json.js");
            let methods = output(Command::new(bin).args(["rpcd", "list"]))?;
            output(
                Command::new("node")
                    .arg(script)
                    .arg(&base)
                    .arg(methods.trim()),
            )?;
            Ok(())
        })(),
    );
}
