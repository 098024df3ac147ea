//! The hop layer's I/O: a quinn endpoint configured for routers, and the connection handshake
//! (TLS with the hybrid group, then HELLO and INIT/RESP on the control stream).
//!
//! ```text
//! dialler                                  listener
//!   QUIC/TLS 1.3 (ML-KEM-1024+X25519, Ed25519 raw keys)   1 RTT
//!   HELLO(record, sigs over exporter) + INIT  ->
//!                                            verify HELLO (network key first), then
//!                                        <-  HELLO + RESP
//!   verify HELLO, finish session                          1 RTT
//! ```
//! The listener checks the dialler before revealing anything of its own; a peer that fails is
//! closed with a specific application error code before any frame flows.

use shadowmesh_crypto::NetworkKey;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use shadowmesh_crypto::hello::{build_hello, verify_hello, HelloCheck};
use shadowmesh_crypto::record::{build_record, RecordParams, VerifiedRecord};
use shadowmesh_crypto::session::{self, Session};
use shadowmesh_crypto::tls::{ed25519_from_spki, KxPolicy, TlsContext};
use shadowmesh_crypto::Identity;
use shadowmesh_proto::consts::*;
use shadowmesh_proto::frame::FrameType;
use shadowmesh_proto::limit::{InFlight as SourceCounts, TokenBuckets};
use shadowmesh_proto::msg::{self, MsgType, RecordRefOrSeq, Role, EXPORTER_LABEL};
use shadowmesh_proto::record::Payload;
use shadowmesh_proto::PeerId;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// The mesh's 32-byte network key; `None` for a DHT-only seed node (it never carries
    /// packets, so it needs no key).
    pub network_key: Option<NetworkKey>,
    /// Key exchange policy (always [`KxPolicy::Hybrid`] outside benchmarks and tests).
    pub kx: KxPolicy,
    /// Not-yet-validated handshakes in flight above which new ones must first answer a Retry
    /// (address validation, quinn's stateless cookie). 0 = always retry.
    pub retry_above: usize,
    /// The mesh-private part of our record (addresses, overlay addresses, routes).
    pub payload: Payload,
    /// How long our record is valid.
    pub record_lifetime: Duration,
    /// Where the floor of our record sequence numbers is kept (the state directory's `seq`),
    /// so that a record signed after a restart with the clock set back still wins over every
    /// earlier one; `None`: kept in memory only (tests, tools).
    pub seq_file: Option<std::path::PathBuf>,
    /// Bound on how long one connection handshake may take.
    pub handshake_timeout: Duration,
    /// Use plain `sendto`/`recvfrom` instead of quinn-udp's control messages (see
    /// [`crate::plainudp`]).
    pub plain_udp: bool,
    /// MTU of the tunnel the connections carry; sizes quinn's UDP payload.
    pub tunnel_mtu: u16,
    /// Offer and use the plain-UDP fast lane for data frames ([`crate::fastlane`]).
    pub fast_lane: bool,
}

/// What quinn adds around a DATAGRAM frame's payload in a 1-RTT packet: the short header (1 byte
/// and a connection ID of up to 20), the frame type and a 2-byte length varint, and the AEAD
/// tag (16). DESIGN.md quotes 38 for quinn's default 8-byte connection IDs plus room.
pub const QUIC_DATAGRAM_OVERHEAD: usize = 38;

impl NodeConfig {
    /// Defaults for a node on `listen` in the mesh of `network_key`.
    pub fn new(listen: SocketAddr, network_key: impl Into<NetworkKey>) -> Self {
        Self::dht_only(listen).member_of(network_key)
    }

    /// The same node as a member of the mesh of `network_key`.
    pub fn member_of(mut self, network_key: impl Into<NetworkKey>) -> Self {
        self.network_key = Some(network_key.into());
        self
    }

    /// Defaults for a DHT-only (seed) node on `listen`.
    pub fn dht_only(listen: SocketAddr) -> Self {
        NodeConfig {
            listen,
            network_key: None,
            kx: KxPolicy::Hybrid,
            retry_above: 16,
            payload: Payload::default(),
            record_lifetime: Duration::from_secs(6 * 3600),
            seq_file: None,
            handshake_timeout: Duration::from_secs(10),
            plain_udp: false,
            tunnel_mtu: 1380,
            fast_lane: true,
        }
    }
}

/// Why a connection handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// QUIC or TLS failed (includes a pinned-key mismatch and no common key-exchange group).
    Connect(quinn::ConnectError),
    /// The connection failed or was closed by the peer.
    Connection(quinn::ConnectionError),
    /// The peer closed the connection with one of our application codes.
    Rejected {
        /// The code (`CLOSE_*` in `shadowmesh_proto::consts`).
        code: u32,
    },
    /// The peer's HELLO or INIT/RESP failed verification (we closed the connection).
    Verify(shadowmesh_crypto::Error),
    /// The control stream broke the framing rules.
    Protocol(&'static str),
    /// The handshake did not finish in time.
    Timeout,
    /// The peer found our record expired or not yet valid by its clock, which it told us.
    ClockRejected {
        /// The peer's clock, Unix seconds.
        peer_now: u64,
    },
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Connect(e) => write!(f, "connect: {e}"),
            HandshakeError::Connection(e) => write!(f, "connection: {e}"),
            HandshakeError::Rejected { code } => {
                write!(f, "closed by peer: {}", close_reason(*code))
            }
            HandshakeError::Verify(e) => write!(f, "peer failed verification: {e}"),
            HandshakeError::Protocol(what) => write!(f, "protocol error: {what}"),
            HandshakeError::Timeout => f.write_str("handshake timed out"),
            HandshakeError::ClockRejected { peer_now } => write!(
                f,
                "closed by peer: our record is expired or not yet valid by its clock ({peer_now})"
            ),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Human-readable name of one of our QUIC application close codes.
pub fn close_reason(code: u32) -> &'static str {
    match code {
        CLOSE_AUTH_FAILED => "authentication failed",
        CLOSE_WRONG_NETWORK => "wrong network key",
        CLOSE_REPLACED => "replaced by a newer connection",
        CLOSE_PROTOCOL => "protocol violation",
        CLOSE_SHUTDOWN => "shutdown",
        CLOSE_CLOCK => "record expired or not yet valid by the peer's clock",
        CLOSE_BUSY => "busy",
        CLOSE_IDLE => "idle",
        _ => "unknown reason",
    }
}

