//! `cargo xtask delay-line DEV MS` (run inside a namespace by the NAT lab): a TUN device that
//! gives back every packet written to it `MS` milliseconds later. This kernel has no netem, so
//! the lab routes what its "internet" router forwards through this device (policy routing:
//! everything not arriving from it goes to it) to put a fixed delay on the public side.
//!
//! One thread: `poll` on the device with the time to the next packet due as its timeout, so a
//! packet leaves within a few hundred microseconds of its time. Packets are held in order (one
//! delay for all), at most [`HELD`] at once (beyond that they are dropped, as a full queue
//! would), in buffers reused as they leave.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::Result;

/// Packets held at once (at 20 ms and 3 Gbit/s of 1,500-byte packets: 5,000).
const HELD: usize = 16_384;
const MTU: usize = 1600;

/// Opens TUN device `name` (no packet information header) in this namespace.
fn open_tun(name: &str) -> Result<OwnedFd> {
    // SAFETY: open(2) of a fixed path; the descriptor is owned below.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("/dev/net/tun: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    let n = name.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is laid out as.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(format!(
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

/// Runs the delay line on `name` until killed.
pub fn run(name: &str, delay: Duration) -> Result {
    let fd = open_tun(name)?;
    let raw = fd.as_raw_fd();
    let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::with_capacity(HELD);
    let mut spare: Vec<Vec<u8>> = Vec::new();
    println!("delay line on {name}: {} ms", delay.as_millis());
    loop {
        let now = Instant::now();
        while held.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, p)) = held.pop_front() {
                // SAFETY: writes p.len() bytes from p to our descriptor.
                let _ = unsafe { libc::write(raw, p.as_ptr().cast(), p.len()) };
                spare.push(p);
            }
        }
        let timeout = held.front().map_or(-1, |(t, _)| {
            let d = t.saturating_duration_since(Instant::now());
            // Round up to a millisecond, at least one.
            d.as_micros().div_ceil(1000).max(1) as i32
        });
        let mut pfd = libc::pollfd {
            fd: raw,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if r <= 0 {
            continue;
        }
        if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return Err(format!("{name} is gone"));
        }
        // Everything waiting now, then back to sending what is due.
        for _ in 0..64 {
            let mut b = spare.pop().unwrap_or_else(|| vec![0u8; MTU]);
            b.resize(MTU, 0);
            // SAFETY: reads at most b.len() bytes into b.
            let n = unsafe { libc::read(raw, b.as_mut_ptr().cast(), b.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) {
                    return Err(format!("reading {name}: {e}"));
                }
            }
            if n <= 0 {
                spare.push(b);
                break;
            }
            b.truncate(n as usize);
            if held.len() < HELD {
                held.push_back((Instant::now() + delay, b));
            } else {
                spare.push(b);
            }
            let mut more = libc::pollfd {
                fd: raw,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: as above, without waiting.
            if unsafe { libc::poll(&mut more, 1, 0) } <= 0 {
                break;
            }
        }
    }
}
