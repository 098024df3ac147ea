//! Our address as others see it, and what kind of NAT (if any) stands between us and them.
//!
//! Every PONG carries the address the answering node saw our request come from. Only nodes at
//! public addresses are asked and heard (one at a private address sits on our side of some
//! NAT). One node's word is not enough (it may lie), so an address counts as observed
//! once nodes in [`QUORUM`] different networks (by [`source_key`]: a /24 or /48 for public
//! addresses) report it within [`FRESH`]. From the same reports comes the NAT's mapping
//! behaviour, as RFC 4787 names it: several networks seeing one port is an
//! endpoint-independent mapping (a hole punched towards one peer works for all), several ports
//! for one address an endpoint-dependent one (a "symmetric" NAT: each peer sees another port).
//!
//! Bounded: one report per reporting network, at most [`REPORTS`] in all, the oldest dropped
//! first. Time is the caller's monotonic clock.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;

use crate::limit::source_key;

/// Reports kept (one per reporting network).
pub const REPORTS: usize = 16;
/// A report older than this no longer counts (a home router's public address changes now and
/// then; this bounds how long an old one is believed).
pub const FRESH: Duration = Duration::from_secs(30 * 60);
/// Reporting networks that must agree before an address counts.
pub const QUORUM: usize = 2;

/// The mapping behaviour between us and the nodes that reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NatClass {
    /// Not enough reports yet.
    #[default]
    Unknown,
    /// They see our own address and port: no NAT.
    None,
    /// One public address and port for every remote address (full cone, address- or
    /// port-restricted): a hole punched towards one peer works for all.
    EndpointIndependent,
    /// Another port per remote address ("symmetric"): only a relay or port prediction helps.
    EndpointDependent,
}

impl NatClass {
    /// The name `status` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            NatClass::Unknown => "unknown",
            NatClass::None => "none",
            NatClass::EndpointIndependent => "endpoint-independent",
            NatClass::EndpointDependent => "endpoint-dependent",
        }
    }
}

/// An address someone could send to, of the reporter's family.
/// A relay's circuit (a local address in 240.0.0.0/8) shows neither side's public address.
fn usable(reporter: SocketAddr, observed: SocketAddr) -> bool {
    let ip = observed.ip();
    !crate::relay::is_mapped(reporter)
        && !crate::relay::is_mapped(observed)
        && observed.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && ip.is_ipv4() == reporter.is_ipv4()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Report {
    at: Duration,
    /// The reporter's network ([`source_key`]).
    network: SocketAddr,
    /// The reporter itself.
    reporter: SocketAddr,
    observed: SocketAddr,
}

/// What the nodes we asked saw of us.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    reports: Vec<Report>,
}

impl Observed {
    /// Nothing reported yet.
    pub fn new() -> Observed {
        Observed::default()
    }

    /// The node at `reporter` saw us at `observed` at `now`. An address nobody could send to
    /// (unspecified, multicast, port 0) or one of another family than the reporter's is
    /// ignored. Returns whether the set of observed addresses changed.
    pub fn report(&mut self, now: Duration, reporter: SocketAddr, observed: SocketAddr) -> bool {
        if !usable(reporter, observed) {
            return false;
        }
        let before = self.addresses(now);
        let network = source_key(reporter);
        self.reports.retain(|r| r.network != network);
        if self.reports.len() >= REPORTS {
            if let Some(i) = (0..self.reports.len()).min_by_key(|&i| self.reports[i].at) {
                self.reports.remove(i);
            }
        }
        self.reports.push(Report {
            at: now,
            network,
            reporter,
            observed,
        });
        self.addresses(now) != before
    }

    /// Whether `reporter`, which saw us at another address within [`FRESH`], now sees us at
    /// `observed`: our address moved (or the reporter lies, which one network cannot make
    /// count: [`QUORUM`]). The same node for a new port: behind a NAT that maps each
    /// destination to its own port, two nodes of one network see two ports. Any node of the
    /// same network for a new IP address: a NAT gives all of one network the same address, so
    /// a node that restarted on another port, or dials from one a symmetric NAT picks, still
    /// tells that ours changed. Returns where it was seen before.
    pub fn moved(
        &self,
        now: Duration,
        reporter: SocketAddr,
        observed: SocketAddr,
    ) -> Option<SocketAddr> {
        if !usable(reporter, observed) {
            return None;
        }
        let network = source_key(reporter);
        self.fresh(now)
            .find(|r| {
                (r.reporter == reporter && r.observed != observed)
                    || (r.network == network && r.observed.ip() != observed.ip())
            })
            .map(|r| r.observed)
    }

