//! TUN offload, sans-IO: the `virtio_net_hdr` that prefixes every packet of a TUN device opened
//! with `IFF_VNET_HDR`, and what the data plane must do with what the kernel then hands it.
//!
//! With `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)` the kernel's TCP stops cutting its
//! stream into MTU-sized packets before the TUN: one read returns up to 64 KiB of one TCP flow
//! (`gso_type` TCPv4/TCPv6, `gso_size` = MSS), and packets may carry a partial checksum
//! (`NEEDS_CSUM`: the checksum field holds only the pseudo-header sum). The data plane cuts
//! such a packet into the segments the kernel would have sent ([`TcpGso`]: IP length, IPv4 ID and
//! header checksum, TCP sequence number, flags, full TCP checksum per segment) and completes
//! partial checksums ([`complete_csum`]) before encrypting; the peer gets ordinary packets.
//! One TUN read and one GSO `sendmsg` then carry ~45 packets.
//!
//! Byte order: the header is in the host's order ("legacy" virtio); the daemon enables offload
//! only on little-endian hosts, so fields are read little-endian here. Packet fields are
//! big-endian (network order).

use crate::error::Error;

/// Length of `struct virtio_net_hdr` (no `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;
/// `flags`: the checksum at `csum_start + csum_offset` is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
/// TCP over IPv4.
pub const GSO_TCPV4: u8 = 1;
/// TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// ECN bit of `gso_type` (CWR seen): cleared and ignored, as segmentation keeps CWR on the first
/// segment only.
pub const GSO_ECN: u8 = 0x80;

