//! The end-to-end session (DESIGN.md, "Handshake" step 5, and "Data plane").
//!
//! INIT/RESP: ephemeral ML-KEM-1024 + X25519, each message dual-signed over its body and bound
//! to `binding` (the TLS exporter on a direct path, the relay's PeerId on a relayed one). On a
//! direct connection each signature also covers the sender's HELLO, sent unsigned just before
//! ([`initiate_after_hello`], [`respond_in_flight`], [`Initiating::finish_after_hello`]).
//! HKDF-SHA-256 over both shared secrets, salted with the network key, gives one
//! ChaCha20-Poly1305 key per direction and a chaining key for rekeys.
//!
//! Rekey (WireGuard's timers): the session initiator starts one after 120 s or 2^60 messages;
//! it is a fresh ML-KEM-1024 + X25519 exchange authenticated by an HMAC under a key from the
//! current chaining key, never a new ML-DSA signature. The new keys go into the other of two key
//! slots, selected by the frame's key-phase bit. The responder installs them at once for
//! receiving but keeps sending on the old phase until a frame arrives on the new one (so the
//! initiator has certainly installed them); the initiator switches as soon as RESP arrives.
//! Any key older than 180 s is refused in both directions.
//!
//! The state machine owns no clock: `now` is an argument, a monotonic `Duration` since any
//! fixed epoch of the caller's, so that tests and simulations run it on virtual time. When to
//! send a keepalive, start a rekey or give up on a session is the link core's call
//! (`shadowmesh_link::timers`), from the times this session reports.

use std::time::Duration;

use shadowmesh_proto::consts::*;
use shadowmesh_proto::frame::{FrameType, Header};
use shadowmesh_proto::msg::{
    append_sigs, Init, Rekey, Resp, HELLO_INIT_DOMAIN, HELLO_RESP_DOMAIN, INIT_DOMAIN,
    REKEY_INIT_DOMAIN, REKEY_RESP_DOMAIN, RESP_DOMAIN,
};
use shadowmesh_proto::replay::ReplayWindow;
use shadowmesh_proto::PeerId;

use crate::aead::FrameKey;
use crate::kx;
use crate::sign::PeerKeys;
use crate::{Error, Identity};
use zeroize::{Zeroize, Zeroizing};

struct Keys {
    send: FrameKey,
    recv: FrameKey,
    send_seq: u64,
    replay: ReplayWindow,
    created: Duration,
}

struct Derived {
    send: [u8; 32],
    recv: [u8; 32],
    chain: [u8; 32],
}

impl Drop for Derived {
    fn drop(&mut self) {
        self.send.zeroize();
        self.recv.zeroize();
        self.chain.zeroize();
    }
}

fn derive(salt: &[u8], secret: &[u8], info: &[&[u8]], initiator: bool) -> Derived {
    let mut okm = Zeroizing::new([0u8; 96]);
    crate::hkdf(salt, secret, info, &mut okm[..]);
    let mut d = Derived {
        send: [0; 32],
        recv: [0; 32],
        chain: [0; 32],
    };
    let (i2r, r2i) = (&okm[..32], &okm[32..64]);
    let (send, recv) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
    d.send.copy_from_slice(send);
    d.recv.copy_from_slice(recv);
    d.chain.copy_from_slice(&okm[64..]);
    d
}

impl Keys {
    fn new(d: &Derived, now: Duration) -> Self {
        Keys {
            send: FrameKey::new(&d.send),
            recv: FrameKey::new(&d.recv),
            send_seq: 0,
            replay: ReplayWindow::new(),
            created: now,
        }
    }

    fn usable(&self, now: Duration) -> bool {
        now.saturating_sub(self.created) < REJECT_AFTER_TIME
    }
}

struct PendingRekey {
    epoch: u32,
    started: Duration,
    kx: kx::Initiator,
    init_body: Vec<u8>,
}

/// Counters a session keeps about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames sealed.
    pub sent: u64,
    /// Frames opened successfully.
    pub received: u64,
    /// Frames refused as replays or too old.
    pub replayed: u64,
    /// Frames refused because authentication failed or no key matched.
    pub rejected: u64,
    /// Completed rekeys.
    pub rekeys: u32,
}

