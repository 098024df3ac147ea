//! Keeps our listen port mapped on the router in front of us (`option port_mapping`): the I/O
//! around [`shadowmesh_proto::portmap::PortMapper`] (PCP, then NAT-PMP) and, when neither
//! maps anything, [`shadowmesh_proto::portmap::upnp`] (UPnP IGD). The router is the IPv4
//! default route's gateway; a socket of its own sends to its port 5351, UPnP's search goes to
//! the LAN's SSDP group and only the router's answer is taken. The mapped address goes into
//! our record beside the observed ones, and the mapping is deleted when the daemon stops.
//!
//! The mapper runs on a thread of its own with a blocking socket: tokio's socket, timer and
//! `select!` code for it cost 35 KiB of the aarch64 binary. It tells the runtime when the
//! mapping changes.

use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shadowmesh_proto::portmap::upnp::{self, Soap, Url};
use shadowmesh_proto::portmap::{Mapping, PortMapper, Protocol, LIFETIME, MIN_LIFETIME};
use shadowmesh_proto::portmap::{RETRY_UNAVAILABLE, SERVER_PORT};

use crate::mesh::Mesh;

/// How often the default route is looked at again (a new router, a new uplink).
const ROUTE_CHECK: Duration = Duration::from_secs(60);

/// The mapper, shared by its thread, the runtime (status, the record) and the way out.
pub struct Shared {
    state: Mutex<State>,
    /// The mapping changed.
    changed: tokio::sync::Notify,
}

struct State {
    /// The mapper and the router it talks to, while there is one.
    mapper: Option<(PortMapper, SocketAddr)>,
    /// A mapping held over UPnP IGD, and when it lapses.
    igd: Option<(Igd, Duration)>,
    /// Why there is none (no default route, no socket, off).
    why: &'static str,
    /// The mapper's clock.
    epoch: Instant,
    /// The daemon is stopping: the thread ends.
    stopped: bool,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            state: Mutex::new(State {
                mapper: None,
                igd: None,
                why: "off",
                epoch: Instant::now(),
                stopped: false,
            }),
            changed: tokio::sync::Notify::new(),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `state` (`mapped`, `asking`, or why not), and the mapping in force.
    pub fn status(&self) -> (&'static str, Option<Mapping>) {
        let s = self.lock();
        let now = s.epoch.elapsed();
        if let Some((igd, _)) = s.igd.as_ref().filter(|(_, until)| now < *until) {
            return ("mapped", Some(igd.mapping));
        }
        match &s.mapper {
            Some((m, _)) => (m.state(now), m.mapping(now)),
            None => (s.why, None),
        }
    }
}

/// The IPv4 default route's gateway, from `/proc/net/route`.
pub fn default_gateway() -> Option<Ipv4Addr> {
    gateway_of(&std::fs::read_to_string("/proc/net/route").ok()?)
}

/// The first default route's gateway in the text of `/proc/net/route` (hex, host order).
fn gateway_of(table: &str) -> Option<Ipv4Addr> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let flags = u16::from_str_radix(f.get(3)?, 16).ok()?;
        // RTF_UP | RTF_GATEWAY, destination 0.0.0.0.
        if *f.get(1)? != "00000000" || flags & 0x3 != 0x3 {
            return None;
        }
        let g = u32::from_str_radix(f.get(2)?, 16).ok()?;
        Some(Ipv4Addr::from(g.to_le_bytes()))
    })
}

/// Maps `port` on the router for as long as the daemon runs, keeping `mesh`'s record told.
pub async fn keep(mesh: Rc<Mesh>, port: u16, shared: Arc<Shared>) {
    let t = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("portmap".into())
        .spawn(move || run(&t, port));
    if let Err(e) = spawned {
        log::warn!("port mapping: no thread: {e}");
        return;
    }
    let mut last: Option<SocketAddr> = None;
    loop {
        shared.changed.notified().await;
        let (why, mapping) = shared.status();
        let now = mapping.map(|m| m.external);
        if now == last {
            continue;
        }
        match mapping {
            Some(m) => log::info!(
                "port mapping: {} forwards to our port {port} ({}, {} s)",
                m.external,
                m.protocol.as_str(),
                m.lifetime
            ),
            None => log::info!("port mapping: none ({why})"),
        }
        last = now;
        mesh.set_mapped(now);
    }
}

