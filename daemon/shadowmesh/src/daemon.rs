//! `shadowmesh run --config PATH`: the daemon procd starts.
//!
//! Loads the configuration and the identity (created on first run), binds the QUIC endpoint,
//! joins the DHT through the configured seeds and the routing-table cache, publishes its record
//! (members only), serves the control socket, and on SIGTERM/SIGINT writes the cache and closes
//! every connection. A node with neither seeds nor a cache starts alone and says so once.
//!
//! The routing-table cache (`<state_dir>/dht.cache`) is written sparingly, because flash wears
//! out: once 30 s after the first successful join, then at most hourly, and at clean shutdown.

use shadowmesh_crypto::NetworkKey;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use crate::keyfile::write_atomic;
use shadowmesh_crypto::Identity;
use shadowmesh_proto::dht::wire::{emit_contact_list, parse_contact_list, Contact};
use shadowmesh_proto::join::HostPort;
use shadowmesh_proto::record::Payload;

use crate::args::{CliError, Opts};
use crate::config::Config;
use crate::config::{control_path, DEFAULT_CONFIG};
use crate::dataplane::{DataPlane, DataPlaneConfig};
use crate::mesh::Mesh;
use crate::node::{Node, NodeConfig};
use crate::tun::Tun;
use shadowmesh_proto::route::Prefix;

/// Most contacts the cache keeps.
pub const CACHE_MAX: usize = 512;
const CACHE_MAGIC: &[u8; 8] = b"SMDHTC1\n";

fn cache_path(cfg: &Config) -> PathBuf {
    cfg.state_dir.join("dht.cache")
}

/// Reads the routing-table cache; a missing file is an empty cache, a corrupt one is reported
/// and ignored (it is only a hint).
pub fn read_cache(path: &Path) -> Vec<Contact> {
    match std::fs::read(path) {
        Ok(b) if b.starts_with(CACHE_MAGIC) => {
            match parse_contact_list(&b[CACHE_MAGIC.len()..], CACHE_MAX) {
                Ok(v) => v,
                Err(e) => {
                    log::warn!("ignoring routing-table cache {}: {e}", path.display());
                    vec![]
                }
            }
        }
        Ok(_) => {
            log::warn!(
                "ignoring routing-table cache {}: not a cache file",
                path.display()
            );
            vec![]
        }
        Err(_) => vec![],
    }
}

/// Writes the routing-table cache atomically.
pub fn write_cache(path: &Path, contacts: &[Contact]) {
    let mut out = CACHE_MAGIC.to_vec();
    emit_contact_list(&contacts[..contacts.len().min(CACHE_MAX)], &mut out);
    match write_atomic(path, &out, 0o600) {
        Ok(()) => log::info!(
            "saved {} contacts to {}",
            contacts.len().min(CACHE_MAX),
            path.display()
        ),
        Err(e) => log::warn!(
            "could not save the routing-table cache {}: {e}",
            path.display()
        ),
    }
}

/// Entry point of `shadowmesh run`.
pub fn main(o: &Opts) -> Result<(), CliError> {
    o.only(&["--config", "--log-level"])?;
    let path = PathBuf::from(o.get("--config").unwrap_or(DEFAULT_CONFIG));
    let cfg = Config::load(&path).map_err(|e| CliError::fail(e.to_string()))?;
    if o.get("--log-level").is_none() {
        log::set_max_level(cfg.log_level);
    }
    for w in &cfg.ignored {
        log::warn!("{w}");
    }
    if !cfg.enabled {
        log::info!(
            "disabled in {} (option enabled '0'); exiting",
            path.display()
        );
        return Ok(());
    }
    if let Some(dir) = cfg.key_file.parent() {
        create_private_dir(dir)?;
    }
    create_private_dir(&cfg.state_dir)?;
    let (id, created) = crate::keyfile::load_or_create(&cfg.key_file)?;
    if created {
        log::info!("created a new identity in {}", cfg.key_file.display());
    }
    // The daemon runs as a task of its own: `LocalSet::block_on` polls the future it is given
    // each time any task wakes (every packet), and this one is a select over three signals.
    crate::block_on_local(async move {
        tokio::task::spawn_local(run(path, cfg, id))
            .await
            .unwrap_or_else(|e| Err(CliError::fail(format!("daemon task: {e}"))))
    })
    .map_err(|e| CliError::fail(format!("tokio runtime: {e}")))?
}

