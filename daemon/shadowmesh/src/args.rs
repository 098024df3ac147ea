//! The command line's argument parsing and error type, shared by every command.
//!
//! Hand-rolled: a parser crate would cost more flash than the whole CLI.

use shadowmesh_crypto::identity::KeyFileError;
use shadowmesh_crypto::NetworkKey;
use shadowmesh_proto::PeerId;
use std::net::SocketAddr;
use zeroize::Zeroizing;

/// A command-line error: message for stderr and exit code.
#[derive(Debug)]
pub struct CliError {
    /// What went wrong, for the user.
    pub msg: String,
    /// Process exit code.
    pub code: i32,
}

impl CliError {
    /// A usage error (exit code 2).
    pub fn usage(msg: impl Into<String>) -> Self {
        CliError {
            msg: msg.into(),
            code: 2,
        }
    }

    /// A runtime failure (exit code 1).
    pub fn fail(msg: impl Into<String>) -> Self {
        CliError {
            msg: msg.into(),
            code: 1,
        }
    }
}

impl From<KeyFileError> for CliError {
    fn from(e: KeyFileError) -> Self {
        CliError::fail(e.to_string())
    }
}

/// Parsed `--flag value` options after the command name.
#[derive(Debug, Default)]
pub struct Opts {
    pairs: Vec<(String, Option<String>)>,
}

const SWITCHES: &[&str] = &["--json", "--rekey", "--attack", "--help"];

impl Opts {
    /// Parses `args` (without the program and command names).
    pub fn parse(args: &[String]) -> Result<Opts, CliError> {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if !a.starts_with("--") {
                return Err(CliError::usage(format!("unexpected argument '{a}'")));
            }
            if let Some((k, v)) = a.split_once('=') {
                pairs.push((k.to_string(), Some(v.to_string())));
            } else if SWITCHES.contains(&a.as_str()) {
                pairs.push((a.clone(), None));
            } else {
                let v = it
                    .next()
                    .ok_or_else(|| CliError::usage(format!("option {a} needs a value")))?;
                pairs.push((a.clone(), Some(v.clone())));
            }
        }
        Ok(Opts { pairs })
    }

    /// Fails on any option not in `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), CliError> {
        for (k, _) in &self.pairs {
            if !allowed.contains(&k.as_str()) {
                return Err(CliError::usage(format!("unknown option {k}")));
            }
        }
        Ok(())
    }

    /// The value of `--name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Whether switch `--name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == name)
    }

    /// The value of a required option.
    pub fn need(&self, name: &str) -> Result<&str, CliError> {
        self.get(name)
            .ok_or_else(|| CliError::usage(format!("missing required option {name}")))
    }

    /// A parsed value, or `default`.
    pub fn parse_or<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, CliError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| CliError::usage(format!("invalid value '{v}' for {name}"))),
        }
    }
}

/// Reads the network key from `--network-key HEX` or `--network-key-file PATH`.
pub fn network_key(o: &Opts) -> Result<NetworkKey, CliError> {
    let (hex, origin) = match (o.get("--network-key"), o.get("--network-key-file")) {
        (Some(h), None) => (Zeroizing::new(h.to_string()), "--network-key".to_string()),
        (None, Some(p)) => (
            Zeroizing::new(
                std::fs::read_to_string(p)
                    .map_err(|e| CliError::fail(format!("network key file {p}: {e}")))?,
            ),
            format!("network key file {p}"),
        ),
        (Some(_), Some(_)) => {
            return Err(CliError::usage(
                "give --network-key or --network-key-file, not both",
            ))
        }
        (None, None) => {
            return Err(CliError::usage(
                "missing --network-key or --network-key-file",
            ))
        }
    };
    NetworkKey::from_hex(hex.trim())
        .ok_or_else(|| CliError::usage(format!("{origin}: expected 64 hex digits")))
}

/// Parses `PEERID@HOST:PORT` (the UCI bootstrap syntax).
pub fn parse_peer_addr(s: &str) -> Result<(PeerId, SocketAddr), CliError> {
    let (id, addr) = s
        .split_once('@')
        .ok_or_else(|| CliError::usage(format!("'{s}': expected PEERID@HOST:PORT")))?;
    let id: PeerId = id
        .parse()
        .map_err(|_| CliError::usage(format!("'{id}': a PeerId is 64 hex digits")))?;
    let addr = addr
        .parse()
        .map_err(|_| CliError::usage(format!("'{addr}': expected IP:PORT")))?;
    Ok((id, addr))
}

/// The network key if `--network-key` or `--network-key-file` is given.
pub fn optional_network_key(o: &Opts) -> Result<Option<NetworkKey>, CliError> {
    if o.get("--network-key").is_none() && o.get("--network-key-file").is_none() {
        return Ok(None);
    }
    network_key(o).map(Some)
}

/// The arguments of a command that takes positional words (rpcd's `call METHOD`, a join
/// string): `--config PATH` (the default configuration without it) and the words, in order.
pub fn config_and_words(args: &[String]) -> Result<(std::path::PathBuf, Vec<&str>), CliError> {
    let mut config = std::path::PathBuf::from(crate::config::DEFAULT_CONFIG);
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => {
                config = it
                    .next()
                    .ok_or_else(|| CliError::usage("--config needs a path"))?
                    .into()
            }
            w => words.push(w),
        }
    }
    Ok((config, words))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(a: &[&str]) -> Result<Opts, CliError> {
        Opts::parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options() {
        let o = opts(&["--key", "k", "--json", "--count=5"]).unwrap();
        assert_eq!(o.get("--key"), Some("k"));
        assert!(o.flag("--json"));
        assert_eq!(o.parse_or("--count", 1u32).unwrap(), 5);
        assert!(o.only(&["--key", "--json"]).is_err());
        assert!(opts(&["--key"]).is_err());
        assert!(opts(&["stray"]).is_err());
    }

    #[test]
    fn peer_addr() {
        let id = "ab".repeat(32);
        let (p, a) = parse_peer_addr(&format!("{id}@127.0.0.1:4433")).unwrap();
        assert_eq!(p.to_string(), id);
        assert_eq!(a.port(), 4433);
        assert!(parse_peer_addr("nope").is_err());
        assert!(parse_peer_addr(&format!("{}@127.0.0.1:1", &id[..10])).is_err());
        assert!(parse_peer_addr(&format!("{id}@host:1")).is_err());
    }
}