/// A parsed `virtio_net_hdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM` or 0.
    pub flags: u8,
    /// `GSO_*` (without `GSO_ECN`).
    pub gso_type: u8,
    /// Length of the headers (a hint; not trusted).
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS).
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum field is.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses the first [`VNET_HDR_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Result<VnetHdr, Error> {
        if b.len() < VNET_HDR_LEN {
            return Err(Error::Truncated {
                need: VNET_HDR_LEN,
                got: b.len(),
            });
        }
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1] & !GSO_ECN,
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }
}

/// Adds `data` to a ones'-complement running sum (big-endian 16-bit words; an odd last byte is
/// padded with zero).
pub fn csum_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Adding 64-bit words with end-around carry keeps the 16-bit ones'-complement sum.
        let (s, carry) = sum.overflowing_add(v);
        sum = s + carry as u64;
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        sum = add_carry(sum, u16::from_be_bytes([rest[i], rest[i + 1]]) as u64);
        i += 2;
    }
    if i < rest.len() {
        sum = add_carry(sum, (rest[i] as u64) << 8);
    }
    sum
}

fn add_carry(sum: u64, v: u64) -> u64 {
    let (s, c) = sum.overflowing_add(v);
    s + c as u64
}

/// Folds a running sum to 16 bits (not yet complemented).
pub fn csum_fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Completes a partial checksum (`F_NEEDS_CSUM`): sums `pkt[start..]` (whose checksum field
/// holds the pseudo-header sum) and stores the complement at `start + offset`.
pub fn complete_csum(pkt: &mut [u8], start: u16, offset: u16) -> Result<(), Error> {
    let (s, o) = (start as usize, start as usize + offset as usize);
    if o + 2 > pkt.len() || s > o {
        return Err(Error::InvalidField("checksum offsets outside the packet"));
    }
    let sum = csum_fold(csum_add(0, &pkt[s..]));
    let mut c = !sum;
    // A UDP checksum of 0 means "none": send 0xffff instead (RFC 768); harmless for TCP.
    if c == 0 {
        c = 0xffff;
    }
    pkt[o..o + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// A TCP super-packet from the TUN and how to cut it.
#[derive(Debug, Clone, Copy)]
pub struct TcpGso {
    v6: bool,
    ip_len: usize,
    tcp_len: usize,
    mss: usize,
    payload: usize,
}

impl TcpGso {
    /// Checks `pkt` (an IPv4 or IPv6 TCP packet, no IPv6 extension headers) against `hdr`.
    pub fn new(hdr: &VnetHdr, pkt: &[u8]) -> Result<TcpGso, Error> {
        let v6 = match (hdr.gso_type, pkt.first().map(|b| b >> 4)) {
            (GSO_TCPV4, Some(4)) => false,
            (GSO_TCPV6, Some(6)) => true,
            _ => return Err(Error::InvalidField("GSO type and IP version disagree")),
        };
        let ip_len = if v6 {
            if pkt.len() < 40 || pkt[6] != 6 {
                return Err(Error::InvalidField("IPv6 GSO packet is not plain TCP"));
            }
            40
        } else {
            let ihl = (pkt[0] & 0x0f) as usize * 4;
            if ihl < 20 || pkt.len() < ihl || pkt[9] != 6 {
                return Err(Error::InvalidField("IPv4 GSO packet is not TCP"));
            }
            ihl
        };
        if pkt.len() < ip_len + 20 {
            return Err(Error::Truncated {
                need: ip_len + 20,
                got: pkt.len(),
            });
        }
        let tcp_len = (pkt[ip_len + 12] >> 4) as usize * 4;
        if tcp_len < 20 || pkt.len() < ip_len + tcp_len {
            return Err(Error::InvalidField("TCP header length"));
        }
        let mss = hdr.gso_size as usize;
        if mss == 0 {
            return Err(Error::InvalidField("GSO size 0"));
        }
        Ok(TcpGso {
            v6,
            ip_len,
            tcp_len,
            mss,
            payload: pkt.len() - ip_len - tcp_len,
        })
    }

    /// How many segments.
    pub fn count(&self) -> usize {
        self.payload.div_ceil(self.mss).max(1)
    }

    /// Bytes of the largest segment.
    pub fn max_segment(&self) -> usize {
        self.ip_len + self.tcp_len + self.mss.min(self.payload)
    }

    /// Writes segment `i` of `pkt` into `out`; returns its length. `out` must hold
    /// [`TcpGso::max_segment`] bytes.
    pub fn write(&self, pkt: &[u8], i: usize, out: &mut [u8]) -> Result<usize, Error> {
        let hl = self.ip_len + self.tcp_len;
        let from = i * self.mss;
        if i >= self.count() {
            return Err(Error::InvalidField("segment index"));
        }
        let n = self.mss.min(self.payload - from);
        let len = hl + n;
        if out.len() < len || pkt.len() < hl + from + n {
            return Err(Error::Truncated {
                need: len,
                got: out.len(),
            });
        }
        out[..hl].copy_from_slice(&pkt[..hl]);
        out[hl..len].copy_from_slice(&pkt[hl + from..hl + from + n]);
        let last = i + 1 == self.count();
        // IP header.
        if self.v6 {
            out[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        } else {
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            let id = u16::from_be_bytes([pkt[4], pkt[5]]).wrapping_add(i as u16);
            out[4..6].copy_from_slice(&id.to_be_bytes());
            out[10..12].copy_from_slice(&[0, 0]);
            let c = !csum_fold(csum_add(0, &out[..self.ip_len]));
            out[10..12].copy_from_slice(&c.to_be_bytes());
        }
        // TCP header: sequence number, flags (FIN and PSH on the last segment only, CWR on the
        // first only), checksum over the pseudo-header, header and payload.
        let t = self.ip_len;
        let seq = u32::from_be_bytes([pkt[t + 4], pkt[t + 5], pkt[t + 6], pkt[t + 7]])
            .wrapping_add(from as u32);
        out[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = pkt[t + 13];
        if !last {
            flags &= !(0x01 | 0x08);
        }
        if i > 0 {
            flags &= !0x80;
        }
        out[t + 13] = flags;
        out[t + 16..t + 18].copy_from_slice(&[0, 0]);
        let tcp_total = (len - t) as u64;
        let addrs = if self.v6 { &out[8..40] } else { &out[12..20] };
        let mut sum = add_carry(csum_add(0, addrs), tcp_total + 6);
        sum = csum_add(sum, &out[t..len]);
        let c = !csum_fold(sum);
        out[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
        Ok(len)
    }
}

/// Coalesces consecutive TCP segments of one flow (as they arrive decrypted, in order) into one
/// super-packet for one TUN write, as the kernel's GRO would: same addresses, ports, TTL, TOS,
/// ACK number, window and options; contiguous sequence numbers; equal payload sizes but for a
/// shorter last one; nothing after PSH; at most 64 KiB. The packet is written with a
/// `virtio_net_hdr` saying "TCP GSO, checksum partial", so the kernel's TCP takes one packet
/// instead of dozens. Anything else is written alone.
#[derive(Debug)]
pub struct Coalescer {
    buf: Vec<u8>,
    len: usize,
    count: usize,
    v6: bool,
    ip_len: usize,
    tcp_len: usize,
    mss: usize,
    next_seq: u32,
    psh: bool,
    closed: bool,
}

/// TCP flags that never join a super-packet.
const TCP_NO_GRO: u8 = 0x01 | 0x02 | 0x04 | 0x20 | 0x80; // FIN SYN RST URG CWR

/// What one packet looks like to the coalescer.
struct TcpView {
    v6: bool,
    ip_len: usize,
    tcp_len: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

fn tcp_view(p: &[u8]) -> Option<TcpView> {
    let (v6, ip_len) = match p.first()? >> 4 {
        4 => {
            // No IP options, no fragments, the length exact.
            if p.len() < 40
                || p[0] & 0x0f != 5
                || p[9] != 6
                || u16::from_be_bytes([p[2], p[3]]) as usize != p.len()
                || u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0
            {
                return None;
            }
            (false, 20)
        }
        6 => {
            if p.len() < 60
                || p[6] != 6
                || u16::from_be_bytes([p[4], p[5]]) as usize != p.len() - 40
            {
                return None;
            }
            (true, 40)
        }
        _ => return None,
    };
    let tcp_len = (p[ip_len + 12] >> 4) as usize * 4;
    if tcp_len < 20 || p.len() < ip_len + tcp_len {
        return None;
    }
    Some(TcpView {
        v6,
        ip_len,
        tcp_len,
        payload: p.len() - ip_len - tcp_len,
        seq: u32::from_be_bytes([p[ip_len + 4], p[ip_len + 5], p[ip_len + 6], p[ip_len + 7]]),
        flags: p[ip_len + 13],
    })
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer::new()
    }
}

impl Coalescer {
    /// An empty coalescer (its 64 KiB buffer is allocated once, here).
    pub fn new() -> Coalescer {
        Coalescer {
            buf: vec![0u8; VNET_HDR_LEN + 65_535],
            len: 0,
            count: 0,
            v6: false,
            ip_len: 0,
            tcp_len: 0,
            mss: 0,
            next_seq: 0,
            psh: false,
            closed: false,
        }
    }

    /// Packets held.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds `pkt` if it continues what is held (or starts a new super-packet when nothing is
    /// held and it could begin one). `false`: the caller writes what is held ([`Coalescer::take`])
    /// and then offers `pkt` again, or writes `pkt` alone.
    pub fn push(&mut self, pkt: &[u8]) -> bool {
        let Some(v) = tcp_view(pkt) else {
            return false;
        };
        if v.payload == 0 || v.flags & TCP_NO_GRO != 0 {
            return false;
        }
        if self.count == 0 {
            self.buf[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()].copy_from_slice(pkt);
            self.len = pkt.len();
            self.count = 1;
            self.v6 = v.v6;
            self.ip_len = v.ip_len;
            self.tcp_len = v.tcp_len;
            self.mss = v.payload;
            self.next_seq = v.seq.wrapping_add(v.payload as u32);
            self.psh = v.flags & 0x08 != 0;
            self.closed = self.psh;
            return true;
        }
        let h = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.ip_len + self.tcp_len];
        let (ip, t) = (self.ip_len, self.ip_len);
        let same_ip = if self.v6 {
            // version, traffic class, flow label; hop limit; addresses
            pkt[..4] == h[..4] && pkt[7] == h[7] && pkt[8..40] == h[8..40]
        } else {
            // TOS; DF; TTL; addresses
            pkt[1] == h[1]
                && pkt[6] & 0x40 == h[6] & 0x40
                && pkt[8] == h[8]
                && pkt[12..20] == h[12..20]
        };
        let hl = ip + self.tcp_len;
        if self.closed
            || v.v6 != self.v6
            || v.tcp_len != self.tcp_len
            || !same_ip
            || pkt[t..t + 4] != h[t..t + 4]
            || pkt[t + 8..t + 12] != h[t + 8..t + 12]
            || pkt[t + 12] != h[t + 12]
            || (pkt[t + 13] | 0x08) != (h[t + 13] | 0x08)
            || pkt[t + 14..t + 16] != h[t + 14..t + 16]
            || pkt[t + 20..hl] != h[t + 20..hl]
            || v.seq != self.next_seq
            || v.payload > self.mss
            || self.len + v.payload > 65_535
        {
            return false;
        }
        let at = VNET_HDR_LEN + self.len;
        self.buf[at..at + v.payload].copy_from_slice(&pkt[hl..]);
        self.len += v.payload;
        self.count += 1;
        self.next_seq = self.next_seq.wrapping_add(v.payload as u32);
        if v.flags & 0x08 != 0 {
            self.psh = true;
            self.closed = true;
        }
        if v.payload < self.mss {
            self.closed = true;
        }
        true
    }

    /// The `virtio_net_hdr` and packet to write for what is held, and empties the coalescer.
    /// One packet goes out as it came (header "nothing to do"); several as one GSO packet.
    pub fn take(&mut self) -> Option<&[u8]> {
        if self.count == 0 {
            return None;
        }
        let (ip, len) = (self.ip_len, self.len);
        let count = std::mem::take(&mut self.count);
        self.buf[..VNET_HDR_LEN].fill(0);
        if count > 1 {
            let p = &mut self.buf[VNET_HDR_LEN..VNET_HDR_LEN + len];
            if self.v6 {
                p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
            } else {
                p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                p[10..12].copy_from_slice(&[0, 0]);
                let c = !csum_fold(csum_add(0, &p[..20]));
                p[10..12].copy_from_slice(&c.to_be_bytes());
            }
            if self.psh {
                p[ip + 13] |= 0x08;
            }
            // Checksum partial: the pseudo-header sum, which the kernel completes (or trusts).
            let tcp_total = (len - ip) as u64;
            let addrs = if self.v6 { &p[8..40] } else { &p[12..20] };
            let pseudo = csum_fold(add_carry(csum_add(0, addrs), tcp_total + 6));
            p[ip + 16..ip + 18].copy_from_slice(&pseudo.to_be_bytes());
            let h = &mut self.buf[..VNET_HDR_LEN];
            h[0] = F_NEEDS_CSUM;
            h[1] = if self.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            h[2..4].copy_from_slice(&((ip + self.tcp_len) as u16).to_le_bytes());
            h[4..6].copy_from_slice(&(self.mss as u16).to_le_bytes());
            h[6..8].copy_from_slice(&(ip as u16).to_le_bytes());
            h[8..10].copy_from_slice(&16u16.to_le_bytes());
        }
        Some(&self.buf[..VNET_HDR_LEN + len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_ipv4_csum(p: &[u8]) -> bool {
        let ihl = (p[0] & 0xf) as usize * 4;
        csum_fold(csum_add(0, &p[..ihl])) == 0xffff
    }

    fn valid_tcp_csum(p: &[u8]) -> bool {
        let v6 = p[0] >> 4 == 6;
        let t = if v6 { 40 } else { (p[0] & 0xf) as usize * 4 };
        let len = (p.len() - t) as u64;
        let pseudo = if v6 {
            csum_add(0, &p[8..40])
        } else {
            csum_add(0, &p[12..20])
        };
        csum_fold(csum_add(pseudo + len + 6, &p[t..])) == 0xffff
    }

    /// A TCP super-packet of `payload` bytes, with FIN|PSH|ACK|CWR set.
    fn big(v6: bool, payload: usize) -> Vec<u8> {
        let ip = if v6 { 40 } else { 20 };
        let mut p = vec![0u8; ip + 20 + payload];
        if v6 {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
            p[6] = 6;
            p[7] = 64;
            p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            p[0] = 0x45;
            let tl = (p.len() as u32).min(0xffff) as u16;
            p[2..4].copy_from_slice(&tl.to_be_bytes());
            p[4..6].copy_from_slice(&0xfff0u16.to_be_bytes());
            p[8] = 64;
            p[9] = 6;
            p[12..16].copy_from_slice(&[10, 100, 0, 1]);
            p[16..20].copy_from_slice(&[10, 100, 0, 2]);
        }
        p[ip..ip + 2].copy_from_slice(&5000u16.to_be_bytes());
        p[ip + 2..ip + 4].copy_from_slice(&5201u16.to_be_bytes());
        p[ip + 4..ip + 8].copy_from_slice(&0xffff_ff00u32.to_be_bytes());
        p[ip + 12] = 5 << 4;
        p[ip + 13] = 0x80 | 0x10 | 0x08 | 0x01;
        for (i, b) in p[ip + 20..].iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        p
    }

    #[test]
    fn segments_are_what_the_kernel_would_send() {
        for v6 in [false, true] {
            let pkt = big(v6, 10_000);
            let hdr = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                gso_size: 1300,
                ..VnetHdr::default()
            };
            let g = TcpGso::new(&hdr, &pkt).unwrap();
            assert_eq!(g.count(), 8);
            let ip = if v6 { 40 } else { 20 };
            let mut joined = Vec::new();
            let mut out = vec![0u8; g.max_segment()];
            for i in 0..g.count() {
                let n = g.write(&pkt, i, &mut out).unwrap();
                let s = &out[..n];
                assert!(valid_tcp_csum(s), "v6 {v6} segment {i}: TCP checksum");
                if !v6 {
                    assert!(valid_ipv4_csum(s));
                    assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, n);
                    assert_eq!(
                        u16::from_be_bytes([s[4], s[5]]),
                        0xfff0u16.wrapping_add(i as u16)
                    );
                } else {
                    assert_eq!(u16::from_be_bytes([s[4], s[5]]) as usize, n - 40);
                }
                let seq = u32::from_be_bytes([s[ip + 4], s[ip + 5], s[ip + 6], s[ip + 7]]);
                assert_eq!(seq, 0xffff_ff00u32.wrapping_add(i as u32 * 1300));
                let flags = s[ip + 13];
                assert_eq!(flags & 0x01 != 0, i == 7, "FIN only on the last");
                assert_eq!(flags & 0x08 != 0, i == 7, "PSH only on the last");
                assert_eq!(flags & 0x80 != 0, i == 0, "CWR only on the first");
                assert!(flags & 0x10 != 0);
                joined.extend_from_slice(&s[ip + 20..]);
            }
            assert_eq!(joined, &pkt[ip + 20..]);
        }
    }

    #[test]
    fn segments_coalesce_back_into_the_super_packet() {
        for v6 in [false, true] {
            let mut pkt = big(v6, 10_000);
            let ip = if v6 { 40 } else { 20 };
            // No FIN/CWR: those never join a super-packet; PSH on the last is fine.
            pkt[ip + 13] = 0x10 | 0x08;
            let hdr = VnetHdr {
                gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                gso_size: 1300,
                ..VnetHdr::default()
            };
            let g = TcpGso::new(&hdr, &pkt).unwrap();
            let mut c = Coalescer::new();
            let mut out = vec![0u8; g.max_segment()];
            for i in 0..g.count() {
                let n = g.write(&pkt, i, &mut out).unwrap();
                assert!(c.push(&out[..n]), "v6 {v6}: segment {i} did not join");
            }
            assert_eq!(c.count(), 8);
            let w = c.take().unwrap().to_vec();
            assert_eq!(c.count(), 0);
            let h = VnetHdr::parse(&w).unwrap();
            assert_eq!(
                (h.flags, h.gso_size, h.csum_start, h.csum_offset),
                (F_NEEDS_CSUM, 1300, ip as u16, 16)
            );
            let sp = &w[VNET_HDR_LEN..];
            assert_eq!(sp.len(), pkt.len());
            assert_eq!(&sp[ip + 20..], &pkt[ip + 20..]);
            if !v6 {
                assert!(valid_ipv4_csum(sp));
            }
            assert_eq!(sp[ip + 13], 0x18, "PSH of the last segment kept");
            // The partial checksum completes to a valid one.
            let mut full = sp.to_vec();
            complete_csum(&mut full, h.csum_start, h.csum_offset).unwrap();
            assert!(valid_tcp_csum(&full));
            // And the kernel could cut it again into the same segments.
            let again = TcpGso::new(&h, sp).unwrap();
            assert_eq!(again.count(), 8);
        }
    }

    #[test]
    fn what_cannot_coalesce_is_refused() {
        let pkt = big(false, 3000);
        let hdr = VnetHdr {
            gso_type: GSO_TCPV4,
            gso_size: 1000,
            ..VnetHdr::default()
        };
        let mut base = pkt.clone();
        base[33] = 0x10;
        let g = TcpGso::new(&hdr, &base).unwrap();
        let seg = |i: usize| {
            let mut o = vec![0u8; g.max_segment()];
            let n = g.write(&base, i, &mut o).unwrap();
            o.truncate(n);
            o
        };
        let mut c = Coalescer::new();
        assert!(c.push(&seg(0)));
        assert!(!c.push(&seg(2)), "a gap in sequence numbers");
        let mut other = seg(1);
        other[20..22].copy_from_slice(&1u16.to_be_bytes());
        assert!(!c.push(&other), "another flow");
        let mut ack = seg(1);
        ack[28..32].copy_from_slice(&7u32.to_be_bytes());
        assert!(!c.push(&ack), "another ACK number");
        assert!(c.push(&seg(1)));
        assert_eq!(c.count(), 2);
        // A single packet goes out untouched, with an empty header.
        let mut one = Coalescer::new();
        assert!(one.push(&seg(2)));
        let w = one.take().unwrap();
        assert_eq!(&w[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
        assert_eq!(&w[VNET_HDR_LEN..], &seg(2)[..]);
        // Pure ACKs, SYN/FIN and non-TCP never start one.
        let mut syn = seg(0);
        syn[33] = 0x02;
        assert!(!Coalescer::new().push(&syn));
        assert!(!Coalescer::new().push(&seg(0)[..40]));
        assert!(!Coalescer::new().push(&[0x45, 0, 0, 20]));
    }

    #[test]
    fn partial_checksums_are_completed() {
        // A UDP packet whose checksum field holds the pseudo-header sum, as the kernel leaves it.
        let mut p = vec![0u8; 28 + 33];
        p[0] = 0x45;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 100, 0, 1]);
        p[16..20].copy_from_slice(&[10, 100, 0, 2]);
        let ulen = (p.len() - 20) as u16;
        p[24..26].copy_from_slice(&ulen.to_be_bytes());
        for (i, b) in p[28..].iter_mut().enumerate() {
            *b = i as u8 ^ 0x5a;
        }
        let pseudo = csum_fold(csum_add(0, &p[12..20]) + 17 + ulen as u64);
        p[26..28].copy_from_slice(&pseudo.to_be_bytes());
        complete_csum(&mut p, 20, 6).unwrap();
        let full = csum_add(csum_add(0, &p[12..20]) + 17 + ulen as u64, &p[20..]);
        assert_eq!(csum_fold(full), 0xffff);
        assert!(complete_csum(&mut p, 60, 6).is_err());
    }

    #[test]
    fn bad_headers_are_errors() {
        let pkt = big(false, 100);
        let mut hdr = VnetHdr {
            gso_type: GSO_TCPV6,
            gso_size: 50,
            ..VnetHdr::default()
        };
        assert!(TcpGso::new(&hdr, &pkt).is_err());
        hdr.gso_type = GSO_TCPV4;
        hdr.gso_size = 0;
        assert!(TcpGso::new(&hdr, &pkt).is_err());
        hdr.gso_size = 50;
        let g = TcpGso::new(&hdr, &pkt).unwrap();
        assert_eq!(g.count(), 2);
        let mut small = [0u8; 10];
        assert!(g.write(&pkt, 0, &mut small).is_err());
        assert!(g.write(&pkt, 2, &mut [0u8; 200]).is_err());
        assert!(TcpGso::new(&hdr, &pkt[..30]).is_err());
        assert_eq!(
            VnetHdr::parse(&[1, 0x81, 0, 0, 0x14, 5, 0, 0, 0, 0]).unwrap(),
            VnetHdr {
                flags: 1,
                gso_type: 1,
                gso_size: 1300,
                ..VnetHdr::default()
            }
        );
        assert!(VnetHdr::parse(&[0; 9]).is_err());
    }
}