impl From<quinn::ConnectionError> for HandshakeError {
    fn from(e: quinn::ConnectionError) -> Self {
        match &e {
            quinn::ConnectionError::ApplicationClosed(c) => {
                match u32::try_from(c.error_code.into_inner()) {
                    Ok(CLOSE_CLOCK) if c.reason.len() == 8 => HandshakeError::ClockRejected {
                        peer_now: u64::from_be_bytes(c.reason[..].try_into().expect("8 bytes")),
                    },
                    Ok(code) => HandshakeError::Rejected { code },
                    Err(_) => HandshakeError::Connection(e),
                }
            }
            _ => HandshakeError::Connection(e),
        }
    }
}

impl From<quinn::ReadExactError> for HandshakeError {
    fn from(e: quinn::ReadExactError) -> Self {
        match e {
            quinn::ReadExactError::FinishedEarly(_) => {
                HandshakeError::Protocol("control stream ended early")
            }
            quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => c.into(),
            quinn::ReadExactError::ReadError(_) => HandshakeError::Protocol("control stream reset"),
        }
    }
}

impl From<quinn::WriteError> for HandshakeError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => c.into(),
            _ => HandshakeError::Protocol("control stream write failed"),
        }
    }
}

/// What one handshake cost, from this side's view.
#[derive(Debug, Clone, Copy, Default)]
pub struct HandshakeStats {
    /// Wall time from dial (or accept) to an established session.
    pub elapsed: Duration,
    /// UDP payload bytes this side sent.
    pub udp_tx_bytes: u64,
    /// UDP payload bytes this side received.
    pub udp_rx_bytes: u64,
    /// UDP datagrams sent.
    pub udp_tx_datagrams: u64,
    /// quinn's smoothed RTT estimate at the end.
    pub rtt: Duration,
    /// Whether TLS resumed an earlier session (no certificate check happened).
    pub resumed: bool,
    /// Time until the QUIC/TLS handshake alone completed (before HELLO).
    pub tls_elapsed: Duration,
    /// UDP payload bytes this side had sent when TLS completed.
    pub tls_tx_bytes: u64,
    /// UDP payload bytes this side had received when TLS completed.
    pub tls_rx_bytes: u64,
}

/// An authenticated peer connection with its end-to-end session.
pub struct Peer {
    /// The peer's PeerId, proven by HELLO.
    pub peer_id: PeerId,
    /// The peer's verified record.
    pub record: VerifiedRecord,
    /// The QUIC connection.
    pub conn: Connection,
    /// The end-to-end session (frame keys, replay windows, rekey state); only between members
    /// of the same mesh. `None` for a DHT-only peer: no packet ever flows over it.
    pub session: Option<Session>,
    /// Our role on this connection.
    pub role: Role,
    /// The sending half of the control stream.
    pub control: SendStream,
    /// The receiving half of the control stream, until [`Peer::control_recv`] takes it.
    pub control_rx: Option<RecvStream>,
    /// Handshake cost.
    pub stats: HandshakeStats,
    /// Sequence number of the record we presented in our HELLO. With `record.seq` it orders
    /// two connections between the same pair the same way on both ends (see
    /// [`Peer::precedence`]).
    pub local_seq: u64,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("peer_id", &self.peer_id)
            .field("remote", &self.conn.remote_address())
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Why a frame could not be sent or received on a [`Peer`].
#[derive(Debug)]
pub enum FrameError {
    /// Sealing or opening failed (replay, tamper, no key).
    Crypto(shadowmesh_crypto::Error),
    /// quinn refused the datagram (too large, peer does not accept datagrams).
    Send(quinn::SendDatagramError),
    /// The connection is gone.
    Connection(quinn::ConnectionError),
    /// The peer is not a member of our mesh (DHT-only): no packets flow to or from it.
    NotMember,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Crypto(e) => write!(f, "{e}"),
            FrameError::Send(e) => write!(f, "send: {e}"),
            FrameError::Connection(e) => write!(f, "connection: {e}"),
            FrameError::NotMember => f.write_str("peer is DHT-only: no packets flow"),
        }
    }
}

impl std::error::Error for FrameError {}

impl Peer {
    /// Which of two connections between the same two nodes survives: the one with the higher
    /// precedence. Both ends compute the same value for the same connection: the sum of the
    /// two records' sequence numbers (a restarted node signs a newer record, so its new
    /// connection wins over the dead one), then whether the lower PeerId dialled (settles
    /// simultaneous dials).
    pub fn precedence(&self, me: &PeerId) -> (u64, bool) {
        let lower_dialled = match self.role {
            Role::Dialler => me < &self.peer_id,
            Role::Listener => &self.peer_id < me,
        };
        (
            self.local_seq.saturating_add(self.record.seq),
            lower_dialled,
        )
    }

    /// Takes the receiving half of the control stream (for a reader task); the sending half
    /// stays in `control.0`.
    ///
    /// # Panics
    /// If called twice.
    pub fn control_recv(&mut self) -> RecvStream {
        self.control_rx.take().expect("control_recv called once")
    }

