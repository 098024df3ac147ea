//! The data plane: IP packets between the TUN device and the members of our mesh, one SMSH
//! frame per packet, on the fast lane (plain UDP on the QUIC socket, [`crate::fastlane`]) with
//! members that offer it, else in a QUIC DATAGRAM.
//!
//! ```text
//! TUN read (offload: a 64 KiB TCP super-packet, cut into segments) -> dst -> route table
//!   (longest prefix) -> member -> session.seal -> fast lane: GSO burst, one sendmsg
//!                                              -> QUIC lane: send_datagram
//! socket (GRO batch) / read_datagram -> session.open (replay, tag) -> src must belong to that
//!   member -> TUN write (offload: consecutive TCP segments coalesced into one write)
//! ```
//!
//! The route table holds each member's overlay addresses (/32, /128) and the LAN routes its
//! record advertises; the same table checks sources on the way in, as WireGuard's cryptokey
//! routing does: a member may only send from addresses it owns. Members stay known (and their
//! routes installed) after their connection ends; the next packet for one dials it again while
//! up to [`PENDING_MAX`] packets wait.
//!
//! Forwarding allocates nothing in steady state: outgoing frames are cut from one pooled arena
//! (`BytesMut::split`, reclaimed by `reserve` once quinn has sent them) and incoming ones are
//! opened in one scratch buffer shared by the connections' readers. quinn's own allocations (one
//! `Bytes` per received datagram) are its own; `tests/alloc.rs` counts both.
//!
//! Everything runs on one thread (tokio `current_thread` + `LocalSet`); state lives in
//! `RefCell`s that are never borrowed across an `.await`.

use shadowmesh_crypto::NetworkKey;
use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::{Rc, Weak};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use shadowmesh_crypto::session::Session;
use shadowmesh_link::control::{self, Action};
use shadowmesh_link::exchange::{Exchange, Verdict};
pub use shadowmesh_link::members::Counters;
use shadowmesh_link::members::{self, LinkUp, Members};
use shadowmesh_link::paths::{Path, Paths};
use shadowmesh_link::roster::Update;
use shadowmesh_link::timers::{self, Activity};
use shadowmesh_link::{Output, Roster, RosterConfig};
use shadowmesh_proto::consts::*;
use shadowmesh_proto::dht::wire::{emit_contact_list, Contact};
use shadowmesh_proto::frame::{FrameType, Header};
use shadowmesh_proto::gso::{
    complete_csum, Coalescer, TcpGso, VnetHdr, F_NEEDS_CSUM, GSO_NONE, VNET_HDR_LEN,
};
use shadowmesh_proto::msg::{MsgType, Role, PEERS_MAX};
use shadowmesh_proto::overlay::{self, V4Prefix, V6Prefix};
use shadowmesh_proto::policy::Refusal;
use shadowmesh_proto::record::Payload;
use shadowmesh_proto::route::{self, Prefix};
use shadowmesh_proto::PeerId;

use crate::node::{read_msg, write_msg, Node, Peer};
use crate::tun::Tun;

/// Most members one node keeps (each holds a record, routes and, when connected, a session).
pub const MAX_MEMBERS: usize = 1024;
/// Packets held per member while its connection is being dialled.
pub const PENDING_MAX: usize = 16;
/// Bytes of each of the two outgoing frame buffers ([`Arena`]): larger than quinn's datagram
/// send buffer, so that one is free again by the time the other is used up.
const ARENA: usize = 384 * 1024;
/// Largest inner packet we accept from the TUN (jumbo packets are refused by its MTU anyway).
const MAX_PACKET: usize = 9000;
/// How often the links' paths are read from quinn (where each connection now is, its datagram
/// limit): quinn tells no one when they change.
const TICK: Duration = Duration::from_secs(1);
/// Peer-exchange dials in flight at once (each is a handshake: ML-DSA work and ~50 KiB).
const LEARN_IN_FLIGHT: usize = 8;
/// A member named in peer exchange is dialled at most this often.
const LEARN_AGAIN: Duration = Duration::from_secs(60);

/// Marks which code runs, so that a counting allocator in a test can tell allocations of our
/// forwarding code from quinn's (`tests/alloc.rs`). Two thread-local flags with the
/// `test-hooks` feature; without it (the shipped binary) the guards are empty and cost nothing.
#[cfg(any(test, feature = "test-hooks"))]
pub mod alloc_probe {
    use std::cell::Cell;

    thread_local! {
        static OURS: Cell<u32> = const { Cell::new(0) };
        static QUINN: Cell<u32> = const { Cell::new(0) };
    }

