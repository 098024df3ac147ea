//! The daemon's configuration: UCI `/etc/config/shadowmesh` on OpenWrt, the same format
//! anywhere via `--config PATH`. A bad value of a known option is an error naming the file, the
//! line, the option and the value; an option this version does not know (a newer package's, or
//! a downgrade's leftover) is skipped with a warning naming the same, so that the service still
//! starts at boot.
//!
//! ```text
//! config shadowmesh 'main'
//!     option enabled '1'
//!     option listen_address '0.0.0.0'
//!     option listen_port '4433'
//!     option interface 'smesh0'
//!     option key_file '/etc/shadowmesh/key'
//!     option seed '0'                           # 1: a DHT-only seed (no network key)
//!     option network_key '<64 hex digits>'      # absent: a DHT-only seed node
//!     option state_dir '/var/lib/shadowmesh'
//!     option log_level 'info'
//!     option mtu '1376'
//!     option lan_discovery '1'                  # find the mesh's gateways on the LAN by multicast
//!     list discovery_interface 'br-lan'         # where (default: br-lan, else the interfaces of `list route`)
//!     option name 'office'                      # this gateway's name in the mesh (default: the hostname)
//!     option domain 'mesh'                      # members are NAME.DOMAIN in the hosts file
//!     option hosts_file '/tmp/hosts/shadowmesh' # default: that on OpenWrt (its dnsmasq reads it), else STATE_DIR/hosts
//!     option dnsmasq_pidfile '/run/dnsmasq.pid'  # told (SIGHUP) when the file changes (OpenWrt: its instances)
//!     option share_lan_names '0'                # 1: members serve our DHCP hosts as HOST.NAME.DOMAIN
//!     option dhcp_leases '/tmp/dhcp.leases'     # where those names come from (and /etc/config/dhcp's hosts)
//!     option plain_udp '0'                      # 1: no sendmsg control messages
//!     option tunnel '1'                         # 0: member without a TUN (carries no packets)
//!     option fast_lane '1'                      # 0: data frames as QUIC datagrams only
//!     option offload '1'                        # 0: no TUN offload (one packet per read)
//!     option relay 'auto'                       # relay for members: auto (when reachable), 1, 0
//!     option port_mapping '1'                   # ask the router to forward our port (PCP, NAT-PMP, UPnP)
//!     option exit_node '0'                      # 1: offer this gateway as members' exit
//!     option exit ''                            # a member's PeerId, or auto: internet traffic through it
//!     option exit_fail 'closed'                 # while the exit is down: closed (drop), open (local uplink)
//!     list exit_bypass '203.0.113.0/24'         # destinations that keep the local uplink
//!     list bootstrap '<PEERID>@192.0.2.1:4433'    # or <PEERID>@NAME:PORT (resolved now and then)
//!     list advertise '192.0.2.7:4433'             # or NAME:PORT (a dynamic-DNS name)
//!     list route '192.168.1.0/24'               # a LAN behind this gateway (never /0 or the overlay)
//!     list allowed_peer '<PEERID>'
//!     option accept_routes '1'                  # 0: install no member's LAN routes
//!     list accept_route '192.168.0.0/16'        # if set: only member routes inside these
//! ```

use shadowmesh_crypto::NetworkKey;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use shadowmesh_proto::consts::DEFAULT_PORT;
use shadowmesh_proto::join::{parse_host_port, HostPort};
use shadowmesh_proto::overlay::{V4Prefix, V6Prefix};
use shadowmesh_proto::policy::RoutePolicy;
use shadowmesh_proto::record::Route;
use shadowmesh_proto::route::Prefix;
use shadowmesh_proto::uci::{self, Opt, Value};
use shadowmesh_proto::PeerId;

