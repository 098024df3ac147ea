//! Which of a member's advertised prefixes this gateway installs (DESIGN.md, "Routing a LAN").
//!
//! A prefix in a member's record is a request, not a command, as WireGuard's AllowedIPs and
//! ZeroTier's allowManaged/allowGlobal/allowDefault treat it. A prefix is refused when it is a
//! default route (exit nodes are an explicit choice elsewhere), when it is not a unicast range
//! that could be a LAN (loopback, link-local, multicast, unspecified, broadcast), when it
//! overlaps the overlay, any address or route of this host (its LANs, its WAN, the underlay
//! paths to members), our own advertised routes or a prefix another member already holds, and,
//! when the operator narrowed it, when it lies outside every `list accept_route`.
//!
//! Sans-IO: the caller reads the host's addresses and routes and passes them in.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::route::{Prefix, RouteTable};
use crate::PeerId;

/// Why a member's prefix was not installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `option accept_routes '0'`.
    Disabled,
    /// `0.0.0.0/0` or `::/0`.
    Default,
    /// Loopback, link-local, multicast, unspecified or broadcast space.
    NotUnicast,
    /// Overlaps the mesh's overlay prefix.
    Overlay(Prefix),
    /// Overlaps an address or route of this host.
    Local(Prefix),
    /// Overlaps a route this gateway advertises itself.
    Own(Prefix),
    /// Overlaps a prefix another member holds.
    Held(Prefix, PeerId),
    /// Outside every `list accept_route`.
    NotAccepted,
    /// The route table is full.
    Full,
    /// An overlay address its PeerId does not derive.
    Claim,
    /// An overlay address its PeerId derives only after rehashing past one that was free to it.
    Rehash,
}

impl Refusal {
    /// A short machine-readable reason (`peers --json`).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Disabled => "disabled",
            Refusal::Default => "default",
            Refusal::NotUnicast => "not_unicast",
            Refusal::Overlay(_) => "overlay",
            Refusal::Local(_) => "local",
            Refusal::Own(_) => "own",
            Refusal::Held(..) => "held",
            Refusal::NotAccepted => "not_accepted",
            Refusal::Full => "full",
            Refusal::Claim => "claim",
            Refusal::Rehash => "rehash",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Disabled => write!(f, "option accept_routes is 0"),
            Refusal::Default => write!(f, "a default route is not a LAN"),
            Refusal::NotUnicast => write!(f, "not a unicast range"),
            Refusal::Overlay(p) => write!(f, "overlaps the overlay {p}"),
            Refusal::Local(p) => write!(f, "overlaps this host's {p}"),
            Refusal::Own(p) => write!(f, "overlaps our own route {p}"),
            Refusal::Held(p, o) => write!(f, "overlaps {p} of member {}", o.short()),
            Refusal::NotAccepted => write!(f, "outside every accept_route"),
            Refusal::Full => write!(f, "route table full"),
            Refusal::Claim => write!(f, "not an overlay address its PeerId derives"),
            Refusal::Rehash => write!(f, "rehashed past an overlay address free to it"),
        }
    }
}

/// Space that is never a LAN behind a gateway: "this network", loopback, link-local,
/// multicast, reserved and broadcast IPv4; unspecified, loopback, IPv4-mapped, link-local and
/// multicast IPv6.
const NOT_UNICAST: [(IpAddr, u8); 9] = [
    (IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)), 8),
    (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
    (IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16),
    (IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 3),
    (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128),
    (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
    (IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0)), 96),
    (IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10),
    (IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)), 8),
];

/// Whether `p` overlaps space that can never be a LAN behind a gateway.
pub fn not_unicast(p: &Prefix) -> bool {
    NOT_UNICAST
        .iter()
        .any(|&(addr, len)| p.overlaps(&Prefix { addr, len }))
}

/// Whether an address learnt from a peer (a record, a peer list, a DHT contact) may be dialled:
/// never port 0, unspecified, multicast or broadcast addresses, and loopback only by a node that
/// itself listens on loopback (a test or single-host mesh). Anything else would let a peer point
/// our handshakes at a victim or at services on this host.
pub fn dialable(addr: std::net::SocketAddr, loopback_ok: bool) -> bool {
    let ip = addr.ip();
    let v4_bad = |a: Ipv4Addr| a.is_broadcast() || a.octets()[0] == 0 || a.octets()[0] >= 224;
    let bad = match ip {
        IpAddr::V4(a) => v4_bad(a),
        IpAddr::V6(a) => {
            a.is_unspecified()
                || a.is_multicast()
                || a.to_ipv4_mapped()
                    .is_some_and(|m| v4_bad(m) || m.is_loopback())
        }
    };
    addr.port() != 0 && !bad && (loopback_ok || !ip.is_loopback())
}