    /// Seals `payload` into one SMSH frame and sends it as a QUIC DATAGRAM.
    ///
    /// This convenience path allocates the datagram buffer; the TUN data plane will use pooled
    /// buffers instead.
    pub fn send_frame(&mut self, kind: FrameType, payload: &[u8]) -> Result<(), FrameError> {
        let session = self.session.as_mut().ok_or(FrameError::NotMember)?;
        let mut buf = bytes::BytesMut::zeroed(payload.len() + FRAME_OVERHEAD);
        buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + payload.len()].copy_from_slice(payload);
        session
            .seal(Instant::now(), kind, &mut buf)
            .map_err(FrameError::Crypto)?;
        self.conn
            .send_datagram(buf.freeze())
            .map_err(FrameError::Send)
    }

    /// Opens a received datagram; returns the frame type and the plaintext's range in `buf`.
    pub fn open_frame(
        &mut self,
        buf: &mut [u8],
    ) -> Result<(FrameType, std::ops::Range<usize>), FrameError> {
        let (kind, plain) = self
            .session
            .as_mut()
            .ok_or(FrameError::NotMember)?
            .open(Instant::now(), buf)
            .map_err(FrameError::Crypto)?;
        let len = plain.len();
        Ok((kind, FRAME_HEADER_LEN..FRAME_HEADER_LEN + len))
    }
}

/// A ShadowMesh node's QUIC endpoint.
pub struct Node {
    id: Arc<Identity>,
    tls: TlsContext,
    endpoint: quinn::Endpoint,
    cfg: NodeConfig,
    record: std::cell::RefCell<Arc<[u8]>>,
    payload: std::cell::RefCell<Payload>,
    transport: Arc<quinn::TransportConfig>,
    in_flight: Arc<AtomicUsize>,
    retries: AtomicUsize,
    retried: std::cell::RefCell<Retried>,
    refused: AtomicUsize,
    /// Hands out our record sequence numbers.
    seqs: SeqFloor,
    /// Handshakes in flight per source, and each source's budget of new ones.
    sources: std::rc::Rc<std::cell::RefCell<SourceCounts<SocketAddr>>>,
    buckets: std::cell::RefCell<TokenBuckets<SocketAddr>>,
    /// Incoming connections refused because their (proven) source was over its limits.
    refused_source: AtomicUsize,
    epoch: Instant,
    /// The endpoint's socket, for the fast lane's sends (the same socket as quinn's).
    socket: std::net::UdpSocket,
    demux: Arc<crate::fastlane::DemuxSocket>,
}

/// quinn's transport settings sized for a router (DESIGN.md, "Data plane"; quinn's defaults are
/// sized for servers: 1.25 MB stream and connection windows, 1 MiB datagram buffers), for a
/// tunnel of MTU `tunnel_mtu`.
pub fn router_transport(tunnel_mtu: u16) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // The UDP payload that carries one full tunnel packet: SMSH header and tag, then quinn's
    // short header, DATAGRAM frame type and length and packet tag (38 bytes). quinn does not
    // fragment and its path-MTU discovery starts at 1,200: set what the tunnel needs from the
    // start, and never less (a smaller path then shows as "packet too big" to the sender).
    let udp_payload =
        (tunnel_mtu as usize + FRAME_OVERHEAD + QUIC_DATAGRAM_OVERHEAD).max(1200) as u16;
    t.max_concurrent_bidi_streams(VarInt::from_u32(16))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(64 * 1024))
        .receive_window(VarInt::from_u32(256 * 1024))
        .send_window(256 * 1024)
        .datagram_receive_buffer_size(Some(256 * 1024))
        // About one bandwidth-delay product of a router uplink (100 Mbit/s x 20 ms = 250 KB):
        // quinn queues this much before dropping the oldest datagram. Its 1 MiB default is
        // ~84 ms of queueing at 100 Mbit/s, which tunnelled TCP feels as bufferbloat.
        .datagram_send_buffer_size(256 * 1024)
        .keep_alive_interval(Some(KEEPALIVE_TIMEOUT))
        .max_idle_timeout(Some(VarInt::from_u32(30_000).into()))
        .initial_mtu(udp_payload)
        .min_mtu(udp_payload);
    // Each side's first flight after TLS (HELLO with the ~7.4 KB record, INIT, two dual
    // signatures: ~19 KB) exceeds RFC 9002's initial window of 14,720 bytes, which costs one
    // extra round trip per direction (the handshake measured 4.4 RTT instead of 2.4). A 32 KiB
    // initial window carries it in one flight; congestion control takes over from there.
    let mut cc = quinn::congestion::CubicConfig::default();
    cc.initial_window(INITIAL_WINDOW);
    t.congestion_controller_factory(Arc::new(cc));
    t
}

/// quinn's initial congestion window, sized to carry one handshake flight (see
/// [`router_transport`]).
pub const INITIAL_WINDOW: u64 = 32 * 1024;

