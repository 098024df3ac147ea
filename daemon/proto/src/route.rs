//! The data plane's routing decisions, sans-IO: which peer owns a destination address
//! (longest-prefix match over overlay addresses and advertised LAN routes), whether a peer may
//! send from a source address (the same table read the other way, as WireGuard's cryptokey
//! routing does), the addresses in an IP header, and ICMP "packet too big" answers.
//!
//! Lookups never allocate: each prefix length present has its own ordered map, probed from the
//! longest length down. A mesh has few distinct lengths (/32 and /128 for overlay addresses, a
//! handful for LANs), so a lookup is two or three map probes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::Error;

/// An IP prefix, normalised (host bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl Prefix {
    /// `addr/len` with the host bits cleared; `None` if `len` is too long for the family.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        match addr {
            IpAddr::V4(a) if len <= 32 => Some(Prefix {
                addr: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(len))),
                len,
            }),
            IpAddr::V6(a) if len <= 128 => Some(Prefix {
                addr: IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(len))),
                len,
            }),
            _ => None,
        }
    }

    /// The prefix covering exactly `addr`.
    pub fn host(addr: IpAddr) -> Prefix {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Prefix { addr, len }
    }

    /// Whether `addr` lies inside.
    pub fn contains(&self, addr: IpAddr) -> bool {
        Prefix::new(addr, self.len).is_some_and(|p| p.addr == self.addr)
    }
}

impl Prefix {
    /// Whether the two prefixes share an address (one contains the other).
    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && if self.len <= other.len {
                self.contains(other.addr)
            } else {
                other.contains(self.addr)
            }
    }
}

impl core::fmt::Display for Prefix {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    }
}

/// Parses an IPv4 or IPv6 CIDR (`list route` and friends in UCI), requiring no host bits.
pub fn parse_cidr(v: &str) -> Result<crate::record::Route, String> {
    let (ip, len) = v
        .split_once('/')
        .ok_or("expected ADDRESS/PREFIX, e.g. 192.168.1.0/24")?;
    let addr: IpAddr = ip.parse().map_err(|_| "not an IP address")?;
    let prefix_len: u8 = len.parse().map_err(|_| "prefix length is not a number")?;
    let max: u32 = if addr.is_ipv4() { 32 } else { 128 };
    if prefix_len as u32 > max {
        return Err(format!("prefix length above {max}"));
    }
    let bits = match addr {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    };
    let host_bits = max - prefix_len as u32;
    // `::/0` has 128 host bits: a plain `1 << 128` would overflow.
    let host_mask = 1u128.checked_shl(host_bits).map_or(u128::MAX, |b| b - 1);
    if bits & host_mask != 0 {
        return Err("host bits set (use the network address)".into());
    }
    Ok(crate::record::Route { addr, prefix_len })
}

/// Longest-prefix-match table from prefixes to owners (`V`: a peer handle).
#[derive(Debug, Clone)]
pub struct RouteTable<V> {
    /// IPv4: (length, network → owner), longest length first.
    v4: Vec<(u8, BTreeMap<u32, V>)>,
    /// IPv6, the same way.
    v6: Vec<(u8, BTreeMap<u128, V>)>,
    len: usize,
    max: usize,
}

/// Why [`RouteTable::insert`] refused a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError<V> {
    /// The table holds its maximum number of prefixes.
    Full,
    /// Another owner holds exactly this prefix.
    Taken(V),
}

impl<V: Copy + PartialEq> RouteTable<V> {
    /// An empty table holding at most `max` prefixes.
    pub fn new(max: usize) -> Self {
        RouteTable {
            v4: Vec::new(),
            v6: Vec::new(),
            len: 0,
            max,
        }
    }

