//! The join string: what a new gateway needs to become a member, in one line that fits a QR
//! code and a clipboard.
//!
//! `shadowmesh:join?network_key=HEX64&bootstrap=PEERID@HOST:PORT[&bootstrap=…]`
//!
//! - `network_key`: the mesh's 32-byte key, 64 hex digits, exactly once;
//! - `bootstrap`: one to [`MAX_BOOTSTRAP`] gateways to join through, each exactly as
//!   `list bootstrap` takes it: an address (IPv6 in brackets) or a DNS name, port not 0
//!   ([`HostPort`]; a home router is often reached by a dynamic-DNS name);
//! - values may be percent-encoded (`%40` for `@`, as some QR readers and chat apps rewrite
//!   them); parameters this version does not know are skipped, so a newer string still joins.
//!
//! The string carries a secret: whoever holds it is a member.

use core::fmt;
use std::net::SocketAddr;

use crate::peer::PeerId;

/// The scheme and path every join string starts with.
pub const PREFIX: &str = "shadowmesh:join?";
/// The most bootstrap entries a string may carry.
pub const MAX_BOOTSTRAP: usize = 8;
/// The longest string accepted (8 IPv6 entries fit in about 1,000 characters).
pub const MAX_LEN: usize = 2048;

/// Why a join string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// Longer than [`MAX_LEN`].
    TooLong,
    /// Does not start with [`PREFIX`].
    NotAJoinString,
    /// A `%` not followed by two hex digits, or bytes that are not UTF-8 once decoded.
    BadEscape,
    /// `network_key` missing, repeated or not 64 hex digits.
    NetworkKey,
    /// A `bootstrap` value that is not `PEERID@IP:PORT` (with the reason).
    Bootstrap(&'static str),
    /// No `bootstrap`, or more than [`MAX_BOOTSTRAP`].
    BootstrapCount,
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::TooLong => write!(f, "longer than {MAX_LEN} characters"),
            JoinError::NotAJoinString => write!(f, "does not start with {PREFIX}"),
            JoinError::BadEscape => write!(f, "a bad %-escape"),
            JoinError::NetworkKey => write!(f, "needs network_key=<64 hex digits> once"),
            JoinError::Bootstrap(why) => write!(f, "bootstrap: {why}"),
            JoinError::BootstrapCount => {
                write!(f, "needs 1 to {MAX_BOOTSTRAP} bootstrap=PEERID@IP:PORT")
            }
        }
    }
}

impl std::error::Error for JoinError {}

/// Where a gateway is: an address, or a DNS name and a port (resolved by whoever dials it,
/// again when it may have moved).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPort {
    /// An IP address and port.
    Addr(SocketAddr),
    /// A DNS name (letters, digits, `-` and `.`; checked by [`parse_host_port`]) and port.
    Name(String, u16),
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPort::Addr(a) => write!(f, "{a}"),
            HostPort::Name(n, p) => write!(f, "{n}:{p}"),
        }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(a: SocketAddr) -> HostPort {
        HostPort::Addr(a)
    }
}

impl core::str::FromStr for HostPort {
    type Err = &'static str;
    fn from_str(v: &str) -> Result<HostPort, &'static str> {
        parse_host_port(v)
    }
}

impl HostPort {
    /// The address, if it is one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            HostPort::Addr(a) => Some(*a),
            HostPort::Name(..) => None,
        }
    }
}

/// Parses `IP:PORT` (IPv6 in brackets) or `NAME:PORT`, port not 0. A name is at most 253
/// characters of dot-separated labels, each 1 to 63 letters, digits or `-`, not starting or
/// ending with `-`; one that is all digits and dots (a mistyped address) is refused.
pub fn parse_host_port(v: &str) -> Result<HostPort, &'static str> {
    if let Ok(a) = v.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err("port 0");
        }
        return Ok(HostPort::Addr(a));
    }
    let (name, port) = v
        .rsplit_once(':')
        .ok_or("the address must be IP:PORT or NAME:PORT")?;
    let port: u16 = port.parse().map_err(|_| "the port must be 1 to 65535")?;
    if port == 0 {
        return Err("port 0");
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty()
        || name.len() > 253
        || !name.split('.').all(label_ok)
        || name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return Err("the address must be IP:PORT (IPv6 in brackets) or NAME:PORT");
    }
    Ok(HostPort::Name(name.to_ascii_lowercase(), port))
}