impl Node {
    /// Binds the endpoint and signs our record. Must be called inside a tokio runtime.
    pub fn bind(id: Identity, cfg: NodeConfig) -> std::io::Result<Node> {
        let tls = TlsContext::new(&id, cfg.kx);
        let transport = Arc::new(router_transport(cfg.tunnel_mtu));
        let initial = initial_suite();
        let server_crypto = QuicServerConfig::with_initial(Arc::new(tls.server()), initial)
            .expect("AES-128-GCM initial suite");
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        // Not-yet-accepted connections: quinn buffers 10 MiB each, 100 MiB in all by default.
        server
            .incoming_buffer_size(64 * 1024)
            .incoming_buffer_size_total(1024 * 1024)
            .max_incoming(256);
        // Stateless-reset key derived from the identity: after a restart we can still reset
        // the connections our peers hold to our previous incarnation.
        let secret = id.stateless_reset_secret();
        let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let mut ep_cfg = quinn::EndpointConfig::new(Arc::new(reset_key));
        // quinn drops short-header packets whose connection ID its generator does not
        // recognise, and by default that generator is keyed at random per endpoint: a restarted
        // node would silently drop its peers' packets instead of resetting them. Keying it from
        // the identity too makes the new incarnation recognise, and reset, the old one's IDs.
        let cid_key = shadowmesh_crypto::hmac_sha256(&secret, &[b"shadowmesh/cid-key/v1"]);
        let cid_key = u64::from_be_bytes(cid_key[..8].try_into().expect("8 bytes"));
        // Never an ID starting "MSH": QUIC packets to us must not look like SMSH frames.
        ep_cfg.cid_generator(move || {
            Box::new(crate::fastlane::NoMagicCids(
                quinn_proto::HashedConnectionIdGenerator::from_key(cid_key),
            ))
        });
        let socket = std::net::UdpSocket::bind(cfg.listen)?;
        crate::fastlane::grow_buffers(&socket);
        let fast = socket.try_clone()?;
        let runtime =
            quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
        let demux = if cfg.plain_udp {
            crate::fastlane::DemuxSocket::new(
                crate::plainudp::PlainUdp::new(socket)?,
                cfg.fast_lane,
            )?
        } else if cfg.fast_lane {
            // quinn sends only the control plane: writability is asked for when it waits.
            crate::fastlane::DemuxSocket::over_udp(crate::udp::Udp::new(socket)?, true)?
        } else {
            crate::fastlane::DemuxSocket::new(runtime.wrap_udp_socket(socket)?, false)?
        };
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            ep_cfg,
            Some(server),
            demux.clone(),
            runtime,
        )?;
        let payload = cfg.payload.clone();
        let seqs = SeqFloor::load(cfg.seq_file.clone());
        let now = crate::unix_now();
        let record = sign_record(&id, &cfg, &payload, seqs.next(0, now), now)
            .map_err(|e| std::io::Error::other(format!("building our record: {e}")))?;
        Ok(Node {
            id: Arc::new(id),
            tls,
            endpoint,
            cfg,
            record: std::cell::RefCell::new(record.into()),
            seqs,
            payload: std::cell::RefCell::new(payload),
            transport,
            in_flight: Arc::new(AtomicUsize::new(0)),
            retries: AtomicUsize::new(0),
            retried: Default::default(),
            refused: AtomicUsize::new(0),
            sources: std::rc::Rc::new(std::cell::RefCell::new(SourceCounts::new(
                MAX_IN_FLIGHT_PER_SOURCE,
                MAX_IN_FLIGHT,
            ))),
            buckets: std::cell::RefCell::new(TokenBuckets::new(
                HANDSHAKE_BURST,
                HANDSHAKES_PER_SEC,
                SOURCES_TRACKED,
            )),
            refused_source: AtomicUsize::new(0),
            epoch: Instant::now(),
            socket: fast,
            demux,
        })
    }

    /// The endpoint's UDP socket (shared with quinn), for sending fast-lane frames.
    pub fn socket(&self) -> &std::net::UdpSocket {
        &self.socket
    }

    /// The endpoint's socket as quinn sees it: the data plane starts its fast-lane receiver
    /// on it ([`crate::fastlane::DemuxSocket::receive`]).
    pub fn demux(&self) -> &Arc<crate::fastlane::DemuxSocket> {
        &self.demux
    }

    /// The configuration the node was bound with.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The payload our record carries now.
    pub fn payload(&self) -> Payload {
        self.payload.borrow().clone()
    }

    /// Replaces what our record carries (addresses, routes); takes effect at the next
    /// [`Node::refresh_record`].
    pub fn set_payload(&self, p: Payload) {
        *self.payload.borrow_mut() = p;
    }

    /// Our PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.id.peer_id()
    }

    /// Our identity.
    pub fn identity(&self) -> &Identity {
        &self.id
    }

    /// Our signed record.
    pub fn record(&self) -> Arc<[u8]> {
        self.record.borrow().clone()
    }

    /// Signs a fresh record (higher sequence number, new expiry) and presents it from now on.
    /// Call before every republish: a record lives `record_lifetime` (6 h by default), so
    /// republishing the same bytes would let it expire everywhere.
    pub fn refresh_record(&self) -> Result<Arc<[u8]>, shadowmesh_crypto::Error> {
        let old_seq = record_seq(&self.record.borrow());
        let now = crate::unix_now();
        let seq = self.seqs.next(old_seq, now);
        let rec: Arc<[u8]> =
            sign_record(&self.id, &self.cfg, &self.payload.borrow(), seq, now)?.into();
        *self.record.borrow_mut() = rec.clone();
        Ok(rec)
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The TLS context (exposes the resumption counter).
    pub fn tls(&self) -> &TlsContext {
        &self.tls
    }

    /// Incoming connections answered with a Retry so far.
    pub fn retries_sent(&self) -> usize {
        self.retries.load(Ordering::Relaxed)
    }

    /// Replaces the record we present in HELLO. Only for tests that need to present a forged
    /// record over a real connection.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn set_record_for_test(&mut self, record: Vec<u8>) {
        *self.record.borrow_mut() = record.into();
    }

    /// Closes every connection and waits until they are gone.
    pub async fn shutdown(&self) {
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        self.endpoint.wait_idle().await;
    }

    /// Dials `addr`, expecting `peer`; pins the Ed25519 key `pinned` if known.
    pub async fn dial(
        &self,
        addr: SocketAddr,
        peer: PeerId,
        pinned: Option<[u8; 32]>,
    ) -> Result<Peer, HandshakeError> {
        match tokio::time::timeout(
            self.cfg.handshake_timeout,
            self.dial_inner(addr, peer, pinned),
        )
        .await
        {
            Ok(Err(HandshakeError::ClockRejected { peer_now })) => {
                // Our clock is unset and the peer's is not: take its time and sign a record
                // that it will accept at the next dial.
                if crate::learn_time(peer_now) {
                    if let Err(e) = self.refresh_record() {
                        log::error!("re-signing our record: {e}");
                    }
                }
                Err(HandshakeError::ClockRejected { peer_now })
            }
            Ok(r) => r,
            Err(_) => Err(HandshakeError::Timeout),
        }
    }

    async fn dial_inner(
        &self,
        addr: SocketAddr,
        peer: PeerId,
        pinned: Option<[u8; 32]>,
    ) -> Result<Peer, HandshakeError> {
        let start = Instant::now();
        let checks_before = self.tls.server_cert_checks();
        let initial = initial_suite();
        let crypto = QuicClientConfig::with_initial(Arc::new(self.tls.client(pinned)), initial)
            .expect("AES-128-GCM initial suite");
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(self.transport.clone());
        let conn = self
            .endpoint
            .connect_with(client, addr, &server_name(&peer))
            .map_err(HandshakeError::Connect)?
            .await?;
        let tls = (start.elapsed(), conn.stats());
        let (exporter, tls_key) = session_binding(&conn)?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let my_record = self.record();
        let hello = build_hello(
            &self.id,
            Role::Dialler,
            &peer,
            RecordRefOrSeq::Full(&my_record),
            &exporter,
            self.cfg.network_key.as_deref(),
        )
        .map_err(HandshakeError::Verify)?;
        // A member offers the end-to-end session at once, in the same flight as HELLO.
        let initiating = match self.cfg.network_key {
            Some(_) => {
                let (initiating, init) = session::initiate(&self.id, &peer, &exporter);
                send.write_all(&two_msgs((MsgType::Hello, &hello), (MsgType::Init, &init)))
                    .await?;
                Some(initiating)
            }
            None => {
                write_msg(&mut send, MsgType::Hello, &hello).await?;
                None
            }
        };

        let mut buf = Vec::new();
        expect_msg(&mut recv, &mut buf, MsgType::Hello).await?;
        let check = HelloCheck {
            me: self.id.peer_id(),
            sender_role: Role::Listener,
            expected_peer: Some(peer),
            exporter: &exporter,
            network_key: self.cfg.network_key.as_deref(),
            tls_ed25519: &tls_key,
            known: None,
            now_unix: crate::unix_now(),
        };
        let hello = verify_hello(&buf, &check).map_err(|e| fail(&conn, e))?;
        let record = hello.record;
        // Both members of one mesh (each verified the other's proof): RESP follows.
        let session = match (initiating, hello.member, &self.cfg.network_key) {
            (Some(initiating), true, Some(nk)) => {
                expect_msg(&mut recv, &mut buf, MsgType::Resp).await?;
                Some(
                    initiating
                        .finish(&buf, &record.keys, nk, Instant::now())
                        .map_err(|e| fail(&conn, e))?,
                )
            }
            _ => None,
        };
        let resumed = self.tls.server_cert_checks() == checks_before;
        Ok(Peer {
            peer_id: peer,
            record,
            stats: HandshakeStats::new(start, tls, &conn, resumed),
            conn,
            session,
            role: Role::Dialler,
            control: send,
            control_rx: Some(recv),
            local_seq: record_seq(&my_record),
        })
    }

    /// Waits for the next incoming connection and completes its handshake. Returns `None` when
    /// the endpoint is closed. Handshake failures are returned (and the connection closed); call
    /// again for the next one. One at a time: the daemon uses [`Node::incoming`] and
    /// [`Node::handshake`] to run handshakes side by side.
    pub async fn accept(&self) -> Option<Result<Peer, HandshakeError>> {
        let p = self.incoming().await?;
        Some(self.handshake(p).await)
    }

    /// Waits for the next incoming connection that gets a handshake: while [`NodeConfig::
    /// retry_above`] handshakes are in flight, new unvalidated ones are answered with a Retry
    /// (stateless cookie) instead; at [`MAX_IN_FLIGHT`] they are refused. `None` when the
    /// endpoint is closed.
    pub async fn incoming(&self) -> Option<PendingHandshake> {
        loop {
            let incoming = self.endpoint.accept().await?;
            let n = self.in_flight.load(Ordering::Relaxed);
            let key = (incoming.remote_address(), incoming.orig_dst_cid());
            if !incoming.remote_address_validated()
                && self.retried.borrow().answered(key, Instant::now())
            {
                // The rest of a ClientHello we answered with a Retry (it spans two datagrams
                // with the post-quantum key share), read apart from its first: the client
                // starts over with the token, whatever the load is now. Accepted, it would
                // hold a handshake slot until the timeout; refused, its close would end the
                // client's new attempt (same source connection ID). Found by `load-peers`
                // once a thread of its own read the socket.
                incoming.ignore();
                continue;
            }
            if n >= MAX_IN_FLIGHT {
                self.refused.fetch_add(1, Ordering::Relaxed);
                incoming.refuse();
                continue;
            }
            // Per source: a slot count for everyone, a rate only for proven addresses (a
            // spoofed Initial must not spend a real gateway's budget). A source over either
            // limit is asked to prove its address first, and refused once it has.
            let source = shadowmesh_proto::limit::source_key(incoming.remote_address());
            let validated = incoming.remote_address_validated();
            let room = self.sources.borrow().has_room(&source)
                && (!validated
                    || self
                        .buckets
                        .borrow_mut()
                        .allow(source, self.epoch.elapsed()));
            if !room {
                if validated {
                    self.refused_source.fetch_add(1, Ordering::Relaxed);
                    incoming.refuse();
                } else if self.retried.borrow_mut().first_time(key, Instant::now()) {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    let _ = incoming.retry();
                } else {
                    incoming.ignore();
                }
                continue;
            }
            if !incoming.remote_address_validated() && n >= self.cfg.retry_above {
                // Under load, make the client prove its address first (stateless cookie): a
                // spoofed flood then costs us a Retry packet, not an ML-KEM encapsulation.
                if !self.retried.borrow_mut().first_time(key, Instant::now()) {
                    // The rest of a ClientHello we answered already: one Retry per flight.
                    incoming.ignore();
                    continue;
                }
                self.retries.fetch_add(1, Ordering::Relaxed);
                let _ = incoming.retry();
                continue;
            }
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            self.sources.borrow_mut().start(source);
            return Some(PendingHandshake {
                incoming,
                _guard: InFlight {
                    total: self.in_flight.clone(),
                    sources: self.sources.clone(),
                    source,
                },
            });
        }
    }

    /// Completes one incoming handshake (bounded by the handshake timeout).
    pub async fn handshake(&self, p: PendingHandshake) -> Result<Peer, HandshakeError> {
        let PendingHandshake { incoming, _guard } = p;
        let fut = async {
            let connecting = incoming.accept().map_err(HandshakeError::Connection)?;
            self.finish_accept(connecting).await
        };
        match tokio::time::timeout(self.cfg.handshake_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(HandshakeError::Timeout),
        }
    }

    /// Completes only the QUIC/TLS part of a dial and then stays silent (never sends HELLO): a
    /// stalled or malicious client, for tests of the accepting side.
    #[doc(hidden)]
    pub async fn dial_tls_only(
        &self,
        addr: SocketAddr,
        peer: PeerId,
    ) -> Result<quinn::Connection, HandshakeError> {
        let crypto =
            QuicClientConfig::with_initial(Arc::new(self.tls.client(None)), initial_suite())
                .expect("AES-128-GCM initial suite");
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(self.transport.clone());
        Ok(self
            .endpoint
            .connect_with(client, addr, &server_name(&peer))
            .map_err(HandshakeError::Connect)?
            .await?)
    }

    /// Incoming connections refused because [`MAX_IN_FLIGHT`] handshakes were running.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    /// Incoming connections refused because their proven source was over its limits
    /// ([`MAX_IN_FLIGHT_PER_SOURCE`], [`HANDSHAKES_PER_SEC`]).
    pub fn refused_source(&self) -> usize {
        self.refused_source.load(Ordering::Relaxed)
    }

    async fn finish_accept(&self, connecting: quinn::Connecting) -> Result<Peer, HandshakeError> {
        let start = Instant::now();
        let conn = connecting.await?;
        let tls = (start.elapsed(), conn.stats());
        let (exporter, tls_key) = session_binding(&conn)?;
        let (mut send, mut recv) = conn.accept_bi().await?;
        let mut buf = Vec::new();
        expect_msg(&mut recv, &mut buf, MsgType::Hello).await?;
        let check = HelloCheck {
            me: self.id.peer_id(),
            sender_role: Role::Dialler,
            expected_peer: None,
            exporter: &exporter,
            network_key: self.cfg.network_key.as_deref(),
            tls_ed25519: &tls_key,
            known: None,
            now_unix: crate::unix_now(),
        };
        let outcome = verify_hello(&buf, &check).map_err(|e| fail(&conn, e))?;
        let record = outcome.record;
        let peer = record.peer_id();
        let my_record = self.record();
        let hello = build_hello(
            &self.id,
            Role::Listener,
            &peer,
            RecordRefOrSeq::Full(&my_record),
            &exporter,
            self.cfg.network_key.as_deref(),
        )
        .map_err(HandshakeError::Verify)?;
        // A dialler claiming membership sent INIT after its HELLO: read it even if we cannot
        // use it (we are a seed), so the stream stays in step.
        if outcome.claims_member {
            expect_msg(&mut recv, &mut buf, MsgType::Init).await?;
        }
        let session = match (outcome.member, &self.cfg.network_key) {
            (true, Some(nk)) => {
                let (session, resp) =
                    session::respond(&self.id, &buf, &record.keys, &exporter, nk, Instant::now())
                        .map_err(|e| fail(&conn, e))?;
                send.write_all(&two_msgs((MsgType::Hello, &hello), (MsgType::Resp, &resp)))
                    .await?;
                Some(session)
            }
            _ => {
                write_msg(&mut send, MsgType::Hello, &hello).await?;
                None
            }
        };
        Ok(Peer {
            peer_id: peer,
            record,
            stats: HandshakeStats::new(start, tls, &conn, false),
            conn,
            session,
            role: Role::Listener,
            control: send,
            control_rx: Some(recv),
            local_seq: record_seq(&my_record),
        })
    }
}