fn create_private_dir(dir: &Path) -> Result<(), CliError> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::fail(format!("creating {}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// SIGHUP (procd reload): re-reads the configuration and applies what changed without dropping
/// unchanged peers. An invalid file changes nothing.
async fn reload(path: &Path, cfg: &mut Config, mesh: &Rc<Mesh>) {
    let new = match Config::load(path) {
        Ok(c) => {
            for w in &c.ignored {
                log::warn!("reload: {w}");
            }
            c
        }
        Err(e) => {
            log::error!("reload: {e}; keeping the running configuration");
            return;
        }
    };
    let mut applied = vec![];
    if new.log_level != cfg.log_level {
        log::set_max_level(new.log_level);
        applied.push("log_level");
    }
    if new.routes != cfg.routes || new.advertise != cfg.advertise || new.name != cfg.name {
        mesh.set_advertise(new.advertise.iter().filter_map(HostPort::addr).collect());
        if crate::names::any_name(&new.advertise) {
            let (m, list) = (mesh.clone(), new.advertise.clone());
            tokio::task::spawn_local(async move { crate::names::advertise(&m, &list).await });
        }
        let mut p = mesh.node().payload();
        p.routes = new.routes.clone();
        p.addrs = mesh.record_addrs();
        p.name = name_of(&new);
        mesh.node().set_payload(p);
        match mesh.node().refresh_record() {
            Ok(rec) => {
                if let Some(dp) = mesh.dataplane() {
                    dp.announce_record(&rec);
                }
                if new.network_key.is_some() {
                    let m = mesh.clone();
                    tokio::task::spawn_local(async move { publish(&m, rec).await });
                }
            }
            Err(e) => log::error!("reload: re-signing our record failed: {e}"),
        }
        applied.push("route/advertise/name");
    }
    if new.allowed_peers != cfg.allowed_peers
        || new.routes != cfg.routes
        || new.accept_routes != cfg.accept_routes
        || new.accept_route != cfg.accept_route
    {
        if let Some(dp) = mesh.dataplane() {
            dp.reconfigure(
                new.allowed_peers.clone(),
                prefixes(&new.routes),
                new.accept_routes,
                prefixes(&new.accept_route),
            );
        }
        applied.push("allowed_peer/accept_route(s)");
    }
    let restart: Vec<&str> = [
        ("listen_address/listen_port", new.listen != cfg.listen),
        ("network_key/seed", new.network_key != cfg.network_key),
        ("key_file", new.key_file != cfg.key_file),
        ("interface", new.interface != cfg.interface),
        ("mtu", new.mtu != cfg.mtu),
        ("tunnel", new.tunnel != cfg.tunnel),
        ("fast_lane", new.fast_lane != cfg.fast_lane),
        ("offload", new.offload != cfg.offload),
        ("overlay_ipv4", new.overlay_ipv4 != cfg.overlay_ipv4),
        ("state_dir", new.state_dir != cfg.state_dir),
        ("enabled", new.enabled != cfg.enabled),
        ("plain_udp", new.plain_udp != cfg.plain_udp),
        ("bootstrap", new.bootstrap != cfg.bootstrap),
        ("exit_node", new.exit_node != cfg.exit_node),
        (
            "lan_discovery/discovery_interface/domain/hosts_file/dnsmasq_pidfile/share_lan_names/dhcp_leases",
            new.lan_discovery != cfg.lan_discovery
                || new.discovery_interfaces != cfg.discovery_interfaces
                || new.domain != cfg.domain
                || new.hosts_file != cfg.hosts_file
                || new.dnsmasq_pidfile != cfg.dnsmasq_pidfile
                || new.share_lan_names != cfg.share_lan_names
                || new.dhcp_leases != cfg.dhcp_leases,
        ),
        (
            "exit/exit_fail",
            new.exit != cfg.exit || new.exit_fail != cfg.exit_fail,
        ),
    ]
    .iter()
    .filter(|(_, changed)| *changed)
    .map(|(n, _)| *n)
    .collect();
    if !restart.is_empty() {
        log::warn!(
            "reload: {} changed and take effect at the next restart",
            restart.join(", ")
        );
    }
    crate::set_restart_pending(restart);
    log::info!(
        "reloaded {}: {}",
        path.display(),
        if applied.is_empty() {
            "nothing to apply".to_string()
        } else {
            applied.join(", ")
        }
    );
    // Keep the running values of what needs a restart.
    let keep = cfg.clone();
    *cfg = Config {
        listen: keep.listen,
        network_key: keep.network_key,
        key_file: keep.key_file,
        interface: keep.interface,
        mtu: keep.mtu,
        tunnel: keep.tunnel,
        state_dir: keep.state_dir,
        enabled: keep.enabled,
        seed: keep.seed,
        fast_lane: keep.fast_lane,
        offload: keep.offload,
        overlay_ipv4: keep.overlay_ipv4,
        plain_udp: keep.plain_udp,
        bootstrap: keep.bootstrap,
        exit_node: keep.exit_node,
        exit: keep.exit,
        exit_fail: keep.exit_fail,
        exit_bypass: keep.exit_bypass,
        lan_discovery: keep.lan_discovery,
        discovery_interfaces: keep.discovery_interfaces,
        domain: keep.domain,
        hosts_file: keep.hosts_file,
        dnsmasq_pidfile: keep.dnsmasq_pidfile,
        share_lan_names: keep.share_lan_names,
        dhcp_leases: keep.dhcp_leases,
        ..new
    };
}

async fn run(path: PathBuf, cfg: Config, id: Identity) -> Result<(), CliError> {
    let pid = id.peer_id();
    // A seed claims no overlay addresses: it never carries packets.
    let mut payload = match &cfg.network_key {
        Some(nk) => crate::dataplane::member_payload_in(&pid, nk, cfg.overlay_ipv4),
        None => Payload::default(),
    };
    // Addresses now; names once resolved (off the start's path: DNS may be slow at boot).
    payload.addrs = cfg.advertise.iter().filter_map(HostPort::addr).collect();
    payload.routes = cfg.routes.clone();
    payload.exit = cfg.exit_node && cfg.network_key.is_some();
    payload.name = name_of(&cfg);
    let mut ncfg = NodeConfig::dht_only(cfg.listen);
    if let Some(k) = &cfg.network_key {
        ncfg = ncfg.member_of(k.clone());
    }
    ncfg.payload = payload;
    ncfg.seq_file = Some(cfg.state_dir.join("seq"));
    ncfg.plain_udp = cfg.plain_udp;
    ncfg.fast_lane = cfg.fast_lane;
    ncfg.tunnel_mtu = cfg.mtu.unwrap_or(crate::config::DEFAULT_MTU);
    let node =
        Node::bind(id, ncfg).map_err(|e| CliError::fail(format!("binding {}: {e}", cfg.listen)))?;
    let mesh = Mesh::new(node).map_err(|e| CliError::fail(e.to_string()))?;
    mesh.set_advertise(cfg.advertise.iter().filter_map(HostPort::addr).collect());
    if crate::names::any_name(
        cfg.advertise
            .iter()
            .chain(cfg.bootstrap.iter().map(|(_, h)| h)),
    ) {
        let (m, list) = (mesh.clone(), cfg.advertise.clone());
        tokio::task::spawn_local(async move { crate::names::advertise(&m, &list).await });
        tokio::task::spawn_local(crate::names::refresh(
            Rc::downgrade(&mesh),
            cfg.advertise.clone(),
            cfg.bootstrap.clone(),
        ));
    }
    mesh.observe();
    if crate::clock_unset() {
        log::warn!(
            "the system clock reads {} (Unix seconds), earlier than any correct clock: records \
             are signed with the time peers report until it is set (NTP)",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        );
    }
    if cfg.network_key.is_none() && !cfg.seed {
        log::warn!(
            "{}: no option 'network_key': running as a DHT-only seed that carries no packets \
             (set option seed '1' to say so, or a network_key to join a mesh)",
            path.display()
        );
    }
    log::info!(
        "{} {} listening on {}",
        if cfg.network_key.is_some() {
            "member"
        } else {
            "DHT-only seed"
        },
        pid,
        mesh.contact().addr
    );
    if let (Some(nk), true) = (&cfg.network_key, cfg.tunnel) {
        let dp = open_dataplane(&cfg, pid, nk.clone(), &mesh.node().config().payload)?;
        mesh.attach(dp);
    }
    let routing = start_exit(&cfg, &mesh)?;
    let hosts = mesh.dataplane().map(|_| {
        let k = crate::hosts::Keep {
            path: crate::hosts::path(cfg.hosts_file.as_deref(), &cfg.state_dir),
            domain: cfg.domain.clone(),
            pidfile: cfg.dnsmasq_pidfile.clone(),
            share: cfg
                .share_lan_names
                .then(|| (cfg.dhcp_leases.clone(), prefixes(&cfg.routes))),
        };
        let path = k.path.clone();
        tokio::task::spawn_local(crate::hosts::keep(mesh.clone(), k));
        path
    });
    // A daemon on loopback (tests, a local mesh) has no LAN.
    if let (true, Some(nk), Some(dp)) = (
        cfg.lan_discovery && !cfg.listen.ip().is_loopback(),
        &cfg.network_key,
        mesh.dataplane(),
    ) {
        crate::lan::start(
            &mesh,
            nk.clone(),
            &cfg.discovery_interfaces,
            &prefixes(&cfg.routes),
            dp.tun().index(),
        );
    }
    tokio::task::spawn_local(mesh.clone().run());
    let control = control_path(&cfg);
    tokio::task::spawn_local(crate::control::serve(
        mesh.clone(),
        control.clone(),
        cfg.network_key.clone(),
        cfg.started_json(),
    ));

    let cached = read_cache(&cache_path(&cfg));
    let mut initial: Vec<Contact> = crate::names::seeds(&cfg.bootstrap).await;
    initial.extend(cached.iter().copied());
    initial.retain(|c| c.id != pid);
    for c in &initial {
        mesh.add_contact(*c);
    }
    if initial.is_empty() {
        log::warn!(
            "starting alone: no bootstrap nodes configured and no routing-table cache in {}; \
             other nodes can bootstrap from this one ({pid}@{})",
            cfg.state_dir.display(),
            mesh.contact().addr
        );
    } else if !cached.is_empty() {
        log::info!(
            "{} contacts from the routing-table cache, {} seeds",
            cached.len(),
            cfg.bootstrap.len()
        );
    }
    tokio::task::spawn_local(join_and_publish(mesh.clone(), cfg.clone(), initial));
    tokio::task::spawn_local(watch_addresses(mesh.clone()));
    if mesh.dataplane().is_some() {
        tokio::task::spawn_local(watch_relay(mesh.clone(), cfg.relay));
    }
    // A daemon listening on loopback (tests, a local mesh) has no router to ask.
    if cfg.port_mapping && cfg.network_key.is_some() && !cfg.listen.ip().is_loopback() {
        let port = mesh.contact().addr.port();
        let state = mesh.port_map.clone();
        tokio::task::spawn_local(crate::portmap::keep(mesh.clone(), port, state));
    }

    use tokio::signal::unix::{signal, SignalKind};
    let sig = |k| signal(k).map_err(|e| CliError::fail(format!("signal handler: {e}")));
    let mut term = sig(SignalKind::terminate())?;
    let mut hup = sig(SignalKind::hangup())?;
    let mut cfg = cfg;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                log::info!("interrupted: shutting down");
                break;
            }
            _ = term.recv() => {
                log::info!("terminated: shutting down");
                break;
            }
            _ = hup.recv() => reload(&path, &mut cfg, &mesh).await,
        }
    }
    write_cache(&cache_path(&cfg), &mesh.contacts());
    if let Some(r) = routing {
        r.borrow_mut().remove();
    }
    if cfg.exit_node {
        crate::exit::unserve();
    }
    crate::portmap::release(&mesh.port_map);
    if let Some(p) = hosts {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_file(&control);
    mesh.node().shutdown().await;
    Ok(())
}

