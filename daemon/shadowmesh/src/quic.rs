//! QUIC endpoints and connections: quinn-proto's state machines driven by one task per
//! endpoint, for the runtime's single thread.
//!
//! Why not quinn's async layer, which the daemon used before: memory. Measured with the daemon's
//! TLS and transport settings (`examples/quic_floor.rs`, BENCHMARKS.md): one connection holds
//! 26.5 KiB of heap under quinn and 16.8 KiB under quinn-proto driven by a plain loop. quinn gives
//! every connection an event channel from the endpoint (tokio allocates its first 32-slot block
//! at once, 6.9 KiB), a mutex-guarded state around the protocol state with a transmit buffer of
//! its own, one-shot channels and a driver task. Here the endpoint's task owns every connection:
//! a datagram goes straight to its connection's state machine, one transmit buffer serves them
//! all, one timer wakes for the earliest deadline, and a task that waits on a connection leaves
//! its waker there. At 1,000 members that is the difference between 42 and about 31 MiB.
//!
//! The API is the part of quinn's the daemon uses, with quinn's names and semantics: a
//! connection closes when its last handle is dropped, a dropped send stream finishes, a
//! dropped receive stream with unread data stops it. The socket is quinn's
//! [`AsyncUdpSocket`], so every socket the daemon has (plain, demultiplexed with the fast
//! lane, relayed) serves unchanged.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::future::{poll_fn, Future};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn::udp::{RecvMeta, Transmit as UdpTransmit, BATCH_SIZE};
use quinn::{AsyncUdpSocket, UdpPoller};
pub use quinn_proto::{
    ClientConfig, ConnectError, ConnectionError, ConnectionId, ConnectionStats, EndpointConfig,
    ServerConfig, Side, VarInt,
};
use quinn_proto::{ConnectionHandle, DatagramEvent, Dir, Event, StreamEvent, StreamId};

/// Datagrams sent per connection before the others get a turn (quinn's figure).
const MAX_TRANSMIT_DATAGRAMS: usize = 20;
/// GSO segments per send, at most (quinn's figure).
const MAX_TRANSMIT_SEGMENTS: usize = 10;
/// Bytes received per turn of the task before it serves the connections and lets other tasks
/// run: the tasks that read datagrams must get to them before a connection's datagram queue
/// (`router_transport`: 256 KiB) overflows and drops the oldest. (Reading up to 16 MiB per
/// turn cost 10% of the QUIC lane's throughput in `bench-tunnel`; quinn bounds its reads by
/// time, 50 us.)
const RECV_BUDGET: usize = 64 * 1024;
/// Receive calls per turn, at most (each may return nothing but an ICMP error).
const RECV_CALLS_PER_TURN: usize = 32;
/// Receive buffers: up to [`BATCH_SIZE`] of them, each large enough for a GRO batch.
const RX_BUFS: usize = if BATCH_SIZE < 8 { BATCH_SIZE } else { 8 };
const RX_BUF_LEN: usize = 64 * 1024;

/// Everything an endpoint owns, behind one `RefCell`: the task that drives it and the handles
/// (endpoint, connections, streams) borrow it in turn, never across an `.await`.
struct State {
    socket: Arc<dyn AsyncUdpSocket>,
    writable: Pin<Box<dyn UdpPoller>>,
    endpoint: quinn_proto::Endpoint,
    /// By quinn-proto's connection handle (it reuses freed ones, as a slab does).
    conns: Vec<Option<Conn>>,
    live: usize,
    /// Connections with something to send, events to hand out or a timer to re-arm.
    dirty: Vec<usize>,
    /// The next turn's dirty list while this one is served (kept: no allocation per turn).
    again: Vec<usize>,
    /// (deadline, handle, stable id); an entry whose connection has since re-armed is stale
    /// and skipped when it comes up.
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    incoming: VecDeque<quinn_proto::Incoming>,
    accepting: Option<Waker>,
    driver: Option<Waker>,
    idle: Vec<Waker>,
    /// One transmit buffer for every connection.
    tx: Vec<u8>,
    /// A transmit the socket refused for lack of room: (connection, transmit), sent first once
    /// the socket is writable.
    blocked: Option<(Option<usize>, quinn_proto::Transmit)>,
    /// Set by [`Endpoint::close`]: the code and reason every connection closes with, including
    /// one accepted later from an attempt taken before (it would otherwise stay open and keep
    /// `wait_idle` waiting).
    closed: Option<(VarInt, Bytes)>,
    /// Endpoint handles alive: the task ends once there are none and no connection is left.
    handles: usize,
    next_stable: u64,
    me: Weak<RefCell<State>>,
}

struct Conn {
    inner: Box<quinn_proto::Connection>,
    stable: u64,
    /// The deadline this connection has in the timer heap.
    armed: Option<Instant>,
    dirty: bool,
    /// Tasks waiting for the handshake, a stream or the end of the connection: few, all woken
    /// at each such event.
    waiters: Vec<Waker>,
    /// Tasks waiting for a datagram, woken apart: one datagram must not wake a stream's reader.
    readers: Vec<Waker>,
    handle: Weak<Handle>,
    connected: bool,
    error: Option<ConnectionError>,
}

impl Conn {
    /// Closes the connection here: handles see it closed at once, as quinn's do.
    fn close(&mut self, code: VarInt, reason: Bytes) {
        if !self.inner.is_closed() {
            self.inner.close(Instant::now(), code, reason);
        }
        if self.error.is_none() {
            self.error = Some(ConnectionError::LocallyClosed);
        }
        self.wake_all();
    }

    fn wake_all(&mut self) {
        for w in self.waiters.drain(..).chain(self.readers.drain(..)) {
            w.wake();
        }
    }
}

impl State {
    fn conn(&mut self, ch: usize, stable: u64) -> Option<&mut Conn> {
        self.conns
            .get_mut(ch)
            .and_then(Option::as_mut)
            .filter(|c| c.stable == stable)
    }

