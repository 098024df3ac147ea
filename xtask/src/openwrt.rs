//! `cargo xtask dist`: OpenWrt packages from the Docker-free cross builds, without the SDK; and
//! the packaging tests `cargo xtask test` runs on them.
//!
//! An OpenWrt 24.10 `.ipk` is a gzip'd tar (not an ar archive, unlike Debian's) of
//! `debian-binary` ("2.0"), `control.tar.gz` (control, conffiles, postinst, prerm) and
//! `data.tar.gz` (the files, owned by root). Everything is written with fixed owners, modes,
//! order and timestamps, so the same inputs make the same bytes. `.apk` (OpenWrt 25.12, apk-tools
//! v3) is left to the SDK Makefile: no apk v3 tool exists on this machine to build or check one.
//!
//! opkg, rpcd, ubus, uci, procd and /lib/functions.sh exist in no registry this project reaches;
//! the tests use the stand-ins in `openwrt-package/tests/standins/`, and each test's name says
//! when it does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{root, Result};

/// OpenWrt architecture → the Rust target whose static binary it runs.
pub const ARCHES: &[(&str, &str)] = &[
    ("x86_64", "x86_64-unknown-linux-musl"),
    ("aarch64_cortex-a53", "aarch64-unknown-linux-musl"),
    ("aarch64_cortex-a72", "aarch64-unknown-linux-musl"),
    ("aarch64_generic", "aarch64-unknown-linux-musl"),
    ("mipsel_24kc", "mipsel-unknown-linux-musl"),
    ("mips_24kc", "mips-unknown-linux-musl"),
];

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
const POSTINST: &str = "#!/bin/sh\n[ \"${IPKG_NO_SCRIPT}\" = \"1\" ] && exit 0\n[ -s \"${IPKG_INSTROOT}/lib/functions.sh\" ] || exit 0\n# shellcheck source=/dev/null\n. \"${IPKG_INSTROOT}/lib/functions.sh\"\ndefault_postinst \"$0\" \"$@\"\n";
const PRERM: &str = "#!/bin/sh\n[ -s \"${IPKG_INSTROOT}/lib/functions.sh\" ] || exit 0\n# shellcheck source=/dev/null\n. \"${IPKG_INSTROOT}/lib/functions.sh\"\ndefault_prerm \"$0\" \"$@\"\n";
/// luci.mk's postinst: a live system drops LuCI's caches and reloads rpcd (new ACL); an image
/// build has nothing to reload.
const LUCI_POSTINST: &str = "#!/bin/sh\n[ -n \"${IPKG_INSTROOT}\" ] || {\n\trm -f /tmp/luci-indexcache.*\n\trm -rf /tmp/luci-modulecache/\n\t/etc/init.d/rpcd reload 2>/dev/null\n\texit 0\n}\n";

/// Runs `sh -c script` in `dir`; fails with its stderr.
fn sh(dir: &Path, script: &str) -> Result {
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
const TAR: &str =
    "tar --format=gnu --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -cf -";

fn set_mode(p: &Path, mode: u32) -> Result {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}

/// One package to write.
struct Pkg<'a> {
    name: &'a str,
    arch: &'a str,
    depends: &'a str,
    description: &'a str,
    /// (image path, source, mode)
    files: &'a [(String, PathBuf, u32)],
    scripts: &'a [(&'a str, &'a str)],
    conffiles: &'a [&'a str],
}

