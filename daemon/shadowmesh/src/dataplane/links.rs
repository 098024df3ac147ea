//! Members' links in the shell: what arrives on a connection goes to the link core
//! ([`Engine`]), and what the core asks for is carried out here ([`DataPlane::run`]): closing
//! connections, control messages, keepalives, dials, kernel routes, our address.

use super::*;

impl DataPlane {
    /// Whether our link with `pid` is up and on the LAN.
    pub fn linked_on_lan(&self, pid: &PeerId) -> bool {
        self.core
            .borrow()
            .members()
            .get(pid)
            .and_then(|m| m.link.as_ref())
            .is_some_and(|l| l.lan && l.conn.close_reason().is_none())
    }

    /// Takes over the session of a freshly authenticated member connection. Returns `false`
    /// (and closes the connection) if the member is not admitted.
    pub fn add_link(self: &Rc<Self>, mut peer: Peer) -> bool {
        let Some(session) = peer.session.take() else {
            return false;
        };
        let pid = peer.peer_id;
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
        let control_rx = peer.control_rx.take();
        let at = peer.conn.remote_address();
        let link = Link {
            conn: peer.conn.clone(),
            session,
            paths: Paths::new(at),
            max_datagram: peer.conn.max_datagram_size(),
            precedence: peer.precedence(&self.cfg.borrow().roster.me),
            tiebreak: peer.tiebreak(),
            role: peer.role,
            control: Rc::new(tokio::sync::Mutex::new(peer.control)),
            lan: crate::lan::on_link(at, self.tun.index()),
        };
        let lan = link.lan;
        let record = (payload, peer.record.keys.ed25519, peer.record.seq);
        let now = crate::mono_now();
        let up =
            self.core
                .borrow_mut()
                .handle_link_up(now, crate::unix_now(), pid, link, record, at);
        if up {
            log::info!(
                "member {} up via {at} ({}{})",
                pid.short(),
                match peer.role {
                    Role::Dialler => "dialled",
                    Role::Listener => "accepted",
                },
                if lan { ", on the LAN" } else { "" }
            );
            let names = self.lan_names.borrow().clone();
            if let Some(body) = names {
                self.send_control(&pid, MsgType::LanNames, body);
            }
            let conn = peer.conn.clone();
            tokio::task::spawn_local(self.clone().datagram_reader(pid, conn.clone()));
            if let Some(rx) = control_rx {
                tokio::task::spawn_local(self.clone().control_reader(pid, conn, rx));
            }
        }
        self.run();
        up
    }

    /// Carries out what the link core asks, until it asks nothing more.
    pub(super) fn run(&self) {
        loop {
            let Some(o) = self.core.borrow_mut().poll_output() else {
                return;
            };
            match o {
                CoreOutput::Close(l, code, why) => {
                    log::info!("member connection {} closed: {why}", l.conn.stable_id());
                    l.conn.close(VarInt::from_u32(code), why.as_bytes());
                    if code == shadowmesh_proto::consts::CLOSE_SESSION_DEAD {
                        self.went_silent();
                    }
                }
                CoreOutput::Control(pid, t, body) => self.send_control(&pid, t, body),
                CoreOutput::Keepalive(pid) => {
                    let now = crate::mono_now();
                    if let Some(l) = self.core.borrow_mut().link_mut(&pid) {
                        self.keepalive(l, now);
                    }
                }
                CoreOutput::Send(pid, packet) => self.send_packet(&pid, &packet),
                CoreOutput::Dial {
                    pid,
                    addrs,
                    ed25519,
                    fresh,
                } => self.dial(pid, addrs, ed25519, fresh),
                CoreOutput::Learn(c) => self.learn(c),
                CoreOutput::Record(pid, body) => self.update_record(&pid, &body),
                CoreOutput::ReadRoutes => {
                    let local = self.read_local_routes();
                    self.core.borrow_mut().handle_local_routes(local);
                }
                CoreOutput::Route(r) => self.route_output(r),
                CoreOutput::Circuit {
                    relay,
                    circuit,
                    peer,
                    dial,
                } => self.circuit(relay, circuit, peer, dial),
                CoreOutput::Seen { reporter, at } => {
                    if let Some(m) = self.mesh_side() {
                        m.seen(reporter, at);
                    }
                }
            }
        }
    }

