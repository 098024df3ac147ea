//! The cryptography of N full member-to-member handshakes on a direct connection, both sides in
//! one process, for counting executed instructions under qemu-user (where timing means
//! nothing): the hybrid TLS 1.3 handshake (rustls' QUIC interface, in memory) and then HELLO,
//! INIT and RESP, as `shadowmesh::node` does them. `cargo xtask count-handshake` runs it for
//! N = 0 and N > 0 and reports the difference per handshake.
//!
//! `handshake_count MODE N`, MODE one of:
//! - `separate`: HELLO signed on its own and INIT/RESP on their own (two dual signatures per
//!   side, three dual verifications);
//! - `flight`: one dual signature per side over HELLO and INIT (RESP);
//! - `known`: `flight`, with the dialler holding the listener's record, which then answers with
//!   its sequence number alone.
//!
//! Prints the bytes each side sent per handshake: `tls_dialler`, `tls_listener` (TLS handshake
//! messages), `hello_dialler`, `hello_listener` (HELLO with INIT or RESP).

use std::sync::Arc;
use std::time::Duration;

use rustls::quic::{ClientConnection, Connection, ServerConnection, Version};
use shadowmesh_crypto::hello::{build_hello, verify_hello, HelloCheck, HelloParams, HelloSig};
use shadowmesh_crypto::record::{build_record, verify_record, RecordParams};
use shadowmesh_crypto::session;
use shadowmesh_crypto::tls::{KxPolicy, TlsContext};
use shadowmesh_crypto::Identity;
use shadowmesh_proto::msg::{RecordRefOrSeq, Role, EXPORTER_LABEL};
use shadowmesh_proto::record::Payload;

const NK: [u8; 32] = [0x42; 32];
const NOW: u64 = 1_800_000_000;

fn record(id: &Identity) -> Vec<u8> {
    build_record(
        id,
        &NK,
        &RecordParams {
            seq: 7,
            issued_at: NOW - 60,
            expires_at: NOW + 3600,
            payload: &Payload::default(),
        },
    )
    .expect("record")
}