    fn mark(&mut self, ch: usize) {
        if let Some(c) = self.conns.get_mut(ch).and_then(Option::as_mut) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(ch);
            }
        }
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }

    fn insert(&mut self, ch: ConnectionHandle, conn: quinn_proto::Connection) -> Connection {
        let stable = self.next_stable;
        self.next_stable += 1;
        let handle = Rc::new(Handle {
            ch: ch.0,
            stable,
            state: self.me.clone(),
            ended: RefCell::new(None),
        });
        if self.conns.len() <= ch.0 {
            self.conns.resize_with(ch.0 + 1, || None);
        }
        let mut c = Conn {
            inner: Box::new(conn),
            stable,
            armed: None,
            dirty: false,
            waiters: Vec::new(),
            readers: Vec::new(),
            handle: Rc::downgrade(&handle),
            connected: false,
            error: None,
        };
        if let Some((code, reason)) = &self.closed {
            c.close(*code, reason.clone());
        }
        self.conns[ch.0] = Some(c);
        self.live += 1;
        self.mark(ch.0);
        Connection(handle)
    }

    /// Sends a stateless answer (Retry, refusal, version negotiation, reset): best effort.
    fn respond(&self, t: &quinn_proto::Transmit, buf: &[u8]) {
        if let Err(e) = self.socket.try_send(&udp_transmit(t, buf)) {
            if e.kind() != io::ErrorKind::WouldBlock {
                log::debug!("QUIC response to {}: {e}", t.destination);
            }
        }
    }

    fn send_response(&mut self, t: &quinn_proto::Transmit) {
        self.respond(t, &self.tx);
        self.tx.clear();
    }

    /// Feeds one received datagram to the endpoint.
    fn receive(&mut self, now: Instant, meta: &RecvMeta, data: BytesMut) {
        let ecn = meta
            .ecn
            .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
        match self
            .endpoint
            .handle(now, meta.addr, meta.dst_ip, ecn, data, &mut self.tx)
        {
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.closed.is_some() {
                    let t = self.endpoint.refuse(incoming, &mut self.tx);
                    self.send_response(&t);
                } else {
                    self.incoming.push_back(incoming);
                    if let Some(w) = self.accepting.take() {
                        w.wake();
                    }
                }
            }
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(c) = self.conns.get_mut(ch.0).and_then(Option::as_mut) {
                    c.inner.handle_event(ev);
                    self.mark(ch.0);
                }
            }
            Some(DatagramEvent::Response(t)) => self.send_response(&t),
            None => self.tx.clear(),
        }
    }

    /// Fires the timers that are due.
    fn expire(&mut self, now: Instant) {
        while let Some(&Reverse((at, ch, stable))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conn(ch, stable) else {
                continue;
            };
            if c.armed != Some(at) {
                continue;
            }
            c.armed = None;
            if c.inner.poll_timeout().is_some_and(|t| t <= now) {
                c.inner.handle_timeout(now);
            }
            self.mark(ch);
        }
    }

    /// Serves the connections marked dirty: endpoint events, transmits, application events,
    /// timers. False if the socket ran out of room (the rest stay dirty).
    fn serve(&mut self, now: Instant) -> bool {
        let max_segments = self
            .socket
            .max_transmit_segments()
            .clamp(1, MAX_TRANSMIT_SEGMENTS);
        let mut again = std::mem::take(&mut self.again);
        again.clear();
        let mut i = 0;
        while i < self.dirty.len() {
            let ch = self.dirty[i];
            i += 1;
            let Some(mut c) = self.conns.get_mut(ch).and_then(Option::take) else {
                continue;
            };
            while let Some(ev) = c.inner.poll_endpoint_events() {
                if let Some(back) = self.endpoint.handle_event(ConnectionHandle(ch), ev) {
                    c.inner.handle_event(back);
                }
            }
            let mut sent = 0;
            let mut full = false;
            while sent < MAX_TRANSMIT_DATAGRAMS {
                self.tx.clear();
                let Some(t) = c.inner.poll_transmit(now, max_segments, &mut self.tx) else {
                    break;
                };
                sent += t.segment_size.map_or(1, |s| t.size.div_ceil(s));
                match self.socket.try_send(&udp_transmit(&t, &self.tx)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.blocked = Some((Some(ch), t));
                        full = true;
                        break;
                    }
                    // Unreachable, or a path that vanished: QUIC's loss recovery deals with it.
                    Err(e) => log::debug!("QUIC send to {}: {e}", t.destination),
                }
            }
            let more = sent >= MAX_TRANSMIT_DATAGRAMS;
            let (mut streams, mut datagrams) = (false, false);
            while let Some(ev) = c.inner.poll() {
                match ev {
                    Event::Connected => {
                        c.connected = true;
                        (streams, datagrams) = (true, true);
                    }
                    Event::ConnectionLost { reason } => {
                        if c.error.is_none() {
                            c.error = Some(reason);
                        }
                        (streams, datagrams) = (true, true);
                    }
                    Event::DatagramReceived => datagrams = true,
                    Event::Stream(StreamEvent::Available { .. })
                    | Event::Stream(StreamEvent::Writable { .. })
                    | Event::Stream(StreamEvent::Readable { .. })
                    | Event::Stream(StreamEvent::Opened { .. })
                    | Event::Stream(StreamEvent::Finished { .. })
                    | Event::Stream(StreamEvent::Stopped { .. }) => streams = true,
                    // Nobody waits for room to queue datagrams (the oldest queued one is
                    // dropped instead), and the handshake data is read once connected.
                    Event::HandshakeDataReady | Event::DatagramsUnblocked => {}
                }
            }
            if streams {
                for w in c.waiters.drain(..) {
                    w.wake();
                }
            }
            if datagrams {
                for w in c.readers.drain(..) {
                    w.wake();
                }
            }
            while let Some(ev) = c.inner.poll_endpoint_events() {
                if let Some(back) = self.endpoint.handle_event(ConnectionHandle(ch), ev) {
                    c.inner.handle_event(back);
                }
            }
            if c.inner.is_drained() {
                if c.error.is_none() {
                    c.error = Some(ConnectionError::LocallyClosed);
                }
                if let Some(h) = c.handle.upgrade() {
                    *h.ended.borrow_mut() = c.error.clone();
                }
                c.wake_all();
                // The endpoint forgot it when handed the connection's last event (drained).
                self.live -= 1;
                if self.live == 0 {
                    for w in self.idle.drain(..) {
                        w.wake();
                    }
                }
                continue;
            }
            if let Some(at) = c.inner.poll_timeout() {
                if c.armed.is_none_or(|a| at < a) {
                    c.armed = Some(at);
                    self.timers.push(Reverse((at, ch, c.stable)));
                }
            }
            c.dirty = more || full;
            self.conns[ch] = Some(c);
            if full {
                self.dirty.drain(..i - 1);
                self.dirty.append(&mut again);
                self.again = again;
                return false;
            }
            if more {
                again.push(ch);
            }
        }
        self.dirty.clear();
        std::mem::swap(&mut self.dirty, &mut again);
        self.again = again;
        // Stale timers pile up while deadlines move earlier: rebuild once they dominate.
        if self.timers.len() > 2 * self.live + 64 {
            self.timers.clear();
            for (ch, c) in self.conns.iter().enumerate() {
                if let Some(c) = c {
                    if let Some(at) = c.armed {
                        self.timers.push(Reverse((at, ch, c.stable)));
                    }
                }
            }
        }
        true
    }

    /// Sends the transmit the socket refused, once it has room. False while it has none.
    fn unblock(&mut self, cx: &mut Context<'_>) -> bool {
        while let Some((_, t)) = &self.blocked {
            match self.writable.as_mut().poll_writable(cx) {
                Poll::Pending => return false,
                Poll::Ready(Err(e)) => {
                    log::debug!("waiting for room on the QUIC socket: {e}");
                }
                Poll::Ready(Ok(())) => {}
            }
            match self.socket.try_send(&udp_transmit(t, &self.tx)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                _ => {
                    if let Some((Some(ch), _)) = self.blocked.take() {
                        // Its other transmits are still to come.
                        self.mark(ch);
                    }
                    self.tx.clear();
                }
            }
        }
        true
    }
}

