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

/// The fast lane's receiver: frames to [`DataPlane::deliver_fast`], batch ends to the TUN
/// coalescer.
pub(super) struct FastSink(pub(super) Weak<DataPlane>);

impl crate::fastlane::FrameSink for FastSink {
    fn frame(&self, from: SocketAddr, frame: &mut [u8]) {
        if let Some(dp) = self.0.upgrade() {
            dp.deliver_fast(from, frame);
        }
    }

    fn relay(&self, from: SocketAddr, datagram: &mut [u8]) -> Option<SocketAddr> {
        let dp = self.0.upgrade()?;
        let id = shadowmesh_proto::relay::envelope(datagram)?;
        let (to, next) =
            dp.core
                .borrow_mut()
                .relay_forward(crate::mono_now(), from, id, datagram.len())?;
        shadowmesh_proto::relay::set_envelope(datagram, next);
        Some(to)
    }

    fn end_of_batch(&self) {
        if let Some(dp) = self.0.upgrade() {
            let _ours = alloc_probe::Ours::enter();
            dp.flush_gro();
            dp.drain_tun();
        }
    }
}