/// What this gateway accepts from members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    /// `false`: no member prefix is installed (`option accept_routes '0'`).
    pub accept_routes: bool,
    /// If not empty, accepted prefixes must lie inside one of these (`list accept_route`).
    pub accept: Vec<Prefix>,
    /// The overlay prefixes (IPv4 and IPv6).
    pub overlay: Vec<Prefix>,
    /// The routes we advertise.
    pub own: Vec<Prefix>,
    /// This host's addresses (as host prefixes), its routes other than through the tunnel and
    /// other than default routes, and the underlay addresses of members and seeds.
    pub local: Vec<Prefix>,
}

impl RoutePolicy {
    /// Judges member `owner`'s prefix `p` against the policy and the prefixes other members
    /// hold in `held` (overlay host addresses included).
    pub fn judge(
        &self,
        p: Prefix,
        owner: PeerId,
        held: &RouteTable<PeerId>,
    ) -> Result<(), Refusal> {
        if !self.accept_routes {
            return Err(Refusal::Disabled);
        }
        if p.len == 0 {
            return Err(Refusal::Default);
        }
        if not_unicast(&p) {
            return Err(Refusal::NotUnicast);
        }
        let hit = |list: &[Prefix]| list.iter().find(|q| q.overlaps(&p)).copied();
        if let Some(q) = hit(&self.overlay) {
            return Err(Refusal::Overlay(q));
        }
        if let Some(q) = hit(&self.own) {
            return Err(Refusal::Own(q));
        }
        if let Some(q) = hit(&self.local) {
            return Err(Refusal::Local(q));
        }
        if !self.accept.is_empty()
            && !self.accept.iter().any(|a| {
                a.addr.is_ipv4() == p.addr.is_ipv4() && a.len <= p.len && a.contains(p.addr)
            })
        {
            return Err(Refusal::NotAccepted);
        }
        if let Some((q, other)) = held.overlapping(p, owner) {
            return Err(Refusal::Held(q, other));
        }
        Ok(())
    }

