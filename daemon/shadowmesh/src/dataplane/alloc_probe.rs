//! Marks which code runs, so that a counting allocator in a test can tell allocations of our
//! forwarding code from quinn's (`tests/alloc.rs`). Two thread-local flags with the
//! `test-hooks` feature; without it (the shipped binary) the guards are empty and cost nothing.

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