/// Writes one `.ipk` into `out_dir`.
fn build_ipk(pkg: &Pkg, out_dir: &Path) -> Result<PathBuf> {
    let Pkg {
        name,
        arch,
        depends,
        description,
        files,
        scripts,
        conffiles,
    } = *pkg;
    let version = version()?;
    let work = out_dir.join(format!(".work-{name}-{arch}"));
    let _ = std::fs::remove_dir_all(&work);
    let data = work.join("data");
    let control = work.join("control");
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&control).map_err(|e| e.to_string())?;
    let mut size = 0u64;
    for (path, src, mode) in files {
        let dst = data.join(path);
        std::fs::create_dir_all(dst.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::copy(src, &dst).map_err(|e| format!("{}: {e}", src.display()))?;
        set_mode(&dst, *mode)?;
        size += std::fs::metadata(&dst).map_err(|e| e.to_string())?.len();
    }
    // Directories 0755 whatever the umask.
    sh(&data, "find . -type d -exec chmod 0755 {} +")?;
    let mut ctl = format!(
        "Package: {name}\nVersion: {version}\nDepends: {depends}\nSource: openwrt-package/{name}\n\
         SourceName: {name}\nLicense: Apache-2.0\nSection: net\nMaintainer: ShadowMesh developers\n\
         Architecture: {arch}\nInstalled-Size: {size}\nDescription: {description}\n"
    );
    if depends.is_empty() {
        ctl = ctl.replace("Depends: \n", "");
    }
    std::fs::write(control.join("control"), ctl).map_err(|e| e.to_string())?;
    if !conffiles.is_empty() {
        std::fs::write(control.join("conffiles"), conffiles.join("\n") + "\n")
            .map_err(|e| e.to_string())?;
    }
    for (n, text) in scripts {
        std::fs::write(control.join(n), text).map_err(|e| e.to_string())?;
        set_mode(&control.join(n), 0o755)?;
    }
    std::fs::write(work.join("debian-binary"), "2.0\n").map_err(|e| e.to_string())?;
    sh(
        &work,
        &format!("cd data && {TAR} . | gzip -n -9 > ../data.tar.gz"),
    )?;
    sh(
        &work,
        &format!("cd control && {TAR} . | gzip -n -9 > ../control.tar.gz"),
    )?;
    let file = out_dir.join(format!("{name}_{version}_{arch}.ipk"));
    sh(
        &work,
        &format!(
            "{TAR} ./debian-binary ./data.tar.gz ./control.tar.gz | gzip -n -9 > '{}'",
            file.display()
        ),
    )?;
    std::fs::remove_dir_all(&work).map_err(|e| e.to_string())?;
    Ok(file)
}