    /// Forgets every report of `addr` (we left it: those who saw us there are asked again).
    pub fn forget(&mut self, addr: SocketAddr) {
        self.reports.retain(|r| r.observed != addr);
    }

    fn fresh(&self, now: Duration) -> impl Iterator<Item = &Report> {
        self.reports
            .iter()
            .filter(move |r| now.saturating_sub(r.at) < FRESH)
    }

    /// The addresses that nodes in at least [`QUORUM`] networks saw us at, most reported
    /// first (then by address, so the order is stable).
    pub fn addresses(&self, now: Duration) -> Vec<SocketAddr> {
        let mut counted: Vec<(SocketAddr, usize)> = Vec::new();
        for r in self.fresh(now) {
            match counted.iter_mut().find(|(a, _)| *a == r.observed) {
                Some((_, n)) => *n += 1,
                None => counted.push((r.observed, 1)),
            }
        }
        counted.retain(|(_, n)| *n >= QUORUM);
        counted.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        counted.into_iter().map(|(a, _)| a).collect()
    }

    /// The NAT between us and the IPv4 nodes that reported (IPv6 if none did), given that we
    /// send from port `local_port` on `local` addresses.
    pub fn class(&self, now: Duration, local_port: u16, local: &[IpAddr]) -> NatClass {
        let v4 = self.fresh(now).any(|r| r.observed.is_ipv4());
        let reports: Vec<&Report> = self
            .fresh(now)
            .filter(|r| r.observed.is_ipv4() == v4)
            .collect();
        // The public address most networks agree on, and the ports they saw on it.
        let mut best: Option<(IpAddr, usize)> = None;
        for r in &reports {
            let ip = r.observed.ip();
            let n = reports.iter().filter(|o| o.observed.ip() == ip).count();
            if best.is_none_or(|(b, m)| n > m || (n == m && ip < b)) {
                best = Some((ip, n));
            }
        }
        let Some((ip, n)) = best.filter(|&(_, n)| n >= QUORUM) else {
            return NatClass::Unknown;
        };
        let mut ports: Vec<u16> = reports
            .iter()
            .filter(|r| r.observed.ip() == ip)
            .map(|r| r.observed.port())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        let top = ports
            .iter()
            .map(|p| {
                let c = reports
                    .iter()
                    .filter(|r| r.observed == SocketAddr::new(ip, *p));
                (c.count(), *p)
            })
            .max();
        match top {
            Some((m, p)) if m >= QUORUM && p == local_port && local.contains(&ip) => NatClass::None,
            Some((m, _)) if m >= QUORUM && m * 2 > n => NatClass::EndpointIndependent,
            _ if ports.len() >= QUORUM => NatClass::EndpointDependent,
            _ => NatClass::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_network_is_not_enough_and_two_agreeing_are() {
        let mut o = Observed::new();
        assert!(!o.report(S(1), a("198.51.100.7:4433"), a("203.0.113.5:40000")));
        // A second node in the same /24 is the same witness.
        assert!(!o.report(S(2), a("198.51.100.9:4433"), a("203.0.113.5:40000")));
        assert!(o.addresses(S(2)).is_empty());
        assert_eq!(o.class(S(2), 4433, &[]), NatClass::Unknown);
        assert!(o.report(S(3), a("192.0.2.1:4433"), a("203.0.113.5:40000")));
        assert_eq!(o.addresses(S(3)), [a("203.0.113.5:40000")]);
        let local = ["10.0.0.2".parse().unwrap()];
        assert_eq!(o.class(S(3), 4433, &local), NatClass::EndpointIndependent);
        // Reports age out.
        assert!(o.addresses(S(3) + FRESH).is_empty());
    }

    #[test]
    fn a_network_that_saw_us_elsewhere_says_we_moved() {
        let mut o = Observed::new();
        let (seed, other) = (a("198.51.100.7:4433"), a("192.0.2.1:4433"));
        let old = a("203.0.113.5:4433");
        assert_eq!(o.moved(S(1), seed, old), None, "nothing seen yet");
        o.report(S(1), seed, old);
        o.report(S(1), other, old);
        assert_eq!(o.moved(S(2), seed, old), None);
        let new = a("203.0.113.9:4433");
        assert_eq!(o.moved(S(2), seed, new), Some(old));
        assert_eq!(
            o.moved(S(2), a("198.51.100.9:4433"), a("203.0.113.5:4500")),
            None,
            "another node of the seed's network sees another port (a symmetric NAT)"
        );
        assert_eq!(
            o.moved(S(2), a("198.51.100.9:4433"), new),
            Some(old),
            "another node of the seed's network sees another address"
        );
        assert_eq!(
            o.moved(S(2), seed, a("203.0.113.9:0")),
            None,
            "not an address"
        );
        assert_eq!(
            o.moved(S(2), a("198.51.100.7:5000"), new),
            Some(old),
            "the seed again, restarted on another port: a new address all the same"
        );
        assert_eq!(o.moved(S(2), a("198.18.0.1:1"), new), None, "a new network");
        assert_eq!(o.moved(S(2) + FRESH, seed, new), None, "aged out");
        // A circuit's local address is nobody's public one.
        assert!(!o.report(S(2), a("240.0.0.1:1"), new));
        assert!(!o.report(S(2), seed, a("240.0.0.1:1")));
        o.forget(old);
        assert!(o.addresses(S(2)).is_empty());
    }

    #[test]
    fn our_own_address_means_no_nat() {
        let mut o = Observed::new();
        o.report(S(1), a("198.51.100.7:4433"), a("203.0.113.5:4433"));
        o.report(S(1), a("192.0.2.1:4433"), a("203.0.113.5:4433"));
        let local = ["203.0.113.5".parse().unwrap()];
        assert_eq!(o.class(S(1), 4433, &local), NatClass::None);
        // The same address and port from behind a NAT that kept the port.
        assert_eq!(
            o.class(S(1), 4433, &["10.0.0.2".parse().unwrap()]),
            NatClass::EndpointIndependent
        );
    }

    #[test]
    fn a_port_per_peer_is_endpoint_dependent() {
        let mut o = Observed::new();
        o.report(S(1), a("198.51.100.7:4433"), a("203.0.113.5:50001"));
        o.report(S(1), a("192.0.2.1:4433"), a("203.0.113.5:50002"));
        o.report(S(1), a("100.64.9.9:4433"), a("203.0.113.5:50003"));
        assert!(o.addresses(S(1)).is_empty(), "no port seen twice");
        assert_eq!(o.class(S(1), 4433, &[]), NatClass::EndpointDependent);
    }

    #[test]
    fn a_liar_is_outvoted_and_a_changed_address_takes_over() {
        let mut o = Observed::new();
        o.report(S(1), a("198.51.100.7:4433"), a("203.0.113.5:4433"));
        o.report(S(1), a("192.0.2.1:4433"), a("203.0.113.5:4433"));
        o.report(S(1), a("192.0.3.1:4433"), a("203.0.113.5:4433"));
        assert!(!o.report(S(2), a("192.0.4.1:4433"), a("198.18.0.1:1")));
        assert_eq!(o.addresses(S(2)), [a("203.0.113.5:4433")]);
        assert_eq!(o.class(S(2), 4433, &[]), NatClass::EndpointIndependent);
        // The ISP gives us a new address: as each network sees it, its report is replaced.
        o.report(S(60), a("198.51.100.7:4433"), a("203.0.113.99:4433"));
        assert!(o.report(S(61), a("192.0.2.1:4433"), a("203.0.113.99:4433")));
        o.report(S(62), a("192.0.3.1:4433"), a("203.0.113.99:4433"));
        assert_eq!(o.addresses(S(62))[0], a("203.0.113.99:4433"));
        assert_eq!(o.addresses(S(62)).len(), 1);
    }

    #[test]
    fn bounded_and_nonsense_ignored() {
        let mut o = Observed::new();
        for i in 0..100u8 {
            o.report(
                S(i as u64),
                SocketAddr::from(([192, 0, i, 1], 1)),
                a("203.0.113.5:1"),
            );
        }
        assert_eq!(o.reports.len(), REPORTS);
        assert!(o.reports.iter().all(|r| r.at >= S(100 - REPORTS as u64)));
        for bad in [
            "0.0.0.0:5",
            "224.0.0.1:5",
            "203.0.113.5:0",
            "[2001:db8::1]:5",
        ] {
            assert!(!o.report(S(200), a("198.51.100.7:1"), a(bad)), "{bad}");
        }
    }
}
