//! Port mapping on the router in front of us, sans-IO: a gateway behind a home router asks it
//! to forward the listen port from outside, with PCP (RFC 6887, `MAP`) and, where the router
//! speaks only its predecessor, NAT-PMP (RFC 6886). A mapped port is an address other members
//! can dial whatever the router's filtering, so two gateways that could only meet through a
//! relay go direct.
//!
//! [`PortMapper`] says what to send to the router's port 5351 and when, takes what comes
//! back, renews the mapping at half its lifetime and deletes it on request. Routers that speak
//! neither are asked over UPnP IGD, whose messages [`upnp`] builds and parses. Time is the
//! caller's monotonic clock. Every answer is parsed into a typed error when it is not one we
//! asked for; nothing here panics on bad input.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::time::Duration;

use crate::error::Error;

pub mod upnp;

/// The port PCP and NAT-PMP servers listen on (and answer from).
pub const SERVER_PORT: u16 = 5351;
/// The lifetime asked for: two hours, renewed at half of whatever the router grants.
pub const LIFETIME: u32 = 7200;
/// Tries per protocol before the next one (RFC 6886 tries 9 times over 64 s; a router that
/// speaks it answers the first within a few milliseconds).
pub const TRIES: u8 = 4;
/// The first retransmission timeout, doubled each try.
pub const FIRST_TIMEOUT: Duration = Duration::from_millis(250);
/// How soon to ask again after no protocol answered or the router refused.
pub const RETRY_UNAVAILABLE: Duration = Duration::from_secs(300);
/// The shortest lifetime we take: a shorter one is renewed as if it were this.
pub const MIN_LIFETIME: u32 = 120;

const PCP_VERSION: u8 = 2;
const PCP_OP_MAP: u8 = 1;
const PCP_REQ_LEN: usize = 60;
const PMP_OP_ADDR: u8 = 0;
const PMP_OP_MAP_UDP: u8 = 1;
const UDP: u8 = 17;
/// PCP's and NAT-PMP's result code for "not this version".
const UNSUPP_VERSION: u16 = 1;

/// The protocol a mapping came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Port Control Protocol.
    Pcp,
    /// NAT Port Mapping Protocol.
    NatPmp,
    /// UPnP IGD (the caller's, [`upnp`]).
    Upnp,
}

impl Protocol {
    /// The name `status` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Pcp => "pcp",
            Protocol::NatPmp => "nat-pmp",
            Protocol::Upnp => "upnp",
        }
    }
}

/// A mapping the router granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Where others reach our listen port.
    pub external: SocketAddr,
    /// Seconds the router keeps it.
    pub lifetime: u32,
    /// How it was asked for.
    pub protocol: Protocol,
}

/// An answer from the router, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// PCP `MAP`: result code, lifetime, nonce, internal port, the external address.
    PcpMap {
        /// 0: success.
        result: u8,
        /// Seconds granted.
        lifetime: u32,
        /// The request's nonce, echoed.
        nonce: [u8; 12],
        /// The internal port the mapping is for.
        internal: u16,
        /// The external address and port assigned.
        external: SocketAddr,
    },
    /// NAT-PMP's external address: result code and the router's public IPv4 address.
    PmpAddr {
        /// 0: success.
        result: u16,
        /// The router's public address.
        external: Ipv4Addr,
    },
    /// NAT-PMP's UDP mapping: result code, internal and external port, lifetime.
    PmpMap {
        /// 0: success.
        result: u16,
        /// The internal port the mapping is for.
        internal: u16,
        /// The external port assigned.
        external: u16,
        /// Seconds granted.
        lifetime: u32,
    },
    /// A server that does not speak the version asked (a NAT-PMP server answering PCP, or
    /// either answering a version it does not know).
    UnsupportedVersion,
}