/// An established end-to-end session with one peer.
pub struct Session {
    slots: [Option<Keys>; 2],
    send_phase: usize,
    confirm_phase: Option<usize>,
    initiator: bool,
    epoch: u32,
    chain: [u8; 32],
    /// Boxed: the ML-KEM-1024 + X25519 initiator state is ~4.6 KB and exists only during a
    /// rekey; inline it made every session (and so every member of a 1,000-peer node) 6 KB.
    pending: Option<Box<PendingRekey>>,
    /// Our receiver index: the other side's frames carry it.
    index: u32,
    /// The other side's receiver index: our frames carry it.
    peer_index: u32,
    last_send: Duration,
    last_recv: Duration,
    /// The first data frame sealed since the last one opened.
    unanswered: Option<Duration>,
    /// Counters.
    pub stats: SessionStats,
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("initiator", &self.initiator)
            .field("epoch", &self.epoch)
            .field("send_phase", &self.send_phase)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn e2e_salt(network_key: &[u8; 32]) -> [u8; 32] {
    crate::sha256(&[b"shadowmesh/e2e/v1", network_key])
}

/// A receiver index for a new session: random, so that it says nothing about us or our
/// other sessions (the caller refuses the rare one already in use, and dials again).
fn new_index() -> u32 {
    let mut b = [0u8; 4];
    crate::random_bytes(&mut b);
    u32::from_ne_bytes(b)
}

/// The initiator's side of INIT/RESP, waiting for RESP.
pub struct Initiating {
    kx: kx::Initiator,
    index: u32,
    init_body: Vec<u8>,
    me: PeerId,
    peer: PeerId,
    binding: [u8; 32],
}

/// What an INIT or RESP signature covers: `plain || binding || body`, or, when the sender's
/// HELLO left in the same flight unsigned (`HELLO_SIGNED_WITH_NEXT`),
/// `flight || exporter || HELLO || body`.
fn covered<'a>(
    plain: &'static [u8],
    flight: &'static [u8],
    binding: &'a [u8; 32],
    hello: Option<&'a [u8]>,
    body: &'a [u8],
) -> (&'static [u8], [&'a [u8]; 3]) {
    match hello {
        Some(h) => (flight, [binding, h, body]),
        None => (plain, [binding, &[], body]),
    }
}

/// The HELLOs of a direct connection's two flights, whose signatures INIT and RESP carry.
#[derive(Debug, Clone, Copy)]
pub struct Flight<'a> {
    /// The other side's HELLO, which arrived unsigned before its INIT or RESP.
    pub peer_hello: &'a [u8],
    /// Our HELLO, sent unsigned before our INIT or RESP.
    pub my_hello: &'a [u8],
}

/// Starts a session with `peer`: returns the state and the signed INIT body to send.
pub fn initiate(id: &Identity, peer: &PeerId, binding: &[u8; 32]) -> (Initiating, Vec<u8>) {
    initiate_inner(id, peer, binding, None)
}

/// Starts a session with `peer` on a direct connection whose TLS exporter is `exporter`: the
/// INIT is signed over our unsigned `hello` too, which leaves just before it.
pub fn initiate_after_hello(
    id: &Identity,
    peer: &PeerId,
    exporter: &[u8; 32],
    hello: &[u8],
) -> (Initiating, Vec<u8>) {
    initiate_inner(id, peer, exporter, Some(hello))
}

fn initiate_inner(
    id: &Identity,
    peer: &PeerId,
    binding: &[u8; 32],
    hello: Option<&[u8]>,
) -> (Initiating, Vec<u8>) {
    let k = kx::Initiator::generate();
    let me = id.peer_id();
    let index = new_index();
    let mut body = Vec::new();
    Init::emit_unsigned(&me, peer, index, k.x25519_pk(), k.mlkem_ek(), &mut body);
    let (domain, parts) = covered(INIT_DOMAIN, HELLO_INIT_DOMAIN, binding, hello, &body);
    let (m, e) = id.sign(domain, &parts);
    append_sigs(&mut body, &m, &e);
    (
        Initiating {
            kx: k,
            index,
            init_body: body.clone(),
            me,
            peer: *peer,
            binding: *binding,
        },
        body,
    )
}

impl Initiating {
    /// Completes the session with the responder's RESP, checked against `peer`'s keys.
    pub fn finish(
        self,
        resp_body: &[u8],
        peer: &PeerKeys,
        network_key: &[u8; 32],
        now: Duration,
    ) -> Result<Session, Error> {
        self.finish_inner(resp_body, None, peer, network_key, now)
    }

