//! DNS through the exit. The exit answers members on its overlay addresses, port [`PORT`], by
//! passing each query to its own resolver (the first `nameserver` of its `/etc/resolv.conf`:
//! on OpenWrt, its dnsmasq) and the answer back. A gateway that uses the exit sends every DNS
//! query that would leave it (its resolver's upstream queries, its LAN hosts' queries to
//! outside resolvers) to that port instead (nftables DNAT), so that names do not leak to the
//! local ISP's resolver even when that resolver sits on the WAN's own network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use shadowmesh_proto::dns;

/// The exit's DNS port on its overlay addresses (not 53: the router's own resolver may bind
/// every address's 53).
pub const PORT: u16 = 5300;
/// Queries passed on at once, at most (more are dropped; the asker retries).
const IN_FLIGHT: usize = 64;
/// How long the resolver may take to answer.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The resolver the exit asks: the first `nameserver` of `/etc/resolv.conf`.
fn resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    resolver_of(&text)
}

fn resolver_of(text: &str) -> Option<SocketAddr> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next()? == "nameserver")
            .then(|| w.next()?.parse::<IpAddr>().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// One query passed on and not answered yet.
struct Pending {
    /// The id it carries to the resolver (ours, unique among those pending).
    id: u16,
    /// The member's id, put back into the answer.
    theirs: [u8; 2],
    /// Who asked, and on which of our sockets.
    from: SocketAddr,
    on: usize,
    at: Instant,
}

/// Answers members' queries on `addrs` (our overlay addresses) on a thread of its own, until
/// the process ends: blocking sockets and `poll`, as the port mapper does (tokio's socket and
/// timer futures for it cost the aarch64 binary 19 KiB).
pub fn spawn(addrs: Vec<SocketAddr>) {
    let mut socks = Vec::new();
    for a in &addrs {
        match UdpSocket::bind(a) {
            Ok(s) => {
                log::info!("exit: DNS for members on {a}");
                socks.push(s);
            }
            Err(e) => log::error!("exit: DNS for members on {a}: {e}"),
        }
    }
    if socks.is_empty() {
        return;
    }
    let up = [
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok(),
        UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).ok(),
    ];
    let spawned = std::thread::Builder::new()
        .name("exit-dns".into())
        .spawn(move || run(&socks, &up));
    if let Err(e) = spawned {
        log::error!("exit: DNS for members: no thread: {e}");
    }
}

fn run(socks: &[UdpSocket], up: &[Option<UdpSocket>; 2]) {
    use std::os::fd::AsRawFd;
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .chain(up.iter().flatten())
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ups: Vec<&UdpSocket> = up.iter().flatten().collect();
    let mut pending: Vec<Pending> = Vec::new();
    let mut next: u16 = std::process::id() as u16;
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: poll on descriptors of sockets that outlive the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        pending.retain(|p| p.at.elapsed() < TIMEOUT);
        if n <= 0 {
            continue;
        }
        for (i, f) in fds.iter().enumerate() {
            if f.revents & libc::POLLIN == 0 {
                continue;
            }
            if i < socks.len() {
                let Ok((len, from)) = socks[i].recv_from(&mut buf) else {
                    continue;
                };
                let q = &mut buf[..len];
                let Some(to) = resolver().filter(|_| dns::is_query(q)) else {
                    continue;
                };
                let via = ups
                    .iter()
                    .find(|u| u.local_addr().is_ok_and(|l| l.is_ipv4() == to.is_ipv4()));
                if pending.len() >= IN_FLIGHT {
                    continue;
                }
                let Some(via) = via else { continue };
                next = next.wrapping_add(1);
                let theirs = [q[0], q[1]];
                q[..2].copy_from_slice(&next.to_be_bytes());
                if via.send_to(q, to).is_ok() {
                    pending.push(Pending {
                        id: next,
                        theirs,
                        from,
                        on: i,
                        at: Instant::now(),
                    });
                }
            } else {
                let Ok((len, _)) = ups[i - socks.len()].recv_from(&mut buf) else {
                    continue;
                };
                let a = &mut buf[..len];
                if !dns::is_response(a) {
                    continue;
                }
                let id = u16::from_be_bytes([a[0], a[1]]);
                if let Some(k) = pending.iter().position(|p| p.id == id) {
                    let p = pending.swap_remove(k);
                    a[..2].copy_from_slice(&p.theirs);
                    let _ = socks[p.on].send_to(a, p.from);
                }
            }
        }
    }
}