fn ip_to_16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn ip_from_16(b: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// A PCP `MAP` request for UDP port `internal` of `client` (our address towards the router),
/// asking for `suggested` outside (unspecified: any) for `lifetime` seconds (0: delete).
pub fn pcp_map(
    nonce: [u8; 12],
    client: IpAddr,
    internal: u16,
    suggested: SocketAddr,
    lifetime: u32,
) -> [u8; PCP_REQ_LEN] {
    let mut b = [0u8; PCP_REQ_LEN];
    b[0] = PCP_VERSION;
    b[1] = PCP_OP_MAP;
    b[4..8].copy_from_slice(&lifetime.to_be_bytes());
    b[8..24].copy_from_slice(&ip_to_16(client));
    b[24..36].copy_from_slice(&nonce);
    b[36] = UDP;
    b[40..42].copy_from_slice(&internal.to_be_bytes());
    b[42..44].copy_from_slice(&suggested.port().to_be_bytes());
    b[44..60].copy_from_slice(&ip_to_16(suggested.ip()));
    b
}

/// NAT-PMP's request for the router's public address.
pub fn pmp_addr() -> [u8; 2] {
    [0, PMP_OP_ADDR]
}

/// A NAT-PMP UDP mapping request for `internal`, asking for port `suggested` outside, for
/// `lifetime` seconds (0, with `suggested` 0: delete).
pub fn pmp_map(internal: u16, suggested: u16, lifetime: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[1] = PMP_OP_MAP_UDP;
    b[4..6].copy_from_slice(&internal.to_be_bytes());
    b[6..8].copy_from_slice(&suggested.to_be_bytes());
    b[8..12].copy_from_slice(&lifetime.to_be_bytes());
    b
}

fn need(buf: &[u8], n: usize) -> Result<(), Error> {
    if buf.len() < n {
        return Err(Error::Truncated {
            need: n,
            got: buf.len(),
        });
    }
    Ok(())
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Parses an answer from a PCP or NAT-PMP server (a request, or anything else, is an error).
pub fn parse(buf: &[u8]) -> Result<Answer, Error> {
    need(buf, 2)?;
    match buf[0] {
        PCP_VERSION => {
            need(buf, 4)?;
            if buf[1] & 0x80 == 0 {
                return Err(Error::InvalidField("PCP request, not an answer"));
            }
            let result = buf[3];
            if result == UNSUPP_VERSION as u8 {
                return Ok(Answer::UnsupportedVersion);
            }
            if buf[1] & 0x7f != PCP_OP_MAP {
                return Err(Error::InvalidField("PCP opcode"));
            }
            // Options may follow the MAP body; they are not ours to read.
            need(buf, PCP_REQ_LEN)?;
            if buf[36] != UDP {
                return Err(Error::InvalidField("PCP protocol"));
            }
            let mut nonce = [0u8; 12];
            nonce.copy_from_slice(&buf[24..36]);
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&buf[44..60]);
            Ok(Answer::PcpMap {
                result,
                lifetime: u32_at(buf, 4),
                nonce,
                internal: u16_at(buf, 40),
                external: SocketAddr::new(ip_from_16(ip), u16_at(buf, 42)),
            })
        }
        0 => {
            need(buf, 4)?;
            let result = u16_at(buf, 2);
            if result == UNSUPP_VERSION {
                return Ok(Answer::UnsupportedVersion);
            }
            match buf[1] {
                0x80 => {
                    need(buf, 12)?;
                    Ok(Answer::PmpAddr {
                        result,
                        external: Ipv4Addr::new(buf[8], buf[9], buf[10], buf[11]),
                    })
                }
                0x81 => {
                    need(buf, 16)?;
                    Ok(Answer::PmpMap {
                        result,
                        internal: u16_at(buf, 8),
                        external: u16_at(buf, 10),
                        lifetime: u32_at(buf, 12),
                    })
                }
                _ => Err(Error::InvalidField("NAT-PMP opcode")),
            }
        }
        v => Err(Error::UnsupportedVersion(v as u16)),
    }
}

/// What the mapper is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Asking with PCP.
    Pcp,
    /// Asking NAT-PMP for the public address, then for the mapping.
    PmpAddr,
    PmpMap(Ipv4Addr),
    /// Mapped; renewing at the deadline.
    Mapped,
    /// Nothing answered, or the router refused: asking again at the deadline.
    Unavailable,
}