impl HandshakeStats {
    fn new(
        start: Instant,
        tls: (Duration, quinn::ConnectionStats),
        conn: &Connection,
        resumed: bool,
    ) -> Self {
        let s = conn.stats();
        HandshakeStats {
            elapsed: start.elapsed(),
            udp_tx_bytes: s.udp_tx.bytes,
            udp_rx_bytes: s.udp_rx.bytes,
            udp_tx_datagrams: s.udp_tx.datagrams,
            rtt: s.path.rtt,
            resumed,
            tls_elapsed: tls.0,
            tls_tx_bytes: tls.1.udp_tx.bytes,
            tls_rx_bytes: tls.1.udp_rx.bytes,
        }
    }
}

/// Signs this node's record with sequence number `seq`, issued at `now` (Unix seconds). A
/// seed's record has no mesh: its (public) payload is sealed under the all-zero key.
fn sign_record(
    id: &Identity,
    cfg: &NodeConfig,
    payload: &Payload,
    seq: u64,
    now: u64,
) -> Result<Vec<u8>, shadowmesh_crypto::Error> {
    build_record(
        id,
        cfg.network_key.as_deref().unwrap_or(&[0; 32]),
        &RecordParams {
            seq,
            issued_at: now,
            expires_at: now + cfg.record_lifetime.as_secs().min(RECORD_MAX_LIFETIME_SECS),
            payload,
        },
    )
}

