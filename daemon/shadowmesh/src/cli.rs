//! The command line. One binary is both daemon and CLI (flash is scarce on routers).
//!
//! The arguments are parsed in [`crate::args`].

use std::path::PathBuf;

use shadowmesh_crypto::Identity;
use shadowmesh_proto::overlay::{self, V4Prefix, V6Prefix};
use shadowmesh_proto::peer::to_hex;

use crate::args::{optional_network_key, CliError, Opts};
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
  start-options [--config PATH]
                               the options the daemon reads only at start, as that file sets
                               them (JSON; the network key as a fingerprint): what `status`
                               reports under `started`, for the init script to tell a restart
                               from a reload
  rpcd [--config PATH] list | call METHOD
                               the LuCI rpcd plugin's answers (JSON): status, secret
  version                      print the version
";

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
    let path = std::path::PathBuf::from(o.get("--config").unwrap_or(crate::config::DEFAULT_CONFIG));
    let cfg = crate::config::Config::load(&path).map_err(|e| CliError::fail(e.to_string()))?;
    let answer =
        crate::control::request(&crate::config::control_path(&cfg), cmd).map_err(CliError::fail)?;
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
            "start-options" => {
                o.only(&["--config"])?;
                let path =
                    PathBuf::from(o.get("--config").unwrap_or(crate::config::DEFAULT_CONFIG));
                let cfg = crate::config::Config::load(&path)
                    .map_err(|e| CliError::fail(e.to_string()))?;
                println!("{}", cfg.started_json());
                Ok(())
            }
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
