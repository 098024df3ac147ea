//! Real quinn endpoints on 127.0.0.1: the hop-layer handshake, its failure modes, and frames.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shadowmesh::node::{HandshakeError, Node, NodeConfig, Peer};
use shadowmesh_crypto::record::{build_record, RecordParams};
use shadowmesh_crypto::tls::KxPolicy;
use shadowmesh_crypto::Identity;
use shadowmesh_proto::consts::*;
use shadowmesh_proto::frame::FrameType;
use shadowmesh_proto::record::Payload;
use shadowmesh_proto::PeerId;

const NK: [u8; 32] = [0x42; 32];

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn node_with(cfg: impl FnOnce(&mut NodeConfig)) -> Node {
    let mut c = NodeConfig::new(loopback(), NK);
    c.handshake_timeout = Duration::from_secs(5);
    cfg(&mut c);
    Node::bind(Identity::generate(), c).unwrap()
}

fn node() -> Node {
    node_with(|_| {})
}

/// Runs `accept` on `server` and `dial` on `client` concurrently.
async fn connect(
    client: &Node,
    server: &Node,
    expect: PeerId,
    pin: Option<[u8; 32]>,
) -> (Result<Peer, HandshakeError>, Result<Peer, HandshakeError>) {
    let addr = server.local_addr().unwrap();
    let (d, a) = tokio::join!(client.dial(addr, expect, pin), async {
        server.accept().await.expect("endpoint open")
    });
    (d, a)
}

/// The daemon's runtime: one thread, with a `LocalSet` (endpoints drive themselves with
/// `spawn_local`).
struct Rt(tokio::runtime::Runtime);

impl Rt {
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        tokio::task::LocalSet::new().block_on(&self.0, f)
    }
}

fn rt() -> Rt {
    Rt(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap())
}

#[test]
fn two_nodes_handshake_learn_peer_ids_and_exchange_frames() {
    rt().block_on(async {
        let a = node();
        let b = node();
        let pin = Some(b.identity().ed25519_public());
        let (d, l) = connect(&a, &b, b.peer_id(), pin).await;
        let mut d = d.unwrap();
        let mut l = l.unwrap();
        assert_eq!(d.peer_id, b.peer_id());
        assert_eq!(
            l.peer_id,
            a.peer_id(),
            "listener learned the dialler's PeerId from HELLO"
        );
        assert_eq!(d.record.keys.ed25519, b.identity().ed25519_public());
        assert!(d.stats.udp_tx_bytes > 0 && l.stats.udp_rx_bytes > 0);
        // A full tunnel packet (the default MTU) fits one datagram from the first packet on
        // (quinn's own path-MTU discovery would start at 1,200).
        let mtu = shadowmesh::node::DEFAULT_TUNNEL_MTU as usize;
        for c in [&d.conn, &l.conn] {
            let max = c.max_datagram_size().unwrap();
            assert!(max >= mtu + FRAME_OVERHEAD, "max datagram {max}");
        }
        let mut big = vec![0u8; mtu];
        big[0] = 0x45;
        d.send_frame(FrameType::Data, &big).unwrap();
        let mut buf = l.conn.read_datagram().await.unwrap().to_vec();
        let (_, r) = l.open_frame(&mut buf).unwrap();
        assert_eq!(&buf[r], &big[..]);

        // Frames both ways over QUIC datagrams.
        for i in 0..50u32 {
            d.send_frame(FrameType::Data, &i.to_be_bytes()).unwrap();
            let mut buf = l.conn.read_datagram().await.unwrap().to_vec();
            let (k, r) = l.open_frame(&mut buf).unwrap();
            assert_eq!(k, FrameType::Data);
            assert_eq!(&buf[r], &i.to_be_bytes());
            l.send_frame(FrameType::Data, b"pong").unwrap();
            let mut buf = d.conn.read_datagram().await.unwrap().to_vec();
            let (_, r) = d.open_frame(&mut buf).unwrap();
            assert_eq!(&buf[r], b"pong");
        }
        assert_eq!(l.session.as_ref().unwrap().stats.received, 51);
    });
}

#[test]
fn wrong_pinned_key_fails_in_tls() {
    rt().block_on(async {
        let a = node();
        let b = node();
        let wrong = Identity::generate().ed25519_public();
        let (d, l) = connect(&a, &b, b.peer_id(), Some(wrong)).await;
        assert!(
            matches!(d, Err(HandshakeError::Connection(_))),
            "dialler must refuse the unpinned key: {d:?}"
        );
        assert!(l.is_err());
    });
}