/// Keeps our listen port mapped on the router (see the module's text).
#[derive(Debug, Clone)]
pub struct PortMapper {
    client: Ipv4Addr,
    port: u16,
    nonce: [u8; 12],
    step: Step,
    tries: u8,
    /// When to send (again), renew, or ask again.
    deadline: Duration,
    /// A datagram is due now.
    due: bool,
    mapping: Option<(Mapping, Duration)>,
    /// Why nothing is mapped (for `status`).
    why: &'static str,
}

impl PortMapper {
    /// Maps UDP `port` of `client` (our address towards the router) from `now`, with a fresh
    /// random `nonce` (it ties PCP's answers to our requests).
    pub fn new(client: Ipv4Addr, port: u16, nonce: [u8; 12], now: Duration) -> PortMapper {
        PortMapper {
            client,
            port,
            nonce,
            step: Step::Pcp,
            tries: 0,
            deadline: now,
            due: true,
            mapping: None,
            why: "asking",
        }
    }

    /// The mapping in force at `now`, if any.
    pub fn mapping(&self, now: Duration) -> Option<Mapping> {
        self.mapping
            .filter(|(_, until)| now < *until)
            .map(|(m, _)| m)
    }

    /// Whether it asked with both protocols and holds nothing (it asks again after
    /// [`RETRY_UNAVAILABLE`]): time to try another way, such as UPnP IGD.
    pub fn gave_up(&self) -> bool {
        self.step == Step::Unavailable && self.mapping.is_none()
    }

