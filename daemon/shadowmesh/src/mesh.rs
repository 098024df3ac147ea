//! The DHT's I/O layer: the sans-IO engine ([`Dht`]) driven over QUIC.
//!
//! Every authenticated connection (dialled or accepted, member or DHT-only) carries DHT RPCs:
//! after the control stream, each further bidirectional stream is one request and its answer,
//! each framed as `length u32 || message` (bounded by [`DHT_MAX_MSG`]). A request to a peer we
//! hold no connection to dials it first (pinning its Ed25519 key when the contact carries one).
//! The engine owns all protocol state; this layer only moves bytes and time, on one thread
//! (tokio `current_thread` + `LocalSet`), so the engine needs no locks.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::quic::{Connection, RecvStream, SendStream};
use shadowmesh_crypto::record::DhtRecordCheck;
use shadowmesh_proto::consts::{CLOSE_BUSY, CLOSE_IDLE, CLOSE_REPLACED, RECORD_MAX_ADDRS};
use shadowmesh_proto::dht::node::{Dht, LookupId, LookupOutcome, Output, RequestId};
use shadowmesh_proto::dht::observed::NatClass;
use shadowmesh_proto::dht::wire::{Contact, Request, Response, StoreCode, DHT_MAX_MSG};
use shadowmesh_proto::dht::REQUEST_TIMEOUT;
use shadowmesh_proto::PeerId;
use tokio::sync::{oneshot, Notify};

use crate::dataplane::DataPlane;
use crate::node::{HandshakeError, Node, Peer};

/// A record as the DHT engine holds it: shared, immutable bytes.
pub type Rec = Arc<[u8]>;

/// Why an RPC failed.
#[derive(Debug)]
pub enum RpcError {
    /// Could not reach or authenticate the peer.
    Handshake(HandshakeError),
    /// The stream failed.
    Stream(&'static str),
    /// The answer was too large or malformed.
    Malformed,
    /// No answer in time.
    Timeout,
    /// An address we never dial (unspecified, loopback, multicast, broadcast, port 0).
    Undialable(std::net::SocketAddr),
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcError::Handshake(e) => write!(f, "{e}"),
            RpcError::Stream(w) => write!(f, "stream: {w}"),
            RpcError::Malformed => f.write_str("malformed message"),
            RpcError::Timeout => f.write_str("timed out"),
            RpcError::Undialable(a) => write!(f, "{a} is not an address we dial"),
        }
    }
}

/// Writes one length-prefixed message.
pub async fn write_frame(send: &mut SendStream, msg: &[u8]) -> Result<(), RpcError> {
    let mut out = Vec::with_capacity(4 + msg.len());
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    send.write_all(&out)
        .await
        .map_err(|_| RpcError::Stream("write"))
}

/// How much of an announced message is allocated ahead of the bytes that fill it: a peer that
/// announces 64 KiB and sends nothing holds 4 KiB, not 64.
const READ_STEP: usize = 4096;

/// Reads one length-prefixed message of at most `max` bytes, allocating as the bytes arrive.
pub async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Vec<u8>, RpcError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len)
        .await
        .map_err(|_| RpcError::Stream("read"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(RpcError::Malformed);
    }
    let mut buf = Vec::new();
    while buf.len() < len {
        let start = buf.len();
        buf.resize(start + (len - start).min(READ_STEP), 0);
        recv.read_exact(&mut buf[start..])
            .await
            .map_err(|_| RpcError::Stream("read"))?;
    }
    Ok(buf)
}

/// One request and its answer on a new stream of `conn`.
pub async fn rpc(conn: &Connection, req: &[u8]) -> Result<Vec<u8>, RpcError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|_| RpcError::Stream("open"))?;
    write_frame(&mut send, req).await?;
    let _ = send.finish();
    read_frame(&mut recv, DHT_MAX_MSG).await
}

fn owned_request(r: Request<&[u8]>) -> Request<Rec> {
    match r {
        Request::Ping => Request::Ping,
        Request::FindNode { target } => Request::FindNode { target },
        Request::FindValue {
            key,
            owner,
            known_seq,
        } => Request::FindValue {
            key,
            owner,
            known_seq,
        },
        Request::Store { record } => Request::Store {
            record: record.into(),
        },
    }
}

