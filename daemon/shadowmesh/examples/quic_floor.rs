//! What one QUIC connection holds in memory: through quinn's async API, through quinn-proto
//! driven by a plain loop, and through the daemon's driver (`shadowmesh::quic`: quinn-proto
//! under one task per endpoint). N connections from a client thread to a server thread over
//! loopback UDP, with the daemon's TLS (hybrid key exchange, Ed25519 certificates) and
//! transport settings, and no HELLO, session or link on top. Once all N are up and have
//! settled, the server thread's heap (every byte it allocated and has not freed, counted by
//! this program's allocator) is printed per connection, as one JSON object per mode.
//!
//! quinn's server socket sends one datagram per call, as the daemon's did over quinn when the
//! fast lane carried the data (`DemuxSocket` in control-only mode): with GSO, quinn's driver
//! keeps a transmit buffer as large as the largest burst it ever sent, about 16 KiB per
//! connection after a handshake over loopback. The daemon's driver has one transmit buffer for
//! all its connections.
//!
//! `cargo run --release -p shadowmesh --example quic_floor -- [N] [async|proto|daemon|all]`
//! (BENCHMARKS.md, "1,000 members on one node").

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{
    ClientConfig, ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig, Event, ServerConfig,
};
use shadowmesh::node::{initial_suite, router_transport, server_name};
use shadowmesh_crypto::tls::{KxPolicy, TlsContext};
use shadowmesh_crypto::Identity;

/// The system allocator, counting the bytes each thread holds (allocated minus freed by it).
struct Counting;

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = HELD.try_with(|h| h.set(h.get() + delta));
}

// SAFETY: every call is passed to `System` unchanged; the counting touches only a
// thread-local integer and allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count(l.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as isize));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new as isize - l.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn held() -> isize {
    HELD.with(|h| h.get())
}

/// How long every connection must have been up before the heap is read: past the handshake's
/// last acknowledgements and the first keepalive-free idle.
const SETTLE: Duration = Duration::from_secs(2);

/// The daemon's tunnel MTU on a 1,500-byte underlay.
const TUNNEL_MTU: u16 = 1376;

fn server_config(tls: &TlsContext) -> quinn::ServerConfig {
    let crypto = QuicServerConfig::with_initial(Arc::new(tls.server()), initial_suite())
        .expect("initial suite");
    let mut s = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    s.transport_config(Arc::new(router_transport(TUNNEL_MTU)));
    s
}

fn client_config(tls: &TlsContext) -> ClientConfig {
    let crypto = QuicClientConfig::with_initial(Arc::new(tls.client(None)), initial_suite())
        .expect("initial suite");
    let mut c = ClientConfig::new(Arc::new(crypto));
    c.transport_config(Arc::new(router_transport(TUNNEL_MTU)));
    c
}

/// quinn-proto under a plain loop: one socket, one transmit buffer for every connection,
/// each connection looked at when a datagram or its timer calls for it.
struct Driver {
    sock: UdpSocket,
    endpoint: Endpoint,
    /// Boxed: a `Connection` is 6 KiB, and a vector of them inline would hold up to twice
    /// the connections' worth in spare capacity.
    conns: Vec<Option<Box<quinn_proto::Connection>>>,
    connected: Vec<Option<Instant>>,
    tx: Vec<u8>,
    rx: Vec<u8>,
}

impl Driver {
    fn new(sock: UdpSocket, server: Option<ServerConfig>) -> Self {
        Driver {
            sock,
            endpoint: Endpoint::new(
                Arc::new(EndpointConfig::default()),
                server.map(Arc::new),
                true,
                None,
            ),
            conns: Vec::new(),
            connected: Vec::new(),
            tx: Vec::with_capacity(64 * 1024),
            rx: vec![0; 64 * 1024],
        }
    }

    fn insert(&mut self, ch: ConnectionHandle, conn: quinn_proto::Connection) {
        if self.conns.len() <= ch.0 {
            self.conns.resize_with(ch.0 + 1, || None);
            self.connected.resize(ch.0 + 1, None);
        }
        self.conns[ch.0] = Some(Box::new(conn));
    }

    fn send(&mut self, t: &quinn_proto::Transmit) {
        let _ = self.sock.send_to(&self.tx[..t.size], t.destination);
        self.tx.clear();
    }