#[test]
fn wrong_expected_peer_id_fails_after_hello() {
    rt().block_on(async {
        let a = node();
        let b = node();
        let someone_else = Identity::generate().peer_id();
        let (d, _l) = connect(&a, &b, someone_else, None).await;
        // The listener refuses a HELLO addressed to another PeerId.
        // Refused as forged, or (a record wrong only by the clock) with the listener's time.
        let now = shadowmesh::unix_now();
        assert!(
            matches!(
                d,
                Err(HandshakeError::Rejected {
                    code: CLOSE_AUTH_FAILED
                })
            ) || matches!(d, Err(HandshakeError::ClockRejected { peer_now }) if peer_now.abs_diff(now) < 5),
            "{d:?}"
        );
    });
}

#[test]
fn wrong_network_key_is_refused_before_any_frame() {
    rt().block_on(async {
        let a = node_with(|c| c.network_key = Some([0x99; 32].into()));
        let b = node();
        let (d, l) = connect(&a, &b, b.peer_id(), None).await;
        assert!(
            matches!(
                d,
                Err(HandshakeError::Rejected {
                    code: CLOSE_WRONG_NETWORK
                })
            ),
            "{d:?}"
        );
        assert!(
            matches!(
                l,
                Err(HandshakeError::Verify(
                    shadowmesh_crypto::Error::WrongNetworkKey
                ))
            ),
            "{l:?}"
        );
        // No session exists on either side, so no frame can have been accepted.
    });
}

#[test]
fn seed_without_network_key_is_a_dht_only_peer() {
    rt().block_on(async {
        let member = node();
        let seed = Node::bind(Identity::generate(), NodeConfig::dht_only(loopback())).unwrap();
        // Member dials seed, and seed dials member: both authenticate, neither gets a session.
        let (d, l) = connect(&member, &seed, seed.peer_id(), None).await;
        let (mut d, l) = (d.unwrap(), l.unwrap());
        assert_eq!((d.peer_id, l.peer_id), (seed.peer_id(), member.peer_id()));
        assert!(d.session.is_none() && l.session.is_none());
        assert!(matches!(
            d.send_frame(FrameType::Data, b"x"),
            Err(shadowmesh::node::FrameError::NotMember)
        ));
        let (d, l) = connect(&seed, &member, member.peer_id(), None).await;
        let (d, l) = (d.unwrap(), l.unwrap());
        assert!(d.session.is_none() && l.session.is_none());
        // Two members still get their session.
        let other = node();
        let (d, l) = connect(&member, &other, other.peer_id(), None).await;
        assert!(d.unwrap().session.is_some() && l.unwrap().session.is_some());
    });
}

#[test]
fn classical_only_client_cannot_connect() {
    rt().block_on(async {
        let a = node_with(|c| c.kx = KxPolicy::ClassicalOnly);
        let b = node();
        let (d, l) = connect(&a, &b, b.peer_id(), None).await;
        match d {
            Err(HandshakeError::Connection(
                shadowmesh::quic::ConnectionError::ConnectionClosed(c),
            )) => {
                // TLS alert handshake_failure (40) as a QUIC CRYPTO_ERROR (0x100 + alert).
                assert_eq!(u64::from(c.error_code), 0x100 + 40, "{c:?}");
            }
            other => panic!("classical-only dial must fail in TLS: {other:?}"),
        }
        assert!(l.is_err());
        // And a classical-only listener is refused by a hybrid dialler.
        let c = node();
        let s = node_with(|c| c.kx = KxPolicy::ClassicalOnly);
        let (d, _) = connect(&c, &s, s.peer_id(), None).await;
        assert!(d.is_err());
    });
}

/// Presents `record` instead of the node's own in HELLO, over a real connection.
fn forged_hello_is_refused(forge: impl FnOnce(&Identity, Vec<u8>) -> Vec<u8>) -> HandshakeError {
    forged_hello_from(node, forge)
}

/// As [`forged_hello_is_refused`], from a DHT-only node: its HELLO is signed on its own, so the
/// record's own signatures are what prove it. (A member's HELLO leaves with its INIT under one
/// signature over both, which covers every byte of the record.)
fn forged_seed_hello_is_refused(
    forge: impl FnOnce(&Identity, Vec<u8>) -> Vec<u8>,
) -> HandshakeError {
    forged_hello_from(
        || Node::bind(Identity::generate(), NodeConfig::dht_only(loopback())).unwrap(),
        forge,
    )
}

