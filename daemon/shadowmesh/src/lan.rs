//! LAN discovery (`option lan_discovery`): announcements multicast on the LAN segments
//! ([`shadowmesh_proto::discovery`]), and a dial to each gateway of our mesh heard there.
//!
//! Announcements go out on the address family the QUIC socket listens on, since that is the
//! family a neighbour can dial us on: IPv4 link-local multicast (224.0.0.167, TTL 1) for the
//! default `listen_address '0.0.0.0'`, IPv6 link-local multicast (ff02::736d) for an IPv6
//! listener. The neighbour is dialled at the address its announcement came from and the port it
//! names, like a bootstrap node; a link found this way is on the LAN, and a link on the LAN is
//! kept over any other to the same member ([`shadowmesh_link::members::Link::on_lan`]).
//!
//! Interfaces: `list discovery_interface`, by default `br-lan` where it exists (OpenWrt's LAN
//! bridge), else those holding an address inside one of our `list route` prefixes. An
//! interface that a default route leaves by (an uplink) is never used, named or not.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::Duration;

use shadowmesh_crypto::NetworkKey;
use shadowmesh_proto::dht::wire::Contact;
use shadowmesh_proto::discovery::{
    self, Announce, Discovery, ANNOUNCE_LEN, GROUP_V4, GROUP_V6, PORT,
};
use shadowmesh_proto::route::Prefix;
use shadowmesh_proto::PeerId;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::mesh::Mesh;
use crate::netlink::{self, IfAddr};

/// An interface announced on: its index, name and (IPv4) address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Iface {
    index: u32,
    name: String,
    /// Its addresses of the family in use, with their subnets.
    addrs: Vec<IfAddr>,
}