    /// Reads what arrived (waiting at most `wait`), then serves every connection.
    fn step(&mut self, wait: Duration) {
        let _ = self
            .sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))));
        while let Ok((len, from)) = self.sock.recv_from(&mut self.rx) {
            let data = BytesMut::from(&self.rx[..len]);
            let now = Instant::now();
            match self
                .endpoint
                .handle(now, from, None, None, data, &mut self.tx)
            {
                Some(DatagramEvent::NewConnection(incoming)) => {
                    match self.endpoint.accept(incoming, now, &mut self.tx, None) {
                        Ok((ch, conn)) => self.insert(ch, conn),
                        Err(e) => {
                            if let Some(t) = e.response {
                                self.send(&t);
                            }
                        }
                    }
                }
                Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                    if let Some(c) = self.conns.get_mut(ch.0).and_then(Option::as_mut) {
                        c.handle_event(ev);
                    }
                }
                Some(DatagramEvent::Response(t)) => self.send(&t),
                None => self.tx.clear(),
            }
            let _ = self.sock.set_nonblocking(true);
        }
        let _ = self.sock.set_nonblocking(false);
        let now = Instant::now();
        for i in 0..self.conns.len() {
            let Some(mut c) = self.conns[i].take() else {
                continue;
            };
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
            while let Some(ev) = c.poll_endpoint_events() {
                if let Some(back) = self.endpoint.handle_event(ConnectionHandle(i), ev) {
                    c.handle_event(back);
                }
            }
            while let Some(t) = c.poll_transmit(now, 1, &mut self.tx) {
                self.send(&t);
            }
            let mut gone = false;
            while let Some(ev) = c.poll() {
                match ev {
                    Event::Connected => self.connected[i] = Some(now),
                    Event::ConnectionLost { .. } => gone = true,
                    _ => {}
                }
            }
            if gone {
                self.connected[i] = None;
            } else {
                self.conns[i] = Some(c);
            }
        }
    }

    fn up(&self) -> usize {
        self.connected.iter().flatten().count()
    }

    /// Whether `n` connections are up and the newest has been for [`SETTLE`].
    fn settled(&self, n: usize) -> bool {
        self.up() >= n
            && self
                .connected
                .iter()
                .flatten()
                .max()
                .is_some_and(|t| t.elapsed() >= SETTLE)
    }
}

/// The client: dials `n` connections to `server`, eight handshakes at a time, and serves them
/// until `stop` says so.
fn client(server: SocketAddr, name: String, n: usize, stop: mpsc::Receiver<()>) {
    let tls = TlsContext::new(&Identity::generate(), KxPolicy::Hybrid);
    let cfg = client_config(&tls);
    let mut d = Driver::new(UdpSocket::bind("127.0.0.1:0").expect("bind"), None);
    let mut dialled = 0;
    loop {
        while dialled < n && dialled - d.up().min(dialled) < 8 {
            let (ch, conn) = d
                .endpoint
                .connect(Instant::now(), cfg.clone(), server, &name)
                .expect("connect");
            d.insert(ch, conn);
            dialled += 1;
        }
        d.step(Duration::from_millis(5));
        if stop.try_recv().is_ok() {
            return;
        }
    }
}

/// A socket that sends one datagram per call (see the top of this file).
#[derive(Debug)]
struct OneSegment(Arc<dyn quinn::AsyncUdpSocket>);

