//! Exit nodes, the host's side. A gateway that uses an exit (`option exit`) sends its own and
//! its LAN's internet traffic into the tunnel by policy routing, as wg-quick does: its UDP
//! socket is marked and keeps the main table; everything else first looks up main without its
//! default routes (`suppress_prefixlength 0`: the LAN, connected networks and the members'
//! routes still win), then our table, whose default route is the tunnel. The link core sends
//! what arrives to the exit member. With `option exit_fail 'closed'` (the default) the rules
//! stay while the exit is down, so nothing leaks to the local uplink; with `'open'` they are
//! taken away until it is back.
//!
//! A gateway that offers itself (`option exit_node '1'`) forwards what members send it to its
//! uplink with masquerade: IP forwarding on, and an nftables table of ours. On OpenWrt the
//! init script also lets the tunnel's zone forward to `wan` (procd firewall data).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::netlink::{self, Rule};
use shadowmesh_proto::route::Prefix;

pub mod dns;

use shadowmesh_link::engine::{ExitChoice, ExitState};

/// Our routing table: its one route per family is the default route through the tunnel.
pub const TABLE: u32 = 0x736d;
/// The mark the daemon's own socket carries: its packets keep the main table.
pub const FWMARK: u32 = 0x736d;
/// The rules' priorities: after mwan3's and pbr's (which choose an uplink per LAN host before
/// us), before the main table's own rule (32766).
pub const PREF_MAIN: u32 = 32760;
/// `list exit_bypass`: destinations that keep the main table (before the two above).
pub const PREF_BYPASS: u32 = 32759;
pub const PREF_TABLE: u32 = 32761;
/// The nftables table that masquerades members' traffic out of an exit node.
const NFT_TABLE: &str = "shadowmesh_exit";
/// The nftables table that clamps TCP's MSS on a gateway that uses an exit.
const MSS_TABLE: &str = "shadowmesh_mss";
/// The nftables table that sends a gateway's DNS to its exit.
const DNS_TABLE: &str = "shadowmesh_dns";

/// A chain that clamps the MSS of TCP connections forwarded into tunnel `interface` to its
/// MTU (the LAN host's SYN at the user's side, the server's SYN-ACK at the exit), so that
/// neither end sends segments the tunnel must refuse.
fn clamp_chain(interface: &str) -> String {
    format!(
        "\tchain clamp {{\n\t\ttype filter hook forward priority mangle; policy accept;\n\t\toifname \"{interface}\" tcp flags syn tcp option maxseg size set rt mtu counter\n\t}}\n"
    )
}

/// `option exit_fail`: what internet traffic does while the exit is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExitFail {
    /// Dropped: nothing leaves by the local uplink.
    #[default]
    Closed,
    /// Leaves by the local uplink until the exit is back.
    Open,
}

impl ExitFail {
    /// The option's value.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitFail::Closed => "closed",
            ExitFail::Open => "open",
        }
    }
}

/// Parses `option exit_fail`.
pub fn parse_fail(v: &str) -> Result<ExitFail, String> {
    match v {
        "closed" => Ok(ExitFail::Closed),
        "open" => Ok(ExitFail::Open),
        _ => Err("expected closed or open".into()),
    }
}

/// Parses `option exit`: empty (none), `auto`, or a member's PeerId.
pub fn parse_choice(v: &str) -> Result<ExitChoice, String> {
    match v {
        "" | "0" | "none" => Ok(ExitChoice::None),
        "auto" => Ok(ExitChoice::Auto),
        id => id
            .parse()
            .map(ExitChoice::Peer)
            .map_err(|_| "expected auto or a member's PeerId (64 hex digits)".into()),
    }
}

/// The option's value for `choice`.
pub fn choice_str(choice: ExitChoice) -> String {
    match choice {
        ExitChoice::None => String::new(),
        ExitChoice::Auto => "auto".into(),
        ExitChoice::Peer(p) => p.to_string(),
    }
}

/// The policy routing that sends internet traffic into tunnel `ifindex`, while installed.
#[derive(Debug)]
pub struct Routing {
    ifindex: u32,
    interface: String,
    /// `list exit_bypass`.
    bypass: Vec<Prefix>,
    installed: bool,
    /// The exit's overlay addresses our DNS goes to (while installed).
    dns: Option<(Option<Ipv4Addr>, Option<Ipv6Addr>)>,
}

impl Routing {
    /// Nothing installed yet; `interface` is the tunnel's name, `bypass` the destinations
    /// that keep the local uplink.
    pub fn new(ifindex: u32, interface: &str, bypass: Vec<Prefix>) -> Routing {
        Routing {
            ifindex,
            interface: interface.into(),
            bypass,
            installed: false,
            dns: None,
        }
    }

    /// Whether the rules are in place.
    pub fn installed(&self) -> bool {
        self.installed
    }