    /// Whether our forwarding code (and not a quinn call inside it) is running. (False while
    /// the thread's locals are torn down: an allocator asks.)
    pub fn in_ours() -> bool {
        OURS.try_with(|o| o.get() > 0).unwrap_or(false) && !in_quinn()
    }

    /// Whether a quinn call made by the forwarding code is running.
    pub fn in_quinn() -> bool {
        QUINN.try_with(|q| q.get() > 0).unwrap_or(false)
    }

    /// Guard: our forwarding code runs.
    pub struct Ours(());
    impl Ours {
        /// Enters.
        pub fn enter() -> Ours {
            OURS.with(|o| o.set(o.get() + 1));
            Ours(())
        }
    }
    impl Drop for Ours {
        fn drop(&mut self) {
            OURS.with(|o| o.set(o.get() - 1));
        }
    }

    /// Guard: a quinn call runs.
    pub struct Quinn(());
    impl Quinn {
        /// Enters.
        pub fn enter() -> Quinn {
            QUINN.with(|q| q.set(q.get() + 1));
            Quinn(())
        }
    }
    impl Drop for Quinn {
        fn drop(&mut self) {
            QUINN.with(|q| q.set(q.get() - 1));
        }
    }
}

/// The shipped binary's probe: empty guards.
#[cfg(not(any(test, feature = "test-hooks")))]
mod alloc_probe {
    pub struct Ours;
    impl Ours {
        #[inline(always)]
        pub fn enter() -> Ours {
            Ours
        }
    }
    pub struct Quinn;
    impl Quinn {
        #[inline(always)]
        pub fn enter() -> Quinn {
            Quinn
        }
    }
}

mod batch;
mod forward;
mod links;
pub mod thread;

use batch::FastSink;
pub use batch::{Arena, Batch};

/// A boxed future the data plane awaits on its runtime thread.
pub type LocalFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T>>>;

/// What the data plane asks of the DHT side ([`crate::mesh::Mesh`] implements it): the node
/// whose socket and record it shares, reaching a member, publishing our record. Held weakly:
/// the mesh owns the data plane, not the other way round.
pub trait Dialer {
    /// The QUIC node.
    fn node(&self) -> &Node;
    /// Connects to `to`: a new connection when `fresh`, else any live one. `Err` says why not.
    fn reach(self: Rc<Self>, to: Contact, fresh: bool) -> LocalFuture<Result<(), String>>;
    /// Stores our (re-signed) record in the DHT.
    fn publish_record(
        self: Rc<Self>,
        record: std::sync::Arc<[u8]>,
    ) -> LocalFuture<Result<(), String>>;
    /// The data plane attached to it.
    fn dataplane(&self) -> Option<Rc<DataPlane>>;
}

impl DataPlane {
    /// The mesh side, while it lives.
    fn mesh_side(&self) -> Option<Rc<dyn Dialer>> {
        self.mesh.borrow().as_ref().and_then(Weak::upgrade)
    }
}

/// The TUN reader's buffers: outgoing frames, the GSO burst, and (with offload) the 64 KiB read
/// buffer. One set, used by the reader task and at the end of fast-lane receive batches.
struct ReaderState {
    arenas: Arena,
    batch: Batch,
    rx: Vec<u8>,
}

/// A live connection to a member with its end-to-end session.
struct Link {
    conn: Connection,
    session: Session,
    /// The QUIC path and, once the member said it takes data frames as plain UDP, the fast
    /// lane (then data frames go there, else in QUIC datagrams).
    paths: Paths,
    /// quinn's datagram limit, refreshed every tick (asking per packet takes quinn's lock).
    max_datagram: Option<usize>,
    precedence: (u64, bool),
    role: Role,
    control: Rc<tokio::sync::Mutex<SendStream>>,
}

/// What the data plane holds for a member beside its record: its link, counters and waiting
/// packets (the link core's [`members::Member`]).
type Member = members::Member<Link>;

impl members::Link for Link {
    fn id(&self) -> usize {
        self.conn.stable_id()
    }
    fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }
    fn precedence(&self) -> (u64, bool) {
        self.precedence
    }
    fn index(&self) -> u32 {
        self.session.index()
    }
    fn activity(&self) -> Activity {
        timers::activity(&self.session)
    }
}