/// The mapper's thread: finds the router, asks it, renews, and starts over when the default
/// route moves.
fn run(shared: &Shared, port: u16) {
    let mut told: Option<SocketAddr> = None;
    let mut tell = |shared: &Shared| {
        let now = shared.status().1.map(|m| m.external);
        if now != told {
            told = now;
            shared.changed.notify_one();
        }
    };
    loop {
        if shared.lock().stopped {
            return;
        }
        let Some(gw) = default_gateway() else {
            shared.lock().why = "no IPv4 default route";
            tell(shared);
            std::thread::sleep(ROUTE_CHECK);
            continue;
        };
        let router = SocketAddr::new(gw.into(), SERVER_PORT);
        let sock = std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
            .and_then(|s| s.connect(router).map(|()| s));
        let client = sock.as_ref().ok().and_then(|s| s.local_addr().ok());
        let (Ok(sock), Some(SocketAddr::V4(client))) = (sock, client) else {
            shared.lock().why = "no socket towards the router";
            tell(shared);
            std::thread::sleep(ROUTE_CHECK);
            continue;
        };
        let mut nonce = [0u8; 12];
        shadowmesh_crypto::random_bytes(&mut nonce);
        {
            let mut s = shared.lock();
            if s.stopped {
                return;
            }
            let now = s.epoch.elapsed();
            s.mapper = Some((PortMapper::new(*client.ip(), port, nonce, now), router));
        }
        let mut checked = Instant::now();
        let mut buf = [0u8; 1100];
        // When to ask over UPnP IGD (again), once PCP and NAT-PMP mapped nothing.
        let mut igd_at = Duration::ZERO;
        loop {
            let (out, wait, upnp_due) = {
                let mut s = shared.lock();
                let now = s.epoch.elapsed();
                let holding = s.igd.as_ref().map(|(i, _)| i.renew_at);
                let Some((m, _)) = s.mapper.as_mut() else {
                    return;
                };
                // While UPnP holds a mapping, PCP and NAT-PMP are not asked again.
                if holding.is_none() {
                    m.handle_timeout(now);
                }
                let gave_up = m.gave_up() && holding.is_none() && now >= igd_at;
                let due = gave_up || holding.is_some_and(|r| now >= r);
                let mut wait = m.poll_timeout().saturating_sub(now);
                if let Some(r) = holding {
                    wait = r.saturating_sub(now);
                }
                (m.poll_transmit().filter(|_| holding.is_none()), wait, due)
            };
            if upnp_due {
                igd_at = shared.lock().epoch.elapsed() + RETRY_UNAVAILABLE;
                upnp_keep(shared, gw, *client.ip(), port);
            }
            if let Some(d) = out {
                let _ = sock.send(&d);
            }
            tell(shared);
            if checked.elapsed() >= ROUTE_CHECK {
                checked = Instant::now();
                if default_gateway() != Some(gw) {
                    log::info!("port mapping: the default route moved from {gw}");
                    delete(shared);
                    break;
                }
            }
            let wait = wait.min(ROUTE_CHECK).max(Duration::from_millis(1));
            let _ = sock.set_read_timeout(Some(wait));
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let mut s = shared.lock();
                let now = s.epoch.elapsed();
                if let Some((m, _)) = s.mapper.as_mut() {
                    if let Err(e) = m.handle_datagram(now, from, &buf[..n]) {
                        log::debug!("port mapping: {from}: {e}");
                    }
                }
            }
        }
    }
}

/// Deletes the mapping we hold, if any, and ends the mapper's thread (on the way out: one
/// datagram, not waited for).
pub fn release(shared: &Shared) {
    shared.lock().stopped = true;
    delete(shared);
}

/// A mapping UPnP IGD granted: where to renew and delete it.
struct Igd {
    /// The port-mapping service's control URL, and its type.
    ctl: Url,
    service: &'static str,
    /// What others reach (the router's external address and port), for how long.
    mapping: Mapping,
    /// When to renew it (the mapper's clock).
    renew_at: Duration,
}