fn forged_hello_from(
    make: impl FnOnce() -> Node,
    forge: impl FnOnce(&Identity, Vec<u8>) -> Vec<u8>,
) -> HandshakeError {
    rt().block_on(async {
        let mut a = make();
        let b = node();
        let forged = forge(a.identity(), a.record().to_vec());
        a.set_record_for_test(forged);
        let (d, l) = connect(&a, &b, b.peer_id(), None).await;
        // Refused as forged, or (a record wrong only by the clock) with the listener's time.
        let now = shadowmesh::unix_now();
        assert!(
            matches!(
                d,
                Err(HandshakeError::Rejected {
                    code: CLOSE_AUTH_FAILED
                })
            ) || matches!(d, Err(HandshakeError::ClockRejected { peer_now }) if peer_now.abs_diff(now) < 5),
            "{d:?}"
        );
        l.unwrap_err()
    })
}

fn flip(mut v: Vec<u8>, at: usize) -> Vec<u8> {
    v[at] ^= 1;
    v
}

#[test]
fn forged_records_are_refused_over_the_wire() {
    use shadowmesh_crypto::Error as E;
    // PeerId not the hash of the ML-DSA key.
    let e = forged_hello_is_refused(|_, r| flip(r, 1 + 32));
    assert!(
        matches!(e, HandshakeError::Verify(E::PeerIdMismatch)),
        "{e:?}"
    );
    // Bad ML-DSA-87 signature.
    let e = forged_seed_hello_is_refused(|_, r| {
        let n = r.len();
        flip(r, n - ED25519_SIGNATURE_LEN - 100)
    });
    assert!(
        matches!(e, HandshakeError::Verify(E::BadMlDsaSignature)),
        "{e:?}"
    );
    // Bad Ed25519 signature.
    let e = forged_seed_hello_is_refused(|_, r| {
        let n = r.len();
        flip(r, n - 1)
    });
    assert!(
        matches!(e, HandshakeError::Verify(E::BadEd25519Signature)),
        "{e:?}"
    );
    // A valid record of another identity: its Ed25519 key is not the one TLS authenticated.
    let e = forged_hello_is_refused(|_, _| {
        let other = Identity::generate();
        let p = Payload::default();
        let now = shadowmesh::unix_now();
        build_record(
            &other,
            &NK,
            &RecordParams {
                seq: 1,
                issued_at: now,
                expires_at: now + 60,
                payload: &p,
            },
        )
        .unwrap()
    });
    assert!(
        matches!(e, HandshakeError::Verify(E::UnexpectedPeer(_))),
        "{e:?}"
    );
    // An expired record of our own.
    let e = forged_hello_is_refused(|id, _| {
        let p = Payload::default();
        let now = shadowmesh::unix_now();
        build_record(
            id,
            &NK,
            &RecordParams {
                seq: 1,
                issued_at: now - 2000,
                expires_at: now - 1000,
                payload: &p,
            },
        )
        .unwrap()
    });
    assert!(
        matches!(
            e,
            HandshakeError::Verify(E::Wire(shadowmesh_proto::Error::Expired))
        ),
        "{e:?}"
    );
}

#[test]
fn retry_under_load_still_connects() {
    rt().block_on(async {
        let a = node();
        let b = node_with(|c| c.retry_above = 0); // every unvalidated handshake gets a Retry
        let (d, l) = connect(&a, &b, b.peer_id(), None).await;
        d.unwrap();
        l.unwrap();
        assert_eq!(b.retries_sent(), 1);
    });
}

#[test]
fn reconnect_resumes_the_tls_session_with_raw_keys() {
    rt().block_on(async {
        let a = node();
        let b = node();
        let pin = Some(b.identity().ed25519_public());
        let (d1, l1) = connect(&a, &b, b.peer_id(), pin).await;
        let d1 = d1.unwrap();
        let _l1 = l1.unwrap();
        assert!(!d1.stats.resumed);
        // Let the NewSessionTicket arrive before reconnecting.
        tokio::time::sleep(Duration::from_millis(100)).await;
        d1.conn.close(0u32.into(), b"");
        let (d2, l2) = connect(&a, &b, b.peer_id(), pin).await;
        let d2 = d2.unwrap();
        let l2 = l2.unwrap();
        assert!(d2.stats.resumed, "second dial must resume the TLS session");
        // HELLO still proves both identities on a resumed session.
        assert_eq!(d2.peer_id, b.peer_id());
        assert_eq!(l2.peer_id, a.peer_id());
    });
}