fn index_of(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: if_nametoindex reads a NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// The interfaces to use: those named, or the default ones; never an uplink, never the tunnel.
fn interfaces(named: &[String], routes: &[Prefix], v6: bool, tunnel: u32) -> Vec<Iface> {
    let all = netlink::interface_addresses().unwrap_or_default();
    let uplinks = netlink::uplinks().unwrap_or_default();
    let of_family = |index: u32| -> Vec<IfAddr> {
        all.iter()
            .filter(|a| a.index == index && a.addr.is_ipv6() == v6)
            .copied()
            .collect()
    };
    let mut names: Vec<String> = named.to_vec();
    if names.is_empty() {
        if index_of("br-lan") != 0 {
            names.push("br-lan".into());
        } else {
            let mut idx: Vec<u32> = all
                .iter()
                .filter(|a| routes.iter().any(|p| p.contains(a.addr)))
                .map(|a| a.index)
                .collect();
            idx.sort_unstable();
            idx.dedup();
            for i in idx {
                let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
                // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into `buf`.
                let p = unsafe { libc::if_indextoname(i, buf.as_mut_ptr()) };
                if !p.is_null() {
                    // SAFETY: on success `buf` holds a NUL-terminated name.
                    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
                    names.push(name.to_string_lossy().into_owned());
                }
            }
        }
    }
    let mut out = Vec::new();
    for name in names {
        let index = index_of(&name);
        if index == 0 {
            log::warn!("LAN discovery: no interface {name}");
            continue;
        }
        if index == tunnel {
            continue;
        }
        if uplinks.contains(&index) {
            log::warn!("LAN discovery: {name} holds a default route (an uplink): not used");
            continue;
        }
        let addrs = of_family(index);
        if addrs.is_empty() {
            log::warn!(
                "LAN discovery: {name} has no {} address",
                if v6 { "IPv6" } else { "IPv4" }
            );
            continue;
        }
        out.push(Iface { index, name, addrs });
    }
    out
}

/// Whether `addr` is on one of this host's links (a subnet of an interface other than
/// `skip`, or IPv6 link-local): a member there is on our LAN.
#[inline(never)]
pub fn on_link(addr: SocketAddr, skip: u32) -> bool {
    let ip = match addr.ip() {
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => IpAddr::V4(a.to_ipv4_mapped().unwrap()),
        ip => ip,
    };
    if let IpAddr::V6(a) = ip {
        if a.segments()[0] & 0xffc0 == 0xfe80 {
            return true;
        }
    }
    if shadowmesh_proto::relay::is_mapped(addr) || ip.is_loopback() {
        return false;
    }
    netlink::interface_addresses()
        .unwrap_or_default()
        .iter()
        .filter(|a| {
            a.index != skip && a.addr != ip && a.len < if a.addr.is_ipv4() { 32 } else { 128 }
        })
        .any(|a| Prefix::new(a.addr, a.len).is_some_and(|p| p.contains(ip)))
}

/// A UDP socket on [`PORT`] of the family, joined to the group on each interface.
fn socket(v6: bool, ifaces: &[Iface]) -> io::Result<UdpSocket> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: socket(2) with constant arguments; the descriptor is owned by the UdpSocket.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let set = |level, name, v: &libc::c_int| {
        // SAFETY: setsockopt with a pointer to a c_int and its size; the socket is open.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                level,
                name,
                (v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // Another daemon on this host (a second mesh) may listen too.
    set(libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)?;
    if v6 {
        set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &one)?;
    }
    let bind: SocketAddr = if v6 {
        (std::net::Ipv6Addr::UNSPECIFIED, PORT).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, PORT).into()
    };
    let (addr, len) = sockaddr(bind);
    // SAFETY: bind with a sockaddr of the given length, valid for the call.
    if unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_storage).cast(),
            len,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    for i in ifaces {
        let joined = if v6 {
            sock.join_multicast_v6(&GROUP_V6, i.index)
        } else {
            match i.addrs[0].addr {
                IpAddr::V4(a) => sock.join_multicast_v4(&GROUP_V4, &a),
                IpAddr::V6(_) => continue,
            }
        };
        if let Err(e) = joined {
            log::warn!("LAN discovery: joining the group on {}: {e}", i.name);
        }
    }
    if v6 {
        sock.set_multicast_loop_v6(false)?;
    } else {
        sock.set_multicast_loop_v4(false)?;
        sock.set_multicast_ttl_v4(1)?;
    }
    Ok(sock)
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all zeroes is a valid sockaddr_storage.
    let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut s as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            unsafe { std::ptr::write((&mut s as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (s, len as libc::socklen_t)
}

/// Sends `b` to the group out of interface `i`.
fn send(sock: &UdpSocket, v6: bool, i: &Iface, b: &[u8]) -> io::Result<()> {
    if v6 {
        sock.send_to(b, SocketAddrV6::new(GROUP_V6, PORT, 0, i.index))?;
    } else {
        let mreq = libc::ip_mreqn {
            imr_multiaddr: libc::in_addr { s_addr: 0 },
            imr_address: libc::in_addr { s_addr: 0 },
            imr_ifindex: i.index as libc::c_int,
        };
        // SAFETY: setsockopt with a pointer to an ip_mreqn and its size; the socket is open.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                (&mreq as *const libc::ip_mreqn).cast(),
                std::mem::size_of::<libc::ip_mreqn>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        sock.send_to(b, (GROUP_V4, PORT))?;
    }
    Ok(())
}

/// Whether `from` is on interface `i`'s link.
fn from_link(i: &Iface, from: SocketAddr) -> bool {
    match from {
        SocketAddr::V6(a) => a.scope_id() == i.index && a.ip().segments()[0] & 0xffc0 == 0xfe80,
        SocketAddr::V4(a) => i.addrs.iter().any(|x| {
            x.addr != IpAddr::V4(*a.ip())
                && Prefix::new(x.addr, x.len).is_some_and(|p| p.contains(IpAddr::V4(*a.ip())))
        }),
    }
}

/// Starts LAN discovery for the mesh of `nk` on the tokio thread. Returns whether it runs
/// (no usable interface, or no socket, is logged and leaves the rest of the daemon as it is).
pub fn start(
    mesh: &Rc<Mesh>,
    nk: NetworkKey,
    named: &[String],
    routes: &[Prefix],
    tunnel: u32,
) -> bool {
    let Ok(listen) = mesh.node().local_addr() else {
        return false;
    };
    let v6 = listen.is_ipv6();
    let ifaces = interfaces(named, routes, v6, tunnel);
    if ifaces.is_empty() {
        log::info!("LAN discovery: no LAN interface to announce on (list discovery_interface)");
        return false;
    }
    let sock = match socket(v6, &ifaces) {
        Ok(s) => s,
        Err(e) => {
            log::error!("LAN discovery: UDP port {PORT}: {e}");
            return false;
        }
    };
    // SAFETY: the socket owns its descriptor, which stays open while registered (the AsyncFd
    // owns the socket and deregisters before dropping it).
    let fd = match unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            log::error!("LAN discovery: {e}");
            return false;
        }
    };
    let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
    log::info!(
        "LAN discovery on {} ({}, port {PORT})",
        names.join(", "),
        if v6 {
            "IPv6 ff02::736d"
        } else {
            "IPv4 224.0.0.167"
        }
    );
    let state = Rc::new(std::cell::RefCell::new(Discovery::new(
        mesh.node().peer_id(),
        crate::mono_now(),
    )));
    *mesh.lan.borrow_mut() = Some(state.clone());
    tokio::task::spawn_local(run(mesh.clone(), nk, fd, ifaces, v6, listen.port(), state));
    true
}

