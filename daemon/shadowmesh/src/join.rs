//! Joining a mesh: the join string a gateway offers (rpcd `secret`, shown by LuCI behind
//! "Show"), and `shadowmesh join [--config PATH] 'shadowmesh:join?…'`, which writes the network
//! key and the bootstrap gateways into the UCI file. The codec is `shadowmesh_proto::join`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use shadowmesh_proto::join::{self, HostPort, Join};
use shadowmesh_proto::peer::{to_hex, PeerId};
use shadowmesh_proto::uci;

use crate::args::CliError;
use crate::config::Config;

/// How many of this gateway's addresses a join string carries (a QR code stays small).
const OFFERED: usize = 4;

/// RFC 1918, CGNAT (RFC 6598) and IPv6 unique-local addresses: reachable inside a site or a
/// carrier, not from the Internet.
fn private(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private() || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(a) => (a.segments()[0] & 0xfe00) == 0xfc00,
    }
}

fn link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Where other gateways can reach this one, best first: the advertised addresses, a specific
/// listen address, then the host's addresses (public before private) on the listen port.
/// Never loopback, link-local, multicast, the overlay, or a family the socket does not serve.
pub fn offered_addrs(cfg: &Config, host: &[IpAddr]) -> Vec<HostPort> {
    let port = cfg.listen.port();
    let overlay = crate::config::overlay_prefixes(cfg.overlay_ipv4, cfg.network_key.as_deref());
    let serves = |ip: &IpAddr| match cfg.listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => ip.is_ipv4(),
        IpAddr::V6(a) if a.is_unspecified() => true,
        l => l == *ip,
    };
    let usable = |ip: &IpAddr| {
        !ip.is_loopback()
            && !ip.is_multicast()
            && !ip.is_unspecified()
            && !link_local(ip)
            && !overlay.iter().any(|p| p.contains(*ip))
    };
    let mut out: Vec<HostPort> = cfg.advertise.clone();
    if !cfg.listen.ip().is_unspecified() {
        out.push(HostPort::Addr(cfg.listen));
    }
    let mut host: Vec<IpAddr> = host
        .iter()
        .copied()
        .filter(|ip| usable(ip) && serves(ip))
        .collect();
    host.sort_by_key(private);
    out.extend(
        host.into_iter()
            .map(|ip| HostPort::Addr(SocketAddr::new(ip, port))),
    );
    let mut seen = Vec::with_capacity(OFFERED);
    for a in out {
        if seen.len() < OFFERED && !seen.contains(&a) {
            seen.push(a);
        }
    }
    seen
}

/// The join string for this gateway, or `None` for a seed or when it has no address to offer.
pub fn join_string(cfg: &Config, peer_id: PeerId) -> Option<String> {
    let key = cfg.network_key.as_deref()?;
    if cfg.seed {
        return None;
    }
    let skip = std::ffi::CString::new(cfg.interface.as_str())
        .ok()
        // SAFETY: if_nametoindex reads a NUL-terminated string that outlives the call.
        .map_or(0, |n| unsafe { libc::if_nametoindex(n.as_ptr()) });
    let host = crate::netlink::local_addresses(skip).unwrap_or_default();
    let addrs = offered_addrs(cfg, &host);
    if addrs.is_empty() {
        return None;
    }
    let j = Join {
        network_key: *key,
        bootstrap: addrs.into_iter().map(|a| (peer_id, a)).collect(),
    };
    Some(j.to_string())
}

fn section_name_is(line: &str, kind: &str, names: &[&str]) -> bool {
    let mut w = line.split_whitespace();
    w.next() == Some(kind)
        && w.next()
            .is_some_and(|n| names.contains(&n.trim_matches(|c| c == '\'' || c == '"')))
}

/// `text` with `j` applied to its first `config shadowmesh` section (one is added when there is
/// none): `network_key` set (a `seed` option dropped: a gateway with a key is a member), the
/// bootstrap entries it lacks appended. Every other line stays as it was.
pub fn apply(text: &str, j: &Join) -> Result<String, String> {
    let sections = uci::parse(text).map_err(|e| e.to_string())?;
    let key_line = format!("\toption network_key '{}'", to_hex(&j.network_key));
    let lists = |have: &[String]| -> Vec<String> {
        j.bootstrap
            .iter()
            .map(|(id, a)| format!("{id}@{a}"))
            .filter(|v| !have.contains(v))
            .map(|v| format!("\tlist bootstrap '{v}'"))
            .collect()
    };
    let lines: Vec<&str> = text.lines().collect();
    let Some(i) = sections.iter().position(|s| s.ty == "shadowmesh") else {
        let mut out = text.trim_end().to_string();
        if !out.is_empty() {
            out += "\n\n";
        }
        out += "config shadowmesh 'main'\n";
        out += &key_line;
        out.push('\n');
        for l in lists(&[]) {
            out += &l;
            out.push('\n');
        }
        return Ok(out);
    };
    let sec = &sections[i];
    let have: Vec<String> = match sec.get("bootstrap").map(|o| &o.value) {
        Some(uci::Value::List(v)) => v.clone(),
        Some(uci::Value::Single(v)) => vec![v.clone()],
        None => vec![],
    };
    let start = sec.line - 1;
    let end = sections.get(i + 1).map_or(lines.len(), |s| s.line - 1);
    let mut body: Vec<String> = lines[start + 1..end]
        .iter()
        .filter(|l| !section_name_is(l.trim_start(), "option", &["network_key", "seed"]))
        .map(|l| l.to_string())
        .collect();
    let trailing = body
        .iter()
        .rev()
        .take_while(|l| l.trim().is_empty())
        .count();
    let tail = body.split_off(body.len() - trailing);
    let mut out: Vec<String> = lines[..=start].iter().map(|l| l.to_string()).collect();
    out.push(key_line);
    out.extend(body);
    out.extend(lists(&have));
    out.extend(tail);
    out.extend(lines[end..].iter().map(|l| l.to_string()));
    Ok(out.join("\n") + "\n")
}