/// Sequence numbers are reserved this far ahead on flash: the `seq` file is written at start
/// and then at most once a day (records are re-signed hourly), not at every record.
pub const SEQ_RESERVE: u64 = 86_400;

/// Our record sequence numbers: above every one issued before, also across restarts with the
/// clock set back (a router without a real-time clock boots at its image's build date), and
/// following the clock when it is ahead. Numbers below the floor in the `seq` file were never
/// handed out past it: the file always holds a number above every one issued.
#[derive(Debug)]
struct SeqFloor {
    path: Option<std::path::PathBuf>,
    /// What the file held at start: no number of this run is below it.
    floor: u64,
    /// What the file holds now: every number issued is below it.
    reserved: std::cell::Cell<u64>,
}

impl SeqFloor {
    fn load(path: Option<std::path::PathBuf>) -> SeqFloor {
        let reserved = path
            .as_ref()
            .and_then(|p| match std::fs::read_to_string(p) {
                Ok(t) => t
                    .trim()
                    .parse::<u64>()
                    .map_err(|e| {
                        log::warn!(
                            "{}: not a sequence number ({e}); starting from the clock",
                            p.display()
                        );
                    })
                    .ok(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    log::warn!("reading {}: {e}; starting from the clock", p.display());
                    None
                }
            })
            .unwrap_or(0);
        SeqFloor {
            path,
            floor: reserved,
            reserved: std::cell::Cell::new(reserved),
        }
    }