/// What `peers` reports for one member.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    /// PeerId.
    pub peer_id: PeerId,
    /// Overlay IPv4.
    pub ipv4: Option<Ipv4Addr>,
    /// The rehash counter its record gives for it.
    pub ipv4_counter: u32,
    /// Overlay IPv6.
    pub ipv6: Option<Ipv6Addr>,
    /// Advertised LAN routes.
    pub routes: Vec<Prefix>,
    /// Its prefixes (overlay addresses and LAN routes) this gateway installed.
    pub routes_accepted: Vec<Prefix>,
    /// Its prefixes this gateway refused, with the reason.
    pub routes_refused: Vec<(Prefix, Refusal)>,
    /// The sequence number of its record we hold.
    pub record_seq: u64,
    /// Remote UDP address of the live connection (or the last one).
    pub endpoint: Option<SocketAddr>,
    /// Whether a session is up.
    pub connected: bool,
    /// quinn's smoothed RTT.
    pub rtt: Option<Duration>,
    /// Traffic.
    pub counters: Counters,
    /// Unix time of the last completed handshake (0: never).
    pub last_handshake: u64,
    /// Completed rekeys on the current session.
    pub rekeys: u32,
    /// Who dialled the live connection: "dialled" (we did), "accepted", or "".
    pub role: &'static str,
    /// quinn's id of the live connection (unchanged across a migration; a new handshake
    /// makes a new one).
    pub connection_id: u64,
    /// How data frames travel: "udp" (the fast lane), "quic" (QUIC datagrams), or "".
    pub lane: &'static str,
    /// The live link's paths, each with how long ago an authenticated frame came over it.
    pub paths: Vec<(Path, Option<Duration>)>,
}

/// Settings of the data plane.
#[derive(Debug, Clone)]
pub struct DataPlaneConfig {
    /// Who we are and what we install from members (the link core's roster settings).
    pub roster: RosterConfig,
    /// If not empty, the only PeerIds admitted.
    pub allowed: Vec<PeerId>,
    /// The network key (opens members' record payloads).
    pub network_key: NetworkKey,
}

impl DataPlaneConfig {
    /// The settings of member `me` whose record carries `payload` (its overlay addresses and
    /// the routes it advertises; the overlay IPv4 /16 is the one its address lies in); `None`
    /// if the payload claims no overlay IPv4 address.
    pub fn new(
        me: PeerId,
        payload: &Payload,
        network_key: impl Into<NetworkKey>,
        allowed: Vec<PeerId>,
    ) -> Option<Self> {
        let network_key = network_key.into();
        let v6 = V6Prefix::for_network(&network_key);
        Some(DataPlaneConfig {
            roster: RosterConfig::member(me, payload, v6, MAX_MEMBERS)?,
            allowed,
            network_key,
        })
    }
}

/// The record payload of member `me` of the mesh with `network_key`, before addresses and
/// routes: the overlay addresses it claims (IPv4 from the first rehash candidate in the default
/// `10.100.0.0/16`, IPv6 from the PeerId inside the mesh's /48).
pub fn member_payload(me: &PeerId, network_key: &[u8; 32]) -> Payload {
    member_payload_in(me, network_key, V4Prefix::default())
}

/// [`member_payload`] with the overlay IPv4 /16 `v4` (`option overlay_ipv4`).
pub fn member_payload_in(me: &PeerId, network_key: &[u8; 32], v4: V4Prefix) -> Payload {
    let (addr, counter) = overlay::ipv4_candidate(v4, me, 0);
    Payload {
        ipv4: Some(addr),
        ipv4_counter: counter,
        ipv6: Some(overlay::ipv6(V6Prefix::for_network(network_key), me)),
        ..Payload::default()
    }
}

/// The data plane of one member node.
pub struct DataPlane {
    cfg: RefCell<DataPlaneConfig>,
    tun: Tun,
    mtu: u16,
    /// The members' links, counters and waiting packets, and their session timers (the link
    /// core); its keys are exactly the roster's members.
    members: RefCell<Members<Link>>,
    /// The members' records and the routes they hold (the sans-IO core).
    roster: RefCell<Roster>,
    /// The host's own routes as last read (kept when a read fails).
    local_routes: RefCell<Vec<Prefix>>,
    /// Peer-exchange dials: when each PeerId was last tried (at most [`MAX_MEMBERS`]), and how
    /// many are in flight.
    learned: RefCell<Exchange>,
    mesh: RefCell<Option<Weak<dyn Dialer>>>,
    /// The endpoint's socket for fast-lane sends; `None` when the fast lane is off.
    fast_socket: RefCell<Option<std::net::UdpSocket>>,
    /// quinn-udp's sender for GSO batches (`None`: one `sendto` per frame, as on `plain_udp`).
    gso: RefCell<Option<quinn::udp::UdpSocketState>>,
    /// With TUN offload: received TCP segments of one flow, written as one packet at the end
    /// of each receive batch.
    gro: RefCell<Option<Coalescer>>,
    /// Where QUIC-lane datagrams are opened (one for all links: 9 KiB per link added up to
    /// 9 MiB at 1,000 peers).
    scratch: RefCell<Vec<u8>>,
    reader: RefCell<ReaderState>,
    /// The last TUN drain found at most one packet ([`DataPlane::drain_tun`]).
    light: Cell<bool>,
    /// The last TUN drain stopped at a full burst.
    tun_backlog: Cell<bool>,
    /// The data-plane thread, when it reads the TUN and the socket ([`crate::dataplane::thread`]).
    thread: RefCell<Option<crate::dataplane::thread::Thread>>,
    /// Members the data-plane thread found a packet for but no connection: the runtime dials
    /// them (the thread spawns nothing), woken through `dialer`.
    dial_later: RefCell<Vec<PeerId>>,
    dialer: RefCell<Option<std::task::Waker>>,
}