    /// Completes the session with a RESP whose signature also covers the responder's unsigned
    /// `peer_hello`, which arrived just before it (see [`initiate_after_hello`]).
    pub fn finish_after_hello(
        self,
        resp_body: &[u8],
        peer_hello: &[u8],
        peer: &PeerKeys,
        network_key: &[u8; 32],
        now: Duration,
    ) -> Result<Session, Error> {
        self.finish_inner(resp_body, Some(peer_hello), peer, network_key, now)
    }

    fn finish_inner(
        self,
        resp_body: &[u8],
        peer_hello: Option<&[u8]>,
        peer: &PeerKeys,
        network_key: &[u8; 32],
        now: Duration,
    ) -> Result<Session, Error> {
        if peer.peer_id != self.peer {
            return Err(Error::UnexpectedPeer("peer keys"));
        }
        let r = Resp::parse(resp_body)?;
        if r.from != self.peer {
            return Err(Error::UnexpectedPeer("RESP.from"));
        }
        if r.to != self.me {
            return Err(Error::UnexpectedPeer("RESP.to"));
        }
        let init_hash = crate::sha256(&[&self.init_body]);
        if !crate::ct_eq(&init_hash, r.init_hash) {
            return Err(Error::Wire(shadowmesh_proto::Error::InvalidField(
                "RESP.init_hash",
            )));
        }
        let (domain, parts) = covered(
            RESP_DOMAIN,
            HELLO_RESP_DOMAIN,
            &self.binding,
            peer_hello,
            r.signed,
        );
        peer.verify(domain, &parts, r.mldsa_sig, r.ed25519_sig)?;
        let mut share = [0u8; kx::RESP_SHARE_LEN];
        share[..MLKEM1024_CIPHERTEXT_LEN].copy_from_slice(r.mlkem_ct);
        share[MLKEM1024_CIPHERTEXT_LEN..].copy_from_slice(r.x25519);
        let secret = self.kx.finish(&share)?;
        let resp_hash = crate::sha256(&[resp_body]);
        let d = derive(
            &e2e_salt(network_key),
            &secret[..],
            &[&init_hash, &resp_hash],
            true,
        );
        Ok(Session::new(d, true, now, self.index, r.index))
    }
}

/// Answers an INIT from `peer` (whose keys were verified through its record): returns the
/// session and the signed RESP body to send.
pub fn respond(
    id: &Identity,
    init_body: &[u8],
    peer: &PeerKeys,
    binding: &[u8; 32],
    network_key: &[u8; 32],
    now: Duration,
) -> Result<(Session, Vec<u8>), Error> {
    respond_inner(id, init_body, peer, binding, network_key, None, now)
}

/// Answers an INIT on a direct connection whose TLS exporter is `exporter`, where each side's
/// HELLO went unsigned before its INIT or RESP: the INIT's signature is checked over the
/// initiator's HELLO too, and the RESP is signed over ours.
pub fn respond_in_flight(
    id: &Identity,
    init_body: &[u8],
    peer: &PeerKeys,
    exporter: &[u8; 32],
    network_key: &[u8; 32],
    flight: Flight<'_>,
    now: Duration,
) -> Result<(Session, Vec<u8>), Error> {
    respond_inner(
        id,
        init_body,
        peer,
        exporter,
        network_key,
        Some(flight),
        now,
    )
}

/// Checks an INIT whose signature covers the initiator's unsigned `peer_hello`, without
/// answering it: what a DHT-only node does with a member's first flight, which proves that
/// member's HELLO.
pub fn verify_init_after_hello(
    id: &Identity,
    init_body: &[u8],
    peer: &PeerKeys,
    exporter: &[u8; 32],
    peer_hello: &[u8],
) -> Result<(), Error> {
    check_init(
        id,
        &Init::parse(init_body)?,
        peer,
        exporter,
        Some(peer_hello),
    )
}