fn udp_transmit<'a>(t: &quinn_proto::Transmit, buf: &'a [u8]) -> UdpTransmit<'a> {
    UdpTransmit {
        destination: t.destination,
        ecn: t
            .ecn
            .map(|e| quinn::udp::EcnCodepoint::from_bits(e as u8).expect("valid ECN")),
        contents: &buf[..t.size],
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    }
}

type Shared = Rc<RefCell<State>>;

/// The task that drives an endpoint: reads the socket, fires timers, serves connections.
async fn drive(state: Shared) {
    let mut rx = vec![0u8; RX_BUFS * RX_BUF_LEN];
    let mut meta = [RecvMeta::default(); RX_BUFS];
    let mut sleep = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
    let mut sleeping_until: Option<Instant> = None;
    poll_fn(|cx| {
        let mut guard = state.borrow_mut();
        let st = &mut *guard;
        // What this turn marks, this turn serves: no waking ourselves.
        st.driver = None;
        let (mut calls, mut received) = (0, 0);
        for turn in 0.. {
            let now = Instant::now();
            let mut progress = false;
            while calls < RECV_CALLS_PER_TURN && received < RECV_BUDGET {
                let r = {
                    let mut it = rx.chunks_mut(RX_BUF_LEN).map(IoSliceMut::new);
                    let mut iovs: [IoSliceMut<'_>; RX_BUFS] = std::array::from_fn(|_| {
                        it.next().unwrap_or_else(|| IoSliceMut::new(&mut []))
                    });
                    st.socket.poll_recv(cx, &mut iovs, &mut meta)
                };
                match r {
                    Poll::Pending => break,
                    Poll::Ready(Ok(n)) => {
                        calls += 1;
                        progress = true;
                        for (m, b) in meta.iter().zip(rx.chunks(RX_BUF_LEN)).take(n) {
                            // One copy per receive buffer; its datagrams (a GRO batch) are
                            // slices of it.
                            let mut data = BytesMut::from(&b[..m.len.min(b.len())]);
                            received += data.len();
                            while !data.is_empty() {
                                let d = data.split_to(m.stride.max(1).min(data.len()));
                                st.receive(now, m, d);
                            }
                        }
                    }
                    // Unreachable ports answered with ICMP: undefined in QUIC, and forgeable.
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                        calls += 1;
                    }
                    Poll::Ready(Err(e)) => {
                        log::warn!("receiving QUIC datagrams: {e}");
                        break;
                    }
                }
            }
            // A fresh time for the timers and the pacer: the reads above may have taken a while,
            // and a stale one makes the pacer hold back packets it would send.
            let now = Instant::now();
            st.expire(now);
            // While the socket has no room, connections wait (the poller wakes us).
            let sending = st.unblock(cx) && st.serve(now);
            if calls >= RECV_CALLS_PER_TURN || received >= RECV_BUDGET || turn >= 16 {
                // Let the other tasks run, then carry on.
                cx.waker().wake_by_ref();
                break;
            }
            if !progress && (!sending || st.dirty.is_empty()) {
                break;
            }
        }
        // Sleep until the earliest deadline.
        let next = st.timers.peek().map(|Reverse((at, _, _))| *at);
        if next != sleeping_until {
            sleeping_until = next;
            let at = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            sleep.as_mut().reset(tokio::time::Instant::from_std(at));
        }
        if sleep.as_mut().poll(cx).is_ready() {
            sleeping_until = None;
            sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + Duration::from_secs(3600));
            cx.waker().wake_by_ref();
        }
        if st.handles == 0 && st.live == 0 {
            return Poll::Ready(());
        }
        st.driver = Some(cx.waker().clone());
        Poll::Pending
    })
    .await;
}

/// A QUIC endpoint: one socket, any number of connections. Cloning gives another handle to the
/// same endpoint. Must be created inside a `LocalSet`.
pub struct Endpoint {
    state: Shared,
}