/// This gateway's name: `option name`, else the system's host name made a DNS label (on
/// OpenWrt the kernel's host name is `system.@system[0].hostname`).
fn name_of(cfg: &Config) -> String {
    cfg.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .and_then(|h| shadowmesh_proto::dns::to_label(h.trim()))
            .unwrap_or_default()
    })
}

/// Offers this gateway as an exit (`option exit_node`), and sends internet traffic through
/// the exit `option exit` names: the daemon's socket marked, the policy routing kept as the
/// exit's state and `option exit_fail` say. Returns the routing (removed on the way out).
fn start_exit(
    cfg: &Config,
    mesh: &Rc<Mesh>,
) -> Result<Option<Rc<std::cell::RefCell<crate::exit::Routing>>>, CliError> {
    use shadowmesh_link::engine::ExitChoice;
    let dp = mesh.dataplane();
    if let (true, Some(dp)) = (cfg.exit_node, dp.as_ref()) {
        crate::exit::serve(&cfg.interface)
            .map_err(|e| CliError::fail(format!("option exit_node: {e}")))?;
        log::info!("offering this gateway as members' exit");
        // Members' DNS, on our overlay addresses.
        let (v4, _, v6) = dp.addresses();
        let port = crate::exit::dns::PORT;
        let mut at = vec![std::net::SocketAddr::new(v4.into(), port)];
        at.extend(v6.map(|a| std::net::SocketAddr::new(a.into(), port)));
        crate::exit::dns::spawn(at);
    }
    let Some(dp) = dp.filter(|_| cfg.exit != ExitChoice::None) else {
        // Rules a daemon killed while it used an exit left behind (its table's routes went
        // with its tunnel): gone, so nothing looks up a table no one fills.
        if let Some(dp) = mesh.dataplane() {
            crate::exit::clear(dp.tun().index());
        }
        return Ok(None);
    };
    if cfg.routes.is_empty() {
        log::warn!(
            "option exit: no list route, so the exit cannot route answers back to this \
             router's LAN hosts: only the router's own traffic uses it"
        );
    }
    use std::os::fd::AsFd;
    crate::exit::mark_socket(mesh.node().socket().as_fd())
        .map_err(|e| CliError::fail(format!("option exit: marking our socket: {e}")))?;
    dp.set_exit(cfg.exit);
    let routing = Rc::new(std::cell::RefCell::new(crate::exit::Routing::new(
        dp.tun().index(),
        &cfg.interface,
        prefixes(&cfg.exit_bypass),
    )));
    let (r, fail, weak) = (routing.clone(), cfg.exit_fail, Rc::downgrade(mesh));
    // Closed from the first packet: nothing leaves by the uplink while the exit is dialled.
    r.borrow_mut().follow(dp.exit().1, fail, dp.exit_overlay());
    tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last = None;
        loop {
            tick.tick().await;
            let Some(dp) = weak.upgrade().and_then(|m| m.dataplane()) else {
                return;
            };
            dp.recheck_exit();
            let (peer, state) = dp.exit();
            if last != Some((peer, state)) {
                log::info!(
                    "exit: {} ({})",
                    peer.map_or("none".into(), |p| p.short().to_string()),
                    state.as_str()
                );
                last = Some((peer, state));
            }
            r.borrow_mut().follow(state, fail, dp.exit_overlay());
        }
    });
    Ok(Some(routing))
}

