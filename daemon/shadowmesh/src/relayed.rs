//! Members reached through a relay, as the endpoint's socket sees them: each circuit a relay
//! opened for us has a local address in 240.0.0.0/8 ([`shadowmesh_proto::relay::mapped`]) that
//! quinn dials, accepts from and sends to like any other. A datagram quinn sends there leaves
//! for the relay in an envelope naming the circuit; one that arrives from the relay with that
//! circuit's id comes out of the socket from the local address. The relay forwards the QUIC
//! connection's own packets, so what crosses it is end to end: the relay reads and forges
//! nothing, and the session does not change when a direct path replaces the circuit.
//!
//! The table is bounded ([`RELAYED_MAX`]); it is shared between the QUIC driver (sends) and
//! whoever reads the socket (the runtime or the data-plane thread), behind a mutex that is
//! never held across anything but a copy and a `sendmsg`.

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use quinn::udp::Transmit;
use quinn::AsyncUdpSocket;
use shadowmesh_proto::relay::{mapped, mapped_slot, set_envelope, ENVELOPE_LEN};
use shadowmesh_proto::PeerId;

/// Circuits we are an end of at once (each a local address). The oldest goes when more come.
pub const RELAYED_MAX: usize = 64;

/// One circuit we are an end of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The relay.
    pub relay: PeerId,
    /// Where our link to the relay is.
    pub relay_addr: SocketAddr,
    /// The id our envelopes carry.
    pub id: u32,
    /// The member at the other end.
    pub peer: PeerId,
    /// When it was mapped (a counter: the oldest goes first).
    age: u64,
}

#[derive(Default)]
struct Table {
    slots: Vec<Option<Entry>>,
    next_age: u64,
    /// Where an envelope and a datagram are put together.
    scratch: Vec<u8>,
}

/// The circuits we are an end of.
#[derive(Default)]
pub struct Relayed {
    table: Mutex<Table>,
}

impl Relayed {
    fn table(&self) -> MutexGuard<'_, Table> {
        // Nothing panics while holding it; a poisoned table is still consistent.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives the circuit `id` through `relay` (at `relay_addr`) to `peer` a local address; the
    /// same one again if it has one.
    pub fn map(&self, relay: PeerId, relay_addr: SocketAddr, id: u32, peer: PeerId) -> SocketAddr {
        let mut t = self.table();
        t.next_age += 1;
        let age = t.next_age;
        let entry = Entry {
            relay,
            relay_addr,
            id,
            peer,
            age,
        };
        let same = |e: &Entry| e.relay_addr == relay_addr && e.id == id;
        let slot = if let Some(i) = t.slots.iter().position(|e| e.as_ref().is_some_and(same)) {
            i
        } else if let Some(i) = t.slots.iter().position(Option::is_none) {
            i
        } else if t.slots.len() < RELAYED_MAX {
            t.slots.push(None);
            t.slots.len() - 1
        } else {
            let oldest = t
                .slots
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.map_or(0, |e| e.age))
                .map_or(0, |(i, _)| i);
            oldest
        };
        t.slots[slot] = Some(entry);
        mapped(slot as u32)
    }

    /// Forgets the circuit behind `local`.
    pub fn unmap(&self, local: SocketAddr) {
        if let Some(s) = mapped_slot(local) {
            if let Some(e) = self.table().slots.get_mut(s as usize) {
                *e = None;
            }
        }
    }

    /// The circuit behind `local`.
    pub fn get(&self, local: SocketAddr) -> Option<Entry> {
        let s = mapped_slot(local)? as usize;
        self.table().slots.get(s).copied().flatten()
    }

    /// The local address of the circuit `id` of the relay at `from`.
    #[inline]
    pub fn local(&self, from: SocketAddr, id: u32) -> Option<SocketAddr> {
        let t = self.table();
        if t.slots.is_empty() {
            return None;
        }
        t.slots
            .iter()
            .position(|e| e.is_some_and(|e| e.id == id && e.relay_addr == from))
            .map(|i| mapped(i as u32))
    }

    /// Sends what quinn gave for a local address to its relay, each datagram in an envelope
    /// (a datagram to a circuit we no longer know is lost, as on a dead path).
    pub fn send(&self, socket: &dyn AsyncUdpSocket, t: &Transmit<'_>) -> io::Result<()> {
        let mut table = self.table();
        let Some(e) =
            mapped_slot(t.destination).and_then(|s| table.slots.get(s as usize).copied().flatten())
        else {
            return Ok(());
        };
        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
        for d in t.contents.chunks(seg) {
            let buf = &mut table.scratch;
            buf.clear();
            buf.resize(ENVELOPE_LEN, 0);
            set_envelope(buf, e.id);
            buf.extend_from_slice(d);
            socket.try_send(&Transmit {
                destination: e.relay_addr,
                ecn: t.ecn,
                contents: buf,
                segment_size: None,
                src_ip: t.src_ip,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowmesh_proto::relay::{envelope, is_mapped};

    fn a(i: u8) -> SocketAddr {
        ([192, 0, 2, i], 4433).into()
    }

    #[test]
    fn circuits_get_local_addresses_both_ways_and_the_oldest_goes() {
        let r = Relayed::default();
        let (relay, peer) = (PeerId([1; 32]), PeerId([2; 32]));
        let l = r.map(relay, a(1), 7, peer);
        assert!(is_mapped(l));
        assert_eq!(
            r.map(relay, a(1), 7, peer),
            l,
            "the same circuit, the same address"
        );
        assert_eq!(r.local(a(1), 7), Some(l));
        assert_eq!(r.local(a(2), 7), None, "another relay's id 7");
        assert_eq!(
            r.get(l).map(|e| (e.relay, e.peer, e.id)),
            Some((relay, peer, 7))
        );
        let all: Vec<SocketAddr> = (0..RELAYED_MAX as u32)
            .map(|i| r.map(relay, a(1), 100 + i, peer))
            .collect();
        assert_eq!(r.local(a(1), 7), None, "the oldest made room");
        assert!(all.iter().all(|x| r.get(*x).is_some()));
        r.unmap(all[3]);
        assert_eq!(r.get(all[3]), None);
        assert_eq!(r.local(a(1), 103), None);
    }

    #[test]
    fn what_quinn_sends_to_a_circuit_leaves_in_envelopes() {
        crate::block_on_local(async {
            let r = Relayed::default();
            let relay = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let me =
                crate::udp::Udp::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
            let l = r.map(
                PeerId([1; 32]),
                relay.local_addr().unwrap(),
                0xABCD,
                PeerId([2; 32]),
            );
            let two = [[5u8; 100], [6u8; 100]].concat();
            let t = Transmit {
                destination: l,
                ecn: None,
                contents: &two,
                segment_size: Some(100),
                src_ip: None,
            };
            r.send(&*me, &t).unwrap();
            let mut b = [0u8; 200];
            for want in [5u8, 6] {
                let n = relay.recv(&mut b).unwrap();
                assert_eq!(n, ENVELOPE_LEN + 100);
                assert_eq!(envelope(&b[..n]), Some(0xABCD));
                assert!(b[ENVELOPE_LEN..n].iter().all(|x| *x == want));
            }
            // An unknown circuit: nothing leaves.
            r.unmap(l);
            r.send(&*me, &t).unwrap();
            relay.set_nonblocking(true).unwrap();
            assert!(relay.recv(&mut b).is_err());
        })
        .expect("tokio runtime");
    }
}
