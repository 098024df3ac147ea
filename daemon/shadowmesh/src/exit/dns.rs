//! DNS through the exit. The exit answers members on its overlay addresses, port [`PORT`], by
//! passing each query to its own resolver (the first `nameserver` of its `/etc/resolv.conf`:
//! on OpenWrt, its dnsmasq) and the answer back. A gateway that uses the exit sends every DNS
//! query that would leave it (its resolver's upstream queries, its LAN hosts' queries to
//! outside resolvers) to that port instead (nftables DNAT), so that names do not leak to the
//! local ISP's resolver even when that resolver sits on the WAN's own network.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

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

/// Answers members' queries on `addr` (an overlay address of ours) until the daemon ends.
pub async fn serve(addr: SocketAddr) {
    let sock = match tokio::net::UdpSocket::bind(addr).await {
        Ok(s) => Rc::new(s),
        Err(e) => {
            log::error!("exit: DNS for members on {addr}: {e}");
            return;
        }
    };
    log::info!("exit: DNS for members on {addr}");
    let busy = Rc::new(Cell::new(0usize));
    let mut buf = [0u8; dns::MAX_QUERY];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let q = &buf[..n];
        if !dns::is_query(q) || busy.get() >= IN_FLIGHT {
            continue;
        }
        let Some(up) = resolver() else {
            log::warn!("exit: no nameserver in /etc/resolv.conf for members' DNS");
            continue;
        };
        busy.set(busy.get() + 1);
        let (q, sock, busy) = (q.to_vec(), sock.clone(), busy.clone());
        tokio::task::spawn_local(async move {
            if let Some(a) = ask(up, &q).await {
                let _ = sock.send_to(&a, from).await;
            }
            busy.set(busy.get() - 1);
        });
    }
}

/// Query `q` to resolver `up`: its answer, if one came within [`TIMEOUT`].
async fn ask(up: SocketAddr, q: &[u8]) -> Option<Vec<u8>> {
    let any: IpAddr = if up.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let s = tokio::net::UdpSocket::bind(SocketAddr::new(any, 0))
        .await
        .ok()?;
    s.connect(up).await.ok()?;
    s.send(q).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let wait = async {
        loop {
            let n = s.recv(&mut buf).await.ok()?;
            if dns::answers(q, &buf[..n]) {
                return Some(n);
            }
        }
    };
    let n = tokio::time::timeout(TIMEOUT, wait).await.ok()??;
    buf.truncate(n);
    Some(buf)
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
