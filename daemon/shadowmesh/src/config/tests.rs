//! The configuration parser's tests: every option, its default and its errors.

use super::*;

const ID: &str = "abababababababababababababababababababababababababababababababab";

fn parse(t: &str) -> Result<Config, ConfigError> {
    Config::parse(t, Path::new("/etc/config/shadowmesh"))
}

#[test]
fn started_options_name_the_key_only_by_fingerprint() {
    let nk = "11".repeat(32);
    let t = format!(
        "config shadowmesh\n option listen_port '5000'\n option network_key '{nk}'\n list bootstrap '{ID}@127.0.0.1:4433'\n option mtu 1380\n option fast_lane 0\n"
    );
    let j = parse(&t).unwrap().started_json();
    for want in [
        "\"listen_port\":5000".to_string(),
        "\"listen_address\":\"0.0.0.0\"".into(),
        "\"mtu\":\"1380\"".into(),
        "\"fast_lane\":false".into(),
        "\"seed\":false".into(),
        "\"overlay_ipv4\":\"10.100.0.0/16\"".into(),
        format!("\"bootstrap\":[\"{ID}@127.0.0.1:4433\"]"),
    ] {
        assert!(j.contains(&want), "no {want} in {j}");
    }
    assert!(!j.contains(&nk), "{j}");
    let id = |k: &str| {
        let c = parse(&format!("config shadowmesh\n option network_key '{k}'\n")).unwrap();
        let j = c.started_json();
        let i = j.find("\"network_key_id\":\"").unwrap() + 18;
        j[i..i + 16].to_string()
    };
    assert_eq!(id(&nk), id(&nk));
    assert_ne!(id(&nk), id(&"12".repeat(32)));
    assert!(parse("config shadowmesh\n")
        .unwrap()
        .started_json()
        .contains("\"network_key_id\":\"\",\"listen"));
}

#[test]
fn full_config() {
    let t = format!(
        "config shadowmesh 'main'\n option listen_address '127.0.0.1'\n option listen_port '5000'\n option network_key '{}'\n list bootstrap '{ID}@127.0.0.1:4433'\n list route '192.168.1.0/24'\n list route 'fd12::/64'\n option mtu 1380\n option log_level debug\n",
        "11".repeat(32)
    );
    let c = parse(&t).unwrap();
    assert_eq!(c.listen, "127.0.0.1:5000".parse().unwrap());
    assert_eq!(c.advertise, vec![HostPort::Addr(c.listen)]);
    assert_eq!(c.network_key.as_deref(), Some(&[0x11; 32]));
    assert_eq!(c.bootstrap.len(), 1);
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.mtu, Some(1380));
    assert_eq!(parse("config shadowmesh\n").unwrap(), Config::default());
}

#[test]
fn bootstrap_and_advertise_take_names() {
    let c = parse(&format!(
        "config shadowmesh\n list bootstrap '{ID}@seed.example.net:4433'\n list advertise 'home.dyndns.example:4433'\n list advertise '192.0.2.7:4433'\n"
    ))
    .unwrap();
    assert_eq!(
        c.bootstrap[0].1,
        HostPort::Name("seed.example.net".into(), 4433)
    );
    assert_eq!(
        c.advertise,
        [
            HostPort::Name("home.dyndns.example".into(), 4433),
            HostPort::Addr("192.0.2.7:4433".parse().unwrap())
        ]
    );
    let e = parse("config shadowmesh\n list advertise 'bad_name:4433'\n").unwrap_err();
    assert_eq!(e.option.as_deref(), Some("advertise"));
    assert!(e.msg.contains("NAME:PORT"), "{}", e.msg);
}

#[test]
fn port_mapping_is_on_unless_turned_off() {
    assert!(parse("config shadowmesh\n").unwrap().port_mapping);
    let c = parse("config shadowmesh\n option port_mapping '0'\n").unwrap();
    assert!(!c.port_mapping);
    let e = parse("config shadowmesh\n option port_mapping 'upnp'\n").unwrap_err();
    assert_eq!(e.option.as_deref(), Some("port_mapping"));
}

