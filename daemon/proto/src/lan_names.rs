//! The names of the hosts behind a gateway (`option share_lan_names`): read from its DHCP
//! server's leases and static hosts, sent to the members in a LAN_NAMES control message
//! ([`crate::msg::MsgType::LanNames`]), and served by them as `HOST.NAME.DOMAIN`.
//!
//! ```text
//! LAN_NAMES  count u8 (at most LAN_NAMES_MAX), then per host:
//!            label_len u8, label (a DNS label), family u8 (4|6), ip [4|16]
//! ```
//!
//! Each message replaces the sender's whole list: a lease that ended is withdrawn by the next
//! message without it. The receiver keeps a member's list only while it holds a link with it,
//! and only the addresses inside the member's accepted routes (a member names its own LAN's
//! hosts, nobody else's).

use core::net::IpAddr;

use crate::dns::{is_label, to_label};
use crate::error::Reader;
use crate::record::{read_ip, write_ip};
use crate::Error;

/// Most hosts one gateway shares.
pub const LAN_NAMES_MAX: usize = 64;

/// A host behind a gateway.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LanName {
    /// Its name, a DNS label.
    pub label: String,
    /// Its address on the LAN.
    pub addr: IpAddr,
}

/// Encodes `names` (at most [`LAN_NAMES_MAX`], each a label).
pub fn emit(names: &[LanName], out: &mut Vec<u8>) -> Result<(), Error> {
    if names.len() > LAN_NAMES_MAX {
        return Err(Error::TooLarge {
            what: "LAN names",
            len: names.len(),
            max: LAN_NAMES_MAX,
        });
    }
    out.push(names.len() as u8);
    for n in names {
        if !is_label(&n.label) {
            return Err(Error::InvalidField("host name"));
        }
        out.push(n.label.len() as u8);
        out.extend_from_slice(n.label.as_bytes());
        write_ip(out, &n.addr);
    }
    Ok(())
}

/// Decodes a LAN_NAMES body, every name checked.
pub fn parse(body: &[u8]) -> Result<Vec<LanName>, Error> {
    let mut r = Reader::new(body);
    let n = r.count("LAN names", LAN_NAMES_MAX)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let label = r.label("host name", false)?.to_string();
        let addr = read_ip(&mut r)?;
        out.push(LanName { label, addr });
    }
    r.finish()?;
    Ok(out)
}

/// The hosts of a dnsmasq lease file (`/tmp/dhcp.leases`: `expiry mac ip name client-id` per
/// line; DHCPv6 leases in the same file have an IAID in place of the MAC): those with a name
/// (`*` is none), made labels. Lines that do not parse are skipped.
pub fn from_leases(text: &str) -> Vec<LanName> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (_expiry, _mac, ip, name) = (w.next()?, w.next()?, w.next()?, w.next()?);
            let addr: IpAddr = ip.parse().ok()?;
            (name != "*").then_some(())?;
            Some(LanName {
                label: to_label(name)?,
                addr,
            })
        })
        .collect()
}

/// The static hosts of OpenWrt's `/etc/config/dhcp`: each `config host` section with a `name`
/// and an `ip` (IPv4), made labels. A file that does not parse gives none.
pub fn from_dhcp_config(text: &str) -> Vec<LanName> {
    let Ok(sections) = crate::uci::parse(text) else {
        return Vec::new();
    };
    sections
        .iter()
        .filter(|s| s.ty == "host")
        .filter_map(|s| {
            let get = |name: &str| match &s.get(name)?.value {
                crate::uci::Value::Single(v) => Some(v.as_str()),
                crate::uci::Value::List(v) => v.first().map(String::as_str),
            };
            Some(LanName {
                label: to_label(get("name")?)?,
                addr: get("ip")?.parse().ok()?,
            })
        })
        .collect()
}

/// The list to share: `names` inside `routes` (the LANs we advertise), each label once (the
/// first address kept), sorted, at most [`LAN_NAMES_MAX`].
pub fn select(mut names: Vec<LanName>, routes: &[crate::route::Prefix]) -> Vec<LanName> {
    names.retain(|n| routes.iter().any(|p| p.contains(n.addr)));
    let mut out: Vec<LanName> = Vec::new();
    for n in names {
        if !out
            .iter()
            .any(|o| o.label == n.label && o.addr.is_ipv4() == n.addr.is_ipv4())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    out.truncate(LAN_NAMES_MAX);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Prefix;

    fn n(label: &str, ip: &str) -> LanName {
        LanName {
            label: label.into(),
            addr: ip.parse().unwrap(),
        }
    }

    #[test]
    fn round_trip_and_bounds() {
        let list = vec![n("printer", "192.168.22.50"), n("nas", "fd22::5")];
        let mut b = Vec::new();
        emit(&list, &mut b).unwrap();
        assert_eq!(parse(&b).unwrap(), list);
        for cut in 0..b.len() {
            assert!(parse(&b[..cut]).is_err());
        }
        let mut long = b.clone();
        long.push(0);
        assert!(parse(&long).is_err());
        let mut bad = b.clone();
        bad[2] = b'P';
        assert_eq!(parse(&bad), Err(Error::InvalidField("host name")));
        let many = vec![n("a", "192.168.22.1"); LAN_NAMES_MAX + 1];
        assert!(emit(&many, &mut Vec::new()).is_err());
        assert!(parse(&[LAN_NAMES_MAX as u8 + 1]).is_err());
        assert!(emit(&[n("a.b", "192.168.22.1")], &mut Vec::new()).is_err());
    }

    #[test]
    fn leases_and_static_hosts() {
        let leases = "1796600000 aa:bb:cc:dd:ee:ff 192.168.22.50 Printer-2 01:aa:bb\n\
                      1796600000 aa:bb:cc:dd:ee:01 192.168.22.51 * *\n\
                      garbage\n\
                      1796600000 1234 fd22::7 nas-box 00:01\n";
        assert_eq!(
            from_leases(leases),
            [n("printer-2", "192.168.22.50"), n("nas-box", "fd22::7")]
        );
        let dhcp = "config dnsmasq\n\toption domain 'lan'\n\nconfig host\n\toption name 'Camera'\n\toption ip '192.168.22.60'\n\toption mac '00:11:22:33:44:55'\n\nconfig host\n\toption name 'noip'\n";
        assert_eq!(from_dhcp_config(dhcp), [n("camera", "192.168.22.60")]);
        assert!(from_dhcp_config("config host\n\toption name 'x\n").is_empty());
    }

    #[test]
    fn only_our_lans_each_name_once() {
        let lan = [Prefix::new("192.168.22.0".parse().unwrap(), 24).unwrap()];
        let picked = select(
            vec![
                n("printer", "192.168.22.50"),
                n("printer", "192.168.22.99"),
                n("elsewhere", "10.0.0.1"),
                n("cam", "192.168.22.60"),
            ],
            &lan,
        );
        assert_eq!(
            picked,
            [n("cam", "192.168.22.60"), n("printer", "192.168.22.50")]
        );
        let many: Vec<LanName> = (0..200u8)
            .map(|i| n(&format!("h{i}"), &format!("192.168.22.{i}")))
            .collect();
        assert_eq!(select(many, &lan).len(), LAN_NAMES_MAX);
    }
}
