//! `shadowmesh rpcd list | call METHOD`: the real code behind the rpcd exec plugin
//! `/usr/libexec/rpcd/shadowmesh`, which is one `exec` line. rpcd runs a plugin with `list` to
//! learn its methods (a JSON object of method → argument signature) and with `call METHOD` to
//! run one (arguments as JSON on stdin; none of ours takes any, so stdin is not read). The answer
//! is one JSON object on stdout, which ubus hands to LuCI. The arguments rpcd writes to stdin
//! are read (at most 64 KiB) and ignored: a plugin that exits without reading them leaves its
//! caller a broken pipe.
//!
//! Methods:
//! - `status`: `running` (whether the daemon answered on its control socket), `error` (why not),
//!   `config_error` (the UCI file does not parse: file, line, option, value), `enabled`, `seed`,
//!   `peer_id`, `overlay_ipv4`, `overlay_ipv6`, `listen_port`, `interface`;
//!   while running also `daemon` (the control socket's `status` object) and `peers` (its `peers`
//!   list: each member's `name` and `dns_name` among the rest). Stopped, the identity fields come from the key file, so
//!   the page still shows who this gateway is. Never the network key: `status` is in the read
//!   ACL, and a key holder joins the mesh.
//! - `secret`: `network_key` (empty for a seed). In the app's write ACL only: whoever may change
//!   the configuration may see the key; read-only users may not.
//!
//! A plugin's exit status is ignored by rpcd and a non-object answer is an error there, so
//! every failure is a field of the object, never a bare message.

use shadowmesh_proto::overlay::{self, V6Prefix};
use shadowmesh_proto::peer::to_hex;

use crate::args::CliError;
use crate::config::Config;
use crate::json::Obj;

/// The `list` answer: every method and its (empty) argument signature.
pub const METHODS: &str = r#"{"status":{},"secret":{}}"#;

/// Runs `rpcd [--config PATH] list|call METHOD` and prints the answer.
pub fn main(args: &[String]) -> Result<(), CliError> {
    let (config, words) = crate::args::config_and_words(args)?;
    let answer = match words.as_slice() {
        ["list"] => METHODS.to_string(),
        ["call", "status"] => {
            drain_stdin();
            status(&config)
        }
        ["call", "secret"] => {
            drain_stdin();
            secret(&config)
        }
        ["call", other] => Obj::new()
            .str("error", &format!("unknown method '{other}'"))
            .finish(),
        _ => {
            return Err(CliError::usage(
                "usage: shadowmesh rpcd [--config PATH] list | call METHOD",
            ))
        }
    };
    println!("{answer}");
    Ok(())
}

/// Reads and drops what rpcd wrote to stdin (not when stdin is a terminal: a person typing
/// `shadowmesh rpcd call status` would otherwise wait for end of file).
fn drain_stdin() {
    use std::io::Read;
    // SAFETY: isatty only inspects descriptor 0.
    if unsafe { libc::isatty(0) } == 1 {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut stdin = std::io::stdin().lock();
    let mut total = 0;
    while total < 64 * 1024 {
        match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// The `secret` answer for the configuration at `path`: the network key, and the join string
/// a new gateway takes (`shadowmesh join`, the settings page's "Join a mesh").
pub fn secret(path: &std::path::Path) -> String {
    match Config::load(path) {
        Ok(cfg) => {
            let join = crate::keyfile::load(&cfg.key_file)
                .ok()
                .and_then(|id| crate::join::join_string(&cfg, id.peer_id()));
            let o = Obj::new().str(
                "network_key",
                &cfg.network_key
                    .as_deref()
                    .map(|k| to_hex(k))
                    .unwrap_or_default(),
            );
            match join {
                Some(j) => o.str("join", &j),
                None => o,
            }
            .finish()
        }
        Err(e) => Obj::new().str("error", &e.to_string()).finish(),
    }
}

/// The `status` answer for the configuration at `path`.
pub fn status(path: &std::path::Path) -> String {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            return Obj::new()
                .bool("running", false)
                .str("error", "the configuration does not parse")
                .str("config_error", &e.to_string())
                .finish()
        }
    };
    let mut o = Obj::new()
        .bool("enabled", cfg.enabled)
        .bool("seed", cfg.seed || cfg.network_key.is_none())
        .uint("listen_port", cfg.listen.port() as u64)
        .str("interface", &cfg.interface);
    // Who this gateway is, from its key file (readable by root, which rpcd runs as).
    match crate::keyfile::load(&cfg.key_file) {
        Ok(id) => {
            let pid = id.peer_id();
            o = o.str("peer_id", &pid.to_string());
            if let Some(nk) = &cfg.network_key {
                o = o
                    .str(
                        "overlay_ipv4",
                        &overlay::ipv4_candidate(cfg.overlay_ipv4, &pid, 0)
                            .0
                            .to_string(),
                    )
                    .str(
                        "overlay_ipv6",
                        &overlay::ipv6(V6Prefix::for_network(nk), &pid).to_string(),
                    );
            }
        }
        Err(e) => o = o.str("identity_error", &e.to_string()),
    }
    let sock = crate::config::control_path(&cfg);
    let daemon = crate::control::request(&sock, "status");
    let peers = daemon
        .as_ref()
        .ok()
        .map(|_| crate::control::request(&sock, "peers"));
    match (daemon, peers) {
        (Ok(d), Some(Ok(p))) if d.starts_with('{') && p.starts_with("{\"peers\":") => {
            // The daemon's own addresses win over the ones derived above (collision rehash).
            let list = &p["{\"peers\":".len()..p.len() - 1];
            o.bool("running", true)
                .raw("daemon", &d)
                .raw("peers", list)
                .finish()
        }
        (Err(e), _) | (_, Some(Err(e))) => o
            .bool("running", false)
            .str("error", &format!("service not running: {e}"))
            .raw("peers", "[]")
            .finish(),
        _ => o
            .bool("running", false)
            .str("error", "the daemon gave an unexpected answer")
            .raw("peers", "[]")
            .finish(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_config_is_a_field_not_a_failure() {
        let dir = std::env::temp_dir().join(format!("sm-rpcd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("shadowmesh");
        std::fs::write(&p, "config shadowmesh\n\toption listen_port 'x'\n").unwrap();
        let s = status(&p);
        assert!(s.starts_with("{\"running\":false"), "{s}");
        assert!(s.contains("line 2: option 'listen_port'"), "{s}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_key_is_in_secret_only() {
        let dir = std::env::temp_dir().join(format!("sm-rpcd-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("shadowmesh");
        let nk = "5a".repeat(32);
        std::fs::write(
            &p,
            format!(
                "config shadowmesh\n\toption network_key '{nk}'\n\toption key_file '{}'\n\toption state_dir '{}'\n",
                dir.join("key").display(),
                dir.display()
            ),
        )
        .unwrap();
        assert!(!status(&p).contains(&nk), "{}", status(&p));
        assert_eq!(secret(&p), format!("{{\"network_key\":\"{nk}\"}}"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