/// A parsed join string.
#[derive(Clone, PartialEq, Eq)]
pub struct Join {
    /// The mesh's network key.
    pub network_key: [u8; 32],
    /// Gateways to join through, in the string's order, without repeats.
    pub bootstrap: Vec<(PeerId, HostPort)>,
}

impl fmt::Debug for Join {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Join")
            .field("network_key", &"..")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

/// Parses `PEERID@IP:PORT` or `PEERID@NAME:PORT`, the form of `list bootstrap`.
pub fn parse_peer_addr(v: &str) -> Result<(PeerId, HostPort), &'static str> {
    let (id, addr) = v.split_once('@').ok_or("expected PEERID@HOST:PORT")?;
    let id: PeerId = id.parse().map_err(|_| "the PeerId must be 64 hex digits")?;
    Ok((id, parse_host_port(addr)?))
}

fn unhex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `%XX` decoding (no `+`: nothing in a join string is a space).
fn percent_decode(v: &str) -> Result<String, JoinError> {
    if !v.contains('%') {
        return Ok(v.to_string());
    }
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = b.get(i + 1).copied().and_then(unhex);
            let lo = b.get(i + 2).copied().and_then(unhex);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => return Err(JoinError::BadEscape),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| JoinError::BadEscape)
}

/// Parses a join string (surrounding whitespace is ignored: it is often pasted).
pub fn parse(s: &str) -> Result<Join, JoinError> {
    let s = s.trim();
    if s.len() > MAX_LEN {
        return Err(JoinError::TooLong);
    }
    let query = s.strip_prefix(PREFIX).ok_or(JoinError::NotAJoinString)?;
    let mut key: Option<[u8; 32]> = None;
    let mut bootstrap: Vec<(PeerId, HostPort)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v)?;
        match k {
            "network_key" => {
                if key.is_some() || v.len() != 64 {
                    return Err(JoinError::NetworkKey);
                }
                let mut out = [0u8; 32];
                for (i, o) in out.iter_mut().enumerate() {
                    let h = unhex(v.as_bytes()[2 * i]).ok_or(JoinError::NetworkKey)?;
                    let l = unhex(v.as_bytes()[2 * i + 1]).ok_or(JoinError::NetworkKey)?;
                    *o = h << 4 | l;
                }
                key = Some(out);
            }
            "bootstrap" => {
                let e = parse_peer_addr(&v).map_err(JoinError::Bootstrap)?;
                if !bootstrap.contains(&e) {
                    if bootstrap.len() == MAX_BOOTSTRAP {
                        return Err(JoinError::BootstrapCount);
                    }
                    bootstrap.push(e);
                }
            }
            _ => {}
        }
    }
    let network_key = key.ok_or(JoinError::NetworkKey)?;
    if bootstrap.is_empty() {
        return Err(JoinError::BootstrapCount);
    }
    Ok(Join {
        network_key,
        bootstrap,
    })
}

