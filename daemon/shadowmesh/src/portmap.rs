//! Keeps our listen port mapped on the router in front of us (`option port_mapping`): the I/O
//! around [`shadowmesh_proto::portmap::PortMapper`]. The router is the IPv4 default route's
//! gateway; a socket of its own sends to its port 5351. The mapped address goes into our
//! record beside the observed ones, and the mapping is deleted when the daemon stops.
//!
//! The mapper runs on a thread of its own with a blocking socket: tokio's socket, timer and
//! `select!` code for it cost 35 KiB of the aarch64 binary. It tells the runtime when the
//! mapping changes.

use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shadowmesh_proto::portmap::{Mapping, PortMapper, SERVER_PORT};

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
        loop {
            let (out, wait) = {
                let mut s = shared.lock();
                let now = s.epoch.elapsed();
                let Some((m, _)) = s.mapper.as_mut() else {
                    return;
                };
                m.handle_timeout(now);
                (m.poll_transmit(), m.poll_timeout().saturating_sub(now))
            };
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

/// Deletes the mapping we hold, if any.
fn delete(shared: &Shared) {
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