    /// Prefixes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `prefix → owner`. Re-adding a prefix the same owner holds is a no-op; a prefix
    /// another owner holds is refused (the caller decides who wins and removes the loser).
    pub fn insert(&mut self, prefix: Prefix, owner: V) -> Result<(), InsertError<V>> {
        fn put<K: Ord + Copy, V: Copy + PartialEq>(
            levels: &mut Vec<(u8, BTreeMap<K, V>)>,
            len: u8,
            key: K,
            owner: V,
            room: bool,
        ) -> Result<bool, InsertError<V>> {
            let i = match levels.binary_search_by(|(l, _)| len.cmp(l)) {
                Ok(i) => i,
                Err(i) => {
                    if !room {
                        return Err(InsertError::Full);
                    }
                    levels.insert(i, (len, BTreeMap::new()));
                    i
                }
            };
            match levels[i].1.get(&key) {
                Some(v) if *v == owner => Ok(false),
                Some(v) => Err(InsertError::Taken(*v)),
                None if !room => Err(InsertError::Full),
                None => {
                    levels[i].1.insert(key, owner);
                    Ok(true)
                }
            }
        }
        let room = self.len < self.max;
        let added = match prefix.addr {
            IpAddr::V4(a) => put(&mut self.v4, prefix.len, u32::from(a), owner, room)?,
            IpAddr::V6(a) => put(&mut self.v6, prefix.len, u128::from(a), owner, room)?,
        };
        self.len += added as usize;
        Ok(())
    }

    /// Removes every prefix `owner` holds; returns how many.
    pub fn remove_owner(&mut self, owner: V) -> usize {
        let before = self.len;
        let mut n = 0;
        for (_, m) in &mut self.v4 {
            let l = m.len();
            m.retain(|_, v| *v != owner);
            n += l - m.len();
        }
        for (_, m) in &mut self.v6 {
            let l = m.len();
            m.retain(|_, v| *v != owner);
            n += l - m.len();
        }
        self.v4.retain(|(_, m)| !m.is_empty());
        self.v6.retain(|(_, m)| !m.is_empty());
        self.len = before - n;
        n
    }

    /// A prefix held by someone other than `except` that overlaps `p`: equal to it, inside it
    /// or containing it. (A range probe per prefix length present: no allocation.)
    pub fn overlapping(&self, p: Prefix, except: V) -> Option<(Prefix, V)> {
        /// Per length present: the prefix containing `p` at that length (shorter ones), or
        /// any inside `lo..=hi` (longer ones).
        fn probe<K: Ord + Copy, V: Copy + PartialEq>(
            levels: &[(u8, BTreeMap<K, V>)],
            len: u8,
            (lo, hi): (K, K),
            mask: impl Fn(u8) -> K,
            addr: impl Fn(K) -> IpAddr,
            except: V,
        ) -> Option<(Prefix, V)> {
            levels.iter().find_map(|(l, m)| {
                let (a, b) = if *l <= len {
                    (mask(*l), mask(*l))
                } else {
                    (lo, hi)
                };
                m.range(a..=b).find(|(_, v)| **v != except).map(|(k, v)| {
                    (
                        Prefix {
                            addr: addr(*k),
                            len: *l,
                        },
                        *v,
                    )
                })
            })
        }
        match p.addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                let range = (a, a | !mask32(p.len));
                let to_addr = |k| IpAddr::V4(Ipv4Addr::from(k));
                probe(&self.v4, p.len, range, |l| a & mask32(l), to_addr, except)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                let range = (a, a | !mask128(p.len));
                let to_addr = |k| IpAddr::V6(Ipv6Addr::from(k));
                probe(&self.v6, p.len, range, |l| a & mask128(l), to_addr, except)
            }
        }
    }

    /// The owner of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<V> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .find_map(|(l, m)| m.get(&(a & mask32(*l))).copied())
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .find_map(|(l, m)| m.get(&(a & mask128(*l))).copied())
            }
        }
    }

    /// Every prefix with its owner.
    pub fn iter(&self) -> impl Iterator<Item = (Prefix, V)> + '_ {
        let v4 = self.v4.iter().flat_map(|(l, m)| {
            m.iter().map(move |(k, v)| {
                (
                    Prefix {
                        addr: IpAddr::V4(Ipv4Addr::from(*k)),
                        len: *l,
                    },
                    *v,
                )
            })
        });
        let v6 = self.v6.iter().flat_map(|(l, m)| {
            m.iter().map(move |(k, v)| {
                (
                    Prefix {
                        addr: IpAddr::V6(Ipv6Addr::from(*k)),
                        len: *l,
                    },
                    *v,
                )
            })
        });
        v4.chain(v6)
    }
}

