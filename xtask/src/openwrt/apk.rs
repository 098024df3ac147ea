//! `.apk` packages for OpenWrt 25.12 (apk-tools v3), made and checked with the real `apk`.
//!
//! The layout is what the SDK's package-pack.mk gives a package: the files, plus
//! `lib/apk/packages/NAME.list` (every file and link, sorted), `NAME.conffiles` and
//! `NAME.conffiles_static` (path and SHA-256, which sysupgrade reads); the scripts are
//! `post-install` (OpenWrt's `default_postinst`, which enables the init scripts),
//! `post-upgrade` (the same with `PKG_UPGRADE=1`) and `pre-deinstall` (`default_prerm`).
//! `apk mkpkg` writes the ADB file; with `SOURCE_DATE_EPOCH=0` the same inputs make the same
//! bytes. Each architecture's directory is a local repository (`packages.adb`, unsigned).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{ensure, output, sh, Pkg};
use crate::{root, Result};

/// The apk-tools release the project builds and tests with (`.ci/apk-tools`).
pub const APK_TOOLS_VERSION: &str = "3.0.6";

/// The `apk` binary: `$SHADOWMESH_APK`, else where `.ci/apk-tools` installs it, else an `apk`
/// on PATH that is apk-tools v3.
pub fn tool() -> Result<PathBuf> {
    let candidates = std::env::var_os("SHADOWMESH_APK")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            PathBuf::from(format!("/opt/apk-tools-{APK_TOOLS_VERSION}/apk")),
            PathBuf::from("apk"),
        ]);
    for c in candidates {
        if let Ok(o) = Command::new(&c).arg("--version").output() {
            if String::from_utf8_lossy(&o.stdout).starts_with("apk-tools 3.") {
                return Ok(c);
            }
        }
    }
    Err(format!(
        "no apk-tools v3 (`apk`): run .ci/apk-tools, which builds {APK_TOOLS_VERSION} into /opt/apk-tools-{APK_TOOLS_VERSION}/ (or set SHADOWMESH_APK)"
    ))
}

fn apk(args: &[&str]) -> Result<String> {
    output(Command::new(tool()?).args(args))
}

/// The directory (a local repository) of one architecture's `.apk`s.
pub fn arch_dir(out_dir: &Path, arch: &str) -> PathBuf {
    out_dir.join("apk").join(arch)
}

/// The shell header every script starts with: OpenWrt's functions, `root` and `pkgname`.
fn header(name: &str) -> String {
    format!(
        "[ -s \"${{IPKG_INSTROOT}}/lib/functions.sh\" ] || exit 0\n# shellcheck source=/dev/null\n. \"${{IPKG_INSTROOT}}/lib/functions.sh\"\nexport root=\"${{IPKG_INSTROOT}}\"\nexport pkgname=\"{name}\"\n"
    )
}

