//! The command line. One binary is both daemon and CLI (flash is scarce on routers).
//!
//! Hand-rolled argument parsing: a parser crate would cost more flash than the whole CLI.

use shadowmesh_crypto::NetworkKey;
use std::net::SocketAddr;
use std::path::PathBuf;

use shadowmesh_crypto::identity::KeyFileError;
use shadowmesh_crypto::Identity;
use shadowmesh_proto::overlay::{self, V4Prefix, V6Prefix};
use shadowmesh_proto::peer::to_hex;
use shadowmesh_proto::PeerId;
use zeroize::Zeroizing;

use crate::json::Obj;

/// Usage text.
pub const USAGE: &str = "\
usage: shadowmesh <command> [options]

commands:
  run [--config PATH]          the daemon (default config /etc/config/shadowmesh)
  status [--config PATH] [--json]
                               the running daemon's PeerId, addresses, DHT and tunnel state
  peers [--config PATH] [--json]
                               the mesh members: overlay addresses, routes, endpoint, RTT, traffic
  dht [--config PATH] --lookup PEERID
                               ask the running daemon to look up a member's record
  keygen --out PATH            create a new identity key file (mode 0600); refuses to overwrite
  netkey                       print a new random network key (64 hex digits)
  join [--config PATH] 'shadowmesh:join?network_key=…&bootstrap=PEERID@IP:PORT'
                               become a member: write the key and bootstrap gateways a join
                               string carries (LuCI status page, \"Show\") into the config
  id --key PATH [--json] [--network-key HEX | --network-key-file PATH]
                               print the PeerId, public keys and overlay addresses of a key file
                               (the IPv6 one lies in the mesh's /48: it needs the network key)
  probe --key PATH (--network-key HEX | --network-key-file PATH)
        --listen ADDR          accept peers, prove identities, echo their encrypted frames
        --connect PEERID@ADDR  dial a peer, send encrypted frames, report what happened
        [--count N] [--size BYTES] [--rekey] [--attack] [--log-level LEVEL]
  selftest --key PATH --write DIR | --verify DIR
                               sign a record and seal a frame / check ones made by any build
  rpcd [--config PATH] list | call METHOD
                               the LuCI rpcd plugin's answers (JSON): status, secret
  version                      print the version
";

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
fn optional_network_key(o: &Opts) -> Result<Option<NetworkKey>, CliError> {
    if o.get("--network-key").is_none() && o.get("--network-key-file").is_none() {
        return Ok(None);
    }
    network_key(o).map(Some)
}

/// `shadowmesh keygen --out PATH`.
pub fn keygen(o: &Opts) -> Result<(), CliError> {
    o.only(&["--out", "--json", "--network-key", "--network-key-file"])?;
    let path = PathBuf::from(o.need("--out")?);
    let nk = optional_network_key(o)?;
    let id = Identity::generate();
    crate::keyfile::save_new(&id, &path)?;
    if o.flag("--json") {
        println!("{}", id_json(&id, nk.as_deref()));
    } else {
        println!("{}", id.peer_id());
    }
    Ok(())
}

/// The `id --json` object: `peer_id`, `ed25519_public_key`, `mldsa87_public_key`, `ipv4`,
/// `ipv6` (the interface scripts rely on; extend, never rename). The IPv6 address lies in the
/// mesh's /48, derived from the network key: without one, `ipv6` is empty.
pub fn id_json(id: &Identity, network_key: Option<&[u8; 32]>) -> String {
    let pid = id.peer_id();
    let v6 = network_key
        .map(|k| overlay::ipv6(V6Prefix::for_network(k), &pid).to_string())
        .unwrap_or_default();
    let (v4, counter) = overlay::ipv4_candidate(V4Prefix::default(), &pid, 0);
    Obj::new()
        .str("peer_id", &pid.to_string())
        .str("ed25519_public_key", &to_hex(&id.ed25519_public()))
        .str("mldsa87_public_key", &to_hex(id.mldsa_public()))
        .str("ipv4", &v4.to_string())
        .uint("ipv4_counter", counter as u64)
        .str("ipv6", &v6)
        .finish()
}

/// `shadowmesh id --key PATH [--json]`.
pub fn id(o: &Opts) -> Result<(), CliError> {
    o.only(&["--key", "--json", "--network-key", "--network-key-file"])?;
    let nk = optional_network_key(o)?;
    let id = crate::keyfile::load(&PathBuf::from(o.need("--key")?))?;
    if o.flag("--json") {
        println!("{}", id_json(&id, nk.as_deref()));
    } else {
        let pid = id.peer_id();
        println!("peer_id    {pid}");
        println!("ed25519    {}", to_hex(&id.ed25519_public()));
        println!(
            "ipv4       {}",
            overlay::ipv4_candidate(V4Prefix::default(), &pid, 0).0
        );
        if let Some(k) = nk {
            println!(
                "ipv6       {}",
                overlay::ipv6(V6Prefix::for_network(&k), &pid)
            );
        }
    }
    Ok(())
}

/// Sends `cmd` to the daemon configured by `--config` and prints its JSON answer.
fn ctl(o: &Opts, cmd: &str) -> Result<(), CliError> {
    o.only(&["--config", "--json", "--lookup", "--log-level"])?;
    let path = std::path::PathBuf::from(o.get("--config").unwrap_or(crate::daemon::DEFAULT_CONFIG));
    let cfg = crate::config::Config::load(&path).map_err(|e| CliError::fail(e.to_string()))?;
    let answer =
        crate::control::request(&crate::daemon::control_path(&cfg), cmd).map_err(CliError::fail)?;
    println!("{answer}");
    if answer.starts_with("{\"error\"") {
        return Err(CliError::fail("the daemon refused the request"));
    }
    Ok(())
}

/// Runs the CLI on `args` (including the program name); returns the exit code.
pub fn run(args: Vec<String>) -> i32 {
    let Some(cmd) = args.get(1) else {
        eprint!("{USAGE}");
        return 2;
    };
    let rest = &args[2..];
    // rpcd's calling convention has positional words (`list`, `call METHOD`).
    let parsed = if cmd == "rpcd" {
        crate::logger::init(log::LevelFilter::Error);
        crate::rpcd::main(rest).map(|()| Opts::default())
    } else if cmd == "join" {
        crate::join::main(rest).map(|()| Opts::default())
    } else {
        Opts::parse(rest)
    };
    let result = parsed.and_then(|o| {
        if cmd == "rpcd" || cmd == "join" {
            return Ok(());
        }
        if o.flag("--help") {
            print!("{USAGE}");
            return Ok(());
        }
        if let Some(level) = o.get("--log-level") {
            let l = crate::logger::parse_level(level)
                .ok_or_else(|| CliError::usage(format!("invalid --log-level '{level}'")))?;
            crate::logger::init(l);
        } else {
            crate::logger::init(log::LevelFilter::Info);
        }
        match cmd.as_str() {
            "keygen" => keygen(&o),
            "netkey" => {
                o.only(&[])?;
                let mut k = [0u8; 32];
                shadowmesh_crypto::random_bytes(&mut k);
                println!("{}", to_hex(&k));
                Ok(())
            }
            "id" => id(&o),
            "probe" => crate::probe::main(&o),
            "selftest" => crate::selftest::main(&o),
            "run" => crate::daemon::main(&o),
            "status" => ctl(&o, "status"),
            "peers" => ctl(&o, "peers"),
            "dht" => match o.get("--lookup") {
                Some(id) => ctl(&o, &format!("lookup {id}")),
                None => ctl(&o, "status"),
            },
            "version" | "--version" => {
                println!("shadowmesh {}", env!("CARGO_PKG_VERSION"));
                Ok(())
            }
            "help" | "--help" | "-h" => {
                print!("{USAGE}");
                Ok(())
            }
            other => Err(CliError::usage(format!("unknown command '{other}'"))),
        }
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shadowmesh: {}", e.msg);
            if e.code == 2 {
                eprint!("{USAGE}");
            }
            e.code
        }
    }
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
