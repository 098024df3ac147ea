//! The direct-path fast lane: SMSH frames as plain UDP datagrams on the QUIC endpoint's own
//! socket, as WireGuard's data path is, while QUIC keeps the control plane (handshake, DHT,
//! rekeys, peer exchange) and the connection's path (migration, NAT binding).
//!
//! Why (BENCHMARKS.md, "Where the data path spends its time"): per packet, the QUIC lane runs
//! quinn's packet assembly, congestion control and ACK processing and a second ChaCha20-Poly1305
//! (QUIC's packet protection) on top of our end-to-end one, and quinn copies every received
//! datagram into a fresh `BytesMut`. The fast lane seals the frame once, in place, and hands it
//! to `sendto`; a received frame is opened in quinn's receive buffer, where it landed.
//!
//! Demultiplexing: [`DemuxSocket`] wraps the socket quinn drives. Every datagram it receives
//! that starts with the SMSH magic and version goes to the data plane's sink (registered per
//! local socket address in a thread-local by the data plane, on the runtime's thread; several
//! nodes in one process each get their own), the rest to quinn. With the data-plane thread
//! ([`crate::dataplane::thread`]) that thread reads the socket instead and hands quinn its
//! QUIC datagrams; the two threads take turns over the data plane's state with a baton, so
//! neither touches it while the other holds it. A QUIC short-header packet could start with `0x53` ('S', one first byte in 32 after
//! header protection) followed by its destination connection ID, so [`NoMagicCids`] makes sure
//! no connection ID we issue starts with "MSH": no QUIC packet addressed to us can look like a
//! frame. Long-header packets start with `0b11`, never `0x53`.
//!
//! Who reads the socket: until the data plane starts, quinn's endpoint driver does, through
//! [`DemuxSocket`]'s `poll_recv`. Once the data plane runs [`DemuxSocket::receive`], that task
//! reads it instead: frames go straight to the sink, and the (rare, control-plane) QUIC
//! datagrams are copied into a bounded stash that the QUIC driver takes them from. Measured
//! (`callgrind`, one echo through the tunnel): quinn's receive path (its endpoint driver, a
//! recvmmsg batch of 32 set up twice per wake-up, its work limiter's clock reads) cost ~4,000
//! instructions per received frame, more than opening the frame, and it sat between the
//! socket and the TUN on every packet.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use shadowmesh_proto::consts::{FRAME_HEADER_LEN, FRAME_MAGIC, FRAME_VERSION};
use shadowmesh_proto::relay::{envelope, is_mapped, ENVELOPE_LEN};

use crate::relayed::Relayed;

/// The first six bytes of every SMSH frame: magic `SMSH`, then the version.
pub const SMSH_PREFIX: [u8; 6] = {
    let (m, v) = (FRAME_MAGIC.to_be_bytes(), FRAME_VERSION.to_be_bytes());
    [m[0], m[1], m[2], m[3], v[0], v[1]]
};

/// Whether `d` is an SMSH frame (by its prefix; the session checks the rest).
pub fn is_frame(d: &[u8]) -> bool {
    d.len() >= FRAME_HEADER_LEN && d[..6] == SMSH_PREFIX
}

/// Where received frames go.
pub trait FrameSink {
    /// One frame from `from`, mutable so it can be opened in place.
    fn frame(&self, from: SocketAddr, frame: &mut [u8]);
    /// The end of one receive batch (what was coalesced can be written now).
    fn end_of_batch(&self);
    /// A relayed datagram from `from` on a circuit we may carry as a relay: its envelope is
    /// rewritten for the other end, and where it goes returned (`None`: dropped).
    fn relay(&self, _from: SocketAddr, _datagram: &mut [u8]) -> Option<SocketAddr> {
        None
    }
}

/// A registered sink.
pub type Sink = Rc<dyn FrameSink>;

thread_local! {
    static SINKS: RefCell<Vec<(SocketAddr, Sink)>> = const { RefCell::new(Vec::new()) };
}