/// The three scripts (name, text) the SDK gives a package; `postinst` and `prerm` are the
/// package's own bodies, run after `default_postinst` and `default_prerm`.
pub fn scripts(name: &str, postinst: &str, prerm: &str) -> [(&'static str, String); 3] {
    let body = postinst
        .lines()
        .filter(|l| !l.starts_with("#!"))
        .collect::<Vec<_>>()
        .join("\n");
    let install = format!(
        "[ \"${{IPKG_NO_SCRIPT}}\" = \"1\" ] && exit 0\n{}add_group_and_user\ndefault_postinst\n{body}",
        header(name)
    );
    [
        ("post-install", format!("#!/bin/sh\n{install}")),
        (
            "post-upgrade",
            format!("#!/bin/sh\nexport PKG_UPGRADE=1\n{install}"),
        ),
        (
            "pre-deinstall",
            format!("#!/bin/sh\n{}default_prerm\n{prerm}", header(name)),
        ),
    ]
}

/// Writes one `.apk` (`NAME-VERSION.apk`, the name an index expects) into `dir`.
pub fn build(pkg: &Pkg, dir: &Path) -> Result<PathBuf> {
    let version = super::version()?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let work = dir.join(format!(".work-{}", pkg.name));
    let _ = std::fs::remove_dir_all(&work);
    let data = work.join("data");
    super::stage(pkg.files, &data)?;
    let meta = data.join("lib/apk/packages");
    std::fs::create_dir_all(&meta).map_err(|e| e.to_string())?;
    let list = output(
        Command::new("find")
            .arg(".")
            .args([
                "(", "-type", "f", "-o", "-type", "l", ")", "-printf", "/%P\\n",
            ])
            .current_dir(&data),
    )?;
    let mut list: Vec<&str> = list.lines().collect();
    list.sort_unstable();
    let name = pkg.name;
    std::fs::write(meta.join(format!("{name}.list")), list.join("\n") + "\n")
        .map_err(|e| e.to_string())?;
    if !pkg.conffiles.is_empty() {
        let mut stat = String::new();
        for c in pkg.conffiles {
            let hash = output(Command::new("sha256sum").arg(data.join(&c[1..])))?;
            let hash = hash.split_whitespace().next().unwrap_or_default();
            stat += &format!("{c} {hash}\n");
        }
        std::fs::write(
            meta.join(format!("{name}.conffiles")),
            pkg.conffiles.join("\n") + "\n",
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(meta.join(format!("{name}.conffiles_static")), stat)
            .map_err(|e| e.to_string())?;
    }
    sh(&data, "find . -type d -exec chmod 0755 {} +")?;
    let mut script_args = Vec::new();
    for (n, text) in scripts(name, pkg.postinst.unwrap_or(""), pkg.prerm.unwrap_or("")) {
        let p = work.join(n);
        std::fs::write(&p, text).map_err(|e| e.to_string())?;
        script_args.push("--script".to_string());
        script_args.push(format!("{n}:{}", p.display()));
    }
    let file = dir.join(format!("{name}-{version}.apk"));
    let _ = std::fs::remove_file(&file);
    let arch = if pkg.arch == "all" {
        "noarch"
    } else {
        pkg.arch
    };
    let mut c = Command::new(tool()?);
    c.arg("mkpkg")
        .env("SOURCE_DATE_EPOCH", "0")
        .args(["--info", &format!("name:{name}")])
        .args(["--info", &format!("version:{version}")])
        .args(["--info", &format!("description:{}", pkg.description)])
        .args(["--info", &format!("arch:{arch}")])
        .args(["--info", "license:Apache-2.0"])
        .args(["--info", &format!("origin:openwrt-package/{name}")])
        .args(["--info", "maintainer:ShadowMesh developers"])
        .args([
            "--info",
            &format!("depends:{}", pkg.depends.replace(',', " ")),
        ])
        .args(&script_args)
        .arg("--files")
        .arg(&data)
        .arg("--output")
        .arg(&file);
    output(&mut c)?;
    std::fs::remove_dir_all(&work).map_err(|e| e.to_string())?;
    Ok(file)
}

/// Writes `packages.adb` (unsigned) over every `.apk` in `dir`.
pub fn index(dir: &Path) -> Result {
    let mut apks: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".apk"))
        .collect();
    apks.sort();
    let mut c = Command::new(tool()?);
    c.args(["mkndx", "--allow-untrusted", "-o", "packages.adb"])
        .args(&apks)
        .current_dir(dir);
    output(&mut c).map(|_| ())
}

/// `info:` fields and the path entries of an `apk adbdump`.
struct Dump {
    info: Vec<(String, String)>,
    depends: Vec<String>,
    /// (path, mode, user) of every file
    files: Vec<(String, String, String)>,
    scripts: Vec<String>,
}