/// Datagrams read per wake-up at most.
const BATCH: usize = 64;

async fn run(
    mesh: Rc<Mesh>,
    nk: NetworkKey,
    fd: AsyncFd<UdpSocket>,
    ifaces: Vec<Iface>,
    v6: bool,
    port: u16,
    state: Rc<std::cell::RefCell<Discovery>>,
) {
    let me: PeerId = mesh.node().peer_id();
    let mut buf = [0u8; 512];
    loop {
        let now = crate::mono_now();
        if state.borrow_mut().poll_announce(now) {
            let window = discovery::window(crate::unix_now());
            for i in &ifaces {
                // Sealed anew for each: no two announcements share a nonce or a tag.
                let b =
                    shadowmesh_crypto::discovery::seal(&nk, window, &Announce { peer: me, port });
                if let Err(e) = send(fd.get_ref(), v6, i, &b) {
                    log::debug!("LAN discovery: announcing on {}: {e}", i.name);
                }
            }
        }
        let wait = state
            .borrow()
            .poll_timeout()
            .saturating_sub(crate::mono_now());
        let ready = tokio::select! {
            r = fd.readable() => r,
            _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => continue,
        };
        let Ok(mut guard) = ready else {
            return;
        };
        // What is queued, then wait again; at most a batch at a time, so that a flood does
        // not keep the thread from its other tasks (tokio's budget makes the next wait yield).
        for _ in 0..BATCH {
            let Ok(Ok((n, from))) = guard.try_io(|s| s.get_ref().recv_from(&mut buf)) else {
                break;
            };
            let now = crate::mono_now();
            let Some(_) = ifaces.iter().find(|i| from_link(i, from)) else {
                continue;
            };
            if n != ANNOUNCE_LEN || !state.borrow_mut().admit(now) {
                continue;
            }
            let window = discovery::window(crate::unix_now());
            let a = match shadowmesh_crypto::discovery::open(&nk, window, &buf[..n]) {
                Ok(a) => a,
                Err(_) => {
                    state.borrow_mut().foreign();
                    continue;
                }
            };
            let on_lan = mesh.dataplane().is_some_and(|dp| dp.linked_on_lan(&a.peer));
            let dial = state.borrow_mut().heard(now, a, from, on_lan);
            if let Some(addr) = dial {
                log::info!("LAN discovery: {} at {addr}", a.peer.short());
                let to = Contact {
                    id: a.peer,
                    ed25519: [0; 32],
                    addr,
                };
                mesh.add_contact(to);
                let m = mesh.clone();
                tokio::task::spawn_local(async move {
                    if let Err(e) = m.dial_new(to).await {
                        log::info!("LAN discovery: dialling {} at {addr}: {e}", to.id.short());
                    }
                });
            }
        }
    }
}