impl Clone for Endpoint {
    fn clone(&self) -> Self {
        self.state.borrow_mut().handles += 1;
        Endpoint {
            state: self.state.clone(),
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Ok(mut st) = self.state.try_borrow_mut() {
            st.handles -= 1;
            if st.handles == 0 {
                if let Some(w) = st.driver.take() {
                    w.wake();
                }
            }
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint").finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint on `socket`, accepting connections if `server` is given.
    pub fn new(
        config: EndpointConfig,
        server: Option<ServerConfig>,
        socket: Arc<dyn AsyncUdpSocket>,
    ) -> io::Result<Endpoint> {
        let endpoint = quinn_proto::Endpoint::new(
            Arc::new(config),
            server.map(Arc::new),
            !socket.may_fragment(),
            None,
        );
        let writable = socket.clone().create_io_poller();
        let state = Rc::new_cyclic(|me| {
            RefCell::new(State {
                socket,
                writable,
                endpoint,
                conns: Vec::new(),
                live: 0,
                dirty: Vec::new(),
                again: Vec::new(),
                timers: BinaryHeap::new(),
                incoming: VecDeque::new(),
                accepting: None,
                driver: None,
                idle: Vec::new(),
                tx: Vec::new(),
                blocked: None,
                closed: None,
                handles: 1,
                next_stable: 1,
                me: me.clone(),
            })
        });
        tokio::task::spawn_local(drive(state.clone()));
        Ok(Endpoint { state })
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.state.borrow().socket.local_addr()
    }

    /// Starts a connection to `addr`, whose certificate must be valid for `server_name`.
    pub fn connect_with(
        &self,
        config: ClientConfig,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connecting, ConnectError> {
        let mut st = self.state.borrow_mut();
        if st.closed.is_some() {
            return Err(ConnectError::EndpointStopping);
        }
        let (ch, conn) = st
            .endpoint
            .connect(Instant::now(), config, addr, server_name)?;
        Ok(Connecting(Some(st.insert(ch, conn))))
    }

    /// The next incoming connection attempt; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<Incoming> {
        poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            if st.closed.is_some() {
                return Poll::Ready(None);
            }
            if let Some(i) = st.incoming.pop_front() {
                st.handles += 1;
                return Poll::Ready(Some(Incoming {
                    inner: Some(i),
                    endpoint: Endpoint {
                        state: self.state.clone(),
                    },
                }));
            }
            st.accepting = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Closes every connection with `code` and `reason` and refuses new ones.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        let mut st = self.state.borrow_mut();
        let reason = Bytes::copy_from_slice(reason);
        st.closed = Some((code, reason.clone()));
        let mut closing = Vec::new();
        for (ch, c) in st.conns.iter_mut().enumerate() {
            if let Some(c) = c {
                c.close(code, reason.clone());
                closing.push(ch);
            }
        }
        for ch in closing {
            st.mark(ch);
        }
        while let Some(i) = st.incoming.pop_front() {
            let mut buf = Vec::new();
            let t = st.endpoint.refuse(i, &mut buf);
            st.respond(&t, &buf);
        }
        if let Some(w) = st.accepting.take() {
            w.wake();
        }
    }

    /// Waits until every connection is gone.
    pub async fn wait_idle(&self) {
        poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            if st.live == 0 {
                return Poll::Ready(());
            }
            wait(&mut st.idle, cx);
            Poll::Pending
        })
        .await
    }
}

/// An incoming connection attempt, before it is accepted, refused, retried or ignored. Dropped
/// undecided, it is refused.
pub struct Incoming {
    inner: Option<quinn_proto::Incoming>,
    endpoint: Endpoint,
}

impl Incoming {
    fn get(&self) -> &quinn_proto::Incoming {
        self.inner.as_ref().expect("undecided")
    }

    /// Where it comes from.
    pub fn remote_address(&self) -> SocketAddr {
        self.get().remote_address()
    }

    /// Whether the source address was proven (a Retry token).
    pub fn remote_address_validated(&self) -> bool {
        self.get().remote_address_validated()
    }

    /// The destination connection ID of the client's first Initial.
    pub fn orig_dst_cid(&self) -> ConnectionId {
        *self.get().orig_dst_cid()
    }

    /// Accepts: the handshake runs.
    pub fn accept(mut self) -> Result<Connecting, ConnectionError> {
        let i = self.inner.take().expect("undecided");
        let mut st = self.endpoint.state.borrow_mut();
        let mut buf = Vec::new();
        match st.endpoint.accept(i, Instant::now(), &mut buf, None) {
            Ok((ch, conn)) => Ok(Connecting(Some(st.insert(ch, conn)))),
            Err(e) => {
                if let Some(t) = e.response {
                    st.respond(&t, &buf);
                }
                Err(e.cause)
            }
        }
    }

    /// Refuses it (CONNECTION_REFUSED).
    pub fn refuse(mut self) {
        self.refuse_inner();
    }

    fn refuse_inner(&mut self) {
        if let Some(i) = self.inner.take() {
            if let Ok(mut st) = self.endpoint.state.try_borrow_mut() {
                let mut buf = Vec::new();
                let t = st.endpoint.refuse(i, &mut buf);
                st.respond(&t, &buf);
            }
        }
    }

    /// Answers with a Retry: the client must prove its address first. False (and the attempt
    /// ignored) if it proved it already.
    pub fn retry(mut self) -> bool {
        let i = self.inner.take().expect("undecided");
        let mut st = self.endpoint.state.borrow_mut();
        let mut buf = Vec::new();
        match st.endpoint.retry(i, &mut buf) {
            Ok(t) => {
                st.respond(&t, &buf);
                true
            }
            Err(e) => {
                st.endpoint.ignore(e.into_incoming());
                false
            }
        }
    }

