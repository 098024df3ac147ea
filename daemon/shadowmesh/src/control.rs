//! The control socket: one command per line in, one JSON object per line out. The CLI
//! (`shadowmesh status`, `shadowmesh dht`) and the LuCI rpcd backend (`shadowmesh rpcd`, `rpcd.rs`)
//! talk to it.
//!
//! Commands: `status` (with `started`: the options read only at start, as this instance has
//! them; `restart_pending`: those the file has changed since; `observed`: the addresses other
//! nodes agree they see us at; `nat`: the NAT between us and them, `unknown`, `none`,
//! `endpoint-independent` or `endpoint-dependent`; `relay`: what we relay for members and the
//! relays our links go through); `peers` (members, their addresses, routes, traffic and paths,
//! `path` `direct` or `relayed` with the `relay`); `lookup <PEERID>` (members only: FIND_VALUE for that member's record,
//! with what it says). The socket is created mode 0600 (root only on a router).

use shadowmesh_crypto::NetworkKey;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use shadowmesh_proto::PeerId;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::json::Obj;
use crate::mesh::Mesh;

/// Longest command line accepted.
const MAX_LINE: usize = 1024;

fn error(msg: &str) -> String {
    Obj::new().str("error", msg).finish()
}

/// What every client's answers draw on besides the mesh.
struct Served {
    network_key: Option<NetworkKey>,
    since: Instant,
    /// `Config::started_json` of the configuration the daemon started with.
    started: String,
}

/// Serves the control socket at `path` until the process ends; `started` is what `status`
/// reports as the options the daemon started with.
pub async fn serve(
    mesh: Rc<Mesh>,
    path: PathBuf,
    network_key: Option<NetworkKey>,
    started: String,
) {
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            log::error!("control socket {}: {e}", path.display());
            return;
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    let served = Rc::new(Served {
        network_key,
        since: Instant::now(),
        started,
    });
    while let Ok((stream, _)) = listener.accept().await {
        tokio::task::spawn_local(client(mesh.clone(), stream, served.clone()));
    }
}

async fn client(mesh: Rc<Mesh>, stream: UnixStream, served: Rc<Served>) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(64 * MAX_LINE as u64)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = if line.len() > MAX_LINE {
            error("command too long")
        } else {
            answer(&mesh, line.trim(), &served).await
        };
        if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            break;
        }
    }
}

/// A JSON array of names that need no escaping (option names).
fn string_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", quoted.join(","))
}

