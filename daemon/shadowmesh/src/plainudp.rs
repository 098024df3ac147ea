//! A UDP socket for quinn without control messages: no GSO/GRO, no ECN, no packet info.
//!
//! quinn-udp passes `UDP_SEGMENT`, `IP_TOS` and `IP_PKTINFO` as `sendmsg` control messages.
//! Where those are not understood, every send fails with EINVAL: measured under qemu-user for
//! big-endian MIPS (`qemu-mips`), where quinn-udp's own fallback (retry without `IP_TOS`) still
//! fails and the node can reach nobody. This socket uses plain `sendto`/`recvfrom` instead; it
//! costs the batching and ECN that quinn-udp provides, so it is opt-in (`option plain_udp '1'`).

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// A tokio UDP socket that quinn drives with plain datagram calls.
pub struct PlainUdp {
    io: tokio::net::UdpSocket,
}

impl fmt::Debug for PlainUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainUdp")
            .field("local", &self.io.local_addr().ok())
            .finish()
    }
}

impl PlainUdp {
    /// Wraps a bound socket. Must be called inside a tokio runtime.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<Arc<Self>> {
        socket.set_nonblocking(true)?;
        Ok(Arc::new(PlainUdp {
            io: tokio::net::UdpSocket::from_std(socket)?,
        }))
    }
}

#[derive(Debug)]
struct Poller(Arc<PlainUdp>);

impl UdpPoller for Poller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.io.poll_send_ready(cx)
    }
}

impl AsyncUdpSocket for PlainUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Poller(self))
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        // max_transmit_segments() is 1, so quinn never hands us a batch.
        self.io.try_send_to(t.contents, t.destination).map(|_| ())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            match self.io.try_recv_from(buf) {
                Ok((len, addr)) => {
                    *m = RecvMeta {
                        addr,
                        len,
                        stride: len,
                        ..Default::default()
                    };
                    return Poll::Ready(Ok(1));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }
}