    /// Drops it without an answer.
    pub fn ignore(mut self) {
        if let Some(i) = self.inner.take() {
            self.endpoint.state.borrow_mut().endpoint.ignore(i);
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.refuse_inner();
    }
}

/// A connection whose handshake is under way.
pub struct Connecting(Option<Connection>);

impl Future for Connecting {
    type Output = Result<Connection, ConnectionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(conn) = self.0.as_ref() else {
            return Poll::Ready(Err(ConnectionError::LocallyClosed));
        };
        let r = conn.with(|c| {
            if let Some(e) = &c.error {
                return Poll::Ready(Err(e.clone()));
            }
            if c.connected {
                return Poll::Ready(Ok(()));
            }
            wait(&mut c.waiters, cx);
            Poll::Pending
        });
        match r {
            Some(Poll::Pending) => Poll::Pending,
            Some(Poll::Ready(Ok(()))) => Poll::Ready(Ok(self.0.take().expect("connecting"))),
            Some(Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            None => Poll::Ready(Err(conn.gone())),
        }
    }
}

fn wait(waiters: &mut Vec<Waker>, cx: &Context<'_>) {
    if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
        waiters.push(cx.waker().clone());
    }
}

/// What a connection handle holds: where the connection is, and how it ended once it has.
struct Handle {
    ch: usize,
    stable: u64,
    state: Weak<RefCell<State>>,
    /// How it ended, kept here once the endpoint has forgotten the connection.
    ended: RefCell<Option<ConnectionError>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let Ok(mut st) = state.try_borrow_mut() else {
            return;
        };
        let (ch, stable) = (self.ch, self.stable);
        if let Some(c) = st.conn(ch, stable) {
            if !c.inner.is_closed() {
                c.close(VarInt::from_u32(0), Bytes::new());
                st.mark(ch);
            }
        }
    }
}

/// A QUIC connection. Clones are handles to the same connection; it closes (code 0) when the
/// last handle, stream included, is dropped.
#[derive(Clone)]
pub struct Connection(Rc<Handle>);

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.0.stable)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Runs `f` on the live connection; `None` once the endpoint forgot it.
    fn with<R>(&self, f: impl FnOnce(&mut Conn) -> R) -> Option<R> {
        let state = self.0.state.upgrade()?;
        let mut st = state.borrow_mut();
        let c = st.conn(self.0.ch, self.0.stable)?;
        Some(f(c))
    }

    /// Runs `f` on the live connection and lets the driver send what it queued.
    fn act<R>(&self, f: impl FnOnce(&mut quinn_proto::Connection) -> R) -> Option<R> {
        let state = self.0.state.upgrade()?;
        let mut st = state.borrow_mut();
        let c = st.conn(self.0.ch, self.0.stable)?;
        let r = f(&mut c.inner);
        st.mark(self.0.ch);
        Some(r)
    }

    fn gone(&self) -> ConnectionError {
        self.0
            .ended
            .borrow()
            .clone()
            .unwrap_or(ConnectionError::LocallyClosed)
    }

    /// Why the connection ended, or `None` while it is open.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        match self.with(|c| c.error.clone()) {
            Some(e) => e,
            None => Some(self.gone()),
        }
    }

    /// An ID unique among this endpoint's connections, never 0.
    pub fn stable_id(&self) -> usize {
        self.0.stable as usize
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.with(|c| c.inner.remote_address())
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Which side of the handshake we were.
    pub fn side(&self) -> Side {
        self.with(|c| c.inner.side()).unwrap_or(Side::Client)
    }

    /// The smoothed round-trip time.
    pub fn rtt(&self) -> Duration {
        self.with(|c| c.inner.rtt()).unwrap_or_default()
    }

    /// Counters (zero once the connection is gone).
    pub fn stats(&self) -> ConnectionStats {
        self.with(|c| c.inner.stats()).unwrap_or_default()
    }

    /// The largest datagram the path and the peer take now, if datagrams are possible.
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.with(|c| c.inner.datagrams().max_size()).flatten()
    }

    /// Closes the connection with `code` and `reason`.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        let Some(state) = self.0.state.upgrade() else {
            return;
        };
        let mut st = state.borrow_mut();
        if let Some(c) = st.conn(self.0.ch, self.0.stable) {
            c.close(code, Bytes::copy_from_slice(reason));
            st.mark(self.0.ch);
        }
    }

    /// Fills `out` from the TLS exporter (RFC 5705).
    pub fn export_keying_material(
        &self,
        out: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), quinn_proto::crypto::ExportKeyingMaterialError> {
        self.with(|c| {
            c.inner
                .crypto_session()
                .export_keying_material(out, label, context)
        })
        .unwrap_or(Err(quinn_proto::crypto::ExportKeyingMaterialError))
    }

    /// What the peer's TLS presented (rustls: its certificate chain).
    pub fn peer_identity(&self) -> Option<Box<dyn std::any::Any>> {
        self.with(|c| c.inner.crypto_session().peer_identity())
            .flatten()
    }

    /// Queues an unreliable datagram; the oldest queued one is dropped when the queue is full.
    pub fn send_datagram(&self, data: Bytes) -> Result<(), SendDatagramError> {
        let r = self.act(|c| {
            if c.is_closed() {
                return Err(None);
            }
            c.datagrams().send(data, true).map_err(Some)
        });
        match r {
            Some(Ok(())) => Ok(()),
            Some(Err(Some(e))) => Err(match e {
                quinn_proto::SendDatagramError::UnsupportedByPeer => {
                    SendDatagramError::UnsupportedByPeer
                }
                quinn_proto::SendDatagramError::Disabled => SendDatagramError::Disabled,
                quinn_proto::SendDatagramError::TooLarge
                | quinn_proto::SendDatagramError::Blocked(_) => SendDatagramError::TooLarge,
            }),
            Some(Err(None)) | None => Err(SendDatagramError::ConnectionLost(
                self.close_reason()
                    .unwrap_or(ConnectionError::LocallyClosed),
            )),
        }
    }

    /// Waits until the connection ends; returns why.
    pub async fn closed(&self) -> ConnectionError {
        poll_fn(|cx| {
            match self.with(|c| {
                if let Some(e) = &c.error {
                    return Poll::Ready(e.clone());
                }
                wait(&mut c.waiters, cx);
                Poll::Pending
            }) {
                Some(p) => p,
                None => Poll::Ready(self.gone()),
            }
        })
        .await
    }

    /// The next datagram received.
    pub async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        poll_fn(|cx| {
            match self.with(|c| {
                if let Some(d) = c.inner.datagrams().recv() {
                    return Poll::Ready(Ok(d));
                }
                if let Some(e) = &c.error {
                    return Poll::Ready(Err(e.clone()));
                }
                wait(&mut c.readers, cx);
                Poll::Pending
            }) {
                Some(p) => p,
                None => Poll::Ready(Err(self.gone())),
            }
        })
        .await
    }

    /// Opens a bidirectional stream, waiting while the peer's limit is reached.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        self.stream(|c| c.streams().open(Dir::Bi)).await
    }

    /// The next bidirectional stream the peer opens.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        self.stream(|c| c.streams().accept(Dir::Bi)).await
    }

    async fn stream(
        &self,
        mut get: impl FnMut(&mut quinn_proto::Connection) -> Option<StreamId>,
    ) -> Result<(SendStream, RecvStream), ConnectionError> {
        let id = poll_fn(|cx| {
            let state = self.0.state.upgrade();
            let Some(state) = state else {
                return Poll::Ready(Err(self.gone()));
            };
            let mut st = state.borrow_mut();
            let Some(c) = st.conn(self.0.ch, self.0.stable) else {
                return Poll::Ready(Err(self.gone()));
            };
            if let Some(e) = &c.error {
                return Poll::Ready(Err(e.clone()));
            }
            if let Some(id) = get(&mut c.inner) {
                // Opening or accepting may let flow-control updates out.
                st.mark(self.0.ch);
                return Poll::Ready(Ok(id));
            }
            wait(&mut c.waiters, cx);
            Poll::Pending
        })
        .await?;
        Ok((
            SendStream {
                conn: self.clone(),
                id,
            },
            RecvStream {
                conn: self.clone(),
                id,
                done: false,
                end: false,
            },
        ))
    }
}

