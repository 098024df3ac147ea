//! `.ipk` packages for OpenWrt 24.10 (opkg).
//!
//! An `.ipk` is a gzip'd tar (not an ar archive, unlike Debian's) of `debian-binary` ("2.0"),
//! `control.tar.gz` (control, conffiles, postinst, prerm) and `data.tar.gz` (the files, owned by
//! root). Everything is written with fixed owners, modes, order and timestamps, so the same
//! inputs make the same bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{ensure, output, set_mode, sh, stage, version, Pkg, POSTINST, PRERM, TAR};
use crate::{root, Result};

/// Writes one `.ipk` into `out_dir`.
pub(super) fn build(pkg: &Pkg, out_dir: &Path) -> Result<PathBuf> {
    let Pkg {
        name,
        arch,
        depends,
        description,
        files,
        postinst,
        prerm: _,
        conffiles,
    } = *pkg;
    // The LuCI app's postinst is its own (luci.mk's); the daemon's are OpenWrt's defaults.
    let scripts: &[(&str, &str)] = match postinst {
        Some(p) => &[("postinst", p)],
        None => &[("postinst", POSTINST), ("prerm", PRERM)],
    };
    let version = version()?;
    let work = out_dir.join(format!(".work-{name}-{arch}"));
    let _ = std::fs::remove_dir_all(&work);
    let data = work.join("data");
    let control = work.join("control");
    std::fs::create_dir_all(&control).map_err(|e| e.to_string())?;
    let size = stage(files, &data)?;
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

/// Opens one package with tar/gzip the way opkg does and checks it; unpacks into `into`.
pub(super) fn check(pkg: &Path, into: &Path) -> Result {
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
            ("usr/libexec/shadowmesh/uci-remove", "-rwxr-xr-x"),
        ] {
            ensure(modes.get(path).map(String::as_str) == Some(mode), || {
                format!("{path}: mode {:?}, want {mode}", modes.get(path))
            })?;
        }
        ensure(modes.len() == 7, || format!("unexpected files {modes:?}"))?;
        let keep = std::fs::read_to_string(into.join("root/lib/upgrade/keep.d/shadowmesh"))
            .map_err(|e| e.to_string())?;
        ensure(keep.lines().any(|l| l == "/etc/shadowmesh/"), || {
            format!("keep.d does not keep the identity: {keep:?}")
        })?;
        super::check_elf(&into.join("root/usr/sbin/shadowmesh"), arch)?;
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
pub(super) fn postinst_in_image_root(pkg: &Path, work: &Path) -> Result {
    let unpack = work.join("unpack");
    check(pkg, &unpack)?;
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
        "usr/libexec/shadowmesh/uci-remove",
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
