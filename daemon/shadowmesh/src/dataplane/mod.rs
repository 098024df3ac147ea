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
//! What to do about members (their records, links, routes, waiting packets, peer exchange,
//! session timers) the link core decides ([`shadowmesh_link::engine::Engine`]); this shell
//! feeds it and carries out its outputs (`links.rs`), and seals and opens frames on the member
//! it names. The route table holds each member's overlay addresses (/32, /128) and the LAN
//! routes its record advertises; the same table checks sources on the way in, as WireGuard's cryptokey
//! routing does: a member may only send from addresses it owns. Members stay known (and their
//! routes installed) after their connection ends; the next packet for one dials it again while
//! up to [`PENDING_MAX`] packets wait.
//!
//! Forwarding allocates nothing in steady state: outgoing frames are cut from one pooled arena
//! (`BytesMut::split`, reclaimed by `reserve` once quinn has sent them) and incoming ones are
//! opened in one scratch buffer shared by the connections' readers. quinn's own allocations (one
//! `Bytes` per received datagram) are its own; `tests/alloc.rs` counts both.
//!
//! Everything runs on one thread at a time (tokio `current_thread` + `LocalSet`, and the
//! data-plane thread while it holds the baton, [`thread`]); state lives in `RefCell`s that are
//! never borrowed across an `.await`.

use shadowmesh_crypto::NetworkKey;
use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::{Rc, Weak};
use std::task::Poll;
use std::time::Duration;

use crate::quic::{Connection, RecvStream, SendStream, VarInt};
use bytes::BytesMut;
use shadowmesh_crypto::session::Session;
use shadowmesh_link::control::Action;
use shadowmesh_link::engine::{Engine, Output as CoreOutput};
use shadowmesh_link::members;
pub use shadowmesh_link::members::Counters;
use shadowmesh_link::paths::{Path, Paths};
pub use shadowmesh_link::roster::{member_payload, member_payload_in};
use shadowmesh_link::timers::{self, Activity};
use shadowmesh_link::{Output, Roster, RosterConfig};
use shadowmesh_proto::consts::*;
use shadowmesh_proto::dht::wire::Contact;
use shadowmesh_proto::frame::{FrameType, Header};
use shadowmesh_proto::gso::{
    complete_csum, Coalescer, TcpGso, VnetHdr, F_NEEDS_CSUM, GSO_NONE, VNET_HDR_LEN,
};
use shadowmesh_proto::msg::{MsgType, Role};
use shadowmesh_proto::overlay::V6Prefix;
use shadowmesh_proto::policy::Refusal;
use shadowmesh_proto::record::Payload;
use shadowmesh_proto::route::{self, Prefix};
use shadowmesh_proto::PeerId;

use crate::node::{read_msg, write_msg, Node, Peer};
use crate::tun::Tun;

/// Most members one node keeps (each holds a record, routes and, when connected, a session).
pub const MAX_MEMBERS: usize = 1024;
pub use shadowmesh_link::engine::PENDING_MAX;
/// Bytes of each of the two outgoing frame buffers ([`Arena`]): larger than quinn's datagram
/// send buffer, so that one is free again by the time the other is used up.
const ARENA: usize = 384 * 1024;
/// Largest inner packet we accept from the TUN (jumbo packets are refused by its MTU anyway).
const MAX_PACKET: usize = 9000;
/// How often the links' paths are read from quinn (where each connection now is, its datagram
/// limit): quinn tells no one when they change.
const TICK: Duration = Duration::from_secs(1);

#[cfg(any(test, feature = "test-hooks"))]
pub mod alloc_probe;
#[cfg(not(any(test, feature = "test-hooks")))]
#[path = "alloc_probe_off.rs"]
mod alloc_probe;
mod batch;
mod forward;
mod links;
mod report;
pub use report::{MemberInfo, RelayInfo};
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
    /// A member at `reporter` sees us at `at` now (our connection to it migrated).
    fn seen(self: Rc<Self>, reporter: std::net::SocketAddr, at: std::net::SocketAddr);
    /// A link died of silence: ask where others see us now ([`Dht::observe_soon`]).
    ///
    /// [`Dht::observe_soon`]: shadowmesh_proto::dht::node::Dht::observe_soon
    fn observe_soon(&self);
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
    tiebreak: u64,
    role: Role,
    control: Rc<tokio::sync::Mutex<SendStream>>,
    /// The member's end is on one of our links ([`crate::lan::on_link`]).
    lan: bool,
}

