//! Members' links: sessions coming up and going down, dialling on demand, records and peer
//! exchange, keepalives, and what `peers` reports.

use super::*;

impl DataPlane {
    /// Takes over the session of a freshly authenticated member connection. Returns `false`
    /// (and closes the connection) if the member is not admitted.
    pub fn add_link(self: &Rc<Self>, mut peer: Peer) -> bool {
        let Some(session) = peer.session.take() else {
            return false;
        };
        let pid = peer.peer_id;
        if !self.admitted(&pid) {
            log::warn!("{} is not on the allowlist: closing", pid.short());
            peer.conn
                .close(VarInt::from_u32(CLOSE_AUTH_FAILED), b"not on the allowlist");
            return false;
        }
        let nk = self.cfg.borrow().network_key.clone();
        let payload = match peer.record.open_payload(&nk) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("{}: unreadable record payload: {e}", pid.short());
                peer.conn
                    .close(VarInt::from_u32(CLOSE_PROTOCOL), b"bad record payload");
                return false;
            }
        };
        let precedence = peer.precedence(&self.cfg.borrow().roster.me);
        let control_rx = peer.control_rx.take();
        let control = Rc::new(tokio::sync::Mutex::new(peer.control));
        let link = Link {
            conn: peer.conn.clone(),
            session,
            paths: Paths::new(peer.conn.remote_address()),
            max_datagram: peer.conn.max_datagram_size(),
            precedence,
            role: peer.role,
            control: control.clone(),
        };
        let up = self
            .members
            .borrow_mut()
            .link_up(crate::mono_now(), pid, link, crate::unix_now());
        let pending = match up {
            LinkUp::Linked { replaced, pending } => {
                if let Some(old) = replaced {
                    old.conn
                        .close(VarInt::from_u32(CLOSE_REPLACED), b"replaced");
                }
                pending
            }
            LinkUp::Refused(link, why) => {
                if why == members::Refusal::EarlierWins {
                    log::debug!("{}: keeping the earlier connection", pid.short());
                } else {
                    log::warn!("{}: link refused: {}", pid.short(), why.as_str());
                }
                let code = match why {
                    members::Refusal::EarlierWins => CLOSE_REPLACED,
                    members::Refusal::Full => CLOSE_BUSY,
                    members::Refusal::IndexInUse => CLOSE_PROTOCOL,
                };
                link.conn
                    .close(VarInt::from_u32(code), why.as_str().as_bytes());
                return false;
            }
        };
        {
            let mut roster = self.roster.borrow_mut();
            roster.record(pid, payload, peer.record.keys.ed25519, peer.record.seq);
            roster.set_endpoint(&pid, peer.conn.remote_address());
        }
        self.rebuild_routes();
        log::info!(
            "member {} up via {} ({})",
            pid.short(),
            peer.conn.remote_address(),
            match peer.role {
                Role::Dialler => "dialled",
                Role::Listener => "accepted",
            }
        );
        let conn = peer.conn.clone();
        if self.fast_lane() {
            let control = control.clone();
            tokio::task::spawn_local(async move {
                let _ = write_msg(&mut *control.lock().await, MsgType::FastLane, &[]).await;
            });
        }
        tokio::task::spawn_local(self.clone().datagram_reader(pid, conn.clone()));
        if let Some(rx) = control_rx {
            tokio::task::spawn_local(self.clone().control_reader(pid, conn.clone(), rx));
        }
        // Tell the new member who else is in the mesh (peer exchange).
        let list = self.member_contacts(Some(&pid));
        if !list.is_empty() {
            tokio::task::spawn_local(async move {
                let mut body = Vec::new();
                emit_contact_list(&list, &mut body);
                let _ = write_msg(&mut *control.lock().await, MsgType::Peers, &body).await;
            });
        }
        for p in pending {
            self.send_packet(&pid, &p);
        }
        true
    }

    /// Contacts of the members we hold live links with, except `except`.
    pub(super) fn member_contacts(&self, except: Option<&PeerId>) -> Vec<Contact> {
        let roster = self.roster.borrow();
        self.members
            .borrow()
            .iter()
            .filter(|(p, m)| Some(*p) != except && m.link.is_some())
            .filter_map(|(p, _)| {
                let e = roster.get(p)?;
                Some(Contact {
                    id: *p,
                    ed25519: e.ed25519,
                    addr: e.endpoint?,
                })
            })
            .take(PEERS_MAX)
            .collect()
    }

    /// Judges every member's overlay addresses and LAN routes again ([`Roster::judge`]) and
    /// carries out what that asks for: log new refusals, move our address, install and
    /// withdraw kernel routes. Runs when a member arrives, leaves or changes its record, and on
    /// reload: never per packet.
    pub(super) fn rebuild_routes(&self) {
        let local = self.read_local_routes();
        let outputs: Vec<Output> = {
            let mut roster = self.roster.borrow_mut();
            roster.judge(local);
            std::iter::from_fn(|| roster.poll_output()).collect()
        };
        for o in outputs {
            match o {
                Output::Refused(pid, p, why) => log::warn!("{}: {p} refused: {why}", pid.short()),
                Output::Readdress { from, to, counter } => self.readdress(from, to, counter),
                Output::InstallRoute(p, owner) => match self.tun.add_route(&p) {
                    Ok(()) => log::info!("route {p} via {} on {}", owner.short(), self.tun.name()),
                    Err(e) => log::warn!("adding route {p}: {e}"),
                },
                Output::WithdrawRoute(p) => {
                    if let Err(e) = self.tun.del_route(&p) {
                        log::warn!("removing route {p}: {e}");
                    }
                }
            }
        }
    }

    /// The host's routes other than ours (see [`netlink::local_routes`]); the last good read if
    /// this one fails.
    pub(super) fn read_local_routes(&self) -> Vec<Prefix> {
        match crate::netlink::local_routes(self.tun.index()) {
            Ok(v) => *self.local_routes.borrow_mut() = v,
            Err(e) => log::warn!("reading the host's routes: {e} (using the last read)"),
        }
        self.local_routes.borrow().clone()
    }

    /// Moves our overlay IPv4 to `(addr, counter)` (the collision rule gave our address to a
    /// lower PeerId, or gave it back): the TUN's address, the record we present and publish, and
    /// every member's copy of it.
    pub(super) fn readdress(&self, old: Ipv4Addr, addr: Ipv4Addr, counter: u32) {
        log::warn!(
            "overlay address {old} belongs to a lower PeerId: moving to {addr} (rehash {counter})"
        );
        if let Err(e) = self.tun.set_ipv4(old, addr) {
            log::error!("moving the tunnel's address to {addr}: {e}");
        }
        let Some(mesh) = self.mesh_side() else {
            return;
        };
        let node = mesh.node();
        let mut p = node.payload();
        p.ipv4 = Some(addr);
        p.ipv4_counter = counter;
        node.set_payload(p);
        match node.refresh_record() {
            Ok(rec) => {
                self.announce_record(&rec);
                tokio::task::spawn_local(async move {
                    if let Err(why) = mesh.publish_record(rec).await {
                        log::error!("our own record was refused: {why}");
                    }
                });
            }
            Err(e) => log::error!("re-signing our record failed: {e}"),
        }
    }

    /// Dials member `pid` at the addresses its record gives (and where we last reached it).
    pub(super) fn dial(&self, pid: PeerId, fresh: bool) {
        let Some(mesh) = self.mesh_side() else {
            return;
        };
        let (addrs, ed) = {
            let roster = self.roster.borrow();
            let Some(m) = roster.get(&pid) else { return };
            (m.dial_candidates(), m.ed25519)
        };
        let weak = self.mesh.borrow().clone();
        tokio::task::spawn_local(async move {
            let mut ok = false;
            for addr in addrs {
                let c = Contact {
                    id: pid,
                    ed25519: ed,
                    addr,
                };
                let r = mesh.clone().reach(c, fresh).await;
                if r.is_ok() {
                    ok = true;
                    break;
                }
            }
            // Whatever happened, a member left without a live link is not "being dialled" any
            // more: the next packet may try again. (A dial can succeed without a new link when
            // an earlier connection won, or the peer turned out not to be a member.)
            if let Some(dp) = weak
                .as_ref()
                .and_then(Weak::upgrade)
                .and_then(|m| m.dataplane())
            {
                let mut members = dp.members.borrow_mut();
                if let Some(m) = members.get_mut(&pid) {
                    if m.link
                        .as_ref()
                        .is_none_or(|l| l.conn.close_reason().is_some())
                    {
                        m.counters.tx_dropped += m.wait.failed() as u64;
                    }
                }
            }
            if !ok {
                log::info!("could not reach member {}", pid.short());
            }
        });
    }

    /// Receives `pid`'s datagrams on `conn` and delivers them to the TUN.
    pub(super) async fn datagram_reader(self: Rc<Self>, pid: PeerId, conn: Connection) {
        while let Ok(d) = conn.read_datagram().await {
            let _ours = alloc_probe::Ours::enter();
            self.deliver(&pid, conn.stable_id(), &d);
            let _quinn = alloc_probe::Quinn::enter();
            drop(d);
        }
        self.link_closed(&pid, &conn);
    }

    pub(super) fn link_closed(&self, pid: &PeerId, conn: &Connection) {
        if self.members.borrow_mut().link_down(pid, conn.stable_id()) {
            log::info!(
                "member {} down: {}",
                pid.short(),
                conn.close_reason()
                    .map(|r| r.to_string())
                    .unwrap_or_default()
            );
        }
    }

    /// Reads `pid`'s control messages after the handshake: rekeys and peer exchange.
    pub(super) async fn control_reader(
        self: Rc<Self>,
        pid: PeerId,
        conn: Connection,
        mut rx: RecvStream,
    ) {
        let mut buf = Vec::new();
        while let Ok(t) = read_msg(&mut rx, &mut buf).await {
            // The link core decides (and answers a rekey on the session); the shell does.
            let (action, control) = {
                let mut members = self.members.borrow_mut();
                let Some(l) = members
                    .get_mut(&pid)
                    .and_then(|m| m.link.as_mut())
                    .filter(|l| l.conn.stable_id() == conn.stable_id())
                else {
                    continue;
                };
                let a =
                    control::handle(crate::mono_now(), &mut l.session, t, &buf, self.fast_lane());
                if a == Action::FastLane {
                    l.paths.offer_fast(l.conn.remote_address());
                }
                (a, l.control.clone())
            };
            match action {
                Action::Send(t, body) => {
                    let _ = write_msg(&mut *control.lock().await, t, &body).await;
                }
                Action::Close(code, why) => {
                    log::warn!("{}: {why}", pid.short());
                    conn.close(VarInt::from_u32(code), why.as_bytes());
                }
                Action::Record => self.update_record(&pid, &buf),
                Action::FastLane => log::debug!("{}: data frames on the fast lane", pid.short()),
                Action::Learn(list) => self.learn(list),
                Action::Rekeyed => log::debug!("{}: rekeyed", pid.short()),
                Action::Ignore(why) => log::debug!("{}: {why}", pid.short()),
            }
        }
    }

    /// A member sent its newly signed record: check it and take its routes.
    pub(super) fn update_record(&self, pid: &PeerId, bytes: &[u8]) {
        let nk = self.cfg.borrow().network_key.clone();
        let checked = shadowmesh_crypto::record::verify_record(bytes, crate::unix_now())
            .and_then(|r| Ok((r.peer_id(), r.seq, r.open_payload(&nk)?)));
        match checked {
            Ok((owner, seq, payload)) if owner == *pid => {
                let replaced = {
                    let mut roster = self.roster.borrow_mut();
                    let Some(ed) = roster.get(pid).map(|e| e.ed25519) else {
                        return;
                    };
                    roster.record(*pid, payload, ed, seq) == Update::Replaced
                };
                if !replaced {
                    return;
                }
                log::info!("{} updated its record (seq {seq})", pid.short());
                self.rebuild_routes();
            }
            Ok(_) => log::warn!("{} sent another node's record", pid.short()),
            Err(e) => log::warn!("{} sent a bad record: {e}", pid.short()),
        }
    }

    /// Sends our new record to every connected member.
    pub fn announce_record(&self, record: &[u8]) {
        let controls: Vec<_> = self
            .members
            .borrow()
            .iter()
            .filter_map(|(_, m)| m.link.as_ref().map(|l| l.control.clone()))
            .collect();
        for c in controls {
            let body = record.to_vec();
            tokio::task::spawn_local(async move {
                let _ = write_msg(&mut *c.lock().await, MsgType::Record, &body).await;
            });
        }
    }

    /// Dials the members a peer told us about that we are not connected to: each PeerId at
    /// most once per [`LEARN_AGAIN`], at most [`LEARN_IN_FLIGHT`] at a time, so a member's
    /// `Peers` messages cannot make us dial in bulk (the addresses themselves are checked where
    /// every dial passes, [`Mesh::dial_new`]).
    pub(super) fn learn(self: &Rc<Self>, list: Vec<Contact>) {
        let Some(mesh) = self.mesh_side() else {
            return;
        };
        let me = self.cfg.borrow().roster.me;
        let now = crate::mono_now();
        for c in list {
            let known = self
                .members
                .borrow()
                .get(&c.id)
                .is_some_and(|m| m.link.is_some() || m.wait.dialling());
            if c.id == me || known || !self.admitted(&c.id) {
                continue;
            }
            // Bound first: the scrutinee's borrow would last through the arms.
            let verdict = self.learned.borrow_mut().offer(now, c.id);
            match verdict {
                Verdict::Dial => {}
                Verdict::Recent => continue,
                Verdict::Busy => {
                    let n = self.learned.borrow().in_flight();
                    log::debug!("peer exchange: busy ({n} dials in flight), the rest wait");
                    return;
                }
            }
            let (mesh, dp) = (mesh.clone(), self.clone());
            tokio::task::spawn_local(async move {
                if let Err(e) = mesh.reach(c, false).await {
                    log::debug!("peer exchange: could not reach {}: {e}", c.id.short());
                }
                dp.learned.borrow_mut().finished();
            });
        }
    }

    /// Sends `l` a keepalive: on the fast lane when it takes frames there (so that it also
    /// proves our path to it), in a QUIC datagram otherwise.
    pub(super) fn keepalive(&self, l: &mut Link, now: Duration) {
        let mut f = [0u8; FRAME_OVERHEAD];
        if l.session.seal(now, FrameType::Keepalive, &mut f).is_err() {
            return;
        }
        match (l.paths.fast_addr(), self.fast_socket.borrow().as_ref()) {
            (Some(to), Some(s)) => {
                let _ = s.send_to(&f, to);
            }
            _ => {
                let _ = l.conn.send_datagram(bytes::Bytes::copy_from_slice(&f));
            }
        }
    }

    /// Our addresses changed: tells every member at once, so that they move their fast lane
    /// to our new address without waiting for traffic. First a keepalive in a QUIC datagram
    /// (quinn moves the connection), then one on the fast lane: the member finds our session
    /// by its receiver index and, once the frame authenticates, sends to where it came from
    /// (`open_deliver`).
    pub fn keepalive_all(self: &Rc<Self>) {
        let now = crate::mono_now();
        for (_, m) in self.members.borrow_mut().iter_mut() {
            if let Some(l) = m.link.as_mut().filter(|l| l.conn.close_reason().is_none()) {
                let mut f = [0u8; FRAME_OVERHEAD];
                if l.session.seal(now, FrameType::Keepalive, &mut f).is_ok() {
                    let _ = l.conn.send_datagram(bytes::Bytes::copy_from_slice(&f));
                }
            }
        }
        let dp = self.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = crate::mono_now();
            for (_, m) in dp.members.borrow_mut().iter_mut() {
                if let Some(l) = m.link.as_mut().filter(|l| l.paths.fast_addr().is_some()) {
                    dp.keepalive(l, now);
                }
            }
        });
    }

    /// Runs every link's session timers (keepalive, rekey, teardown) when the link core's
    /// queue says one is due, and reads the links' paths from quinn every [`TICK`]. One task
    /// for all links. Ends with the mesh.
    pub(super) async fn ticker(self: Rc<Self>, mesh: Weak<dyn Dialer>) {
        let mut sweep = crate::mono_now();
        loop {
            let next = self
                .members
                .borrow()
                .poll_timeout()
                .map_or(sweep, |t| t.min(sweep));
            tokio::time::sleep(next.saturating_sub(crate::mono_now())).await;
            if mesh.strong_count() == 0 {
                return;
            }
            let now = crate::mono_now();
            if now >= sweep {
                self.read_paths();
                sweep = now + TICK;
            }
            self.session_timers(now);
        }
    }

    /// Reads each link's datagram limit from quinn (per-packet code reads the copy instead of
    /// taking quinn's lock).
    fn read_paths(&self) {
        for (_, m) in self.members.borrow_mut().iter_mut() {
            if let Some(l) = m.link.as_mut().filter(|l| l.conn.close_reason().is_none()) {
                l.max_datagram = l.conn.max_datagram_size();
                l.paths.quic_seen(l.conn.remote_address(), l.conn.rtt());
            }
        }
    }

    /// Does what the link core says is due on the links whose deadline passed: a keepalive,
    /// a rekey, or giving the session up (the member stays; its next packet dials again).
    fn session_timers(&self, now: Duration) {
        let mut rekeys = vec![];
        let mut dead = vec![];
        {
            let mut members = self.members.borrow_mut();
            while let Some((pid, due)) = members.pop_due(now) {
                let Some(l) = members.get_mut(&pid).and_then(|m| m.link.as_mut()) else {
                    continue;
                };
                if let Some(why) = due.teardown {
                    dead.push((pid, l.conn.clone(), why));
                    continue;
                }
                if due.keepalive {
                    self.keepalive(l, now);
                }
                if due.rekey {
                    match l.session.start_rekey(now) {
                        Ok(body) => rekeys.push((pid, l.control.clone(), body)),
                        Err(e) => log::warn!("{}: cannot rekey: {e}", pid.short()),
                    }
                }
            }
        }
        for (pid, conn, why) in dead {
            log::info!("member {}: session given up: {}", pid.short(), why.as_str());
            conn.close(
                VarInt::from_u32(CLOSE_SESSION_DEAD),
                why.as_str().as_bytes(),
            );
        }
        for (pid, control, body) in rekeys {
            log::debug!("{}: rekeying", pid.short());
            tokio::task::spawn_local(async move {
                let _ = write_msg(&mut *control.lock().await, MsgType::RekeyInit, &body).await;
            });
        }
    }

    /// Every member, for `shadowmesh peers`.
    pub fn members(&self) -> Vec<MemberInfo> {
        let roster = self.roster.borrow();
        let now = crate::mono_now();
        self.members
            .borrow()
            .iter()
            .filter_map(|(p, m)| Some((p, m, roster.get(p)?)))
            .map(|(p, m, e)| {
                let live = m.link.as_ref().filter(|l| l.conn.close_reason().is_none());
                MemberInfo {
                    peer_id: *p,
                    ipv4: e.payload.ipv4,
                    ipv4_counter: e.payload.ipv4_counter,
                    ipv6: e.payload.ipv6,
                    routes_accepted: e.judged().accepted.clone(),
                    routes_refused: e.judged().refused.clone(),
                    record_seq: e.seq,
                    routes: e
                        .payload
                        .routes
                        .iter()
                        .filter_map(|r| Prefix::new(r.addr, r.prefix_len))
                        .collect(),
                    endpoint: live.map(|l| l.conn.remote_address()).or(e.endpoint),
                    connected: live.is_some(),
                    rtt: live.map(|l| l.conn.rtt()),
                    counters: m.counters,
                    last_handshake: m.last_handshake,
                    rekeys: live.map(|l| l.session.epoch()).unwrap_or(0),
                    role: match live.map(|l| l.role) {
                        Some(Role::Dialler) => "dialled",
                        Some(Role::Listener) => "accepted",
                        None => "",
                    },
                    connection_id: live.map(|l| l.conn.stable_id() as u64).unwrap_or(0),
                    lane: match live.map(|l| l.paths.fast_addr().is_some()) {
                        Some(true) => "udp",
                        Some(false) => "quic",
                        None => "",
                    },
                    paths: live
                        .map(|l| {
                            l.paths
                                .iter()
                                .map(|p| (*p, p.last_received.map(|t| now.saturating_sub(t))))
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Members with a live session.
    pub fn connected(&self) -> usize {
        self.members.borrow().connected()
    }

    /// Our overlay addresses, and the rehash counter of the IPv4 one.
    pub fn addresses(&self) -> (Ipv4Addr, u32, Option<Ipv6Addr>) {
        self.roster.borrow().addresses()
    }

    /// Re-dials the members whose connections we accepted (after our address changed: a QUIC
    /// server cannot migrate, so those connections are dead ends now). Connections we dialled
    /// migrate by themselves after `Endpoint::rebind`.
    pub fn redial_accepted(self: &Rc<Self>) {
        let accepted: Vec<PeerId> = self
            .members
            .borrow()
            .iter()
            .filter(|(_, m)| m.link.as_ref().is_some_and(|l| l.role == Role::Listener))
            .map(|(p, _)| *p)
            .collect();
        for p in accepted {
            if let Some(m) = self.members.borrow_mut().get_mut(&p) {
                m.wait.dialling_now();
            }
            self.dial(p, true);
        }
    }
}
