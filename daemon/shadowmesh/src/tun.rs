//! The tunnel interface: a Linux TUN device (the `tun` crate opens it and sets the IPv4 address,
//! netmask, MTU and up flag by ioctl), read and written without blocking through tokio's
//! `AsyncFd`, with its IPv6 address and LAN routes set over rtnetlink ([`crate::netlink`]).
//!
//! The `tun` crate's own async wrapper is not used: it pulls `futures` and `tokio-util` into a
//! binary that counts its bytes, and `AsyncFd` over the raw descriptor is all it would add.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use shadowmesh_proto::gso::VNET_HDR_LEN;
use shadowmesh_proto::route::Prefix;
use tokio::io::unix::AsyncFd;
use tun::AbstractDevice;

use crate::netlink;

/// An open, configured TUN device.
pub struct Tun {
    dev: Dev,
    name: String,
    index: u32,
    /// Every packet read or written carries a `virtio_net_hdr` (offload on; see
    /// `shadowmesh_proto::gso`).
    vnet: bool,
}

/// `TUNSETOFFLOAD`, `_IOW('T', 208, unsigned int)` (x86, ARM and the other generic-ioctl
/// architectures; offload is only turned on for those).
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// Offload flags: partial checksums, TSO for IPv4 and IPv6.
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// Whether this build can use TUN offload: the header is in host byte order and our parser
/// reads little-endian, and MIPS numbers its ioctls differently.
pub const OFFLOAD_SUPPORTED: bool = cfg!(all(
    target_endian = "little",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "x86"
    )
));

