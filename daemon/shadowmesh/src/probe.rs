//! `shadowmesh probe`: a diagnostic that exercises the whole hop layer against one peer.
//!
//! `--listen ADDR` accepts peers, proves identities and echoes their encrypted DATA frames;
//! `--connect PEERID@ADDR` dials, sends `--count` frames of `--size` bytes (optionally rekeying
//! halfway with `--rekey`, and with `--attack` also sending one replayed and one tampered
//! frame, which the listener must refuse), and reports. Output is one JSON object per line on
//! stdout, so scripts (and `cargo xtask demo`) can read it.

use shadowmesh_crypto::NetworkKey;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shadowmesh_crypto::Identity;
use shadowmesh_link::control::{self, Action};
use shadowmesh_link::timers;
use shadowmesh_proto::frame::FrameType;
use shadowmesh_proto::msg::MsgType;
use tokio::sync::mpsc;

use crate::args::{network_key, parse_peer_addr, CliError, Opts};
use crate::json::Obj;
use crate::node::{read_msg, write_msg, HandshakeError, Node, NodeConfig, Peer};

fn emit(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn peer_event(p: &Peer) -> String {
    Obj::new()
        .str("event", "peer")
        .str("peer_id", &p.peer_id.to_string())
        .str("remote", &p.conn.remote_address().to_string())
        .str(
            "role",
            if p.role == shadowmesh_proto::msg::Role::Dialler {
                "dialler"
            } else {
                "listener"
            },
        )
        .num("handshake_ms", p.stats.elapsed.as_secs_f64() * 1e3)
        .num("rtt_ms", p.stats.rtt.as_secs_f64() * 1e3)
        .uint("udp_tx_bytes", p.stats.udp_tx_bytes)
        .uint("udp_rx_bytes", p.stats.udp_rx_bytes)
        .bool("resumed", p.stats.resumed)
        .finish()
}

/// Entry point of `shadowmesh probe`.
pub fn main(o: &Opts) -> Result<(), CliError> {
    o.only(&[
        "--key",
        "--network-key",
        "--network-key-file",
        "--listen",
        "--connect",
        "--count",
        "--size",
        "--rekey",
        "--attack",
        "--json",
        "--log-level",
    ])?;
    let key = PathBuf::from(o.need("--key")?);
    let nk = network_key(o)?;
    let (id, created) = crate::keyfile::load_or_create(&key)?;
    if created {
        log::info!("created identity {} in {}", id.peer_id(), key.display());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::fail(format!("tokio runtime: {e}")))?;
    match (o.get("--listen"), o.get("--connect")) {
        (Some(l), None) => {
            let addr: SocketAddr = l
                .parse()
                .map_err(|_| CliError::usage(format!("--listen '{l}': expected IP:PORT")))?;
            tokio::task::LocalSet::new().block_on(&rt, listen(id, addr, nk))
        }
        (None, Some(c)) => {
            let (peer, addr) = parse_peer_addr(c)?;
            let count: u32 = o.parse_or("--count", 100)?;
            let size: usize = o.parse_or("--size", 1200)?;
            if !(4..=1400).contains(&size) {
                return Err(CliError::usage("--size must be 4..=1400 bytes"));
            }
            tokio::task::LocalSet::new().block_on(
                &rt,
                connect(
                    id,
                    nk,
                    peer,
                    addr,
                    count,
                    size,
                    o.flag("--rekey"),
                    o.flag("--attack"),
                ),
            )
        }
        _ => Err(CliError::usage(
            "probe needs exactly one of --listen or --connect",
        )),
    }
}

async fn listen(id: Identity, addr: SocketAddr, nk: NetworkKey) -> Result<(), CliError> {
    let node = Node::bind(id, NodeConfig::new(addr, nk))
        .map_err(|e| CliError::fail(format!("binding {addr}: {e}")))?;
    let local = node
        .local_addr()
        .map_err(|e| CliError::fail(e.to_string()))?;
    emit(
        Obj::new()
            .str("event", "listening")
            .str("peer_id", &node.peer_id().to_string())
            .str("addr", &local.to_string())
            .finish(),
    );
    loop {
        tokio::select! {
            r = node.accept() => match r {
                None => break,
                Some(Ok(peer)) => {
                    emit(peer_event(&peer));
                    tokio::task::spawn_local(echo(peer));
                }
                Some(Err(e)) => emit(Obj::new().str("event", "handshake_failed").str("error", &e.to_string()).finish()),
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    node.shutdown().await;
    Ok(())
}

/// Reads control messages into a channel (read_msg is not cancel-safe, so it gets its own task).
fn control_reader(mut recv: crate::quic::RecvStream) -> mpsc::Receiver<(MsgType, Vec<u8>)> {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_local(async move {
        let mut buf = Vec::new();
        while let Ok(t) = read_msg(&mut recv, &mut buf).await {
            if tx.send((t, std::mem::take(&mut buf))).await.is_err() {
                break;
            }
        }
    });
    rx
}

async fn echo(mut peer: Peer) {
    if peer.session.is_none() {
        emit(
            Obj::new()
                .str("event", "dht_only_peer")
                .str("peer_id", &peer.peer_id.to_string())
                .finish(),
        );
        return;
    }
    let mut ctrl = control_reader(peer.control_recv());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let reason = loop {
        tokio::select! {
            d = peer.conn.read_datagram() => match d {
                Ok(d) => {
                    let mut buf = d.to_vec();
                    if let Ok((FrameType::Data, range)) = peer.open_frame(&mut buf) {
                        let _ = peer.send_frame(FrameType::Data, &buf[range]);
                    }
                }
                Err(e) => break HandshakeError::from(e).to_string(),
            },
            // The daemon's control handling (the link core's), rekeys included.
            Some((t, body)) = ctrl.recv() => {
                let session = peer.session.as_mut().expect("checked: member");
                match control::handle(crate::mono_now(), session, t, &body, false) {
                    Action::Send(t, reply) => { let _ = write_msg(&mut peer.control, t, &reply).await; }
                    Action::Close(_, why) => log::warn!("peer {}: {why}", peer.peer_id.short()),
                    other => log::debug!("peer {}: {other:?}", peer.peer_id.short()),
                }
            },
            _ = tick.tick() => {
                let session = peer.session.as_ref().expect("checked: member");
                if timers::check(crate::mono_now(), &timers::activity(session)).keepalive {
                    let _ = peer.send_frame(FrameType::Keepalive, &[]);
                }
            }
        }
    };
    let s = peer.session.as_mut().expect("checked: member").stats;
    emit(
        Obj::new()
            .str("event", "closed")
            .str("peer_id", &peer.peer_id.to_string())
            .str("reason", &reason)
            .uint("frames_in", s.received)
            .uint("frames_out", s.sent)
            .uint("replayed", s.replayed)
            .uint("rejected", s.rejected)
            .uint("rekeys", s.rekeys as u64)
            .finish(),
    );
}

#[allow(clippy::too_many_arguments)]
async fn connect(
    id: Identity,
    nk: NetworkKey,
    peer_id: shadowmesh_proto::PeerId,
    addr: SocketAddr,
    count: u32,
    size: usize,
    rekey: bool,
    attack: bool,
) -> Result<(), CliError> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("literal");
    let node = Node::bind(id, NodeConfig::new(bind, nk))
        .map_err(|e| CliError::fail(format!("bind: {e}")))?;
    let mut peer = node
        .dial(addr, peer_id, None)
        .await
        .map_err(|e| CliError::fail(format!("dialling {peer_id}@{addr}: {e}")))?;
    emit(peer_event(&peer));
    if peer.session.is_none() {
        return Err(CliError::fail(format!(
            "{peer_id} is not a member of this mesh (DHT-only): no frames can flow"
        )));
    }
    let mut ctrl = control_reader(peer.control_recv());
    let mut payload = vec![0u8; size];
    let mut echoed = vec![false; count as usize];
    let mut n_echoed = 0u32;
    let mut last_frame = Vec::new();
    let start = Instant::now();
    for i in 0..count {
        if rekey && i == count / 2 {
            let init = peer
                .session
                .as_mut()
                .expect("checked: member")
                .start_rekey(crate::mono_now())
                .map_err(|e| CliError::fail(format!("rekey: {e}")))?;
            write_msg(&mut peer.control, MsgType::RekeyInit, &init)
                .await
                .map_err(|e| CliError::fail(format!("rekey: {e}")))?;
            let resp = tokio::time::timeout(Duration::from_secs(5), ctrl.recv())
                .await
                .ok()
                .flatten()
                .ok_or_else(|| CliError::fail("rekey: no answer"))?;
            let session = peer.session.as_mut().expect("checked: member");
            match control::handle(crate::mono_now(), session, resp.0, &resp.1, false) {
                Action::Rekeyed => {}
                other => return Err(CliError::fail(format!("rekey: {other:?}"))),
            }
            emit(
                Obj::new()
                    .str("event", "rekeyed")
                    .uint(
                        "epoch",
                        peer.session.as_mut().expect("checked: member").epoch() as u64,
                    )
                    .finish(),
            );
        }
        payload[..4].copy_from_slice(&i.to_be_bytes());
        peer.send_frame(FrameType::Data, &payload)
            .map_err(|e| CliError::fail(format!("send: {e}")))?;
        // Keep at most 64 frames in flight so that no buffer on loopback overflows.
        while i + 1 - n_echoed > 64 {
            if !recv_echo(&mut peer, &mut echoed, &mut n_echoed, &mut last_frame).await {
                break;
            }
        }
    }
    while n_echoed < count {
        if !recv_echo(&mut peer, &mut echoed, &mut n_echoed, &mut last_frame).await {
            break;
        }
    }
    let elapsed = start.elapsed();
    if attack && !last_frame.is_empty() {
        // A captured frame sent again must be refused as a replay, and one with a flipped bit
        // must fail authentication. The listener reports both in its "closed" event.
        let _ = peer
            .conn
            .send_datagram(bytes::Bytes::from(last_frame.clone()));
        let mut tampered = last_frame.clone();
        let n = tampered.len();
        tampered[n / 2] ^= 0x01;
        tampered[7..15].copy_from_slice(&u64::MAX.wrapping_sub(1 << 20).to_be_bytes());
        let _ = peer.conn.send_datagram(bytes::Bytes::from(tampered));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = peer.session.as_mut().expect("checked: member").stats;
    let q = peer.conn.stats();
    emit(
        Obj::new()
            .str("event", "summary")
            .str("peer_id", &peer.peer_id.to_string())
            .uint("sent", count as u64)
            .uint("echoed", n_echoed as u64)
            .uint("bytes_each_way", count as u64 * size as u64)
            .num("seconds", elapsed.as_secs_f64())
            .uint(
                "epoch",
                peer.session.as_mut().expect("checked: member").epoch() as u64,
            )
            .uint("rejected", s.rejected)
            .uint("replayed", s.replayed)
            .uint("udp_tx_bytes", q.udp_tx.bytes)
            .uint("udp_rx_bytes", q.udp_rx.bytes)
            .finish(),
    );
    peer.conn.close(
        crate::quic::VarInt::from_u32(shadowmesh_proto::consts::CLOSE_SHUTDOWN),
        b"done",
    );
    node.shutdown().await;
    if n_echoed != count {
        return Err(CliError::fail(format!(
            "{} of {count} frames were not echoed",
            count - n_echoed
        )));
    }
    Ok(())
}

/// Waits up to 2 s for one echoed frame; false on timeout or connection loss.
async fn recv_echo(peer: &mut Peer, echoed: &mut [bool], n: &mut u32, last: &mut Vec<u8>) -> bool {
    let d = match tokio::time::timeout(Duration::from_secs(2), peer.conn.read_datagram()).await {
        Ok(Ok(d)) => d,
        _ => return false,
    };
    let mut buf = d.to_vec();
    let raw = buf.clone();
    if let Ok((FrameType::Data, range)) = peer.open_frame(&mut buf) {
        let p = &buf[range];
        if p.len() >= 4 {
            let i = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
            if i < echoed.len() && !echoed[i] {
                echoed[i] = true;
                *n += 1;
            }
        }
        *last = raw;
    }
    true
}
