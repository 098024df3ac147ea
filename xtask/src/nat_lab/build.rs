//! The lab's network: the internet router with its delay line and loss, the seed, the two
//! public members, and each gateway behind its NAT router (and the carrier's, for `double`),
//! every daemon started.

use super::*;

/// Builds the lab; returns the seed, the members (the public ones first, then `gw1`...), and
/// the public side's impairment (on).
pub(super) fn build(lab: &mut Lab, say: &dyn Fn(&str)) -> Result<(Node, Vec<Member>, Impairment)> {
    say(&format!(
        "building the NAT lab: a seed, two public members, {} gateways behind NAT routers",
        NATS.len()
    ));
    let inet = lab.ns("inet")?;
    lab.sysctl(&inet, "net.ipv4.ip_forward=1")?;
    let impairment = Impairment::on(lab, &inet, DELAY_MS, LOSS_PCT)?;
    say(&format!(
        "the public side: {DELAY_MS} ms of delay and {LOSS_PCT}% loss per crossing"
    ));
    let nk = crate::support::random_network_key()?;

    let (seed, boot) = crate::nat_lab::start_seed(lab, &inet)?;

    let mut members = vec![];
    // Two public members (the second a relay for when the first one dies).
    for (name, net) in [("p", "203.0.113"), ("q", "192.0.2")] {
        let ns = lab.ns(name)?;
        uplink(&inet, &ns, "eth0", net)?;
        let (key, id) = lab.keygen(name)?;
        let node = Node {
            name: name.into(),
            config: lab.write_config(name, &key, Some(&nk), Some(&boot), &[])?,
            ns,
            underlay: format!("{net}.2"),
            peer_id: id,
            lan: None,
        };
        lab.start(&node)?;
        members.push(Member {
            node,
            nat: "none",
            public_ip: format!("{net}.2"),
        });
    }
    for (i, kind) in NATS.iter().enumerate() {
        let i = i + 1;
        let name = format!("gw{i}");
        let router = lab.ns(&format!("nat{i}"))?;
        let wan = if *kind == "upnp" {
            format!("198.20.{i}")
        } else {
            format!("198.18.{i}")
        };
        if *kind == "double" {
            // A home router behind the ISP's carrier-grade NAT: the home router's WAN is in
            // 100.64.0.0/10, and the carrier's router masquerades that to the internet.
            let cgn = lab.ns(&format!("cgn{i}"))?;
            uplink(&inet, &cgn, "wan0", &wan)?;
            lab.sysctl(&cgn, "net.ipv4.ip_forward=1")?;
            ip(&[
                "-n", &cgn, "link", "add", "lan0", "type", "veth", "peer", "name", "wan0", "netns",
                &router,
            ])?;
            let home_wan = format!("100.64.{i}.2");
            ip(&[
                "-n",
                &cgn,
                "addr",
                "add",
                &format!("100.64.{i}.1/24"),
                "dev",
                "lan0",
            ])?;
            ip(&["-n", &cgn, "link", "set", "lan0", "up"])?;
            ip(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("{home_wan}/24"),
                "dev",
                "wan0",
            ])?;
            ip(&["-n", &router, "link", "set", "wan0", "up"])?;
            ip(&[
                "-n",
                &router,
                "route",
                "add",
                "default",
                "via",
                &format!("100.64.{i}.1"),
            ])?;
            nft(&cgn, &nat_rules("port-restricted", &home_wan))?;
        } else {
            uplink(&inet, &router, "wan0", &wan)?;
        }
        lab.sysctl(&router, "net.ipv4.ip_forward=1")?;
        let gw = lab.ns(&name)?;
        ip(&[
            "-n", &router, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns",
            &gw,
        ])?;
        let inside = format!("10.{i}.0.2");
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("10.{i}.0.1/24"),
            "dev",
            "lan0",
        ])?;
        ip(&["-n", &router, "link", "set", "lan0", "up"])?;
        ip(&[
            "-n",
            &gw,
            "addr",
            "add",
            &format!("{inside}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &gw, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &gw,
            "route",
            "add",
            "default",
            "via",
            &format!("10.{i}.0.1"),
        ])?;
        nft(&router, &nat_rules(kind, &inside))?;
        if *kind == "upnp" {
            nft(&router, net::MINIUPNPD_TABLE)?;
            net::start_miniupnpd(lab, &router, i, false)?;
        }
        let (key, id) = lab.keygen(&name)?;
        // gw3 knows the seed by name only, as a home router knows another by its dynamic-DNS
        // name: its namespace's /etc/hosts has it.
        let boot = if *kind == "full-cone" {
            lab.etc_file(&gw, "hosts", "198.51.100.2 seed.mesh.example\n")?;
            format!("{}@seed.mesh.example:4433", seed.peer_id)
        } else {
            boot.clone()
        };
        let node = Node {
            config: lab.write_config(&name, &key, Some(&nk), Some(&boot), &[])?,
            name,
            ns: gw,
            underlay: inside,
            peer_id: id,
            lan: None,
        };
        lab.start(&node)?;
        members.push(Member {
            node,
            nat: kind,
            public_ip: format!("{wan}.2"),
        });
    }

    Ok((seed, members, impairment))
}
