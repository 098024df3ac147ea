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
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::{Rc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use shadowmesh_crypto::session::Session;
use shadowmesh_link::exchange::{Exchange, Verdict};
use shadowmesh_link::pending::Pending;
use shadowmesh_link::roster::Update;
use shadowmesh_link::{Output, Roster};
use shadowmesh_proto::consts::*;
use shadowmesh_proto::dht::wire::{emit_contact_list, parse_contact_list, Contact};
use shadowmesh_proto::frame::FrameType;
use shadowmesh_proto::gso::{
    complete_csum, Coalescer, TcpGso, VnetHdr, F_NEEDS_CSUM, GSO_NONE, VNET_HDR_LEN,
};
use shadowmesh_proto::msg::{MsgType, Role, PEERS_MAX};
use shadowmesh_proto::overlay::{self, V4Prefix, V6Prefix};
use shadowmesh_proto::policy::{Refusal, RoutePolicy};
use shadowmesh_proto::record::Payload;
use shadowmesh_proto::route::{self, Prefix};
use shadowmesh_proto::PeerId;

use crate::mesh::Mesh;
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
/// How often the links are checked for keepalive and rekey (one timer for all of them).
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

/// Where outgoing frames are cut from: two large buffers used in turn. Each frame handed to
/// quinn is a slice of one (`BytesMut::split`, no allocation); when the current buffer is used
/// up it is reclaimed in place once quinn has dropped every frame cut from it, or else the
/// other one is. `BytesMut::reserve` would not do: on a buffer still shared it allocates a new
/// one of at most 64 KiB, and then again every ~60 packets (measured: 0.035 allocations per
/// packet). A fresh buffer is allocated only if quinn still holds frames from both, that is a
/// backlog larger than its whole datagram send buffer.
pub struct Arena {
    bufs: [BytesMut; 2],
    cur: usize,
}

impl Arena {
    fn new() -> Arena {
        Arena {
            bufs: [
                BytesMut::with_capacity(ARENA),
                BytesMut::with_capacity(ARENA),
            ],
            cur: 0,
        }
    }

    /// Room for one frame of `slot` bytes, zeroed.
    fn prepare(&mut self, slot: usize) -> &mut BytesMut {
        if self.bufs[self.cur].capacity() < slot && !self.bufs[self.cur].try_reclaim(slot) {
            self.cur ^= 1;
            let b = &mut self.bufs[self.cur];
            if b.capacity() < slot && !b.try_reclaim(slot) {
                *b = BytesMut::with_capacity(ARENA);
            }
        }
        let a = &mut self.bufs[self.cur];
        a.resize(slot, 0);
        a
    }
}

/// Fast-lane frames for one member waiting to leave in one `sendmsg` (UDP GSO: the kernel cuts
/// the buffer into datagrams of `seg` bytes, the last one possibly shorter). Filled while the
/// TUN reader drains a burst, sent when the burst ends or the destination or size changes.
pub struct Batch {
    buf: Vec<u8>,
    to: Option<(SocketAddr, PeerId)>,
    seg: usize,
    count: usize,
    bytes: u64,
    /// A shorter frame was added: it must be the last.
    closed: bool,
}

/// Bytes one GSO send may carry (the UDP length field's limit, less room for headers).
const BATCH_BYTES: usize = 65_000;
/// Packets the TUN reader takes per wake-up before sending what it has.
const BURST: usize = 64;
/// Most segments one offloaded TCP packet may be cut into (64 KiB at the smallest MSS Linux
/// uses for a 1,280-byte MTU is 55).
const MAX_SEGMENTS: usize = 128;

impl Batch {
    /// An empty batch (allocates its buffer once).
    pub fn new() -> Batch {
        Batch {
            buf: Vec::with_capacity(BATCH_BYTES),
            to: None,
            seg: 0,
            count: 0,
            bytes: 0,
            closed: false,
        }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

/// Which member sends from which address on the fast lane (one address per member: where its
/// QUIC connection comes from), with the last answer kept: the frames of a burst come from one
/// member, and SipHash of a `SocketAddr` is ~250 instructions a frame (callgrind, ping).
#[derive(Default)]
struct FastPeers {
    map: HashMap<SocketAddr, PeerId>,
    last: Option<(SocketAddr, PeerId)>,
}

impl FastPeers {
    fn get(&mut self, from: SocketAddr) -> Option<PeerId> {
        match self.last {
            Some((a, p)) if a == from => Some(p),
            _ => {
                let p = *self.map.get(&from)?;
                self.last = Some((from, p));
                Some(p)
            }
        }
    }

    /// `pid` sends from `at` (and from nowhere else).
    fn set(&mut self, at: SocketAddr, pid: PeerId) {
        self.forget(&pid);
        self.map.insert(at, pid);
    }

    /// `pid` may also send from `at` (where quinn now sees it, not yet proven): frames from
    /// there are opened too, and the first one that authenticates moves the member there
    /// ([`DataPlane::open_deliver`]). Its other addresses but `keep` are dropped.
    fn candidate(&mut self, at: SocketAddr, pid: PeerId, keep: Option<SocketAddr>) {
        self.map.retain(|a, q| *q != pid || Some(*a) == keep);
        self.last = None;
        self.map.insert(at, pid);
    }

    fn forget(&mut self, pid: &PeerId) {
        self.map.retain(|_, q| q != pid);
        self.last = None;
    }
}

/// The fast lane's receiver: frames to [`DataPlane::deliver_fast`], batch ends to the TUN
/// coalescer.
struct FastSink(Weak<DataPlane>);

impl crate::fastlane::FrameSink for FastSink {
    fn frame(&self, from: SocketAddr, frame: &mut [u8]) {
        if let Some(dp) = self.0.upgrade() {
            dp.deliver_fast(from, frame);
        }
    }

    fn end_of_batch(&self) {
        if let Some(dp) = self.0.upgrade() {
            let _ours = alloc_probe::Ours::enter();
            dp.flush_gro();
            dp.drain_tun();
        }
    }
}

/// The TUN reader's buffers: outgoing frames, the GSO burst, and (with offload) the 64 KiB read
/// buffer. One set, used by the reader task and at the end of fast-lane receive batches.
struct ReaderState {
    arenas: Arena,
    batch: Batch,
    rx: Vec<u8>,
}

/// Traffic counters of one member (and the totals).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Inner bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Inner bytes received and delivered.
    pub rx_bytes: u64,
    /// Packets received and delivered.
    pub rx_packets: u64,
    /// Received packets whose source the member does not own (dropped).
    pub rx_spoofed: u64,
    /// Received frames that failed authentication, replay or parsing (dropped).
    pub rx_invalid: u64,
    /// Packets dropped on the way out (no session, queue full, quinn refused).
    pub tx_dropped: u64,
}

/// A live connection to a member with its end-to-end session.
struct Link {
    conn: Connection,
    session: Session,
    /// Where to send data frames as plain UDP, once the member said it takes them (its
    /// connection's remote address, refreshed every tick); `None`: QUIC datagrams.
    fast: Option<SocketAddr>,
    /// quinn's datagram limit, refreshed every tick (asking per packet takes quinn's lock).
    max_datagram: Option<usize>,
    precedence: (u64, bool),
    role: Role,
    control: Rc<tokio::sync::Mutex<SendStream>>,
    since: u64,
}

/// What the data plane holds for a member beside its record (which the [`Roster`] keeps):
/// the live link, counters and the packets waiting for a link.
struct Member {
    link: Option<Link>,
    counters: Counters,
    /// Unix time of the last completed handshake.
    last_handshake: u64,
    /// Packets waiting for a link, and whether one is being dialled.
    wait: Pending,
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
}

/// Settings of the data plane.
#[derive(Debug, Clone)]
pub struct DataPlaneConfig {
    /// Our PeerId.
    pub me: PeerId,
    /// Our overlay IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The rehash counter that derives it (0 unless a lower PeerId holds our first choice).
    pub ipv4_counter: u32,
    /// Our overlay IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// What we install from members: our own routes, the overlay prefixes, `accept_route(s)`.
    pub policy: RoutePolicy,
    /// The overlay IPv4 /16 (members' claims are checked against it).
    pub v4_prefix: V4Prefix,
    /// The mesh's overlay IPv6 /48.
    pub v6_prefix: V6Prefix,
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
        let o = payload.ipv4?.octets();
        let v4_prefix = V4Prefix { net: [o[0], o[1]] };
        let v6_prefix = V6Prefix::for_network(&network_key);
        Some(DataPlaneConfig {
            me,
            ipv4: payload.ipv4?,
            ipv4_counter: payload.ipv4_counter,
            ipv6: payload.ipv6,
            policy: RoutePolicy {
                accept_routes: true,
                accept: vec![],
                overlay: vec![v4_prefix.prefix(), v6_prefix.prefix()],
                own: payload
                    .routes
                    .iter()
                    .filter_map(|r| Prefix::new(r.addr, r.prefix_len))
                    .collect(),
                local: vec![],
            },
            v4_prefix,
            v6_prefix,
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
    /// Runtime state per member; its keys are exactly the roster's members.
    members: RefCell<BTreeMap<PeerId, Member>>,
    /// The members' records and the routes they hold (the sans-IO core).
    roster: RefCell<Roster>,
    /// The host's own routes as last read (kept when a read fails).
    local_routes: RefCell<Vec<Prefix>>,
    /// Peer-exchange dials: when each PeerId was last tried (at most [`MAX_MEMBERS`]), and how
    /// many are in flight.
    learned: RefCell<Exchange>,
    /// The monotonic clock the link core's timers read (time since the data plane started).
    epoch: Instant,
    mesh: RefCell<Weak<Mesh>>,
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
    /// Fast-lane senders we accept frames from: remote address → member (one per link).
    fast_peers: RefCell<FastPeers>,
    /// The last TUN drain found at most one packet ([`DataPlane::drain_tun`]).
    light: Cell<bool>,
    /// The last TUN drain stopped at a full burst.
    tun_backlog: Cell<bool>,
    /// The data-plane thread, when it reads the TUN and the socket ([`crate::dpthread`]).
    thread: RefCell<Option<crate::dpthread::Thread>>,
    /// Members the data-plane thread found a packet for but no connection: the runtime dials
    /// them (the thread spawns nothing), woken through `dialer`.
    dial_later: RefCell<Vec<PeerId>>,
    dialer: RefCell<Option<std::task::Waker>>,
}

impl DataPlane {
    /// Wraps an open TUN device.
    pub fn new(cfg: DataPlaneConfig, tun: Tun, mtu: u16) -> Rc<DataPlane> {
        let roster = Roster::new(
            cfg.me,
            (cfg.ipv4, cfg.ipv4_counter),
            cfg.ipv6,
            cfg.v4_prefix,
            cfg.v6_prefix,
            cfg.policy.clone(),
            MAX_MEMBERS,
        );
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
            members: RefCell::new(BTreeMap::new()),
            roster: RefCell::new(roster),
            local_routes: RefCell::new(Vec::new()),
            learned: RefCell::new(Exchange::new(LEARN_IN_FLIGHT, LEARN_AGAIN, MAX_MEMBERS)),
            epoch: Instant::now(),
            mesh: RefCell::new(Weak::new()),
            fast_socket: RefCell::new(None),
            gso: RefCell::new(None),
            fast_peers: RefCell::new(FastPeers::default()),
            light: Cell::new(true),
            tun_backlog: Cell::new(false),
            thread: RefCell::new(None),
            dial_later: RefCell::new(Vec::new()),
            dialer: RefCell::new(None),
        })
    }

    /// Connects the data plane to the mesh that dials members for it, and starts reading the
    /// TUN device.
    pub fn start(self: &Rc<Self>, mesh: &Rc<Mesh>) {
        *self.mesh.borrow_mut() = Rc::downgrade(mesh);
        if mesh.node().config().fast_lane {
            let gso = !mesh.node().config().plain_udp;
            if let Err(e) = self.enable_fast_lane(mesh.node(), gso) {
                log::warn!("fast lane off: cannot share the socket: {e}");
            }
        }
        if self.thread.borrow().is_none() {
            tokio::task::spawn_local(self.clone().tun_reader());
        }
        tokio::task::spawn_local(self.clone().ticker(Rc::downgrade(mesh)));
        if self.tun.index() != 0 {
            tokio::task::spawn_local(self.clone().watch_link(Rc::downgrade(mesh)));
        }
    }

    /// Puts the tunnel's routes and IPv6 address back whenever the kernel announces it up: a
    /// down/up (netifd bouncing the interface) removes both. Ends with the mesh.
    async fn watch_link(self: Rc<Self>, mesh: Weak<Mesh>) {
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
            match crate::dpthread::start(self, sink, demux.clone(), tun, node.socket().try_clone()?)
            {
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

    /// Whether a data-plane thread reads the TUN and the socket ([`crate::dpthread`]); if not,
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
            .keys()
            .filter(|p| !self.admitted(p))
            .copied()
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
        self.fast_peers.borrow_mut().forget(p);
        self.rebuild_routes();
    }

    /// Takes over the session of a freshly authenticated member connection. Returns `false`
    /// (and closes the connection) if the member is not admitted.
    pub fn add_link(self: &Rc<Self>, mut peer: Peer) -> bool {
        let Some(session) = peer.session.take() else {
            return false;
        };
        let pid = peer.peer_id;
        if !self.admitted(&pid) {
            log::warn!("{} is not on the allowlist: closing", pid.short());
            peer.conn
                .close(VarInt::from_u32(CLOSE_AUTH_FAILED), b"not on the allowlist");
            return false;
        }
        let nk = self.cfg.borrow().network_key.clone();
        let payload = match peer.record.open_payload(&nk) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("{}: unreadable record payload: {e}", pid.short());
                peer.conn
                    .close(VarInt::from_u32(CLOSE_PROTOCOL), b"bad record payload");
                return false;
            }
        };
        let precedence = peer.precedence(&self.cfg.borrow().me);
        let control_rx = peer.control_rx.take();
        let control = Rc::new(tokio::sync::Mutex::new(peer.control));
        let link = Link {
            conn: peer.conn.clone(),
            session,
            fast: None,
            max_datagram: peer.conn.max_datagram_size(),
            precedence,
            role: peer.role,
            control: control.clone(),
            since: crate::unix_now(),
        };
        let pending;
        {
            let mut members = self.members.borrow_mut();
            let known = members.contains_key(&pid);
            if !known && members.len() >= MAX_MEMBERS {
                log::warn!(
                    "member table full ({MAX_MEMBERS}): ignoring {}",
                    pid.short()
                );
                return false;
            }
            let m = members.entry(pid).or_insert_with(|| Member {
                link: None,
                counters: Counters::default(),
                last_handshake: 0,
                wait: Pending::default(),
            });
            if let Some(old) = &m.link {
                if old.conn.close_reason().is_none() && old.precedence > precedence {
                    log::debug!("{}: keeping the earlier connection", pid.short());
                    peer.conn
                        .close(VarInt::from_u32(CLOSE_REPLACED), b"replaced");
                    return false;
                }
                if old.conn.stable_id() != link.conn.stable_id() {
                    old.conn
                        .close(VarInt::from_u32(CLOSE_REPLACED), b"replaced");
                }
            }
            m.last_handshake = link.since;
            m.link = Some(link);
            pending = m.wait.linked();
            let mut roster = self.roster.borrow_mut();
            roster.record(pid, payload, peer.record.keys.ed25519, peer.record.seq);
            roster.set_endpoint(&pid, peer.conn.remote_address());
        }
        self.rebuild_routes();
        log::info!(
            "member {} up via {} ({})",
            pid.short(),
            peer.conn.remote_address(),
            match peer.role {
                Role::Dialler => "dialled",
                Role::Listener => "accepted",
            }
        );
        let conn = peer.conn.clone();
        if self.fast_lane() {
            // Accept its frames from where its connection comes from, then say so.
            self.fast_peers.borrow_mut().set(conn.remote_address(), pid);
            let control = control.clone();
            tokio::task::spawn_local(async move {
                let _ = write_msg(&mut *control.lock().await, MsgType::FastLane, &[]).await;
            });
        }
        tokio::task::spawn_local(self.clone().datagram_reader(pid, conn.clone()));
        if let Some(rx) = control_rx {
            tokio::task::spawn_local(self.clone().control_reader(pid, conn.clone(), rx));
        }
        // Tell the new member who else is in the mesh (peer exchange).
        let list = self.member_contacts(Some(&pid));
        if !list.is_empty() {
            tokio::task::spawn_local(async move {
                let mut body = Vec::new();
                emit_contact_list(&list, &mut body);
                let _ = write_msg(&mut *control.lock().await, MsgType::Peers, &body).await;
            });
        }
        for p in pending {
            self.send_packet(&pid, &p);
        }
        true
    }

    /// Contacts of the members we hold live links with, except `except`.
    fn member_contacts(&self, except: Option<&PeerId>) -> Vec<Contact> {
        let roster = self.roster.borrow();
        self.members
            .borrow()
            .iter()
            .filter(|(p, m)| Some(*p) != except && m.link.is_some())
            .filter_map(|(p, _)| {
                let e = roster.get(p)?;
                Some(Contact {
                    id: *p,
                    ed25519: e.ed25519,
                    addr: e.endpoint?,
                })
            })
            .take(PEERS_MAX)
            .collect()
    }

    /// Judges every member's overlay addresses and LAN routes again ([`Roster::judge`]) and
    /// carries out what that asks for: log new refusals, move our address, install and
    /// withdraw kernel routes. Runs when a member arrives, leaves or changes its record, and on
    /// reload: never per packet.
    fn rebuild_routes(&self) {
        let local = self.read_local_routes();
        let outputs: Vec<Output> = {
            let mut roster = self.roster.borrow_mut();
            roster.judge(local);
            std::iter::from_fn(|| roster.poll_output()).collect()
        };
        for o in outputs {
            match o {
                Output::Refused(pid, p, why) => log::warn!("{}: {p} refused: {why}", pid.short()),
                Output::Readdress { from, to, counter } => self.readdress(from, to, counter),
                Output::InstallRoute(p, owner) => match self.tun.add_route(&p) {
                    Ok(()) => log::info!("route {p} via {} on {}", owner.short(), self.tun.name()),
                    Err(e) => log::warn!("adding route {p}: {e}"),
                },
                Output::WithdrawRoute(p) => {
                    if let Err(e) = self.tun.del_route(&p) {
                        log::warn!("removing route {p}: {e}");
                    }
                }
            }
        }
    }

    /// The host's routes other than ours (see [`netlink::local_routes`]); the last good read if
    /// this one fails.
    fn read_local_routes(&self) -> Vec<Prefix> {
        match crate::netlink::local_routes(self.tun.index()) {
            Ok(v) => *self.local_routes.borrow_mut() = v,
            Err(e) => log::warn!("reading the host's routes: {e} (using the last read)"),
        }
        self.local_routes.borrow().clone()
    }

    /// Moves our overlay IPv4 to `(addr, counter)` (the collision rule gave our address to a
    /// lower PeerId, or gave it back): the TUN's address, the record we present and publish, and
    /// every member's copy of it.
    fn readdress(&self, old: Ipv4Addr, addr: Ipv4Addr, counter: u32) {
        log::warn!(
            "overlay address {old} belongs to a lower PeerId: moving to {addr} (rehash {counter})"
        );
        if let Err(e) = self.tun.set_ipv4(old, addr) {
            log::error!("moving the tunnel's address to {addr}: {e}");
        }
        let Some(mesh) = self.mesh.borrow().upgrade() else {
            return;
        };
        let node = mesh.node();
        let mut p = node.payload();
        p.ipv4 = Some(addr);
        p.ipv4_counter = counter;
        node.set_payload(p);
        match node.refresh_record() {
            Ok(rec) => {
                self.announce_record(&rec);
                tokio::task::spawn_local(async move {
                    if let Err(code) = mesh.publish(rec).await {
                        log::error!("our own record was refused: {code:?}");
                    }
                });
            }
            Err(e) => log::error!("re-signing our record failed: {e}"),
        }
    }

    /// A fresh arena for outgoing frames (see [`DataPlane::push_packet`]).
    pub fn arena() -> Arena {
        Arena::new()
    }

    fn slot(&self) -> usize {
        FRAME_OVERHEAD + (self.mtu as usize).min(MAX_PACKET)
    }

    /// Forwards one packet as if it had been read from the TUN (what the TUN reader does after
    /// its read). For tests of the forwarding path.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn push_packet(&self, arena: &mut Arena, batch: &mut Batch, packet: &[u8]) {
        let _ours = alloc_probe::Ours::enter();
        let slot = self.slot();
        let arena = arena.prepare(slot);
        let n = packet.len().min(slot - FRAME_OVERHEAD);
        arena[FRAME_HEADER_LEN..FRAME_HEADER_LEN + n].copy_from_slice(&packet[..n]);
        arena.truncate(FRAME_OVERHEAD + n);
        self.forward(arena, batch);
    }

    /// Sends what `batch` holds (tests call it after [`DataPlane::push_packet`]s).
    #[doc(hidden)]
    pub fn flush(&self, batch: &mut Batch) {
        if batch.count == 0 {
            return;
        }
        let Some((to, pid)) = batch.to else {
            return;
        };
        let sent = match (
            self.fast_socket.borrow().as_ref(),
            self.gso.borrow().as_ref(),
        ) {
            (Some(s), Some(state)) if batch.count > 1 => state
                .send(
                    s.into(),
                    &quinn::udp::Transmit {
                        destination: to,
                        ecn: None,
                        contents: &batch.buf,
                        segment_size: Some(batch.seg),
                        src_ip: None,
                    },
                )
                .is_ok(),
            (Some(s), _) => s.send_to(&batch.buf, to).is_ok(),
            (None, _) => false,
        };
        if let Some(m) = self.members.borrow_mut().get_mut(&pid) {
            if sent {
                m.counters.tx_packets += batch.count as u64;
                m.counters.tx_bytes += batch.bytes;
            } else {
                // A full socket buffer drops, as a router queue would.
                m.counters.tx_dropped += batch.count as u64;
            }
        }
        batch.buf.clear();
        batch.count = 0;
        batch.bytes = 0;
        batch.closed = false;
        batch.to = None;
    }

    /// Adds a sealed frame for `pid` at `to` to `batch`, sending what it held first if the
    /// frame cannot join it.
    fn batch_push(&self, batch: &mut Batch, pid: PeerId, to: SocketAddr, frame: &[u8], n: usize) {
        let max_segments = self
            .gso
            .borrow()
            .as_ref()
            .map_or(1, |g| g.max_gso_segments().min(BURST));
        if batch.count > 0
            && (batch.to != Some((to, pid))
                || batch.closed
                || frame.len() > batch.seg
                || batch.count >= max_segments
                || batch.buf.len() + frame.len() > BATCH_BYTES)
        {
            self.flush(batch);
        }
        if batch.count == 0 {
            batch.to = Some((to, pid));
            batch.seg = frame.len();
        } else if frame.len() < batch.seg {
            batch.closed = true;
        }
        batch.buf.extend_from_slice(frame);
        batch.count += 1;
        batch.bytes += n as u64;
        if max_segments == 1 {
            self.flush(batch);
        }
    }

    /// Reads packets from the TUN and forwards them: waits until the device is readable, then
    /// drains it ([`DataPlane::drain_tun`]).
    async fn tun_reader(self: Rc<Self>) {
        loop {
            let mut drained = true;
            let r = std::future::poll_fn(|cx| {
                self.tun.poll_drain(cx, || {
                    drained = self.drain_tun();
                    drained
                })
            })
            .await;
            if let Err(e) = r {
                log::error!("reading {}: {e}", self.tun.name());
                tokio::time::sleep(Duration::from_millis(100)).await;
            } else if !drained {
                // A full burst: let the other tasks run before the next one.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Reads what the TUN holds, up to [`BURST`] reads, forwards every packet and sends the
    /// burst. Returns whether it read until `WouldBlock`. Also called at the end of each
    /// fast-lane receive batch: a reply the kernel produced while we wrote (an echo, a TCP ACK)
    /// then leaves at once, without waiting for the TUN reader's next wake-up.
    pub(crate) fn drain_tun(&self) -> bool {
        let Ok(mut st) = self.reader.try_borrow_mut() else {
            return false;
        };
        let ReaderState { arenas, batch, rx } = &mut *st;
        let _ours = alloc_probe::Ours::enter();
        let slot = self.slot();
        let vnet = self.tun.vnet();
        let mut drained = false;
        let mut failed = false;
        let mut reads = 0;
        for _ in 0..BURST {
            if reads == 1 && self.light.get() {
                // Light traffic (the last drain found at most one packet): what was read
                // leaves now rather than after the read that finds the device empty; a
                // request's reply is waiting for it. Under load the burst batches as before.
                self.flush(batch);
            }
            reads += 1;
            if vnet {
                match self.tun.try_recv(rx) {
                    Ok(n) => {
                        self.forward_offloaded(&mut rx[..n], arenas, batch, slot);
                    }
                    Err(e) => {
                        drained = e.kind() == std::io::ErrorKind::WouldBlock;
                        failed = !drained;
                        break;
                    }
                }
            } else {
                let arena = arenas.prepare(slot);
                match self
                    .tun
                    .try_recv(&mut arena[FRAME_HEADER_LEN..slot - AEAD_TAG_LEN])
                {
                    Ok(n) => {
                        arena.truncate(FRAME_OVERHEAD + n);
                        self.forward(arena, batch);
                    }
                    Err(e) => {
                        drained = e.kind() == std::io::ErrorKind::WouldBlock;
                        failed = !drained;
                        break;
                    }
                }
            }
        }
        self.flush(batch);
        // `reads` counts the read that found the device empty.
        self.light.set(reads <= 2);
        // A full burst, not a failed read: the data-plane thread carries on only after the
        // first (a device that fails waits for its next readiness rather than spinning).
        self.tun_backlog.set(!drained && !failed);
        drained
    }

    /// One read of an offloading TUN: header and packet in `rx`. Returns whether it was a TCP
    /// super-packet (cut into segments).
    fn forward_offloaded(
        &self,
        rx: &mut [u8],
        arenas: &mut Arena,
        batch: &mut Batch,
        slot: usize,
    ) -> bool {
        let Ok(h) = VnetHdr::parse(rx) else {
            return false;
        };
        let pkt = &mut rx[VNET_HDR_LEN..];
        let room = slot - FRAME_OVERHEAD;
        if h.gso_type == GSO_NONE {
            if h.flags & F_NEEDS_CSUM != 0
                && complete_csum(pkt, h.csum_start, h.csum_offset).is_err()
            {
                return false;
            }
            if pkt.len() > room {
                return false;
            }
            let arena = arenas.prepare(slot);
            arena[FRAME_HEADER_LEN..FRAME_HEADER_LEN + pkt.len()].copy_from_slice(pkt);
            arena.truncate(FRAME_OVERHEAD + pkt.len());
            self.forward(arena, batch);
            return false;
        }
        let Ok(g) = TcpGso::new(&h, pkt) else {
            log::debug!(
                "unexpected offloaded packet (gso type {}): dropped",
                h.gso_type
            );
            return false;
        };
        if g.max_segment() > room || g.count() > MAX_SEGMENTS {
            return false;
        }
        for i in 0..g.count() {
            let arena = arenas.prepare(slot);
            match g.write(pkt, i, &mut arena[FRAME_HEADER_LEN..slot - AEAD_TAG_LEN]) {
                Ok(n) => {
                    arena.truncate(FRAME_OVERHEAD + n);
                    self.forward(arena, batch);
                }
                Err(_) => return true,
            }
        }
        true
    }

    /// Forwards the packet in `frame[FRAME_HEADER_LEN..len - AEAD_TAG_LEN]`. `frame` is cut off
    /// the arena when it is handed to quinn.
    fn forward(&self, frame: &mut BytesMut, batch: &mut Batch) {
        let packet = &frame[FRAME_HEADER_LEN..frame.len() - AEAD_TAG_LEN];
        let Ok(a) = route::addrs(packet) else {
            return;
        };
        let Some(pid) = self.roster.borrow().lookup(a.dst) else {
            // Not ours to carry (the kernel routed it here through the /16 or /48): drop.
            return;
        };
        let n = packet.len();
        let mut members = self.members.borrow_mut();
        let Some(m) = members.get_mut(&pid) else {
            return;
        };
        let Some(link) = m.link.as_mut() else {
            // No connection: queue and dial.
            let held = m.wait.hold(packet, PENDING_MAX);
            if !held.queued {
                m.counters.tx_dropped += 1;
            }
            let dial = held.dial;
            drop(members);
            if dial {
                if crate::dpthread::on_data_thread() {
                    self.dial_later.borrow_mut().push(pid);
                    if let Some(w) = self.dialer.borrow_mut().take() {
                        w.wake();
                    }
                } else {
                    self.dial(pid, false);
                }
            }
            return;
        };
        if let Some(to) = link.fast {
            // Fast lane: sealed in place and copied into the burst's GSO buffer; the arena
            // slot is reused by the next packet.
            if link
                .session
                .seal(Instant::now(), FrameType::Data, &mut frame[..])
                .is_err()
            {
                m.counters.tx_dropped += 1;
                return;
            }
            drop(members);
            self.batch_push(batch, pid, to, &frame[..], n);
            return;
        }
        if let Some(max) = link.max_datagram {
            if n + FRAME_OVERHEAD > max {
                let limit = (max - FRAME_OVERHEAD) as u16;
                drop(members);
                self.too_big(&frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + n], limit);
                return;
            }
        }
        if link
            .session
            .seal(Instant::now(), FrameType::Data, &mut frame[..])
            .is_err()
        {
            m.counters.tx_dropped += 1;
            return;
        }
        let frame = frame.split().freeze();
        let sent = {
            let _quinn = alloc_probe::Quinn::enter();
            link.conn.send_datagram(frame)
        };
        match sent {
            Ok(()) => {
                m.counters.tx_packets += 1;
                m.counters.tx_bytes += n as u64;
            }
            Err(quinn::SendDatagramError::ConnectionLost(_)) => {
                // Closed under us: the next packet dials again.
                m.link = None;
                m.counters.tx_dropped += 1;
            }
            Err(_) => m.counters.tx_dropped += 1,
        }
    }

    /// Sends one packet from outside the TUN path (queued packets after a dial).
    fn send_packet(&self, pid: &PeerId, packet: &[u8]) {
        let mut frame = BytesMut::zeroed(packet.len() + FRAME_OVERHEAD);
        frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + packet.len()].copy_from_slice(packet);
        let mut members = self.members.borrow_mut();
        let Some(link) = members.get_mut(pid).and_then(|m| m.link.as_mut()) else {
            return;
        };
        if link
            .session
            .seal(Instant::now(), FrameType::Data, &mut frame[..])
            .is_ok()
        {
            let _ = link.conn.send_datagram(frame.freeze());
        }
    }

    /// Answers a packet that does not fit the path with ICMP "packet too big".
    fn too_big(&self, packet: &[u8], mtu: u16) {
        let (v4, _, v6) = self.addresses();
        let from = match (packet.first().map(|b| b >> 4), v6) {
            (Some(6), Some(v6)) => IpAddr::V6(v6),
            _ => IpAddr::V4(v4),
        };
        let mut out = [0u8; 1280];
        if let Some(n) = route::icmp_too_big(packet, mtu, from, &mut out) {
            let _ = self.tun.try_send(&out[..n]);
        }
    }

    /// Dials member `pid` at the addresses its record gives (and where we last reached it).
    fn dial(&self, pid: PeerId, fresh: bool) {
        let Some(mesh) = self.mesh.borrow().upgrade() else {
            return;
        };
        let (addrs, ed) = {
            let roster = self.roster.borrow();
            let Some(m) = roster.get(&pid) else { return };
            let mut a: Vec<SocketAddr> = m.endpoint.into_iter().collect();
            a.extend(m.payload.addrs.iter().filter(|x| Some(**x) != m.endpoint));
            (a, m.ed25519)
        };
        let weak = self.mesh.borrow().clone();
        tokio::task::spawn_local(async move {
            let mut ok = false;
            for addr in addrs {
                let c = Contact {
                    id: pid,
                    ed25519: ed,
                    addr,
                };
                let r = if fresh {
                    mesh.dial_new(c).await
                } else {
                    mesh.connection(c).await
                };
                if r.is_ok() {
                    ok = true;
                    break;
                }
            }
            // Whatever happened, a member left without a live link is not "being dialled" any
            // more: the next packet may try again. (A dial can succeed without a new link when
            // an earlier connection won, or the peer turned out not to be a member.)
            if let Some(dp) = weak.upgrade().and_then(|m| m.dataplane()) {
                let mut members = dp.members.borrow_mut();
                if let Some(m) = members.get_mut(&pid) {
                    if m.link
                        .as_ref()
                        .is_none_or(|l| l.conn.close_reason().is_some())
                    {
                        m.counters.tx_dropped += m.wait.failed() as u64;
                    }
                }
            }
            if !ok {
                log::info!("could not reach member {}", pid.short());
            }
        });
    }

    /// Receives `pid`'s datagrams on `conn` and delivers them to the TUN.
    async fn datagram_reader(self: Rc<Self>, pid: PeerId, conn: Connection) {
        while let Ok(d) = conn.read_datagram().await {
            let _ours = alloc_probe::Ours::enter();
            self.deliver(&pid, conn.stable_id(), &d);
            let _quinn = alloc_probe::Quinn::enter();
            drop(d);
        }
        self.link_closed(&pid, &conn);
    }

    /// Opens one datagram from `pid` and writes its packet to the TUN.
    fn deliver(&self, pid: &PeerId, conn_id: usize, d: &[u8]) {
        let mut members = self.members.borrow_mut();
        let Some(m) = members.get_mut(pid) else {
            return;
        };
        if m.link
            .as_ref()
            .is_none_or(|l| l.conn.stable_id() != conn_id)
        {
            return;
        }
        let mut scratch = self.scratch.borrow_mut();
        if d.len() > scratch.len() {
            m.counters.rx_invalid += 1;
            return;
        }
        let buf = &mut scratch[..d.len()];
        buf.copy_from_slice(d);
        self.open_deliver(pid, m, buf, None);
    }

    /// A fast-lane frame from `from`, opened in place where the socket put it.
    pub fn deliver_fast(&self, from: SocketAddr, frame: &mut [u8]) {
        let _ours = alloc_probe::Ours::enter();
        let Some(pid) = self.fast_peers.borrow_mut().get(from) else {
            log::trace!("fast-lane frame from {from}, which is no member's path: dropped");
            return;
        };
        let mut members = self.members.borrow_mut();
        if let Some(m) = members.get_mut(&pid) {
            self.open_deliver(&pid, m, frame, Some(from));
        }
    }

    /// Writes what the coalescer holds.
    pub fn flush_gro(&self) {
        if let Some(g) = self.gro.borrow_mut().as_mut() {
            if let Some(w) = g.take() {
                let _ = self.tun.try_send(w);
            }
        }
    }

    /// Opens `buf`, a frame from member `pid` (replay window, tag), checks that the packet's
    /// source is the member's, and writes it to the TUN.
    /// `fast`: the address a fast-lane frame came from; more frames of the same receive batch
    /// may follow, so TCP segments may wait in the coalescer until [`DataPlane::flush_gro`].
    /// A frame that authenticates from another address than the member's fast-lane one moves
    /// our frames there (a path changes only on an authenticated, unreplayed frame).
    fn open_deliver(&self, pid: &PeerId, m: &mut Member, buf: &mut [u8], fast: Option<SocketAddr>) {
        let batched = fast.is_some();
        let Some(link) = m.link.as_mut() else {
            return;
        };
        let opened = link.session.open(Instant::now(), buf);
        if opened.is_ok() {
            match (fast, link.fast) {
                (Some(from), Some(to)) if from != to => {
                    log::debug!("{}: fast lane moves to {from}", pid.short());
                    link.fast = Some(from);
                    self.fast_peers.borrow_mut().set(from, *pid);
                }
                (None, Some(to)) => {
                    // A QUIC datagram from a member on the fast lane (a keepalive): if quinn
                    // now sees it elsewhere, hear fast-lane frames from there too.
                    let at = link.conn.remote_address();
                    let mut fp = self.fast_peers.borrow_mut();
                    if at != to && fp.get(at) != Some(*pid) {
                        fp.candidate(at, *pid, Some(to));
                    }
                }
                _ => {}
            }
        }
        let n = match opened {
            Ok((FrameType::Data, plain)) => plain.len(),
            Ok(_) => return,
            Err(_) => {
                m.counters.rx_invalid += 1;
                return;
            }
        };
        // The plaintext is `buf[FRAME_HEADER_LEN..][..n]`; the header before it is free for
        // the TUN's virtio_net_hdr.
        let packet = &buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + n];
        let Ok(a) = route::addrs(packet) else {
            m.counters.rx_invalid += 1;
            return;
        };
        if self.roster.borrow().lookup(a.src) != Some(*pid) {
            m.counters.rx_spoofed += 1;
            log::debug!(
                "{}: dropped a packet from {} (not theirs)",
                pid.short(),
                a.src
            );
            return;
        }
        m.counters.rx_packets += 1;
        m.counters.rx_bytes += n as u64;
        if let Some(g) = self.gro.borrow_mut().as_mut() {
            if batched && g.push(packet) {
                return;
            }
            if let Some(w) = g.take() {
                let _ = self.tun.try_send(w);
            }
            if batched && g.push(packet) {
                return;
            }
        }
        let _ = self
            .tun
            .try_send_at(&mut buf[..FRAME_HEADER_LEN + n], FRAME_HEADER_LEN);
    }

    fn link_closed(&self, pid: &PeerId, conn: &Connection) {
        let mut members = self.members.borrow_mut();
        if let Some(m) = members.get_mut(pid) {
            if m.link
                .as_ref()
                .is_some_and(|l| l.conn.stable_id() == conn.stable_id())
            {
                m.link = None;
                self.fast_peers.borrow_mut().forget(pid);
                log::info!(
                    "member {} down: {}",
                    pid.short(),
                    conn.close_reason()
                        .map(|r| r.to_string())
                        .unwrap_or_default()
                );
            }
        }
    }

    /// Reads `pid`'s control messages after the handshake: rekeys and peer exchange.
    async fn control_reader(self: Rc<Self>, pid: PeerId, conn: Connection, mut rx: RecvStream) {
        let mut buf = Vec::new();
        while let Ok(t) = read_msg(&mut rx, &mut buf).await {
            match t {
                MsgType::RekeyInit => {
                    let resp = {
                        let mut members = self.members.borrow_mut();
                        members
                            .get_mut(&pid)
                            .and_then(|m| m.link.as_mut())
                            .filter(|l| l.conn.stable_id() == conn.stable_id())
                            .map(|l| {
                                (
                                    l.session.handle_rekey_init(Instant::now(), &buf),
                                    l.control.clone(),
                                )
                            })
                    };
                    match resp {
                        Some((Ok(body), control)) => {
                            let _ =
                                write_msg(&mut *control.lock().await, MsgType::RekeyResp, &body)
                                    .await;
                        }
                        Some((Err(e), _)) => {
                            log::warn!("{}: bad rekey: {e}", pid.short());
                            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"bad rekey");
                        }
                        None => {}
                    }
                }
                MsgType::RekeyResp => {
                    let mut members = self.members.borrow_mut();
                    if let Some(l) = members
                        .get_mut(&pid)
                        .and_then(|m| m.link.as_mut())
                        .filter(|l| l.conn.stable_id() == conn.stable_id())
                    {
                        if let Err(e) = l.session.handle_rekey_resp(Instant::now(), &buf) {
                            log::warn!("{}: bad rekey answer: {e}", pid.short());
                        }
                    }
                }
                MsgType::Record => self.update_record(&pid, &buf),
                MsgType::FastLane if self.fast_lane() => {
                    let mut members = self.members.borrow_mut();
                    if let Some(l) = members
                        .get_mut(&pid)
                        .and_then(|m| m.link.as_mut())
                        .filter(|l| l.conn.stable_id() == conn.stable_id())
                    {
                        l.fast = Some(l.conn.remote_address());
                        log::debug!("{}: data frames on the fast lane", pid.short());
                    }
                }
                MsgType::Peers => match parse_contact_list(&buf, PEERS_MAX) {
                    Ok(list) => self.learn(list),
                    Err(e) => log::debug!("{}: bad peer list: {e}", pid.short()),
                },
                _ => {
                    log::debug!("{}: unexpected control message {t:?}", pid.short());
                }
            }
        }
    }

    /// A member sent its newly signed record: check it and take its routes.
    fn update_record(&self, pid: &PeerId, bytes: &[u8]) {
        let nk = self.cfg.borrow().network_key.clone();
        let checked = shadowmesh_crypto::record::verify_record(bytes, crate::unix_now())
            .and_then(|r| Ok((r.peer_id(), r.seq, r.open_payload(&nk)?)));
        match checked {
            Ok((owner, seq, payload)) if owner == *pid => {
                let replaced = {
                    let mut roster = self.roster.borrow_mut();
                    let Some(ed) = roster.get(pid).map(|e| e.ed25519) else {
                        return;
                    };
                    roster.record(*pid, payload, ed, seq) == Update::Replaced
                };
                if !replaced {
                    return;
                }
                log::info!("{} updated its record (seq {seq})", pid.short());
                self.rebuild_routes();
            }
            Ok(_) => log::warn!("{} sent another node's record", pid.short()),
            Err(e) => log::warn!("{} sent a bad record: {e}", pid.short()),
        }
    }

    /// Sends our new record to every connected member.
    pub fn announce_record(&self, record: &[u8]) {
        let controls: Vec<_> = self
            .members
            .borrow()
            .values()
            .filter_map(|m| m.link.as_ref().map(|l| l.control.clone()))
            .collect();
        for c in controls {
            let body = record.to_vec();
            tokio::task::spawn_local(async move {
                let _ = write_msg(&mut *c.lock().await, MsgType::Record, &body).await;
            });
        }
    }

    /// Dials the members a peer told us about that we are not connected to: each PeerId at
    /// most once per [`LEARN_AGAIN`], at most [`LEARN_IN_FLIGHT`] at a time, so a member's
    /// `Peers` messages cannot make us dial in bulk (the addresses themselves are checked where
    /// every dial passes, [`Mesh::dial_new`]).
    fn learn(self: &Rc<Self>, list: Vec<Contact>) {
        let Some(mesh) = self.mesh.borrow().upgrade() else {
            return;
        };
        let me = self.cfg.borrow().me;
        let now = self.epoch.elapsed();
        for c in list {
            let known = self
                .members
                .borrow()
                .get(&c.id)
                .is_some_and(|m| m.link.is_some() || m.wait.dialling());
            if c.id == me || known || !self.admitted(&c.id) {
                continue;
            }
            // Bound first: the scrutinee's borrow would last through the arms.
            let verdict = self.learned.borrow_mut().offer(now, c.id);
            match verdict {
                Verdict::Dial => {}
                Verdict::Recent => continue,
                Verdict::Busy => {
                    let n = self.learned.borrow().in_flight();
                    log::debug!("peer exchange: busy ({n} dials in flight), the rest wait");
                    return;
                }
            }
            let (mesh, dp) = (mesh.clone(), self.clone());
            tokio::task::spawn_local(async move {
                if let Err(e) = mesh.connection(c).await {
                    log::debug!("peer exchange: could not reach {}: {e}", c.id.short());
                }
                dp.learned.borrow_mut().finished();
            });
        }
    }

    /// Sends `l` a keepalive: on the fast lane when it takes frames there (so that it also
    /// proves our path to it), in a QUIC datagram otherwise.
    fn keepalive(&self, l: &mut Link, now: Instant) {
        let mut f = [0u8; FRAME_OVERHEAD];
        if l.session.seal(now, FrameType::Keepalive, &mut f).is_err() {
            return;
        }
        match (l.fast, self.fast_socket.borrow().as_ref()) {
            (Some(to), Some(s)) => {
                let _ = s.send_to(&f, to);
            }
            _ => {
                let _ = l.conn.send_datagram(bytes::Bytes::copy_from_slice(&f));
            }
        }
    }

    /// Our addresses changed: tells every member at once, so that they move their fast lane
    /// to our new address without waiting for traffic. First a keepalive in a QUIC datagram
    /// (quinn moves the connection; the authenticated frame makes its new address a
    /// candidate, see `open_deliver`), then one on the fast lane, which proves the path.
    pub fn keepalive_all(self: &Rc<Self>) {
        let now = Instant::now();
        for m in self.members.borrow_mut().values_mut() {
            if let Some(l) = m.link.as_mut().filter(|l| l.conn.close_reason().is_none()) {
                let mut f = [0u8; FRAME_OVERHEAD];
                if l.session.seal(now, FrameType::Keepalive, &mut f).is_ok() {
                    let _ = l.conn.send_datagram(bytes::Bytes::copy_from_slice(&f));
                }
            }
        }
        let dp = self.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = Instant::now();
            for m in dp.members.borrow_mut().values_mut() {
                if let Some(l) = m.link.as_mut().filter(|l| l.fast.is_some()) {
                    dp.keepalive(l, now);
                }
            }
        });
    }

    /// Keepalives and rekeys for every link, on one timer: a task and an interval per link
    /// cost memory at a thousand members for a check that takes microseconds. Ends with the
    /// mesh.
    async fn ticker(self: Rc<Self>, mesh: Weak<Mesh>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if mesh.strong_count() == 0 {
                return;
            }
            let now = Instant::now();
            let fast = self.fast_lane();
            let mut rekeys = vec![];
            for (pid, m) in self.members.borrow_mut().iter_mut() {
                let Some(l) = m.link.as_mut().filter(|l| l.conn.close_reason().is_none()) else {
                    continue;
                };
                // Per-packet code reads these instead of taking quinn's lock.
                l.max_datagram = l.conn.max_datagram_size();
                if fast {
                    // quinn moves a connection to where its packets come from before it has
                    // validated the path: one replayed packet from a victim's address would
                    // move it there. Frames from there are accepted (each is authenticated);
                    // ours follow only once one has arrived (`open_deliver`).
                    let at = l.conn.remote_address();
                    let mut fp = self.fast_peers.borrow_mut();
                    if fp.get(at) != Some(*pid) {
                        fp.candidate(at, *pid, l.fast);
                    }
                }
                if l.session.needs_keepalive(now) {
                    self.keepalive(l, now);
                }
                if l.session.needs_rekey(now) {
                    rekeys.push((*pid, l.control.clone(), l.session.start_rekey()));
                }
            }
            for (pid, control, body) in rekeys {
                log::debug!("{}: rekeying", pid.short());
                tokio::task::spawn_local(async move {
                    let _ = write_msg(&mut *control.lock().await, MsgType::RekeyInit, &body).await;
                });
            }
        }
    }

    /// Every member, for `shadowmesh peers`.
    pub fn members(&self) -> Vec<MemberInfo> {
        let roster = self.roster.borrow();
        self.members
            .borrow()
            .iter()
            .filter_map(|(p, m)| Some((p, m, roster.get(p)?)))
            .map(|(p, m, e)| {
                let live = m.link.as_ref().filter(|l| l.conn.close_reason().is_none());
                MemberInfo {
                    peer_id: *p,
                    ipv4: e.payload.ipv4,
                    ipv4_counter: e.payload.ipv4_counter,
                    ipv6: e.payload.ipv6,
                    routes_accepted: e.judged().accepted.clone(),
                    routes_refused: e.judged().refused.clone(),
                    record_seq: e.seq,
                    routes: e
                        .payload
                        .routes
                        .iter()
                        .filter_map(|r| Prefix::new(r.addr, r.prefix_len))
                        .collect(),
                    endpoint: live.map(|l| l.conn.remote_address()).or(e.endpoint),
                    connected: live.is_some(),
                    rtt: live.map(|l| l.conn.rtt()),
                    counters: m.counters,
                    last_handshake: m.last_handshake,
                    rekeys: live.map(|l| l.session.epoch()).unwrap_or(0),
                    role: match live.map(|l| l.role) {
                        Some(Role::Dialler) => "dialled",
                        Some(Role::Listener) => "accepted",
                        None => "",
                    },
                    connection_id: live.map(|l| l.conn.stable_id() as u64).unwrap_or(0),
                    lane: match live.map(|l| l.fast.is_some()) {
                        Some(true) => "udp",
                        Some(false) => "quic",
                        None => "",
                    },
                }
            })
            .collect()
    }

    /// Members with a live session.
    pub fn connected(&self) -> usize {
        self.members
            .borrow()
            .values()
            .filter(|m| {
                m.link
                    .as_ref()
                    .is_some_and(|l| l.conn.close_reason().is_none())
            })
            .count()
    }

    /// Our overlay addresses, and the rehash counter of the IPv4 one.
    pub fn addresses(&self) -> (Ipv4Addr, u32, Option<Ipv6Addr>) {
        self.roster.borrow().addresses()
    }

    /// Re-dials the members whose connections we accepted (after our address changed: a QUIC
    /// server cannot migrate, so those connections are dead ends now). Connections we dialled
    /// migrate by themselves after `Endpoint::rebind`.
    pub fn redial_accepted(self: &Rc<Self>) {
        let accepted: Vec<PeerId> = self
            .members
            .borrow()
            .iter()
            .filter(|(_, m)| m.link.as_ref().is_some_and(|l| l.role == Role::Listener))
            .map(|(p, _)| *p)
            .collect();
        for p in accepted {
            if let Some(m) = self.members.borrow_mut().get_mut(&p) {
                m.wait.dialling_now();
            }
            self.dial(p, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The remembered answer never outlives the mapping it came from.
    #[test]
    fn fast_peers_forget_what_they_remembered() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.0.0.1:4433".parse().unwrap(),
            "10.0.0.2:4433".parse().unwrap(),
        );
        let (p, q) = (PeerId([1; 32]), PeerId([2; 32]));
        let mut fp = FastPeers::default();
        assert_eq!(fp.get(a), None);
        fp.set(a, p);
        fp.set(b, q);
        assert_eq!(fp.get(a), Some(p));
        assert_eq!(fp.get(a), Some(p), "the remembered answer");
        assert_eq!(fp.get(b), Some(q));
        // p moves to a new address: a is nobody's now, even though it was the last answer.
        let c: SocketAddr = "10.0.0.3:5000".parse().unwrap();
        fp.get(a);
        fp.set(c, p);
        assert_eq!(fp.get(a), None);
        assert_eq!(fp.get(c), Some(p));
        fp.forget(&p);
        assert_eq!(fp.get(c), None);
        assert_eq!(fp.get(b), Some(q));
    }

    #[test]
    fn a_candidate_path_is_heard_beside_the_proven_one() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let p = PeerId([1; 32]);
        let mut fp = FastPeers::default();
        fp.set(at("10.0.0.1:4433"), p);
        // quinn now sees p at a new address: both are heard until a frame proves the new one.
        fp.candidate(at("10.0.0.9:4433"), p, Some(at("10.0.0.1:4433")));
        assert_eq!(fp.get(at("10.0.0.1:4433")), Some(p));
        assert_eq!(fp.get(at("10.0.0.9:4433")), Some(p));
        // Another candidate replaces the first, never the proven address.
        fp.candidate(at("10.0.0.7:4433"), p, Some(at("10.0.0.1:4433")));
        assert_eq!(fp.get(at("10.0.0.9:4433")), None);
        assert_eq!(fp.get(at("10.0.0.1:4433")), Some(p));
        // Proven: only the new address is heard.
        fp.set(at("10.0.0.7:4433"), p);
        assert_eq!(fp.get(at("10.0.0.1:4433")), None);
        assert_eq!(fp.get(at("10.0.0.7:4433")), Some(p));
    }
}