/// A configuration error, pointing at the option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0: the file as a whole).
    pub line: usize,
    /// The option, if the error is about one.
    pub option: Option<String>,
    /// The offending value, if any.
    pub value: Option<String>,
    /// What is wrong.
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, " line {}", self.line)?;
        }
        match (&self.option, &self.value) {
            (Some(o), Some(v)) => write!(f, ": option '{o}' = '{v}': {}", self.msg),
            (Some(o), None) => write!(f, ": option '{o}': {}", self.msg),
            _ => write!(f, ": {}", self.msg),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Start at all.
    pub enabled: bool,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// TUN interface name.
    pub interface: String,
    /// Identity key file.
    pub key_file: PathBuf,
    /// The mesh's network key; `None` for a DHT-only seed node.
    pub network_key: Option<NetworkKey>,
    /// `option seed '1'`: a DHT-only seed on purpose. The OpenWrt init script generates a
    /// network key on first start unless this is set; a `network_key` next to it is ignored.
    pub seed: bool,
    /// Where the routing-table cache lives.
    pub state_dir: PathBuf,
    /// Log level name.
    pub log_level: log::LevelFilter,
    /// Tunnel MTU; `None` derives it from the path.
    pub mtu: Option<u16>,
    /// Find the mesh's gateways on the LAN segments by multicast announcements (`crate::lan`).
    pub lan_discovery: bool,
    /// The interfaces announced on and listened to (`list discovery_interface`); empty:
    /// `br-lan` where it exists, else those holding an address inside a `list route` prefix.
    pub discovery_interfaces: Vec<String>,
    /// This gateway's name in its record (`option name`, a DNS label); `None`: the system's
    /// host name made a label ([`shadowmesh_proto::dns::to_label`]).
    pub name: Option<String>,
    /// The domain members' names are under in the hosts file (`option domain`).
    pub domain: String,
    /// The hosts file (`option hosts_file`); `None`: `/tmp/hosts/shadowmesh` on OpenWrt, else
    /// `hosts` in the state directory.
    pub hosts_file: Option<PathBuf>,
    /// The dnsmasq told (SIGHUP) that the hosts file changed (`option dnsmasq_pidfile`);
    /// `None`: on OpenWrt every instance's (`/var/run/dnsmasq/*.pid`), elsewhere none.
    pub dnsmasq_pidfile: Option<PathBuf>,
    /// Share the names of the hosts behind us with the members (`option share_lan_names`).
    pub share_lan_names: bool,
    /// The DHCP leases those names come from (`option dhcp_leases`).
    pub dhcp_leases: PathBuf,
    /// Seed nodes, by address or DNS name.
    pub bootstrap: Vec<(PeerId, HostPort)>,
    /// Addresses to publish in our record, or DNS names resolved to them (default: the listen
    /// address if it is specific).
    pub advertise: Vec<HostPort>,
    /// LAN routes to advertise.
    pub routes: Vec<Route>,
    /// If non-empty, only these PeerIds may exchange packets with us.
    pub allowed_peers: Vec<PeerId>,
    /// Install members' LAN routes at all (`option accept_routes`).
    pub accept_routes: bool,
    /// If non-empty, members' LAN routes are installed only inside these.
    pub accept_route: Vec<Route>,
    /// Plain UDP calls instead of quinn-udp's control messages (for platforms and emulators
    /// where `sendmsg` control messages fail; see `plainudp.rs`).
    pub plain_udp: bool,
    /// Open the TUN device and carry packets (members only). `0` makes a member that takes
    /// part in the DHT and in sessions but carries no packets (monitoring nodes, tests).
    pub tunnel: bool,
    /// Data frames as plain UDP on the QUIC socket when the peer takes them (`fastlane.rs`);
    /// `0` keeps them in QUIC datagrams.
    pub fast_lane: bool,
    /// TUN offload (TCP super-packets cut in user space, partial checksums completed).
    pub offload: bool,
    /// Whether to relay for members that cannot reach each other (`option relay`).
    pub relay: RelayMode,
    /// Whether to ask the router in front of us to forward our port (`option port_mapping`).
    pub port_mapping: bool,
    /// Whether this gateway offers itself as members' exit (`option exit_node`).
    pub exit_node: bool,
    /// The exit our internet traffic goes through (`option exit`).
    pub exit: shadowmesh_link::engine::ExitChoice,
    /// What internet traffic does while the exit is down (`option exit_fail`).
    pub exit_fail: crate::exit::ExitFail,
    /// Destinations that keep the local uplink while an exit is in use (`list exit_bypass`).
    pub exit_bypass: Vec<Route>,
    /// The overlay IPv4 /16 (`option overlay_ipv4`, default `10.100.0.0/16`); every member of
    /// a mesh must use the same.
    pub overlay_ipv4: V4Prefix,
    /// Options this version does not know, skipped (each as the warning to log).
    pub ignored: Vec<ConfigError>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            interface: "smesh0".into(),
            key_file: "/etc/shadowmesh/key".into(),
            network_key: None,
            seed: false,
            state_dir: "/var/lib/shadowmesh".into(),
            log_level: log::LevelFilter::Info,
            mtu: None,
            lan_discovery: true,
            discovery_interfaces: Vec::new(),
            name: None,
            domain: "mesh".into(),
            hosts_file: None,
            dnsmasq_pidfile: None,
            share_lan_names: false,
            dhcp_leases: PathBuf::from("/tmp/dhcp.leases"),
            bootstrap: vec![],
            advertise: vec![],
            routes: vec![],
            allowed_peers: vec![],
            accept_routes: true,
            accept_route: vec![],
            plain_udp: false,
            tunnel: true,
            fast_lane: true,
            offload: true,
            relay: RelayMode::Auto,
            port_mapping: true,
            exit_node: false,
            exit: shadowmesh_link::engine::ExitChoice::None,
            exit_fail: crate::exit::ExitFail::Closed,
            exit_bypass: Vec::new(),
            overlay_ipv4: V4Prefix::default(),
            ignored: vec![],
        }
    }
}

