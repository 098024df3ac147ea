//! The fast lane's buffers: the pooled arena outgoing frames are cut from, the GSO batch, and
//! which member an underlay address belongs to.

use super::*;

/// Where outgoing frames are cut from: two large buffers used in turn. Each frame handed to
/// quinn is a slice of one (`BytesMut::split`, no allocation); when the current buffer is used
/// up it is reclaimed in place once quinn has dropped every frame cut from it, or else the
/// other one is. `BytesMut::reserve` would not do: on a buffer still shared it allocates a new
/// one of at most 64 KiB, and then again every ~60 packets (measured: 0.035 allocations per
/// packet). A fresh buffer is allocated only if quinn still holds frames from both, that is a
/// backlog larger than its whole datagram send buffer.
pub struct Arena {
    pub(super) bufs: [BytesMut; 2],
    pub(super) cur: usize,
}

impl Arena {
    pub(super) fn new() -> Arena {
        Arena {
            bufs: [
                BytesMut::with_capacity(ARENA),
                BytesMut::with_capacity(ARENA),
            ],
            cur: 0,
        }
    }

    /// Room for one frame of `slot` bytes, zeroed.
    pub(super) fn prepare(&mut self, slot: usize) -> &mut BytesMut {
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
    pub(super) buf: Vec<u8>,
    pub(super) to: Option<(SocketAddr, PeerId)>,
    pub(super) seg: usize,
    pub(super) count: usize,
    pub(super) bytes: u64,
    /// A shorter frame was added: it must be the last.
    pub(super) closed: bool,
}

/// Bytes one GSO send may carry (the UDP length field's limit, less room for headers).
pub(super) const BATCH_BYTES: usize = 65_000;
/// Packets the TUN reader takes per wake-up before sending what it has.
pub(super) const BURST: usize = 64;
/// Most segments one offloaded TCP packet may be cut into (64 KiB at the smallest MSS Linux
/// uses for a 1,280-byte MTU is 55).
pub(super) const MAX_SEGMENTS: usize = 128;

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
pub(super) struct FastPeers {
    pub(super) map: HashMap<SocketAddr, PeerId>,
    pub(super) last: Option<(SocketAddr, PeerId)>,
}

impl FastPeers {
    pub(super) fn get(&mut self, from: SocketAddr) -> Option<PeerId> {
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
    pub(super) fn set(&mut self, at: SocketAddr, pid: PeerId) {
        self.forget(&pid);
        self.map.insert(at, pid);
    }

    /// `pid` may also send from `at` (where quinn now sees it, not yet proven): frames from
    /// there are opened too, and the first one that authenticates moves the member there
    /// ([`DataPlane::open_deliver`]). Its other addresses but `keep` are dropped.
    pub(super) fn candidate(&mut self, at: SocketAddr, pid: PeerId, keep: Option<SocketAddr>) {
        self.map.retain(|a, q| *q != pid || Some(*a) == keep);
        self.last = None;
        self.map.insert(at, pid);
    }

    pub(super) fn forget(&mut self, pid: &PeerId) {
        self.map.retain(|_, q| q != pid);
        self.last = None;
    }
}

/// The fast lane's receiver: frames to [`DataPlane::deliver_fast`], batch ends to the TUN
/// coalescer.
pub(super) struct FastSink(pub(super) Weak<DataPlane>);

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The remembered answer never outlives the mapping it came from.
    #[test]
    pub(super) fn fast_peers_forget_what_they_remembered() {
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
    pub(super) fn a_candidate_path_is_heard_beside_the_proven_one() {
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