#[test]
fn lan_discovery_is_on_and_interfaces_are_names() {
    let c = parse("config shadowmesh\n").unwrap();
    assert!(c.lan_discovery && c.discovery_interfaces.is_empty());
    let c = parse(
        "config shadowmesh\n option lan_discovery '0'\n list discovery_interface 'br-lan'\n list discovery_interface 'eth1.5'\n list discovery_interface 'br-lan'\n",
    )
    .unwrap();
    assert!(!c.lan_discovery);
    assert_eq!(c.discovery_interfaces, ["br-lan", "eth1.5"]);
    let e = parse("config shadowmesh\n list discovery_interface 'eth0; reboot'\n").unwrap_err();
    assert_eq!(e.option.as_deref(), Some("discovery_interface"));
}

#[test]
fn names_are_labels_and_domains_labels_with_dots() {
    let c = parse("config shadowmesh\n").unwrap();
    assert_eq!(
        (c.name, c.domain.as_str(), c.hosts_file),
        (None, "mesh", None)
    );
    let c = parse(
        "config shadowmesh\n option name 'office'\n option domain 'home.arpa'\n option hosts_file '/tmp/h'\n",
    )
    .unwrap();
    assert_eq!(c.name.as_deref(), Some("office"));
    assert_eq!(c.domain, "home.arpa");
    assert_eq!(c.hosts_file, Some(PathBuf::from("/tmp/h")));
    for (opt, v) in [
        ("name", "Office"),
        ("name", "a.b"),
        ("name", "-x"),
        ("domain", "a..b"),
        ("domain", "MESH"),
        ("hosts_file", "hosts"),
    ] {
        let e = parse(&format!("config shadowmesh\n option {opt} '{v}'\n")).unwrap_err();
        assert_eq!(e.option.as_deref(), Some(opt), "{v}");
    }
}

#[test]
fn relay_is_auto_unless_forced() {
    assert_eq!(parse("config shadowmesh\n").unwrap().relay, RelayMode::Auto);
    for (v, want) in [
        ("auto", RelayMode::Auto),
        ("1", RelayMode::On),
        ("0", RelayMode::Off),
    ] {
        let c = parse(&format!("config shadowmesh\n option relay '{v}'\n")).unwrap();
        assert_eq!(c.relay, want);
    }
    let e = parse("config shadowmesh\n option relay 'maybe'\n").unwrap_err();
    assert_eq!(e.option.as_deref(), Some("relay"));
    assert!(e.msg.contains("auto, 1 or 0"), "{}", e.msg);
}

#[test]
fn seed_ignores_network_key() {
    let nk = "22".repeat(32);
    let c = parse(&format!("config shadowmesh\n option network_key '{nk}'\n")).unwrap();
    assert_eq!(
        (c.seed, c.network_key.as_deref()),
        (false, Some(&[0x22; 32]))
    );
    let c = parse(&format!(
        "config shadowmesh\n option seed '1'\n option network_key '{nk}'\n"
    ))
    .unwrap();
    assert_eq!((c.seed, c.network_key), (true, None));
    let e = parse("config shadowmesh\n option seed 'maybe'\n").unwrap_err();
    assert_eq!(e.option.as_deref(), Some("seed"));
}

#[test]
fn errors_name_option_value_and_line() {
    let e = parse("config shadowmesh\n\toption listen_port '70000'\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/config/shadowmesh line 2: option 'listen_port' = '70000': not a port (1-65535)"
    );
    let e = parse("config shadowmesh\n\n\tlist route '192.168.1.1/24'\n").unwrap_err();
    assert_eq!((e.line, e.option.as_deref()), (3, Some("route")));
    assert!(e.msg.contains("host bits"));
    let e = parse("config shadowmesh\n\tlist bootstrap 'nope'\n").unwrap_err();
    assert_eq!(e.value.as_deref(), Some("nope"));
    // An option this version does not know is skipped with a warning, not refused.
    let c = parse("config shadowmesh\n\toption lisen_port '1'\n\toption mtu '1400'\n").unwrap();
    assert_eq!(c.mtu, Some(1400));
    assert_eq!(c.ignored.len(), 1);
    assert_eq!(
        c.ignored[0].to_string(),
        "/etc/config/shadowmesh line 2: option 'lisen_port': unknown to this version: ignored"
    );
    let e = parse("config shadowmesh\n\tlist mtu '1400'\n").unwrap_err();
    assert!(e.msg.contains("single value"));
    let e = parse("config shadowmesh\n\toption mtu '1200'\n").unwrap_err();
    assert!(e.msg.contains("1280"));
    let e = parse("config other\n").unwrap_err();
    assert!(e.msg.contains("no 'config shadowmesh'"));
    let e = parse("config shadowmesh\n\toption network_key 'xyz'\n").unwrap_err();
    assert_eq!(e.option.as_deref(), Some("network_key"));
}