/// Sets (or clears) the receiver of fast-lane frames arriving on the socket bound to `local`.
pub fn set_sink(local: SocketAddr, sink: Option<Sink>) {
    SINKS.with(|s| {
        let mut s = s.borrow_mut();
        s.retain(|(a, _)| *a != local);
        if let Some(f) = sink {
            s.push((local, f));
        }
    });
}

fn sink(local: SocketAddr) -> Option<Sink> {
    // Cloned out so the sink may itself change the registry.
    SINKS.with(|s| {
        s.borrow()
            .iter()
            .find(|(a, _)| *a == local)
            .map(|(_, f)| f.clone())
    })
}

/// Takes the SMSH frames out of one received buffer of `len` bytes made of `stride`-sized
/// segments (GRO), hands them to `sink` (dropped without one) and relayed datagrams to
/// `relayed`, and moves the remaining (QUIC) segments to the front, in order. Returns the bytes
/// left for quinn.
fn take_frames(
    buf: &mut [u8],
    len: usize,
    stride: usize,
    sink: Option<&Sink>,
    addr: SocketAddr,
    relayed: &mut dyn FnMut(&mut [u8]),
) -> usize {
    let stride = stride.max(1).min(len.max(1));
    let mut kept = 0;
    let mut at = 0;
    while at < len {
        let end = (at + stride).min(len);
        if is_frame(&buf[at..end]) {
            if let Some(f) = sink {
                f.frame(addr, &mut buf[at..end]);
            }
        } else if envelope(&buf[at..end]).is_some() {
            relayed(&mut buf[at..end]);
        } else {
            if kept != at {
                buf.copy_within(at..end, kept);
            }
            kept += end - at;
        }
        at = end;
    }
    kept
}

/// The socket quinn drives, with SMSH frames taken out of what it receives.
pub struct DemuxSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    local: SocketAddr,
    /// Datagrams quinn may batch into one send (see [`DemuxSocket::new`]).
    segments: usize,
    /// [`DemuxSocket::receive`] reads the socket; quinn reads `stash`.
    owned: AtomicBool,
    stash: Mutex<Stash>,
    /// [`Stash::full`] as of the last change, read without the lock on every receive call.
    full: AtomicBool,
    /// The socket under `inner`, when it is ours: the data-plane thread can then take it over.
    udp: Option<Arc<crate::udp::Udp>>,
    /// The circuits we are an end of, by local address ([`crate::relayed`]).
    relayed: Relayed,
}

/// The stash is full at this many QUIC datagrams or bytes: the receiver then stops reading the
/// socket until the QUIC driver has taken some, so the kernel's socket buffer (1 MiB,
/// [`SOCKET_BUFFER`]) stays the queue, as when quinn reads the socket itself. (Measured: with a
/// stash that dropped at 256 KiB instead, a wave of 160 handshakes, two ~1,250-byte datagrams
/// each, lost Initials and completed 5 handshakes per second instead of ~300.)
const STASH_LEN: usize = 128;
const STASH_BYTES: usize = 128 * 1024;
/// Spare buffers kept for reuse, and the largest kept (a QUIC datagram; a GRO batch of them is
/// freed rather than held).
const SPARE_LEN: usize = 64;
const SPARE_MAX: usize = 2048;

/// QUIC datagrams read by [`DemuxSocket::receive`], waiting for the QUIC driver.
#[derive(Default)]
struct Stash {
    queue: VecDeque<(RecvMeta, Vec<u8>)>,
    /// Buffers of datagrams quinn took, reused (no allocation per datagram once warm).
    spare: Vec<Vec<u8>>,
    bytes: usize,
    /// the QUIC driver, to wake when a datagram is stashed (and, before the switch, the last
    /// task that polled, so the switch can move it over).
    waker: Option<Waker>,
    /// The receiver, waiting for room.
    receiver: Option<Waker>,
    dropped: u64,
}