fn owned_response(r: Response<&[u8]>) -> Response<Rec> {
    match r {
        Response::Pong { observed } => Response::Pong { observed },
        Response::Nodes { contacts } => Response::Nodes { contacts },
        Response::Value { record } => Response::Value {
            record: record.into(),
        },
        Response::Stored(c) => Response::Stored(c),
    }
}

/// Connections to strangers (peers without our network key: seeds, other meshes' members,
/// anyone) held at once; each is ~20-40 KiB of quinn state, so 256 stay under 10 MiB.
pub const MAX_STRANGERS: usize = 256;
/// ... and from one source ([`shadowmesh_proto::limit::source_key`]).
pub const MAX_STRANGERS_PER_SOURCE: usize = 8;
/// A stranger's connection that carried no DHT request either way for this long is closed
/// (quinn's keepalives would hold it open forever).
pub const STRANGER_IDLE: Duration = Duration::from_secs(60);

/// One live connection: the Ed25519 key its handshake proved, whether the peer is a stranger,
/// and when a DHT request last used it.
struct Conn {
    conn: Connection,
    ed25519: [u8; 32],
    stranger: bool,
    last_used: std::cell::Cell<Duration>,
}

/// A node's DHT over its QUIC endpoint.
/// What our record says of how we are reached, beside its addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// The NAT between us and the others.
    pub nat: NatClass,
    /// We relay for members.
    pub relay: bool,
    /// The relays we keep links with.
    pub relays: Vec<PeerId>,
}

pub struct Mesh {
    node: Node,
    dht: RefCell<Dht<DhtRecordCheck>>,
    /// The live connection to each peer.
    conns: RefCell<BTreeMap<PeerId, Conn>>,
    waiters: RefCell<BTreeMap<LookupId, oneshot::Sender<LookupOutcome<Rec>>>>,
    epoch: Instant,
    wake: Notify,
    dataplane: RefCell<Option<Rc<DataPlane>>>,
    /// The addresses our record carries because the configuration names them
    /// (`list advertise`), and those other nodes see us at ([`Dht::observed`]).
    addrs: RefCell<(Vec<SocketAddr>, Vec<SocketAddr>)>,
    /// The address the router in front of us forwards to our port (`option port_mapping`).
    mapped: std::cell::Cell<Option<SocketAddr>>,
    /// What our record says of how we are reached: the NAT in front of us, whether we relay,
    /// the relays we keep.
    reach: RefCell<Reach>,
    /// The port mapping, for `status` and the way out.
    pub port_map: std::sync::Arc<crate::portmap::Shared>,
    /// LAN discovery, while it runs (`crate::lan`), for `status`.
    pub lan: RefCell<Option<Rc<RefCell<shadowmesh_proto::discovery::Discovery>>>>,
    /// The names the hosts file serves, per gateway (`crate::hosts`).
    pub dns_names: RefCell<BTreeMap<PeerId, String>>,
}

impl Mesh {
    /// Wraps `node`. Call [`Mesh::run`] inside a `LocalSet` to serve.
    pub fn new(node: Node) -> std::io::Result<Rc<Mesh>> {
        let local = Contact {
            id: node.peer_id(),
            ed25519: node.identity().ed25519_public(),
            addr: node.local_addr()?,
        };
        let seed = u64::from_be_bytes(local.id.0[..8].try_into().expect("8 bytes"));
        Ok(Rc::new(Mesh {
            node,
            dht: RefCell::new(Dht::new(local, DhtRecordCheck, seed)),
            conns: RefCell::new(BTreeMap::new()),
            waiters: RefCell::new(BTreeMap::new()),
            epoch: Instant::now(),
            wake: Notify::new(),
            dataplane: RefCell::new(None),
            addrs: RefCell::new((Vec::new(), Vec::new())),
            mapped: std::cell::Cell::new(None),
            reach: RefCell::default(),
            port_map: std::sync::Arc::default(),
            lan: RefCell::new(None),
            dns_names: RefCell::new(BTreeMap::new()),
        }))
    }