fn check_init(
    id: &Identity,
    i: &Init<'_>,
    peer: &PeerKeys,
    binding: &[u8; 32],
    peer_hello: Option<&[u8]>,
) -> Result<(), Error> {
    if i.from != peer.peer_id {
        return Err(Error::UnexpectedPeer("INIT.from"));
    }
    if i.to != id.peer_id() {
        return Err(Error::UnexpectedPeer("INIT.to"));
    }
    let (domain, parts) = covered(
        INIT_DOMAIN,
        HELLO_INIT_DOMAIN,
        binding,
        peer_hello,
        i.signed,
    );
    peer.verify(domain, &parts, i.mldsa_sig, i.ed25519_sig)
}

fn respond_inner(
    id: &Identity,
    init_body: &[u8],
    peer: &PeerKeys,
    binding: &[u8; 32],
    network_key: &[u8; 32],
    flight: Option<Flight<'_>>,
    now: Duration,
) -> Result<(Session, Vec<u8>), Error> {
    let i = Init::parse(init_body)?;
    check_init(id, &i, peer, binding, flight.map(|f| f.peer_hello))?;
    let me = id.peer_id();
    let mut share = [0u8; kx::INIT_SHARE_LEN];
    share[..MLKEM1024_ENCAPS_KEY_LEN].copy_from_slice(i.mlkem_ek);
    share[MLKEM1024_ENCAPS_KEY_LEN..].copy_from_slice(i.x25519);
    let (resp_share, secret) = kx::respond(&share)?;
    let init_hash = crate::sha256(&[init_body]);
    let ct: &[u8; MLKEM1024_CIPHERTEXT_LEN] = resp_share[..MLKEM1024_CIPHERTEXT_LEN]
        .try_into()
        .expect("len");
    let x: &[u8; 32] = resp_share[MLKEM1024_CIPHERTEXT_LEN..]
        .try_into()
        .expect("len");
    let index = new_index();
    let mut body = Vec::new();
    Resp::emit_unsigned(&me, &peer.peer_id, index, &init_hash, x, ct, &mut body);
    let (domain, parts) = covered(
        RESP_DOMAIN,
        HELLO_RESP_DOMAIN,
        binding,
        flight.map(|f| f.my_hello),
        &body,
    );
    let (m, e) = id.sign(domain, &parts);
    append_sigs(&mut body, &m, &e);
    let resp_hash = crate::sha256(&[&body]);
    let d = derive(
        &e2e_salt(network_key),
        &secret[..],
        &[&init_hash, &resp_hash],
        false,
    );
    Ok((Session::new(d, false, now, index, i.index), body))
}

fn rekey_mac_key(chain: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(crate::hmac_sha256(chain, &[b"shadowmesh/rekey-mac/v1"]))
}

impl Drop for Session {
    fn drop(&mut self) {
        self.chain.zeroize();
    }
}

impl Session {
    fn new(d: Derived, initiator: bool, now: Duration, index: u32, peer_index: u32) -> Self {
        Session {
            slots: [Some(Keys::new(&d, now)), None],
            send_phase: 0,
            confirm_phase: None,
            initiator,
            epoch: 0,
            chain: d.chain,
            pending: None,
            index,
            peer_index,
            last_send: now,
            last_recv: now,
            unanswered: None,
            stats: SessionStats::default(),
        }
    }

    /// Whether this side started the session (and so drives rekeys).
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// Our receiver index: frames for this session carry it, whatever path they take.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The other side's receiver index, which our frames carry.
    pub fn peer_index(&self) -> u32 {
        self.peer_index
    }

    /// Completed rekeys so far.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Seals one frame in place. `frame` is `22 bytes of header room || payload || 16 bytes of
    /// tag room`. Fails if the sending key is too old or its counter exhausted: rekey first.
    pub fn seal(&mut self, now: Duration, kind: FrameType, frame: &mut [u8]) -> Result<(), Error> {
        let len = frame.len().checked_sub(FRAME_OVERHEAD).ok_or(Error::Wire(
            shadowmesh_proto::Error::InvalidField("frame buffer length"),
        ))?;
        let len = u16::try_from(len).map_err(|_| {
            Error::Wire(shadowmesh_proto::Error::TooLarge {
                what: "frame payload",
                len,
                max: FRAME_MAX_PAYLOAD,
            })
        })?;
        let phase = self.send_phase;
        let keys = self.slots[phase].as_mut().ok_or(Error::NoKey)?;
        if !keys.usable(now) {
            return Err(Error::NoKey);
        }
        if keys.send_seq >= REJECT_AFTER_MESSAGES {
            return Err(Error::Wire(shadowmesh_proto::Error::CounterExhausted));
        }
        let h = Header {
            kind,
            receiver: self.peer_index,
            seq: keys.send_seq,
            len,
            key_phase: phase == 1,
        };
        keys.send.seal(&h, frame)?;
        keys.send_seq += 1;
        self.last_send = now;
        if kind != FrameType::Keepalive && self.unanswered.is_none() {
            self.unanswered = Some(now);
        }
        self.stats.sent += 1;
        Ok(())
    }