impl Stash {
    fn set_waker(&mut self, cx: &Context<'_>) {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }

    /// Whether the receiver should wait for quinn before reading more.
    fn full(&self) -> bool {
        self.queue.len() >= STASH_LEN || self.bytes >= STASH_BYTES
    }

    /// Copies one datagram in. The receiver checks [`Stash::full`] before each receive call,
    /// so this holds at most one call's worth ([`RX_BUFS`] buffers) beyond the bound; past that
    /// it drops (counted), which only a bug would reach.
    fn push(&mut self, meta: RecvMeta, data: &[u8]) -> bool {
        if self.queue.len() >= STASH_LEN + RX_BUFS
            || self.bytes + data.len() > STASH_BYTES + RX_BUFS * RX_BUF_LEN
        {
            self.dropped += 1;
            return false;
        }
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(data);
        self.bytes += b.len();
        self.queue.push_back((meta, b));
        true
    }

    /// Moves stashed datagrams into quinn's buffers; returns how many.
    fn pop_into(&mut self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Some((m, data)) = self.queue.pop_front() else {
                break;
            };
            self.bytes -= data.len();
            // quinn's buffers are sized for the largest datagram the socket can return, as
            // the receiver's are; one that does not fit is dropped all the same.
            if data.len() <= bufs[n].len() {
                bufs[n][..data.len()].copy_from_slice(&data);
                meta[n] = RecvMeta {
                    len: data.len(),
                    ..m
                };
                n += 1;
            } else {
                self.dropped += 1;
            }
            if self.spare.len() < SPARE_LEN && data.capacity() <= SPARE_MAX {
                self.spare.push(data);
            }
        }
        if n > 0 && !self.full() {
            if let Some(w) = self.receiver.take() {
                w.wake();
            }
        }
        n
    }
}

/// Buffers one call of [`DemuxSocket::receive`] reads into, and each one's size: the largest
/// GRO batch the kernel builds (64 segments of a 1,472-byte payload) fits in one.
pub(crate) const RX_BUFS: usize = 8;
pub(crate) const RX_BUF_LEN: usize = 64 * 1472;

impl fmt::Debug for DemuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemuxSocket")
            .field("inner", &self.inner)
            .finish()
    }
}

