//! The few rtnetlink requests the data plane needs: an IPv6 address on the tunnel and LAN
//! routes through it. Written against the kernel ABI (`linux/rtnetlink.h`) in ~150 lines
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
const NLM_F_REPLACE: u16 = 0x100;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWADDR: u16 = 20;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const IFA_LOCAL: u16 = 2;
const IFA_ADDRESS: u16 = 1;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
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
        RTPROT_STATIC,
        RT_SCOPE_LINK,
        RTN_UNICAST,
    ];
    b.extend_from_slice(&0u32.to_ne_bytes()); // flags
    attr(&mut b, RTA_DST, &octets(&p.addr));
    attr(&mut b, RTA_OIF, &ifindex.to_ne_bytes());
    b
}

/// Routes `p` through interface `ifindex` (replacing a route to the same prefix).
pub fn add_route(ifindex: u32, p: &Prefix) -> io::Result<()> {
    request(
        RTM_NEWROUTE,
        NLM_F_CREATE | NLM_F_REPLACE,
        &rtmsg(p, ifindex),
    )
}

/// Removes the route to `p` through `ifindex`.
pub fn del_route(ifindex: u32, p: &Prefix) -> io::Result<()> {
    request(RTM_DELROUTE, 0, &rtmsg(p, ifindex))
}

/// Adds `addr/len` to interface `ifindex` (no duplicate address detection: the address is
/// ours by construction).
pub fn add_addr(ifindex: u32, addr: IpAddr, len: u8) -> io::Result<()> {
    let mut b = vec![family(&addr), len, IFA_F_NODAD, RT_SCOPE_UNIVERSE];
    b.extend_from_slice(&ifindex.to_ne_bytes());
    attr(&mut b, IFA_LOCAL, &octets(&addr));
    attr(&mut b, IFA_ADDRESS, &octets(&addr));
    match request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &b) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// The IP addresses on the host's interfaces except host-scope ones (loopback) and those of
/// interface `skip_index` (our tunnel), sorted: the daemon compares snapshots to notice that its
/// underlay address changed.
///
/// An `RTM_GETADDR` dump parsed here with every length checked, not libc's `getifaddrs`: musl's
/// spins forever on what qemu-user's netlink translation hands a big-endian mips guest (seen in
/// the HIL run), and a router daemon must not hang on a malformed kernel answer either.
pub fn local_addresses(skip_index: u32) -> io::Result<Vec<IpAddr>> {
    const NLM_F_DUMP: u16 = 0x300;
    const RTM_GETADDR: u16 = 22;
    const NLMSG_DONE: u16 = 3;
    const RT_SCOPE_HOST: u8 = 254;
    let sock = Socket::open()?;
    // ifaddrmsg with family 0: every family.
    sock.send(&message(RTM_GETADDR, NLM_F_DUMP, &[0u8; 8]))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    // A dump is a few datagrams; a bound keeps a broken answer from looping us.
    let mut done = false;
    'dump: for _ in 0..256 {
        let n = sock.recv(&mut buf)?;
        let mut rest = &buf[..n];
        while rest.len() >= NLMSG_HDR {
            let len = u32::from_ne_bytes(rest[..4].try_into().expect("4")) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < NLMSG_HDR || len > rest.len() {
                return Err(io::Error::other("malformed netlink answer"));
            }
            match kind {
                NLMSG_DONE => {
                    done = true;
                    break 'dump;
                }
                NLMSG_ERROR => return Err(io::Error::other("netlink dump refused")),
                RTM_NEWADDR => parse_addr(&rest[NLMSG_HDR..len], skip_index, &mut out),
                _ => {}
            }
            let step = ((len + 3) & !3).min(rest.len());
            rest = &rest[step..];
        }
    }
    if !done {
        return Err(io::Error::other("netlink dump did not end"));
    }
    fn parse_addr(m: &[u8], skip_index: u32, out: &mut Vec<IpAddr>) {
        if m.len() < 8 {
            return;
        }
        let (family, scope) = (m[0], m[3]);
        let index = u32::from_ne_bytes(m[4..8].try_into().expect("4"));
        if scope == RT_SCOPE_HOST || index == skip_index {
            return;
        }
        let mut attrs = &m[8..];
        let mut found = None;
        while attrs.len() >= 4 {
            let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
            let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
            if len < 4 || len > attrs.len() {
                return;
            }
            let data = &attrs[4..len];
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
            let step = (len + 3) & !3;
            attrs = &attrs[step.min(attrs.len())..];
        }
        if let Some(a) = found.filter(|a| !a.is_loopback()) {
            out.push(a);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
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
}
