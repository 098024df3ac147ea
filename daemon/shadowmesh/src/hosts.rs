//! Names for the mesh: a hosts file of `NAME.DOMAIN` for this gateway and every member, on
//! their overlay addresses, and `HOST.NAME.DOMAIN` for the hosts behind the members that
//! share them (`option share_lan_names`), that the router's resolver serves to the LAN
//! (OpenWrt's dnsmasq reads the files in `/tmp/hosts/` at start and on SIGHUP, which it is
//! sent). Rewritten atomically (a temporary file renamed over it) when a name or an address
//! changes; removed when the daemon stops.
//!
//! Two gateways may claim one name: the lower PeerId keeps it, the other is served as
//! `NAME-XXXX` (the first four hex digits of its PeerId), the same on every gateway since each
//! sees the same records. `peers --json` shows both (`name`, `dns_name`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use shadowmesh_proto::PeerId;

use crate::mesh::Mesh;

/// How often the members' names are looked at.
const EVERY: Duration = Duration::from_secs(2);

/// A named gateway and its overlay addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Whose.
    pub peer: PeerId,
    /// The name its record claims (empty: none).
    pub name: String,
    /// Its overlay IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// Its overlay IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// The hosts behind it that it named.
    pub lan: Vec<shadowmesh_proto::lan_names::LanName>,
}

/// The hosts file for `entries` under `domain`, and each named gateway's name as served.
pub fn render(entries: &[Entry], domain: &str) -> (String, BTreeMap<PeerId, String>) {
    // Each name's claims, the lowest PeerId first: that one keeps the name.
    let mut claims: Vec<(&str, PeerId)> = entries
        .iter()
        .filter(|e| !e.name.is_empty())
        .map(|e| (e.name.as_str(), e.peer))
        .collect();
    claims.sort_unstable();
    let mut served = BTreeMap::new();
    for e in entries.iter().filter(|e| !e.name.is_empty()) {
        let name = e.name.as_str();
        let i = claims.partition_point(|(n, _)| *n < name);
        let first = claims[i].1 == e.peer;
        let n = if first {
            name.to_string()
        } else {
            let hex = shadowmesh_proto::peer::to_hex(&e.peer.0[..2]);
            // Still a label: cut the name to leave room for the suffix.
            let cut = &name[..name.len().min(shadowmesh_proto::dns::MAX_LABEL - 5)];
            format!("{}-{hex}", cut.trim_end_matches('-'))
        };
        served.insert(e.peer, n);
    }
    let mut out = String::from("# shadowmesh: the mesh's gateways (rewritten by the daemon)\n");
    for e in entries {
        let Some(n) = served.get(&e.peer) else {
            continue;
        };
        for ip in [e.ipv4.map(|a| a.to_string()), e.ipv6.map(|a| a.to_string())]
            .into_iter()
            .flatten()
        {
            out += &format!("{ip} {n}.{domain} {n}\n");
        }
        for h in &e.lan {
            out += &format!("{} {}.{n}.{domain} {}.{n}\n", h.addr, h.label, h.label);
        }
    }
    (out, served)
}

/// Writes `text` to `path` through a temporary file renamed over it.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The hosts file to keep: `configured`, or on OpenWrt `/tmp/hosts/shadowmesh` (its dnsmasq
/// reads the files there), else `hosts` in `state_dir`.
pub fn path(configured: Option<&Path>, state_dir: &Path) -> PathBuf {
    let openwrt = Path::new("/etc/openwrt_release").exists() && Path::new("/tmp/hosts").is_dir();
    match configured {
        Some(p) => p.to_path_buf(),
        None if openwrt => PathBuf::from("/tmp/hosts/shadowmesh"),
        None => state_dir.join("hosts"),
    }
}

/// The dnsmasq processes to tell of a new hosts file: the one `pidfile` names, or on OpenWrt
/// each instance's (`/var/run/dnsmasq/*.pid`). Only a process whose name is `dnsmasq`.
fn dnsmasqs(pidfile: Option<&Path>) -> Vec<libc::pid_t> {
    let files: Vec<PathBuf> = match pidfile {
        Some(p) => vec![p.to_path_buf()],
        None if Path::new("/etc/openwrt_release").exists() => std::fs::read_dir("/var/run/dnsmasq")
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "pid"))
                    .collect()
            })
            .unwrap_or_default(),
        None => vec![],
    };
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok()?.trim().parse().ok())
        .filter(|pid: &libc::pid_t| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "dnsmasq")
        })
        .collect()
}

/// How the hosts file is kept: where, under which domain, whom to tell, and (with `option
/// share_lan_names`) where our own LAN hosts' names come from.
#[derive(Debug, Clone)]
pub struct Keep {
    /// The hosts file.
    pub path: PathBuf,
    /// The domain names are under.
    pub domain: String,
    /// The dnsmasq to tell (`dnsmasqs`).
    pub pidfile: Option<PathBuf>,
    /// Our DHCP leases and the LANs we advertise, when we share our hosts' names.
    pub share: Option<(PathBuf, Vec<shadowmesh_proto::route::Prefix>)>,
}