impl DataPlane {
    /// Wraps an open TUN device.
    pub fn new(cfg: DataPlaneConfig, tun: Tun, mtu: u16) -> Rc<DataPlane> {
        let roster = Roster::new(cfg.roster.clone());
        let gro = tun.vnet().then(Coalescer::new);
        let vnet = tun.vnet();
        Rc::new(DataPlane {
            gro: RefCell::new(gro),
            scratch: RefCell::new(vec![0u8; FRAME_OVERHEAD + MAX_PACKET]),
            reader: RefCell::new(ReaderState {
                arenas: Arena::new(),
                batch: Batch::new(),
                rx: if vnet {
                    vec![0u8; VNET_HDR_LEN + 65_535]
                } else {
                    Vec::new()
                },
            }),
            cfg: RefCell::new(cfg),
            tun,
            mtu,
            members: RefCell::new(Members::new(MAX_MEMBERS)),
            roster: RefCell::new(roster),
            local_routes: RefCell::new(Vec::new()),
            learned: RefCell::new(Exchange::new(LEARN_IN_FLIGHT, LEARN_AGAIN, MAX_MEMBERS)),
            mesh: RefCell::new(None),
            fast_socket: RefCell::new(None),
            gso: RefCell::new(None),
            light: Cell::new(true),
            tun_backlog: Cell::new(false),
            thread: RefCell::new(None),
            dial_later: RefCell::new(Vec::new()),
            dialer: RefCell::new(None),
        })
    }

    /// Connects the data plane to the mesh that dials members for it, and starts reading the
    /// TUN device.
    pub fn start(self: &Rc<Self>, mesh: Rc<dyn Dialer>) {
        *self.mesh.borrow_mut() = Some(Rc::downgrade(&mesh));
        if mesh.node().config().fast_lane {
            let gso = !mesh.node().config().plain_udp;
            if let Err(e) = self.enable_fast_lane(mesh.node(), gso) {
                log::warn!("fast lane off: cannot share the socket: {e}");
            }
        }
        if self.thread.borrow().is_none() {
            tokio::task::spawn_local(self.clone().tun_reader());
        }
        tokio::task::spawn_local(self.clone().ticker(Rc::downgrade(&mesh)));
        if self.tun.index() != 0 {
            tokio::task::spawn_local(self.clone().watch_link(Rc::downgrade(&mesh)));
        }
    }