/// Why a datagram could not be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendDatagramError {
    /// The peer does not take datagrams.
    UnsupportedByPeer,
    /// Datagrams are disabled here.
    Disabled,
    /// Larger than the path or the peer take.
    TooLarge,
    /// The connection is gone.
    ConnectionLost(ConnectionError),
}

impl fmt::Display for SendDatagramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendDatagramError::UnsupportedByPeer => f.write_str("datagrams not supported by peer"),
            SendDatagramError::Disabled => f.write_str("datagram support disabled"),
            SendDatagramError::TooLarge => f.write_str("datagram too large"),
            SendDatagramError::ConnectionLost(e) => write!(f, "connection lost: {e}"),
        }
    }
}

impl std::error::Error for SendDatagramError {}

/// Why a stream write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// The peer stopped the stream with this code.
    Stopped(VarInt),
    /// The connection is gone.
    ConnectionLost(ConnectionError),
    /// The stream was finished or reset already.
    ClosedStream,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Stopped(c) => write!(f, "sending stopped by peer: error {c}"),
            WriteError::ConnectionLost(e) => write!(f, "connection lost: {e}"),
            WriteError::ClosedStream => f.write_str("closed stream"),
        }
    }
}

impl std::error::Error for WriteError {}

/// Why a stream read failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The peer reset the stream with this code.
    Reset(VarInt),
    /// The connection is gone.
    ConnectionLost(ConnectionError),
    /// The stream was stopped or read to its end already.
    ClosedStream,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Reset(c) => write!(f, "stream reset by peer: error {c}"),
            ReadError::ConnectionLost(e) => write!(f, "connection lost: {e}"),
            ReadError::ClosedStream => f.write_str("closed stream"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Why `read_exact` failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadExactError {
    /// The stream ended after this many bytes.
    FinishedEarly(usize),
    /// Reading failed.
    ReadError(ReadError),
}

impl fmt::Display for ReadExactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadExactError::FinishedEarly(n) => write!(f, "stream finished early ({n} bytes read)"),
            ReadExactError::ReadError(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReadExactError {}

/// The stream was finished or reset already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedStream;

/// The sending half of a stream. Dropped, it finishes the stream.
pub struct SendStream {
    conn: Connection,
    id: StreamId,
}

impl fmt::Debug for SendStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendStream").field("id", &self.id).finish()
    }
}

impl SendStream {
    /// Writes all of `buf`, waiting for flow control.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), WriteError> {
        while !buf.is_empty() {
            let n = poll_fn(|cx| self.poll_write(cx, buf)).await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    fn poll_write(&mut self, cx: &Context<'_>, buf: &[u8]) -> Poll<Result<usize, WriteError>> {
        let id = self.id;
        let Some(state) = self.conn.0.state.upgrade() else {
            return Poll::Ready(Err(WriteError::ConnectionLost(self.conn.gone())));
        };
        let mut st = state.borrow_mut();
        let ch = self.conn.0.ch;
        let Some(c) = st.conn(ch, self.conn.0.stable) else {
            return Poll::Ready(Err(WriteError::ConnectionLost(self.conn.gone())));
        };
        if let Some(e) = &c.error {
            return Poll::Ready(Err(WriteError::ConnectionLost(e.clone())));
        }
        match c.inner.send_stream(id).write(buf) {
            Ok(n) => {
                st.mark(ch);
                Poll::Ready(Ok(n))
            }
            Err(quinn_proto::WriteError::Blocked) => {
                wait(&mut c.waiters, cx);
                Poll::Pending
            }
            Err(quinn_proto::WriteError::Stopped(code)) => {
                Poll::Ready(Err(WriteError::Stopped(code)))
            }
            Err(quinn_proto::WriteError::ClosedStream) => {
                Poll::Ready(Err(WriteError::ClosedStream))
            }
        }
    }

    /// Ends the stream once everything written is delivered.
    pub fn finish(&mut self) -> Result<(), ClosedStream> {
        let id = self.id;
        match self.conn.act(|c| c.send_stream(id).finish()) {
            Some(Ok(())) => Ok(()),
            _ => Err(ClosedStream),
        }
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        let id = self.id;
        let Some(state) = self.conn.0.state.upgrade() else {
            return;
        };
        let Ok(mut st) = state.try_borrow_mut() else {
            return;
        };
        let ch = self.conn.0.ch;
        if let Some(c) = st.conn(ch, self.conn.0.stable) {
            if c.error.is_some() {
                return;
            }
            match c.inner.send_stream(id).finish() {
                Ok(()) => st.mark(ch),
                Err(quinn_proto::FinishError::Stopped(code)) => {
                    if c.inner.send_stream(id).reset(code).is_ok() {
                        st.mark(ch);
                    }
                }
                Err(quinn_proto::FinishError::ClosedStream) => {}
            }
        }
    }
}

/// The receiving half of a stream. Dropped before its end, it asks the peer to stop (code 0).
pub struct RecvStream {
    conn: Connection,
    id: StreamId,
    /// Read to its end (or reset): nothing to stop.
    done: bool,
    /// The end was reached in a read that also returned bytes: the next read returns it.
    end: bool,
}

impl fmt::Debug for RecvStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvStream").field("id", &self.id).finish()
    }
}