/// How long one UPnP exchange (the search, each HTTP request) may take.
const UPNP_TIMEOUT: Duration = Duration::from_secs(3);

/// Maps `port` of `client` over UPnP IGD on router `gw`, or renews the mapping held; the
/// state says what came of it.
fn upnp_keep(shared: &Shared, gw: Ipv4Addr, client: Ipv4Addr, port: u16) {
    let held = shared
        .lock()
        .igd
        .as_ref()
        .map(|(i, _)| (i.ctl.clone(), i.service, i.mapping.external.port()));
    let found = match held {
        Some((ctl, service, ext)) => Ok((ctl, service, ext)),
        None => upnp_find(gw).map(|(ctl, service)| (ctl, service, port)),
    };
    let mapped = found.and_then(|(ctl, service, ext)| {
        let m = upnp_map(&ctl, service, client, port, ext)?;
        Ok((ctl, service, m))
    });
    let mut s = shared.lock();
    let now = s.epoch.elapsed();
    match mapped {
        Ok((ctl, service, mapping)) => {
            // A lease of 0 is permanent: renewed as if it were ours, deleted on stop.
            let life = Duration::from_secs(if mapping.lifetime == 0 {
                LIFETIME.into()
            } else {
                mapping.lifetime.max(MIN_LIFETIME).into()
            });
            s.igd = Some((
                Igd {
                    ctl,
                    service,
                    mapping,
                    renew_at: now + life / 2,
                },
                now + life,
            ));
        }
        Err(why) => {
            log::debug!("port mapping: UPnP IGD: {why}");
            // A renewal that failed keeps the mapping until it lapses, then asks afresh.
            let lapsed = s.igd.as_ref().is_none_or(|(_, until)| now >= *until);
            if lapsed {
                s.igd = None;
            } else if let Some((i, until)) = s.igd.as_mut() {
                i.renew_at = (now + RETRY_UNAVAILABLE).min(*until);
            }
        }
    }
}

/// Searches the LAN for the router's Internet Gateway Device; its port-mapping service's
/// control URL and type.
fn upnp_find(gw: Ipv4Addr) -> Result<(Url, &'static str), String> {
    let sock = std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        .map_err(|e| format!("no socket: {e}"))?;
    // With an exit in use, the search keeps the main table (its default route leads to the
    // router in front of us), as the daemon's own socket does.
    use std::os::fd::AsFd;
    crate::exit::mark_own(sock.as_fd()).map_err(|e| format!("marking the search: {e}"))?;
    let deadline = Instant::now() + UPNP_TIMEOUT;
    let mut buf = [0u8; 2048];
    let mut sent = 0;
    let location = loop {
        if sent < 2 {
            sock.send_to(upnp::SEARCH, upnp::SSDP_ADDR)
                .map_err(|e| format!("search: {e}"))?;
            sent += 1;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no answer to the SSDP search".into());
        }
        let _ = sock.set_read_timeout(Some(left.min(Duration::from_secs(1))));
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        // Only the router's answer (anyone on the LAN can answer a search).
        match upnp::parse_search_reply(&buf[..n]) {
            Ok(url) if from.ip() == std::net::IpAddr::V4(gw) && *url.host.ip() == gw => break url,
            Ok(url) => log::debug!(
                "port mapping: SSDP answer from {from} ({}) ignored",
                url.host
            ),
            Err(e) => log::debug!("port mapping: SSDP answer from {from}: {e}"),
        }
    };
    let (status, desc) = http(&location, &upnp::get(&location))?;
    if status != 200 {
        return Err(format!("description: HTTP {status}"));
    }
    upnp::control_url(&desc, &location).map_err(|e| format!("description: {e}"))
}

