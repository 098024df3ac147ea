//! The endpoint's UDP socket as quinn sees it when the fast lane carries the data, registered
//! with the runtime for reading only.
//!
//! Why not quinn's tokio wrapper: `tokio::net::UdpSocket` asks epoll for `EPOLLOUT` as well, and
//! Linux signals `EPOLLOUT` after every datagram sent on the socket (the buffer space comes back
//! as soon as the datagram leaves, at once on a veth). Measured with the scheduler and system-call
//! tracepoints on a ping through the tunnel: after each frame sent, one more `epoll_wait` that
//! returns at once and one more runtime turn before the daemon sleeps, while the other end of the
//! tunnel, woken on the same core, waits for it. Being writable only matters when a send finds
//! the buffer full, so that is when it is asked for: on a duplicate of the descriptor, registered
//! until it reports writable once.
//!
//! Sends and receives go through quinn-udp's [`UdpSocketState`] as with quinn's wrapper (GSO,
//! GRO, ECN, packet info).

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A UDP socket whose readability the runtime watches, and whose writability it watches only
/// while a sender waits for it.
pub struct Udp {
    socket: std::net::UdpSocket,
    /// A duplicate of the socket's descriptor registered for readability, until a reader of
    /// our own takes the socket over ([`Udp::stop_reading`]).
    reader: Mutex<Option<AsyncFd<std::net::UdpSocket>>>,
    state: UdpSocketState,
}

impl fmt::Debug for Udp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Udp")
            .field("local", &self.socket.local_addr().ok())
            .finish()
    }
}

impl Udp {
    /// Wraps a bound socket. Must be called inside a tokio runtime.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<Arc<Self>> {
        let state = UdpSocketState::new((&socket).into())?;
        socket.set_nonblocking(true)?;
        let dup = socket.try_clone()?;
        Ok(Arc::new(Udp {
            socket,
            // SAFETY: the duplicate owns its descriptor, which stays open while registered
            // (the AsyncFd owns it and deregisters before dropping it).
            reader: Mutex::new(Some(unsafe {
                AsyncFd::register_with_interest(dup, Interest::READABLE)?
            })),
            state,
        }))
    }

    /// The runtime stops watching the socket for datagrams: a reader of our own, on its own
    /// descriptor set, reads it from now on ([`crate::dataplane::thread`]); `poll_recv` then never
    /// returns. Sends are unaffected.
    pub fn stop_reading(&self) {
        self.reader.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Waits for writability on a registration of its own, made when first polled and dropped
/// (deregistered) once it reports.
struct WritePoller {
    socket: Arc<Udp>,
    wait: Option<AsyncFd<std::net::UdpSocket>>,
}

impl fmt::Debug for WritePoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WritePoller")
            .field("waiting", &self.wait.is_some())
            .finish()
    }
}

impl UdpPoller for WritePoller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.wait.is_none() {
            let dup = self.socket.socket.try_clone()?;
            // SAFETY: as in `Udp::new`: the duplicate is owned by the AsyncFd.
            self.wait = Some(unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE)? });
        }
        let Some(wait) = self.wait.as_ref() else {
            return Poll::Ready(Ok(()));
        };
        let r = ready!(wait.poll_write_ready(cx)).map(|_| ());
        self.wait = None;
        Poll::Ready(r)
    }
}

impl AsyncUdpSocket for Udp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritePoller {
            socket: self,
            wait: None,
        })
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        self.state.send((&self.socket).into(), t)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let Some(io) = reader.as_ref() else {
            return Poll::Pending;
        };
        loop {
            let mut guard = ready!(io.poll_read_ready(cx))?;
            // A `WouldBlock` clears the readiness and the loop waits again.
            if let Ok(r) = guard.try_io(|io| self.state.recv(io.get_ref().into(), bufs, meta)) {
                // Fewer datagrams than asked for: recvmmsg stopped because the queue was
                // empty, so the next read would only say so. Anything that arrives from now on
                // is a new edge for epoll. (Saves one system call per wake-up: on a ping, the
                // `recvmmsg` that returned EAGAIN after each frame.) A pending socket error (an
                // ICMP unreachable) does not end a batch early: Linux reports it only once the
                // queue is empty.
                let asked = bufs.len().min(meta.len()).min(quinn::udp::BATCH_SIZE);
                if matches!(r, Ok(n) if n < asked) {
                    guard.clear_ready();
                }
                return Poll::Ready(r);
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The poller reports writable (registering a duplicate, then dropping it), again on a
    /// second wait, and a datagram sent to the socket comes out of `poll_recv` with its
    /// source. (quinn over this socket is what every daemon test runs.)
    #[test]
    fn reports_writable_and_receives() {
        crate::block_on_local(async {
            let a = Udp::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
            let to = a.local_addr().unwrap();
            let mut poller = a.clone().create_io_poller();
            for _ in 0..2 {
                let w = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)),
                )
                .await;
                assert!(matches!(w, Ok(Ok(()))), "never writable: {w:?}");
            }
            let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let payload = [7u8; 1200];
            let t = Transmit {
                destination: peer.local_addr().unwrap(),
                ecn: None,
                contents: &payload,
                segment_size: None,
                src_ip: None,
            };
            a.try_send(&t).unwrap();
            let mut got = [0u8; 1500];
            assert_eq!(peer.recv(&mut got).unwrap(), 1200);

            // Receiving: a datagram from elsewhere arrives through poll_recv.
            peer.send_to(b"hello", to).unwrap();
            let mut b = [0u8; 64];
            let mut meta = [RecvMeta::default(); 1];
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                std::future::poll_fn(|cx| {
                    let mut iovs = [IoSliceMut::new(&mut b)];
                    a.poll_recv(cx, &mut iovs, &mut meta)
                }),
            )
            .await
            .expect("nothing received")
            .unwrap();
            assert_eq!(n, 1);
            assert_eq!(&b[..meta[0].len], b"hello");
            assert_eq!(meta[0].addr, peer.local_addr().unwrap());
        })
        .expect("tokio runtime");
    }
}