    /// Puts the tunnel's routes and IPv6 address back whenever the kernel announces it up: a
    /// down/up (netifd bouncing the interface) removes both. Ends with the mesh.
    async fn watch_link(self: Rc<Self>, mesh: Weak<dyn Dialer>) {
        let events = match crate::netlink::link_events().and_then(|e| {
            // SAFETY: the AsyncFd owns the socket, which stays open while registered.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(e, tokio::io::Interest::READABLE)
            }
            .map_err(|e| std::io::Error::other(e.to_string()))
        }) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("not watching {} for down/up: {e}", self.tun.name());
                return;
            }
        };
        let index = self.tun.index();
        while mesh.strong_count() > 0 {
            let Ok(mut ready) = events.readable().await else {
                return;
            };
            match crate::netlink::link_up_announced(ready.get_inner(), index) {
                Ok(true) => self.restore_link(),
                Ok(false) => {}
                Err(e) => log::warn!("reading link announcements: {e}"),
            }
            ready.clear_ready();
        }
    }

    /// Re-adds the tunnel's IPv6 address and the LAN routes the roster holds installed (each
    /// one still there answers `EEXIST`: nothing is replaced).
    fn restore_link(&self) {
        let (_, _, v6) = self.addresses();
        if let Some(v6) = v6 {
            if let Err(e) = crate::netlink::add_addr(self.tun.index(), IpAddr::V6(v6), 48) {
                log::warn!("restoring {v6}/48 on {}: {e}", self.tun.name());
            }
        }
        let mut restored = 0;
        for (p, _) in self.roster.borrow().installed() {
            match self.tun.add_route(p) {
                Ok(()) => restored += 1,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => log::warn!("restoring route {p}: {e}"),
            }
        }
        if restored > 0 {
            log::info!(
                "{} came back up: {restored} routes restored",
                self.tun.name()
            );
        }
    }

    /// Sends and accepts data frames as plain UDP on `node`'s socket with members that do the
    /// same; links added afterwards offer it ([`crate::fastlane`]). With `gso`, the frames of a
    /// burst to one member leave in one `sendmsg` where the kernel can. From here on a task of
    /// ours reads the socket and hands quinn its datagrams.
    pub fn enable_fast_lane(self: &Rc<Self>, node: &Node, gso: bool) -> std::io::Result<()> {
        let s = node.socket().try_clone()?;
        let local = s.local_addr()?;
        if gso {
            let state = quinn::udp::UdpSocketState::new((&s).into())?;
            if state.max_gso_segments() > 1 {
                *self.gso.borrow_mut() = Some(state);
            }
        }
        *self.fast_socket.borrow_mut() = Some(s);
        let sink: crate::fastlane::Sink = Rc::new(FastSink(Rc::downgrade(self)));
        crate::fastlane::set_sink(local, Some(sink.clone()));
        let demux = node.demux();
        if let (Some(tun), true) = (self.tun.raw_fd(), demux.takeable()) {
            match crate::dataplane::thread::start(
                self,
                sink,
                demux.clone(),
                tun,
                node.socket().try_clone()?,
            ) {
                Ok(Some(t)) => {
                    // The thread reads both from now on; the runtime stops watching them.
                    self.tun.stop_watching();
                    demux.take_over();
                    *self.thread.borrow_mut() = Some(t);
                    tokio::task::spawn_local(self.clone().dialer());
                    return Ok(());
                }
                Ok(None) => {}
                Err(e) => log::warn!("no data-plane thread ({e}): the runtime forwards"),
            }
        }
        tokio::task::spawn_local(demux.clone().receive());
        Ok(())
    }

    /// Whether a data-plane thread reads the TUN and the socket ([`crate::dataplane::thread`]); if not,
    /// runtime tasks do.
    pub fn has_thread(&self) -> bool {
        self.thread.borrow().is_some()
    }

    /// Dials the members the data-plane thread asked for.
    async fn dialer(self: Rc<Self>) {
        loop {
            std::future::poll_fn(|cx| {
                if self.dial_later.borrow().is_empty() {
                    *self.dialer.borrow_mut() = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(())
            })
            .await;
            let list = std::mem::take(&mut *self.dial_later.borrow_mut());
            for pid in list {
                self.dial(pid, false);
            }
        }
    }

    /// Whether the last TUN drain stopped at a full burst (for the data-plane thread).
    pub(crate) fn tun_backlog(&self) -> bool {
        self.tun_backlog.get()
    }

    fn fast_lane(&self) -> bool {
        self.fast_socket.borrow().is_some()
    }

    /// The TUN device.
    pub fn tun(&self) -> &Tun {
        &self.tun
    }

    /// The TUN interface name.
    pub fn interface(&self) -> &str {
        self.tun.name()
    }

    /// The TUN MTU.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Replaces the admission allowlist and the route policy (config reload); members no
    /// longer allowed are disconnected and forgotten, and every member's prefixes are judged
    /// again.
    pub fn reconfigure(
        &self,
        allowed: Vec<PeerId>,
        own_routes: Vec<Prefix>,
        accept_routes: bool,
        accept: Vec<Prefix>,
    ) {
        self.cfg.borrow_mut().allowed = allowed;
        self.roster
            .borrow_mut()
            .reconfigure(own_routes, accept_routes, accept);
        let gone: Vec<PeerId> = self
            .members
            .borrow()
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !self.admitted(p))
            .collect();
        for p in gone {
            self.forget(&p);
        }
        self.rebuild_routes();
    }

    fn admitted(&self, p: &PeerId) -> bool {
        let c = self.cfg.borrow();
        c.allowed.is_empty() || c.allowed.contains(p)
    }

    fn forget(&self, p: &PeerId) {
        self.roster.borrow_mut().remove(p);
        if let Some(m) = self.members.borrow_mut().remove(p) {
            if let Some(l) = m.link {
                l.conn
                    .close(VarInt::from_u32(CLOSE_AUTH_FAILED), b"not allowed");
            }
        }
        self.rebuild_routes();
    }
}