/// Default configuration file (OpenWrt).
pub const DEFAULT_CONFIG: &str = "/etc/config/shadowmesh";

/// Where the control socket of the daemon configured by `cfg` lives.
pub fn control_path(cfg: &Config) -> PathBuf {
    cfg.state_dir.join("control.sock")
}

/// The tunnel MTU when the configuration names none ([`crate::node::DEFAULT_TUNNEL_MTU`]).
pub const DEFAULT_MTU: u16 = crate::node::DEFAULT_TUNNEL_MTU;

/// Parses `PEERID@IP:PORT` or `PEERID@NAME:PORT`.
pub fn parse_bootstrap(v: &str) -> Result<(PeerId, HostPort), String> {
    shadowmesh_proto::join::parse_peer_addr(v).map_err(String::from)
}

pub use shadowmesh_proto::route::parse_cidr;

/// The overlay prefixes: the IPv4 /16 `v4` and, in a mesh, its IPv6 /48.
pub fn overlay_prefixes(v4: V4Prefix, network_key: Option<&[u8; 32]>) -> Vec<Prefix> {
    let mut v = vec![v4.prefix()];
    v.extend(network_key.map(|k| V6Prefix::for_network(k).prefix()));
    v
}

/// `option overlay_ipv4`: a unicast IPv4 /16 with its host part zero (members' addresses are
/// `A.B.X.Y` with `X.Y` from the PeerId).
fn parse_overlay_ipv4(v: &str) -> Result<V4Prefix, String> {
    let r = parse_cidr(v)?;
    let std::net::IpAddr::V4(a) = r.addr else {
        return Err("an IPv4 /16 such as 10.100.0.0/16".into());
    };
    let o = a.octets();
    if r.prefix_len != 16 || o[2..] != [0, 0] {
        return Err("must be a /16 with a zero host part, such as 10.100.0.0/16".into());
    }
    let p = Prefix::new(r.addr, 16).expect("16 fits IPv4");
    if shadowmesh_proto::policy::not_unicast(&p) || o[0] == 255 {
        return Err("not a unicast range".into());
    }
    Ok(V4Prefix { net: [o[0], o[1]] })
}

/// `option relay`: whether this gateway carries circuits between members that cannot reach
/// each other (DESIGN.md, "Relays").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    /// Where others can reach us: our NAT class is "none", or not known yet and the host holds
    /// a public address.
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl RelayMode {
    /// The UCI value.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayMode::Auto => "auto",
            RelayMode::On => "1",
            RelayMode::Off => "0",
        }
    }
}

fn parse_relay(v: &str) -> Result<RelayMode, String> {
    match v {
        "auto" => Ok(RelayMode::Auto),
        v => match parse_bool(v) {
            Ok(true) => Ok(RelayMode::On),
            Ok(false) => Ok(RelayMode::Off),
            Err(_) => Err("expected auto, 1 or 0".into()),
        },
    }
}