/// Keeps relaying on where `option relay` says (in `auto`, while others can reach us: our NAT
/// class is "none", or not known yet and the host holds a public address), keeps links with
/// two relays while a NAT stands in front of us, and has our record say all three.
async fn watch_relay(mesh: Rc<Mesh>, mode: crate::config::RelayMode) {
    use crate::config::RelayMode;
    use shadowmesh_proto::dht::kbucket::subnet_key;
    use shadowmesh_proto::dht::observed::NatClass;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let Some(dp) = mesh.dataplane() else {
            return;
        };
        let nat = mesh.observed_state().1;
        let on = match mode {
            RelayMode::On => true,
            RelayMode::Off => false,
            RelayMode::Auto => match nat {
                NatClass::None => true,
                NatClass::Unknown => crate::netlink::local_addresses(dp.tun().index())
                    .unwrap_or_default()
                    .iter()
                    .any(|ip| subnet_key(&std::net::SocketAddr::new(*ip, 1)).is_some()),
                _ => false,
            },
        };
        dp.set_relay(on);
        let behind = matches!(
            nat,
            NatClass::EndpointIndependent | NatClass::EndpointDependent
        );
        let relays = dp.keep_relays(behind);
        mesh.set_reach(crate::mesh::Reach {
            nat,
            relay: on,
            relays,
        });
    }
}