    /// Installs our table's default routes and the two rules per family (leftovers of a
    /// daemon that died are replaced).
    pub fn install(&mut self) -> io::Result<()> {
        if self.installed {
            return Ok(());
        }
        clear(self.ifindex);
        for v6 in [false, true] {
            netlink::set_table_default(self.ifindex, v6, TABLE, true)?;
            netlink::rule(true, &main_rule(v6))?;
            netlink::rule(true, &table_rule(v6))?;
        }
        for p in &self.bypass {
            netlink::rule(true, &bypass_rule(p.addr.is_ipv6(), Some(*p)))?;
        }
        self.installed = true;
        let _ = nft(&format!("delete table inet {MSS_TABLE}\n"));
        let clamp = format!(
            "table inet {MSS_TABLE} {{\n{}}}\n",
            clamp_chain(&self.interface)
        );
        if let Err(e) = nft(&clamp) {
            log::warn!("exit: no TCP MSS clamping ({e}): path MTU discovery must do");
        }
        log::info!("internet traffic goes through the exit (table {TABLE}, rules {PREF_MAIN} and {PREF_TABLE})");
        Ok(())
    }

    /// Takes the rules and routes away.
    pub fn remove(&mut self) {
        if std::mem::take(&mut self.installed) {
            clear(self.ifindex);
            let _ = nft(&format!("delete table inet {MSS_TABLE}\n"));
            if self.dns.take().is_some() {
                let _ = nft(&format!("delete table inet {DNS_TABLE}\n"));
            }
            log::info!("internet traffic leaves by this host's own uplink again");
        }
    }

    /// Sends our DNS to the exit at overlay addresses `v4`, `v6` (while the rules are in place).
    fn follow_dns(&mut self, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) {
        let want = (v4.is_some() || v6.is_some()).then_some((v4, v6));
        if !self.installed || self.dns == want {
            return;
        }
        let _ = nft(&format!("delete table inet {DNS_TABLE}\n"));
        self.dns = None;
        if want.is_none() {
            return;
        }
        // Tried once per exit: a failure is logged, not retried every half second.
        self.dns = want;
        match nft(&dns::redirect_rules(DNS_TABLE, &self.interface, v4, v6)) {
            Ok(()) => {
                log::info!(
                    "exit: DNS goes to the exit ({v4:?}, {v6:?}, port {})",
                    dns::PORT
                );
            }
            Err(e) => log::error!("exit: sending DNS through the exit: {e}"),
        }
    }

    /// Installs or removes the rules as the exit's state and the fail mode ask; DNS goes to
    /// the exit at overlay addresses `addrs`.
    pub fn follow(
        &mut self,
        state: ExitState,
        fail: ExitFail,
        addrs: (Option<Ipv4Addr>, Option<Ipv6Addr>),
    ) {
        let want = match (state, fail) {
            (ExitState::Off, _) => false,
            (ExitState::Up, _) => true,
            (_, ExitFail::Closed) => true,
            (_, ExitFail::Open) => false,
        };
        if want {
            if let Err(e) = self.install() {
                log::error!("exit: installing the policy routing: {e}");
                clear(self.ifindex);
                self.installed = false;
            }
            self.follow_dns(addrs.0, addrs.1);
        } else {
            self.remove();
        }
    }
}

impl Drop for Routing {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Everything that main's routes other than default ones carry keeps them.
fn main_rule(v6: bool) -> Rule {
    Rule {
        v6,
        pref: PREF_MAIN,
        table: 254,
        not_mark: None,
        suppress: Some(0),
        dst: None,
    }
}

/// Everything else but the daemon's own packets looks up our table.
fn table_rule(v6: bool) -> Rule {
    Rule {
        v6,
        pref: PREF_TABLE,
        table: TABLE,
        not_mark: Some(FWMARK),
        suppress: None,
        dst: None,
    }
}

/// Destination `dst` keeps the main table (`None`: any, to delete them all).
fn bypass_rule(v6: bool, dst: Option<Prefix>) -> Rule {
    Rule {
        v6,
        pref: PREF_BYPASS,
        table: 254,
        not_mark: None,
        suppress: None,
        dst,
    }
}

/// Deletes our rules and our table's routes, whoever left them (errors: already gone).
pub fn clear(ifindex: u32) {
    for v6 in [false, true] {
        while netlink::rule(false, &table_rule(v6)).is_ok() {}
        while netlink::rule(false, &main_rule(v6)).is_ok() {}
        while netlink::rule(false, &bypass_rule(v6, None)).is_ok() {}
        let _ = netlink::set_table_default(ifindex, v6, TABLE, false);
    }
}

/// Whether the daemon's own sockets are marked (an exit is in use).
static MARKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks `fd`, one of the daemon's own sockets (the port mapper's search for the router), as
/// its QUIC socket is while an exit is in use; errors are the caller's to log.
pub fn mark_own(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    if MARKING.load(std::sync::atomic::Ordering::Relaxed) {
        mark_socket(fd)
    } else {
        Ok(())
    }
}

