//! The data path: TUN packets out through the route table to members' frames, and frames in
//! to the TUN, with the fast lane's batches.

use super::batch::{BATCH_BYTES, BURST, MAX_SEGMENTS};
use super::*;

impl DataPlane {
    /// A fresh arena for outgoing frames (see `DataPlane::push_packet`).
    pub fn arena() -> Arena {
        Arena::new()
    }

    pub(super) fn slot(&self) -> usize {
        FRAME_OVERHEAD + (self.mtu as usize).min(MAX_PACKET)
    }

    /// Forwards one packet as if it had been read from the TUN (what the TUN reader does after
    /// its read). For tests of the forwarding path.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn push_packet(&self, arena: &mut Arena, batch: &mut Batch, packet: &[u8]) {
        let _ours = alloc_probe::Ours::enter();
        let slot = self.slot();
        let arena = arena.prepare(slot);
        let n = packet.len().min(slot - FRAME_OVERHEAD);
        arena[FRAME_HEADER_LEN..FRAME_HEADER_LEN + n].copy_from_slice(&packet[..n]);
        arena.truncate(FRAME_OVERHEAD + n);
        self.forward(arena, batch);
    }

    /// Sends what `batch` holds (tests call it after `DataPlane::push_packet`s).
    #[doc(hidden)]
    pub fn flush(&self, batch: &mut Batch) {
        if batch.count == 0 {
            return;
        }
        let Some((to, pid)) = batch.to else {
            return;
        };
        let sent = if shadowmesh_proto::relay::is_mapped(to) {
            self.send_relayed(batch, to)
        } else {
            self.send_direct(batch, to)
        };
        if let Some(m) = self.core.borrow_mut().parts_mut().1.get_mut(&pid) {
            if sent {
                m.counters.tx_packets += batch.count as u64;
                m.counters.tx_bytes += batch.bytes;
            } else {
                // A full socket buffer drops, as a router queue would.
                m.counters.tx_dropped += batch.count as u64;
            }
        }
        batch.buf.clear();
        batch.count = 0;
        batch.bytes = 0;
        batch.closed = false;
        batch.to = None;
    }

    /// Sends `batch` to `to` on the socket: a GSO batch in one `sendmsg` where it can.
    fn send_direct(&self, batch: &Batch, to: SocketAddr) -> bool {
        match (
            self.fast_socket.borrow().as_ref(),
            self.gso.borrow().as_ref(),
        ) {
            (Some(s), Some(state)) if batch.count > 1 => state
                .send(
                    s.into(),
                    &quinn::udp::Transmit {
                        destination: to,
                        ecn: None,
                        contents: &batch.buf,
                        segment_size: Some(batch.seg),
                        src_ip: None,
                    },
                )
                .is_ok(),
            (Some(s), _) => s.send_to(&batch.buf, to).is_ok(),
            (None, _) => false,
        }
    }

    /// Sends `batch` to a member reached through a relay (`to` is the circuit's local
    /// address): the endpoint's socket puts each frame in the circuit's envelope, to the relay.
    fn send_relayed(&self, batch: &Batch, to: SocketAddr) -> bool {
        use quinn::AsyncUdpSocket;
        let Some(d) = self.demux.borrow().clone() else {
            return false;
        };
        d.try_send(&quinn::udp::Transmit {
            destination: to,
            ecn: None,
            contents: &batch.buf,
            segment_size: (batch.count > 1).then_some(batch.seg),
            src_ip: None,
        })
        .is_ok()
    }

    /// Adds a sealed frame for `pid` at `to` to `batch`, sending what it held first if the
    /// frame cannot join it.
    pub(super) fn batch_push(
        &self,
        batch: &mut Batch,
        pid: PeerId,
        to: SocketAddr,
        frame: &[u8],
        n: usize,
    ) {
        let max_segments = self
            .gso
            .borrow()
            .as_ref()
            .map_or(1, |g| g.max_gso_segments().min(BURST));
        if batch.count > 0
            && (batch.to != Some((to, pid))
                || batch.closed
                || frame.len() > batch.seg
                || batch.count >= max_segments
                || batch.buf.len() + frame.len() > BATCH_BYTES)
        {
            self.flush(batch);
        }
        if batch.count == 0 {
            batch.to = Some((to, pid));
            batch.seg = frame.len();
        } else if frame.len() < batch.seg {
            batch.closed = true;
        }
        batch.buf.extend_from_slice(frame);
        batch.count += 1;
        batch.bytes += n as u64;
        if max_segments == 1 {
            self.flush(batch);
        }
    }

    /// Reads packets from the TUN and forwards them: waits until the device is readable, then
    /// drains it ([`DataPlane::drain_tun`]).
    pub(super) async fn tun_reader(self: Rc<Self>) {
        loop {
            let mut drained = true;
            let r = std::future::poll_fn(|cx| {
                self.tun.poll_drain(cx, || {
                    drained = self.drain_tun();
                    drained
                })
            })
            .await;
            if let Err(e) = r {
                log::error!("reading {}: {e}", self.tun.name());
                tokio::time::sleep(Duration::from_millis(100)).await;
            } else if !drained {
                // A full burst: let the other tasks run before the next one.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Reads what the TUN holds, up to [`BURST`] reads, forwards every packet and sends the
    /// burst. Returns whether it read until `WouldBlock`. Also called at the end of each
    /// fast-lane receive batch: a reply the kernel produced while we wrote (an echo, a TCP ACK)
    /// then leaves at once, without waiting for the TUN reader's next wake-up.
    pub(crate) fn drain_tun(&self) -> bool {
        let Ok(mut st) = self.reader.try_borrow_mut() else {
            return false;
        };
        let ReaderState { arenas, batch, rx } = &mut *st;
        let _ours = alloc_probe::Ours::enter();
        let slot = self.slot();
        let vnet = self.tun.vnet();
        let mut drained = false;
        let mut failed = false;
        let mut reads = 0;
        for _ in 0..BURST {
            if reads == 1 && self.light.get() {
                // Light traffic (the last drain found at most one packet): what was read
                // leaves now rather than after the read that finds the device empty; a
                // request's reply is waiting for it. Under load the burst batches as before.
                self.flush(batch);
            }
            reads += 1;
            if vnet {
                match self.tun.try_recv(rx) {
                    Ok(n) => {
                        self.forward_offloaded(&mut rx[..n], arenas, batch, slot);
                    }
                    Err(e) => {
                        drained = e.kind() == std::io::ErrorKind::WouldBlock;
                        failed = !drained;
                        break;
                    }
                }
            } else {
                let arena = arenas.prepare(slot);
                match self
                    .tun
                    .try_recv(&mut arena[FRAME_HEADER_LEN..slot - AEAD_TAG_LEN])
                {
                    Ok(n) => {
                        arena.truncate(FRAME_OVERHEAD + n);
                        self.forward(arena, batch);
                    }
                    Err(e) => {
                        drained = e.kind() == std::io::ErrorKind::WouldBlock;
                        failed = !drained;
                        break;
                    }
                }
            }
        }
        self.flush(batch);
        // `reads` counts the read that found the device empty.
        self.light.set(reads <= 2);
        // A full burst, not a failed read: the data-plane thread carries on only after the
        // first (a device that fails waits for its next readiness rather than spinning).
        self.tun_backlog.set(!drained && !failed);
        drained
    }

    /// One read of an offloading TUN: header and packet in `rx`. Returns whether it was a TCP
    /// super-packet (cut into segments).
    pub(super) fn forward_offloaded(
        &self,
        rx: &mut [u8],
        arenas: &mut Arena,
        batch: &mut Batch,
        slot: usize,
    ) -> bool {
        let Ok(h) = VnetHdr::parse(rx) else {
            return false;
        };
        let pkt = &mut rx[VNET_HDR_LEN..];
        let room = slot - FRAME_OVERHEAD;
        if h.gso_type == GSO_NONE {
            if h.flags & F_NEEDS_CSUM != 0
                && complete_csum(pkt, h.csum_start, h.csum_offset).is_err()
            {
                return false;
            }
            if pkt.len() > room {
                return false;
            }
            let arena = arenas.prepare(slot);
            arena[FRAME_HEADER_LEN..FRAME_HEADER_LEN + pkt.len()].copy_from_slice(pkt);
            arena.truncate(FRAME_OVERHEAD + pkt.len());
            self.forward(arena, batch);
            return false;
        }
        let Ok(g) = TcpGso::new(&h, pkt) else {
            log::debug!(
                "unexpected offloaded packet (gso type {}): dropped",
                h.gso_type
            );
            return false;
        };
        if g.max_segment() > room || g.count() > MAX_SEGMENTS {
            return false;
        }
        for i in 0..g.count() {
            let arena = arenas.prepare(slot);
            match g.write(pkt, i, &mut arena[FRAME_HEADER_LEN..slot - AEAD_TAG_LEN]) {
                Ok(n) => {
                    arena.truncate(FRAME_OVERHEAD + n);
                    self.forward(arena, batch);
                }
                Err(_) => return true,
            }
        }
        true
    }

    /// Forwards the packet in `frame[FRAME_HEADER_LEN..len - AEAD_TAG_LEN]`. `frame` is cut off
    /// the arena when it is handed to quinn.
    pub(super) fn forward(&self, frame: &mut BytesMut, batch: &mut Batch) {
        let packet = &frame[FRAME_HEADER_LEN..frame.len() - AEAD_TAG_LEN];
        let Ok(a) = route::addrs(packet) else {
            return;
        };
        let n = packet.len();
        let mut core = self.core.borrow_mut();
        // One clock read per packet: the core's (a dial's start) and the seal's.
        let now = crate::mono_now();
        let Some((pid, m)) = core.route(now, a.dst, packet) else {
            // No member holds it (the kernel routed it here through the /16 or /48: dropped),
            // or its member has no link: held, and the core may want a dial.
            if core.has_output() {
                drop(core);
                self.wake_driver();
            }
            return;
        };
        let Some(link) = m.link.as_mut() else {
            return;
        };
        if let Some(to) = link.paths.fast_addr() {
            // Fast lane: sealed in place and copied into the burst's GSO buffer; the arena
            // slot is reused by the next packet.
            if link
                .session
                .seal(now, FrameType::Data, &mut frame[..])
                .is_err()
            {
                m.counters.tx_dropped += 1;
                return;
            }
            drop(core);
            self.batch_push(batch, pid, to, &frame[..], n);
            return;
        }
        if let Some(max) = link.max_datagram {
            if n + FRAME_OVERHEAD > max {
                let limit = (max - FRAME_OVERHEAD) as u16;
                drop(core);
                self.too_big(&frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + n], limit);
                return;
            }
        }
        if link
            .session
            .seal(now, FrameType::Data, &mut frame[..])
            .is_err()
        {
            m.counters.tx_dropped += 1;
            return;
        }
        let frame = frame.split().freeze();
        let sent = {
            let _quinn = alloc_probe::Quinn::enter();
            link.conn.send_datagram(frame)
        };
        match sent {
            Ok(()) => {
                m.counters.tx_packets += 1;
                m.counters.tx_bytes += n as u64;
            }
            Err(crate::quic::SendDatagramError::ConnectionLost(_)) => {
                // Closed under us: the next packet dials again.
                m.counters.tx_dropped += 1;
                let id = link.conn.stable_id();
                core.handle_link_down(&pid, id);
            }
            Err(_) => m.counters.tx_dropped += 1,
        }
    }

    /// Sends one packet from outside the TUN path (queued packets after a dial).
    pub(super) fn send_packet(&self, pid: &PeerId, packet: &[u8]) {
        let mut frame = BytesMut::zeroed(packet.len() + FRAME_OVERHEAD);
        frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + packet.len()].copy_from_slice(packet);
        let mut core = self.core.borrow_mut();
        let Some(link) = core.link_mut(pid) else {
            return;
        };
        if link
            .session
            .seal(crate::mono_now(), FrameType::Data, &mut frame[..])
            .is_ok()
        {
            let _ = link.conn.send_datagram(frame.freeze());
        }
    }

    /// Answers a packet that does not fit the path with ICMP "packet too big".
    pub(super) fn too_big(&self, packet: &[u8], mtu: u16) {
        let (v4, _, v6) = self.addresses();
        let from = match (packet.first().map(|b| b >> 4), v6) {
            (Some(6), Some(v6)) => IpAddr::V6(v6),
            _ => IpAddr::V4(v4),
        };
        let mut out = [0u8; 1280];
        if let Some(n) = route::icmp_too_big(packet, mtu, from, &mut out) {
            let _ = self.tun.try_send(&out[..n]);
        }
    }

    /// Opens one datagram from `pid` and writes its packet to the TUN.
    pub(super) fn deliver(&self, pid: &PeerId, conn_id: usize, d: &[u8]) {
        let mut core = self.core.borrow_mut();
        let (roster, members) = core.parts_mut();
        let Some(m) = members.get_mut(pid) else {
            return;
        };
        if m.link
            .as_ref()
            .is_none_or(|l| l.conn.stable_id() != conn_id)
        {
            return;
        }
        let mut scratch = self.scratch.borrow_mut();
        if d.len() > scratch.len() {
            m.counters.rx_invalid += 1;
            return;
        }
        let buf = &mut scratch[..d.len()];
        buf.copy_from_slice(d);
        self.open_deliver(roster, pid, m, buf, None);
    }

    /// A fast-lane frame from `from`, opened in place where the socket put it.
    pub fn deliver_fast(&self, from: SocketAddr, frame: &mut [u8]) {
        let _ours = alloc_probe::Ours::enter();
        let mut core = self.core.borrow_mut();
        let (roster, members) = core.parts_mut();
        let Some((pid, m)) = Header::peek_receiver(frame).and_then(|i| members.by_index(i)) else {
            log::trace!("fast-lane frame from {from} for no session of ours: dropped");
            return;
        };
        self.open_deliver(roster, &pid, m, frame, Some(from));
    }

    /// Writes what the coalescer holds.
    pub fn flush_gro(&self) {
        if let Some(g) = self.gro.borrow_mut().as_mut() {
            if let Some(w) = g.take() {
                let _ = self.tun.try_send(w);
            }
        }
    }

    /// Opens `buf`, a frame from member `pid` (replay window, tag), checks that the packet's
    /// source is the member's, and writes it to the TUN.
    /// `fast`: the address a fast-lane frame came from; more frames of the same receive batch
    /// may follow, so TCP segments may wait in the coalescer until [`DataPlane::flush_gro`].
    /// A frame that authenticates from another address than the member's fast-lane one moves
    /// our frames there: a path changes only on an authenticated, unreplayed frame, so one
    /// replayed or forged from a victim's address moves nothing.
    pub(super) fn open_deliver(
        &self,
        roster: &Roster,
        pid: &PeerId,
        m: &mut Member,
        buf: &mut [u8],
        fast: Option<SocketAddr>,
    ) {
        let batched = fast.is_some();
        let Some(link) = m.link.as_mut() else {
            return;
        };
        let now = crate::mono_now();
        let opened = link.session.open(now, buf);
        if opened.is_ok() {
            match fast {
                Some(from) => {
                    if link.paths.heard_fast(now, from).is_some() {
                        log::debug!("{}: fast lane moves to {from}", pid.short());
                    }
                }
                None => link.paths.heard_quic(now),
            }
        }
        let n = match opened {
            Ok((FrameType::Data, plain)) => plain.len(),
            Ok(_) => return,
            Err(_) => {
                m.counters.rx_invalid += 1;
                return;
            }
        };
        // The plaintext is `buf[FRAME_HEADER_LEN..][..n]`; the header before it is free for
        // the TUN's virtio_net_hdr.
        let packet = &buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + n];
        let Ok(a) = route::addrs(packet) else {
            m.counters.rx_invalid += 1;
            return;
        };
        if roster.lookup(a.src) != Some(*pid) {
            m.counters.rx_spoofed += 1;
            log::debug!(
                "{}: dropped a packet from {} (not theirs)",
                pid.short(),
                a.src
            );
            return;
        }
        m.counters.rx_packets += 1;
        m.counters.rx_bytes += n as u64;
        if let Some(g) = self.gro.borrow_mut().as_mut() {
            if batched && g.push(packet) {
                return;
            }
            if let Some(w) = g.take() {
                let _ = self.tun.try_send(w);
            }
            if batched && g.push(packet) {
                return;
            }
        }
        let _ = self
            .tun
            .try_send_at(&mut buf[..FRAME_HEADER_LEN + n], FRAME_HEADER_LEN);
    }
}