/// Notices when the host's addresses change (DHCP renewal, a new uplink, a moved gateway) and
/// keeps the mesh reachable: our record is re-signed (a higher sequence number also makes our
/// new connections win over the old ones at every peer), the connections we dialled migrate by
/// themselves (QUIC client migration: the next packets leave from the new address), and the
/// ones we accepted are dialled again, since a QUIC server cannot migrate.
async fn watch_addresses(mesh: Rc<Mesh>) {
    let tunnel = mesh.dataplane().map(|d| d.tun().index()).unwrap_or(0);
    let mut last = crate::netlink::local_addresses(tunnel).unwrap_or_default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // A lost address breaks the paths that used it; a new one breaks nothing by itself. But
    // after a loss the replacement often arrives a moment later (DHCP, a moved uplink), and the
    // re-dials made in between failed: act on additions too for a while after a loss.
    let mut unsettled_until: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        let Ok(now) = crate::netlink::local_addresses(tunnel) else {
            continue;
        };
        if now == last {
            continue;
        }
        let lost = last.iter().any(|a| !now.contains(a));
        log::info!("local addresses changed: {last:?} -> {now:?}");
        // An authenticated frame from our new address moves members' fast lanes to it.
        if let Some(dp) = mesh.dataplane() {
            dp.keepalive_all();
        }
        last = now;
        let t = tokio::time::Instant::now();
        if lost {
            unsettled_until = Some(t + Duration::from_secs(30));
        } else if unsettled_until.is_none_or(|u| t >= u) {
            continue;
        }
        match mesh.node().refresh_record() {
            Ok(rec) => {
                if let Some(dp) = mesh.dataplane() {
                    dp.announce_record(&rec);
                    dp.redial_accepted();
                }
                if mesh.node().config().network_key.is_some() {
                    publish(&mesh, rec).await;
                }
            }
            Err(e) => log::error!("re-signing our record failed: {e}"),
        }
    }
}

