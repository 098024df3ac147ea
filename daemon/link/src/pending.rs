//! Packets for a member we hold no link with: queued while it is dialled.
//!
//! The first packet for such a member starts a dial; the next ones wait in a bounded queue
//! (what does not fit is dropped and counted, as a router's queue would); when the link comes
//! up they are sent in order, and when the dial ends without one they are dropped, so that the
//! next packet may try again.

use std::collections::VecDeque;

/// What to do with a packet for a member without a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The packet is queued (else it was dropped: the queue is full).
    pub queued: bool,
    /// Start a dial: none is under way.
    pub dial: bool,
}

/// One member's queue and dial state.
#[derive(Debug, Default)]
pub struct Pending {
    queue: VecDeque<Vec<u8>>,
    dialling: bool,
}

impl Pending {
    /// Holds `packet` (copied) for at most `max` packets in all.
    pub fn hold(&mut self, packet: &[u8], max: usize) -> Held {
        let queued = self.queue.len() < max;
        if queued {
            self.queue.push_back(packet.to_vec());
        }
        let dial = !self.dialling;
        self.dialling = true;
        Held { queued, dial }
    }

    /// A dial was started for another reason (our address changed; peer exchange).
    pub fn dialling_now(&mut self) {
        self.dialling = true;
    }

    /// Whether a dial is under way.
    pub fn dialling(&self) -> bool {
        self.dialling
    }

    /// The link is up: the queued packets, oldest first, to send now.
    pub fn linked(&mut self) -> VecDeque<Vec<u8>> {
        self.dialling = false;
        std::mem::take(&mut self.queue)
    }

    /// The dial ended without a link: drops what was queued; returns how many.
    pub fn failed(&mut self) -> usize {
        self.dialling = false;
        let n = self.queue.len();
        self.queue.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_dial_bounded_queue_flushed_in_order() {
        let mut p = Pending::default();
        assert_eq!(
            p.hold(b"1", 2),
            Held {
                queued: true,
                dial: true
            }
        );
        assert_eq!(
            p.hold(b"2", 2),
            Held {
                queued: true,
                dial: false
            }
        );
        assert_eq!(
            p.hold(b"3", 2),
            Held {
                queued: false,
                dial: false
            }
        );
        assert!(p.dialling());
        let q: Vec<Vec<u8>> = p.linked().into();
        assert_eq!(q, vec![b"1".to_vec(), b"2".to_vec()]);
        assert!(!p.dialling());
        assert!(p.linked().is_empty());
    }

    #[test]
    fn a_failed_dial_drops_the_queue_and_lets_the_next_packet_try_again() {
        let mut p = Pending::default();
        p.hold(b"1", 16);
        p.hold(b"2", 16);
        assert_eq!(p.failed(), 2);
        assert_eq!(
            p.hold(b"3", 16),
            Held {
                queued: true,
                dial: true
            }
        );
    }
}