/// One read: bytes copied into the caller's buffer, or the end of the stream.
enum Read {
    Bytes(usize),
    End,
}

impl RecvStream {
    /// Fills `buf` completely.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ReadExactError> {
        let mut at = 0;
        while at < buf.len() {
            match poll_fn(|cx| self.poll_read(cx, &mut buf[at..]))
                .await
                .map_err(ReadExactError::ReadError)?
            {
                Read::Bytes(n) => at += n,
                Read::End => return Err(ReadExactError::FinishedEarly(at)),
            }
        }
        Ok(())
    }

    /// Reads up to `max` bytes until the end of the stream; `None` if it holds more.
    pub async fn read_to_end(&mut self, max: usize) -> Result<Option<Vec<u8>>, ReadError> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            match poll_fn(|cx| self.poll_read(cx, &mut chunk)).await? {
                Read::Bytes(n) => {
                    if out.len() + n > max {
                        return Ok(None);
                    }
                    out.extend_from_slice(&chunk[..n]);
                }
                Read::End => return Ok(Some(out)),
            }
        }
    }

    fn poll_read(&mut self, cx: &Context<'_>, buf: &mut [u8]) -> Poll<Result<Read, ReadError>> {
        if self.end {
            return Poll::Ready(Ok(Read::End));
        }
        let id = self.id;
        let Some(state) = self.conn.0.state.upgrade() else {
            return Poll::Ready(Err(ReadError::ConnectionLost(self.conn.gone())));
        };
        let mut st = state.borrow_mut();
        let ch = self.conn.0.ch;
        let Some(c) = st.conn(ch, self.conn.0.stable) else {
            return Poll::Ready(Err(ReadError::ConnectionLost(self.conn.gone())));
        };
        let mut rs = c.inner.recv_stream(id);
        let mut chunks = match rs.read(true) {
            Ok(chunks) => chunks,
            Err(_) => return Poll::Ready(Err(ReadError::ClosedStream)),
        };
        let mut n = 0;
        let r = loop {
            if n == buf.len() {
                break Ok(());
            }
            match chunks.next(buf.len() - n) {
                Ok(Some(chunk)) => {
                    buf[n..n + chunk.bytes.len()].copy_from_slice(&chunk.bytes);
                    n += chunk.bytes.len();
                }
                Ok(None) => break Err(None),
                Err(quinn_proto::ReadError::Blocked) => break Ok(()),
                Err(quinn_proto::ReadError::Reset(code)) => break Err(Some(code)),
            }
        };
        let transmit = chunks.finalize().should_transmit();
        let result = match r {
            Ok(()) if n > 0 => Poll::Ready(Ok(Read::Bytes(n))),
            Ok(()) => {
                if let Some(e) = &c.error {
                    Poll::Ready(Err(ReadError::ConnectionLost(e.clone())))
                } else {
                    wait(&mut c.waiters, cx);
                    Poll::Pending
                }
            }
            Err(None) => {
                self.done = true;
                self.end = true;
                Poll::Ready(Ok(if n > 0 { Read::Bytes(n) } else { Read::End }))
            }
            Err(Some(code)) => {
                self.done = true;
                Poll::Ready(Err(ReadError::Reset(code)))
            }
        };
        if transmit {
            st.mark(ch);
        }
        result
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let id = self.id;
        let Some(state) = self.conn.0.state.upgrade() else {
            return;
        };
        let Ok(mut st) = state.try_borrow_mut() else {
            return;
        };
        let ch = self.conn.0.ch;
        if let Some(c) = st.conn(ch, self.conn.0.stable) {
            if c.error.is_none() && c.inner.recv_stream(id).stop(VarInt::from_u32(0)).is_ok() {
                st.mark(ch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{initial_suite, router_transport, server_name};
    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
    use shadowmesh_crypto::tls::{KxPolicy, TlsContext};
    use shadowmesh_crypto::Identity;

    fn endpoint(server: Option<&TlsContext>) -> Endpoint {
        let socket = crate::udp::Udp::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        let server = server.map(|tls| {
            let crypto =
                QuicServerConfig::with_initial(Arc::new(tls.server()), initial_suite()).unwrap();
            let mut s = ServerConfig::with_crypto(Arc::new(crypto));
            s.transport_config(Arc::new(router_transport(1376)));
            s
        });
        Endpoint::new(EndpointConfig::default(), server, socket.unwrap()).unwrap()
    }

    /// A connection between two endpoints on loopback: (client's, server's).
    async fn pair(client: &Endpoint, server: &Endpoint, id: &Identity) -> (Connection, Connection) {
        let tls = TlsContext::new(&Identity::generate(), KxPolicy::Hybrid);
        let crypto =
            QuicClientConfig::with_initial(Arc::new(tls.client(None)), initial_suite()).unwrap();
        let mut cfg = ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(Arc::new(router_transport(1376)));
        let to = server.local_addr().unwrap();
        let connecting = client
            .connect_with(cfg, to, &server_name(&id.peer_id()))
            .unwrap();
        let (c, s) = tokio::join!(connecting, async {
            server.accept().await.unwrap().accept().unwrap().await
        });
        (c.unwrap(), s.unwrap())
    }

    /// Starts a connection from `client` to `server` (whose identity is `id`).
    fn dial(client: &Endpoint, server: &Endpoint, id: &Identity) -> Connecting {
        let tls = TlsContext::new(&Identity::generate(), KxPolicy::Hybrid);
        let crypto =
            QuicClientConfig::with_initial(Arc::new(tls.client(None)), initial_suite()).unwrap();
        client
            .connect_with(
                ClientConfig::new(Arc::new(crypto)),
                server.local_addr().unwrap(),
                &server_name(&id.peer_id()),
            )
            .unwrap()
    }

    /// An attempt taken before the endpoint closed and accepted after it closes at once, as
    /// quinn's do: the dialler fails, and `wait_idle` does not wait on it. (A daemon told to stop
    /// while a handshake was queued kept that connection open, and its port, for good.)
    #[test]
    fn an_attempt_accepted_after_close_is_closed() {
        crate::block_on_local(within(async {
            let id = Identity::generate();
            let tls = TlsContext::new(&id, KxPolicy::Hybrid);
            let (client, server) = (endpoint(None), endpoint(Some(&tls)));
            let dialling = dial(&client, &server, &id);
            let accepted = async {
                let i = server.accept().await.unwrap();
                server.close(VarInt::from_u32(9), b"stop");
                let r = i.accept().unwrap().await;
                assert!(matches!(r, Err(ConnectionError::LocallyClosed)), "{r:?}");
                server.wait_idle().await;
            };
            let (r, ()) = tokio::join!(dialling, accepted);
            assert!(r.is_err(), "{r:?}");
        }))
        .unwrap();
    }

    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("timed out")
    }

    /// Streams both ways (with more than one flow-control window of data), datagrams both
    /// ways, the exporter agreeing on both sides, and a close whose code and reason reach the
    /// peer; `wait_idle` returns once the connection has drained.
    #[test]
    fn streams_datagrams_and_close() {
        crate::block_on_local(within(async {
            let id = Identity::generate();
            let tls = TlsContext::new(&id, KxPolicy::Hybrid);
            let (client, server) = (endpoint(None), endpoint(Some(&tls)));
            let (c, s) = pair(&client, &server, &id).await;
            assert_eq!(c.side(), Side::Client);
            assert_eq!(s.side(), Side::Server);
            assert_eq!(s.remote_address(), client.local_addr().unwrap());
            assert_ne!(
                c.stable_id(),
                pair(&client, &server, &id).await.0.stable_id()
            );

            let (mut a, e) = (vec![0u8; 32], vec![0u8; 32]);
            let mut e = e;
            c.export_keying_material(&mut a, b"label", b"").unwrap();
            s.export_keying_material(&mut e, b"label", b"").unwrap();
            assert_eq!(a, e);

            // 200 KB: three times the stream window, so the writer waits for the reader.
            let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            let (mut tx, mut rx) = c.open_bi().await.unwrap();
            let writer = async {
                tx.write_all(&big).await.unwrap();
                tx.finish().unwrap();
            };
            let reader = async {
                let (mut back, mut got) = s.accept_bi().await.unwrap();
                let mut head = [0u8; 10];
                got.read_exact(&mut head).await.unwrap();
                let rest = got.read_to_end(1 << 20).await.unwrap().unwrap();
                back.write_all(b"thanks").await.unwrap();
                back.finish().unwrap();
                [&head[..], &rest].concat()
            };
            let ((), echoed) = tokio::join!(writer, reader);
            assert_eq!(echoed, big);
            let mut thanks = [0u8; 6];
            rx.read_exact(&mut thanks).await.unwrap();
            assert_eq!(&thanks, b"thanks");
            let mut more = [0u8; 1];
            assert_eq!(
                rx.read_exact(&mut more).await,
                Err(ReadExactError::FinishedEarly(0))
            );

            assert!(c.max_datagram_size().unwrap() >= 1376);
            c.send_datagram(Bytes::from_static(b"ping")).unwrap();
            assert_eq!(&s.read_datagram().await.unwrap()[..], b"ping");
            s.send_datagram(Bytes::from_static(b"pong")).unwrap();
            assert_eq!(&c.read_datagram().await.unwrap()[..], b"pong");
            assert!(c.stats().udp_tx.datagrams > 0);

            assert!(c.close_reason().is_none());
            c.close(VarInt::from_u32(7), b"bye");
            assert_eq!(c.close_reason(), Some(ConnectionError::LocallyClosed));
            match s.closed().await {
                ConnectionError::ApplicationClosed(a) => {
                    assert_eq!(a.error_code, VarInt::from_u32(7));
                    assert_eq!(&a.reason[..], b"bye");
                }
                other => panic!("closed with {other:?}"),
            }
            assert!(matches!(
                s.send_datagram(Bytes::from_static(b"late")),
                Err(SendDatagramError::ConnectionLost(_))
            ));
            client.close(VarInt::from_u32(0), b"");
            client.wait_idle().await;
            assert!(client.accept().await.is_none());
        }))
        .unwrap();
    }

    /// Dropping every handle of a connection closes it with code 0, as quinn does; the
    /// peer's waiters wake with the reason.
    #[test]
    fn the_last_handle_closes_the_connection() {
        crate::block_on_local(within(async {
            let id = Identity::generate();
            let tls = TlsContext::new(&id, KxPolicy::Hybrid);
            let (client, server) = (endpoint(None), endpoint(Some(&tls)));
            let (c, s) = pair(&client, &server, &id).await;
            let waiting = s.clone();
            let reader = async move { waiting.read_datagram().await };
            let c2 = c.clone();
            drop(c);
            tokio::task::yield_now().await;
            assert!(c2.close_reason().is_none(), "closed with a handle left");
            drop(c2);
            match reader.await {
                Err(ConnectionError::ApplicationClosed(a)) => {
                    assert_eq!(a.error_code, VarInt::from_u32(0))
                }
                other => panic!("{other:?}"),
            }
        }))
        .unwrap();
    }

    /// An incoming attempt can be refused, and the dialler learns it at once.
    #[test]
    fn a_refused_attempt_fails_the_dial() {
        crate::block_on_local(within(async {
            let id = Identity::generate();
            let tls = TlsContext::new(&id, KxPolicy::Hybrid);
            let (client, server) = (endpoint(None), endpoint(Some(&tls)));
            let dial = dial(&client, &server, &id);
            let refuse = async {
                let i = server.accept().await.unwrap();
                assert!(!i.remote_address_validated());
                assert_eq!(i.remote_address(), client.local_addr().unwrap());
                i.refuse();
            };
            let (r, ()) = tokio::join!(dial, refuse);
            assert!(
                matches!(r, Err(ConnectionError::ConnectionClosed(_))),
                "{r:?}"
            );
        }))
        .unwrap();
    }
}
