//! The data-plane thread: the fast lane's packets are read, sealed, opened and written by a
//! thread that blocks in an `epoll_wait` of its own on the TUN device and the endpoint's socket,
//! while the tokio `current_thread` runtime keeps everything else (QUIC, the DHT, the control
//! plane, timers).
//!
//! Why (BENCHMARKS.md, "Latency: the cold wake-up, and a data-plane thread"): a ping through
//! the tunnel wakes each daemon after a quiet spell. Through the runtime, the time from
//! `epoll_wait` returning to the first `read` was 14 us at the pinging end and 11 us at the
//! echoing end, against boringtun's 6 and 6: the runtime's I/O driver, timer wheel and
//! scheduler run with cold caches before our code does.
//! Here the thread returns from `epoll_wait` into the forwarding code, as boringtun's workers
//! do: 5 and 4 us, as boringtun's.
//!
//! One at a time: the data plane's state (sessions, routes, counters, buffers) is the runtime
//! thread's, in `Rc`s and `RefCell`s, and stays so. A [`Baton`] passes between the two threads:
//! the runtime thread holds it whenever it runs and hands it over while it sleeps in its own
//! `epoll_wait` (tokio's park and unpark hooks, installed by [`crate::block_on_local`]); the
//! data-plane thread takes it for each batch of work. So the state is never touched by both at
//! once, every hand-over is a mutex release and acquire (the happens-before that makes the
//! other thread's writes visible), and nothing in the data plane needed to become `Send`. On a
//! quiet mesh the baton is free when a packet comes: taking it is an uncontended lock. Under
//! load the two threads alternate per burst, first come first served (a ticket lock), so
//! neither starves the other.
//!
//! What the thread must not do is call into the runtime: it spawns nothing (a packet for a
//! member without a connection leaves a dial in the link core's outputs, and the runtime's
//! driver task is woken to carry it out), and the runtime
//! stops watching the TUN and the socket ([`crate::tun::Tun::stop_watching`],
//! [`crate::udp::Udp::stop_reading`]) so that packets do not wake it too. QUIC datagrams it
//! reads go to quinn through the fast lane's stash, and the QUIC driver is woken as a task
//! woken from another thread is.

use std::cell::{Cell, RefCell};
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Wake, Waker};

use quinn::udp::{RecvMeta, UdpSocketState};

use super::DataPlane;
use crate::fastlane::{DemuxSocket, Sink, RX_BUFS, RX_BUF_LEN};

/// Mutual exclusion between the runtime thread and the data-plane thread, handed over in the
/// order asked for (a ticket lock on a mutex and a condition variable).
#[derive(Default)]
pub struct Baton {
    turn: Mutex<Tickets>,
    changed: Condvar,
}

#[derive(Default)]
struct Tickets {
    next: u64,
    serving: u64,
}

