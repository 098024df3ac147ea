//! RFC 6479 anti-replay window.
//!
//! Used in two steps, as boringtun and wireguard-go do: [`ReplayWindow::check`] before the
//! (expensive) decryption rejects what is certainly a replay or too old, and
//! [`ReplayWindow::mark`] after the tag verified records the counter. Marking only authenticated
//! counters means a forged frame can never advance the window.

use crate::consts::{REJECT_AFTER_MESSAGES, REPLAY_WINDOW_BITS};
use crate::Error;

const BLOCK_BITS: u64 = 64;
const BLOCKS: usize = (REPLAY_WINDOW_BITS / BLOCK_BITS) as usize;
const INDEX_MASK: u64 = BLOCKS as u64 - 1;
/// How far back a counter may be and still be accepted: the bitmap less one block, which the
/// RFC 6479 ring reserves for the block being advanced into.
pub const WINDOW: u64 = REPLAY_WINDOW_BITS - BLOCK_BITS;

/// Sliding bitmap of received counters. Fixed size (256 bytes), no allocation.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest counter marked so far, plus one (0 = nothing marked yet).
    next: u64,
    bitmap: [u64; BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// An empty window.
    pub const fn new() -> Self {
        ReplayWindow {
            next: 0,
            bitmap: [0; BLOCKS],
        }
    }

    /// Would `seq` be accepted? Does not change the window.
    pub fn check(&self, seq: u64) -> Result<(), Error> {
        if seq >= REJECT_AFTER_MESSAGES {
            return Err(Error::CounterExhausted);
        }
        if seq >= self.next {
            return Ok(());
        }
        if self.next - seq > WINDOW {
            return Err(Error::Replayed(seq));
        }
        let block = ((seq / BLOCK_BITS) & INDEX_MASK) as usize;
        if self.bitmap[block] & (1 << (seq % BLOCK_BITS)) != 0 {
            return Err(Error::Replayed(seq));
        }
        Ok(())
    }

    /// Records `seq` as received. Call only after the frame authenticated; re-checks so that a
    /// caller racing two copies of one frame cannot mark twice and accept both.
    pub fn mark(&mut self, seq: u64) -> Result<(), Error> {
        self.check(seq)?;
        if seq >= self.next {
            // Clear the blocks we slide over (at most the whole ring).
            let cur_block = if self.next == 0 {
                None
            } else {
                Some((self.next - 1) / BLOCK_BITS)
            };
            let new_block = seq / BLOCK_BITS;
            match cur_block {
                Some(cur) if new_block > cur => {
                    let diff = (new_block - cur).min(BLOCKS as u64);
                    for i in 1..=diff {
                        self.bitmap[((cur + i) & INDEX_MASK) as usize] = 0;
                    }
                }
                None => self.bitmap = [0; BLOCKS],
                _ => {}
            }
            self.next = seq + 1;
        }
        let block = ((seq / BLOCK_BITS) & INDEX_MASK) as usize;
        self.bitmap[block] |= 1 << (seq % BLOCK_BITS);
        Ok(())
    }

    /// Highest counter marked plus one.
    pub fn next_expected(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_duplicates() {
        let mut w = ReplayWindow::new();
        for s in 0..5000 {
            w.check(s).unwrap();
            w.mark(s).unwrap();
            assert_eq!(w.check(s), Err(Error::Replayed(s)));
        }
    }

    #[test]
    fn reordering_within_window_and_too_old() {
        let mut w = ReplayWindow::new();
        w.mark(10_000).unwrap();
        // Anything within WINDOW behind is fine once.
        for s in (10_001 - WINDOW..10_000).rev() {
            w.mark(s).unwrap();
            assert!(w.mark(s).is_err());
        }
        assert_eq!(
            w.check(10_000 - WINDOW),
            Err(Error::Replayed(10_000 - WINDOW))
        );
        assert_eq!(w.check(0), Err(Error::Replayed(0)));
        // A big jump forward clears the ring: old bits must not alias into new positions.
        w.mark(10_000 + 5 * REPLAY_WINDOW_BITS).unwrap();
        let s = 10_000 + 5 * REPLAY_WINDOW_BITS - 100;
        assert!(w.check(s).is_ok());
    }

    #[test]
    fn exhausted_counter() {
        let w = ReplayWindow::new();
        assert_eq!(w.check(u64::MAX), Err(Error::CounterExhausted));
    }

    /// Compare against a naive model over a pseudo-random walk.
    #[test]
    fn matches_naive_model() {
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut top: u64 = 0;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let jump = (x % 4000) as i64 - 2500;
            let seq = (top as i64 + jump).max(0) as u64;
            let expect_ok = !seen.contains(&seq) && (seq >= top || top - seq <= WINDOW);
            let ok = w.check(seq).is_ok();
            // The real window may reject old-but-in-window counters only if they were seen.
            assert_eq!(ok, expect_ok, "seq {seq} top {top}");
            if ok {
                w.mark(seq).unwrap();
                seen.insert(seq);
                top = top.max(seq + 1);
            }
        }
    }
}