fn dump(pkg: &Path) -> Result<Dump> {
    let text = apk(&["adbdump", &pkg.to_string_lossy()])?;
    let mut d = Dump {
        info: Vec::new(),
        depends: Vec::new(),
        files: Vec::new(),
        scripts: Vec::new(),
    };
    let mut section = "";
    let mut in_depends = false;
    let mut dir = String::new();
    let mut file: Option<(String, String, String)> = None;
    for l in text.lines() {
        if !l.starts_with(' ') {
            section = l.split(':').next().unwrap_or_default();
            continue;
        }
        let t = l.trim();
        match section {
            "info" => {
                if l.starts_with("  depends:") {
                    in_depends = true;
                } else if in_depends && t.starts_with("- ") {
                    d.depends.push(t[2..].to_string());
                } else if let Some((k, v)) = t.split_once(": ") {
                    in_depends = false;
                    d.info.push((k.to_string(), v.to_string()));
                }
            }
            "paths" => {
                if let Some(n) = l.strip_prefix("  - name: ") {
                    dir = n.to_string();
                } else if let Some(n) = l.strip_prefix("      - name: ") {
                    if let Some(f) = file.take() {
                        d.files.push(f);
                    }
                    file = Some((format!("{dir}/{n}"), String::new(), String::new()));
                } else if let (Some(f), Some(m)) = (file.as_mut(), t.strip_prefix("mode: ")) {
                    if l.starts_with("          ") {
                        f.1 = m.to_string();
                    }
                } else if let (Some(f), Some(u)) = (file.as_mut(), t.strip_prefix("user: ")) {
                    if l.starts_with("          ") {
                        f.2 = u.to_string();
                    }
                }
            }
            "scripts" => {
                if let Some((k, _)) = l.strip_prefix("  ").and_then(|r| r.split_once(':')) {
                    if !k.starts_with(' ') {
                        d.scripts.push(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(f) = file.take() {
        d.files.push(f);
    }
    Ok(d)
}

/// `apk adbdump` of one package: name, version, arch, depends, scripts, files and modes; the
/// binary extracted with `apk extract` is an ELF for the architecture.
pub fn check(pkg: &Path, name: &str, arch: &str, work: &Path) -> Result {
    let d = dump(pkg)?;
    let get = |k: &str| d.info.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let want_arch = if arch == "all" { "noarch" } else { arch };
    for (k, v) in [
        ("name", name.to_string()),
        ("version", super::version()?),
        ("arch", want_arch.to_string()),
        ("license", "Apache-2.0".to_string()),
    ] {
        ensure(get(k) == Some(v.as_str()), || {
            format!("{k}: {:?}, want {v}", get(k))
        })?;
    }
    ensure(get("description").is_some_and(|s| !s.is_empty()), || {
        "no description".into()
    })?;
    for s in ["post-install", "post-upgrade", "pre-deinstall"] {
        ensure(d.scripts.iter().any(|n| n == s), || {
            format!("no {s} script: {:?}", d.scripts)
        })?;
    }
    ensure(d.files.iter().all(|f| f.2 == "root"), || {
        format!("not root-owned: {:?}", d.files)
    })?;
    let mode = |p: &str| d.files.iter().find(|f| f.0 == p).map(|f| f.1.as_str());
    ensure(
        mode(&format!("lib/apk/packages/{name}.list")) == Some("0644"),
        || format!("no lib/apk/packages/{name}.list"),
    )?;
    if name == "shadowmesh" {
        ensure(d.depends == ["kmod-tun"], || {
            format!("depends {:?}", d.depends)
        })?;
        for (p, m) in [
            ("usr/sbin/shadowmesh", "0755"),
            ("etc/init.d/shadowmesh", "0755"),
            ("etc/config/shadowmesh", "0600"),
            ("etc/uci-defaults/90-shadowmesh", "0755"),
            ("lib/upgrade/keep.d/shadowmesh", "0644"),
            ("usr/libexec/rpcd/shadowmesh", "0755"),
            ("usr/libexec/shadowmesh/uci-remove", "0755"),
            ("lib/apk/packages/shadowmesh.conffiles", "0644"),
            ("lib/apk/packages/shadowmesh.conffiles_static", "0644"),
        ] {
            ensure(mode(p) == Some(m), || {
                format!("{p}: mode {:?}, want {m}", mode(p))
            })?;
        }
        let out = work.join("extract");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        apk(&[
            "extract",
            "--allow-untrusted",
            "--destination",
            &out.to_string_lossy(),
            &pkg.to_string_lossy(),
        ])?;
        super::check_elf(&out.join("usr/sbin/shadowmesh"), arch)?;
        let list = std::fs::read_to_string(out.join("lib/apk/packages/shadowmesh.list"))
            .map_err(|e| e.to_string())?;
        ensure(list.lines().any(|l| l == "/etc/init.d/shadowmesh"), || {
            format!("the file list lacks the init script:\n{list}")
        })?;
    } else {
        ensure(
            d.depends == ["luci-base", "luci-lib-uqr", "shadowmesh"],
            || format!("depends {:?}", d.depends),
        )?;
        ensure(
            mode("www/luci-static/resources/view/shadowmesh/status.js").is_some()
                && mode("usr/share/rpcd/acl.d/luci-app-shadowmesh.json").is_some(),
            || "LuCI files missing".into(),
        )?;
    }
    Ok(())
}

/// A package with no files, standing in for one of OpenWrt's (`kmod-tun`, `luci-base`).
fn standin_pkg(dir: &Path, name: &str, arch: &str) -> Result {
    let mut c = Command::new(tool()?);
    c.arg("mkpkg")
        .env("SOURCE_DATE_EPOCH", "0")
        .args(["--info", &format!("name:{name}")])
        .args(["--info", "version:0-r0"])
        .args(["--info", &format!("arch:{arch}")])
        .args(["--info", "description:stand-in"])
        .arg("--output")
        .arg(dir.join(format!("{name}-0-r0.apk")));
    output(&mut c).map(|_| ())
}

/// The image builder's way: `apk add --root` from a local repository (our two packages and
/// stand-ins for kmod-tun and luci-base) with `--no-scripts`, then each `post-install` with
/// `IPKG_INSTROOT` set, against the functions.sh and rc.common stand-ins. The service is
/// enabled; `pre-deinstall` and `apk del` remove every file the packages brought.
pub fn install_and_remove(arch_repo: &Path, work: &Path) -> Result {
    let repo = work.join("repo");
    let rootfs = work.join("rootfs");
    for d in [&repo, &rootfs] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    for e in std::fs::read_dir(arch_repo).map_err(|e| e.to_string())? {
        let p = e.map_err(|e| e.to_string())?.path();
        if p.extension().is_some_and(|x| x == "apk") {
            std::fs::copy(&p, repo.join(p.file_name().unwrap())).map_err(|e| e.to_string())?;
        }
    }
    standin_pkg(&repo, "kmod-tun", "x86_64")?;
    standin_pkg(&repo, "luci-base", "noarch")?;
    standin_pkg(&repo, "luci-lib-uqr", "noarch")?;
    index(&repo)?;
    let repos = work.join("repositories");
    std::fs::write(&repos, format!("{}\n", repo.join("packages.adb").display()))
        .map_err(|e| e.to_string())?;
    let base = |c: &mut Command| {
        c.arg("--root")
            .arg(&rootfs)
            .args([
                "--no-scripts",
                "--no-network",
                "--no-logfile",
                "--allow-untrusted",
            ])
            .arg("--repositories-file")
            .arg(&repos);
    };
    let mut add = Command::new(tool()?);
    base(&mut add);
    add.args(["--arch", "x86_64", "--initdb", "add"])
        .args(["shadowmesh", "luci-app-shadowmesh"]);
    output(&mut add)?;
    for f in [
        "usr/sbin/shadowmesh",
        "etc/init.d/shadowmesh",
        "etc/config/shadowmesh",
        "lib/apk/packages/shadowmesh.list",
        "lib/apk/packages/shadowmesh.conffiles_static",
        "www/luci-static/resources/view/shadowmesh/settings.js",
    ] {
        ensure(rootfs.join(f).is_file(), || format!("/{f} not installed"))?;
    }
    let world = std::fs::read_to_string(rootfs.join("etc/apk/world")).map_err(|e| e.to_string())?;
    ensure(world.lines().any(|l| l == "shadowmesh"), || {
        format!("world: {world:?}")
    })?;
    let standins = root().join("openwrt-package/tests/standins");
    std::fs::create_dir_all(rootfs.join("lib")).map_err(|e| e.to_string())?;
    std::fs::copy(
        standins.join("functions.sh"),
        rootfs.join("lib/functions.sh"),
    )
    .map_err(|e| e.to_string())?;
    std::fs::copy(standins.join("rc.common"), rootfs.join("etc/rc.common"))
        .map_err(|e| e.to_string())?;
    // The scripts as apk stored them; run the way the image builder runs them.
    let scripts = work.join("scripts");
    let _ = std::fs::remove_dir_all(&scripts);
    std::fs::create_dir_all(&scripts).map_err(|e| e.to_string())?;
    output(
        Command::new("tar")
            .arg("-xzf")
            .arg(rootfs.join("lib/apk/db/scripts.tar.gz"))
            .arg("-C")
            .arg(&scripts),
    )?;
    let run_all = |suffix: &str| -> Result<usize> {
        let mut n = 0;
        for e in std::fs::read_dir(&scripts).map_err(|e| e.to_string())? {
            let p = e.map_err(|e| e.to_string())?.path();
            if p.to_string_lossy().ends_with(suffix) {
                output(Command::new("sh").arg(&p).env("IPKG_INSTROOT", &rootfs))?;
                n += 1;
            }
        }
        Ok(n)
    };
    let n = run_all(".post-install")?;
    ensure(n == 2, || format!("{n} post-install scripts, want 2"))?;
    let link = |n: &str| std::fs::read_link(rootfs.join("etc/rc.d").join(n)).ok();
    ensure(
        link("S90shadowmesh") == Some("../init.d/shadowmesh".into())
            && link("K10shadowmesh") == Some("../init.d/shadowmesh".into()),
        || {
            "post-install did not enable the service (no /etc/rc.d/S90shadowmesh, K10shadowmesh)"
                .into()
        },
    )?;
    run_all(".pre-deinstall")?;
    ensure(link("S90shadowmesh").is_none(), || {
        "pre-deinstall left /etc/rc.d/S90shadowmesh".into()
    })?;
    let mut del = Command::new(tool()?);
    base(&mut del);
    del.args(["del", "shadowmesh", "luci-app-shadowmesh"]);
    output(&mut del)?;
    // What is left: apk's own database, the stand-ins, and empty directories.
    let left = output(
        Command::new("find")
            .arg(".")
            .args(["-type", "f", "-o", "-type", "l"])
            .current_dir(&rootfs),
    )?;
    let stray: Vec<&str> = left
        .lines()
        .filter(|l| {
            !l.starts_with("./lib/apk/db/")
                && !l.starts_with("./etc/apk/")
                && *l != "./lib/functions.sh"
                && *l != "./etc/rc.common"
        })
        .collect();
    ensure(stray.is_empty(), || format!("apk del left {stray:?}"))?;
    Ok(())
}