/// Marks `fd` (the daemon's UDP socket) so that its packets keep the main table.
pub fn mark_socket(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mark: libc::c_int = FWMARK as libc::c_int;
    // SAFETY: setsockopt with a valid descriptor, a pointer to an int and its size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        MARKING.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Offers this gateway as an exit: IPv4 and IPv6 forwarding on, and members' traffic from
/// tunnel `interface` masqueraded to every other interface.
pub fn serve(interface: &str) -> io::Result<()> {
    for (path, what) in [
        ("/proc/sys/net/ipv4/ip_forward", "IPv4 forwarding"),
        ("/proc/sys/net/ipv6/conf/all/forwarding", "IPv6 forwarding"),
    ] {
        std::fs::write(path, b"1").map_err(|e| io::Error::other(format!("{what}: {e}")))?;
    }
    let _ = nft(&format!("delete table inet {NFT_TABLE}\n"));
    nft(&format!(
        "table inet {NFT_TABLE} {{\n\tchain post {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tiifname \"{interface}\" oifname != \"{interface}\" masquerade\n\t}}\n{}}}\n",
        clamp_chain(interface)
    ))
}

/// Stops masquerading members' traffic (forwarding stays as it is: others may need it).
pub fn unserve() {
    if nft(&format!("delete table inet {NFT_TABLE}\n")).is_ok() {
        log::info!("exit: masquerade removed");
    }
}

/// Runs `nft -f -` with `rules` on its standard input (its messages go to our standard
/// error, hence the log). Spawned with `posix_spawnp` rather than `std::process::Command`,
/// whose pipes, environment and output capture cost a router's binary tens of KiB.
fn nft(rules: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two descriptors, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and ours alone.
    let (read, mut write) = unsafe {
        (
            OwnedFd::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let argv: [*mut libc::c_char; 4] = [
        c"nft".as_ptr().cast_mut(),
        c"-f".as_ptr().cast_mut(),
        c"-".as_ptr().cast_mut(),
        std::ptr::null_mut(),
    ];
    let envp: [*mut libc::c_char; 1] = [std::ptr::null_mut()];
    let mut pid: libc::pid_t = 0;
    // SAFETY: the file actions are initialised before use and destroyed after; argv and envp
    // are NULL-terminated arrays of NUL-terminated strings that outlive the call; the pipe's
    // read end becomes the child's standard input (dup2 clears its close-on-exec flag).
    let spawned = unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut fa);
        libc::posix_spawn_file_actions_adddup2(&mut fa, fds[0], 0);
        let r = libc::posix_spawnp(
            &mut pid,
            c"nft".as_ptr(),
            &fa,
            std::ptr::null(),
            argv.as_ptr(),
            envp.as_ptr(),
        );
        libc::posix_spawn_file_actions_destroy(&mut fa);
        r
    };
    drop(read);
    if spawned != 0 {
        let e = io::Error::from_raw_os_error(spawned);
        return Err(io::Error::other(format!(
            "nft: {e} (is nftables installed?)"
        )));
    }
    let wrote = write.write_all(rules.as_bytes());
    drop(write);
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waits for the child we spawned.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    wrote?;
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(
            "nft refused the rules (its message is in the log)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        crate::config::Config::parse(t, std::path::Path::new("/etc/config/shadowmesh"))
    }

    #[test]
    fn exits_are_off_unless_asked() {
        use shadowmesh_link::engine::ExitChoice;
        let c = parse("config shadowmesh\n").unwrap();
        assert_eq!(
            (c.exit_node, c.exit, c.exit_fail),
            (false, ExitChoice::None, crate::exit::ExitFail::Closed)
        );
        let id = "cd".repeat(32);
        let c = parse(&format!(
            "config shadowmesh\n option exit_node '1'\n option exit '{id}'\n option exit_fail 'open'\n"
        ))
        .unwrap();
        assert!(c.exit_node);
        assert_eq!(c.exit, ExitChoice::Peer(id.parse().unwrap()));
        assert_eq!(c.exit_fail, crate::exit::ExitFail::Open);
        let b = parse("config shadowmesh\n list exit_bypass '203.0.113.0/24'\n").unwrap();
        assert_eq!(b.exit_bypass.len(), 1);
        assert!(b
            .started_json()
            .contains("\"exit_bypass\":[\"203.0.113.0/24\"]"));
        assert!(parse("config shadowmesh\n list exit_bypass '203.0.113.1/24'\n").is_err());
        assert!(c.started_json().contains(&format!("\"exit\":\"{id}\"")));
        for (opt, v) in [
            ("exit", "gw2"),
            ("exit_fail", "leak"),
            ("exit_node", "yes please"),
        ] {
            let e = parse(&format!("config shadowmesh\n option {opt} '{v}'\n")).unwrap_err();
            assert_eq!(e.option.as_deref(), Some(opt), "{v}");
        }
    }

    #[test]
    fn options_parse() {
        assert_eq!(parse_choice(""), Ok(ExitChoice::None));
        assert_eq!(parse_choice("auto"), Ok(ExitChoice::Auto));
        let id = "ab".repeat(32);
        assert_eq!(
            parse_choice(&id).map(choice_str),
            Ok(id.clone()),
            "a PeerId round-trips"
        );
        assert!(parse_choice("b").is_err());
        assert_eq!(parse_fail("closed"), Ok(ExitFail::Closed));
        assert_eq!(parse_fail("open"), Ok(ExitFail::Open));
        assert!(parse_fail("leaky").is_err());
    }
}