impl Baton {
    /// Waits for the baton.
    pub fn take(&self) {
        let mut t = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        let me = t.next;
        t.next += 1;
        while t.serving != me {
            t = self.changed.wait(t).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Hands the baton to whoever asked next.
    pub fn give(&self) {
        let mut t = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        t.serving += 1;
        let waiting = t.next > t.serving;
        drop(t);
        if waiting {
            self.changed.notify_all();
        }
    }
}

thread_local! {
    static BATON: RefCell<Option<Arc<Baton>>> = const { RefCell::new(None) };
    static DATA_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with `baton` as this thread's (held by this thread while it runs; see
/// [`crate::block_on_local`]).
pub(crate) fn with_baton<R>(baton: Arc<Baton>, f: impl FnOnce() -> R) -> R {
    let prev = BATON.with(|b| b.replace(Some(baton)));
    let r = f();
    BATON.with(|b| *b.borrow_mut() = prev);
    r
}

fn baton() -> Option<Arc<Baton>> {
    BATON.with(|b| b.borrow().clone())
}

/// Whether this is a data-plane thread (which must not call into the runtime). False while the
/// thread's locals are torn down (a counting allocator in a test asks then too).
pub fn on_data_thread() -> bool {
    DATA_THREAD.try_with(|d| d.get()).unwrap_or(false)
}

/// Moves one of the two values the data-plane thread needs (the data plane and the fast lane's
/// sink) to it; `Send` only for those two types.
struct Baton1<T>(T);
// SAFETY: the data plane is only used, cloned or dropped while the baton is held, so the two
// threads never touch it (or its `Rc` counts) at once, and the baton's mutex orders accesses.
unsafe impl Send for Baton1<Weak<DataPlane>> {}
// SAFETY: as above: the sink is only used while the baton is held.
unsafe impl Send for Baton1<Option<Sink>> {}

/// The running thread; stops it when dropped.
pub struct Thread {
    stop: Arc<AtomicBool>,
    kick: Arc<Kick>,
}

impl Drop for Thread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.kick.wake_by_ref();
    }
}

/// An eventfd that wakes the thread: to stop it, or when the stash has room again.
struct Kick(OwnedFd);

impl Wake for Kick {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an open eventfd. A full counter
        // (EAGAIN) means a wake-up is already pending.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

const TUN: u64 = 0;
const SOCKET: u64 = 1;
const KICK: u64 = 2;

/// Starts the data-plane thread for `dp` if this thread's runtime passes a baton (it was built
/// by [`crate::block_on_local`]): it reads `tun` and `socket` from now on. `None` if not.
pub(crate) fn start(
    dp: &Rc<DataPlane>,
    sink: Sink,
    demux: Arc<DemuxSocket>,
    tun: RawFd,
    socket: std::net::UdpSocket,
) -> io::Result<Option<Thread>> {
    let Some(baton) = baton() else {
        return Ok(None);
    };
    let state = UdpSocketState::new((&socket).into())?;
    // SAFETY: plain system calls; each descriptor is checked before it is owned.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `ep` was just created and is owned only here.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    // SAFETY: as above.
    let kick = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if kick < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let kick = Arc::new(Kick(unsafe { OwnedFd::from_raw_fd(kick) }));
    for (fd, token) in [
        (tun, TUN),
        (socket.as_raw_fd(), SOCKET),
        (kick.0.as_raw_fd(), KICK),
    ] {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: `ep` and `fd` are open; `ev` is a valid event.
        if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let work = Work {
        dp: Baton1(Rc::downgrade(dp)),
        sink: Baton1(Some(sink)),
        demux,
        socket,
        state,
        kick: kick.clone(),
        stop: stop.clone(),
        baton,
        ep,
    };
    std::thread::Builder::new()
        .name("shadowmesh-dp".into())
        .stack_size(256 * 1024)
        .spawn(move || work.run())?;
    Ok(Some(Thread { stop, kick }))
}

struct Work {
    dp: Baton1<Weak<DataPlane>>,
    sink: Baton1<Option<Sink>>,
    demux: Arc<DemuxSocket>,
    socket: std::net::UdpSocket,
    state: UdpSocketState,
    kick: Arc<Kick>,
    stop: Arc<AtomicBool>,
    baton: Arc<Baton>,
    ep: OwnedFd,
}

impl Work {
    fn run(mut self) {
        DATA_THREAD.with(|d| d.set(true));
        let mut buf = vec![0u8; RX_BUFS * RX_BUF_LEN];
        let mut meta = [RecvMeta::default(); RX_BUFS];
        let room = Waker::from(self.kick.clone());
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // Whatever arrived before the thread started.
        let (mut tun, mut socket) = (true, true);
        // A panic (tests; release builds abort) must not leave the runtime waiting for the
        // baton forever.
        struct GiveOnPanic(Arc<Baton>);
        impl Drop for GiveOnPanic {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.give();
                }
            }
        }
        loop {
            self.baton.take();
            let guard = GiveOnPanic(self.baton.clone());
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let Some(dp) = self.dp.0.upgrade() else {
                break;
            };
            // The TUN first: at the pinging end its packet is the one a reply waits for.
            if tun || dp.tun_backlog() {
                dp.drain_tun();
                tun = dp.tun_backlog();
            }
            let mut quinn = None;
            if socket {
                (socket, quinn) = self.receive(&mut buf, &mut meta, &room);
            }
            drop(dp);
            let more = tun || socket;
            drop(guard);
            self.baton.give();
            if let Some(w) = quinn {
                // QUIC datagrams for the QUIC driver, woken with the baton free.
                w.wake();
            }
            if more {
                // A full burst: the baton went to the runtime if it asked; carry on.
                continue;
            }
            let n = loop {
                // SAFETY: `events` is valid for its length; `ep` is open.
                let n = unsafe {
                    libc::epoll_wait(
                        self.ep.as_raw_fd(),
                        events.as_mut_ptr(),
                        events.len() as i32,
                        -1,
                    )
                };
                if n >= 0 {
                    break n as usize;
                }
                if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    log::error!("data-plane thread: {}", io::Error::last_os_error());
                    self.baton.take();
                    return self.exit();
                }
            };
            for ev in &events[..n] {
                match ev.u64 {
                    TUN => tun = true,
                    SOCKET => socket = true,
                    _ => {
                        let mut b = [0u8; 8];
                        // SAFETY: reads 8 bytes into a live buffer from an open eventfd.
                        let _ = unsafe {
                            libc::read(self.kick.0.as_raw_fd(), b.as_mut_ptr().cast(), 8)
                        };
                        // The stash has room again (or we are stopping: checked above).
                        socket = true;
                    }
                }
            }
        }
        self.exit();
    }