/// Opens the TUN device with our overlay addresses and builds the data plane.
fn open_dataplane(
    cfg: &Config,
    pid: shadowmesh_proto::PeerId,
    nk: NetworkKey,
    payload: &Payload,
) -> Result<Rc<DataPlane>, CliError> {
    let v4 = payload.ipv4.expect("members claim an overlay IPv4 address");
    check_overlay_free(&crate::config::overlay_prefixes(
        cfg.overlay_ipv4,
        Some(&nk),
    ))?;
    let mtu = cfg.mtu.unwrap_or(crate::config::DEFAULT_MTU);
    let tun = Tun::open(&cfg.interface, v4, payload.ipv6, mtu, cfg.offload).map_err(|e| {
        CliError::fail(format!(
            "{e} (the tunnel needs root or CAP_NET_ADMIN and /dev/net/tun; on OpenWrt install \
             kmod-tun)"
        ))
    })?;
    log::info!(
        "tunnel {} up: {v4}/16{} mtu {mtu}{}",
        tun.name(),
        payload
            .ipv6
            .map(|a| format!(", {a}/48"))
            .unwrap_or_default(),
        if tun.vnet() { ", offload" } else { "" }
    );
    let mut dcfg = DataPlaneConfig::new(pid, payload, nk, cfg.allowed_peers.clone())
        .expect("members claim an overlay IPv4 address");
    dcfg.roster.policy.accept_routes = cfg.accept_routes;
    dcfg.roster.policy.accept = prefixes(&cfg.accept_route);
    Ok(DataPlane::new(dcfg, tun, mtu))
}