    /// Why this gateway may not advertise `p` itself (checked at start and on reload), if it
    /// may not: a default route, non-unicast space or the overlay.
    pub fn refuse_own(&self, p: Prefix) -> Option<Refusal> {
        if p.len == 0 {
            return Some(Refusal::Default);
        }
        if not_unicast(&p) {
            return Some(Refusal::NotUnicast);
        }
        self.overlay
            .iter()
            .find(|q| q.overlaps(&p))
            .map(|q| Refusal::Overlay(*q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        let (a, l) = s.split_once('/').unwrap();
        Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
    }

    fn id(b: u8) -> PeerId {
        PeerId([b; 32])
    }

    fn policy() -> RoutePolicy {
        RoutePolicy {
            accept_routes: true,
            accept: vec![],
            overlay: vec![p("10.100.0.0/16"), p("fd12:3456:789a::/48")],
            own: vec![p("192.168.2.0/24")],
            local: vec![
                p("192.168.1.0/24"),
                p("192.168.1.1/32"),
                p("10.250.0.0/24"),
                p("203.0.113.7/32"),
            ],
        }
    }

    #[test]
    fn refuses_what_is_not_a_member_lan() {
        let pol = policy();
        let held = RouteTable::new(16);
        let j = |s: &str| pol.judge(p(s), id(1), &held);
        assert_eq!(j("0.0.0.0/0"), Err(Refusal::Default));
        assert_eq!(j("::/0"), Err(Refusal::Default));
        assert_eq!(j("127.0.0.0/8"), Err(Refusal::NotUnicast));
        assert_eq!(j("0.0.0.0/8"), Err(Refusal::NotUnicast));
        assert_eq!(j("224.0.0.0/4"), Err(Refusal::NotUnicast));
        assert_eq!(j("255.255.255.255/32"), Err(Refusal::NotUnicast));
        assert_eq!(j("169.254.0.0/16"), Err(Refusal::NotUnicast));
        assert_eq!(j("fe80::/64"), Err(Refusal::NotUnicast));
        assert_eq!(j("ff02::/16"), Err(Refusal::NotUnicast));
        assert_eq!(j("::1/128"), Err(Refusal::NotUnicast));
        assert_eq!(j("::ffff:192.168.9.0/120"), Err(Refusal::NotUnicast));
        // A /1 covering loopback is not a LAN either.
        assert_eq!(j("0.0.0.0/1"), Err(Refusal::NotUnicast));
        assert_eq!(
            j("10.100.7.0/24"),
            Err(Refusal::Overlay(p("10.100.0.0/16")))
        );
        assert_eq!(j("10.0.0.0/8"), Err(Refusal::Overlay(p("10.100.0.0/16"))));
        assert_eq!(
            j("fd12:3456:789a:1::/64"),
            Err(Refusal::Overlay(p("fd12:3456:789a::/48")))
        );
        assert_eq!(
            j("fd00::/8"),
            Err(Refusal::Overlay(p("fd12:3456:789a::/48")))
        );
        assert_eq!(
            j("192.168.1.0/24"),
            Err(Refusal::Local(p("192.168.1.0/24")))
        );
        assert_eq!(
            j("192.168.1.0/25"),
            Err(Refusal::Local(p("192.168.1.0/24")))
        );
        assert_eq!(j("192.168.0.0/16"), Err(Refusal::Own(p("192.168.2.0/24"))));
        assert_eq!(
            j("192.168.2.128/25"),
            Err(Refusal::Own(p("192.168.2.0/24")))
        );
        assert_eq!(
            j("203.0.112.0/23"),
            Err(Refusal::Local(p("203.0.113.7/32")))
        );
        assert_eq!(j("192.168.3.0/24"), Ok(()));
        assert_eq!(j("fd99::/64"), Ok(()));
    }

    #[test]
    fn another_members_prefix_is_not_shared_or_cut() {
        let pol = policy();
        let mut held = RouteTable::new(16);
        held.insert(p("192.168.3.0/24"), id(2)).unwrap();
        held.insert(p("10.100.1.2/32"), id(2)).unwrap();
        held.insert(p("172.16.5.0/25"), id(3)).unwrap();
        let j = |s: &str, o: u8| pol.judge(p(s), id(o), &held);
        let taken = Err(Refusal::Held(p("192.168.3.0/24"), id(2)));
        assert_eq!(j("192.168.3.0/24", 1), taken);
        assert_eq!(j("192.168.3.0/25", 1), taken);
        assert_eq!(j("192.168.3.128/25", 1), taken);
        assert_eq!(j("192.168.3.7/32", 1), taken);
        assert_eq!(
            j("172.16.4.0/22", 1),
            Err(Refusal::Held(p("172.16.5.0/25"), id(3)))
        );
        assert_eq!(j("192.168.4.0/24", 1), Ok(()));
        // Its own prefixes do not count against it.
        assert_eq!(j("192.168.3.0/24", 2), Ok(()));
    }

    #[test]
    fn accept_route_narrows_and_accept_routes_off_refuses_all() {
        let mut pol = policy();
        pol.accept = vec![p("192.168.0.0/16"), p("fd99::/16")];
        let held = RouteTable::new(16);
        assert_eq!(pol.judge(p("192.168.7.0/24"), id(1), &held), Ok(()));
        assert_eq!(pol.judge(p("fd99:1::/64"), id(1), &held), Ok(()));
        assert_eq!(
            pol.judge(p("172.16.0.0/24"), id(1), &held),
            Err(Refusal::NotAccepted)
        );
        // Wider than the accepted prefix: refused.
        assert_eq!(
            pol.judge(p("fd98::/15"), id(1), &held),
            Err(Refusal::NotAccepted)
        );
        pol.accept_routes = false;
        assert_eq!(
            pol.judge(p("192.168.7.0/24"), id(1), &held),
            Err(Refusal::Disabled)
        );
    }

    #[test]
    fn dials_only_where_a_peer_can_be() {
        let d = |s: &str, lo: bool| dialable(s.parse().unwrap(), lo);
        assert!(d("192.0.2.7:4433", false));
        assert!(d("[2001:db8::7]:4433", false));
        assert!(d("10.250.0.1:4433", false));
        for bad in [
            "0.0.0.0:4433",
            "255.255.255.255:4433",
            "224.0.0.251:5353",
            "239.1.2.3:4433",
            "240.0.0.1:4433",
            "[::]:4433",
            "[ff02::1]:4433",
            "[::ffff:127.0.0.1]:22",
            "[::ffff:255.255.255.255]:4433",
            "192.0.2.7:0",
        ] {
            assert!(!d(bad, false), "{bad}");
            assert!(!d(bad, true), "{bad}");
        }
        assert!(!d("127.0.0.1:22", false));
        assert!(!d("[::1]:4433", false));
        assert!(d("127.0.0.1:4433", true));
    }

    #[test]
    fn own_routes_checked_at_start() {
        let pol = policy();
        assert_eq!(pol.refuse_own(p("0.0.0.0/0")), Some(Refusal::Default));
        assert_eq!(
            pol.refuse_own(p("10.100.0.0/24")),
            Some(Refusal::Overlay(p("10.100.0.0/16")))
        );
        assert_eq!(pol.refuse_own(p("127.0.0.0/8")), Some(Refusal::NotUnicast));
        assert_eq!(pol.refuse_own(p("192.168.1.0/24")), None);
    }
}