    /// Hands every member session from now on to `dp` (and lets it dial through us).
    pub fn attach(self: &Rc<Self>, dp: Rc<DataPlane>) {
        dp.start(self.clone());
        *self.dataplane.borrow_mut() = Some(dp);
    }

    /// The data plane, on a member node with a tunnel.
    pub fn dataplane(&self) -> Option<Rc<DataPlane>> {
        self.dataplane.borrow().clone()
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Our DHT contact.
    pub fn contact(&self) -> Contact {
        *self.dht.borrow().local()
    }

    /// Contacts in the routing table.
    pub fn table_len(&self) -> usize {
        self.dht.borrow().table().len()
    }

    /// The DHT's smoothed round trip to anyone, in milliseconds, once measured.
    pub fn dht_rtt_ms(&self) -> Option<f64> {
        self.dht.borrow().rtt().map(|d| d.as_secs_f64() * 1e3)
    }

    /// Every routing-table contact (for the on-disk cache).
    pub fn contacts(&self) -> Vec<Contact> {
        self.dht
            .borrow()
            .table()
            .entries()
            .map(|e| e.contact)
            .collect()
    }

    /// Records held for others.
    pub fn records_held(&self) -> usize {
        self.dht.borrow().store().len()
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Serves: accepts connections and answers their RPCs, and runs the engine's timers.
    /// Returns when the endpoint closes.
    pub async fn run(self: Rc<Self>) {
        tokio::task::spawn_local(self.clone().timer());
        tokio::task::spawn_local(self.clone().close_idle_strangers());
        // Handshakes run side by side: one slow or stalled client must not hold up the rest
        // (the node limits how many run at once; see `Node::incoming`).
        while let Some(p) = self.node.incoming().await {
            let me = self.clone();
            tokio::task::spawn_local(async move {
                match me.node.handshake(p).await {
                    Ok(peer) => me.adopt(peer),
                    Err(e) => log::debug!("incoming handshake failed: {e}"),
                }
            });
        }
    }

    async fn timer(self: Rc<Self>) {
        loop {
            let next = self
                .dht
                .borrow()
                .poll_timeout()
                .unwrap_or(Duration::from_secs(60));
            let at = tokio::time::Instant::from_std(self.epoch + next);
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {
                    let now = self.now();
                    self.dht.borrow_mut().handle_timeout(now, crate::unix_now());
                    self.pump();
                }
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Stranger connections held now.
    pub fn strangers(&self) -> usize {
        self.conns.borrow().values().filter(|c| c.stranger).count()
    }

    /// Whether a new connection from stranger `c` fits under [`MAX_STRANGERS`] and
    /// [`MAX_STRANGERS_PER_SOURCE`] (its own earlier connection, which it replaces, not
    /// counted).
    fn room_for_stranger(&self, c: &Contact) -> bool {
        let source = shadowmesh_proto::limit::source_key(c.addr);
        let conns = self.conns.borrow();
        let others = conns
            .iter()
            .filter(|(id, k)| k.stranger && **id != c.id && k.conn.close_reason().is_none());
        let (mut all, mut same) = (0, 0);
        for (_, k) in others {
            all += 1;
            same +=
                (shadowmesh_proto::limit::source_key(k.conn.remote_address()) == source) as usize;
        }
        all < MAX_STRANGERS && same < MAX_STRANGERS_PER_SOURCE
    }

    /// Closes strangers' connections idle for [`STRANGER_IDLE`], every quarter of it.
    async fn close_idle_strangers(self: Rc<Self>) {
        let mut tick = tokio::time::interval(STRANGER_IDLE / 4);
        loop {
            tick.tick().await;
            let now = self.now();
            for c in self.conns.borrow().values() {
                if c.stranger && now.saturating_sub(c.last_used.get()) >= STRANGER_IDLE {
                    c.conn
                        .close(crate::quic::VarInt::from_u32(CLOSE_IDLE), b"idle");
                }
            }
        }
    }

    /// Registers an authenticated connection and serves the RPCs the peer opens on it.
    fn adopt(self: &Rc<Self>, peer: Peer) {
        let contact = Contact {
            id: peer.peer_id,
            ed25519: peer.record.keys.ed25519,
            // One UDP socket serves both directions, so the address a peer dials from is the
            // address it listens on (modulo NAT).
            addr: peer.conn.remote_address(),
        };
        let conn = peer.conn.clone();
        // A member session goes to the data plane, which then owns the control stream. If it
        // keeps an earlier connection to this member instead, the new one is already closed
        // and the earlier one stays the one RPCs use.
        let dp = self.dataplane();
        let keep = match (dp, peer.session.is_some()) {
            (Some(dp), true) => {
                if !dp.add_link(peer) {
                    return;
                }
                None
            }
            // Only its control stream is kept open for the connection's life: a whole boxed
            // `Peer` (5.9 KB: the verified record and session inline) held for every stranger
            // cost 1.5 MB at the 256 strangers a node holds.
            _ => Some((peer.control, peer.control_rx)),
        };
        let stranger = keep.is_some();
        if stranger && !self.room_for_stranger(&contact) {
            log::debug!(
                "closing a connection from stranger {} at {}: {} strangers held",
                contact.id.short(),
                contact.addr,
                self.strangers()
            );
            conn.close(crate::quic::VarInt::from_u32(CLOSE_BUSY), b"busy");
            return;
        }
        let old = self.conns.borrow_mut().insert(
            contact.id,
            Conn {
                conn: conn.clone(),
                ed25519: contact.ed25519,
                stranger,
                last_used: std::cell::Cell::new(self.now()),
            },
        );
        // A stranger's earlier connection is closed, not left holding memory until its idle
        // timeout; a member's was settled by the data plane.
        if let (Some(old), true) = (old, stranger) {
            if old.conn.stable_id() != conn.stable_id() {
                old.conn
                    .close(crate::quic::VarInt::from_u32(CLOSE_REPLACED), b"replaced");
            }
        }
        tokio::task::spawn_local(self.clone().serve(conn, contact, keep));
    }

    async fn serve(
        self: Rc<Self>,
        conn: Connection,
        from: Contact,
        _control: Option<(SendStream, Option<RecvStream>)>,
    ) {
        while let Ok((send, recv)) = conn.accept_bi().await {
            // Where the peer is now: a connection it dialled follows it when its address moves
            // (QUIC migration), and a PONG must report the new address, not the first one.
            let from = Contact {
                addr: conn.remote_address(),
                ..from
            };
            tokio::task::spawn_local(self.clone().answer(send, recv, from));
        }
        let mut conns = self.conns.borrow_mut();
        if conns
            .get(&from.id)
            .is_some_and(|c| c.conn.stable_id() == conn.stable_id())
        {
            conns.remove(&from.id);
        }
    }

    async fn answer(self: Rc<Self>, mut send: SendStream, mut recv: RecvStream, from: Contact) {
        // A request that does not arrive in time is dropped with its stream.
        let Ok(Ok(bytes)) =
            tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut recv, DHT_MAX_MSG)).await
        else {
            return;
        };
        let Ok(req) = Request::parse(&bytes) else {
            log::debug!("malformed DHT request from {}", from.id.short());
            return;
        };
        if let Some(c) = self.conns.borrow().get(&from.id) {
            c.last_used.set(self.now());
        }
        let now = self.now();
        let resp =
            self.dht
                .borrow_mut()
                .handle_request(from, owned_request(req), now, crate::unix_now());
        self.pump();
        if let Some(resp) = resp {
            let mut out = Vec::new();
            if resp.emit(&mut out).is_ok() {
                let _ = write_frame(&mut send, &out).await;
                let _ = send.finish();
            }
        }
    }

    /// Carries out what the engine asked for.
    fn pump(self: &Rc<Self>) {
        loop {
            let out = self.dht.borrow_mut().poll_output();
            match out {
                None => break,
                Some(Output::Send { to, id, req }) => {
                    tokio::task::spawn_local(self.clone().request(to, id, req));
                }
                Some(Output::LookupDone(o)) => {
                    if let Some(tx) = self.waiters.borrow_mut().remove(&o.id) {
                        let _ = tx.send(o);
                    }
                }
                Some(Output::Observed(addrs)) => self.observed(addrs),
                Some(Output::Moved) => self.moved(),
            }
        }
        self.wake.notify_one();
    }

    async fn request(self: Rc<Self>, to: Contact, id: RequestId, req: Request<Rec>) {
        let mut bytes = Vec::new();
        // The connection asked over, and what it had received then.
        let mut used: Option<(Connection, u64)> = None;
        // The round trip of the request itself, from when it had a connection: the engine's
        // soft timeouts follow it, and a dial's handshake would make them far too long.
        let mut asked: Option<Instant> = None;
        let result = match req.emit(&mut bytes) {
            Ok(()) => tokio::time::timeout(REQUEST_TIMEOUT, async {
                let conn = self.connection(to).await?;
                used = Some((conn.clone(), conn.stats().udp_rx.datagrams));
                // Who answered: the PeerId, key and address of the connection it came over
                // (not necessarily `to`'s address: an existing connection to that PeerId is
                // reused).
                let via = self.via(to.id, &conn);
                asked = Some(Instant::now());
                Ok((rpc(&conn, &bytes).await?, via))
            })
            .await
            .unwrap_or(Err(RpcError::Timeout)),
            Err(_) => Err(RpcError::Malformed),
        };
        let now = self.now();
        match result.and_then(|(b, via)| {
            Response::parse(&b)
                .map(|r| (owned_response(r), via))
                .map_err(|_| RpcError::Malformed)
        }) {
            Ok((resp, via)) => {
                let rtt = asked.map(|t| t.elapsed());
                self.dht.borrow_mut().handle_response_timed(
                    id,
                    via,
                    resp,
                    rtt,
                    now,
                    crate::unix_now(),
                )
            }
            Err(e) => {
                log::debug!("DHT request to {} failed: {e}", to.id.short());
                // Unanswered, and not a datagram (not even an ACK) back, over a connection the
                // peer dialled: our address moved and it is a dead end (QUIC servers do not
                // migrate). Closed, the next request dials afresh.
                if let (RpcError::Timeout, Some((c, rx))) = (&e, &used) {
                    if c.side() == crate::quic::Side::Server && c.stats().udp_rx.datagrams == *rx {
                        c.close(crate::quic::VarInt::from_u32(CLOSE_REPLACED), b"unanswered");
                    }
                }
                self.dht.borrow_mut().handle_failure(id, now);
            }
        }
        self.pump();
    }

    /// A live connection to `to`, dialling it if needed.
    pub async fn connection(self: &Rc<Self>, to: Contact) -> Result<Connection, RpcError> {
        let existing = self.conns.borrow().get(&to.id).map(|c| {
            c.last_used.set(self.now());
            c.conn.clone()
        });
        if let Some(c) = existing.filter(|c| c.close_reason().is_none()) {
            return Ok(c);
        }
        self.dial_new(to).await
    }

    /// The authenticated contact behind `conn`, a connection to `id`: the Ed25519 key its
    /// handshake proved and the address quinn sees it at now.
    fn via(&self, id: PeerId, conn: &Connection) -> Contact {
        let ed25519 = self
            .conns
            .borrow()
            .get(&id)
            .filter(|c| c.conn.stable_id() == conn.stable_id())
            .map_or([0; 32], |c| c.ed25519);
        Contact {
            id,
            ed25519,
            addr: conn.remote_address(),
        }
    }

    /// Dials `to` even if a connection exists (it replaces the old one). Every dial passes here:
    /// addresses a peer could use to turn us into a reflector are refused
    /// ([`shadowmesh_proto::policy::dialable`]).
    pub async fn dial_new(self: &Rc<Self>, to: Contact) -> Result<Connection, RpcError> {
        let loopback_ok = self.node.local_addr().is_ok_and(|a| a.ip().is_loopback());
        // A relayed member's local address is dialled only while the circuit is ours.
        let relayed = self.node.demux().relayed().get(to.addr).is_some();
        if !relayed && !shadowmesh_proto::policy::dialable(to.addr, loopback_ok) {
            return Err(RpcError::Undialable(to.addr));
        }
        let pin = (to.ed25519 != [0; 32]).then_some(to.ed25519);
        let peer = self
            .node
            .dial(to.addr, to.id, pin)
            .await
            .map_err(RpcError::Handshake)?;
        let id = peer.peer_id;
        self.adopt(peer);
        // The connection that survived adoption (ours, or an earlier one that won).
        self.conns
            .borrow()
            .get(&id)
            .filter(|c| c.conn.close_reason().is_none())
            .map(|c| c.conn.clone())
            .ok_or(RpcError::Stream("connection replaced"))
    }

    /// Adds a contact known out of band (a bootstrap seed, the routing-table cache).
    pub fn add_contact(self: &Rc<Self>, c: Contact) {
        let now = self.now();
        self.dht.borrow_mut().add_contact(c, now);
        self.pump();
    }

    async fn wait(self: &Rc<Self>, id: Option<LookupId>) -> Option<LookupOutcome<Rec>> {
        let id = id?;
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(id, tx);
        self.pump();
        rx.await.ok()
    }

    /// Joins the DHT through the contacts added so far.
    pub async fn bootstrap(self: &Rc<Self>) -> Option<LookupOutcome<Rec>> {
        let now = self.now();
        let id = self.dht.borrow_mut().bootstrap(now);
        self.wait(id).await
    }

    /// FIND_NODE.
    pub async fn find_node(self: &Rc<Self>, target: [u8; 32]) -> Option<LookupOutcome<Rec>> {
        let now = self.now();
        let id = self.dht.borrow_mut().find_node(target, now);
        self.wait(id).await
    }

    /// FIND_VALUE for `owner`'s record under `key`.
    pub async fn find_value(
        self: &Rc<Self>,
        key: [u8; 32],
        owner: PeerId,
    ) -> Option<LookupOutcome<Rec>> {
        let now = self.now();
        let id = self.dht.borrow_mut().find_value(key, owner, 0, now);
        self.wait(id).await
    }

    /// Asks other nodes now and then where they see us ([`Dht::set_observing`]); the
    /// addresses they agree on go into our record.
    pub fn observe(&self) {
        let now = self.now();
        self.dht.borrow_mut().set_observing(true, now);
        self.wake.notify_one();
    }

    /// Where other nodes see us, and the NAT between us and them.
    pub fn observed_state(&self) -> (Vec<SocketAddr>, NatClass) {
        let now = self.now();
        let local = crate::netlink::local_addresses(0).unwrap_or_default();
        let port = self.node.local_addr().map(|a| a.port()).unwrap_or(0);
        let dht = self.dht.borrow();
        let o = dht.observed();
        (o.addresses(now), o.class(now, port, &local))
    }

    /// Other nodes agree that they see us at `addrs` now.
    fn observed(self: &Rc<Self>, addrs: Vec<SocketAddr>) {
        let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        log::info!("other nodes see us at: {}", list.join(", "));
        self.addrs.borrow_mut().1 = addrs;
        self.republish_addrs();
    }

    /// A node that saw us at one address sees us at another: our public address moved under
    /// us (a renumbered router; our own addresses may be unchanged). The connections we
    /// dialled migrated by themselves; those we accepted are dead ends, dialled again now.
    fn moved(self: &Rc<Self>) {
        log::info!("our public address moved: redialling the members that had dialled us");
        if let Some(dp) = self.dataplane() {
            dp.redial_accepted();
        }
        // A DHT-only node's connection that we accepted: the next request dials afresh.
        self.conns.borrow_mut().retain(|_, c| {
            let dead = c.stranger && c.conn.side() == crate::quic::Side::Server;
            if dead {
                c.conn
                    .close(crate::quic::VarInt::from_u32(CLOSE_REPLACED), b"moved");
            }
            !dead
        });
    }

    /// The addresses `list advertise` stands for changed (its names resolved again): our
    /// record is re-signed and published if its addresses did.
    pub fn advertise_addrs(self: &Rc<Self>, advertise: Vec<SocketAddr>) {
        if self.addrs.borrow().0 == advertise {
            return;
        }
        self.set_advertise(advertise);
        self.republish_addrs();
    }

    /// The router in front of us forwards `mapped` to our port (or nothing now): our record
    /// carries it, after the configured addresses and before the observed ones.
    pub fn set_mapped(self: &Rc<Self>, mapped: Option<SocketAddr>) {
        if self.mapped.replace(mapped) != mapped {
            self.republish_addrs();
        }
    }

    /// Our NAT class, whether we relay, and the relays we keep changed (or not): our record
    /// says so.
    pub fn set_reach(self: &Rc<Self>, reach: Reach) {
        if *self.reach.borrow() != reach {
            *self.reach.borrow_mut() = reach;
            self.republish_addrs();
        }
    }

    /// Sets the addresses the configuration names for our record (`list advertise`).
    pub fn set_advertise(&self, advertise: Vec<SocketAddr>) {
        self.addrs.borrow_mut().0 = advertise;
    }

    /// The addresses our record carries: those configured, the mapped one, then those observed, each once, at
    /// most [`RECORD_MAX_ADDRS`].
    pub fn record_addrs(&self) -> Vec<SocketAddr> {
        let (advertise, observed) = &*self.addrs.borrow();
        let mapped = self.mapped.get();
        let mut v: Vec<SocketAddr> = Vec::new();
        for a in advertise.iter().chain(mapped.iter()).chain(observed) {
            if !v.contains(a) && v.len() < RECORD_MAX_ADDRS {
                v.push(*a);
            }
        }
        v
    }

    /// Re-signs our record if its addresses or what it says of how we are reached changed,
    /// tells the members and publishes it.
    fn republish_addrs(self: &Rc<Self>) {
        let old = self.node.payload();
        let mut p = old.clone();
        p.addrs = self.record_addrs();
        let reach = self.reach.borrow().clone();
        (p.nat, p.relay, p.relays) = (reach.nat, reach.relay, reach.relays);
        if p == old || self.node.config().network_key.is_none() {
            return;
        }
        self.node.set_payload(p);
        match self.node.refresh_record() {
            Ok(rec) => {
                if let Some(dp) = self.dataplane() {
                    dp.announce_record(&rec);
                }
                let me = self.clone();
                tokio::task::spawn_local(async move {
                    if let Err(code) = me.publish(rec).await {
                        log::error!("our own record was refused: {code:?}");
                    }
                });
            }
            Err(e) => log::error!("re-signing our record failed: {e}"),
        }
    }

    /// Publishes our record (and keeps republishing it hourly).
    pub async fn publish(
        self: &Rc<Self>,
        record: Rec,
    ) -> Result<Option<LookupOutcome<Rec>>, StoreCode> {
        let now = self.now();
        let id = self
            .dht
            .borrow_mut()
            .publish(record, crate::unix_now(), now)?;
        Ok(self.wait(id).await)
    }
}

impl crate::dataplane::Dialer for Mesh {
    fn node(&self) -> &Node {
        Mesh::node(self)
    }

    fn reach(
        self: Rc<Self>,
        to: Contact,
        fresh: bool,
    ) -> crate::dataplane::LocalFuture<Result<(), String>> {
        Box::pin(async move {
            let r = if fresh {
                self.dial_new(to).await
            } else {
                self.connection(to).await
            };
            r.map(|_| ()).map_err(|e| e.to_string())
        })
    }

    fn publish_record(
        self: Rc<Self>,
        record: Rec,
    ) -> crate::dataplane::LocalFuture<Result<(), String>> {
        Box::pin(async move {
            self.publish(record)
                .await
                .map(|_| ())
                .map_err(|code| format!("{code:?}"))
        })
    }

    fn dataplane(&self) -> Option<Rc<DataPlane>> {
        Mesh::dataplane(self)
    }

    fn observe_soon(&self) {
        let now = self.now();
        self.dht.borrow_mut().observe_soon(now);
        self.wake.notify_one();
    }

    fn seen(self: Rc<Self>, reporter: SocketAddr, at: SocketAddr) {
        log::debug!("{reporter} sees us at {at} now");
        let now = self.now();
        self.dht.borrow_mut().seen(now, reporter, at);
        self.pump();
    }
}