impl quinn::AsyncUdpSocket for OneSegment {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.0.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

/// A server thread: serves `n` connections, says where it listens (address, TLS name).
type Server = fn(usize, mpsc::Sender<(SocketAddr, String)>) -> Report;

struct Report {
    mode: &'static str,
    conns: usize,
    held: isize,
    seconds: f64,
}

fn server_proto(n: usize, ready: mpsc::Sender<(SocketAddr, String)>) -> Report {
    let id = Identity::generate();
    let tls = TlsContext::new(&id, KxPolicy::Hybrid);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = sock.local_addr().expect("addr");
    let mut d = Driver::new(sock, Some(server_config(&tls)));
    let base = held();
    ready
        .send((addr, server_name(&id.peer_id())))
        .expect("client waits");
    let t = Instant::now();
    while !d.settled(n) && t.elapsed() < Duration::from_secs(120) {
        d.step(Duration::from_millis(5));
    }
    Report {
        mode: "proto",
        conns: d.up(),
        held: held() - base,
        seconds: t.elapsed().as_secs_f64(),
    }
}

fn server_async(n: usize, ready: mpsc::Sender<(SocketAddr, String)>) -> Report {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let id = Identity::generate();
        let tls = TlsContext::new(&id, KxPolicy::Hybrid);
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = sock.local_addr().expect("addr");
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, sock).expect("socket");
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            Some(server_config(&tls)),
            Arc::new(OneSegment(inner)),
            Arc::new(quinn::TokioRuntime),
        )
        .expect("endpoint");
        let base = held();
        ready
            .send((addr, server_name(&id.peer_id())))
            .expect("client waits");
        let t = Instant::now();
        let conns = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut last_up = Instant::now();
        while conns.borrow().len() < n && t.elapsed() < Duration::from_secs(120) {
            let Ok(Some(incoming)) =
                tokio::time::timeout(Duration::from_millis(100), endpoint.accept()).await
            else {
                continue;
            };
            if let Ok(Ok(c)) =
                tokio::time::timeout(Duration::from_secs(10), async { incoming.await }).await
            {
                conns.borrow_mut().push(c);
                last_up = Instant::now();
            }
        }
        tokio::time::sleep(SETTLE.saturating_sub(last_up.elapsed())).await;
        let up = conns
            .borrow()
            .iter()
            .filter(|c: &&quinn::Connection| c.close_reason().is_none())
            .count();
        Report {
            mode: "async",
            conns: up,
            held: held() - base,
            seconds: t.elapsed().as_secs_f64(),
        }
    })
}

fn server_daemon(n: usize, ready: mpsc::Sender<(SocketAddr, String)>) -> Report {
    shadowmesh::block_on_local(async move {
        let id = Identity::generate();
        let tls = TlsContext::new(&id, KxPolicy::Hybrid);
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = sock.local_addr().expect("addr");
        let endpoint = shadowmesh::quic::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config(&tls)),
            shadowmesh::udp::Udp::new(sock).expect("socket"),
        )
        .expect("endpoint");
        let base = held();
        ready
            .send((addr, server_name(&id.peer_id())))
            .expect("client waits");
        let t = Instant::now();
        let mut conns = Vec::new();
        let mut last_up = Instant::now();
        while conns.len() < n && t.elapsed() < Duration::from_secs(120) {
            let Ok(Some(incoming)) =
                tokio::time::timeout(Duration::from_millis(100), endpoint.accept()).await
            else {
                continue;
            };
            let Ok(connecting) = incoming.accept() else {
                continue;
            };
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(10), connecting).await {
                conns.push(c);
                last_up = Instant::now();
            }
        }
        tokio::time::sleep(SETTLE.saturating_sub(last_up.elapsed())).await;
        let up = conns.iter().filter(|c| c.close_reason().is_none()).count();
        Report {
            mode: "daemon",
            conns: up,
            held: held() - base,
            seconds: t.elapsed().as_secs_f64(),
        }
    })
    .expect("runtime")
}

fn run(n: usize, server: Server) -> Report {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel();
    let s = std::thread::spawn(move || server(n, ready_tx));
    let (addr, name) = ready_rx.recv().expect("server ready");
    let c = std::thread::spawn(move || client(addr, name, n, stop_rx));
    let report = s.join().expect("server thread");
    let _ = stop_tx.send(());
    let _ = c.join();
    report
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300);
    let which = args.next().unwrap_or_else(|| "all".into());
    let modes: &[(&str, Server)] = &[
        ("async", server_async),
        ("proto", server_proto),
        ("daemon", server_daemon),
    ];
    for (name, server) in modes {
        if which != "all" && which != *name {
            continue;
        }
        let r = run(n, *server);
        println!(
            "{{\"mode\":\"{}\",\"connections\":{},\"server_heap_kib\":{:.1},\"kib_per_connection\":{:.2},\"seconds\":{:.1}}}",
            r.mode,
            r.conns,
            r.held as f64 / 1024.0,
            r.held as f64 / 1024.0 / r.conns.max(1) as f64,
            r.seconds
        );
        if r.conns < n {
            eprintln!("quic_floor: only {} of {n} connections came up", r.conns);
            std::process::exit(1);
        }
    }
}
