//! The packaging tests that run the package's shell scripts: shellcheck, and the init script
//! and uci-defaults against the stand-ins of procd and uci (`openwrt-package/tests/standins/`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{ensure, output, LUCI_POSTINST, POSTINST, PRERM, PRERM_PKG};
use crate::{root, Result};

/// The shell files the package ships or its tests drive.
fn shell_files() -> Vec<PathBuf> {
    let f = root().join("openwrt-package/shadowmesh/files");
    let s = root().join("openwrt-package/tests/standins");
    vec![
        f.join("shadowmesh.init"),
        f.join("shadowmesh.uci-defaults"),
        f.join("shadowmesh.rpcd"),
        f.join("shadowmesh.uci-remove"),
        s.join("ubus"),
        s.join("reload_config"),
        s.join("functions.sh"),
        s.join("rc.common"),
        s.join("procd-service"),
    ]
}

pub(super) fn shell_checks(work: &Path) -> Result {
    let mut files = shell_files();
    // The control scripts as packaged.
    let apk_scripts = super::apk::scripts("shadowmesh", "", PRERM_PKG)
        .into_iter()
        .chain(super::apk::scripts(
            "luci-app-shadowmesh",
            LUCI_POSTINST,
            "",
        ))
        .enumerate()
        .map(|(i, (n, t))| (format!("apk-{i}-{n}"), t));
    for (n, text) in [
        ("postinst".to_string(), POSTINST.to_string()),
        ("prerm".to_string(), PRERM.to_string()),
        ("luci-postinst".to_string(), LUCI_POSTINST.to_string()),
    ]
    .into_iter()
    .chain(apk_scripts)
    {
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

/// `rc.common init ACTION` with the package's binary as /usr/sbin/shadowmesh and the image's
/// /var/run, in a private mount namespace, procd reporting the instance `running` or not;
/// returns what procd was told.
fn rc(rootfs: &Path, action: &str, running: bool, log: &Path) -> Result<String> {
    std::fs::create_dir_all(rootfs.join("var/run")).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(log);
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$1/usr/sbin\" /usr/sbin && mount --bind \"$1/var/run\" /var/run && exec sh \"$1/etc/rc.common\" \"$1/etc/init.d/shadowmesh\" \"$2\"")
        .arg("sh")
        .arg(rootfs)
        .arg(action)
        .env("STANDIN_RUNNING", if running { "1" } else { "0" });
    standin_env(&mut c, rootfs, log);
    output(&mut c)?;
    Ok(std::fs::read_to_string(log).unwrap_or_default())
}

/// Runs the init script's start_service (and service_triggers) against the recording procd
/// stand-in, inside a private mount namespace where the package's binary is /usr/sbin.
pub(super) fn init_script(rootfs: &Path, work: &Path) -> Result {
    let log = work.join("procd.log");
    let _ = std::fs::remove_file(&log);
    let conf = rootfs.join("etc/config/shadowmesh");
    let before = std::fs::read_to_string(&conf).map_err(|e| e.to_string())?;
    let start = |log: &Path| rc(rootfs, "start", true, log);
    let rec = start(&log)?;
    // (UCI_CONFIG_DIR, which the stand-ins set, is where the script finds the file, as uci(1)
    // and config_load do: on a router it is unset and the file is /etc/config/shadowmesh.)
    let command = format!(
        "'procd_set_param' 'command' '/usr/sbin/shadowmesh' 'run' '--config' '{}'",
        conf.display()
    );
    let want_lines = [
        "'procd_open_instance'",
        &command,
        "'procd_set_param' 'respawn' '3600' '5' '5'",
        "'procd_set_param' 'stderr' '1'",
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
    // procd's reload_signal would turn every change into a signal, restart-only ones too.
    ensure(
        !rec.contains("reload_signal") && !rec.contains("'file'"),
        || format!("start_service asks procd to signal on file changes:\n{rec}"),
    )?;
    ensure(env_digest(&rec).is_some(), || {
        format!("no SHADOWMESH_START_OPTIONS in the instance's environment:\n{rec}")
    })?;
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

/// The `SHADOWMESH_START_OPTIONS=` digest a recorded start gave the instance.
fn env_digest(rec: &str) -> Option<String> {
    rec.lines().find_map(|l| {
        l.strip_prefix("'procd_set_param' 'env' 'SHADOWMESH_START_OPTIONS=")
            .map(|d| d.trim_end_matches('\'').to_string())
    })
}

/// `/etc/init.d/shadowmesh reload` (what Save & Apply and `reload_config` run), option by
/// option against the procd stand-in: a change to an option the daemon reads only at start
/// starts the instance again with a new environment (procd restarts it), with the firewall
/// port following `listen_port`; any other change, a default written out in full and a file
/// the daemon refuses are a SIGHUP and no new instance.
pub(super) fn reload(rootfs: &Path, work: &Path) -> Result {
    let log = work.join("reload.log");
    let conf = rootfs.join("etc/config/shadowmesh");
    let before = std::fs::read_to_string(&conf).map_err(|e| e.to_string())?;
    let uci = |args: &[&str]| -> Result {
        let mut c = Command::new("uci");
        c.args(args);
        standin_env(&mut c, rootfs, &log);
        output(&mut c).map(|_| ())
    };
    let rc = |action: &str, running: bool| rc(rootfs, action, running, &log);
    const HUP: &str = "'procd_send_signal' 'shadowmesh' '*' 'HUP'";
    let result = (|| -> Result {
        let mut digest = env_digest(&rc("start", true)?).ok_or("start gave no digest")?;
        let rec = rc("reload", true)?;
        ensure(
            rec.lines().any(|l| l == HUP) && !rec.contains("procd_open_instance"),
            || format!("reload with nothing changed: want SIGHUP only, got:\n{rec}"),
        )?;
        let rec = rc("reload", false)?;
        ensure(
            rec.contains("procd_open_instance") && !rec.contains(HUP),
            || format!("reload with the daemon not running: want a start, got:\n{rec}"),
        )?;
        // A default written out in full (LuCI's flags do that) changes nothing the daemon runs.
        uci(&["set", "shadowmesh.main.tunnel=1"])?;
        uci(&["set", "shadowmesh.main.listen_port=4433"])?;
        uci(&["commit", "shadowmesh"])?;
        let rec = rc("reload", true)?;
        ensure(
            rec.lines().any(|l| l == HUP) && !rec.contains("procd_open_instance"),
            || format!("defaults written out: want SIGHUP only, got:\n{rec}"),
        )?;
        let restart: &[(&str, &str)] = &[
            ("listen_address", "127.0.0.1"),
            ("listen_port", "4500"),
            ("interface", "smesh9"),
            ("key_file", "/etc/shadowmesh/key2"),
            ("network_key", &"ab".repeat(32)),
            ("state_dir", "/tmp/shadowmesh2"),
            ("mtu", "1400"),
            ("tunnel", "0"),
            ("fast_lane", "0"),
            ("offload", "0"),
            ("plain_udp", "1"),
            ("overlay_ipv4", "10.101.0.0/16"),
            ("bootstrap", "list"),
            ("exit_node", "1"),
            ("exit", "auto"),
            ("exit_fail", "open"),
            ("seed", "1"),
        ];
        for (opt, val) in restart {
            if *val == "list" {
                uci(&["add_list", &format!("shadowmesh.main.{opt}=0000000000000000000000000000000000000000000000000000000000000001@192.0.2.1:4433")])?;
            } else {
                uci(&["set", &format!("shadowmesh.main.{opt}={val}")])?;
            }
            uci(&["commit", "shadowmesh"])?;
            let rec = rc("reload", true)?;
            let d = env_digest(&rec);
            ensure(
                d.as_ref().is_some_and(|d| *d != digest) && !rec.contains(HUP),
                || {
                    format!(
                        "{opt} changed: want a new instance environment and no SIGHUP, got:\n{rec}"
                    )
                },
            )?;
            digest = d.unwrap_or_default();
            if *opt == "exit_node" {
                ensure(
                    rec.lines()
                        .any(|l| l == "'json_add_string' 'name' 'Allow-ShadowMesh-Exit'"),
                    || format!("an exit node gets no forwarding to wan:\n{rec}"),
                )?;
            }
            if *opt == "listen_port" {
                ensure(
                    rec.lines()
                        .any(|l| l == "'json_add_string' 'dest_port' '4500'"),
                    || format!("the firewall rule does not follow listen_port:\n{rec}"),
                )?;
            }
        }
        uci(&["set", "shadowmesh.main.enabled=0"])?;
        uci(&["commit", "shadowmesh"])?;
        let rec = rc("reload", true)?;
        ensure(
            !rec.contains("procd_open_instance") && !rec.contains(HUP),
            || format!("enabled 0: want no instance (procd stops it), got:\n{rec}"),
        )?;
        uci(&["set", "shadowmesh.main.enabled=1"])?;
        uci(&["commit", "shadowmesh"])?;
        rc("reload", true)?;
        let applied: &[(&str, &str)] = &[
            ("log_level", "debug"),
            ("route", "192.168.77.0/24"),
            ("advertise", "192.0.2.7:4433"),
            (
                "allowed_peer",
                "0000000000000000000000000000000000000000000000000000000000000002",
            ),
            ("accept_routes", "0"),
            ("accept_route", "192.168.0.0/16"),
            // A file the daemon refuses: the running one keeps going and logs why.
            ("listen_port", "70000"),
        ];
        for (opt, val) in applied {
            let list = matches!(
                *opt,
                "route" | "advertise" | "allowed_peer" | "accept_route"
            );
            let verb = if list { "add_list" } else { "set" };
            uci(&[verb, &format!("shadowmesh.main.{opt}={val}")])?;
            uci(&["commit", "shadowmesh"])?;
            let rec = rc("reload", true)?;
            ensure(
                rec.lines().any(|l| l == HUP) && !rec.contains("procd_open_instance"),
                || format!("{opt} changed: want SIGHUP and no new instance, got:\n{rec}"),
            )?;
        }
        Ok(())
    })();
    std::fs::write(&conf, before).map_err(|e| e.to_string())?;
    result
}

/// The uci-defaults script and the removal script against the uci stand-in. On a running
/// router: the interface, the zone (input REJECT), the ping rule and both forwardings exist
/// once, `reload_config` applies them, a second run changes nothing; `uci-remove` puts the
/// network and firewall configs back as they were. A forwarding the user had made before is
/// neither recorded nor removed; an image's first boot (no netifd yet) reloads nothing.
pub(super) fn uci_defaults(rootfs: &Path, work: &Path) -> Result {
    let cfg = rootfs.join("etc/config");
    let log = work.join("uci-defaults.log");
    let conf_before = std::fs::read_to_string(cfg.join("shadowmesh")).map_err(|e| e.to_string())?;
    let sh = |script: &str, live: bool| -> Result<String> {
        let _ = std::fs::remove_file(&log);
        let mut c = Command::new("sh");
        c.arg(rootfs.join(script))
            .env("STANDIN_LIVE", if live { "1" } else { "0" });
        standin_env(&mut c, rootfs, &log);
        output(&mut c)?;
        Ok(std::fs::read_to_string(&log).unwrap_or_default())
    };
    let show = |config: &str| -> Result<String> {
        let mut c = Command::new("uci");
        c.args(["show", config]);
        standin_env(&mut c, rootfs, &log);
        output(&mut c)
    };
    let setup = |forwarding: bool| -> Result {
        let mut fw = "config zone 'lan'\n\toption name 'lan'\n\tlist network 'lan'\n".to_string();
        if forwarding {
            fw += "\nconfig forwarding 'shadowmesh_lan_mesh'\n\toption src 'lan'\n\toption dest 'wan'\n";
        }
        std::fs::write(cfg.join("firewall"), fw).map_err(|e| e.to_string())?;
        std::fs::write(
            cfg.join("network"),
            "config interface 'lan'\n\toption proto 'static'\n",
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(cfg.join("shadowmesh"), &conf_before).map_err(|e| e.to_string())
    };
    let defaults = "etc/uci-defaults/90-shadowmesh";
    let remove = "usr/libexec/shadowmesh/uci-remove";
    let result = (|| -> Result {
        setup(false)?;
        let (net0, fw0) = (show("network")?, show("firewall")?);
        let rec = sh(defaults, true)?;
        ensure(rec.lines().any(|l| l == "'reload_config'"), || {
            format!("a live install did not reload: {rec}")
        })?;
        let (net1, fw1) = (
            std::fs::read_to_string(cfg.join("network")).map_err(|e| e.to_string())?,
            std::fs::read_to_string(cfg.join("firewall")).map_err(|e| e.to_string())?,
        );
        let rec = sh(defaults, true)?;
        ensure(!rec.contains("reload_config"), || {
            format!("a second run reloaded: {rec}")
        })?;
        let (net2, fw2) = (
            std::fs::read_to_string(cfg.join("network")).map_err(|e| e.to_string())?,
            std::fs::read_to_string(cfg.join("firewall")).map_err(|e| e.to_string())?,
        );
        ensure(net1 == net2 && fw1 == fw2, || {
            format!("second run changed something:\n{fw1}\n---\n{fw2}")
        })?;
        let want = "config interface 'shadowmesh'\n\toption proto 'none'\n\toption device 'smesh0'";
        ensure(net1.contains(want), || {
            format!("network lacks {want:?}:\n{net1}")
        })?;
        for want in [
            "config zone 'shadowmesh'\n\toption name 'shadowmesh'\n\tlist network 'shadowmesh'\n\toption input 'REJECT'\n\toption output 'ACCEPT'\n\toption forward 'REJECT'",
            "config rule 'shadowmesh_ping'\n\toption name 'Allow-ShadowMesh-Ping'\n\toption src 'shadowmesh'\n\toption proto 'icmp'\n\tlist icmp_type 'echo-request'",
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
        // The daemon still reads its config with the record section in it.
        let conf = std::fs::read_to_string(cfg.join("shadowmesh")).map_err(|e| e.to_string())?;
        ensure(conf.contains("config uci_defaults 'added'"), || {
            format!("no record of the added sections:\n{conf}")
        })?;
        let st = output(
            Command::new(rootfs.join("usr/sbin/shadowmesh"))
                .args(["rpcd", "--config"])
                .arg(cfg.join("shadowmesh"))
                .args(["call", "status"]),
        )?;
        ensure(!st.contains("config_error"), || {
            format!("the daemon refuses the config with the record: {st}")
        })?;
        let rec = sh(remove, true)?;
        ensure(rec.lines().any(|l| l == "'reload_config'"), || {
            format!("removal on a live router did not reload: {rec}")
        })?;
        ensure(show("network")? == net0 && show("firewall")? == fw0, || {
            format!(
                "removal left:\n{}\n{}",
                show("network").unwrap_or_default(),
                show("firewall").unwrap_or_default()
            )
        })?;
        ensure(!show("shadowmesh")?.contains("uci_defaults"), || {
            "removal left the record".into()
        })?;
        // The user's own section of the same name stays; an image's first boot reloads nothing.
        setup(true)?;
        let rec = sh(defaults, false)?;
        ensure(!rec.contains("reload_config"), || {
            format!("first boot reloaded: {rec}")
        })?;
        sh(remove, false)?;
        let fw = show("firewall")?;
        ensure(
            fw.contains("firewall.shadowmesh_lan_mesh.dest='wan'")
                && !fw.contains("firewall.shadowmesh="),
            || format!("removal touched the user's forwarding or left ours:\n{fw}"),
        )?;
        Ok(())
    })();
    std::fs::write(cfg.join("shadowmesh"), &conf_before).map_err(|e| e.to_string())?;
    result
}