impl fmt::Display for Join {
    /// The string [`parse`] reads back (at most [`MAX_BOOTSTRAP`] entries are written).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        f.write_str("network_key=")?;
        for b in &self.network_key {
            write!(f, "{b:02x}")?;
        }
        for (id, addr) in self.bootstrap.iter().take(MAX_BOOTSTRAP) {
            write!(f, "&bootstrap={id}@{addr}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> PeerId {
        PeerId([b; 32])
    }

    #[test]
    fn round_trip() {
        let j = Join {
            network_key: [0x3c; 32],
            bootstrap: vec![
                (id(1), "192.0.2.1:4433".parse().unwrap()),
                (id(1), "[2001:db8::1]:4433".parse().unwrap()),
            ],
        };
        let s = j.to_string();
        assert!(s.starts_with("shadowmesh:join?network_key=3c3c"));
        assert!(s.contains("@[2001:db8::1]:4433"));
        assert_eq!(parse(&s).unwrap(), j);
        assert_eq!(parse(&format!("  {s}\n")).unwrap(), j);
        // Percent-encoded by a QR reader, with a parameter from a newer version.
        let enc = s
            .replace('@', "%40")
            .replace(':', "%3A")
            .replacen("%3A", ":", 1)
            + "&name=x";
        assert_eq!(parse(&enc).unwrap(), j);
        // The key stays out of Debug.
        assert!(!format!("{j:?}").contains("3c3c"));
    }

    #[test]
    fn refusals() {
        let key = "ab".repeat(32);
        let b = format!("bootstrap={}@192.0.2.1:4433", id(2));
        let ok = format!("{PREFIX}network_key={key}&{b}");
        assert!(parse(&ok).is_ok());
        for (s, e) in [
            (
                format!("join?network_key={key}&{b}"),
                JoinError::NotAJoinString,
            ),
            (format!("{PREFIX}{b}"), JoinError::NetworkKey),
            (
                format!("{PREFIX}network_key={key}"),
                JoinError::BootstrapCount,
            ),
            (format!("{ok}&network_key={key}"), JoinError::NetworkKey),
            (
                format!("{PREFIX}network_key={}&{b}", &key[..62]),
                JoinError::NetworkKey,
            ),
            (
                format!("{PREFIX}network_key={}zz&{b}", &key[..62]),
                JoinError::NetworkKey,
            ),
            (format!("{ok}%4"), JoinError::BadEscape),
            (format!("{ok}%ff%fe"), JoinError::BadEscape),
            (
                format!("{ok}&bootstrap=x@1.2.3.4:1"),
                JoinError::Bootstrap("the PeerId must be 64 hex digits"),
            ),
            (
                format!("{PREFIX}network_key={key}&bootstrap={}@192.0.2.1:0", id(2)),
                JoinError::Bootstrap("port 0"),
            ),
            (
                format!(
                    "{PREFIX}network_key={key}&bootstrap={}@open_wrt.lan:4433",
                    id(2)
                ),
                JoinError::Bootstrap("the address must be IP:PORT (IPv6 in brackets) or NAME:PORT"),
            ),
            (format!("{ok}{}", "x".repeat(MAX_LEN)), JoinError::TooLong),
        ] {
            assert_eq!(parse(&s), Err(e), "{s}");
        }
        let nine: String = (1..=9u8)
            .map(|i| format!("&bootstrap={}@192.0.2.{i}:4433", id(2)))
            .collect();
        assert_eq!(
            parse(&format!("{PREFIX}network_key={key}{nine}")),
            Err(JoinError::BootstrapCount)
        );
        // Repeats count once.
        let same = format!("{ok}&{b}&{b}");
        assert_eq!(parse(&same).unwrap().bootstrap.len(), 1);
    }

    #[test]
    fn names_are_taken_where_addresses_are() {
        let j = format!(
            "{PREFIX}network_key={}&bootstrap={}@Home.Example.NET.:4433",
            "ab".repeat(32),
            id(2)
        );
        let j = parse(&j).unwrap();
        assert_eq!(
            j.bootstrap,
            [(id(2), HostPort::Name("home.example.net".into(), 4433))]
        );
        assert_eq!(parse(&j.to_string()).unwrap(), j);
        assert_eq!(parse_host_port("gw:1"), Ok(HostPort::Name("gw".into(), 1)));
        for bad in [
            "gw",
            "gw:0",
            "gw:65536",
            ":4433",
            "-gw:1",
            "gw-:1",
            "a..b:1",
            "1.2.3.4.5:1",
            "10.0.0.1:x",
            "g w:1",
            "[::1:1",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
        let long = format!("{}:1", vec!["a".repeat(63); 4].join("."));
        assert!(parse_host_port(&long).is_err(), "254 characters");
        assert_eq!(
            parse_host_port("[2001:db8::1]:4433"),
            Ok(HostPort::Addr("[2001:db8::1]:4433".parse().unwrap()))
        );
    }
}
