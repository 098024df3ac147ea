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

use crate::quic::{Connection, RecvStream, SendStream, VarInt};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use shadowmesh_crypto::hello::{build_hello, verify_hello, HelloCheck, HelloParams, HelloSig};
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

mod admission;
mod peer;
mod record;

pub use admission::*;
pub use peer::*;
use record::*;

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

/// The tunnel MTU unless configured: a 1500-byte underlay, minus the IPv6 and UDP headers (48),
/// quinn's datagram overhead (38) and the SMSH header and tag (38): 1,376. Over an IPv4
/// underlay 20 more would fit; this fits both.
pub const DEFAULT_TUNNEL_MTU: u16 = (1500 - 48 - QUIC_DATAGRAM_OVERHEAD - FRAME_OVERHEAD) as u16;

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
            tunnel_mtu: DEFAULT_TUNNEL_MTU,
            fast_lane: true,
        }
    }
}

/// A ShadowMesh node's QUIC endpoint.
pub struct Node {
    id: Arc<Identity>,
    tls: TlsContext,
    endpoint: crate::quic::Endpoint,
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
    /// Peers' records from recent handshakes, for `Known(seq)` HELLOs on redials.
    held: std::cell::RefCell<HeldRecords>,
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

/// How long [`Node::shutdown`] waits for the connections to finish closing (their peers are
/// told at once; the wait only lets retransmitted closes go out).
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

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
        let endpoint = crate::quic::Endpoint::new(ep_cfg, Some(server), demux.clone())?;
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
            held: Default::default(),
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

    /// Closes every connection and waits until they are gone, or [`SHUTDOWN_WAIT`] at most: a
    /// daemon told to stop must free its port even if a connection cannot finish closing (its
    /// close could not be sent: the socket reported no room and never room again).
    pub async fn shutdown(&self) {
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        if tokio::time::timeout(SHUTDOWN_WAIT, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            log::warn!("connections still closing after {SHUTDOWN_WAIT:?}: leaving them");
        }
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
        let member = self.cfg.network_key.is_some();
        let now_unix = crate::unix_now();
        let held = self.held.borrow().get(&peer, now_unix).cloned();
        let hello = build_hello(
            &self.id,
            &HelloParams {
                role: Role::Dialler,
                to: &peer,
                record: RecordRefOrSeq::Full(&my_record),
                exporter: &exporter,
                network_key: self.cfg.network_key.as_deref(),
                sig: if member {
                    HelloSig::WithNext
                } else {
                    HelloSig::Own
                },
                held: held.as_ref().map(|r| r.seq),
            },
        )
        .map_err(HandshakeError::Verify)?;
        // A member offers the end-to-end session at once, in the same flight as HELLO, and signs
        // the two together once.
        let initiating = if member {
            let (initiating, init) =
                session::initiate_after_hello(&self.id, &peer, &exporter, &hello);
            send.write_all(&two_msgs((MsgType::Hello, &hello), (MsgType::Init, &init)))
                .await?;
            Some(initiating)
        } else {
            write_msg(&mut send, MsgType::Hello, &hello).await?;
            None
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
            known: held.as_ref(),
            now_unix,
        };
        let hello = verify_hello(&buf, &check).map_err(|e| fail(&conn, e))?;
        let record = hello.record;
        // Both members of one mesh (each verified the other's proof): RESP follows, signed
        // over the listener's HELLO too. An unsigned HELLO with nothing after it to prove it
        // is refused.
        let session = match (initiating, hello.member, &self.cfg.network_key) {
            (Some(initiating), true, Some(nk)) => {
                let peer_hello = std::mem::take(&mut buf);
                expect_msg(&mut recv, &mut buf, MsgType::Resp).await?;
                let now = crate::mono_now();
                let done = if hello.signed_with_next {
                    initiating.finish_after_hello(&buf, &peer_hello, &record.keys, nk, now)
                } else {
                    initiating.finish(&buf, &record.keys, nk, now)
                };
                Some(done.map_err(|e| fail(&conn, e))?)
            }
            _ if hello.signed_with_next => {
                return Err(fail(
                    &conn,
                    shadowmesh_crypto::Error::Wire(shadowmesh_proto::Error::InvalidField(
                        "HELLO signature placement",
                    )),
                ))
            }
            _ => None,
        };
        let resumed = self.tls.server_cert_checks() == checks_before;
        self.held.borrow_mut().keep(&record);
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
    ) -> Result<crate::quic::Connection, HandshakeError> {
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

    async fn finish_accept(
        &self,
        connecting: crate::quic::Connecting,
    ) -> Result<Peer, HandshakeError> {
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
        let respond = matches!((outcome.member, &self.cfg.network_key), (true, Some(_)));
        // The dialler holds our current record: its sequence number is enough.
        let my_seq = record_seq(&my_record);
        let hello = build_hello(
            &self.id,
            &HelloParams {
                role: Role::Listener,
                to: &peer,
                record: if outcome.held == Some(my_seq) {
                    RecordRefOrSeq::Known(my_seq)
                } else {
                    RecordRefOrSeq::Full(&my_record)
                },
                exporter: &exporter,
                network_key: self.cfg.network_key.as_deref(),
                // Our RESP carries our HELLO's signature when the dialler's INIT carried its.
                sig: if respond && outcome.signed_with_next {
                    HelloSig::WithNext
                } else {
                    HelloSig::Own
                },
                held: None,
            },
        )
        .map_err(HandshakeError::Verify)?;
        // A dialler claiming membership sent INIT after its HELLO, signed over both: read it
        // even if we cannot use it (we are a seed), since its signature is the HELLO's proof.
        let peer_hello = std::mem::take(&mut buf);
        if outcome.claims_member {
            expect_msg(&mut recv, &mut buf, MsgType::Init).await?;
        }
        let session = match &self.cfg.network_key {
            Some(nk) if respond => {
                let now = crate::mono_now();
                let (session, resp) = if outcome.signed_with_next {
                    let flight = session::Flight {
                        peer_hello: &peer_hello,
                        my_hello: &hello,
                    };
                    session::respond_in_flight(
                        &self.id,
                        &buf,
                        &record.keys,
                        &exporter,
                        nk,
                        flight,
                        now,
                    )
                } else {
                    // A HELLO signed on its own, and so its INIT: so are ours.
                    session::respond(&self.id, &buf, &record.keys, &exporter, nk, now)
                }
                .map_err(|e| fail(&conn, e))?;
                send.write_all(&two_msgs((MsgType::Hello, &hello), (MsgType::Resp, &resp)))
                    .await?;
                Some(session)
            }
            _ => {
                if outcome.signed_with_next {
                    session::verify_init_after_hello(
                        &self.id,
                        &buf,
                        &record.keys,
                        &exporter,
                        &peer_hello,
                    )
                    .map_err(|e| fail(&conn, e))?;
                }
                write_msg(&mut send, MsgType::Hello, &hello).await?;
                None
            }
        };
        self.held.borrow_mut().keep(&record);
        Ok(Peer {
            peer_id: peer,
            record,
            stats: HandshakeStats::new(start, tls, &conn, false),
            conn,
            session,
            role: Role::Listener,
            control: send,
            control_rx: Some(recv),
            local_seq: my_seq,
        })
    }
}

/// The AES-128-GCM suite QUIC Initial packets must use (RFC 9001 §5.2), from ring.
pub fn initial_suite() -> rustls::quic::Suite {
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