/// Refuses to open the tunnel when an overlay prefix would take space this host already uses:
/// an address of the host inside it, or a route (a LAN, another VPN) inside or equal to it,
/// would make members unreachable or cut the host off from its own network. A route that only
/// covers it (a `10.0.0.0/8` towards a company network) loses the overlay's part, with a
/// warning.
fn check_overlay_free(overlay: &[Prefix]) -> Result<(), CliError> {
    let routes = crate::netlink::local_routes(0).unwrap_or_else(|e| {
        log::warn!("reading the host's routes: {e}");
        vec![]
    });
    let addrs = crate::netlink::local_addresses(0).unwrap_or_default();
    for o in overlay {
        let option = if o.addr.is_ipv4() {
            "choose another /16 with option overlay_ipv4, the same for every member"
        } else {
            "the IPv6 overlay is derived from the network key"
        };
        for r in routes.iter().filter(|r| r.overlaps(o)) {
            if r.len >= o.len {
                return Err(CliError::fail(format!(
                    "the overlay {o} overlaps this host's route to {r}: {option}"
                )));
            }
            log::warn!(
                "this host's route to {r} covers the overlay {o}: the overlay takes its part"
            );
        }
        if let Some(a) = addrs.iter().find(|a| o.contains(**a)) {
            return Err(CliError::fail(format!(
                "the overlay {o} holds {a}, an address of this host: {option}"
            )));
        }
    }
    Ok(())
}

fn prefixes(routes: &[shadowmesh_proto::record::Route]) -> Vec<Prefix> {
    routes
        .iter()
        .filter_map(|r| Prefix::new(r.addr, r.prefix_len))
        .collect()
}

/// Joins through `initial` (seeds and cached contacts), publishes our record, keeps the cache.
/// A failed join is retried after 1, 2, 4, ... up to 30 s, each time with the seeds and cached
/// contacts added again (a failed request may have evicted them from the table).
async fn join_and_publish(mesh: Rc<Mesh>, cfg: Config, initial: Vec<Contact>) {
    let mut saved_once = false;
    let mut backoff = Duration::from_secs(1);
    let named = crate::names::any_name(cfg.bootstrap.iter().map(|(_, h)| h));
    loop {
        if !initial.is_empty() || mesh.table_len() > 0 || named {
            if let Some(j) = mesh.bootstrap().await {
                if !j.closest.is_empty() {
                    log::info!(
                        "joined the DHT: {} contacts, {} closest answered",
                        mesh.table_len(),
                        j.closest.len()
                    );
                    break;
                }
            }
            log::warn!(
                "could not reach any seed or cached contact; retrying in {} s",
                backoff.as_secs()
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            for c in &initial {
                mesh.add_contact(*c);
            }
            // A seed known by name may have moved (or its name did not resolve at start).
            if named {
                for c in crate::names::seeds(&cfg.bootstrap).await {
                    mesh.add_contact(c);
                }
            }
        } else {
            // Alone: join as soon as the first node contacts us.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let member = cfg.network_key.is_some();
    if member {
        publish(&mesh, mesh.node().record()).await;
    }
    let mut last_publish = std::time::Instant::now();
    let table_at_publish = mesh.table_len();
    loop {
        let pause = if saved_once { 3600 } else { 30 };
        tokio::time::sleep(Duration::from_secs(pause)).await;
        write_cache(&cache_path(&cfg), &mesh.contacts());
        // A record published into a young network reached only the nodes there were; if the
        // table has grown since, publish once more now rather than in an hour.
        if member && !saved_once && mesh.table_len() > table_at_publish {
            publish(&mesh, mesh.node().record()).await;
        }
        saved_once = true;
        // Republish a freshly signed record hourly: the engine would otherwise republish the
        // same bytes until they expire.
        if member && last_publish.elapsed() >= shadowmesh_proto::dht::REPUBLISH_INTERVAL {
            match mesh.node().refresh_record() {
                Ok(rec) => publish(&mesh, rec).await,
                Err(e) => log::error!("re-signing our record failed: {e}"),
            }
            last_publish = std::time::Instant::now();
        }
    }
}

async fn publish(mesh: &Rc<Mesh>, rec: crate::mesh::Rec) {
    match mesh.publish(rec).await {
        Ok(Some(o)) => log::info!("published our record to {} nodes", o.stores_sent),
        Ok(None) => log::warn!("could not publish our record: too many lookups running"),
        Err(code) => log::error!("our own record was refused: {code:?}"),
    }
}