    /// Opens one frame in place: parse, replay check, decrypt, then mark. Returns the frame type
    /// and the plaintext (a sub-slice of `frame`).
    pub fn open<'a>(
        &mut self,
        now: Duration,
        frame: &'a mut [u8],
    ) -> Result<(FrameType, &'a mut [u8]), Error> {
        let h = Header::parse(frame)?;
        if h.receiver != self.index {
            self.stats.rejected += 1;
            return Err(Error::Wire(shadowmesh_proto::Error::InvalidField(
                "receiver index",
            )));
        }
        let phase = h.key_phase as usize;
        let Some(keys) = self.slots[phase].as_mut().filter(|k| k.usable(now)) else {
            self.stats.rejected += 1;
            return Err(Error::NoKey);
        };
        if let Err(e) = keys.replay.check(h.seq) {
            self.stats.replayed += 1;
            return Err(e.into());
        }
        let plain = match keys.recv.open(&h, frame) {
            Ok(p) => p,
            Err(e) => {
                self.stats.rejected += 1;
                return Err(e);
            }
        };
        keys.replay.mark(h.seq)?;
        self.stats.received += 1;
        self.last_recv = now;
        self.unanswered = None;
        if self.confirm_phase == Some(phase) {
            // The initiator sends on the new keys: it has them, so we may switch too.
            self.send_phase = phase;
            self.confirm_phase = None;
        }
        Ok((h.kind, plain))
    }

    /// When a frame was last sealed (or the session began).
    pub fn last_sent(&self) -> Duration {
        self.last_send
    }

    /// When the first data frame went out that nothing opened since answered.
    pub fn unanswered_since(&self) -> Option<Duration> {
        self.unanswered
    }

    /// When a frame last opened (or the session began).
    pub fn last_received(&self) -> Duration {
        self.last_recv
    }

    /// When the sending key was made, and how many frames it sealed; `None` once it is gone.
    pub fn send_key(&self) -> Option<(Duration, u64)> {
        self.slots[self.send_phase]
            .as_ref()
            .map(|k| (k.created, k.send_seq))
    }

    /// When the rekey in flight started (initiator only).
    pub fn rekey_started(&self) -> Option<Duration> {
        self.pending.as_ref().map(|p| p.started)
    }

    /// Starts a rekey (initiator only; one at a time): returns the REKEY_INIT body to send on
    /// the control stream.
    pub fn start_rekey(&mut self, now: Duration) -> Result<Vec<u8>, Error> {
        if !self.initiator || self.pending.is_some() {
            return Err(Error::BadRekey);
        }
        let epoch = self.epoch + 1;
        let k = kx::Initiator::generate();
        let mut body = Vec::new();
        Rekey::emit_unmaced(epoch, k.x25519_pk(), k.mlkem_ek(), &mut body);
        let mac = crate::hmac_sha256(&rekey_mac_key(&self.chain)[..], &[REKEY_INIT_DOMAIN, &body]);
        body.extend_from_slice(&mac);
        self.pending = Some(Box::new(PendingRekey {
            epoch,
            started: now,
            kx: k,
            init_body: body.clone(),
        }));
        Ok(body)
    }

    fn install(&mut self, d: &Derived, now: Duration) -> usize {
        let new_phase = 1 - self.send_phase;
        self.slots[new_phase] = Some(Keys::new(d, now));
        self.chain = d.chain;
        self.epoch += 1;
        self.stats.rekeys += 1;
        new_phase
    }

    /// Responder: answers a REKEY_INIT; returns the REKEY_RESP body.
    pub fn handle_rekey_init(&mut self, now: Duration, body: &[u8]) -> Result<Vec<u8>, Error> {
        let r = Rekey::parse(body)?;
        if self.initiator || r.epoch != self.epoch + 1 {
            return Err(Error::BadRekey);
        }
        let mac_key = rekey_mac_key(&self.chain);
        let mac = crate::hmac_sha256(&mac_key[..], &[REKEY_INIT_DOMAIN, r.maced]);
        if !crate::ct_eq(&mac, r.mac) {
            return Err(Error::BadRekey);
        }
        let mut share = [0u8; kx::INIT_SHARE_LEN];
        share[..MLKEM1024_ENCAPS_KEY_LEN].copy_from_slice(r.kem);
        share[MLKEM1024_ENCAPS_KEY_LEN..].copy_from_slice(r.x25519);
        let (resp_share, secret) = kx::respond(&share)?;
        let mut out = Vec::new();
        let kem: &[u8; MLKEM1024_CIPHERTEXT_LEN] = resp_share[..MLKEM1024_CIPHERTEXT_LEN]
            .try_into()
            .expect("len");
        let x: &[u8; 32] = resp_share[MLKEM1024_CIPHERTEXT_LEN..]
            .try_into()
            .expect("len");
        Rekey::emit_unmaced(r.epoch, x, kem, &mut out);
        let mac = crate::hmac_sha256(&mac_key[..], &[REKEY_RESP_DOMAIN, &out]);
        out.extend_from_slice(&mac);
        let epoch = r.epoch.to_be_bytes();
        let d = derive(
            &self.chain,
            &secret[..],
            &[
                b"rekey",
                &epoch,
                &crate::sha256(&[body]),
                &crate::sha256(&[&out]),
            ],
            false,
        );
        let phase = self.install(&d, now);
        self.confirm_phase = Some(phase);
        Ok(out)
    }

    /// Initiator: completes a rekey with REKEY_RESP and switches to the new keys.
    pub fn handle_rekey_resp(&mut self, now: Duration, body: &[u8]) -> Result<(), Error> {
        let r = Rekey::parse(body)?;
        let Some(p) = self.pending.take() else {
            return Err(Error::BadRekey);
        };
        if r.epoch != p.epoch {
            self.pending = Some(p);
            return Err(Error::BadRekey);
        }
        let mac = crate::hmac_sha256(
            &rekey_mac_key(&self.chain)[..],
            &[REKEY_RESP_DOMAIN, r.maced],
        );
        if !crate::ct_eq(&mac, r.mac) {
            return Err(Error::BadRekey);
        }
        let mut share = [0u8; kx::RESP_SHARE_LEN];
        share[..MLKEM1024_CIPHERTEXT_LEN].copy_from_slice(r.kem);
        share[MLKEM1024_CIPHERTEXT_LEN..].copy_from_slice(r.x25519);
        let secret = p.kx.finish(&share)?;
        let epoch = r.epoch.to_be_bytes();
        let d = derive(
            &self.chain,
            &secret[..],
            &[
                b"rekey",
                &epoch,
                &crate::sha256(&[&p.init_body]),
                &crate::sha256(&[body]),
            ],
            true,
        );
        self.send_phase = self.install(&d, now);
        Ok(())
    }
}