    /// The sequence number of a record signed at `now` after one numbered `prev`.
    fn next(&self, prev: u64, now: u64) -> u64 {
        let seq = now.max(prev + 1).max(self.floor);
        if seq >= self.reserved.get() {
            let ahead = seq + SEQ_RESERVE;
            if let Some(p) = &self.path {
                if let Err(e) = crate::keyfile::write_atomic(p, ahead.to_string().as_bytes(), 0o600)
                {
                    log::warn!(
                        "writing {}: {e} (sequence numbers kept in memory)",
                        p.display()
                    );
                }
            }
            self.reserved.set(ahead);
        }
        seq
    }
}

fn record_seq(record: &[u8]) -> u64 {
    shadowmesh_proto::record::RecordRef::parse(record)
        .map(|r| r.seq)
        .unwrap_or(0)
}

/// The AES-128-GCM suite QUIC Initial packets must use (RFC 9001 §5.2), from ring.
fn initial_suite() -> rustls::quic::Suite {
    rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .expect("ring provides the QUIC initial suite")
}

/// Two control messages in one buffer, so they leave in one flight.
fn two_msgs(a: (MsgType, &[u8]), b: (MsgType, &[u8])) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.1.len() + b.1.len() + 2 * msg::MSG_HEADER_LEN);
    for (t, body) in [a, b] {
        msg::emit_header(t, body.len(), &mut out);
        out.extend_from_slice(body);
    }
    out
}

/// An accepted incoming connection whose handshake has not run yet; counts as in flight.
pub struct PendingHandshake {
    incoming: quinn::Incoming,
    _guard: InFlight,
}

/// Handshakes run side by side at most; beyond, new connections are refused (each one costs an
/// ML-KEM-1024 encapsulation and ML-DSA-87 verifications, and memory until it completes).
pub const MAX_IN_FLIGHT: usize = 64;

/// Handshakes in flight from one source ([`shadowmesh_proto::limit::source_key`]: a public
/// /24 or /48, a private address itself): one source holds at most an eighth of the slots,
/// whether or not it has proven its address.
pub const MAX_IN_FLIGHT_PER_SOURCE: usize = 8;

/// New handshakes one source may start at once, from a proven address...
pub const HANDSHAKE_BURST: u32 = 16;
/// ...and per second after that: each costs the listener an ML-KEM-1024 decapsulation, two
/// ML-DSA-87 verifications and a signature (~5 ms of a router core), so one source can take at
/// most ~2% of a core.
pub const HANDSHAKES_PER_SEC: u32 = 4;

/// Sources whose handshake budget is tracked (~64 B each: 256 KiB at most).
pub const SOURCES_TRACKED: usize = 4096;

/// Initial flights answered with a Retry in the last [`Retried::WINDOW`], by source and
/// destination connection ID. A post-quantum ClientHello spans two datagrams; when they are read
/// apart, the second one would draw a second Retry. A retransmission of the flight (the client
/// missed our Retry) comes a probe timeout later, outside the window, and is answered again.
/// Room for two waves of [`MAX_IN_FLIGHT`] flights (measured: at 32, a wave of 64 handshakes in
/// flight overwrote entries before the second datagrams came, 199 Retries for 160 handshakes).
struct Retried {
    ring: [Option<(SocketAddr, quinn_proto::ConnectionId, Instant)>; 128],
    next: usize,
}

impl Default for Retried {
    fn default() -> Self {
        Retried {
            ring: [None; 128],
            next: 0,
        }
    }
}

impl Retried {
    const WINDOW: Duration = Duration::from_millis(100);

    /// Whether `key` was answered within the window.
    fn answered(&self, key: (SocketAddr, quinn_proto::ConnectionId), now: Instant) -> bool {
        self.ring
            .iter()
            .flatten()
            .any(|(a, c, t)| (*a, *c) == key && now.saturating_duration_since(*t) < Self::WINDOW)
    }

    /// Whether `key` was not answered within the window (and notes it if so).
    fn first_time(&mut self, key: (SocketAddr, quinn_proto::ConnectionId), now: Instant) -> bool {
        let seen = self.answered(key, now);
        if !seen {
            self.ring[self.next] = Some((key.0, key.1, now));
            self.next = (self.next + 1) % self.ring.len();
        }
        !seen
    }
}

/// One handshake in flight: counted in all and for its source until dropped.
struct InFlight {
    total: Arc<AtomicUsize>,
    sources: std::rc::Rc<std::cell::RefCell<SourceCounts<SocketAddr>>>,
    source: SocketAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        self.sources.borrow_mut().end(&self.source);
    }
}

