//! Small helpers the test drivers share: a kill-on-drop guard for child processes, reading one
//! field of a JSON line, a process's resident memory.

use std::process::Child;

/// Children that are killed (by PID) and reaped when dropped, so that every exit path, including
/// errors, cleans up.
pub(crate) struct Procs(pub(crate) Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Pulls `"name":value` out of one JSON line (flat objects with no nested quotes in values).
pub(crate) fn field(line: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":");
    let start = line.find(&key)? + key.len();
    let rest = &line[start..];
    if let Some(s) = rest.strip_prefix('"') {
        s.split('"').next().map(str::to_string)
    } else {
        rest.split([',', '}']).next().map(str::to_string)
    }
}

/// A new random network key, as the 64 hex digits a config file takes.
pub(crate) fn random_network_key() -> Result<String, String> {
    let mut nk = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut nk))
        .map_err(|e| e.to_string())?;
    Ok(nk.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// `yes`/`NO` for a report line.
pub(crate) fn ok(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}
