//! A gateway whose clock is five years behind (part of `cargo xtask trust`): a router without
//! a real-time clock boots at its image's build date and reads the right time only once NTP
//! answers. A seed and a gateway run normally; gateway N runs the same daemon under
//! libfaketime (Debian's `faketime`: `LD_PRELOAD` shifts what the C library's clock calls
//! return; the monotonic clock is left alone), its offset read from a file that the test
//! rewrites to "correct" the clock. N must say its clock is unset, join, be reached through the
//! tunnel both ways, and after the correction its new record must win at the other gateway.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::lab;
use crate::lab::{ip, member_of, members, ping, sleep, Lab, Node};
use crate::mesh::Report;
use crate::Result;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Adds the checks of the scenario to `rep`; daemon binary `bin`.
pub fn run(bin: &Path, rep: &mut Report) -> Result {
    if !Path::new(LIBFAKETIME).exists() {
        return Err(format!(
            "{LIBFAKETIME} is missing: run .ci/setup (apt-get install faketime)"
        ));
    }
    let mut lab = Lab::new(bin)?;
    let r = scenario(&mut lab, rep);
    if r.is_err() || !rep.failures.is_empty() {
        let nodes: Vec<Node> = ["s", "g", "n"].iter().map(|n| lab.node_named(n)).collect();
        eprintln!("daemon logs:\n{}", lab.logs(&nodes));
    }
    r
}

fn node(
    lab: &mut Lab,
    sw: &str,
    name: &str,
    addr: &str,
    nk: Option<&str>,
    seed: Option<&str>,
) -> Result<Node> {
    let ns = lab.underlay_ns(sw, name, addr)?;
    let (key, id) = lab.keygen(name)?;
    Ok(Node {
        name: name.into(),
        config: lab.write_config(name, &key, nk, seed, &[])?,
        ns,
        underlay: addr.into(),
        peer_id: id,
        lan: None,
    })
}

fn scenario(lab: &mut Lab, rep: &mut Report) -> Result {
    println!("a gateway whose clock is five years behind");
    let sw = lab.ns("sw")?;
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &sw, "link", "set", "br0", "up"])?;
    let nk: String = "3d".repeat(32);
    let s = node(lab, &sw, "s", "10.250.0.1", None, None)?;
    lab.start(&s)?;
    let seed = format!("{}@10.250.0.1:4433", s.peer_id);
    let g = node(lab, &sw, "g", "10.250.0.11", Some(&nk), Some(&seed))?;
    lab.start(&g)?;
    let n = node(lab, &sw, "n", "10.250.0.12", Some(&nk), Some(&seed))?;
    let offset = lab.dir.join("n").join("faketime");
    std::fs::write(&offset, "-1826d\n").map_err(|e| e.to_string())?;
    let env = [
        format!("LD_PRELOAD={LIBFAKETIME}"),
        format!("FAKETIME_TIMESTAMP_FILE={}", offset.display()),
        "FAKETIME_CACHE_DURATION=1".into(),
        "DONT_FAKE_MONOTONIC=1".into(),
    ];
    let mut prefix = vec!["env"];
    prefix.extend(env.iter().map(String::as_str));
    lab.start_with(&n, &prefix)?;

    // N joins, and each gateway holds a session with the other.
    let t = Instant::now();
    let mut up = false;
    while t.elapsed() < Duration::from_secs(60) && !up {
        sleep(Duration::from_millis(500))?;
        let connected = |at: &Node, id: &str| {
            member_of(&members(&lab.ctl(at, "peers")), id)
                .is_some_and(|m| crate::field(m, "connected").as_deref() == Some("true"))
        };
        up = connected(&g, &n.peer_id) && connected(&n, &g.peer_id);
    }
    let n_status = lab.ctl(&n, "status");
    rep.check(
        "a gateway whose clock reads five years ago says so and joins the mesh",
        up && crate::field(&n_status, "clock_unset").as_deref() == Some("true"),
        format!(
            "{:.1} s; clock_unset {}, offset {} s",
            t.elapsed().as_secs_f64(),
            crate::field(&n_status, "clock_unset").unwrap_or_default(),
            crate::field(&n_status, "clock_offset_s").unwrap_or_default()
        ),
    );
    if !up {
        return Ok(());
    }
    let g_v4 = crate::field(&lab.ctl(&g, "status"), "overlay_ipv4").unwrap_or_default();
    let n_v4 = crate::field(&n_status, "overlay_ipv4").unwrap_or_default();
    lab::until_reachable(&n.ns, &g_v4, Duration::from_secs(10))?;
    let (a, b) = (ping(&n.ns, &g_v4, 5, "0.1")?, ping(&g.ns, &n_v4, 5, "0.1")?);
    rep.check(
        "it is reached through the tunnel, and reaches the other gateway",
        a.received == a.sent && b.received == b.sent,
        format!(
            "{} of {} and {} of {}",
            b.received, b.sent, a.received, a.sent
        ),
    );

    // The clock is corrected; a changed configuration makes N sign a new record.
    let seq = |lab: &Lab| -> u64 {
        member_of(&members(&lab.ctl(&g, "peers")), &n.peer_id)
            .and_then(|m| crate::field(m, "record_seq"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let before = seq(lab);
    std::fs::write(&offset, "+0\n").map_err(|e| e.to_string())?;
    sleep(Duration::from_secs(3))?;
    let cfg = std::fs::read_to_string(&n.config).map_err(|e| e.to_string())?;
    std::fs::write(&n.config, cfg + "\tlist route '192.168.77.0/24'\n")
        .map_err(|e| e.to_string())?;
    let pid = lab.daemon_pid("n").ok_or("no daemon")?;
    Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    let mut won = false;
    while t.elapsed() < Duration::from_secs(15) && !won {
        sleep(Duration::from_millis(250))?;
        won = member_of(&members(&lab.ctl(&g, "peers")), &n.peer_id)
            .is_some_and(|m| m.contains("192.168.77.0/24"));
    }
    let after = seq(lab);
    let n_status = lab.ctl(&n, "status");
    rep.check(
        "after the clock is corrected its next record wins at the other gateway",
        won && after > before && crate::field(&n_status, "clock_unset").as_deref() == Some("false"),
        format!(
            "record sequence {before} -> {after}; clock_unset now {}",
            crate::field(&n_status, "clock_unset").unwrap_or_default()
        ),
    );
    Ok(())
}