#[test]
fn a_bad_network_key_is_not_echoed() {
    let secret = "c0ffee".repeat(10) + "zz";
    let e = parse(&format!(
        "config shadowmesh\n\toption network_key '{secret}'\n"
    ))
    .unwrap_err();
    assert_eq!(e.option.as_deref(), Some("network_key"));
    assert!(!e.to_string().contains("c0ffee"), "{e}");
    assert!(e.to_string().contains("64 hex digits"), "{e}");
}

#[test]
fn advertised_routes_must_be_lans() {
    let nk = "11".repeat(32);
    let refused = |r: &str| {
        let e = parse(&format!(
            "config shadowmesh\n\toption network_key '{nk}'\n\tlist route '192.168.1.0/24'\n\tlist route '{r}'\n"
        ))
        .unwrap_err();
        // UCI gathers a list under the line of its first entry.
        assert_eq!(
            (e.line, e.option.as_deref()),
            (3, Some("route")),
            "{r}: {e}"
        );
        assert_eq!(e.value.as_deref(), Some(r));
        e.msg
    };
    assert!(refused("0.0.0.0/0").contains("default"));
    assert!(refused("::/0").contains("default"));
    assert!(refused("10.100.3.0/24").contains("overlay"));
    assert!(refused("10.0.0.0/8").contains("overlay"));
    let v6 = V6Prefix::for_network(&[0x11; 32]).prefix();
    assert!(refused(&format!("{}/64", v6.addr)).contains("overlay"));
    assert!(refused("127.0.0.0/8").contains("unicast"));
    assert!(refused("224.0.0.0/4").contains("unicast"));
    let c = parse(&format!(
        "config shadowmesh\n\toption network_key '{nk}'\n\tlist route 'fd00:1::/64'\n\toption accept_routes '0'\n\tlist accept_route '192.168.0.0/16'\n"
    ))
    .unwrap();
    assert_eq!(c.routes.len(), 1);
    assert!(!c.accept_routes);
    assert_eq!(c.accept_route.len(), 1);
}

#[test]
fn overlay_ipv4_is_a_unicast_slash_16() {
    let with = |v: &str, route: &str| {
        parse(&format!(
            "config shadowmesh\n\toption overlay_ipv4 '{v}'\n\tlist route '{route}'\n"
        ))
    };
    let c = with("100.64.0.0/16", "10.100.0.0/16").unwrap();
    assert_eq!(c.overlay_ipv4, V4Prefix { net: [100, 64] });
    assert_eq!(
        parse("config shadowmesh\n").unwrap().overlay_ipv4,
        V4Prefix::default()
    );
    for bad in [
        "10.100.0.0/24",
        "10.100.1.0/16",
        "fd00::/16",
        "224.1.0.0/16",
        "127.0.0.0/16",
        "255.255.0.0/16",
        "10.100.0.0",
    ] {
        let e = with(bad, "192.168.1.0/24").unwrap_err();
        assert_eq!(e.option.as_deref(), Some("overlay_ipv4"), "{bad}: {e}");
    }
    // Our own routes are checked against the overlay we chose, not the default one.
    let e = with("172.20.0.0/16", "172.20.5.0/24").unwrap_err();
    assert!(e.msg.contains("overlay"), "{e}");
}