/// Source and destination of an IP packet, read from its header without copying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
}

/// Reads the addresses of an IPv4 or IPv6 packet. Checks only what routing needs: the version
/// nibble, the header length and that the packet holds a whole header.
pub fn addrs(packet: &[u8]) -> Result<Addrs, Error> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = (packet[0] & 0x0f) as usize * 4;
            if ihl < 20 || packet.len() < ihl {
                return Err(Error::Truncated {
                    need: ihl.max(20),
                    got: packet.len(),
                });
            }
            let a =
                |i: usize| Ipv4Addr::new(packet[i], packet[i + 1], packet[i + 2], packet[i + 3]);
            Ok(Addrs {
                src: IpAddr::V4(a(12)),
                dst: IpAddr::V4(a(16)),
            })
        }
        Some(6) => {
            if packet.len() < 40 {
                return Err(Error::Truncated {
                    need: 40,
                    got: packet.len(),
                });
            }
            let a = |i: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&packet[i..i + 16]);
                Ipv6Addr::from(b)
            };
            Ok(Addrs {
                src: IpAddr::V6(a(8)),
                dst: IpAddr::V6(a(24)),
            })
        }
        Some(_) => Err(Error::InvalidField("IP version")),
        None => Err(Error::Truncated { need: 1, got: 0 }),
    }
}

