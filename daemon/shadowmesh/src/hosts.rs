//! Names for the mesh: a hosts file of `NAME.DOMAIN` for this gateway and every member, on
//! their overlay addresses, that the router's resolver serves to the LAN (OpenWrt's dnsmasq
//! reads `/tmp/hosts/` as extra hosts files). Rewritten atomically (a temporary file renamed
//! over it) when a name or an address changes; removed when the daemon stops.
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
    /// Its overlay addresses.
    pub ipv4: Option<Ipv4Addr>,
    /// ...
    pub ipv6: Option<Ipv6Addr>,
}

/// The hosts file for `entries` under `domain`, and each named gateway's name as served.
pub fn render(entries: &[Entry], domain: &str) -> (String, BTreeMap<PeerId, String>) {
    let mut by_name: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for e in entries.iter().filter(|e| !e.name.is_empty()) {
        by_name.entry(e.name.as_str()).or_default().push(e);
    }
    let mut served = BTreeMap::new();
    for (name, mut claim) in by_name {
        claim.sort_by_key(|e| e.peer);
        for (i, e) in claim.iter().enumerate() {
            let n = if i == 0 {
                name.to_string()
            } else {
                let hex = shadowmesh_proto::peer::to_hex(&e.peer.0[..2]);
                // Still a label: cut the name to leave room for the suffix.
                format!(
                    "{}-{hex}",
                    &name[..name.len().min(shadowmesh_proto::dns::MAX_LABEL - 5)]
                        .trim_end_matches('-')
                )
            };
            served.insert(e.peer, n);
        }
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

/// Keeps the hosts file at `path` up to date with the members' names, until the task ends.
pub async fn keep(mesh: Rc<Mesh>, path: PathBuf, domain: String) {
    let mut last = String::new();
    loop {
        let mut entries = vec![];
        let me = mesh.node().payload();
        entries.push(Entry {
            peer: mesh.node().peer_id(),
            name: me.name.clone(),
            ipv4: me.ipv4,
            ipv6: me.ipv6,
        });
        if let Some(dp) = mesh.dataplane() {
            entries.extend(dp.members().into_iter().map(|m| Entry {
                peer: m.peer_id,
                name: m.name,
                ipv4: m.ipv4,
                ipv6: m.ipv6,
            }));
        }
        let (text, served) = render(&entries, &domain);
        if text != last {
            match write_atomic(&path, &text) {
                Ok(()) => log::info!("names: {} in {} (.{domain})", served.len(), path.display()),
                Err(e) => log::warn!("names: writing {}: {e}", path.display()),
            }
            last = text;
            *mesh.dns_names.borrow_mut() = served
                .into_iter()
                .map(|(p, n)| (p, format!("{n}.{domain}")))
                .collect();
        }
        tokio::time::sleep(EVERY).await;
    }
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
