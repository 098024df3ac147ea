//! Real daemons: six `shadowmesh run` processes on loopback ports, one a DHT-only seed. Every
//! member finds every other member's record through the control socket, lookups are fast, the
//! routing tables converge, and a member restarted while the seed is down rejoins from its
//! routing-table cache. Every process is ended by its PID, also on failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shadowmesh"))
}

struct Daemons(Vec<Option<Child>>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in self.0.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn field(json: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":");
    let rest = &json[json.find(&key)? + key.len()..];
    Some(match rest.strip_prefix('"') {
        Some(s) => s.split('"').next()?.to_string(),
        None => rest.split([',', '}']).next()?.to_string(),
    })
}

fn ctl(config: &Path, args: &[&str]) -> String {
    let out = bin()
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn start(config: &Path, log: &Path) -> Child {
    bin()
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t.elapsed()
}

#[test]
fn six_daemons_find_every_record_and_rejoin_from_cache() {
    let dir = std::env::temp_dir().join(format!("smsh-daemons-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let nk: String = "5a".repeat(32);
    let mut ids = Vec::new();
    let mut configs: Vec<PathBuf> = Vec::new();
    let mut seed_addr = String::new();
    for i in 0..6 {
        let d = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let key = d.join("key");
        let out = bin().args(["keygen", "--out"]).arg(&key).output().unwrap();
        assert!(out.status.success());
        let pid = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let port = free_port();
        let mut cfg = format!(
            "config shadowmesh 'main'\n\toption listen_address '127.0.0.1'\n\toption listen_port '{port}'\n\toption key_file '{}'\n\toption state_dir '{}'\n\toption log_level 'info'\n",
            key.display(),
            d.display()
        );
        if i == 0 {
            seed_addr = format!("{pid}@127.0.0.1:{port}");
        } else {
            // Members without a TUN: these daemons share the host's network namespace (the
            // tunnel is tested in namespaces by `cargo xtask demo --full`).
            cfg += &format!(
                "\toption network_key '{nk}'\n\tlist bootstrap '{seed_addr}'\n\toption tunnel '0'\n"
            );
        }
        let path = d.join("shadowmesh.conf");
        std::fs::write(&path, cfg).unwrap();
        ids.push(pid);
        configs.push(path);
    }
    let logs: Vec<PathBuf> = (0..6).map(|i| dir.join(format!("n{i}.log"))).collect();
    let mut daemons = Daemons((0..6).map(|i| Some(start(&configs[i], &logs[i]))).collect());

    // Routing tables converge: every member knows the seed and at least three others.
    let converged = wait_for(
        "routing tables to converge",
        Duration::from_secs(30),
        || {
            (1..6).all(|i| {
                let s = ctl(&configs[i], &["status", "--json"]);
                field(&s, "dht_contacts")
                    .and_then(|v| v.parse::<usize>().ok())
                    .is_some_and(|n| n >= 4)
            })
        },
    );
    // Records are published right after joining; give the last STOREs a moment.
    std::thread::sleep(Duration::from_millis(500));
    let mut slowest = 0.0f64;
    for (a, config) in configs.iter().enumerate().skip(1) {
        for (b, id) in ids.iter().enumerate().skip(1) {
            if a == b {
                continue;
            }
            let r = ctl(config, &["dht", "--lookup", id]);
            assert_eq!(
                field(&r, "found").as_deref(),
                Some("true"),
                "node {a} looking up node {b}: {r}"
            );
            assert_eq!(
                field(&r, "ipv4").map(|s| s.starts_with("10.100.")),
                Some(true),
                "{r}"
            );
            let ms: f64 = field(&r, "lookup_ms").unwrap().parse().unwrap();
            slowest = slowest.max(ms);
        }
    }
    eprintln!("converged in {converged:?}; slowest of 20 lookups {slowest:.1} ms");
    assert!(
        slowest < 100.0,
        "lookups must take < 100 ms on loopback, slowest {slowest} ms"
    );
    // The seed cannot read members' records.
    let r = ctl(&configs[0], &["dht", "--lookup", &ids[1]]);
    assert!(r.contains("no network key"), "{r}");

    // Two of the six die without a word: lookups do not wait out the 2 s request timeout on
    // them (each contact's soft timeout follows its measured round trip), and the dead
    // members' records are still found at the others.
    for dead in [4, 5] {
        let mut d = daemons.0[dead].take().unwrap();
        d.kill().unwrap();
        d.wait().unwrap();
    }
    for (b, id) in ids.iter().enumerate().skip(2) {
        let r = ctl(&configs[1], &["dht", "--lookup", id]);
        assert_eq!(
            field(&r, "found").as_deref(),
            Some("true"),
            "node 1 looking up node {b}: {r}"
        );
        let ms: f64 = field(&r, "lookup_ms").unwrap().parse().unwrap();
        eprintln!("with 2 of 6 killed, node 1 finds node {b} in {ms:.1} ms: {r}");
        assert!(
            ms < 1000.0,
            "a lookup with 2 of 6 members dead took {ms} ms: {r}"
        );
    }

    // Seed down; member 1 stops cleanly (writes its cache) and comes back: it rejoins from
    // the cache alone and still finds member 2.
    let mut seed = daemons.0[0].take().unwrap();
    seed.kill().unwrap();
    seed.wait().unwrap();
    let mut m1 = daemons.0[1].take().unwrap();
    let pid = m1.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let st = m1.wait().unwrap();
    assert!(st.success(), "clean shutdown: {st:?}");
    assert!(
        configs[1].parent().unwrap().join("dht.cache").exists(),
        "cache written at shutdown"
    );
    daemons.0[1] = Some(start(&configs[1], &dir.join("n1-restart.log")));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        last = ctl(&configs[1], &["dht", "--lookup", &ids[2]]);
        if field(&last, "found").as_deref() == Some("true") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(dir.join("n1-restart.log")).unwrap();
    assert_eq!(
        field(&last, "found").as_deref(),
        Some("true"),
        "member 1 did not rejoin from its cache in 30 s; last answer {last}; its log:\n{log}"
    );
    assert!(log.contains("from the routing-table cache"), "{log}");
    drop(daemons);
    std::fs::remove_dir_all(&dir).unwrap();
}
