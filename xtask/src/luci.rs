//! The rpcd backend and the LuCI views, tested for real: the rpcd exec plugin as packaged runs
//! the release binary against a daemon in a network namespace (running, then killed), and
//! Debian's headless Chromium loads the views inside LuCI's own client framework (OpenWrt 25.12's
//! and 24.10's, `.ci/luci-sources`) through `luci-app/tests/luci-server.js`, which answers
//! `/ubus` with that same plugin, the project's `uci` stand-in and, for Save & Apply, the procd
//! stand-in running a real daemon. Screenshots land in `target/luci-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab::{ip, Lab, Node};
use crate::openwrt::Checks;
use crate::{root, Result};

fn tests_dir() -> PathBuf {
    root().join("luci-app/tests")
}

/// Where the screenshots go.
pub fn artifacts() -> PathBuf {
    root().join("target/luci-screenshots")
}

/// `npm ci` once (playwright-core, pinned in package-lock.json).
fn node_modules() -> Result {
    if tests_dir().join("node_modules/playwright-core").exists() {
        return Ok(());
    }
    // (`run` sets the working directory to the repository root: name the folder instead.)
    crate::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(tests_dir()),
    )
}

/// The rpcd plugin as packaged, on `config`.
fn plugin(bin: &Path, config: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("sh")
        .arg(root().join("openwrt-package/shadowmesh/files/shadowmesh.rpcd"))
        .args(args)
        .env("SHADOWMESH_BIN", bin)
        .env("SHADOWMESH_CONFIG", config)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !s.starts_with('{') || !s.ends_with('}') {
        return Err(format!(
            "plugin {args:?}: exit {}, stdout {s:?}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(s)
}

/// Adds each ok/FAIL line a node test printed to `checks` under `label`, and a failure when it
/// printed none or failed without saying why.
fn report(checks: &mut Checks, label: &str, out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = 0;
    for l in stdout.lines() {
        if let Some(name) = l.strip_prefix("ok   ") {
            checks.check(&format!("{label}: {name}"), Ok(()));
            lines += 1;
        } else if let Some(rest) = l.strip_prefix("FAIL ") {
            checks.check(label, Err(rest.to_string()));
            lines += 1;
        }
    }
    if lines == 0 || !out.status.success() && !stdout.contains("FAIL") {
        checks.check(
            &format!("{label}: browser test ran"),
            Err(format!(
                "exit {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )),
        );
    }
}

/// Where `.ci/luci-sources` put LuCI's client framework (`master`: OpenWrt 25.12, `2410`).
fn luci_sources(branch: &str) -> PathBuf {
    PathBuf::from("/opt/luci-sources").join(branch)
}

/// `node luci-real-test.js PHASE`: the views inside LuCI's own framework, for each branch, each
/// run on a fresh copy of the fixture in `work` (the rpcd plugin reads it too unless `envs`
/// names another config).
fn real(checks: &mut Checks, phase: &str, work: &Path, envs: &[(&str, String)]) -> Result {
    for branch in ["master", "2410"] {
        let uci = work.join(format!("real-{branch}-{phase}"));
        std::fs::create_dir_all(&uci).map_err(|e| e.to_string())?;
        std::fs::copy(tests_dir().join("fixture.uci"), uci.join("shadowmesh"))
            .map_err(|e| e.to_string())?;
        let luci = luci_sources(branch);
        if !luci
            .join("modules/luci-base/htdocs/luci-static/resources/luci.js")
            .exists()
        {
            checks.check(
                &format!("LuCI {branch}: framework present"),
                Err(format!(
                    "{} is missing: run .ci/luci-sources",
                    luci.display()
                )),
            );
            continue;
        }
        let mut c = Command::new("timeout");
        c.args(["180", "node", "luci-real-test.js", phase])
            .current_dir(tests_dir())
            .env("SM_LUCI", &luci)
            .env("SM_UCI_DIR", &uci)
            .env("SM_RPCD_CONFIG", uci.join("shadowmesh"))
            .stdin(Stdio::null());
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = c.output().map_err(|e| e.to_string())?;
        report(checks, &format!("LuCI {branch} {phase}"), &out);
    }
    Ok(())
}

fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let k = format!("\"{key}\":");
    let i = json.find(&k)? + k.len();
    let rest = &json[i..];
    if let Some(s) = rest.strip_prefix('"') {
        return s.split('"').next();
    }
    rest.split([',', '}']).next()
}

pub fn test(checks: &mut Checks, bin: &Path) -> Result {
    node_modules()?;
    let work = std::env::temp_dir().join(format!("shadowmesh-luci-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let art = artifacts();
    let base_env = vec![
        ("SM_BIN", bin.display().to_string()),
        ("SM_ARTIFACTS", art.display().to_string()),
    ];
    real(checks, "settings", &work, &base_env)?;

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!(
            "skipped: rpcd backend and status view against a daemon (needs root for namespaces)"
        );
        let _ = std::fs::remove_dir_all(&work);
        return Ok(());
    }
    crate::lab::catch_signals();
    let mut lab = Lab::new(bin)?;
    let r = with_daemons(checks, &mut lab, bin, base_env);
    if r.is_err() || !checks.failures.is_empty() {
        let nodes: Vec<Node> = ["a", "b"].iter().map(|n| lab.node_named(n)).collect();
        eprintln!("daemon logs:\n{}", lab.logs(&nodes));
    }
    drop(lab);
    let _ = std::fs::remove_dir_all(&work);
    r
}

/// Two members in namespaces; A is the gateway whose rpcd and status page are tested.
fn with_daemons(
    checks: &mut Checks,
    lab: &mut Lab,
    bin: &Path,
    mut env: Vec<(&'static str, String)>,
) -> Result {
    let sw = lab.ns("sw")?;
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &sw, "link", "set", "br0", "up"])?;
    let nk = crate::support::random_network_key()?;
    let mut nodes = Vec::new();
    for (name, addr) in [("a", "10.251.0.1"), ("b", "10.251.0.2")] {
        let ns = lab.underlay_ns(&sw, name, addr)?;
        let (key, peer_id) = lab.keygen(name)?;
        let seed = (name == "b").then(|| {
            format!(
                "{}@10.251.0.1:4433",
                nodes
                    .first()
                    .map(|n: &Node| n.peer_id.clone())
                    .unwrap_or_default()
            )
        });
        let config = lab.write_config(name, &key, Some(&nk), seed.as_deref(), &[])?;
        // B is named; A keeps the default (the host's name).
        if name == "b" {
            let text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
            std::fs::write(&config, text + "\toption name 'office'\n")
                .map_err(|e| e.to_string())?;
        }
        let node = Node {
            name: name.into(),
            ns,
            underlay: addr.into(),
            config,
            peer_id,
            lan: None,
        };
        lab.start(&node)?;
        nodes.push(node);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    let b_id_json = Command::new(bin)
        .args(["id", "--json", "--key"])
        .arg(lab.dir.join("b/key"))
        .output()
        .map_err(|e| e.to_string())?;
    let b_id_json = String::from_utf8_lossy(&b_id_json.stdout).to_string();
    let b_ipv4 = json_field(&b_id_json, "ipv4")
        .ok_or("id --json without ipv4")?
        .to_string();

    checks.check(
        "rpcd plugin: list names the status and secret methods",
        (|| {
            let l = plugin(bin, &a.config, &["list"])?;
            (l == "{\"status\":{},\"secret\":{}}")
                .then_some(())
                .ok_or(format!("list: {l}"))
        })(),
    );

    // Running: A answers with itself and B as a connected peer.
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < Duration::from_secs(30) {
        last = plugin(bin, &a.config, &["call", "status"]).unwrap_or_else(|e| e);
        if last.contains(&format!(
            "\"peer_id\":\"{}\",\"overlay_ipv4\":\"{b_ipv4}",
            b.peer_id
        )) && last.contains("\"connected\":true")
            && last.contains("\"dns_name\":\"office.mesh\"")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    checks.check(
        "rpcd plugin: call status with the daemon running (peer listed, connected)",
        (|| {
            for want in [
                "\"running\":true".to_string(),
                format!("\"peer_id\":\"{}\"", a.peer_id),
                format!("\"peer_id\":\"{}\"", b.peer_id),
                "\"name\":\"office\",\"dns_name\":\"office.mesh\"".to_string(),
                "\"connected\":true".to_string(),
                "\"dht_size\":".to_string(),
            ] {
                if !last.contains(&want) {
                    return Err(format!("no {want} in {last}"));
                }
            }
            Ok(())
        })(),
    );
    // What the status page gets on the host (the harness runs the plugin there).
    let host_secret = plugin(bin, &a.config, &["call", "secret"]).unwrap_or_else(|e| e);
    checks.check(
        "rpcd plugin: the network key is in secret (write ACL), never in status (read ACL)",
        (|| {
            if last.contains(&nk) {
                return Err(format!("status carries the key: {last}"));
            }
            host_secret
                .starts_with(&format!("{{\"network_key\":\"{nk}\""))
                .then_some(())
                .ok_or(host_secret.clone())
        })(),
    );
    checks.check(
        "shadowmesh join: a gateway configured from A's join string (rpcd secret in A's namespace) joins A",
        join_from_a(lab, bin, &sw, a, &nk),
    );
    let host_join = json_field(&host_secret, "join").map(str::to_string);
    // An option that takes effect only at a restart, changed in A's file and reloaded: the
    // status page says it waits for a restart.
    let cfg = std::fs::read_to_string(&a.config).map_err(|e| e.to_string())?;
    std::fs::write(&a.config, cfg + "\toption mtu '1300'\n").map_err(|e| e.to_string())?;
    lab.signal("a", libc::SIGHUP)?;
    let waited = Instant::now();
    while !plugin(bin, &a.config, &["call", "status"])
        .unwrap_or_default()
        .contains("\"restart_pending\":[\"mtu\"]")
        && waited.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let expect = format!(
        "{{\"self\":\"{}\",\"network_key\":\"{nk}\",\"join\":{},\"restart_pending\":[\"mtu\"],\"peers\":[{{\"peer_id\":\"{}\",\"ipv4\":\"{b_ipv4}\",\"name\":\"office\"}}]}}",
        a.peer_id,
        host_join.map_or("null".to_string(), |j| format!("\"{j}\"")),
        b.peer_id
    );
    env.push(("SM_RPCD_CONFIG", a.config.display().to_string()));
    env.push(("SM_EXPECT", expect.clone()));
    env.push(("SM_DAEMON_LOG", lab.dir.join("a/log").display().to_string()));
    real(checks, "status", &lab.dir, &env)?;
    let applied = apply(checks, lab, bin, &sw, a);
    checks.check(
        "Save & Apply in LuCI against a daemon run by the procd stand-in: the phase ran",
        applied,
    );

    // Stopped: a clear "not running", still naming the gateway from its key file.
    lab.kill9("a")?;
    checks.check(
        "rpcd plugin: call status with the daemon stopped",
        (|| {
            let s = plugin(bin, &a.config, &["call", "status"])?;
            for want in [
                "\"running\":false".to_string(),
                "service not running".to_string(),
                format!("\"peer_id\":\"{}\"", a.peer_id),
                "\"peers\":[]".to_string(),
            ] {
                if !s.contains(&want) {
                    return Err(format!("no {want} in {s}"));
                }
            }
            Ok(())
        })(),
    );
    real(checks, "stopped", &lab.dir, &env)?;
    // An unknown method is an error object, not a crash.
    checks.check(
        "rpcd plugin: unknown method answers an error object",
        (|| {
            let s = plugin(bin, &a.config, &["call", "nope"])?;
            s.contains("\"error\"").then_some(()).ok_or(s)
        })(),
    );
    Ok(())
}

/// A's join string as its router's rpcd gives it (run in A's namespace), taken by
/// `shadowmesh join` into the empty config of a new gateway C, which then starts and connects
/// to A; the string names A's own underlay address, not the browser's host.
fn join_from_a(lab: &mut Lab, bin: &Path, sw: &str, a: &Node, nk: &str) -> Result {
    let out = Command::new("ip")
        .args(["netns", "exec", &a.ns])
        .arg(bin)
        .args(["rpcd", "--config"])
        .arg(&a.config)
        .args(["call", "secret"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let secret = String::from_utf8_lossy(&out.stdout).to_string();
    let join = json_field(&secret, "join").ok_or(format!("no join string: {secret}"))?;
    let want = format!(
        "shadowmesh:join?network_key={nk}&bootstrap={}@10.251.0.1:4433",
        a.peer_id
    );
    if join != want {
        return Err(format!("join string {join:?}, want {want:?}"));
    }
    let ns = lab.underlay_ns(sw, "c", "10.251.0.3")?;
    let (key, peer_id) = lab.keygen("c")?;
    let config = lab.write_config("c", &key, None, None, &[])?;
    let out = Command::new(bin)
        .args(["join", "--config"])
        .arg(&config)
        .arg(join)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "shadowmesh join: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let node = Node {
        name: "c".into(),
        ns,
        underlay: "10.251.0.3".into(),
        config,
        peer_id: peer_id.clone(),
        lan: None,
    };
    lab.start(&node)?;
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < Duration::from_secs(30) {
        last = plugin(bin, &a.config, &["call", "status"]).unwrap_or_else(|e| e);
        if let Some(i) = last.find(&format!("\"peer_id\":\"{peer_id}\"")) {
            // This peer's fields: up to the next peer's.
            let rest = &last[i + 1..];
            let entry = &rest[..rest.find("\"peer_id\"").unwrap_or(rest.len())];
            if entry.contains("\"connected\":true") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "C ({peer_id}) did not connect to A in 30 s: {last}"
    ))
}

/// The `apply` phase in each LuCI branch: a member P in its own namespace, run by the procd
/// stand-in (`procd-service`) from an image root whose `etc/config` is what LuCI edits, so that
/// Save & Apply goes through the init script's reload to a restarted (or signalled) daemon.
fn apply(checks: &mut Checks, lab: &mut Lab, bin: &Path, sw: &str, a: &Node) -> Result {
    let ns = lab.underlay_ns(sw, "p", "10.251.0.5")?;
    let procd = root().join("openwrt-package/tests/standins/procd-service");
    for branch in ["master", "2410"] {
        let image = lab.dir.join(format!("procd-{branch}"));
        for d in ["etc/init.d", "etc/config", "lib", "usr/sbin", "var/run"] {
            std::fs::create_dir_all(image.join(d)).map_err(|e| e.to_string())?;
        }
        let files = root().join("openwrt-package/shadowmesh/files");
        let standins = root().join("openwrt-package/tests/standins");
        for (from, to) in [
            (files.join("shadowmesh.init"), "etc/init.d/shadowmesh"),
            (standins.join("rc.common"), "etc/rc.common"),
            (standins.join("functions.sh"), "lib/functions.sh"),
            (bin.to_path_buf(), "usr/sbin/shadowmesh"),
        ] {
            std::fs::copy(&from, image.join(to))
                .map_err(|e| format!("{} -> {to}: {e}", from.display()))?;
        }
        std::fs::write(
            image.join("etc/config/shadowmesh"),
            format!(
                "config shadowmesh 'main'\n\toption key_file '{0}/etc/shadowmesh/key'\n\toption state_dir '{0}/var/lib/shadowmesh'\n\toption log_level 'info'\n",
                image.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let service = |action: &str| {
            crate::run(
                Command::new(&procd)
                    .arg(&image)
                    .arg(action)
                    .env("PROCD_NETNS", &ns),
            )
        };
        service("start")?;
        let uci = image.join("etc/config");
        let mut c = Command::new("timeout");
        c.args(["300", "node", "luci-real-test.js", "apply"])
            .current_dir(tests_dir())
            .env("SM_LUCI", luci_sources(branch))
            .env("SM_BIN", bin)
            .env("SM_ARTIFACTS", artifacts())
            .env("SM_UCI_DIR", &uci)
            .env("SM_RPCD_CONFIG", uci.join("shadowmesh"))
            .env("SM_PROCD_ROOT", &image)
            .env("SM_PROCD_NETNS", &ns)
            .env("SM_PROCD_ADDR", "10.251.0.5")
            .env("SM_PEER", format!("{}@10.251.0.1:4433", a.peer_id))
            .stdin(Stdio::null());
        let out = c.output().map_err(|e| e.to_string());
        let stopped = service("stop");
        let out = out?;
        report(checks, &format!("LuCI {branch} apply"), &out);
        if !out.status.success() {
            let log = std::fs::read_to_string(image.join("procd/daemon.log")).unwrap_or_default();
            eprintln!("P's log ({branch}):\n{}", crate::lab::tail(&log, 30));
        }
        stopped?;
    }
    Ok(())
}