/// What the data plane holds for a member beside its record: its link, counters and waiting
/// packets (the link core's [`members::Member`]).
type Member = members::Member<Link>;

impl members::Link for Link {
    type Session = Session;
    fn id(&self) -> usize {
        self.conn.stable_id()
    }
    fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }
    fn precedence(&self) -> (u64, bool) {
        self.precedence
    }
    fn tiebreak(&self) -> u64 {
        self.tiebreak
    }
    fn dialled(&self) -> bool {
        self.role == Role::Dialler
    }
    fn index(&self) -> u32 {
        self.session.index()
    }
    fn activity(&self) -> Activity {
        timers::activity(&self.session)
    }
    fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }
    fn paths_mut(&mut self) -> &mut Paths {
        &mut self.paths
    }
    fn relayed(&self) -> bool {
        self.paths.relayed()
    }
    fn on_lan(&self) -> bool {
        self.lan
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection {}", self.conn.stable_id())
    }
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

/// The data plane of one member node.
pub struct DataPlane {
    cfg: RefCell<DataPlaneConfig>,
    tun: Tun,
    mtu: u16,
    /// The link core: the members, their records, links, routes, waiting packets, peer
    /// exchange and session timers.
    core: RefCell<Engine<Link>>,
    /// The host's own routes as last read (kept when a read fails).
    local_routes: RefCell<Vec<Prefix>>,
    mesh: RefCell<Option<Weak<dyn Dialer>>>,
    /// The endpoint's socket for fast-lane sends; `None` when the fast lane is off.
    fast_socket: RefCell<Option<std::net::UdpSocket>>,
    /// The socket as quinn sees it, for frames to members reached through a relay (it puts
    /// them in the circuit's envelope); `None` when the fast lane is off.
    demux: RefCell<Option<std::sync::Arc<crate::fastlane::DemuxSocket>>>,
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
    /// Wakes the task that drives the core ([`DataPlane::driver`]).
    driver: RefCell<Option<std::task::Waker>>,
    /// The LAN_NAMES body we share (`option share_lan_names`), sent to each member as its
    /// link comes up and to all when it changes.
    lan_names: RefCell<Option<Vec<u8>>>,
}

impl DataPlane {
    /// Wraps an open TUN device.
    pub fn new(cfg: DataPlaneConfig, tun: Tun, mtu: u16) -> Rc<DataPlane> {
        let core = Engine::new(cfg.roster.clone(), cfg.allowed.clone());
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
            core: RefCell::new(core),
            local_routes: RefCell::new(Vec::new()),
            mesh: RefCell::new(None),
            fast_socket: RefCell::new(None),
            demux: RefCell::new(None),
            gso: RefCell::new(None),
            light: Cell::new(true),
            tun_backlog: Cell::new(false),
            thread: RefCell::new(None),
            driver: RefCell::new(None),
            lan_names: RefCell::new(None),
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
        tokio::task::spawn_local(self.clone().driver(Rc::downgrade(&mesh)));
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
        for (p, _) in self.core.borrow().roster().installed() {
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
        *self.demux.borrow_mut() = Some(node.demux().clone());
        self.core.borrow_mut().set_fast_lane(true);
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

    /// Whether the last TUN drain stopped at a full burst (for the data-plane thread).
    pub(crate) fn tun_backlog(&self) -> bool {
        self.tun_backlog.get()
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
        self.cfg.borrow_mut().allowed = allowed.clone();
        self.core
            .borrow_mut()
            .reconfigure(allowed, own_routes, accept_routes, accept);
        self.run();
    }
}