/// `cargo xtask dist [--no-build]`: the cross builds, then one `shadowmesh` package per
/// OpenWrt architecture and `luci-app-shadowmesh` for all, in `target/dist/`.
pub fn dist(args: &[String]) -> Result<Vec<PathBuf>> {
    let out = dist_dir();
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let mut built = Vec::new();
    let mut targets: Vec<&str> = ARCHES.iter().map(|(_, t)| *t).collect();
    targets.dedup();
    if !args.iter().any(|a| a == "--no-build") {
        for t in &targets {
            crate::cross_build(t)?;
        }
    }
    for (arch, t) in ARCHES {
        let bin = crate::target_dir()
            .join(t)
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
        built.push(build_ipk(
            &Pkg {
                name: "shadowmesh",
                arch,
                depends: "kmod-tun",
                description: "Decentralized post-quantum mesh VPN: Kademlia DHT discovery, ML-DSA-87 + Ed25519 identities, ML-KEM-1024 + X25519 in QUIC, LAN-to-LAN tunnels.",
                files: &files,
                scripts: &[("postinst", POSTINST), ("prerm", PRERM)],
                conffiles: &["/etc/config/shadowmesh"],
            },
            &out,
        )?);
    }
    built.push(build_ipk(
        &Pkg {
            name: "luci-app-shadowmesh",
            arch: "all",
            depends: "shadowmesh, luci-base",
            description:
                "LuCI pages for ShadowMesh: settings and status (peers, network key with QR code).",
            files: &luci_files()?,
            scripts: &[("postinst", LUCI_POSTINST)],
            conffiles: &[],
        },
        &out,
    )?);
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

fn output(cmd: &mut Command) -> Result<String> {
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

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

/// The ELF machine of a binary (e_machine, in the file's own byte order).
fn elf_machine(p: &Path) -> Result<u16> {
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

/// The ELF machine and byte order each OpenWrt architecture needs.
fn expected_machine(arch: &str) -> (u16, u8) {
    match arch {
        "x86_64" => (62, 1),
        a if a.starts_with("aarch64") => (183, 1),
        "mipsel_24kc" => (8, 1),
        _ => (8, 2),
    }
}

/// Opens one package with tar/gzip the way opkg does and checks it; unpacks into `into`.
fn check_ipk(pkg: &Path, into: &Path) -> Result {
    let name = pkg.file_name().unwrap().to_string_lossy().to_string();
    let (pkgname, rest) = name.split_once('_').ok_or("name without _")?;
    let arch = rest
        .strip_prefix(&format!("{}_", version()?))
        .and_then(|r| r.strip_suffix(".ipk"))
        .ok_or("name is not NAME_VERSION_ARCH.ipk")?;
    let _ = std::fs::remove_dir_all(into);
    std::fs::create_dir_all(into.join("ctl")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(into.join("root")).map_err(|e| e.to_string())?;
    // The outer archive: a gzip'd tar of exactly three members, debian-binary first.
    let members = output(Command::new("tar").arg("-tzf").arg(pkg))?;
    let members: Vec<&str> = members.lines().collect();
    ensure(
        members == ["./debian-binary", "./data.tar.gz", "./control.tar.gz"],
        || format!("outer members {members:?}"),
    )?;
    output(Command::new("tar").arg("-xzf").arg(pkg).arg("-C").arg(into))?;
    let db = std::fs::read_to_string(into.join("debian-binary")).map_err(|e| e.to_string())?;
    ensure(db == "2.0\n", || format!("debian-binary {db:?}"))?;
    output(
        Command::new("tar")
            .arg("-xzf")
            .arg(into.join("control.tar.gz"))
            .arg("-C")
            .arg(into.join("ctl")),
    )?;
    let control = std::fs::read_to_string(into.join("ctl/control")).map_err(|e| e.to_string())?;
    let field = |k: &str| {
        control
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}: ")).map(str::to_string))
    };
    ensure(field("Package").as_deref() == Some(pkgname), || {
        format!("Package {:?}", field("Package"))
    })?;
    ensure(field("Version") == Some(version()?), || {
        format!("Version {:?}", field("Version"))
    })?;
    ensure(field("Architecture").as_deref() == Some(arch), || {
        format!("Architecture {:?}", field("Architecture"))
    })?;
    for k in ["Maintainer", "License", "Section", "Description", "Source"] {
        ensure(field(k).is_some(), || format!("no {k} field"))?;
    }
    // Every file in data.tar.gz: owned by root, with its intended mode.
    let listing = output(
        Command::new("tar")
            .arg("--numeric-owner")
            .arg("-tvzf")
            .arg(into.join("data.tar.gz")),
    )?;
    output(
        Command::new("tar")
            .arg("-xzf")
            .arg(into.join("data.tar.gz"))
            .arg("-C")
            .arg(into.join("root")),
    )?;
    let mut total = 0u64;
    let mut modes = std::collections::BTreeMap::new();
    for l in listing.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        ensure(w.len() >= 6 && w[1] == "0/0", || {
            format!("not root-owned: {l}")
        })?;
        if w[0].starts_with('-') {
            total += w[2].parse::<u64>().map_err(|e| e.to_string())?;
            modes.insert(w[5].trim_start_matches("./").to_string(), w[0].to_string());
        }
    }
    let installed: u64 = field("Installed-Size")
        .and_then(|v| v.parse().ok())
        .ok_or("no Installed-Size")?;
    ensure(installed == total, || {
        format!("Installed-Size {installed}, files add up to {total}")
    })?;
    if pkgname == "shadowmesh" {
        ensure(field("Depends").as_deref() == Some("kmod-tun"), || {
            format!("Depends {:?}", field("Depends"))
        })?;
        let conffiles =
            std::fs::read_to_string(into.join("ctl/conffiles")).map_err(|e| e.to_string())?;
        ensure(conffiles == "/etc/config/shadowmesh\n", || {
            format!("conffiles {conffiles:?}")
        })?;
        for (path, mode) in [
            ("usr/sbin/shadowmesh", "-rwxr-xr-x"),
            ("etc/init.d/shadowmesh", "-rwxr-xr-x"),
            ("etc/config/shadowmesh", "-rw-------"),
            ("etc/uci-defaults/90-shadowmesh", "-rwxr-xr-x"),
            ("lib/upgrade/keep.d/shadowmesh", "-rw-r--r--"),
            ("usr/libexec/rpcd/shadowmesh", "-rwxr-xr-x"),
        ] {
            ensure(modes.get(path).map(String::as_str) == Some(mode), || {
                format!("{path}: mode {:?}, want {mode}", modes.get(path))
            })?;
        }
        ensure(modes.len() == 6, || format!("unexpected files {modes:?}"))?;
        let keep = std::fs::read_to_string(into.join("root/lib/upgrade/keep.d/shadowmesh"))
            .map_err(|e| e.to_string())?;
        ensure(keep.lines().any(|l| l == "/etc/shadowmesh/"), || {
            format!("keep.d does not keep the identity: {keep:?}")
        })?;
        let m = elf_machine(&into.join("root/usr/sbin/shadowmesh"))?;
        let b = std::fs::read(into.join("root/usr/sbin/shadowmesh")).map_err(|e| e.to_string())?;
        let (want, order) = expected_machine(arch);
        ensure(m == want && b[5] == order, || {
            format!(
                "binary is ELF machine {m} order {}, {arch} needs {want} order {order}",
                b[5]
            )
        })?;
        for s in ["postinst", "prerm"] {
            let p = into.join("ctl").join(s);
            ensure(
                std::fs::read_to_string(&p)
                    .map_err(|e| e.to_string())?
                    .contains(&format!("default_{s} \"$0\" \"$@\"")),
                || format!("{s} is not OpenWrt's default_{s}"),
            )?;
        }
    } else {
        ensure(
            modes.contains_key("usr/share/luci/menu.d/luci-app-shadowmesh.json")
                && modes.contains_key("usr/share/rpcd/acl.d/luci-app-shadowmesh.json")
                && modes.contains_key("www/luci-static/resources/view/shadowmesh/status.js")
                && modes.contains_key("www/luci-static/resources/view/shadowmesh/settings.js"),
            || format!("LuCI files missing: {modes:?}"),
        )?;
    }
    Ok(())
}

/// Unpacks the x86_64 package into an image root as the image builder does (data, the opkg
/// list file, control scripts in /usr/lib/opkg/info) and runs its postinst with IPKG_INSTROOT
/// set; OpenWrt's /lib/functions.sh and /etc/rc.common are the stand-ins.
fn postinst_in_image_root(pkg: &Path, work: &Path) -> Result {
    let unpack = work.join("unpack");
    check_ipk(pkg, &unpack)?;
    let rootfs = work.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    let info = rootfs.join("usr/lib/opkg/info");
    std::fs::create_dir_all(&info).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(rootfs.join("lib")).map_err(|e| e.to_string())?;
    let standins = root().join("openwrt-package/tests/standins");
    std::fs::copy(
        standins.join("functions.sh"),
        rootfs.join("lib/functions.sh"),
    )
    .map_err(|e| e.to_string())?;
    output(
        Command::new("tar")
            .arg("-xzf")
            .arg(unpack.join("data.tar.gz"))
            .arg("-C")
            .arg(&rootfs),
    )?;
    std::fs::copy(standins.join("rc.common"), rootfs.join("etc/rc.common"))
        .map_err(|e| e.to_string())?;
    let list = output(
        Command::new("tar")
            .arg("-tzf")
            .arg(unpack.join("data.tar.gz")),
    )?;
    let files: Vec<String> = list
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(|l| l.trim_start_matches('.').to_string())
        .collect();
    std::fs::write(info.join("shadowmesh.list"), files.join("\n") + "\n")
        .map_err(|e| e.to_string())?;
    for s in ["control", "conffiles", "postinst", "prerm"] {
        std::fs::copy(
            unpack.join("ctl").join(s),
            info.join(format!("shadowmesh.{s}")),
        )
        .map_err(|e| e.to_string())?;
    }
    let run = |script: &str| {
        output(
            Command::new("sh")
                .arg(info.join(format!("shadowmesh.{script}")))
                .env("IPKG_INSTROOT", &rootfs),
        )
    };
    run("postinst")?;
    let link = |n: &str| std::fs::read_link(rootfs.join("etc/rc.d").join(n)).ok();
    ensure(
        link("S90shadowmesh") == Some("../init.d/shadowmesh".into())
            && link("K10shadowmesh") == Some("../init.d/shadowmesh".into()),
        || "postinst did not enable the service (no /etc/rc.d/S90shadowmesh, K10shadowmesh)".into(),
    )?;
    for f in [
        "usr/sbin/shadowmesh",
        "etc/config/shadowmesh",
        "etc/init.d/shadowmesh",
        "etc/uci-defaults/90-shadowmesh",
        "usr/libexec/rpcd/shadowmesh",
        "lib/upgrade/keep.d/shadowmesh",
    ] {
        ensure(rootfs.join(f).is_file(), || {
            format!("/{f} not in the image root")
        })?;
    }
    // Nothing outside the image root was touched, and prerm undoes the enable.
    run("prerm")?;
    ensure(link("S90shadowmesh").is_none(), || {
        "prerm left /etc/rc.d/S90shadowmesh".into()
    })?;
    Ok(())
}

/// The shell files the package ships or its tests drive.
fn shell_files() -> Vec<PathBuf> {
    let f = root().join("openwrt-package/shadowmesh/files");
    let s = root().join("openwrt-package/tests/standins");
    vec![
        f.join("shadowmesh.init"),
        f.join("shadowmesh.uci-defaults"),
        f.join("shadowmesh.rpcd"),
        s.join("functions.sh"),
        s.join("rc.common"),
    ]
}

fn shell_checks(work: &Path) -> Result {
    let mut files = shell_files();
    // The control scripts as packaged.
    for (n, text) in [
        ("postinst", POSTINST),
        ("prerm", PRERM),
        ("luci-postinst", LUCI_POSTINST),
    ] {
        let p = work.join(n);
        std::fs::write(&p, text).map_err(|e| e.to_string())?;
        files.push(p);
    }
    for f in &files {
        output(Command::new("sh").arg("-n").arg(f))?;
        // Each file names its shell (#!/bin/sh, or `shell=ash` for the procd init script).
        output(Command::new("shellcheck").arg("-x").arg(f))
            .map_err(|e| format!("shellcheck {}: {e}", f.display()))?;
    }
    Ok(())
}

/// A fake root for the stand-in tests: the package's files plus the stand-ins, and `uci` on
/// PATH pointing at `root/etc/config`.
fn standin_env(cmd: &mut Command, rootfs: &Path, log: &Path) {
    let standins = root().join("openwrt-package/tests/standins");
    let path = format!(
        "{}:{}",
        standins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path)
        .env("UCI_CONFIG_DIR", rootfs.join("etc/config"))
        .env("STANDIN_LOG", log);
}

/// Runs the init script's start_service (and service_triggers) against the recording procd
/// stand-in, inside a private mount namespace where the package's binary is /usr/sbin.
fn init_script_standin(rootfs: &Path, work: &Path) -> Result {
    let log = work.join("procd.log");
    let _ = std::fs::remove_file(&log);
    let conf = rootfs.join("etc/config/shadowmesh");
    let before = std::fs::read_to_string(&conf).map_err(|e| e.to_string())?;
    let start = |log: &Path| -> Result<String> {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$1/usr/sbin\" /usr/sbin && exec sh \"$1/etc/rc.common\" \"$1/etc/init.d/shadowmesh\" start")
            .arg("sh")
            .arg(rootfs);
        standin_env(&mut c, rootfs, log);
        output(&mut c)?;
        std::fs::read_to_string(log).map_err(|e| e.to_string())
    };
    let rec = start(&log)?;
    let want_lines = [
        "'procd_open_instance'",
        "'procd_set_param' 'command' '/usr/sbin/shadowmesh' 'run' '--config' '/etc/config/shadowmesh'",
        "'procd_set_param' 'respawn' '3600' '5' '5'",
        "'procd_set_param' 'stderr' '1'",
        "'procd_set_param' 'file' '/etc/config/shadowmesh'",
        "'procd_set_param' 'reload_signal' 'HUP'",
        "'json_add_string' 'dest_port' '4433'",
        "'json_add_string' 'proto' 'udp'",
        "'procd_close_instance'",
        "'procd_add_reload_trigger' 'shadowmesh'",
    ];
    for w in want_lines {
        ensure(rec.lines().any(|l| l == w), || {
            format!("start_service did not emit {w}; it emitted:\n{rec}")
        })?;
    }
    // The network key was generated, committed and is what the daemon will read.
    let after = std::fs::read_to_string(&conf).map_err(|e| e.to_string())?;
    let key_line = after
        .lines()
        .find(|l| l.trim_start().starts_with("option network_key"))
        .ok_or_else(|| format!("no network_key committed:\n{after}"))?
        .to_string();
    let hex = key_line.split('\'').nth(1).unwrap_or("");
    ensure(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        || format!("network key {key_line:?}"),
    )?;
    ensure(!before.contains("network_key '"), || {
        "fixture had a key".into()
    })?;
    // A second start keeps it.
    let _ = std::fs::remove_file(&log);
    start(&log)?;
    let again = std::fs::read_to_string(&conf).map_err(|e| e.to_string())?;
    ensure(again.contains(&key_line), || {
        "a second start replaced the network key".into()
    })?;
    // The daemon accepts the file the script wrote (the key is in `secret`, never `status`).
    output(
        Command::new(rootfs.join("usr/sbin/shadowmesh"))
            .args(["rpcd", "--config"])
            .arg(&conf)
            .args(["call", "secret"]),
    )
    .and_then(|s| {
        ensure(s.contains(&format!("\"network_key\":\"{hex}\"")), || {
            format!("the daemon does not read the generated key: {s}")
        })
    })?;
    // A seed gets no key; a disabled service emits no instance.
    for (opt, absent) in [
        ("seed", "network_key '"),
        ("enabled", "procd_open_instance"),
    ] {
        std::fs::write(
            &conf,
            format!(
                "config shadowmesh 'main'\n\toption {opt} '{}'\n",
                if opt == "seed" { 1 } else { 0 }
            ),
        )
        .map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&log);
        let rec = start(&log)?;
        let text = std::fs::read_to_string(&conf).map_err(|e| e.to_string())? + &rec;
        ensure(!text.contains(absent), || {
            format!("{opt}: found {absent}:\n{text}")
        })?;
    }
    std::fs::write(&conf, before).map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs the uci-defaults script twice against the uci stand-in: the interface, the zone and
/// both forwardings exist once, and the second run changes nothing.
fn uci_defaults_standin(rootfs: &Path, work: &Path) -> Result {
    let cfg = rootfs.join("etc/config");
    std::fs::write(
        cfg.join("firewall"),
        "config zone 'lan'\n\toption name 'lan'\n\tlist network 'lan'\n",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(
        cfg.join("network"),
        "config interface 'lan'\n\toption proto 'static'\n",
    )
    .map_err(|e| e.to_string())?;
    let log = work.join("uci-defaults.log");
    let run = || -> Result<(String, String)> {
        let mut c = Command::new("sh");
        c.arg(rootfs.join("etc/uci-defaults/90-shadowmesh"));
        standin_env(&mut c, rootfs, &log);
        output(&mut c)?;
        Ok((
            std::fs::read_to_string(cfg.join("network")).map_err(|e| e.to_string())?,
            std::fs::read_to_string(cfg.join("firewall")).map_err(|e| e.to_string())?,
        ))
    };
    let (net1, fw1) = run()?;
    let (net2, fw2) = run()?;
    ensure(net1 == net2 && fw1 == fw2, || {
        format!("second run changed something:\n{fw1}\n---\n{fw2}")
    })?;
    let want = "config interface 'shadowmesh'\n\toption proto 'none'\n\toption device 'smesh0'";
    ensure(net1.contains(want), || {
        format!("network lacks {want:?}:\n{net1}")
    })?;
    for want in [
        "config zone 'shadowmesh'\n\toption name 'shadowmesh'\n\tlist network 'shadowmesh'",
        "config forwarding 'shadowmesh_lan_mesh'\n\toption src 'lan'\n\toption dest 'shadowmesh'",
        "config forwarding 'shadowmesh_mesh_lan'\n\toption src 'shadowmesh'\n\toption dest 'lan'",
        "config zone 'lan'",
    ] {
        ensure(fw1.contains(want), || {
            format!("firewall lacks {want:?}:\n{fw1}")
        })?;
    }
    ensure(!cfg.join(".uci-standin/firewall").exists(), || {
        "changes left uncommitted".into()
    })?;
    Ok(())
}

/// The packaging tests: builds the packages (unless `--no-build`), opens every one, installs
/// the x86_64 one into an image root, checks the shell scripts and runs them against the
/// stand-ins.
pub fn test_packages(checks: &mut Checks, build: bool) -> Result {
    let no_build = ["--no-build".to_string()];
    let pkgs = dist(if build { &[] } else { &no_build })?;
    let work = std::env::temp_dir().join(format!("shadowmesh-pkgtest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    for p in &pkgs {
        let n = p.file_name().unwrap().to_string_lossy().to_string();
        checks.check(
            &format!("package {n}: opened with tar/gzip, control, conffiles, modes, ELF"),
            check_ipk(p, &work.join("open")),
        );
    }
    let x86 = pkgs
        .iter()
        .find(|p| p.to_string_lossy().ends_with("_x86_64.ipk"))
        .ok_or("no x86_64 package")?;
    checks.check(
        "postinst with IPKG_INSTROOT in an image root enables the service (stand-in functions.sh, rc.common)",
        postinst_in_image_root(x86, &work.join("image")),
    );
    checks.check(
        "sh -n and shellcheck: init, uci-defaults, rpcd, postinst, prerm, stand-ins",
        shell_checks(&work),
    );
    let rootfs = work.join("image/rootfs");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        checks.check(
            "init script start_service against the recording procd stand-in (uci stand-in)",
            init_script_standin(&rootfs, &work),
        );
    } else {
        println!("skipped: init script start_service (needs root for a private mount namespace)");
    }
    checks.check(
        "uci-defaults: interface, zone, forwardings, idempotent (uci stand-in)",
        uci_defaults_standin(&rootfs, &work),
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
