//! Keeps our listen port mapped on the router in front of us (`option port_mapping`): the I/O
//! around [`shadowmesh_proto::portmap::PortMapper`]. The router is the IPv4 default route's
//! gateway; a socket of its own sends to its port 5351. The mapped address goes into our
//! record beside the observed ones, and the mapping is deleted when the daemon stops.

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use shadowmesh_proto::portmap::{Mapping, PortMapper, SERVER_PORT};

use crate::mesh::Mesh;

/// How often the default route is looked at again (a new router, a new uplink).
const ROUTE_CHECK: Duration = Duration::from_secs(60);

/// What `status` shows, and what the way out deletes.
pub struct State {
    /// The mapper and the router it talks to, while there is one.
    mapper: Option<(PortMapper, SocketAddr)>,
    /// Why there is none (no default route, no socket).
    why: &'static str,
}

impl Default for State {
    fn default() -> Self {
        State {
            mapper: None,
            why: "off",
        }
    }
}

impl State {
    /// `state` (`mapped`, `asking`, or why not), and the mapping in force.
    pub fn status(&self, now: Duration) -> (&'static str, Option<Mapping>) {
        match &self.mapper {
            Some((m, _)) => (m.state(now), m.mapping(now)),
            None => (self.why, None),
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
pub async fn keep(mesh: Rc<Mesh>, port: u16, state: Rc<RefCell<State>>) {
    loop {
        let Some(gw) = default_gateway() else {
            state.borrow_mut().why = "no IPv4 default route";
            mesh.set_mapped(None);
            tokio::time::sleep(ROUTE_CHECK).await;
            continue;
        };
        let router = SocketAddr::new(gw.into(), SERVER_PORT);
        let sock = match bind_towards(router).await {
            Ok(s) => s,
            Err(e) => {
                log::debug!("port mapping: no socket towards {router}: {e}");
                state.borrow_mut().why = "no socket towards the router";
                tokio::time::sleep(ROUTE_CHECK).await;
                continue;
            }
        };
        let client = match sock.local_addr().map(|a| a.ip()) {
            Ok(std::net::IpAddr::V4(ip)) => ip,
            _ => {
                tokio::time::sleep(ROUTE_CHECK).await;
                continue;
            }
        };
        let mut nonce = [0u8; 12];
        shadowmesh_crypto::random_bytes(&mut nonce);
        let now = || mesh.uptime();
        state.borrow_mut().mapper = Some((PortMapper::new(client, port, nonce, now()), router));
        let mut last: Option<Mapping> = None;
        let mut buf = [0u8; 1100];
        let route_check = tokio::time::sleep(ROUTE_CHECK);
        tokio::pin!(route_check);
        loop {
            let (out, deadline) = {
                let mut s = state.borrow_mut();
                let Some((m, _)) = s.mapper.as_mut() else {
                    return;
                };
                m.handle_timeout(now());
                (m.poll_transmit(), m.poll_timeout())
            };
            if let Some(d) = out {
                let _ = sock.send(&d).await;
            }
            let mapping = state.borrow().status(now()).1;
            if mapping.map(|m| m.external) != last.map(|m| m.external) {
                match mapping {
                    Some(m) => log::info!(
                        "port mapping: {} forwards to our port {port} ({}, {} s)",
                        m.external,
                        m.protocol.as_str(),
                        m.lifetime
                    ),
                    None => log::info!("port mapping: none ({})", state.borrow().status(now()).0),
                }
                mesh.set_mapped(mapping.map(|m| m.external));
            }
            last = mapping;
            let wait = deadline.saturating_sub(now());
            tokio::select! {
                r = sock.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        let mut s = state.borrow_mut();
                        if let Some((m, _)) = s.mapper.as_mut() {
                            if let Err(e) = m.handle_datagram(now(), from, &buf[..n]) {
                                log::debug!("port mapping: {from}: {e}");
                            }
                        }
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = &mut route_check => {
                    if default_gateway() != Some(gw) {
                        log::info!("port mapping: the default route moved from {gw}");
                        release(&state);
                        break;
                    }
                    route_check.as_mut().reset(tokio::time::Instant::now() + ROUTE_CHECK);
                }
            }
        }
    }
}

async fn bind_towards(router: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let s = tokio::net::UdpSocket::bind(("0.0.0.0", 0)).await?;
    s.connect(router).await?;
    Ok(s)
}

/// Deletes the mapping we hold, if any (on the way out: one datagram, not waited for).
pub fn release(state: &RefCell<State>) {
    let Some((mut m, router)) = state.borrow_mut().mapper.take() else {
        return;
    };
    if let Some(d) = m.release() {
        if let Ok(s) = std::net::UdpSocket::bind(("0.0.0.0", 0)) {
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