/// The nftables table that sends a gateway's DNS to exit `v4`/`v6` (its overlay addresses):
/// queries leaving the host (its resolver's upstream ones), and queries its LAN hosts send
/// to resolvers outside, to [`PORT`] there; the daemon's own marked socket and loopback stay.
/// TCP to port 53 outside is refused, so that no query falls back to it past the exit.
pub fn redirect_rules(
    table: &str,
    tunnel: &str,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
) -> String {
    let mut out = String::new();
    let mut pre = String::new();
    // A query redirected on its way out kept the source address of the route it was leaving
    // by; the exit takes it only from our tunnel address.
    let mut post = String::new();
    if let Some(a) = v4 {
        post += &format!("\t\toifname \"{tunnel}\" ip daddr {a} udp dport {PORT} masquerade\n");
    }
    if let Some(a) = v6 {
        post += &format!("\t\toifname \"{tunnel}\" ip6 daddr {a} udp dport {PORT} masquerade\n");
    }
    if let Some(a) = v4 {
        out += &format!("\t\tmeta nfproto ipv4 ip daddr != 127.0.0.0/8 ip daddr != {a} udp dport 53 dnat ip to {a}:{PORT}\n");
        pre += &format!("\t\tmeta nfproto ipv4 udp dport 53 dnat ip to {a}:{PORT}\n");
    }
    if let Some(a) = v6 {
        out += &format!("\t\tmeta nfproto ipv6 ip6 daddr != ::1 ip6 daddr != {a} udp dport 53 dnat ip6 to [{a}]:{PORT}\n");
        pre += &format!("\t\tmeta nfproto ipv6 udp dport 53 dnat ip6 to [{a}]:{PORT}\n");
    }
    format!(
        "table inet {table} {{\n\
         \tchain out {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\tmeta mark {mark:#x} return\n{out}\t}}\n\
         \tchain pre {{\n\t\ttype nat hook prerouting priority -100; policy accept;\n\t\tiifname \"{tunnel}\" return\n\t\tfib daddr type local return\n{pre}\t}}\n\
         \tchain post {{\n\t\ttype nat hook postrouting priority 100; policy accept;\n{post}\t}}\n\
         \tchain tcp53 {{\n\t\ttype filter hook output priority filter; policy accept;\n\t\tmeta mark {mark:#x} return\n\t\toifname \"lo\" return\n\t\ttcp dport 53 reject with tcp reset\n\t}}\n\
         }}\n",
        mark = super::FWMARK
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resolver_is_the_first_nameserver() {
        let t = "# generated\nsearch lan\nnameserver 127.0.0.1\nnameserver ::1\n";
        assert_eq!(resolver_of(t), Some("127.0.0.1:53".parse().unwrap()));
        assert_eq!(
            resolver_of("nameserver fd00::1\n"),
            Some("[fd00::1]:53".parse().unwrap())
        );
        assert_eq!(resolver_of("nameserver bogus\n"), None);
        assert_eq!(resolver_of(""), None);
    }

    #[test]
    fn queries_leaving_go_to_the_exit() {
        let r = redirect_rules(
            "t",
            "smesh0",
            Some("10.100.1.2".parse().unwrap()),
            Some("fd00::2".parse().unwrap()),
        );
        assert!(r.contains("udp dport 53 dnat ip to 10.100.1.2:5300"));
        assert!(r.contains("dnat ip6 to [fd00::2]:5300"));
        assert!(r.contains("meta mark 0x736d return"));
        assert!(r.contains("fib daddr type local return"));
        assert!(r.contains("oifname \"smesh0\" ip daddr 10.100.1.2 udp dport 5300 masquerade"));
    }
}