    /// Shares the hosts behind us (a LAN_NAMES body) with every member, now and as links come
    /// up; nothing is sent when it did not change.
    pub fn share_lan_names(&self, body: Vec<u8>) {
        if self.lan_names.borrow().as_ref() == Some(&body) {
            return;
        }
        *self.lan_names.borrow_mut() = Some(body.clone());
        let linked: Vec<PeerId> = self
            .core
            .borrow()
            .members()
            .iter()
            .filter(|(_, m)| m.link.is_some())
            .map(|(p, _)| *p)
            .collect();
        for pid in linked {
            self.send_control(&pid, MsgType::LanNames, body.clone());
        }
    }

    #[inline(never)]
    fn send_control(&self, pid: &PeerId, t: MsgType, body: Vec<u8>) {
        let control = self
            .core
            .borrow_mut()
            .link_mut(pid)
            .map(|l| l.control.clone());
        if let Some(c) = control {
            tokio::task::spawn_local(async move {
                let _ = write_msg(&mut *c.lock().await, t, &body).await;
            });
        }
    }

    /// Carries out what a judgement of the members' prefixes asks.
    fn route_output(&self, o: Output) {
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

    /// The host's routes other than ours (see [`netlink::local_routes`]); the last good read if
    /// this one fails.
    fn read_local_routes(&self) -> Vec<Prefix> {
        match crate::netlink::local_routes(self.tun.index()) {
            Ok(v) => *self.local_routes.borrow_mut() = v,
            Err(e) => log::warn!("reading the host's routes: {e} (using the last read)"),
        }
        self.local_routes.borrow().clone()
    }

    /// Moves our overlay IPv4 to `(addr, counter)` (the collision rule gave our address to a
    /// lower PeerId, or gave it back): the TUN's address, the record we present and publish, and
    /// every member's copy of it.
    fn readdress(&self, old: Ipv4Addr, addr: Ipv4Addr, counter: u32) {
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
                self.core.borrow_mut().announce(&rec);
                tokio::task::spawn_local(async move {
                    if let Err(why) = mesh.publish_record(rec).await {
                        log::error!("our own record was refused: {why}");
                    }
                });
            }
            Err(e) => log::error!("re-signing our record failed: {e}"),
        }
    }

    /// Sends our new record to every connected member.
    pub fn announce_record(&self, record: &[u8]) {
        self.core.borrow_mut().announce(record);
        self.run();
    }

    /// Dials member `pid` at `addrs` in turn, then tells the core the dial is over.
    fn dial(&self, pid: PeerId, addrs: Vec<SocketAddr>, ed25519: [u8; 32], fresh: bool) {
        let Some(mesh) = self.mesh_side() else {
            return;
        };
        let weak = self.mesh.borrow().clone();
        tokio::task::spawn_local(async move {
            let mut ok = false;
            for addr in addrs {
                let c = Contact {
                    id: pid,
                    ed25519,
                    addr,
                };
                if mesh.clone().reach(c, fresh).await.is_ok() {
                    ok = true;
                    break;
                }
            }
            if let Some(dp) = weak.and_then(|w| w.upgrade()).and_then(|m| m.dataplane()) {
                dp.core.borrow_mut().handle_dial_end(&pid);
            }
            if !ok {
                log::info!("could not reach member {}", pid.short());
            }
        });
    }

    /// A relay opened a circuit to `peer` for us: the socket gives it a local address, which
    /// we dial when we are the end that dials.
    fn circuit(&self, relay: PeerId, id: u32, peer: Contact, dial: bool) {
        let Some(mesh) = self.mesh_side() else {
            return;
        };
        let Some(relay_addr) = self
            .core
            .borrow_mut()
            .link_mut(&relay)
            .map(|l| l.conn.remote_address())
        else {
            return;
        };
        let local = mesh
            .node()
            .demux()
            .relayed()
            .map(relay, relay_addr, id, peer.id);
        log::info!(
            "{} relays to {} (circuit {id:08x}, here {local}){}",
            relay.short(),
            peer.id.short(),
            if dial { ": dialling through it" } else { "" }
        );
        if dial {
            self.dial(peer.id, vec![local], peer.ed25519, false);
        }
    }

    /// Dials a node a member named in peer exchange (the core chose it and bounds how many;
    /// the address is checked where every dial passes, [`Mesh::dial_new`]).
    fn learn(&self, c: Contact) {
        let Some(mesh) = self.mesh_side() else {
            return;
        };
        let weak = self.mesh.borrow().clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = mesh.reach(c, false).await {
                log::debug!("peer exchange: could not reach {}: {e}", c.id.short());
            }
            if let Some(dp) = weak.and_then(|w| w.upgrade()).and_then(|m| m.dataplane()) {
                dp.core.borrow_mut().handle_learn_end();
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
        let at = conn.remote_address();
        if shadowmesh_proto::relay::is_mapped(at) {
            if let Some(mesh) = self.mesh_side() {
                mesh.node().demux().relayed().unmap(at);
            }
        }
        if self
            .core
            .borrow_mut()
            .handle_link_down(&pid, conn.stable_id())
        {
            let reason = conn.close_reason();
            if matches!(reason, Some(crate::quic::ConnectionError::TimedOut)) {
                self.went_silent();
            }
            let why = reason.map(|r| r.to_string());
            log::info!("member {} down: {}", pid.short(), why.unwrap_or_default());
        }
    }

    /// A link died of silence: our own address may have moved (the DHT checks now).
    fn went_silent(&self) {
        if let Some(m) = self.mesh_side() {
            m.observe_soon();
        }
    }

    /// Reads `pid`'s control messages after the handshake and hands them to the core.
    pub(super) async fn control_reader(
        self: Rc<Self>,
        pid: PeerId,
        conn: Connection,
        mut rx: RecvStream,
    ) {
        let mut buf = Vec::new();
        while let Ok(t) = read_msg(&mut rx, &mut buf).await {
            let now = crate::mono_now();
            let id = conn.stable_id();
            let action = self.core.borrow_mut().handle_control(now, pid, id, t, &buf);
            match action {
                Some(Action::Close(_, why)) => log::warn!("{}: {why}", pid.short()),
                Some(Action::FastLane) => {
                    log::debug!("{}: data frames on the fast lane", pid.short())
                }
                Some(Action::Rekeyed) => log::debug!("{}: rekeyed", pid.short()),
                Some(Action::IntroduceReq(c)) => {
                    log::info!("{} asks to be introduced to {}", pid.short(), c.id.short())
                }
                Some(Action::Introduce(c)) => {
                    log::info!("{} introduces {} at {}", pid.short(), c.id.short(), c.addr)
                }
                Some(Action::Circuit(c)) if !c.status.open() => log::info!(
                    "relay {} refused a circuit to {}: {}",
                    pid.short(),
                    c.peer.id.short(),
                    c.status.as_str()
                ),
                Some(Action::Relay) => log::debug!("{} relays for members", pid.short()),
                Some(Action::Ignore(why)) => log::debug!("{}: {why}", pid.short()),
                _ => {}
            }
            self.run();
        }
    }

    /// A member sent its newly signed record: check it, and give it to the core.
    fn update_record(&self, pid: &PeerId, bytes: &[u8]) {
        let nk = self.cfg.borrow().network_key.clone();
        let checked = shadowmesh_crypto::record::verify_record(bytes, crate::unix_now())
            .and_then(|r| Ok((r.peer_id(), r.seq, r.open_payload(&nk)?)));
        match checked {
            Ok((owner, seq, payload)) if owner == *pid => {
                if self.core.borrow_mut().handle_record(pid, payload, seq) {
                    log::info!("{} updated its record (seq {seq})", pid.short());
                }
            }
            Ok(_) => log::warn!("{} sent another node's record", pid.short()),
            Err(e) => log::warn!("{} sent a bad record: {e}", pid.short()),
        }
    }

    /// Sends `l` a keepalive: on the fast lane when it takes frames there (so that it also
    /// proves our path to it), in a QUIC datagram otherwise.
    fn keepalive(&self, l: &mut Link, now: Duration) {
        let mut f = [0u8; FRAME_OVERHEAD];
        if l.session.seal(now, FrameType::Keepalive, &mut f).is_err() {
            return;
        }
        match (l.paths.fast_addr(), self.fast_socket.borrow().as_ref()) {
            (Some(to), _) if shadowmesh_proto::relay::is_mapped(to) => {
                if let Some(d) = self.demux.borrow().as_ref() {
                    use quinn::AsyncUdpSocket;
                    let _ = d.try_send(&quinn::udp::Transmit {
                        destination: to,
                        ecn: None,
                        contents: &f,
                        segment_size: None,
                        src_ip: None,
                    });
                }
            }
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
        for (_, m) in self.core.borrow_mut().parts_mut().1.iter_mut() {
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
            for (_, m) in dp.core.borrow_mut().parts_mut().1.iter_mut() {
                if let Some(l) = m.link.as_mut().filter(|l| l.paths.fast_addr().is_some()) {
                    dp.keepalive(l, now);
                }
            }
        });
    }

    /// Drives the link core: its session timers when it says one is due, what the
    /// data-plane thread asked for (a dial: the thread spawns nothing), and every [`TICK`]
    /// the links' paths as quinn sees them. One task for all links. Ends with the mesh.
    pub(super) async fn driver(self: Rc<Self>, mesh: Weak<dyn Dialer>) {
        let mut sweep = crate::mono_now();
        loop {
            let next = self.core.borrow().poll_timeout();
            let next = next.map_or(sweep, |t| t.min(sweep));
            let sleep = tokio::time::sleep(next.saturating_sub(crate::mono_now()));
            let mut sleep = std::pin::pin!(sleep);
            std::future::poll_fn(|cx| {
                if self.core.borrow().has_output() {
                    return Poll::Ready(());
                }
                *self.driver.borrow_mut() = Some(cx.waker().clone());
                std::future::Future::poll(sleep.as_mut(), cx)
            })
            .await;
            if mesh.strong_count() == 0 {
                return;
            }
            let now = crate::mono_now();
            if now >= sweep {
                self.read_paths();
                sweep = now + TICK;
            }
            self.core.borrow_mut().handle_timeout(now);
            self.run();
        }
    }

    /// Wakes the driver: the core has something to do (asked from the data-plane thread or
    /// the forwarding path, which carry nothing out themselves).
    pub(super) fn wake_driver(&self) {
        if let Some(w) = self.driver.borrow_mut().take() {
            w.wake();
        }
    }

    /// Reads each link's datagram limit and QUIC path from quinn (per-packet code reads the
    /// copy instead of taking quinn's lock).
    fn read_paths(&self) {
        for (_, m) in self.core.borrow_mut().parts_mut().1.iter_mut() {
            if let Some(l) = m.link.as_mut().filter(|l| l.conn.close_reason().is_none()) {
                l.max_datagram = l.conn.max_datagram_size();
                l.paths.quic_seen(l.conn.remote_address(), l.conn.rtt());
            }
        }
        self.core.borrow_mut().paths_read();
    }

    /// Relays for members or stops (logged when it changes).
    pub fn set_relay(&self, on: bool) {
        let was = self.core.borrow().relay().is_some();
        if was != on {
            log::info!("relaying for members: {}", if on { "on" } else { "off" });
            self.core.borrow_mut().set_relay(on);
            self.run();
        }
    }

    /// Sends internet traffic to the exit `option exit` names (or to none).
    pub fn set_exit(&self, choice: shadowmesh_link::engine::ExitChoice) {
        self.core.borrow_mut().set_exit(choice);
        self.run();
    }

    /// Looks at the exit again (`auto` leaves one whose data goes unanswered).
    pub fn recheck_exit(&self) {
        self.core.borrow_mut().recheck_exit(crate::mono_now());
    }

    /// The exit's overlay addresses (where our DNS goes).
    pub fn exit_overlay(&self) -> (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>) {
        let core = self.core.borrow();
        let e = core.exit().0.and_then(|p| core.roster().get(&p));
        (
            e.and_then(|e| e.payload.ipv4),
            e.and_then(|e| e.payload.ipv6),
        )
    }

    /// The member our internet traffic goes to, and where it stands.
    pub fn exit(
        &self,
    ) -> (
        Option<shadowmesh_proto::PeerId>,
        shadowmesh_link::engine::ExitState,
    ) {
        self.core.borrow().exit()
    }

    /// Keeps links with relays (behind a NAT) or not; returns the relays kept now, for our
    /// record.
    pub fn keep_relays(&self, on: bool) -> Vec<PeerId> {
        let now = crate::mono_now();
        let mut core = self.core.borrow_mut();
        core.set_keep_relays(now, on);
        let kept = core.kept_relays().to_vec();
        drop(core);
        self.run();
        self.wake_driver();
        kept
    }

    /// Re-dials the members whose connections we accepted (after our address changed: a QUIC
    /// server cannot migrate, so those connections are dead ends now). Connections we dialled
    /// migrate by themselves after `Endpoint::rebind`.
    pub fn redial_accepted(self: &Rc<Self>) {
        self.core.borrow_mut().redial_accepted();
        self.run();
    }
}