/// One `read(2)` of the device. (`tun::Device::recv` zeroes a 1.5 KiB stack buffer on every
/// call, one it only uses for a packet-information prefix we do not ask for: ~100 instructions
/// and 24 cache lines per packet, measured with callgrind on a ping through the tunnel.)
fn read(fd: &tun::Device, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the descriptor is open while
    // the device is.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One `write(2)` of a packet to the device.
fn write(fd: &tun::Device, packet: &[u8]) -> io::Result<usize> {
    // SAFETY: `packet` is valid for reads of `packet.len()` bytes; the descriptor is open.
    let n = unsafe { libc::write(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

enum Dev {
    Real {
        dev: tun::Device,
        /// A duplicate of the descriptor, registered with the runtime for readability while
        /// the runtime's reader task reads the device ([`Tun::stop_watching`]).
        watch: RefCell<Option<AsyncFd<OwnedFd>>>,
    },
    /// Counts what is written and never yields a packet (tests of the forwarding path).
    #[cfg(any(test, feature = "test-hooks"))]
    Memory(std::cell::Cell<(u64, u64)>),
}

impl Tun {
    /// Creates (or attaches to) interface `name` with `v4/16` and `v6/48` (the overlay
    /// prefixes: the IPv6 one is the mesh's own /48, never all of `fd00::/8`), MTU `mtu`, and brings it up. Needs CAP_NET_ADMIN and `/dev/net/tun`. With
    /// `offload` (and [`OFFLOAD_SUPPORTED`]), the kernel hands over TCP super-packets of up to
    /// 64 KiB and partial checksums, each packet behind a `virtio_net_hdr`; if the kernel refuses,
    /// the device works without.
    pub fn open(
        name: &str,
        v4: Ipv4Addr,
        v6: Option<Ipv6Addr>,
        mtu: u16,
        offload: bool,
    ) -> io::Result<Tun> {
        let offload = offload && OFFLOAD_SUPPORTED;
        let mut cfg = tun::Configuration::default();
        cfg.tun_name(name)
            .address(v4)
            .netmask(Ipv4Addr::new(255, 255, 0, 0))
            .mtu(mtu)
            .up();
        if offload {
            cfg.platform_config(|p| {
                p.vnet_hdr(true);
            });
        }
        let dev = tun::create(&cfg).map_err(|e| io::Error::other(format!("TUN {name}: {e}")))?;
        dev.set_nonblock()?;
        // With IFF_VNET_HDR every packet has the header, whether or not offload is granted.
        let vnet = offload;
        if offload {
            let flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
            // SAFETY: TUNSETOFFLOAD takes an unsigned int by value; the descriptor is open.
            let r = unsafe { libc::ioctl(dev.as_raw_fd(), TUNSETOFFLOAD as _, flags) };
            if r != 0 {
                log::info!(
                    "TUN offload unavailable ({}): one packet per read",
                    io::Error::last_os_error()
                );
            }
        }
        let name = dev.tun_name().unwrap_or_else(|_| name.to_string());
        let index = dev
            .tun_index()
            .map_err(|e| io::Error::other(format!("TUN {name}: {e}")))? as u32;
        if let Some(v6) = v6 {
            netlink::add_addr(index, IpAddr::V6(v6), 48)
                .map_err(|e| io::Error::other(format!("IPv6 address on {name}: {e}")))?;
        }
        // Readable only: writes never wait (a full device queue drops), and with EPOLLOUT
        // asked for, the kernel reports it after every packet written (one more runtime turn
        // per packet delivered; see `crate::udp`).
        // SAFETY: the device's descriptor is open for the duration of this borrow.
        let dup =
            unsafe { std::os::fd::BorrowedFd::borrow_raw(dev.as_raw_fd()) }.try_clone_to_owned()?;
        // SAFETY: the AsyncFd owns the duplicate, which stays open while registered.
        let watch = unsafe { AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Tun {
            dev: Dev::Real {
                dev,
                watch: RefCell::new(Some(watch)),
            },
            name,
            index,
            vnet,
        })
    }

    /// A stand-in device that only counts the packets written to it and never produces any;
    /// routes are not installed. For tests of the forwarding path without root.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn memory(name: &str) -> Tun {
        Tun {
            dev: Dev::Memory(std::cell::Cell::new((0, 0))),
            name: name.into(),
            index: 0,
            vnet: false,
        }
    }

    /// Packets and bytes written to a [`Tun::memory`] device.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn memory_written(&self) -> (u64, u64) {
        match &self.dev {
            Dev::Memory(c) => c.get(),
            Dev::Real { .. } => (0, 0),
        }
    }

    /// Whether packets carry a `virtio_net_hdr` (offload is on).
    pub fn vnet(&self) -> bool {
        self.vnet
    }

    /// The interface index (0 for a stand-in device).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Once the device is readable, calls `drain`, which reads it and says whether it read
    /// until `WouldBlock`: then the readiness is forgotten (the next poll waits for the kernel
    /// to report more); else the next poll calls `drain` again at once. Pending forever for a
    /// stand-in device or once [`Tun::stop_watching`] was called.
    pub fn poll_drain(
        &self,
        cx: &mut std::task::Context<'_>,
        drain: impl FnOnce() -> bool,
    ) -> std::task::Poll<io::Result<()>> {
        let watch = match &self.dev {
            Dev::Real { watch, .. } => watch,
            #[cfg(any(test, feature = "test-hooks"))]
            Dev::Memory(_) => return std::task::Poll::Pending,
        };
        let w = watch.borrow();
        let Some(fd) = w.as_ref() else {
            return std::task::Poll::Pending;
        };
        let mut guard = std::task::ready!(fd.poll_read_ready(cx))?;
        if drain() {
            guard.clear_ready();
        }
        std::task::Poll::Ready(Ok(()))
    }

    /// The device's descriptor (`None` for a stand-in device).
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        match &self.dev {
            Dev::Real { dev, .. } => Some(dev.as_raw_fd()),
            #[cfg(any(test, feature = "test-hooks"))]
            Dev::Memory(_) => None,
        }
    }

    /// The runtime stops watching the device (a reader of our own takes over, on its own
    /// descriptor set: [`crate::dataplane::thread`]); [`Tun::poll_drain`] stays pending from now on.
    pub fn stop_watching(&self) {
        match &self.dev {
            Dev::Real { watch, .. } => drop(watch.borrow_mut().take()),
            #[cfg(any(test, feature = "test-hooks"))]
            Dev::Memory(_) => {}
        }
    }

    /// Reads one packet if one is waiting now (`WouldBlock` if none): the reader drains a burst
    /// after each wake-up, so that the frames of a burst leave in one `sendmsg`.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.dev {
            Dev::Real { dev, .. } => read(dev, buf),
            #[cfg(any(test, feature = "test-hooks"))]
            Dev::Memory(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Writes one packet if the device takes it now; a full device queue drops the packet (as
    /// a router would) and says so with `WouldBlock`.
    pub fn try_send(&self, packet: &[u8]) -> io::Result<usize> {
        match &self.dev {
            Dev::Real { dev, .. } => write(dev, packet),
            #[cfg(any(test, feature = "test-hooks"))]
            Dev::Memory(c) => {
                let (n, b) = c.get();
                c.set((n + 1, b + packet.len() as u64));
                Ok(packet.len())
            }
        }
    }

    /// Writes the packet in `buf[at..]` if the device takes it now. With offload on, the
    /// `virtio_net_hdr` ("nothing to do") goes into the [`VNET_HDR_LEN`] bytes before `at`,
    /// which the caller leaves free: no copy.
    pub fn try_send_at(&self, buf: &mut [u8], at: usize) -> io::Result<usize> {
        if !self.vnet {
            return self.try_send(&buf[at..]);
        }
        let h = at
            .checked_sub(VNET_HDR_LEN)
            .ok_or_else(|| io::Error::other("no room for the virtio_net_hdr"))?;
        buf[h..at].fill(0);
        self.try_send(&buf[h..])
    }

    /// Routes `p` through this interface.
    pub fn add_route(&self, p: &Prefix) -> io::Result<()> {
        match self.dev {
            Dev::Real { .. } => netlink::add_route(self.index, p),
            #[cfg(any(test, feature = "test-hooks"))]
            Dev::Memory(_) => Ok(()),
        }
    }

    /// Removes the route to `p` through this interface.
    pub fn del_route(&self, p: &Prefix) -> io::Result<()> {
        match self.dev {
            Dev::Real { .. } => netlink::del_route(self.index, p),
            #[cfg(any(test, feature = "test-hooks"))]
            Dev::Memory(_) => Ok(()),
        }
    }

    /// Moves the interface's overlay IPv4 from `old/16` to `new/16` (the old one first: with
    /// `promote_secondaries` off, deleting a primary address would take a secondary with it).
    pub fn set_ipv4(&self, old: Ipv4Addr, new: Ipv4Addr) -> io::Result<()> {
        match self.dev {
            Dev::Real { .. } => {
                if let Err(e) = netlink::del_addr(self.index, IpAddr::V4(old), 16) {
                    if e.raw_os_error() != Some(libc::EADDRNOTAVAIL) {
                        return Err(e);
                    }
                }
                netlink::add_addr(self.index, IpAddr::V4(new), 16)
            }
            #[cfg(any(test, feature = "test-hooks"))]
            Dev::Memory(_) => Ok(()),
        }
    }
}
