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
//! local socket address in a thread-local by the data plane, on the runtime's one thread;
//! nothing crosses threads, and several nodes in one process each get their own), the rest to
//! quinn. A QUIC short-header packet could start with `0x53` ('S', one first byte in 32 after
//! header protection) followed by its destination connection ID, so [`NoMagicCids`] makes sure
//! no connection ID we issue starts with "MSH": no QUIC packet addressed to us can look like a
//! frame. Long-header packets start with `0b11`, never `0x53`.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use shadowmesh_proto::consts::FRAME_HEADER_LEN;

/// The first six bytes of every SMSH frame: magic `SMSH`, version 1.
pub const SMSH_PREFIX: [u8; 6] = [0x53, 0x4D, 0x53, 0x48, 0x00, 0x01];

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

fn to_sink(local: SocketAddr, from: SocketAddr, frame: &mut [u8]) {
    if let Some(f) = sink(local) {
        f.frame(from, frame);
    }
}

/// Takes the SMSH frames out of one received buffer of `len` bytes made of `stride`-sized
/// segments (GRO), hands them to the sink, and moves the remaining (QUIC) segments to the
/// front, in order. Returns the bytes left for quinn.
fn take_frames(
    buf: &mut [u8],
    len: usize,
    stride: usize,
    local: SocketAddr,
    addr: SocketAddr,
) -> usize {
    let stride = stride.max(1).min(len.max(1));
    let mut kept = 0;
    let mut at = 0;
    while at < len {
        let end = (at + stride).min(len);
        if is_frame(&buf[at..end]) {
            to_sink(local, addr, &mut buf[at..end]);
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
}

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
        }))
    }
}

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(t)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        let mut took = false;
        for (b, m) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
            // quinn handles a zero-length entry as nothing received.
            let len = m.len.min(b.len());
            m.len = take_frames(&mut b[..], len, m.stride, self.local, m.addr);
            took |= m.len < len;
        }
        if took {
            if let Some(f) = sink(self.local) {
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
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn frames_are_taken_out_and_quic_kept_in_order() {
        struct Count(Rc<Cell<usize>>);
        impl FrameSink for Count {
            fn frame(&self, _: SocketAddr, f: &mut [u8]) {
                assert!(is_frame(f));
                self.0.set(self.0.get() + 1);
            }
            fn end_of_batch(&self) {}
        }
        let seen = Rc::new(Cell::new(0usize));
        let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
        set_sink(local, Some(Rc::new(Count(seen.clone()))));
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut frame = [0u8; 40];
        frame[..6].copy_from_slice(&SMSH_PREFIX);
        let quic_a = [0x40u8; 40];
        let quic_b = [0x41u8; 25];
        // GRO batch: frame, QUIC, frame, QUIC (shorter, last).
        let mut buf = Vec::new();
        buf.extend_from_slice(&frame);
        buf.extend_from_slice(&quic_a);
        buf.extend_from_slice(&frame);
        buf.extend_from_slice(&quic_b);
        let len = buf.len();
        let kept = take_frames(&mut buf, len, 40, local, addr);
        assert_eq!(seen.get(), 2);
        assert_eq!(kept, 65);
        assert_eq!(&buf[..40], &quic_a);
        assert_eq!(&buf[40..65], &quic_b);
        // A 0x53 first byte alone is QUIC (a short header), not a frame.
        let mut short = [
            0x53u8, 0x00, 0x01, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let l = short.len();
        assert_eq!(take_frames(&mut short, l, l, local, addr), l);
        // Every segment a frame: nothing for quinn.
        let mut two = [frame, frame].concat();
        assert_eq!(take_frames(&mut two, 80, 40, local, addr), 0);
        assert_eq!(seen.get(), 4);
        // Another socket's frames do not reach this sink.
        let other: SocketAddr = "127.0.0.1:10".parse().unwrap();
        assert_eq!(take_frames(&mut two, 80, 40, other, addr), 0);
        assert_eq!(seen.get(), 4);
        set_sink(local, None);
    }

    #[test]
    fn issued_connection_ids_never_look_like_frames() {
        let mut g = NoMagicCids(quinn_proto::HashedConnectionIdGenerator::from_key(7));
        for _ in 0..10_000 {
            let c = g.generate_cid();
            assert!(!c.starts_with(b"MSH"));
            assert!(g.validate(&c).is_ok());
        }
    }
}