/// A Linux interface name: 1-15 of A-Z a-z 0-9 _ . -.
fn parse_ifname(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 15
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(v.to_string())
    } else {
        Err("an interface name is 1-15 of A-Z a-z 0-9 _ . -".into())
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "on" | "true" | "yes" | "enabled" => Ok(true),
        "0" | "off" | "false" | "no" | "disabled" => Ok(false),
        _ => Err("expected 1 or 0".into()),
    }
}

impl Config {
    /// The options the daemon reads only at start, with the values this configuration gives
    /// them, as a JSON object in UCI's names (`status`'s `started`: what the running instance
    /// uses, to compare with the file). The network key is given only as `network_key_id`, a
    /// fingerprint that tells two keys apart and reveals neither.
    pub fn started_json(&self) -> String {
        let boot: Vec<String> = self
            .bootstrap
            .iter()
            .map(|(p, a)| format!("\"{p}@{a}\""))
            .collect();
        let key_id = self.network_key.as_deref().map(|k| {
            let d = shadowmesh_crypto::sha256(&[b"shadowmesh network key id\0", &k[..]]);
            shadowmesh_proto::peer::to_hex(&d[..8])
        });
        crate::json::Obj::new()
            .bool("enabled", self.enabled)
            .bool("seed", self.seed || self.network_key.is_none())
            .str("network_key_id", key_id.as_deref().unwrap_or(""))
            .str("listen_address", &self.listen.ip().to_string())
            .uint("listen_port", self.listen.port() as u64)
            .str("interface", &self.interface)
            .str("key_file", &self.key_file.to_string_lossy())
            .str("state_dir", &self.state_dir.to_string_lossy())
            .str("mtu", &self.mtu.map(|m| m.to_string()).unwrap_or_default())
            .bool("tunnel", self.tunnel)
            .bool("fast_lane", self.fast_lane)
            .bool("offload", self.offload)
            .str("relay", self.relay.as_str())
            .bool("port_mapping", self.port_mapping)
            .bool("exit_node", self.exit_node)
            .str("exit", &crate::exit::choice_str(self.exit))
            .str("exit_fail", self.exit_fail.as_str())
            .raw(
                "exit_bypass",
                &format!(
                    "[{}]",
                    self.exit_bypass
                        .iter()
                        .map(|r| format!("\"{}/{}\"", r.addr, r.prefix_len))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            )
            .bool("plain_udp", self.plain_udp)
            .bool("lan_discovery", self.lan_discovery)
            .str("name", self.name.as_deref().unwrap_or(""))
            .str("domain", &self.domain)
            .bool("share_lan_names", self.share_lan_names)
            .raw(
                "discovery_interface",
                &format!(
                    "[{}]",
                    self.discovery_interfaces
                        .iter()
                        .map(|n| format!("\"{n}\""))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            )
            .str("overlay_ipv4", &self.overlay_ipv4.prefix().to_string())
            .raw("bootstrap", &format!("[{}]", boot.join(",")))
            .finish()
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.into(),
            line: 0,
            option: None,
            value: None,
            msg: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses UCI text (the first `config shadowmesh` section); `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let sections = uci::parse(text).map_err(|e| ConfigError {
            file: file.into(),
            line: e.line,
            option: None,
            value: None,
            msg: e.msg,
        })?;
        let sec = sections
            .iter()
            .find(|s| s.ty == "shadowmesh")
            .ok_or_else(|| ConfigError {
                file: file.into(),
                line: 0,
                option: None,
                value: None,
                msg: "no 'config shadowmesh' section".into(),
            })?;
        let mut c = Config::default();
        let mut route_lines = vec![];
        let mut port = DEFAULT_PORT;
        let mut ip = c.listen.ip();
        for o in &sec.options {
            let bad = |value: &str, msg: String| ConfigError {
                file: file.into(),
                line: o.line,
                option: Some(o.name.clone()),
                value: Some(value.into()),
                msg,
            };
            let single = |o: &Opt| -> Result<String, ConfigError> {
                match &o.value {
                    Value::Single(v) => Ok(v.clone()),
                    Value::List(_) => Err(ConfigError {
                        file: file.into(),
                        line: o.line,
                        option: Some(o.name.clone()),
                        value: None,
                        msg: "is a single value: use 'option', not 'list'".into(),
                    }),
                }
            };
            let list = |o: &Opt| -> Vec<String> {
                match &o.value {
                    Value::Single(v) => vec![v.clone()],
                    Value::List(v) => v.clone(),
                }
            };
            match o.name.as_str() {
                "enabled" => {
                    let v = single(o)?;
                    c.enabled = parse_bool(&v).map_err(|m| bad(&v, m))?;
                }
                "lan_discovery" => {
                    let v = single(o)?;
                    c.lan_discovery = parse_bool(&v).map_err(|m| bad(&v, m))?;
                }
                "plain_udp" => {
                    let v = single(o)?;
                    c.plain_udp = parse_bool(&v).map_err(|m| bad(&v, m))?;
                }
                "tunnel" => {
                    let v = single(o)?;
                    c.tunnel = parse_bool(&v).map_err(|m| bad(&v, m))?;
                }
                "offload" => {
                    let v = single(o)?;
                    c.offload = parse_bool(&v).map_err(|m| bad(&v, m))?;
                }
                "port_mapping" => {
                    let v = single(o)?;
                    c.port_mapping = parse_bool(&v).map_err(|m| bad(&v, m))?;
                }
                "exit_node" => {
                    let v = single(o)?;
                    c.exit_node = parse_bool(&v).map_err(|m| bad(&v, m))?;
                }
                "exit" => {
                    let v = single(o)?;
                    c.exit = crate::exit::parse_choice(&v).map_err(|m| bad(&v, m))?;
                }
                "exit_fail" => {
                    let v = single(o)?;
                    c.exit_fail = crate::exit::parse_fail(&v).map_err(|m| bad(&v, m))?;
                }
                "exit_bypass" => {
                    for v in list(o) {
                        c.exit_bypass.push(parse_cidr(&v).map_err(|m| bad(&v, m))?);
                    }
                }
                "accept_routes" => {
                    let v = single(o)?;
                    c.accept_routes = parse_bool(&v).map_err(|m| bad(&v, m))?;
                }
                "overlay_ipv4" => {
                    let v = single(o)?;
                    c.overlay_ipv4 = parse_overlay_ipv4(&v).map_err(|m| bad(&v, m))?;
                }
                "accept_route" => {
                    for v in list(o) {
                        c.accept_route.push(parse_cidr(&v).map_err(|m| bad(&v, m))?);
                    }
                }
                "relay" => {
                    let v = single(o)?;
                    c.relay = parse_relay(&v).map_err(|m| bad(&v, m))?;
                }
                "fast_lane" => {
                    let v = single(o)?;
                    c.fast_lane = parse_bool(&v).map_err(|m| bad(&v, m))?;
                }
                "seed" => {
                    let v = single(o)?;
                    c.seed = parse_bool(&v).map_err(|m| bad(&v, m))?;
                }
                "listen_port" => {
                    let v = single(o)?;
                    port = v
                        .parse()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| bad(&v, "not a port (1-65535)".into()))?;
                }
                "listen_address" => {
                    let v = single(o)?;
                    ip = v.parse().map_err(|_| bad(&v, "not an IP address".into()))?;
                }
                "interface" => {
                    let v = single(o)?;
                    c.interface = parse_ifname(&v).map_err(|m| bad(&v, m))?;
                }
                "name" => {
                    let v = single(o)?;
                    if !shadowmesh_proto::dns::is_label(&v) {
                        return Err(bad(
                            &v,
                            "a name is 1-63 of a-z 0-9 -, not starting or ending with -".into(),
                        ));
                    }
                    c.name = Some(v);
                }
                "domain" => {
                    let v = single(o)?;
                    let ok = v.len() <= 200 && v.split('.').all(shadowmesh_proto::dns::is_label);
                    if !ok {
                        return Err(bad(
                            &v,
                            "a domain is labels of a-z 0-9 - joined by dots".into(),
                        ));
                    }
                    c.domain = v;
                }
                "hosts_file" | "dnsmasq_pidfile" | "dhcp_leases" => {
                    let v = single(o)?;
                    if !v.starts_with('/') {
                        return Err(bad(&v, "expected an absolute path".into()));
                    }
                    let p = PathBuf::from(v);
                    match o.name.as_str() {
                        "hosts_file" => c.hosts_file = Some(p),
                        "dnsmasq_pidfile" => c.dnsmasq_pidfile = Some(p),
                        _ => c.dhcp_leases = p,
                    }
                }
                "share_lan_names" => {
                    let v = single(o)?;
                    c.share_lan_names = parse_bool(&v).map_err(|m| bad(&v, m))?;
                }
                "discovery_interface" => {
                    for v in list(o) {
                        let name = parse_ifname(&v).map_err(|m| bad(&v, m))?;
                        if !c.discovery_interfaces.contains(&name) {
                            c.discovery_interfaces.push(name);
                        }
                    }
                }
                "key_file" | "state_dir" => {
                    let v = single(o)?;
                    if !v.starts_with('/') && !v.starts_with('.') {
                        return Err(bad(&v, "expected a path".into()));
                    }
                    if o.name == "key_file" {
                        c.key_file = v.into();
                    } else {
                        c.state_dir = v.into();
                    }
                }
                "network_key" => {
                    let v = zeroize::Zeroizing::new(single(o)?);
                    // The value is a secret: the error names the option and the line, never it.
                    let k = NetworkKey::from_hex(&v).ok_or_else(|| ConfigError {
                        value: None,
                        ..bad(
                            "",
                            format!("expected 64 hex digits (got {} characters)", v.len()),
                        )
                    })?;
                    c.network_key = Some(k);
                }
                "log_level" => {
                    let v = single(o)?;
                    c.log_level = crate::logger::parse_level(&v).ok_or_else(|| {
                        bad(&v, "expected error, warn, info, debug or trace".into())
                    })?;
                }
                "mtu" => {
                    let v = single(o)?;
                    let m: u16 = v.parse().map_err(|_| bad(&v, "not a number".into()))?;
                    if !(1280..=9000).contains(&m) {
                        return Err(bad(
                            &v,
                            "must be 1280-9000 (Linux drops IPv6 below 1280)".into(),
                        ));
                    }
                    c.mtu = Some(m);
                }
                "bootstrap" => {
                    for v in list(o) {
                        c.bootstrap
                            .push(parse_bootstrap(&v).map_err(|m| bad(&v, m))?);
                    }
                }
                "advertise" => {
                    for v in list(o) {
                        c.advertise.push(
                            parse_host_port(&v).map_err(|m| {
                                bad(&v, format!("expected IP:PORT or NAME:PORT: {m}"))
                            })?,
                        );
                    }
                }
                "route" => {
                    for v in list(o) {
                        let r = parse_cidr(&v).map_err(|m| bad(&v, m))?;
                        route_lines.push((r, o.line));
                        c.routes.push(r);
                    }
                }
                "allowed_peer" => {
                    for v in list(o) {
                        c.allowed_peers.push(
                            v.parse()
                                .map_err(|_| bad(&v, "a PeerId is 64 hex digits".into()))?,
                        );
                    }
                }
                other => c.ignored.push(ConfigError {
                    file: file.into(),
                    line: o.line,
                    option: Some(other.into()),
                    value: None,
                    msg: "unknown to this version: ignored".into(),
                }),
            }
        }
        if c.seed && c.network_key.take().is_some() {
            log::warn!(
                "{}: option 'seed' is 1: option 'network_key' is ignored (a seed carries no packets)",
                file.display()
            );
        }
        // What we advertise must be a LAN: never a default route, never the overlay.
        let policy = RoutePolicy {
            overlay: overlay_prefixes(c.overlay_ipv4, c.network_key.as_deref()),
            ..RoutePolicy::default()
        };
        for (r, line) in route_lines {
            let p = Prefix::new(r.addr, r.prefix_len).expect("parse_cidr checked the length");
            if let Some(why) = policy.refuse_own(p) {
                return Err(ConfigError {
                    file: file.into(),
                    line,
                    option: Some("route".into()),
                    value: Some(p.to_string()),
                    msg: format!(
                        "{why}: list route names a LAN behind this gateway{}",
                        if p.len == 0 {
                            " (exit nodes are not routes)"
                        } else {
                            ""
                        }
                    ),
                });
            }
        }
        c.listen = SocketAddr::new(ip, port);
        if c.advertise.is_empty() && !ip.is_unspecified() {
            c.advertise.push(HostPort::Addr(c.listen));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests;