/// The TLS server name we dial a PeerId by: its hex split into two DNS labels (a label may
/// hold at most 63 characters). Also keys the TLS session cache, so a ticket is only ever
/// offered back to the PeerId that issued it.
pub fn server_name(peer: &PeerId) -> String {
    let hex = peer.to_string();
    format!("{}.{}", &hex[..32], &hex[32..])
}

/// Closes `conn` with the code matching `e` and returns the error.
fn fail(conn: &Connection, e: shadowmesh_crypto::Error) -> HandshakeError {
    use shadowmesh_crypto::Error as C;
    use shadowmesh_proto::Error as W;
    // A record that is wrong only by our clock: tell the peer what our clock says (it may be
    // a router whose own clock is unset), unless ours is unset too.
    if matches!(e, C::Wire(W::Expired | W::NotYetValid | W::BadLifetime)) && !crate::clock_unset() {
        conn.close(
            VarInt::from_u32(CLOSE_CLOCK),
            &crate::unix_now().to_be_bytes(),
        );
        return HandshakeError::Verify(e);
    }
    let code = match e {
        C::WrongNetworkKey => CLOSE_WRONG_NETWORK,
        C::Wire(W::Expired | W::BadLifetime | W::Replayed(_) | W::CounterExhausted) => {
            CLOSE_AUTH_FAILED
        }
        C::Wire(_) => CLOSE_PROTOCOL,
        _ => CLOSE_AUTH_FAILED,
    };
    conn.close(VarInt::from_u32(code), close_reason(code).as_bytes());
    HandshakeError::Verify(e)
}

/// The exporter value both HELLOs and INIT/RESP bind to, and the Ed25519 key TLS authenticated.
fn session_binding(conn: &Connection) -> Result<([u8; EXPORTER_LEN], [u8; 32]), HandshakeError> {
    let mut exporter = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| HandshakeError::Protocol("TLS exporter unavailable"))?;
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or(HandshakeError::Protocol("peer presented no key"))?;
    let key = certs
        .first()
        .and_then(|c| ed25519_from_spki(c.as_ref()))
        .ok_or(HandshakeError::Protocol("peer key is not Ed25519"))?;
    Ok((exporter, key))
}

/// Reads one control message into `buf`, requiring type `want`.
pub async fn expect_msg(
    recv: &mut RecvStream,
    buf: &mut Vec<u8>,
    want: MsgType,
) -> Result<(), HandshakeError> {
    let t = read_msg(recv, buf).await?;
    if t != want {
        return Err(HandshakeError::Protocol("unexpected control message"));
    }
    Ok(())
}

/// Reads one length-prefixed control message into `buf` (bounded by `CONTROL_MAX_BODY`).
pub async fn read_msg(recv: &mut RecvStream, buf: &mut Vec<u8>) -> Result<MsgType, HandshakeError> {
    let mut h = [0u8; msg::MSG_HEADER_LEN];
    recv.read_exact(&mut h).await?;
    let (t, len) = msg::parse_header(&h)
        .map_err(|_| HandshakeError::Protocol("bad control message header"))?;
    buf.clear();
    buf.resize(len, 0);
    recv.read_exact(buf).await?;
    Ok(t)
}

/// Writes one control message.
pub async fn write_msg(
    send: &mut SendStream,
    t: MsgType,
    body: &[u8],
) -> Result<(), HandshakeError> {
    let mut out = Vec::with_capacity(body.len() + msg::MSG_HEADER_LEN);
    msg::emit_header(t, body.len(), &mut out);
    out.extend_from_slice(body);
    send.write_all(&out).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_retry_per_flight_and_again_after_the_window() {
        let mut r = Retried::default();
        let t0 = Instant::now();
        let a: SocketAddr = "192.0.2.1:4433".parse().unwrap();
        let cid = quinn_proto::ConnectionId::new(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let other = quinn_proto::ConnectionId::new(&[9; 8]);
        assert!(r.first_time((a, cid), t0));
        // The flight's second datagram: ignored.
        assert!(!r.first_time((a, cid), t0 + Duration::from_millis(1)));
        // Another client, or another flight from the same address: answered.
        assert!(r.first_time((a, other), t0));
        // The client retransmits after a probe timeout: answered again.
        assert!(r.first_time((a, cid), t0 + Retried::WINDOW + Duration::from_millis(1)));
        // Bounded: after a full ring of other flights the entry is gone.
        for i in 0..128u8 {
            let c = quinn_proto::ConnectionId::new(&[i, 0xee, 0, 0]);
            assert!(r.first_time((a, c), t0 + Duration::from_millis(200)));
        }
        assert!(r.first_time((a, cid), t0 + Duration::from_millis(201)));
    }
}

#[cfg(test)]
mod seq_tests {
    use super::*;

    #[test]
    fn sequence_numbers_survive_a_restart_with_the_clock_set_back() {
        let dir = std::env::temp_dir().join(format!("sm-seq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("seq");
        let a = SeqFloor::load(Some(file.clone()));
        let t = 1_800_000_000;
        let s1 = a.next(0, t);
        let s2 = a.next(s1, t + 3600);
        assert_eq!((s1, s2), (t, t + 3600), "the clock, when it is ahead");
        // Hourly records within the reserve write nothing new.
        let on_disk = std::fs::read_to_string(&file).unwrap();
        let s3 = a.next(s2, t + 7200);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), on_disk);
        // A restart five years back: still above everything issued.
        let b = SeqFloor::load(Some(file.clone()));
        let back = t - 5 * 365 * 86_400;
        let s4 = b.next(0, back);
        assert!(s4 > s3, "{s4} > {s3}");
        assert!(b.next(s4, back + 60) > s4);
        // Garbage in the file: start from the clock, and say so.
        std::fs::write(&file, "not a number").unwrap();
        assert_eq!(SeqFloor::load(Some(file)).next(0, t), t);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