    /// What it is doing, for `status`: `mapped`, `asking`, or why nothing is mapped.
    pub fn state(&self, now: Duration) -> &'static str {
        if self.mapping(now).is_some() {
            "mapped"
        } else {
            self.why
        }
    }

    /// When [`PortMapper::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Duration {
        self.deadline
    }

    /// The datagram to send to the router's [`SERVER_PORT`] now, if one is due.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if !std::mem::take(&mut self.due) {
            return None;
        }
        let suggested = self.mapping.map(|(m, _)| m.external);
        // A renewal asks with the protocol that granted the mapping.
        let renewing = self.mapping.map(|(m, _)| m.protocol);
        Some(match (self.step, renewing) {
            (Step::Pcp, _) | (Step::Mapped, Some(Protocol::Pcp)) => {
                let s = suggested.unwrap_or(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
                pcp_map(self.nonce, self.client.into(), self.port, s, LIFETIME).to_vec()
            }
            (Step::PmpAddr, _) => pmp_addr().to_vec(),
            (Step::PmpMap(_) | Step::Mapped, _) => {
                pmp_map(self.port, suggested.map_or(0, |s| s.port()), LIFETIME).to_vec()
            }
            (Step::Unavailable, _) => return None,
        })
    }

    fn send_at(&mut self, now: Duration) {
        self.due = true;
        self.deadline = now + FIRST_TIMEOUT * (1u32 << self.tries.min(6));
        self.tries += 1;
    }

    fn start(&mut self, step: Step, now: Duration) {
        self.step = step;
        self.tries = 0;
        self.send_at(now);
    }

    fn unavailable(&mut self, now: Duration, why: &'static str) {
        self.step = Step::Unavailable;
        self.why = why;
        self.tries = 0;
        self.deadline = now + RETRY_UNAVAILABLE;
    }

    /// Retransmits, moves to the next protocol, renews or asks again, as `now` says.
    pub fn handle_timeout(&mut self, now: Duration) {
        if now < self.deadline {
            return;
        }
        match self.step {
            Step::Unavailable => self.start(Step::Pcp, now),
            Step::Mapped if self.tries == 0 => self.send_at(now),
            _ if self.tries < TRIES => self.send_at(now),
            // A renewal nobody answered: the mapping lapses at its end; ask afresh then.
            Step::Mapped => {
                let until = self.mapping.map_or(now, |(_, u)| u);
                self.step = Step::Unavailable;
                self.why = "renewal unanswered";
                self.tries = 0;
                self.deadline = until.max(now);
            }
            Step::Pcp => self.start(Step::PmpAddr, now),
            Step::PmpAddr | Step::PmpMap(_) => {
                self.unavailable(now, "no PCP or NAT-PMP answer from the router")
            }
        }
    }

    /// A datagram from `from` arrived at `now` on the socket we send from. Only the router's
    /// [`SERVER_PORT`] is heard (the caller sends only to the router).
    pub fn handle_datagram(
        &mut self,
        now: Duration,
        from: SocketAddr,
        buf: &[u8],
    ) -> Result<(), Error> {
        if from.port() != SERVER_PORT {
            return Err(Error::InvalidField("not from the PCP/NAT-PMP port"));
        }
        let renewing = self.step == Step::Mapped && self.tries > 0;
        match (parse(buf)?, self.step) {
            (Answer::UnsupportedVersion, Step::Pcp) => self.start(Step::PmpAddr, now),
            (Answer::UnsupportedVersion, Step::Mapped) if renewing => {
                self.start(Step::PmpAddr, now)
            }
            (
                Answer::PcpMap {
                    result,
                    lifetime,
                    nonce,
                    internal,
                    external,
                },
                Step::Pcp | Step::Mapped,
            ) if nonce == self.nonce && internal == self.port => {
                if result != 0 {
                    self.unavailable(now, "the router refused the mapping");
                } else {
                    self.mapped(now, external, lifetime, Protocol::Pcp);
                }
            }
            (Answer::PmpAddr { result, external }, Step::PmpAddr) => {
                if result != 0 || external.is_unspecified() {
                    self.unavailable(now, "the router has no public address");
                } else {
                    self.start(Step::PmpMap(external), now);
                }
            }
            (
                Answer::PmpMap {
                    result,
                    internal,
                    external,
                    lifetime,
                },
                Step::PmpMap(_) | Step::Mapped,
            ) if internal == self.port => {
                let ip = match self.step {
                    Step::PmpMap(ip) => Some(ip),
                    _ => self.mapping.and_then(|(m, _)| match m.external.ip() {
                        IpAddr::V4(ip) => Some(ip),
                        IpAddr::V6(_) => None,
                    }),
                };
                match ip {
                    Some(ip) if result == 0 && external != 0 => {
                        let ext = SocketAddr::new(ip.into(), external);
                        self.mapped(now, ext, lifetime, Protocol::NatPmp)
                    }
                    _ => self.unavailable(now, "the router refused the mapping"),
                }
            }
            _ => return Err(Error::InvalidField("an answer to nothing we asked")),
        }
        Ok(())
    }

    fn mapped(&mut self, now: Duration, external: SocketAddr, lifetime: u32, p: Protocol) {
        if lifetime == 0 || external.port() == 0 || external.ip().is_unspecified() {
            self.unavailable(now, "the router refused the mapping");
            return;
        }
        let until = now + Duration::from_secs(lifetime.into());
        self.mapping = Some((
            Mapping {
                external,
                lifetime,
                protocol: p,
            },
            until,
        ));
        self.step = Step::Mapped;
        self.tries = 0;
        self.due = false;
        self.deadline = now + Duration::from_secs((lifetime.max(MIN_LIFETIME) / 2).into());
    }

    /// The request that deletes our mapping (send it once on the way out), if we hold one.
    pub fn release(&mut self) -> Option<Vec<u8>> {
        let (m, _) = self.mapping.take()?;
        self.step = Step::Unavailable;
        Some(match m.protocol {
            Protocol::Pcp => {
                let any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
                pcp_map(self.nonce, self.client.into(), self.port, any, 0).to_vec()
            }
            Protocol::NatPmp => pmp_map(self.port, 0, 0).to_vec(),
            Protocol::Upnp => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const ROUTER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 7, 0, 1)), SERVER_PORT);
    const ME: Ipv4Addr = Ipv4Addr::new(10, 7, 0, 2);

    /// A PCP server's answer to `req`: success, port 40000 on 198.20.7.2, `lifetime`.
    fn pcp_answer(req: &[u8], result: u8, lifetime: u32) -> Vec<u8> {
        let mut a = req.to_vec();
        a[1] |= 0x80;
        a[3] = result;
        a[4..8].copy_from_slice(&lifetime.to_be_bytes());
        a[8..24].fill(0);
        a[42..44].copy_from_slice(&40000u16.to_be_bytes());
        a[44..60].copy_from_slice(&Ipv4Addr::new(198, 20, 7, 2).to_ipv6_mapped().octets());
        a
    }

    #[test]
    fn pcp_maps_and_renews_at_half_the_lifetime() {
        let mut m = PortMapper::new(ME, 4433, [7; 12], MS(0));
        let req = m.poll_transmit().unwrap();
        assert_eq!(req.len(), 60);
        assert_eq!((req[0], req[1], req[36]), (2, 1, 17));
        assert_eq!(u16_at(&req, 40), 4433);
        assert_eq!(&req[8..24], &ME.to_ipv6_mapped().octets());
        assert!(m.poll_transmit().is_none(), "once");
        // An answer from elsewhere, or to another nonce, is not ours.
        let ans = pcp_answer(&req, 0, 600);
        assert!(m
            .handle_datagram(MS(5), "10.7.0.1:9".parse().unwrap(), &ans)
            .is_err());
        let mut other = ans.clone();
        other[24] ^= 1;
        assert!(m.handle_datagram(MS(5), ROUTER, &other).is_err());
        assert_eq!(m.state(MS(5)), "asking");
        m.handle_datagram(MS(5), ROUTER, &ans).unwrap();
        let want = Mapping {
            external: "198.20.7.2:40000".parse().unwrap(),
            lifetime: 600,
            protocol: Protocol::Pcp,
        };
        assert_eq!(m.mapping(MS(5)), Some(want));
        assert_eq!(m.poll_timeout(), MS(5) + Duration::from_secs(300));
        m.handle_timeout(MS(5) + Duration::from_secs(300));
        let renew = m.poll_transmit().unwrap();
        assert_eq!(u16_at(&renew, 42), 40000, "the same port asked for again");
        m.handle_datagram(MS(400_000), ROUTER, &pcp_answer(&renew, 0, 600))
            .unwrap();
        assert_eq!(m.poll_timeout(), MS(400_000) + Duration::from_secs(300));
        // Deleted on the way out: lifetime 0.
        let del = m.release().unwrap();
        assert_eq!(u32_at(&del, 4), 0);
        assert_eq!(m.mapping(MS(400_001)), None);
    }

    #[test]
    fn a_nat_pmp_router_is_asked_its_address_then_the_mapping() {
        let mut m = PortMapper::new(ME, 4433, [7; 12], MS(0));
        let _pcp = m.poll_transmit().unwrap();
        // NAT-PMP's "unsupported version" to a PCP request.
        m.handle_datagram(MS(2), ROUTER, &[0, 0x81, 0, 1, 0, 0, 0, 0])
            .unwrap();
        assert_eq!(m.poll_transmit().unwrap(), pmp_addr());
        let mut addr = [0u8; 12];
        addr[1] = 0x80;
        addr[8..12].copy_from_slice(&[198, 20, 7, 2]);
        m.handle_datagram(MS(4), ROUTER, &addr).unwrap();
        let req = m.poll_transmit().unwrap();
        assert_eq!(req, pmp_map(4433, 0, LIFETIME));
        let mut map = [0u8; 16];
        map[1] = 0x81;
        map[8..10].copy_from_slice(&4433u16.to_be_bytes());
        map[10..12].copy_from_slice(&40001u16.to_be_bytes());
        map[12..16].copy_from_slice(&3600u32.to_be_bytes());
        m.handle_datagram(MS(6), ROUTER, &map).unwrap();
        let got = m.mapping(MS(6)).unwrap();
        assert_eq!(got.external, "198.20.7.2:40001".parse().unwrap());
        assert_eq!(got.protocol, Protocol::NatPmp);
        // Renewed with NAT-PMP; unanswered, the mapping lapses and PCP is asked first again.
        let mut lapse = m.clone();
        let mut now = m.poll_timeout();
        assert_eq!(now, MS(6) + Duration::from_secs(1800));
        for _ in 0..=TRIES {
            lapse.handle_timeout(now);
            if let Some(d) = lapse.poll_transmit() {
                assert_eq!(d[..2], [0, 1], "a NAT-PMP renewal");
            }
            now = lapse.poll_timeout();
        }
        lapse.handle_timeout(now);
        assert_eq!(lapse.mapping(now), None, "lapsed");
        assert_eq!(
            lapse.poll_transmit().map(|d| d[0]),
            Some(2),
            "PCP first again"
        );
        assert_eq!(m.release().unwrap(), pmp_map(4433, 0, 0));
    }

    #[test]
    fn silence_backs_off_falls_back_and_asks_again_later() {
        let mut m = PortMapper::new(ME, 4433, [7; 12], MS(0));
        let mut sent = vec![];
        let mut now = MS(0);
        while now < Duration::from_secs(60) {
            m.handle_timeout(now);
            if let Some(d) = m.poll_transmit() {
                sent.push((now, d[0]));
            }
            now = m.poll_timeout().max(now + MS(1));
        }
        let pcp: Vec<_> = sent.iter().filter(|(_, v)| *v == 2).collect();
        let pmp: Vec<_> = sent.iter().filter(|(_, v)| *v == 0).collect();
        assert_eq!((pcp.len(), pmp.len()), (TRIES as usize, TRIES as usize));
        assert_eq!(pcp[1].0 - pcp[0].0, FIRST_TIMEOUT);
        assert_eq!(pcp[2].0 - pcp[1].0, FIRST_TIMEOUT * 2);
        assert_eq!(m.state(now), "no PCP or NAT-PMP answer from the router");
        assert!(
            m.poll_timeout() > Duration::from_secs(60),
            "not before RETRY_UNAVAILABLE"
        );
        m.handle_timeout(m.poll_timeout());
        assert_eq!(m.poll_transmit().map(|d| d[0]), Some(2), "PCP again");
    }

    #[test]
    fn refusals_and_malformed_answers_are_typed() {
        let mut m = PortMapper::new(ME, 4433, [7; 12], MS(0));
        let req = m.poll_transmit().unwrap();
        // NOT_AUTHORIZED.
        m.handle_datagram(MS(1), ROUTER, &pcp_answer(&req, 2, 0))
            .unwrap();
        assert_eq!(m.state(MS(1)), "the router refused the mapping");
        assert!(parse(&[]).is_err());
        assert!(parse(&[2]).is_err());
        assert!(parse(&req).is_err(), "a request is no answer");
        assert!(parse(&pcp_answer(&req, 0, 1)[..59]).is_err());
        assert!(parse(&[0, 0x80, 0, 0, 0, 0]).is_err());
        assert!(parse(&[0, 0x85, 0, 0]).is_err());
        assert!(parse(&[9, 0x80, 0, 0]).is_err());
        // Whatever arrives, nothing panics.
        for len in 0..80 {
            for fill in [0u8, 0x80, 0xff] {
                let mut b = vec![fill; len];
                if len > 0 {
                    b[0] = [0, 2][len % 2];
                }
                let _ = parse(&b);
                let _ = m.handle_datagram(MS(2), ROUTER, &b);
            }
        }
    }
}