/// Maps UDP `port` of `client` at external port `ext` (another one if that is taken); the
/// mapping with the router's external address.
fn upnp_map(
    ctl: &Url,
    service: &'static str,
    client: Ipv4Addr,
    port: u16,
    ext: u16,
) -> Result<Mapping, String> {
    let soap = |req: Vec<u8>, want: Option<&str>| -> Result<Soap, String> {
        let (status, body) = http(ctl, &req)?;
        upnp::parse_soap(status, &body, want).map_err(|e| format!("{e}"))
    };
    let (mut ext, mut lease) = (ext, LIFETIME);
    let mut tries = 0;
    loop {
        tries += 1;
        match soap(
            upnp::add_port_mapping(ctl, service, ext, client, port, lease),
            None,
        )? {
            Soap::Ok(_) => break,
            Soap::Fault(upnp::ONLY_PERMANENT) if lease != 0 && tries < 4 => lease = 0,
            Soap::Fault(upnp::CONFLICT) if tries < 4 => {
                let mut r = [0u8; 2];
                shadowmesh_crypto::random_bytes(&mut r);
                ext = 1024 + u16::from_be_bytes(r) % (u16::MAX - 1024);
            }
            Soap::Fault(code) => return Err(format!("AddPortMapping refused: error {code}")),
        }
    }
    let ip = match soap(
        upnp::get_external_ip(ctl, service),
        Some("NewExternalIPAddress"),
    )? {
        Soap::Ok(Some(ip)) => ip
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("external address {ip:?}"))?,
        Soap::Ok(None) | Soap::Fault(_) => return Err("no external address".into()),
    };
    // Behind another NAT (a carrier's, 100.64.0.0/10) the mapping reaches no one outside.
    let shared_space = ip.octets()[0] == 100 && ip.octets()[1] & 0xc0 == 64;
    if ip.is_unspecified() || ip.is_private() || ip.is_loopback() || shared_space {
        return Err(format!("the router's external address {ip} is not public"));
    }
    Ok(Mapping {
        external: SocketAddr::new(ip.into(), ext),
        lifetime: lease,
        protocol: Protocol::Upnp,
    })
}

/// One HTTP exchange with the router: `req` sent to `url`'s host, the answer read until it
/// closes the connection (at most [`upnp::MAX_ANSWER`] bytes), parsed.
fn http(url: &Url, req: &[u8]) -> Result<(u16, Vec<u8>), String> {
    use std::io::{Read, Write};
    let to = SocketAddr::V4(url.host);
    let mut c = std::net::TcpStream::connect_timeout(&to, UPNP_TIMEOUT)
        .map_err(|e| format!("{to}: {e}"))?;
    let _ = c.set_read_timeout(Some(UPNP_TIMEOUT));
    let _ = c.set_write_timeout(Some(UPNP_TIMEOUT));
    c.write_all(req).map_err(|e| format!("{to}: {e}"))?;
    let mut answer = Vec::new();
    c.take(upnp::MAX_ANSWER as u64 + 1)
        .read_to_end(&mut answer)
        .map_err(|e| format!("{to}: {e}"))?;
    upnp::parse_http(&answer).map_err(|e| format!("{to}: {e}"))
}

/// Deletes the mapping we hold, if any.
fn delete(shared: &Shared) {
    let igd = shared.lock().igd.take();
    if let Some((i, _)) = igd {
        let ext = i.mapping.external.port();
        match http(&i.ctl, &upnp::delete_port_mapping(&i.ctl, i.service, ext)) {
            Ok((200, _)) => log::info!("port mapping: deleted at {} (UPnP)", i.ctl.host),
            Ok((status, _)) => log::info!("port mapping: deleting it: HTTP {status}"),
            Err(e) => log::info!("port mapping: deleting it: {e}"),
        }
    }
    let taken = shared.lock().mapper.take();
    let Some((mut m, router)) = taken else {
        return;
    };
    if let Some(d) = m.release() {
        if let Ok(s) = std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))) {
            let _ = s.send_to(&d, router);
            log::info!("port mapping: deleted at {router}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_routes_gateway_is_read_from_the_kernels_table() {
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t0000070A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 eth0\t00000000\t0100070A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(gateway_of(t), Some(Ipv4Addr::new(10, 7, 0, 1)));
        assert_eq!(gateway_of("Iface\n"), None);
        assert_eq!(gateway_of("h\neth0\t00000000\tzz\t0003\n"), None);
        assert_eq!(
            gateway_of("h\neth0\t00000000\t0100070A\t0001\n"),
            None,
            "no RTF_GATEWAY"
        );
    }
}
