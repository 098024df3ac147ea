//! What happens to the mesh after the matrix, each checked: a relayed GB's cost, a stranger's
//! forged relay datagrams, a NAT rebinding and a relay killed mid-transfer, a gateway restarted
//! on another port, a home router renumbered, and a port mapping deleted on stop.

use super::*;

/// Runs the events in order (each leaves the lab as the next expects it).
pub(super) fn events(
    lab: &mut Lab,
    seed: &Node,
    members: &[Member],
    overlay: &[String],
    relays: &[Node],
    rep: &mut Report,
    say: &dyn Fn(&str),
) -> Result<()> {
    // The public members, for lookups: one of them is killed on the way.
    let public = [&members[0].node, &members[1].node];
    // What a relayed GB costs its relay, against what a direct GB costs its sender: gw1 to gw4
    // (relayed) and gw1 to gw3 (direct), each run's CPU time over the bytes it moved.
    let mut cost = [0.0f64; 2];
    for (i, b) in [5usize, 4].into_iter().enumerate() {
        let (from, to) = (members[2].node.clone(), members[b].node.clone());
        let peers = lab::members(&lab.ctl(&from, "peers"));
        let via = lab::member_of(&peers, &to.peer_id)
            .and_then(|m| field(m, "relay"))
            .and_then(|r| relays.iter().find(|n| n.peer_id == r))
            .map(|n| n.name.clone());
        let who = if i == 0 {
            via.clone()
        } else {
            Some(from.name.clone())
        };
        let Some(who) = who else {
            break;
        };
        let before = cpu_ticks(lab, &who);
        let mbps = lab::iperf3(lab, &to.ns, &from.ns, &overlay[b], COST_SECONDS)?;
        let ms = cpu_ticks(lab, &who).saturating_sub(before) as f64 * 1e3 / clock_ticks() as f64;
        let gb = mbps * COST_SECONDS as f64 / 8e3;
        cost[i] = if gb > 0.0 { ms / gb } else { 0.0 };
        say(&format!(
            "{} to {} ({}): {mbps:.0} Mbit/s, {ms:.0} ms of CPU at {who}",
            from.name,
            to.name,
            if i == 0 { "relayed" } else { "direct" }
        ));
    }
    if cost.iter().all(|c| *c > 0.0) {
        let (r, d) = (cost[0], cost[1]);
        say(&format!(
            "CPU per GB: {r:.0} ms at the relay for a relayed pair, {d:.0} ms at the sender of a direct one ({:.2}x)",
            r / d
        ));
        rep.cost = Some((r, d));
    }
    // A stranger (the seed holds no network key) sends the relay envelopes with made-up
    // circuit ids: none is forwarded, each is counted as dropped.
    let relay = &members[0];
    let dropped = |s: &str| {
        s.split("\"relay\":{")
            .nth(1)
            .and_then(|r| field(&format!("{{{r}"), "dropped"))
            .and_then(|b| b.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = dropped(&lab.ctl(&relay.node, "status"));
    let forged = (1..=20u32)
        .map(|i| {
            format!(
                "printf 'SMSH\\xff\\x01\\x00\\x00\\x00\\x{i:02x}forged' > /dev/udp/{}/4433",
                relay.public_ip
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let _ = lab::netns_exec(&seed.ns, &["bash", "-c", &forged]).status();
    sleep(Duration::from_millis(500))?;
    let after = dropped(&lab.ctl(&relay.node, "status"));
    rep.check(
        "a stranger's relayed datagrams go nowhere",
        after >= before + 20,
        format!(
            "20 sent, {} dropped by the relay",
            after.saturating_sub(before)
        ),
    );

    // NAT rebinding mid-transfer: both routers of a direct pair lose every mapping at once
    // (conntrack flushed); the next packets each side sends map afresh and meet, as a hole
    // punch does.
    let (a, b) = (members[2].node.clone(), members[3].node.clone());
    let nats = [ns_of(lab, "nat1"), ns_of(lab, "nat2")];
    let t = transfer(lab, &a, &b, &overlay[3], 10, Duration::from_secs(3), |_| {
        for n in &nats {
            let ok = lab::netns_exec(n, &["conntrack", "-F"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!(
                    "conntrack -F in {n} failed (apt-get install conntrack)"
                ));
            }
        }
        Ok(())
    })?;
    say(&format!("NAT rebinding mid-transfer: {t}"));
    rep.check(
        "gw1 to gw2: iperf3 completes across both NATs losing their mappings",
        t.completed,
        t.to_string(),
    );
    rep.rebinding_gap_s = Some(t.gap_s);

    // The relay of a relayed pair dies mid-transfer: the pair's data goes unanswered, its link
    // is given up after UNANSWERED_AFTER, and the next packets are introduced again through the
    // other relay.
    let (a, b) = (members[3].node.clone(), members[5].node.clone());
    let peers = lab::members(&lab.ctl(&a, "peers"));
    let via = lab::member_of(&peers, &b.peer_id)
        .and_then(|m| field(m, "relay"))
        .and_then(|r| relays.iter().find(|n| n.peer_id == r).cloned());
    match via {
        Some(r) => {
            let other = relays.iter().find(|n| n.name != r.name).cloned();
            let t = transfer(
                lab,
                &a,
                &b,
                &overlay[5],
                20,
                Duration::from_secs(4),
                |lab| lab.kill9(&r.name),
            )?;
            let peers = lab::members(&lab.ctl(&a, "peers"));
            let now_via = lab::member_of(&peers, &b.peer_id).and_then(|m| field(m, "relay"));
            say(&format!(
                "relay {} killed mid-transfer (gw2 to gw4): {t}; now through {}",
                r.name,
                now_via.as_deref().map_or("nothing".into(), |v| relays
                    .iter()
                    .find(|n| n.peer_id == v)
                    .map_or(v.to_string(), |n| n.name.clone()))
            ));
            rep.check(
                &format!("gw2 to gw4: iperf3 completes when relay {} dies", r.name),
                t.completed && now_via.is_some() && now_via == other.map(|o| o.peer_id),
                t.to_string(),
            );
            rep.relay_kill_gap_s = Some(t.gap_s);
        }
        None => rep.check(
            "gw2 to gw4 goes through a relay before one is killed",
            false,
            "not relayed".into(),
        ),
    }

    // gw1 restarts on another port (a reboot, a NAT that moved it): gw2 still holds its old
    // connection, and gw2's NAT lets nothing in from gw1's new port. gw1 learns of gw2 from the
    // public member, and its dial only completes because the public member introduces them.
    let gw1 = members[2].node.clone();
    lab.kill9(&gw1.name)?;
    let conf = std::fs::read_to_string(&gw1.config).map_err(|e| e.to_string())?;
    std::fs::write(
        &gw1.config,
        conf.replace("listen_port '4433'", "listen_port '4434'"),
    )
    .map_err(|e| e.to_string())?;
    lab.start(&gw1)?;
    let t = Instant::now();
    let up = lab::until_reachable(&gw1.ns, &overlay[3], Duration::from_secs(20))?;
    rep.check(
        "gw1, restarted on a new port, reaches gw2 (both port-restricted) through an introduction",
        up.is_some(),
        match up {
            Some(_) => format!("first reply after {:.1} s", t.elapsed().as_secs_f64()),
            None => "no reply in 20 s".into(),
        },
    );

    // gw2's home router gets a new public address from its ISP (the lab renumbers its WAN
    // side, and its mappings go with the old one). Nothing changes on gw2 itself: its members
    // find the links to the old address dead (their data unanswered, or silence) and meet it
    // again by dialling and introductions, and gw2 learns its new address from other nodes.
    let nat2 = ns_of(lab, "nat2");
    ip(&["-n", &nat2, "addr", "del", "198.18.2.2/24", "dev", "wan0"])?;
    ip(&["-n", &nat2, "addr", "add", "198.18.2.3/24", "dev", "wan0"])?;
    ip(&[
        "-n",
        &nat2,
        "route",
        "replace",
        "default",
        "via",
        "198.18.2.1",
    ])?;
    let _ = lab::netns_exec(&nat2, &["conntrack", "-F"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let t0 = Instant::now();
    // From members the events above left alone (a relay was killed, gw1 restarted).
    for i in [4usize, 5, 6] {
        let from = &members[i];
        let left = RENUMBERED.saturating_sub(t0.elapsed());
        let up = lab::until_reachable(&from.node.ns, &overlay[3], left)?;
        rep.check(
            &format!(
                "{} reaches gw2 again after gw2's router was renumbered",
                from.node.name
            ),
            up.is_some(),
            match up {
                Some(_) => format!("{:.1} s after the renumbering", t0.elapsed().as_secs_f64()),
                None => format!("no reply in {} s", RENUMBERED.as_secs()),
            },
        );
    }
    // gw2 learns its new address from the nodes that see it, and republishes its record.
    let (mut seen, mut found) = (vec![], String::new());
    let moved =
        |seen: &[String]| !seen.is_empty() && seen.iter().all(|a| a.starts_with("198.18.2.3:"));
    while t0.elapsed() < RENUMBERED {
        seen = observed(&lab.ctl(&members[3].node, "status"));
        if moved(&seen) {
            // Through a public member still running (one of the two relays was killed).
            found = lookup_any(lab, &public, &members[3].node.peer_id);
            if found.contains("\"198.18.2.3:") && !found.contains("\"198.18.2.2:") {
                break;
            }
        }
        sleep(Duration::from_millis(500))?;
    }
    let took = t0.elapsed().as_secs_f64();
    rep.check(
        "gw2 learns its new address and republishes its record",
        moved(&seen) && found.contains("\"198.18.2.3:"),
        format!(
            "observed {seen:?} {took:.1} s after the renumbering; a public member finds addrs {}",
            found
                .split("\"addrs\":")
                .nth(1)
                .and_then(|a| a.split(']').next())
                .map_or("-".into(), |a| format!("{a}]"))
        ),
    );
    rep.renumbered_observed_s = moved(&seen).then_some(took);

    // A gateway that stops deletes the mapping it holds on its router; then the same router
    // speaks UPnP IGD alone (no PCP, no NAT-PMP, as many ISP routers): the gateway, started
    // again, maps its port over UPnP once PCP and NAT-PMP went unanswered, its record carries
    // the mapped address, and it deletes the mapping when it stops.
    if let Some(i) = NATS.iter().position(|k| *k == "upnp") {
        let m = &members[i + 2];
        let router = ns_of(lab, &format!("nat{}", i + 1));
        deleted_on_stop(lab, &m.node.name, &router, "PCP", rep)?;
        net::start_miniupnpd(lab, &router, i + 1, true)?;
        lab.start(&m.node)?;
        let t = Instant::now();
        let (mut pm, mut found) = (String::new(), String::new());
        while t.elapsed() < Duration::from_secs(30) {
            let st = lab.ctl(&m.node, "status");
            pm = st
                .split("\"port_mapping\":")
                .nth(1)
                .and_then(|r| r.split('}').next())
                .unwrap_or_default()
                .to_string();
            let ext = field(&format!("{pm}}}"), "external").unwrap_or_default();
            if pm.contains("\"protocol\":\"upnp\"") && !ext.is_empty() {
                found = lookup_any(lab, &public, &m.node.peer_id);
                if found.contains(&format!("\"{ext}\"")) {
                    break;
                }
            }
            sleep(Duration::from_millis(500))?;
        }
        let ext = field(&format!("{pm}}}"), "external").unwrap_or_default();
        rep.check(
            &format!(
                "{} maps its port over UPnP IGD where the router speaks nothing else",
                m.node.name
            ),
            pm.contains("\"protocol\":\"upnp\"")
                && ext.starts_with(&format!("{}:", m.public_ip))
                && found.contains(&format!("\"{ext}\"")),
            format!(
                "port_mapping {pm}}} after {:.1} s; its record's addrs {}",
                t.elapsed().as_secs_f64(),
                found
                    .split("\"addrs\":")
                    .nth(1)
                    .and_then(|a| a.split(']').next())
                    .map_or("-".into(), |a| format!("{a}]"))
            ),
        );
        deleted_on_stop(lab, &m.node.name, &router, "UPnP", rep)?;
    }
    Ok(())
}

/// Stops gateway `name` (SIGTERM) and checks that it deleted the forward its router
/// (`router`, running miniupnpd) held for it over `protocol`, and exited.
fn deleted_on_stop(
    lab: &mut Lab,
    name: &str,
    router: &str,
    protocol: &str,
    rep: &mut Report,
) -> Result {
    let forwards = || {
        lab::netns_exec(
            router,
            &[
                "nft",
                "list",
                "chain",
                "inet",
                "miniupnpd",
                "prerouting_miniupnpd",
            ],
        )
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).matches("dnat").count())
        .unwrap_or(0)
    };
    let before = forwards();
    lab.signal(name, libc::SIGTERM)?;
    let t = Instant::now();
    while forwards() > 0 && t.elapsed() < Duration::from_secs(10) {
        sleep(Duration::from_millis(100))?;
    }
    let (after, took) = (forwards(), t.elapsed().as_secs_f64());
    let exited = lab.wait_exit(name, Duration::from_secs(10))?;
    rep.check(
        &format!("{name} deletes its port mapping ({protocol}) when it stops"),
        before > 0 && after == 0 && exited,
        format!(
            "{before} forward(s) on the router before SIGTERM, {after} {took:.1} s after; {}",
            if exited {
                format!("exited after {:.1} s", t.elapsed().as_secs_f64())
            } else {
                "still running 10 s after".into()
            }
        ),
    );
    Ok(())
}