/// Runs TLS between the two in memory; returns the exporter value and the bytes each sent.
fn tls(d: &TlsContext, l: &TlsContext, listener_key: [u8; 32]) -> ([u8; 32], usize, usize) {
    let mut client = d.client(Some(listener_key));
    client.resumption = rustls::client::Resumption::disabled();
    let params = b"transport parameters".to_vec();
    let mut c = Connection::Client(
        ClientConnection::new(
            Arc::new(client),
            Version::V1,
            "shadowmesh.invalid".try_into().expect("name"),
            params.clone(),
        )
        .expect("client"),
    );
    let mut s = Connection::Server(
        ServerConnection::new(Arc::new(l.server()), Version::V1, params).expect("server"),
    );
    let (mut c_sent, mut s_sent) = (0, 0);
    // Each side's output, one encryption level at a time (rustls reads a level's data only
    // once it has that level's keys).
    let step = |from: &mut Connection, to: &mut Connection| -> usize {
        let mut sent = 0;
        loop {
            let mut buf = Vec::new();
            let change = from.write_hs(&mut buf);
            sent += buf.len();
            if !buf.is_empty() {
                to.read_hs(&buf).expect("handshake data reads");
            }
            if change.is_none() {
                return sent;
            }
        }
    };
    while c.is_handshaking() || s.is_handshaking() {
        c_sent += step(&mut c, &mut s);
        s_sent += step(&mut s, &mut c);
    }
    let mut exporter = [0u8; 32];
    c.export_keying_material(&mut exporter, EXPORTER_LABEL, Some(b""))
        .expect("exporter");
    let mut theirs = [0u8; 32];
    s.export_keying_material(&mut theirs, EXPORTER_LABEL, Some(b""))
        .expect("exporter");
    assert_eq!(exporter, theirs);
    (exporter, c_sent, s_sent)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("flight");
    let n: u32 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1);
    let (flight, known) = match mode {
        "separate" => (false, false),
        "flight" => (true, false),
        "known" => (true, true),
        _ => panic!("mode: separate, flight or known"),
    };
    let (a, b) = (Identity::generate(), Identity::generate());
    let (rec_a, rec_b) = (record(&a), record(&b));
    let (tls_a, tls_b) = (
        TlsContext::new(&a, KxPolicy::Hybrid),
        TlsContext::new(&b, KxPolicy::Hybrid),
    );
    // What a dialler holds from an earlier connection (verified then, not per handshake).
    let held_b = known.then(|| verify_record(&rec_b, NOW).expect("B's record"));
    let now = Duration::from_secs(1000);
    let sig = if flight {
        HelloSig::WithNext
    } else {
        HelloSig::Own
    };
    let mut sent = [0usize; 4];
    for _ in 0..n {
        let (exporter, tls_d, tls_l) = tls(&tls_a, &tls_b, b.ed25519_public());
        // Dialler A: HELLO and INIT.
        let hello_a = build_hello(
            &a,
            &HelloParams {
                role: Role::Dialler,
                to: &b.peer_id(),
                record: RecordRefOrSeq::Full(&rec_a),
                exporter: &exporter,
                network_key: Some(&NK),
                sig,
                held: held_b.as_ref().map(|r| r.seq),
            },
        )
        .expect("hello");
        let (initiating, init) = if flight {
            session::initiate_after_hello(&a, &b.peer_id(), &exporter, &hello_a)
        } else {
            session::initiate(&a, &b.peer_id(), &exporter)
        };
        // Listener B: checks them, answers HELLO and RESP.
        let ed_a = a.ed25519_public();
        let got_a = verify_hello(
            &hello_a,
            &HelloCheck {
                me: b.peer_id(),
                sender_role: Role::Dialler,
                expected_peer: None,
                exporter: &exporter,
                network_key: Some(&NK),
                tls_ed25519: &ed_a,
                known: None,
                now_unix: NOW,
            },
        )
        .expect("A's HELLO");
        let record_b = match got_a.held {
            Some(7) => RecordRefOrSeq::Known(7),
            _ => RecordRefOrSeq::Full(&rec_b),
        };
        let hello_b = build_hello(
            &b,
            &HelloParams {
                role: Role::Listener,
                to: &a.peer_id(),
                record: record_b,
                exporter: &exporter,
                network_key: Some(&NK),
                sig,
                held: None,
            },
        )
        .expect("hello");
        let (_sb, resp) = if flight {
            let f = session::Flight {
                peer_hello: &hello_a,
                my_hello: &hello_b,
            };
            session::respond_in_flight(&b, &init, &got_a.record.keys, &exporter, &NK, f, now)
        } else {
            session::respond(&b, &init, &got_a.record.keys, &exporter, &NK, now)
        }
        .expect("RESP");
        // Dialler A: checks them.
        let ed_b = b.ed25519_public();
        let got_b = verify_hello(
            &hello_b,
            &HelloCheck {
                me: a.peer_id(),
                sender_role: Role::Listener,
                expected_peer: Some(b.peer_id()),
                exporter: &exporter,
                network_key: Some(&NK),
                tls_ed25519: &ed_b,
                known: held_b.as_ref(),
                now_unix: NOW,
            },
        )
        .expect("B's HELLO");
        let _sa = if flight {
            initiating.finish_after_hello(&resp, &hello_b, &got_b.record.keys, &NK, now)
        } else {
            initiating.finish(&resp, &got_b.record.keys, &NK, now)
        }
        .expect("session");
        for (i, v) in [
            tls_d,
            tls_l,
            hello_a.len() + init.len(),
            hello_b.len() + resp.len(),
        ]
        .into_iter()
        .enumerate()
        {
            sent[i] += v;
        }
    }
    let per = |v: usize| v / n.max(1) as usize;
    println!(
        "tls_dialler {} tls_listener {} hello_dialler {} hello_listener {}",
        per(sent[0]),
        per(sent[1]),
        per(sent[2]),
        per(sent[3])
    );
}