/// Our LAN hosts' names are read again every this many rounds of [`EVERY`].
const LEASES_EVERY: u32 = 5;

/// Keeps the hosts file up to date with the members' names, telling dnsmasq each time it
/// changed, and shares our own LAN hosts' names with the members (the DHCP leases and
/// OpenWrt's static hosts in `/etc/config/dhcp`, inside our routes), until the task ends.
pub async fn keep(mesh: Rc<Mesh>, k: Keep) {
    let mut last = String::new();
    let mut shared = None;
    for round in 0u32.. {
        let Some(dp) = mesh.dataplane() else {
            return;
        };
        if let (Some((leases, routes)), 0) = (&k.share, round % LEASES_EVERY) {
            share(&dp, leases, routes, &mut shared);
        }
        let me = mesh.node().payload();
        let mut entries = vec![Entry {
            peer: mesh.node().peer_id(),
            name: me.name,
            ipv4: me.ipv4,
            ipv6: me.ipv6,
            lan: Vec::new(),
        }];
        entries.extend(dp.members().into_iter().map(|m| Entry {
            peer: m.peer_id,
            name: m.name,
            ipv4: m.ipv4,
            ipv6: m.ipv6,
            lan: m.lan_names,
        }));
        let (text, served) = render(&entries, &k.domain);
        if text != last {
            match write_atomic(&k.path, &text) {
                Ok(()) => log::info!(
                    "names: {} in {} (.{})",
                    served.len(),
                    k.path.display(),
                    k.domain
                ),
                Err(e) => log::warn!("names: writing {}: {e}", k.path.display()),
            }
            for pid in dnsmasqs(k.pidfile.as_deref()) {
                // SAFETY: kill(2) with a pid read from dnsmasq's pid file, checked to be a
                // dnsmasq; SIGHUP makes it read its hosts files again.
                unsafe { libc::kill(pid, libc::SIGHUP) };
            }
            last = text;
            *mesh.dns_names.borrow_mut() = served
                .into_iter()
                .map(|(p, n)| (p, format!("{n}.{}", k.domain)))
                .collect();
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// Reads our LAN hosts' names and gives them to the data plane if they changed since `last`.
fn share(
    dp: &crate::dataplane::DataPlane,
    leases: &Path,
    routes: &[shadowmesh_proto::route::Prefix],
    last: &mut Option<Vec<shadowmesh_proto::lan_names::LanName>>,
) {
    use shadowmesh_proto::lan_names::{emit, from_dhcp_config, from_leases, select};
    let mut names = from_leases(&std::fs::read_to_string(leases).unwrap_or_default());
    names.extend(from_dhcp_config(
        &std::fs::read_to_string("/etc/config/dhcp").unwrap_or_default(),
    ));
    let names = select(names, routes);
    if last.as_ref() == Some(&names) {
        return;
    }
    let mut body = Vec::new();
    if emit(&names, &mut body).is_ok() {
        log::info!(
            "names: sharing {} LAN host(s) with the members",
            names.len()
        );
        dp.share_lan_names(body);
    }
    *last = Some(names);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(n: u8, name: &str) -> Entry {
        Entry {
            peer: PeerId([n; 32]),
            name: name.into(),
            ipv4: Some(Ipv4Addr::new(10, 100, 0, n)),
            ipv6: Some(format!("fd00::{n}").parse().unwrap()),
            lan: vec![],
        }
    }

    #[test]
    fn every_named_gateway_once_and_a_duplicate_suffixed_the_same_everywhere() {
        let all = [e(3, "office"), e(1, "office"), e(2, "home"), e(4, "")];
        let (text, served) = render(&all, "mesh");
        assert_eq!(served[&PeerId([1; 32])], "office");
        assert_eq!(served[&PeerId([3; 32])], "office-0303");
        assert_eq!(served[&PeerId([2; 32])], "home");
        assert!(!served.contains_key(&PeerId([4; 32])), "no name, no entry");
        assert!(text.contains("10.100.0.1 office.mesh office\n"));
        assert!(text.contains("fd00::1 office.mesh office\n"));
        assert!(text.contains("10.100.0.3 office-0303.mesh office-0303\n"));
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 6);
        // The same records in another order: the same names.
        let mut other = all.clone();
        other.reverse();
        assert_eq!(render(&other, "mesh").1, served);
        // A member's hosts under its served name.
        let mut with_lan = all.clone();
        with_lan[0].lan = vec![shadowmesh_proto::lan_names::LanName {
            label: "printer".into(),
            addr: "192.168.22.50".parse().unwrap(),
        }];
        let (text, _) = render(&with_lan, "mesh");
        assert!(text.contains("192.168.22.50 printer.office-0303.mesh printer.office-0303\n"));
        let long = "x".repeat(63);
        let (_, s) = render(&[e(1, &long), e(2, &long)], "mesh");
        assert!(shadowmesh_proto::dns::is_label(&s[&PeerId([2; 32])]));
    }

    #[test]
    fn written_whole() {
        let d = std::env::temp_dir().join(format!("sm-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("shadowmesh");
        write_atomic(&p, "a\n").unwrap();
        write_atomic(&p, "b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b\n");
        assert!(!p.with_extension("tmp").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
