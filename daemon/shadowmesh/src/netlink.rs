//! The few rtnetlink requests the data plane needs: an IPv6 address on the tunnel, LAN routes
//! through it, and dumps of the host's addresses and routes (what a member may not take over). Written against the kernel ABI (`linux/rtnetlink.h`) in ~150 lines
//! instead of pulling a netlink crate family (and without shelling out to `ip`, which OpenWrt
//! may ship as the cut-down `ip-tiny` or not at all).
//!
//! Each request is one message on a fresh `NETLINK_ROUTE` socket with `NLM_F_ACK`, and the
//! kernel's answer (an `NLMSG_ERROR` carrying 0 or `-errno`) is the result.

use std::io;
use std::net::IpAddr;

use shadowmesh_proto::route::Prefix;

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const NLM_F_REPLACE: u16 = 0x100;
const IFA_LOCAL: u16 = 2;
const IFA_ADDRESS: u16 = 1;
const RT_TABLE_MAIN: u8 = 254;
/// The protocol number our routes carry (`ip route show proto 83`; unassigned in iproute2's
/// `rt_protos`). Routes are created with `NLM_F_EXCL` and deleted with this protocol set, so the
/// daemon never replaces or removes a route it did not create.
pub const RTPROT_SHADOWMESH: u8 = 83;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 3;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const IFA_F_NODAD: u8 = 0x02;

fn family(a: &IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn octets(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn attr(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// A `NETLINK_ROUTE` socket: the only unsafe code of this module, closed on drop.
struct Socket(libc::c_int);

impl Socket {
    /// Opens a socket whose reads give up after one second (a kernel that never answers must
    /// not hang the daemon's one thread).
    fn open() -> io::Result<Socket> {
        // SAFETY: socket(2) and setsockopt(2) with a valid, correctly sized timeval.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let tv = libc::timeval {
                tv_sec: 1,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            Ok(Socket(fd))
        }
    }

    /// Sends one message to the kernel.
    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: `msg` is valid for its length; the address is a zeroed sockaddr_nl (the kernel).
        let n = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.0,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one datagram into `buf`; returns its length.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor and close it once.
        unsafe { libc::close(self.0) };
    }
}

/// Opens a socket that hears the kernel's link announcements (`RTMGRP_LINK`), non-blocking:
/// when the tunnel is set down and up again (netifd does it when the interface is edited or
/// restarted), the kernel removes every route through it and its IPv6 address, and the daemon
/// puts them back. A plain descriptor, so that the runtime watches it with the same
/// `AsyncFd<OwnedFd>` code as the TUN device (one more instantiation costs a router's flash).
pub fn link_events() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    const RTMGRP_LINK: u32 = 1;
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_nl is valid; family and groups are set below.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_groups = RTMGRP_LINK;
    // SAFETY: bind(2) with a valid sockaddr_nl and its size.
    let r = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// Reads every announcement waiting on `fd` (from [`link_events`]); whether interface `index`
/// was announced up in any of them (also when announcements were lost: the socket's buffer
/// overran).
pub fn link_up_announced(fd: &std::os::fd::OwnedFd, index: u32) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    const RTM_NEWLINK: u16 = 16;
    let mut buf = [0u8; 8192];
    let mut up = false;
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(up),
                Some(libc::ENOBUFS) => up = true,
                Some(libc::EINTR) => {}
                _ => return Err(e),
            }
            continue;
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= NLMSG_HDR {
            let len = u32::from_ne_bytes(rest[..4].try_into().expect("4")) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < NLMSG_HDR || len > rest.len() {
                break;
            }
            // ifinfomsg: family, pad, type (u16), index (i32), flags (u32), change (u32).
            let body = &rest[NLMSG_HDR..len];
            if kind == RTM_NEWLINK && body.len() >= 16 {
                let at = u32::from_ne_bytes(body[4..8].try_into().expect("4"));
                let flags = u32::from_ne_bytes(body[8..12].try_into().expect("4"));
                if at == index && flags & libc::IFF_UP as u32 != 0 {
                    up = true;
                }
            }
            rest = &rest[((len + 3) & !3).min(rest.len())..];
        }
    }
}

/// A netlink message: header (`kind`, `flags`, sequence 1, port 0 = the kernel) and `body`.
fn message(kind: u16, flags: u16, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(NLMSG_HDR + body.len());
    msg.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(body);
    msg
}

/// Sends one request (`body` = the family header and attributes) and waits for the ack.
fn request(kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
    let sock = Socket::open()?;
    sock.send(&message(kind, flags | NLM_F_ACK, body))?;
    let mut buf = [0u8; 1024];
    loop {
        let n = sock.recv(&mut buf)?;
        if n < NLMSG_HDR + 4 {
            return Err(io::Error::other("short netlink answer"));
        }
        if u16::from_ne_bytes([buf[4], buf[5]]) != NLMSG_ERROR {
            continue;
        }
        let errno = i32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes"));
        return if errno == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(-errno))
        };
    }
}

