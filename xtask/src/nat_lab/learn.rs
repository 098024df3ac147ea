//! What the members learn before the matrix: where others see them, their NAT, the port their
//! router forwards, the relays they keep, and that their records say so.

use super::*;

/// Waits for every member to learn its address and NAT, and checks what each learnt; returns
/// each member's last `status`.
pub(super) fn learn(lab: &mut Lab, members: &[Member], rep: &mut Report) -> Result<Vec<String>> {
    // Every member learns where others see it, and what NAT it is behind.
    let t = Instant::now();
    let want = |m: &Member| match m.nat {
        "none" => "none",
        "symmetric" => "endpoint-dependent",
        _ => "endpoint-independent",
    };
    let mut status: Vec<String> = vec![String::new(); members.len()];
    while t.elapsed() < Duration::from_secs(60) {
        sleep(Duration::from_millis(500))?;
        for (m, s) in members.iter().zip(status.iter_mut()) {
            *s = lab.ctl(&m.node, "status");
        }
        let settled = members.iter().zip(&status).all(|(m, s)| {
            field(s, "nat").as_deref() == Some(want(m))
                && (m.nat == "symmetric" || observed(s).len() == 1)
        });
        if settled {
            break;
        }
    }
    let learnt = t.elapsed();
    for (m, s) in members.iter().zip(&status) {
        let nat = field(s, "nat").unwrap_or_default();
        let observed = observed(s);
        // Behind an endpoint-independent NAT, one address: the WAN's, with whatever port the
        // NAT mapped 4433 to (Linux keeps the port where it can, not always); behind a
        // symmetric one, none (no port is seen twice); a public member, its own.
        let right = match m.nat {
            "symmetric" => observed.is_empty(),
            "none" => observed == [format!("{}:4433", m.public_ip)],
            _ => observed.len() == 1 && observed[0].starts_with(&format!("{}:", m.public_ip)),
        };
        rep.check(
            &format!(
                "{} ({}) learns its NAT and public address",
                m.node.name, m.nat
            ),
            nat == want(m) && right,
            format!(
                "nat {nat}, observed {observed:?}, within {:.1} s",
                learnt.as_secs_f64()
            ),
        );
    }

    // The gateway behind the router that maps ports asked it to, and got its port forwarded.
    for (m, st) in members.iter().zip(&status).filter(|(m, _)| m.nat == "upnp") {
        let pm = st
            .split("\"port_mapping\":")
            .nth(1)
            .and_then(|r| r.split('}').next())
            .unwrap_or_default()
            .to_string();
        rep.check(
            &format!("{} ({}) maps its port on its router", m.node.name, m.nat),
            pm.contains("\"state\":\"mapped\"")
                && pm.contains(&format!("\"external\":\"{}:", m.public_ip)),
            format!("port_mapping {pm}}}"),
        );
    }

    // gw3 was given its seed by name: it joined through it.
    let gw3 = &members[4];
    let contacts = field(&status[4], "dht_contacts")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    rep.check(
        "gw3 joins through a bootstrap given by name (its /etc/hosts)",
        status[4].contains("seed.mesh.example:4433") && contacts > 0,
        format!(
            "{contacts} DHT contacts; {}",
            lab.log(&gw3.node.name)
                .lines()
                .find(|l| l.contains("resolving"))
                .unwrap_or("resolved")
        ),
    );

    // A gateway's record carries the address it was seen at: the public member finds it there.
    let gw1 = &members[2];
    let seen = observed(&status[2]).first().cloned().unwrap_or_default();
    let t = Instant::now();
    let mut found = String::new();
    while t.elapsed() < Duration::from_secs(20) {
        found = lookup(lab, &members[0].node, &gw1.node.peer_id);
        if found.contains(&format!("\"{seen}\"")) {
            break;
        }
        sleep(Duration::from_millis(500))?;
    }
    rep.check(
        "gw1's record carries its observed address",
        !seen.is_empty() && found.contains(&format!("\"{seen}\"")),
        match found.split("\"addrs\":").nth(1) {
            Some(a) => format!("addrs {}]", a.split(']').next().unwrap_or("")),
            None => found.clone(),
        },
    );

    // Each gateway behind a NAT keeps links with two relays (the public members) and its
    // record names them with its NAT class: a member that cannot dial it asks them first.
    let names = |ids: &[String]| -> Vec<String> {
        ids.iter()
            .map(|id| {
                members
                    .iter()
                    .find(|m| m.node.peer_id == *id)
                    .map_or(id.clone(), |m| m.node.name.clone())
            })
            .collect()
    };
    let t = Instant::now();
    for m in members.iter().filter(|m| m.nat != "none") {
        let (mut kept, mut found) = (vec![], String::new());
        let settled = |kept: &[String], found: &str| {
            let mut named = list_of(found, "relays");
            let mut k = kept.to_vec();
            named.sort();
            k.sort();
            kept.len() == 2 && named == k && found.contains(&format!("\"nat\":\"{}\"", want(m)))
        };
        while t.elapsed() < Duration::from_secs(30) {
            let st = lab.ctl(&m.node, "status");
            kept = st
                .split("\"relay\":{")
                .nth(1)
                .map(|r| list_of(r, "kept"))
                .unwrap_or_default();
            found = lookup(lab, &members[0].node, &m.node.peer_id);
            if settled(&kept, &found) {
                break;
            }
            sleep(Duration::from_millis(500))?;
        }
        let public: Vec<&str> = members[..2]
            .iter()
            .map(|m| m.node.peer_id.as_str())
            .collect();
        rep.check(
            &format!(
                "{} ({}) keeps two relays and its record names them",
                m.node.name, m.nat
            ),
            settled(&kept, &found) && kept.iter().all(|k| public.contains(&k.as_str())),
            format!(
                "keeps {:?}; its record: nat {}, relays {:?}",
                names(&kept),
                field(&found, "nat").unwrap_or_default(),
                names(&list_of(&found, "relays"))
            ),
        );
    }

    Ok(status)
}