/// The link core drives sessions through this trait (`shadowmesh_link`'s timers and control
/// handling); each method is the inherent one of the same name.
impl shadowmesh_proto::session::SessionState for Session {
    type Error = Error;
    fn is_initiator(&self) -> bool {
        Session::is_initiator(self)
    }
    fn last_sent(&self) -> Duration {
        Session::last_sent(self)
    }
    fn last_received(&self) -> Duration {
        Session::last_received(self)
    }
    fn send_key(&self) -> Option<(Duration, u64)> {
        Session::send_key(self)
    }
    fn rekey_started(&self) -> Option<Duration> {
        Session::rekey_started(self)
    }
    fn unanswered_since(&self) -> Option<Duration> {
        Session::unanswered_since(self)
    }
    fn start_rekey(&mut self, now: Duration) -> Result<Vec<u8>, Error> {
        Session::start_rekey(self, now)
    }
    fn handle_rekey_init(&mut self, now: Duration, body: &[u8]) -> Result<Vec<u8>, Error> {
        Session::handle_rekey_init(self, now, body)
    }
    fn handle_rekey_resp(&mut self, now: Duration, body: &[u8]) -> Result<(), Error> {
        Session::handle_rekey_resp(self, now, body)
    }
}

#[cfg(test)]
mod tests;