/// `shadowmesh join [--config PATH] 'shadowmesh:join?…'`.
pub fn main(args: &[String]) -> Result<(), CliError> {
    let (config, words) = crate::args::config_and_words(args)?;
    let uri = match words.as_slice() {
        [] => None,
        [u] if !u.starts_with("--") => Some(*u),
        [.., s] => return Err(CliError::usage(format!("join: unexpected '{s}'"))),
    };
    let uri = uri.ok_or_else(|| {
        CliError::usage("usage: shadowmesh join [--config PATH] 'shadowmesh:join?…'")
    })?;
    let j = join::parse(uri).map_err(|e| CliError::usage(format!("join string: {e}")))?;
    write(&config, &j)?;
    println!(
        "{}: network_key set, {} bootstrap gateway(s); start or reload the service (/etc/init.d/shadowmesh reload)",
        config.display(),
        j.bootstrap.len()
    );
    Ok(())
}

/// Applies `j` to the file at `path` (created when missing), checked by the daemon's own parser
/// before it replaces the file atomically, keeping its mode (0600 for a new one: it holds the key).
fn write(path: &Path, j: &Join) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt;
    let (text, mode) = match std::fs::read_to_string(path) {
        Ok(t) => {
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o600);
            (t, mode)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), 0o600),
        Err(e) => return Err(CliError::fail(format!("{}: {e}", path.display()))),
    };
    let new = apply(&text, j).map_err(|e| CliError::fail(format!("{}: {e}", path.display())))?;
    Config::parse(&new, path).map_err(|e| CliError::fail(e.to_string()))?;
    crate::keyfile::write_atomic(path, new.as_bytes(), mode)
        .map_err(|e| CliError::fail(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::parse(text, Path::new("t")).unwrap()
    }

    const KEY: &str = "3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c";

    #[test]
    fn offers_reachable_addresses_public_first() {
        let c = cfg(&format!(
            "config shadowmesh\n\toption network_key '{KEY}'\n\toption listen_port '4500'\n"
        ));
        let host: Vec<IpAddr> = [
            "192.168.1.1",
            "10.100.3.4", // the overlay
            "169.254.0.1",
            "203.0.113.7",
            "fe80::1",
            "2001:db8::7", // IPv6, but the socket is 0.0.0.0
            "100.64.0.9",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let got = offered_addrs(&c, &host);
        let want: Vec<HostPort> = ["203.0.113.7:4500", "192.168.1.1:4500", "100.64.0.9:4500"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        // Advertised first; a dual-stack socket offers IPv6 too; at most four.
        let c = cfg(&format!(
            "config shadowmesh\n\toption network_key '{KEY}'\n\toption listen_address '::'\n\tlist advertise '198.51.100.1:9000'\n"
        ));
        let got = offered_addrs(&c, &host);
        assert_eq!(got[0], "198.51.100.1:9000".parse().unwrap());
        assert_eq!(got[1], "203.0.113.7:4433".parse().unwrap());
        assert!(got.contains(&"[2001:db8::7]:4433".parse().unwrap()));
        assert_eq!(got.len(), OFFERED);
    }

    #[test]
    fn join_writes_key_and_bootstrap_and_keeps_the_rest() {
        let id: PeerId = "ab".repeat(32).parse().unwrap();
        let j = Join {
            network_key: [0x3c; 32],
            bootstrap: vec![
                (id, "192.0.2.1:4433".parse().unwrap()),
                (id, "[2001:db8::1]:4433".parse().unwrap()),
            ],
        };
        let text = format!(
            "# mine\nconfig shadowmesh 'main'\n\toption seed '1'\n\toption network_key '{}'\n\toption mtu '1400'\n\tlist bootstrap '{id}@192.0.2.1:4433'\n\nconfig other 'x'\n\toption a 'b'\n",
            "11".repeat(32)
        );
        let out = apply(&text, &j).unwrap();
        let c = cfg(&out);
        assert_eq!(c.network_key.as_deref(), Some(&[0x3c; 32]));
        assert!(!c.seed);
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.bootstrap, j.bootstrap);
        assert!(out.starts_with("# mine\n"));
        assert!(out.contains("\nconfig other 'x'\n\toption a 'b'\n"));
        // Applying again changes nothing.
        assert_eq!(apply(&out, &j).unwrap(), out);
        // An empty file gets a section.
        let c = cfg(&apply("", &j).unwrap());
        assert_eq!(c.bootstrap.len(), 2);
    }

    #[test]
    fn cli_writes_a_file_the_daemon_reads() {
        let dir = std::env::temp_dir().join(format!("sm-join-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shadowmesh");
        let id = "cd".repeat(32);
        let uri = format!("shadowmesh:join?network_key={KEY}&bootstrap={id}@192.0.2.9:4433");
        let args = |u: &str| {
            vec![
                "--config".to_string(),
                path.display().to_string(),
                u.to_string(),
            ]
        };
        main(&args(&uri)).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.bootstrap.len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A bad string is refused and the file stays.
        let before = std::fs::read_to_string(&path).unwrap();
        assert!(main(&args("shadowmesh:join?network_key=00")).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