    /// Drops what belongs to the runtime thread's side, with the baton held, and gives it back.
    fn exit(mut self) {
        self.sink.0.take();
        self.dp.0 = Weak::new();
        self.baton.give();
    }

    /// Reads the socket until it is empty, one receive call (up to [`RX_BUFS`] GRO batches) at
    /// a time: frames to the data plane, QUIC datagrams to quinn. Returns whether there may be
    /// more to read now (the batch was full), and the QUIC driver if it has datagrams to take.
    fn receive(
        &mut self,
        buf: &mut [u8],
        meta: &mut [RecvMeta; RX_BUFS],
        room: &Waker,
    ) -> (bool, Option<Waker>) {
        if !self.demux.room_or_wait(room) {
            // the QUIC driver wakes us (the kick) once it has taken some.
            return (false, None);
        }
        let mut it = buf.chunks_mut(RX_BUF_LEN).map(IoSliceMut::new);
        let mut iovs: [IoSliceMut<'_>; RX_BUFS] =
            std::array::from_fn(|_| it.next().unwrap_or_else(|| IoSliceMut::new(&mut [])));
        match self.state.recv((&self.socket).into(), &mut iovs, meta) {
            Ok(n) => {
                let quinn = self
                    .demux
                    .dispatch(buf, &meta[..n.min(RX_BUFS)], self.sink.0.as_ref());
                (n >= RX_BUFS, quinn)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => (false, None),
            // Unreachable ports answered with ICMP: nothing for us (and forgeable).
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => (true, None),
            Err(e) => {
                log::warn!("receiving on the fast lane: {e}");
                (false, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    impl Baton {
        /// Threads waiting for the baton.
        fn waiting(&self) -> u64 {
            let t = self.turn.lock().unwrap();
            t.next - t.serving - 1
        }
    }

    /// Two threads taking turns are never both inside: a read-modify-write that is not atomic
    /// loses no update.
    #[test]
    fn one_holder_at_a_time() {
        let baton = Arc::new(Baton::default());
        let inside = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let run = || {
            let (baton, inside, count) = (baton.clone(), inside.clone(), count.clone());
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    baton.take();
                    assert!(!inside.swap(true, Ordering::SeqCst), "both inside");
                    let c = count.load(Ordering::Relaxed);
                    count.store(c + 1, Ordering::Relaxed);
                    inside.store(false, Ordering::SeqCst);
                    baton.give();
                }
            })
        };
        let (a, b) = (run(), run());
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(count.load(Ordering::Relaxed), 40_000);
    }

    /// A thread that gives the baton and asks again queues behind the one already waiting (a
    /// plain mutex may hand it straight back to the giver, and under load did, for long runs:
    /// the runtime would then starve behind a busy data-plane thread).
    #[test]
    fn the_waiting_thread_goes_first() {
        let baton = Arc::new(Baton::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        baton.take();
        let other = {
            let (baton, order) = (baton.clone(), order.clone());
            std::thread::spawn(move || {
                baton.take();
                order.lock().unwrap().push("waiting thread");
                baton.give();
            })
        };
        while baton.waiting() == 0 {
            std::thread::yield_now();
        }
        baton.give();
        baton.take();
        order.lock().unwrap().push("giver");
        baton.give();
        other.join().unwrap();
        assert_eq!(*order.lock().unwrap(), ["waiting thread", "giver"]);
    }
}