async fn answer(mesh: &Rc<Mesh>, line: &str, served: &Served) -> String {
    let nk = served.network_key.as_ref();
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("status"), None, _) => {
            let c = mesh.contact();
            let mut o = Obj::new()
                .str("peer_id", &c.id.to_string())
                .str("listen", &c.addr.to_string())
                .bool("member", nk.is_some())
                .uint("dht_contacts", mesh.table_len() as u64)
                .uint("dht_size", mesh.table_len() as u64)
                .num("dht_rtt_ms", mesh.dht_rtt_ms().unwrap_or(0.0))
                .uint("records_held", mesh.records_held() as u64)
                .uint("handshake_retries", mesh.node().retries_sent() as u64)
                .uint("handshakes_refused", mesh.node().refused() as u64)
                .uint(
                    "handshakes_refused_source",
                    mesh.node().refused_source() as u64,
                )
                .uint("strangers", mesh.strangers() as u64)
                .uint("uptime_s", served.since.elapsed().as_secs())
                .bool("clock_unset", crate::clock_unset())
                .num("clock_offset_s", crate::clock_offset() as f64)
                .raw("restart_pending", &string_list(&crate::restart_pending()));
            let (observed, nat) = mesh.observed_state();
            let observed: Vec<String> = observed.iter().map(|a| a.to_string()).collect();
            let observed: Vec<&str> = observed.iter().map(String::as_str).collect();
            let (state, mapping) = mesh.port_map.status();
            let mut pm = crate::json::Obj::new().str("state", state);
            if let Some(m) = mapping {
                pm = pm
                    .str("protocol", m.protocol.as_str())
                    .str("external", &m.external.to_string())
                    .uint("lifetime_s", m.lifetime as u64);
            }
            let me = mesh.node().peer_id();
            o = o
                .str("name", &mesh.node().payload().name)
                .str(
                    "dns_name",
                    mesh.dns_names.borrow().get(&me).map_or("", String::as_str),
                )
                .raw("observed", &string_list(&observed))
                .str("nat", nat.as_str())
                .raw("port_mapping", &pm.finish());
            if let Some(lan) = mesh.lan.borrow().as_ref() {
                let d = lan.borrow();
                let st = d.stats();
                let heard: Vec<String> = d
                    .neighbours()
                    .map(|(p, a, _)| format!("{}@{a}", p.short()))
                    .collect();
                let heard: Vec<&str> = heard.iter().map(String::as_str).collect();
                o = o.raw(
                    "lan_discovery",
                    &crate::json::Obj::new()
                        .uint("sent", st.sent)
                        .uint("heard", st.heard)
                        .uint("foreign", st.foreign)
                        .uint("limited", st.limited)
                        .uint("dials", st.dials)
                        .raw("neighbours", &string_list(&heard))
                        .finish(),
                );
            }
            if let Some(dp) = mesh.dataplane() {
                let (v4, counter, v6) = dp.addresses();
                let members = dp.members();
                o = o
                    .str("interface", dp.interface())
                    .uint("mtu", dp.mtu() as u64)
                    .str("overlay_ipv4", &v4.to_string())
                    .uint("overlay_ipv4_counter", counter as u64)
                    .str(
                        "overlay_ipv6",
                        &v6.map(|a| a.to_string()).unwrap_or_default(),
                    )
                    .uint("peers_known", members.len() as u64)
                    .uint("peers_connected", dp.connected() as u64)
                    .raw("relay", &relay_json(&dp.relay_info()));
                let (peer, state) = dp.exit();
                o = o.raw(
                    "exit",
                    &Obj::new()
                        .str("peer", &opt_str(peer))
                        .str("state", state.as_str())
                        .finish(),
                );
            }
            // Last: its names repeat top-level ones (`interface`, `overlay_ipv4`), and a script
            // that takes the first occurrence of a name must keep getting the running value.
            o.raw("started", &served.started).finish()
        }
        (Some("peers"), None, _) => {
            let Some(dp) = mesh.dataplane() else {
                return Obj::new().raw("peers", "[]").finish();
            };
            let dns = mesh.dns_names.borrow();
            let list: Vec<String> = dp.members().iter().map(|m| member_json(m, &dns)).collect();
            Obj::new()
                .raw("peers", &format!("[{}]", list.join(",")))
                .finish()
        }
        (Some("lookup"), Some(id), None) => {
            let Ok(owner) = id.parse::<PeerId>() else {
                return error("expected: lookup <PEERID> (64 hex digits)");
            };
            let Some(nk) = nk else {
                return error(
                    "this node has no network key: it cannot name or read members' records",
                );
            };
            let key = shadowmesh_crypto::storage_key(nk, &owner);
            let t = Instant::now();
            let Some(out) = mesh.find_value(key, owner).await else {
                return error("busy: too many lookups running");
            };
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let base = Obj::new()
                .str("peer_id", &owner.to_string())
                .num("lookup_ms", ms)
                .uint("hops", out.hops as u64)
                .uint("messages", out.messages as u64);
            let Some(rec) = out.record else {
                return base.bool("found", false).finish();
            };
            match shadowmesh_crypto::record::verify_record(&rec, crate::unix_now()).and_then(|v| {
                let p = v.open_payload(nk)?;
                Ok((v, p))
            }) {
                Ok((v, p)) => {
                    let addrs: Vec<String> = p.addrs.iter().map(|a| format!("\"{a}\"")).collect();
                    base.bool("found", true)
                        .uint("seq", v.seq)
                        .str("ipv4", &p.ipv4.map(|a| a.to_string()).unwrap_or_default())
                        .str("ipv6", &p.ipv6.map(|a| a.to_string()).unwrap_or_default())
                        .raw("addrs", &format!("[{}]", addrs.join(",")))
                        .str("nat", p.nat.as_str())
                        .bool("relay", p.relay)
                        .raw("relays", &peer_ids(&p.relays))
                        .finish()
                }
                Err(e) => base
                    .bool("found", false)
                    .str("error", &e.to_string())
                    .finish(),
            }
        }
        _ => error("unknown command (status | peers | lookup <PEERID>)"),
    }
}

/// `status`'s `relay`: whether we relay, the totals, the circuits we carry, and the relays our
/// links go through.
fn relay_json(r: &crate::dataplane::RelayInfo) -> String {
    let circuits: Vec<String> = r
        .circuits
        .iter()
        .map(|c| {
            Obj::new()
                .str("a", &c.a.pid.to_string())
                .str("b", &c.b.pid.to_string())
                .uint("bytes", c.bytes)
                .uint("packets", c.packets)
                .uint("dropped", c.dropped)
                .finish()
        })
        .collect();

    let c = &r.counters;
    Obj::new()
        .bool("on", r.on)
        .uint("circuits_opened", c.opened)
        .uint("circuits_refused", c.refused)
        .uint("bytes", c.bytes)
        .uint("packets", c.packets)
        .uint("dropped", c.dropped)
        .raw("circuits", &format!("[{}]", circuits.join(",")))
        .raw("in_use", &peer_ids(&r.in_use))
        .raw("kept", &peer_ids(&r.kept))
        .finish()
}