impl DemuxSocket {
    /// Wraps quinn's socket. `control_only`: QUIC carries only the control plane (the fast lane
    /// carries the data), so quinn is told to send one datagram at a time: each connection keeps
    /// a send buffer of (segments x MTU), 15 KiB at quinn's 10 GSO segments, which at 1,000
    /// peers was 15 MiB of a router's memory for batches the control plane never fills.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, control_only: bool) -> io::Result<Arc<Self>> {
        Self::build(inner, control_only, None)
    }

    /// [`DemuxSocket::new`] over our own socket wrapper, which the data-plane thread can take
    /// over.
    pub fn over_udp(udp: Arc<crate::udp::Udp>, control_only: bool) -> io::Result<Arc<Self>> {
        Self::build(udp.clone(), control_only, Some(udp))
    }

    fn build(
        inner: Arc<dyn AsyncUdpSocket>,
        control_only: bool,
        udp: Option<Arc<crate::udp::Udp>>,
    ) -> io::Result<Arc<Self>> {
        let local = inner.local_addr()?;
        let segments = if control_only {
            1
        } else {
            inner.max_transmit_segments()
        };
        Ok(Arc::new(DemuxSocket {
            inner,
            local,
            segments,
            owned: AtomicBool::new(false),
            stash: Mutex::new(Stash::default()),
            full: AtomicBool::new(false),
            udp,
            relayed: Relayed::default(),
        }))
    }

    fn stash(&self) -> MutexGuard<'_, Stash> {
        // Nothing panics while holding it; a poisoned stash is still consistent.
        self.stash.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The circuits we are an end of.
    pub fn relayed(&self) -> &Relayed {
        &self.relayed
    }

    /// One relayed datagram `d` from `meta.addr`: when we are an end of its circuit, its
    /// payload goes to quinn from the circuit's local address (stashed; returns true); else, if
    /// the sink relays it, on to the circuit's other end.
    fn enveloped(&self, meta: &RecvMeta, d: &mut [u8], sink: Option<&Sink>) -> bool {
        let Some(id) = envelope(d) else {
            return false;
        };
        if let Some(local) = self.relayed.local(meta.addr, id) {
            let payload = &mut d[ENVELOPE_LEN..];
            // A data frame on the fast lane through the circuit: opened where it landed.
            if is_frame(payload) {
                if let Some(f) = sink {
                    f.frame(local, payload);
                }
                return false;
            }
            let payload = &*payload;
            let m = RecvMeta {
                addr: local,
                len: payload.len(),
                stride: payload.len(),
                ..*meta
            };
            let mut st = self.stash();
            let ok = st.push(m, payload);
            self.full.store(st.full(), Ordering::Release);
            return ok;
        }
        if let Some(to) = sink.and_then(|s| s.relay(meta.addr, d)) {
            let t = Transmit {
                destination: to,
                ecn: meta.ecn,
                contents: d,
                segment_size: None,
                src_ip: None,
            };
            // A full socket buffer drops it, as a full link would.
            let _ = self.inner.try_send(&t);
        }
        false
    }

    /// QUIC datagrams dropped because the QUIC driver fell behind the receiver.
    pub fn stash_dropped(&self) -> u64 {
        self.stash().dropped
    }

    /// Reads the socket from now on, for as long as the runtime runs: frames to the sink
    /// registered for this socket ([`set_sink`]), everything else to quinn through the stash.
    /// Spawn it once, on the thread the sink was registered on.
    pub async fn receive(self: Arc<Self>) {
        if !self.own() {
            return;
        }
        let mut buf = vec![0u8; RX_BUFS * RX_BUF_LEN];
        let mut meta = [RecvMeta::default(); RX_BUFS];
        loop {
            // Room in the stash first (the QUIC driver frees it and wakes us).
            if self.full.load(Ordering::Acquire) {
                std::future::poll_fn(|cx| {
                    let mut st = self.stash();
                    if st.full() {
                        st.receiver = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    Poll::Ready(())
                })
                .await;
            }
            let r = std::future::poll_fn(|cx| {
                let mut it = buf.chunks_mut(RX_BUF_LEN).map(IoSliceMut::new);
                let mut iovs: [IoSliceMut<'_>; RX_BUFS] =
                    std::array::from_fn(|_| it.next().unwrap_or_else(|| IoSliceMut::new(&mut [])));
                self.inner.poll_recv(cx, &mut iovs, &mut meta)
            })
            .await;
            match r {
                Ok(n) => {
                    let sink = sink(self.local);
                    if let Some(w) = self.dispatch(&mut buf, &meta[..n.min(RX_BUFS)], sink.as_ref())
                    {
                        w.wake();
                    }
                }
                // Unreachable ports answered with ICMP: nothing for us (and forgeable).
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                Err(e) => {
                    log::warn!("receiving on {}: {e}", self.local);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// From now on quinn reads the stash; false if someone already took the socket over.
    fn own(&self) -> bool {
        if self.owned.swap(true, Ordering::AcqRel) {
            return false;
        }
        // the QUIC driver may be parked on the socket's readiness, which the new reader takes
        // over: wake it so that it parks on the stash instead.
        if let Some(w) = self.stash().waker.take() {
            w.wake();
        }
        true
    }

    /// Whether [`DemuxSocket::take_over`] would succeed.
    pub(crate) fn takeable(&self) -> bool {
        self.udp.is_some() && !self.owned.load(Ordering::Acquire)
    }

    /// For the data-plane thread: the runtime stops reading the socket (and watching it) and
    /// quinn reads the stash. False if the socket is not our wrapper or is already taken.
    pub(crate) fn take_over(&self) -> bool {
        let Some(udp) = &self.udp else {
            return false;
        };
        if !self.own() {
            return false;
        }
        udp.stop_reading();
        true
    }

    /// Whether the stash has room for another receive call; if not, `waker` is woken once
    /// the QUIC driver has taken some.
    pub(crate) fn room_or_wait(&self, waker: &Waker) -> bool {
        if !self.full.load(Ordering::Acquire) {
            return true;
        }
        let mut st = self.stash();
        if st.full() {
            st.receiver = Some(waker.clone());
            return false;
        }
        true
    }

    /// Hands what one receive call returned to `sink` and to quinn.
    /// Returns the QUIC driver to wake if datagrams were stashed for it (the data-plane
    /// thread wakes it after handing the baton back, so that the runtime does not wake up only
    /// to wait for it).
    #[must_use]
    pub(crate) fn dispatch(
        &self,
        buf: &mut [u8],
        meta: &[RecvMeta],
        sink: Option<&Sink>,
    ) -> Option<Waker> {
        let mut took = false;
        let mut stashed = false;
        for (m, b) in meta.iter().zip(buf.chunks_mut(RX_BUF_LEN)) {
            let len = m.len.min(b.len());
            let mut relayed = false;
            let kept = take_frames(b, len, m.stride, sink, m.addr, &mut |d| {
                relayed |= self.enveloped(m, d, sink);
            });
            stashed |= relayed;
            took |= kept < len;
            if kept > 0 {
                let mut st = self.stash();
                stashed |= st.push(*m, &b[..kept]);
                self.full.store(st.full(), Ordering::Release);
            }
        }
        if took {
            if let Some(f) = sink {
                f.end_of_batch();
            }
        }
        if stashed {
            self.stash().waker.take()
        } else {
            None
        }
    }
}

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        if is_mapped(t.destination) {
            return self.relayed.send(&*self.inner, t);
        }
        self.inner.try_send(t)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if self.owned.load(Ordering::Acquire) {
            let mut st = self.stash();
            let n = st.pop_into(bufs, meta);
            self.full.store(st.full(), Ordering::Release);
            if n == 0 {
                st.set_waker(cx);
                return Poll::Pending;
            }
            return Poll::Ready(Ok(n));
        }
        // Relayed datagrams read by an earlier call first.
        {
            let mut st = self.stash();
            let n = st.pop_into(bufs, meta);
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            // Remembered for the switch to [`DemuxSocket::receive`].
            st.set_waker(cx);
        }
        let n = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        let sink = sink(self.local);
        let mut took = false;
        let mut relayed = false;
        for (b, m) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
            // quinn handles a zero-length entry as nothing received.
            let len = m.len.min(b.len());
            let seen = *m;
            m.len = take_frames(&mut b[..], len, m.stride, sink.as_ref(), m.addr, &mut |d| {
                relayed |= self.enveloped(&seen, d, sink.as_ref());
            });
            took |= m.len < len;
        }
        if relayed {
            // Stashed for the next call.
            cx.waker().wake_by_ref();
        }
        if took {
            if let Some(f) = sink {
                f.end_of_batch();
            }
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.segments
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Kernel buffer sizes asked for on the endpoint's socket. A TUN read with offload yields up to
/// 45 frames that leave in one GSO send, and the receiver takes them in GRO batches while it
/// writes to its TUN one packet at a time; Linux's default (208 KiB) overflowed under one TCP
/// stream (measured: 23,000 lost frames in 3 s). Only used while backlogged.
pub const SOCKET_BUFFER: usize = 1 << 20;

/// Grows the socket's receive and send buffers to [`SOCKET_BUFFER`] (past `rmem_max` when
/// running as root, as a router daemon does); best effort.
pub fn grow_buffers(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let v = SOCKET_BUFFER as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for opt in [force, plain] {
            // SAFETY: setsockopt with a pointer to a c_int and its size; fd is open.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
    }
}

/// quinn's hashed connection-ID generator, never issuing an ID that starts with "MSH" (see the
/// module documentation). One ID in 16.7 million is drawn again.
pub struct NoMagicCids(pub quinn_proto::HashedConnectionIdGenerator);

impl ConnectionIdGenerator for NoMagicCids {
    fn generate_cid(&mut self) -> ConnectionId {
        loop {
            let c = self.0.generate_cid();
            if !c.starts_with(&SMSH_PREFIX[1..4]) {
                return c;
            }
        }
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        self.0.validate(cid)
    }

    fn cid_len(&self) -> usize {
        self.0.cid_len()
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        self.0.cid_lifetime()
    }
}

#[cfg(test)]
mod tests;