fn rtmsg(p: &Prefix, ifindex: u32) -> Vec<u8> {
    let mut b = vec![
        family(&p.addr),
        p.len,
        0, // src_len
        0, // tos
        RT_TABLE_MAIN,
        RTPROT_SHADOWMESH,
        RT_SCOPE_LINK,
        RTN_UNICAST,
    ];
    b.extend_from_slice(&0u32.to_ne_bytes()); // flags
    attr(&mut b, RTA_DST, &octets(&p.addr));
    attr(&mut b, RTA_OIF, &ifindex.to_ne_bytes());
    b
}

/// Routes `p` through interface `ifindex`; fails with `EEXIST` rather than replace a route to
/// the same prefix that someone else made.
pub fn add_route(ifindex: u32, p: &Prefix) -> io::Result<()> {
    request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &rtmsg(p, ifindex))
}

/// Removes our route to `p` through `ifindex` (the kernel matches the protocol too).
pub fn del_route(ifindex: u32, p: &Prefix) -> io::Result<()> {
    request(RTM_DELROUTE, 0, &rtmsg(p, ifindex))
}

/// The default route of `family`'s addresses (`0.0.0.0/0` or `::/0`) through `ifindex` in
/// routing table `table` (ours: no one else's routes live there; one left over is replaced).
pub fn set_table_default(ifindex: u32, v6: bool, table: u32, add: bool) -> io::Result<()> {
    let any: IpAddr = if v6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let mut b = rtmsg(&Prefix { addr: any, len: 0 }, ifindex);
    b[4] = 0; // the table is the attribute's
    attr(&mut b, RTA_TABLE, &table.to_ne_bytes());
    if add {
        request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &b)
    } else {
        request(RTM_DELROUTE, 0, &b)
    }
}

/// A policy routing rule: at priority `pref`, for `v6` or IPv4 packets (to `dst` only, when
/// given), look up `table`; only for packets whose mark is not `not_mark` (when given);
/// ignoring routes of prefix length `suppress` or less (when given: `suppress_prefixlength`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Priority.
    pub pref: u32,
    /// The table looked up.
    pub table: u32,
    /// Only packets without this mark.
    pub not_mark: Option<u32>,
    /// `suppress_prefixlength`.
    pub suppress: Option<u32>,
    /// Only packets to this prefix.
    pub dst: Option<Prefix>,
}

/// Adds `r`, or deletes it (a deletion matches the attributes given: `dst` `None` matches
/// any).
pub fn rule(add: bool, r: &Rule) -> io::Result<()> {
    const RTM_NEWRULE: u16 = 32;
    const RTM_DELRULE: u16 = 33;
    const FRA_DST: u16 = 1;
    const FRA_PRIORITY: u16 = 6;
    const FRA_FWMARK: u16 = 10;
    const FRA_SUPPRESS_PREFIXLEN: u16 = 14;
    const FRA_TABLE: u16 = 15;
    const FRA_FWMASK: u16 = 16;
    const FR_ACT_TO_TBL: u8 = 1;
    const FIB_RULE_INVERT: u32 = 0x2;
    let fam = if r.v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
    let dst_len = r.dst.map_or(0, |d| d.len);
    // fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags.
    let mut b = vec![fam, dst_len, 0, 0, 0, 0, 0, FR_ACT_TO_TBL];
    let flags = if r.not_mark.is_some() {
        FIB_RULE_INVERT
    } else {
        0
    };
    b.extend_from_slice(&flags.to_ne_bytes());
    attr(&mut b, FRA_PRIORITY, &r.pref.to_ne_bytes());
    attr(&mut b, FRA_TABLE, &r.table.to_ne_bytes());
    if let Some(m) = r.not_mark {
        attr(&mut b, FRA_FWMARK, &m.to_ne_bytes());
        attr(&mut b, FRA_FWMASK, &u32::MAX.to_ne_bytes());
    }
    if let Some(n) = r.suppress {
        attr(&mut b, FRA_SUPPRESS_PREFIXLEN, &n.to_ne_bytes());
    }
    if let Some(d) = r.dst {
        attr(&mut b, FRA_DST, &octets(&d.addr));
    }
    if add {
        request(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, &b)
    } else {
        request(RTM_DELRULE, 0, &b)
    }
}

