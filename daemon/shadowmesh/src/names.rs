//! DNS names in `list bootstrap` and `list advertise`: a home router is often reached by a
//! dynamic-DNS name while its ISP changes its address now and then. Names go through the
//! system's resolver (`getaddrinfo`: `/etc/hosts`, then DNS), off the runtime's thread, at
//! start, every [`REFRESH`] and whenever a join fails; an address stays itself.

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use shadowmesh_proto::dht::wire::Contact;
use shadowmesh_proto::join::HostPort;
use shadowmesh_proto::PeerId;

use crate::mesh::Mesh;

/// How often names are resolved again.
pub const REFRESH: Duration = Duration::from_secs(300);

/// The addresses `list` stands for now, each once, in order; a name that does not resolve is
/// logged and skipped.
pub async fn resolve(list: &[HostPort]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for h in list {
        let found = match h {
            HostPort::Addr(a) => vec![*a],
            HostPort::Name(n, port) => {
                // A thread of its own, not tokio's blocking pool: the pool's code is 12 KiB
                // of the aarch64 binary that nothing else uses.
                let (name, port) = (n.clone(), *port);
                let (tx, rx) = tokio::sync::oneshot::channel();
                let spawned = std::thread::Builder::new()
                    .name("resolve".into())
                    .spawn(move || {
                        let r = (name.as_str(), port)
                            .to_socket_addrs()
                            .map(|i| i.collect::<Vec<_>>());
                        let _ = tx.send(r);
                    });
                let r = match spawned {
                    Ok(_) => rx
                        .await
                        .unwrap_or_else(|_| Err(std::io::ErrorKind::Other.into())),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(v) => v,
                    Err(e) => {
                        log::warn!("resolving {h}: {e}");
                        vec![]
                    }
                }
            }
        };
        for a in found {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// The seeds of `list bootstrap` as contacts, names resolved.
pub async fn seeds(list: &[(PeerId, HostPort)]) -> Vec<Contact> {
    let mut out = Vec::new();
    for (id, h) in list {
        for addr in resolve(std::slice::from_ref(h)).await {
            out.push(Contact {
                id: *id,
                ed25519: [0; 32],
                addr,
            });
        }
    }
    out
}

/// Whether any entry is a name (else nothing needs resolving again).
pub fn any_name<'a>(list: impl IntoIterator<Item = &'a HostPort>) -> bool {
    list.into_iter().any(|h| matches!(h, HostPort::Name(..)))
}

/// Resolves `advertise` and gives the addresses to the record (re-signed and published if
/// they changed).
pub async fn advertise(mesh: &Rc<Mesh>, advertise: &[HostPort]) {
    let addrs = resolve(advertise).await;
    mesh.advertise_addrs(addrs);
}

/// Every [`REFRESH`]: the names of `list advertise` and `list bootstrap` resolved again; a
/// moved address goes into our record, a moved seed into the routing table. Ends with the
/// mesh.
pub async fn refresh(
    mesh: std::rc::Weak<Mesh>,
    advertise_list: Vec<HostPort>,
    bootstrap: Vec<(PeerId, HostPort)>,
) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let Some(m) = mesh.upgrade() else {
            return;
        };
        if any_name(&advertise_list) {
            advertise(&m, &advertise_list).await;
        }
        if any_name(bootstrap.iter().map(|(_, h)| h)) {
            for c in seeds(&bootstrap).await {
                m.add_contact(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_and_names_resolve_through_the_system() {
        crate::block_on_local(async {
            let a: SocketAddr = "192.0.2.1:4433".parse().unwrap();
            let list = [
                HostPort::Addr(a),
                HostPort::Name("localhost".into(), 4433),
                HostPort::Addr(a),
                HostPort::Name("no-such-name.invalid".into(), 1),
            ];
            let got = resolve(&list).await;
            assert_eq!(got[0], a);
            assert!(
                got[1..]
                    .iter()
                    .all(|x| x.ip().is_loopback() && x.port() == 4433),
                "{got:?}"
            );
            assert!(got.len() >= 2, "localhost resolves: {got:?}");
            assert!(any_name(&list) && !any_name(&list[..1]));
        })
        .expect("tokio runtime");
    }
}
