//! What the NAT lab measures beside pings: iperf3 across an event, daemons' CPU time, what
//! `status` and the DHT say.

use std::time::{Duration, Instant};

use crate::field;
use crate::lab::{self, sleep, Lab, Node};
use crate::Result;

/// [`lookup`] at the first of `nodes` that finds the record (one may have been killed).
pub(super) fn lookup_any(lab: &Lab, nodes: &[&Node], peer_id: &str) -> String {
    let mut found = String::new();
    for n in nodes {
        found = lookup(lab, n, peer_id);
        if found.contains("\"addrs\"") {
            break;
        }
    }
    found
}

/// `shadowmesh dht --lookup PEERID` at `node`: what the record it finds says.
pub(super) fn lookup(lab: &Lab, node: &Node, peer_id: &str) -> String {
    std::process::Command::new(&lab.bin)
        .args(["dht", "--lookup", peer_id, "--json", "--config"])
        .arg(&node.config)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// What one iperf3 run across an event measured.
pub(super) struct Transfer {
    /// iperf3 ended with its results.
    pub(super) completed: bool,
    /// Its average, Mbit/s.
    pub(super) mbps: f64,
    /// The longest run of half-second intervals that moved (almost) nothing, in seconds.
    pub(super) gap_s: f64,
    /// What iperf3 said went wrong, if it did.
    pub(super) error: Option<String>,
}

impl std::fmt::Display for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.completed {
            write!(
                f,
                "completed, {:.0} Mbit/s, longest gap {:.1} s",
                self.mbps, self.gap_s
            )
        } else {
            write!(
                f,
                "did not complete: {} (longest gap {:.1} s)",
                self.error.as_deref().unwrap_or("no result"),
                self.gap_s
            )
        }
    }
}

/// iperf3 TCP from `a` to `b` (at `dst`) for `secs`, with `event` done `at` into it; waits up
/// to two minutes past its end for it to finish.
pub(super) fn transfer(
    lab: &mut Lab,
    a: &Node,
    b: &Node,
    dst: &str,
    secs: u32,
    at: Duration,
    event: impl FnOnce(&mut Lab) -> Result,
) -> Result<Transfer> {
    use std::process::Stdio;
    let server = lab::netns_exec(&b.ns, &["iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3: {e}"))?;
    lab.others.push(server);
    sleep(Duration::from_millis(500))?;
    let mut client = lab::netns_exec(
        &a.ns,
        &[
            "iperf3",
            "-c",
            dst,
            "-t",
            &secs.to_string(),
            "-i",
            "0.5",
            "-J",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .map_err(|e| format!("iperf3: {e}"))?;
    sleep(at)?;
    let done = event(lab);
    let limit = Instant::now() + Duration::from_secs(secs as u64 + 120);
    let completed = loop {
        match client.try_wait() {
            Ok(Some(s)) => break s.success(),
            Ok(None) if Instant::now() < limit => sleep(Duration::from_millis(200))?,
            _ => {
                let _ = client.kill();
                break false;
            }
        }
    };
    let mut text = String::new();
    if let Some(mut out) = client.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_string(&mut text);
    }
    let _ = client.wait();
    done?;
    let error = text.split("\"error\":").nth(1).map(|e| {
        e.trim()
            .trim_start_matches('"')
            .split('"')
            .next()
            .unwrap_or("")
            .to_string()
    });
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    // Each interval's "sum": {"start", "end", "seconds", "bytes", ...}.
    let intervals = text
        .split("\"intervals\":[")
        .nth(1)
        .and_then(|r| r.split("\"end\":{").next())
        .unwrap_or("");
    let mut gap = 0.0f64;
    let mut run = 0.0f64;
    for sum in intervals.split("\"sum\":{").skip(1) {
        let num = |k: &str| field(&format!("{{{sum}"), k).and_then(|v| v.parse::<f64>().ok());
        let (secs, bytes) = (num("seconds").unwrap_or(0.0), num("bytes").unwrap_or(0.0));
        // Under 1% of the interval at 10 Mbit/s: nothing got through.
        if bytes < secs * 10e6 / 8.0 / 100.0 {
            run += secs;
            gap = gap.max(run);
        } else {
            run = 0.0;
        }
    }
    let mbps = text
        .rfind("\"sum_received\"")
        .and_then(|i| field(&text[i..], "bits_per_second"))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |b| b / 1e6);
    Ok(Transfer {
        completed: completed && mbps > 0.0,
        mbps,
        gap_s: gap,
        error,
    })
}

/// User and system CPU time of daemon `name`, in clock ticks (0 if it is not running).
pub(super) fn cpu_ticks(lab: &Lab, name: &str) -> u64 {
    let Some(pid) = lab.daemon_pid(name) else {
        return 0;
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: state is field 3; utime and stime are 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

pub(super) fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Bytes node `n` forwarded as a relay since it started (`status`'s `relay.bytes`).
pub(super) fn relayed_bytes(lab: &Lab, n: &Node) -> u64 {
    let s = lab.ctl(n, "status");
    s.split("\"relay\":{")
        .nth(1)
        .and_then(|r| field(&format!("{{{r}"), "bytes"))
        .and_then(|b| b.parse().ok())
        .unwrap_or(0)
}

/// The `observed` list of a `status` line.
pub(super) fn observed(status: &str) -> Vec<String> {
    list_of(status, "observed")
}

/// The strings of the first list named `name` in `json`.
pub(super) fn list_of(json: &str, name: &str) -> Vec<String> {
    let Some(rest) = json.split(&format!("\"{name}\":[")).nth(1) else {
        return vec![];
    };
    let list = rest.split(']').next().unwrap_or("");
    list.split(',')
        .map(|s| s.trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}