/// Milliseconds, or `null`.
fn opt_ms(d: Option<std::time::Duration>) -> String {
    d.map_or("null".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e3))
}

/// A JSON list of PeerIds.
fn peer_ids(v: &[PeerId]) -> String {
    let v: Vec<String> = v.iter().map(|p| format!("\"{p}\"")).collect();
    format!("[{}]", v.join(","))
}

fn opt_str<T: ToString>(v: Option<T>) -> String {
    v.map(|a| a.to_string()).unwrap_or_default()
}

/// One member in `peers`: the fields `shadowmesh peers --json` promises.
fn member_json(
    m: &crate::dataplane::MemberInfo,
    dns: &std::collections::BTreeMap<PeerId, String>,
) -> String {
    let list =
        |v: &mut dyn Iterator<Item = String>| format!("[{}]", v.collect::<Vec<_>>().join(","));
    let routes = list(&mut m.routes.iter().map(|r| format!("\"{r}\"")));
    let accepted = list(&mut m.routes_accepted.iter().map(|r| format!("\"{r}\"")));
    let refused = list(&mut m.routes_refused.iter().map(|(p, why)| {
        Obj::new()
            .str("prefix", &p.to_string())
            .str("reason", why.code())
            .str("detail", &why.to_string())
            .finish()
    }));
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let paths = list(&mut m.paths.iter().map(|(p, ago)| {
        let mut o = Obj::new()
            .str("kind", p.kind.name())
            .str("addr", &p.addr.to_string());
        if let Some(a) = ago {
            o = o.num("heard_ms_ago", ms(*a));
        }
        if let Some(r) = p.rtt {
            o = o.num("rtt_ms", ms(r));
        }
        o.finish()
    }));
    let lan_names = list(&mut m.lan_names.iter().map(|n| {
        Obj::new()
            .str("name", &n.label)
            .str("addr", &n.addr.to_string())
            .finish()
    }));
    let c = &m.counters;
    Obj::new()
        .str("peer_id", &m.peer_id.to_string())
        .str("overlay_ipv4", &opt_str(m.ipv4))
        .uint("overlay_ipv4_counter", m.ipv4_counter as u64)
        .str("overlay_ipv6", &opt_str(m.ipv6))
        .raw("routes", &routes)
        .raw("routes_accepted", &accepted)
        .raw("routes_refused", &refused)
        .uint("record_seq", m.record_seq)
        .str("endpoint", &opt_str(m.endpoint))
        .str(
            "path",
            if m.relay.is_some() {
                "relayed"
            } else {
                "direct"
            },
        )
        .str("relay", &opt_str(m.relay))
        .str("nat", m.nat.as_str())
        .bool("exit", m.exit)
        .bool("lan", m.lan)
        .str("name", &m.name)
        .str("dns_name", dns.get(&m.peer_id).map_or("", String::as_str))
        .raw("lan_names", &lan_names)
        .raw("first_packet_ms", &opt_ms(m.reach.first))
        .raw("direct_ms", &opt_ms(m.reach.direct))
        .str("lane", m.lane)
        .bool("connected", m.connected)
        .str("role", m.role)
        .uint("connection_id", m.connection_id)
        .num(
            "rtt_ms",
            m.rtt.map(|r| r.as_secs_f64() * 1e3).unwrap_or(0.0),
        )
        .uint("tx_bytes", c.tx_bytes)
        .uint("rx_bytes", c.rx_bytes)
        .uint("tx_packets", c.tx_packets)
        .uint("rx_packets", c.rx_packets)
        .uint("tx_dropped", c.tx_dropped)
        .uint("rx_spoofed", c.rx_spoofed)
        .uint("rx_invalid", c.rx_invalid)
        .uint("last_handshake", m.last_handshake)
        .uint("rekeys", m.rekeys as u64)
        // Last: its names repeat top-level ones (`rtt_ms`).
        .raw("paths", &paths)
        .finish()
}

/// Sends one command to the daemon's control socket and returns its answer.
pub fn request(path: &std::path::Path, cmd: &str) -> Result<String, String> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach the daemon at {} ({e}): is `shadowmesh run` running?",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim_end().to_string())
}