/// Adds `addr/len` to interface `ifindex` (no duplicate address detection: the address is
/// ours by construction).
pub fn add_addr(ifindex: u32, addr: IpAddr, len: u8) -> io::Result<()> {
    match request(
        RTM_NEWADDR,
        NLM_F_CREATE | NLM_F_EXCL,
        &ifaddrmsg(ifindex, addr, len),
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// Removes `addr/len` from interface `ifindex`.
pub fn del_addr(ifindex: u32, addr: IpAddr, len: u8) -> io::Result<()> {
    request(RTM_DELADDR, 0, &ifaddrmsg(ifindex, addr, len))
}

fn ifaddrmsg(ifindex: u32, addr: IpAddr, len: u8) -> Vec<u8> {
    let mut b = vec![family(&addr), len, IFA_F_NODAD, RT_SCOPE_UNIVERSE];
    b.extend_from_slice(&ifindex.to_ne_bytes());
    attr(&mut b, IFA_LOCAL, &octets(&addr));
    attr(&mut b, IFA_ADDRESS, &octets(&addr));
    b
}

/// The IP addresses on the host's interfaces except host-scope ones (loopback) and those of
/// interface `skip_index` (our tunnel), sorted: the daemon compares snapshots to notice that its
/// underlay address changed.
///
/// An `RTM_GETADDR` dump parsed here with every length checked, not libc's `getifaddrs`: musl's
/// spins forever on what qemu-user's netlink translation hands a big-endian mips guest (seen in
/// the HIL run), and a router daemon must not hang on a malformed kernel answer either.
pub fn local_addresses(skip_index: u32) -> io::Result<Vec<IpAddr>> {
    let mut out: Vec<IpAddr> = interface_addresses()?
        .into_iter()
        .filter(|a| a.index != skip_index)
        .map(|a| a.addr)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// An address on one of the host's interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfAddr {
    /// The interface.
    pub index: u32,
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length (the subnet on the link).
    pub len: u8,
}

/// Every address on the host's interfaces except host-scope ones (loopback).
pub fn interface_addresses() -> io::Result<Vec<IfAddr>> {
    const RTM_GETADDR: u16 = 22;
    const RT_SCOPE_HOST: u8 = 254;
    let mut out = Vec::new();
    // ifaddrmsg with family 0: every family.
    dump(RTM_GETADDR, &[0u8; 8], RTM_NEWADDR, |m| {
        parse_addr(m, &mut out)
    })?;
    fn parse_addr(m: &[u8], out: &mut Vec<IfAddr>) {
        if m.len() < 8 {
            return;
        }
        let (family, len, scope) = (m[0], m[1], m[3]);
        let index = u32::from_ne_bytes(m[4..8].try_into().expect("4"));
        if scope == RT_SCOPE_HOST {
            return;
        }
        let mut attrs = &m[8..];
        let mut found = None;
        while attrs.len() >= 4 {
            let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
            let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
            if alen < 4 || alen > attrs.len() {
                return;
            }
            let data = &attrs[4..alen];
            // IFA_LOCAL is the address itself on point-to-point links; prefer it.
            if kind == IFA_LOCAL || (kind == IFA_ADDRESS && found.is_none()) {
                found = match (family as i32, data.len()) {
                    (libc::AF_INET, 4) => Some(IpAddr::V4(std::net::Ipv4Addr::new(
                        data[0], data[1], data[2], data[3],
                    ))),
                    (libc::AF_INET6, 16) => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(data);
                        Some(IpAddr::V6(std::net::Ipv6Addr::from(b)))
                    }
                    _ => found,
                };
            }
            let step = (alen + 3) & !3;
            attrs = &attrs[step.min(attrs.len())..];
        }
        if let Some(addr) = found.filter(|a| !a.is_loopback()) {
            out.push(IfAddr { index, addr, len });
        }
    }
    Ok(out)
}

/// Sends a dump request and hands each answer message of type `kind` (its body, after the
/// netlink header) to `each`, every length checked.
fn dump(request: u16, body: &[u8], kind: u16, mut each: impl FnMut(&[u8])) -> io::Result<()> {
    let sock = Socket::open()?;
    sock.send(&message(request, NLM_F_DUMP, body))?;
    let mut buf = vec![0u8; 16 * 1024];
    // A dump is a few datagrams; a bound keeps a broken answer from looping us.
    for _ in 0..4096 {
        let n = sock.recv(&mut buf)?;
        let mut rest = &buf[..n];
        while rest.len() >= NLMSG_HDR {
            let len = u32::from_ne_bytes(rest[..4].try_into().expect("4")) as usize;
            let k = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < NLMSG_HDR || len > rest.len() {
                return Err(io::Error::other("malformed netlink answer"));
            }
            match k {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => return Err(io::Error::other("netlink dump refused")),
                k if k == kind => each(&rest[NLMSG_HDR..len]),
                _ => {}
            }
            let step = ((len + 3) & !3).min(rest.len());
            rest = &rest[step..];
        }
    }
    Err(io::Error::other("netlink dump did not end"))
}

/// The destinations of every route of the host in every table, except default routes, routes
/// through interface `skip_index` (our tunnel) and routes of our own protocol: the prefixes a
/// member must not take over (connected LANs, the WAN, static and dynamic routes, other VPNs).
pub fn local_routes(skip_index: u32) -> io::Result<Vec<Prefix>> {
    const RTM_GETROUTE: u16 = 26;
    let mut out = Vec::new();
    // rtmsg with family 0: every family, every table.
    dump(RTM_GETROUTE, &[0u8; 12], RTM_NEWROUTE, |m| {
        if let Some(p) = parse_route(m, skip_index) {
            out.push(p);
        }
    })?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// The interfaces default routes leave by (in any table, not ours): the uplinks, where LAN
/// discovery never listens.
pub fn uplinks() -> io::Result<Vec<u32>> {
    const RTM_GETROUTE: u16 = 26;
    let mut out = Vec::new();
    dump(RTM_GETROUTE, &[0u8; 12], RTM_NEWROUTE, |m| {
        if m.len() < 12 || m[1] != 0 || m[5] == RTPROT_SHADOWMESH {
            return;
        }
        let mut attrs = &m[12..];
        while attrs.len() >= 4 {
            let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
            let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
            if len < 4 || len > attrs.len() {
                return;
            }
            if kind == RTA_OIF && len == 8 {
                out.push(u32::from_ne_bytes(attrs[4..8].try_into().expect("4")));
            }
            attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
        }
    })?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn parse_route(m: &[u8], skip_index: u32) -> Option<Prefix> {
    const RTN_MULTICAST: u8 = 5;
    if m.len() < 12 {
        return None;
    }
    let (family, dst_len, protocol, kind) = (m[0], m[1], m[5], m[7]);
    if dst_len == 0 || protocol == RTPROT_SHADOWMESH || kind == RTN_MULTICAST {
        return None;
    }
    let mut attrs = &m[12..];
    let (mut dst, mut oif) = (None, 0u32);
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        let data = &attrs[4..len];
        match (kind, family as i32, data.len()) {
            (RTA_DST, libc::AF_INET, 4) => {
                dst = Some(IpAddr::V4(std::net::Ipv4Addr::new(
                    data[0], data[1], data[2], data[3],
                )))
            }
            (RTA_DST, libc::AF_INET6, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                dst = Some(IpAddr::V6(std::net::Ipv6Addr::from(b)));
            }
            (RTA_OIF, _, 4) => oif = u32::from_ne_bytes(data.try_into().expect("4")),
            _ => {}
        }
        let step = (len + 3) & !3;
        attrs = &attrs[step.min(attrs.len())..];
    }
    if skip_index != 0 && oif == skip_index {
        return None;
    }
    Prefix::new(dst?, dst_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dump agrees with what `ip -o addr` lists (minus host-scope addresses).
    #[test]
    fn local_addresses_match_ip_addr() {
        let Ok(o) = std::process::Command::new("ip")
            .args(["-o", "addr", "show"])
            .output()
        else {
            eprintln!("skipped: no ip(8) here");
            return;
        };
        let mut want: Vec<IpAddr> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.contains("scope host"))
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                w.find(|x| *x == "inet" || *x == "inet6")?;
                w.next()?.split('/').next()?.parse().ok()
            })
            .filter(|a: &IpAddr| !a.is_loopback())
            .collect();
        want.sort();
        want.dedup();
        assert_eq!(local_addresses(0).unwrap(), want);
    }

    /// The dump agrees with what `ip route show table all` lists (minus default and multicast
    /// routes).
    #[test]
    fn local_routes_match_ip_route() {
        let mut want: Vec<Prefix> = Vec::new();
        for fam in ["-4", "-6"] {
            let Ok(o) = std::process::Command::new("ip")
                .args([fam, "route", "show", "table", "all"])
                .output()
            else {
                eprintln!("skipped: no ip(8) here");
                return;
            };
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                let mut w = l.split_whitespace();
                let mut first = w.next().unwrap_or("");
                if [
                    "local",
                    "broadcast",
                    "unreachable",
                    "prohibit",
                    "blackhole",
                    "throw",
                    "anycast",
                    "unicast",
                ]
                .contains(&first)
                {
                    first = w.next().unwrap_or("");
                }
                if first == "default" || l.starts_with("multicast") {
                    continue;
                }
                let (a, len) = match first.split_once('/') {
                    Some((a, l)) => (a, l.parse().unwrap()),
                    None => (first, if fam == "-4" { 32 } else { 128 }),
                };
                if let Some(p) = a.parse().ok().and_then(|a| Prefix::new(a, len)) {
                    want.push(p);
                }
            }
        }
        want.sort();
        want.dedup();
        assert_eq!(local_routes(0).unwrap(), want);
    }
}