#[test]
fn restarted_node_resets_stale_connections_at_once() {
    // B runs as a real process; killing it leaves A holding a dead connection. B restarted on the
    // same port with the same key answers A's next packet with a stateless reset derived from
    // the identity, so A notices at once instead of after the 30 s idle timeout.
    let dir = std::env::temp_dir().join(format!("smsh-reset-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("b.key");
    let nk_hex: String = NK.iter().map(|b| format!("{b:02x}")).collect();
    let bin = env!("CARGO_BIN_EXE_shadowmesh");
    let spawn = |addr: &str| {
        let mut c = std::process::Command::new(bin)
            .args([
                "probe",
                "--key",
                key.to_str().unwrap(),
                "--network-key",
                &nk_hex,
                "--listen",
                addr,
                "--log-level",
                "warn",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let field = |name: &str| {
            let start = line.find(&format!("\"{name}\":\"")).unwrap() + name.len() + 4;
            line[start..].split('"').next().unwrap().to_string()
        };
        let (pid, addr) = (field("peer_id"), field("addr"));
        (c, pid, addr, out)
    };
    let (mut b1, pid, addr, _out1) = spawn("127.0.0.1:0");
    let peer: PeerId = pid.parse().unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    rt().block_on(async {
        let a = node();
        let mut p = a.dial(addr, peer, None).await.unwrap();
        b1.kill().unwrap(); // SIGKILL: no CONNECTION_CLOSE is sent
        b1.wait().unwrap();
        let (mut b2, pid2, _, _out2) = spawn(&addr.to_string());
        assert_eq!(pid2, pid, "same identity after restart");
        let t0 = Instant::now();
        let _ = p.send_frame(FrameType::Data, b"anyone there?");
        let closed = tokio::time::timeout(Duration::from_secs(10), p.conn.closed()).await;
        let waited = t0.elapsed();
        b2.kill().unwrap();
        b2.wait().unwrap();
        let reason = closed.expect("connection must end well before the idle timeout");
        assert!(
            matches!(reason, shadowmesh::quic::ConnectionError::Reset),
            "{reason:?}"
        );
        assert!(waited < Duration::from_secs(10));
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refreshed_record_has_a_higher_sequence_and_is_presented() {
    rt().block_on(async {
        let a = node();
        let b = node();
        let seq = |r: &[u8]| shadowmesh_proto::record::RecordRef::parse(r).unwrap().seq;
        let r1 = a.record();
        let r2 = a.refresh_record().unwrap();
        assert!(seq(&r2) > seq(&r1));
        assert_eq!(a.record(), r2);
        let (_, l) = connect(&a, &b, b.peer_id(), None).await;
        assert_eq!(
            l.unwrap().record.seq,
            seq(&r2),
            "HELLO carries the fresh record"
        );
    });
}

#[test]
fn plain_udp_socket_interoperates_with_quinn_udp() {
    rt().block_on(async {
        let a = node_with(|c| c.plain_udp = true);
        let b = node();
        let (d, l) = connect(&a, &b, b.peer_id(), None).await;
        let (mut d, mut l) = (d.unwrap(), l.unwrap());
        d.send_frame(FrameType::Data, b"over plain sendto").unwrap();
        let mut buf = l.conn.read_datagram().await.unwrap().to_vec();
        let (_, r) = l.open_frame(&mut buf).unwrap();
        assert_eq!(&buf[r], b"over plain sendto");
        let (d2, _) = connect(&b, &a, a.peer_id(), None).await;
        d2.unwrap();
    });
}

#[test]
fn a_redial_takes_the_record_it_holds_as_a_sequence_number() {
    rt().block_on(async {
        let a = node();
        let b = node();
        let (d1, l1) = connect(&a, &b, b.peer_id(), None).await;
        let (d1, _l1) = (d1.unwrap(), l1.unwrap());
        d1.conn.close(0u32.into(), b"");
        // A holds B's record now: B answers the redial with its sequence number alone (the
        // record is ~7.4 KB), and the session still works both ways.
        let (d2, l2) = connect(&a, &b, b.peer_id(), None).await;
        let (mut d2, mut l2) = (d2.unwrap(), l2.unwrap());
        assert_eq!(d2.record.seq, d1.record.seq);
        assert!(
            d2.stats.udp_rx_bytes + 7000 < d1.stats.udp_rx_bytes,
            "{} then {}",
            d1.stats.udp_rx_bytes,
            d2.stats.udp_rx_bytes
        );
        d2.send_frame(FrameType::Data, b"known").unwrap();
        let mut buf = l2.conn.read_datagram().await.unwrap().to_vec();
        let (_, r) = l2.open_frame(&mut buf).unwrap();
        assert_eq!(&buf[r], b"known");
        // A fresh record of B's goes out whole, and A takes its new sequence number.
        let fresh = b.refresh_record().unwrap();
        let (d3, _) = connect(&a, &b, b.peer_id(), None).await;
        let d3 = d3.unwrap();
        assert!(d3.record.seq > d1.record.seq);
        assert_eq!(d3.record.bytes, fresh.to_vec());
        assert!(d3.stats.udp_rx_bytes > d2.stats.udp_rx_bytes + 7000);
    });
}