/// The Internet checksum (RFC 1071) of `parts`, concatenated.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &b in *p {
            match odd.take() {
                Some(hi) => sum += u16::from_be_bytes([hi, b]) as u32,
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u16::from_be_bytes([hi, 0]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes into `out` an ICMP "packet too big" answer to `packet` (ICMPv4 type 3 code 4 with the
/// next-hop MTU, or ICMPv6 type 2), sent from `from` (our overlay address of the same family) to
/// the packet's source. Returns the answer's length, or `None` when no answer is due: the packet
/// is malformed, is itself an ICMP error, comes from another family than `from`, or (IPv4) has
/// don't-fragment clear. `out` should hold 1,280 bytes; the quote is cut to fit.
pub fn icmp_too_big(packet: &[u8], mtu: u16, from: IpAddr, out: &mut [u8]) -> Option<usize> {
    let a = addrs(packet).ok()?;
    match (a.src, from) {
        (IpAddr::V4(dst), IpAddr::V4(src)) => {
            let ihl = (packet[0] & 0x0f) as usize * 4;
            let df = packet.get(6).is_some_and(|b| b & 0x40 != 0);
            let is_icmp_error = packet[9] == 1 && packet.get(ihl).is_some_and(|t| *t != 8);
            if !df || is_icmp_error {
                return None;
            }
            // RFC 792: the IP header and the first 8 bytes of its payload.
            let quote = packet.len().min(ihl + 8);
            let total = 20 + 8 + quote;
            if out.len() < total {
                return None;
            }
            let (ip, rest) = out.split_at_mut(20);
            ip.fill(0);
            ip[0] = 0x45;
            ip[6] = 0x40; // don't fragment
            ip[8] = 64; // TTL
            ip[9] = 1; // ICMP
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let c = checksum(&[ip]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let icmp = &mut rest[..8 + quote];
            icmp[..8].copy_from_slice(&[3, 4, 0, 0, 0, 0, 0, 0]);
            icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
            icmp[8..].copy_from_slice(&packet[..quote]);
            let c = checksum(&[icmp]);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            Some(total)
        }
        (IpAddr::V6(dst), IpAddr::V6(src)) => {
            // ICMPv6 errors (types below 128) are never answered with another error.
            if packet[6] == 58 && packet.get(40).is_some_and(|t| *t < 128) {
                return None;
            }
            let room = out.len().min(1280);
            if room < 48 + 40 {
                return None;
            }
            let quote = packet.len().min(room - 48);
            let total = 48 + quote;
            let plen = (8 + quote) as u16;
            let (ip, rest) = out.split_at_mut(40);
            ip[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, 58, 64]);
            ip[4..6].copy_from_slice(&plen.to_be_bytes());
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            let icmp = &mut rest[..8 + quote];
            icmp[..8].copy_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
            icmp[4..8].copy_from_slice(&(mtu as u32).to_be_bytes());
            icmp[8..].copy_from_slice(&packet[..quote]);
            // Pseudo-header: source, destination, upper-layer length, next header.
            let len32 = (plen as u32).to_be_bytes();
            let c = checksum(&[&ip[8..40], &len32, &[0, 0, 0, 58], icmp]);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            Some(total)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cidr_parsing_is_strict_and_total() {
        use super::parse_cidr;
        assert!(parse_cidr("::/0").is_ok());
        assert!(parse_cidr("0.0.0.0/0").is_ok());
        assert!(parse_cidr("fd00::1/128").is_ok());
        assert!(parse_cidr("1::/0").is_err());
        assert!(parse_cidr("10.0.0.1/0").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("::/129").is_err());
        assert!(parse_cidr("10.0.0.0").is_err());
        assert!(parse_cidr("10.0.0.0/x").is_err());
    }

    use super::*;

    fn p(s: &str) -> Prefix {
        let (a, l) = s.split_once('/').unwrap();
        Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = RouteTable::new(16);
        t.insert(p("10.100.0.0/16"), 1).unwrap();
        t.insert(p("10.100.7.9/32"), 2).unwrap();
        t.insert(p("192.168.0.0/16"), 3).unwrap();
        t.insert(p("192.168.2.0/24"), 4).unwrap();
        t.insert(p("fd00::/8"), 5).unwrap();
        t.insert(p("fd12::1/128"), 6).unwrap();
        assert_eq!(t.lookup(ip("10.100.7.9")), Some(2));
        assert_eq!(t.lookup(ip("10.100.7.10")), Some(1));
        assert_eq!(t.lookup(ip("192.168.2.77")), Some(4));
        assert_eq!(t.lookup(ip("192.168.3.77")), Some(3));
        assert_eq!(t.lookup(ip("172.16.0.1")), None);
        assert_eq!(t.lookup(ip("fd12::1")), Some(6));
        assert_eq!(t.lookup(ip("fd12::2")), Some(5));
        assert_eq!(t.lookup(ip("2001:db8::1")), None);
        assert_eq!(t.len(), 6);
        assert_eq!(t.remove_owner(4), 1);
        assert_eq!(t.lookup(ip("192.168.2.77")), Some(3));
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn prefixes_are_normalised_and_owned_once() {
        let mut t = RouteTable::new(2);
        t.insert(p("192.168.1.77/24"), 1).unwrap();
        assert_eq!(t.iter().next().unwrap().0.to_string(), "192.168.1.0/24");
        t.insert(p("192.168.1.0/24"), 1).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.insert(p("192.168.1.0/24"), 2), Err(InsertError::Taken(1)));
        t.insert(p("0.0.0.0/0"), 2).unwrap();
        assert_eq!(t.lookup(ip("8.8.8.8")), Some(2));
        assert_eq!(t.insert(p("10.0.0.0/8"), 3), Err(InsertError::Full));
        assert!(Prefix::new(ip("10.0.0.0"), 33).is_none());
        assert!(p("10.1.0.0/16").contains(ip("10.1.200.3")));
        assert!(!p("10.1.0.0/16").contains(ip("10.2.0.3")));
    }

    fn v4_packet(df: bool) -> Vec<u8> {
        let mut pkt = vec![0u8; 1400];
        pkt[..20].copy_from_slice(&[
            0x45,
            0,
            0x05,
            0x78,
            0,
            1,
            if df { 0x40 } else { 0 },
            0,
            64,
            17,
            0,
            0,
            192,
            168,
            1,
            10,
            192,
            168,
            2,
            20,
        ]);
        pkt
    }

    #[test]
    fn header_addresses() {
        let a = addrs(&v4_packet(true)).unwrap();
        assert_eq!(a.src, ip("192.168.1.10"));
        assert_eq!(a.dst, ip("192.168.2.20"));
        let mut v6 = vec![0u8; 60];
        v6[0] = 0x60;
        v6[8..24].copy_from_slice(&ip6("fd01::1").octets());
        v6[24..40].copy_from_slice(&ip6("fd02::2").octets());
        let a = addrs(&v6).unwrap();
        assert_eq!((a.src, a.dst), (ip("fd01::1"), ip("fd02::2")));
        let short = |r: Result<Addrs, Error>| matches!(r, Err(Error::Truncated { .. }));
        assert!(short(addrs(&[])));
        assert!(short(addrs(&[0x45; 10])));
        assert!(short(addrs(&[0x44; 40])));
        assert!(short(addrs(&v6[..39])));
        assert!(matches!(addrs(&[0x50; 60]), Err(Error::InvalidField(_))));
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn icmp_v4_too_big_is_well_formed() {
        let pkt = v4_packet(true);
        let mut out = [0u8; 1280];
        let n = icmp_too_big(&pkt, 1380, ip("10.100.1.2"), &mut out).unwrap();
        assert_eq!(n, 20 + 8 + 28);
        // Both checksums verify (a correct checksum sums to zero).
        assert_eq!(checksum(&[&out[..20]]), 0);
        assert_eq!(checksum(&[&out[20..n]]), 0);
        assert_eq!(&out[12..16], &[10, 100, 1, 2]);
        assert_eq!(&out[16..20], &[192, 168, 1, 10]);
        assert_eq!((out[20], out[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([out[26], out[27]]), 1380);
        assert_eq!(&out[28..48], &pkt[..20]);
        // No answer without don't-fragment, or across families.
        assert!(icmp_too_big(&v4_packet(false), 1380, ip("10.100.1.2"), &mut out).is_none());
        assert!(icmp_too_big(&pkt, 1380, ip("fd00::1"), &mut out).is_none());
    }

    #[test]
    fn icmp_v6_too_big_is_well_formed() {
        let mut pkt = vec![0u8; 1500];
        pkt[0] = 0x60;
        pkt[6] = 17;
        pkt[8..24].copy_from_slice(&ip6("fd01::1").octets());
        pkt[24..40].copy_from_slice(&ip6("fd02::2").octets());
        let mut out = [0u8; 1280];
        let n = icmp_too_big(&pkt, 1380, ip("fd03::3"), &mut out).unwrap();
        assert_eq!(n, 1280);
        assert_eq!(u16::from_be_bytes([out[4], out[5]]) as usize, n - 40);
        assert_eq!(&out[24..40], &ip6("fd01::1").octets());
        let len32 = ((n - 40) as u32).to_be_bytes();
        assert_eq!(
            checksum(&[&out[8..40], &len32, &[0, 0, 0, 58], &out[40..n]]),
            0
        );
        assert_eq!(u32::from_be_bytes(out[44..48].try_into().unwrap()), 1380);
        // An ICMPv6 error is not answered.
        pkt[6] = 58;
        pkt[40] = 1;
        assert!(icmp_too_big(&pkt, 1380, ip("fd03::3"), &mut out).is_none());
    }
}
