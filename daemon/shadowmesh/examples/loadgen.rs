//! The 1,000-peer load generator (`cargo xtask load-peers` runs it in a network namespace):
//! one process, one thread, N member identities, each with its own QUIC endpoint, dialling one
//! target daemon through the full handshake (hybrid ML-KEM-1024 + X25519 TLS, HELLO with the
//! dual-signed record, the end-to-end INIT/RESP), then holding every connection open.
//!
//! Phases: handshakes in waves of rising concurrency (1, 4, 16, 64 in flight), each wave timed,
//! with the target's Retry counter (its stateless-cookie defence) read from its control socket
//! before and after; then the rest of the N peers; then `ready` and the connections are held
//! until stdin closes. One JSON object per line on stdout.
//!
//! usage: loadgen --target PEERID@IP:PORT --network-key HEX --bind IP[,IP...] --peers N
//!        --control PATH
//!
//! Peer `i` binds to the `i`-th address of `--bind`, round robin: a gateway limits handshakes
//! per source address, and 1,000 real gateways have 1,000 addresses.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use shadowmesh::args::{network_key, parse_peer_addr, Opts};
use shadowmesh::dataplane::member_payload;
use shadowmesh::node::{Node, NodeConfig, Peer};
use shadowmesh_crypto::Identity;

fn field(json: &str, key: &str) -> u64 {
    let k = format!("\"{key}\":");
    json.find(&k)
        .and_then(|i| json[i + k.len()..].split([',', '}']).next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = Opts::parse(&args).unwrap_or_else(|e| panic!("{}", e.msg));
    let (target, addr) = parse_peer_addr(o.need("--target").unwrap()).unwrap();
    let nk = network_key(&o).unwrap_or_else(|e| panic!("{}", e.msg));
    let binds: Vec<IpAddr> = o
        .need("--bind")
        .unwrap()
        .split(',')
        .map(|a| a.parse().unwrap())
        .collect();
    let n: usize = o.parse_or("--peers", 1000).unwrap();
    let control = std::path::PathBuf::from(o.need("--control").unwrap());
    let retries = || {
        shadowmesh::control::request(&control, "status")
            .map(|s| field(&s, "handshake_retries"))
            .unwrap_or(0)
    };

    shadowmesh::block_on_local(async {
        // Identities and endpoints first: their ML-DSA key generation and record signatures are
        // the generator's cost, not the target's.
        let t = Instant::now();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let id = Identity::generate();
            let mut cfg = NodeConfig::new(SocketAddr::new(binds[i % binds.len()], 0), nk.clone());
            cfg.payload = member_payload(&id.peer_id(), &nk);
            cfg.handshake_timeout = Duration::from_secs(30);
            nodes.push(Rc::new(Node::bind(id, cfg).expect("bind")));
        }
        println!(
            "{{\"phase\":\"identities\",\"peers\":{n},\"seconds\":{:.2}}}",
            t.elapsed().as_secs_f64()
        );
        let mut held: Vec<Peer> = Vec::with_capacity(n);
        let mut next = 0;
        let mut failed = 0u64;
        let waves: &[(usize, usize)] = &[(1, 20), (4, 40), (16, 80), (64, 160)];
        let mut plan: Vec<(usize, usize, bool)> =
            waves.iter().map(|&(c, k)| (c, k, true)).collect();
        plan.push((64, usize::MAX, false));
        for (concurrency, count, report) in plan {
            let count = count.min(n - next);
            if count == 0 {
                continue;
            }
            let r0 = retries();
            let t = Instant::now();
            let mut done = 0;
            let mut set = tokio::task::JoinSet::new();
            let mut started = 0;
            while done < count {
                while started < count && set.len() < concurrency {
                    let node = nodes[next + started].clone();
                    set.spawn_local(async move { node.dial(addr, target, None).await });
                    started += 1;
                }
                match set.join_next().await {
                    Some(Ok(Ok(p))) => held.push(p),
                    other => {
                        failed += 1;
                        // The first few reasons, for whoever reads the run's log.
                        if failed <= 5 {
                            let why = match other {
                                Some(Ok(Err(e))) => e.to_string(),
                                Some(Err(e)) => e.to_string(),
                                _ => "no task".into(),
                            };
                            eprintln!("loadgen: a handshake failed: {why}");
                        }
                    }
                }
                done += 1;
            }
            next += count;
            let secs = t.elapsed().as_secs_f64();
            if report {
                println!(
                    "{{\"phase\":\"wave\",\"concurrency\":{concurrency},\"handshakes\":{count},\"seconds\":{secs:.3},\"per_second\":{:.1},\"retries\":{},\"failed\":{failed}}}",
                    count as f64 / secs,
                    retries() - r0
                );
            }
        }
        println!(
            "{{\"phase\":\"ready\",\"connected\":{},\"failed\":{failed}}}",
            held.len()
        );
        // Hold every connection until the driver closes our stdin.
        shadowmesh::until_stdin_closes().await;
        let still = held
            .iter()
            .filter(|p| p.conn.close_reason().is_none())
            .count();
        println!("{{\"phase\":\"end\",\"still_connected\":{still}}}");
    })
    .expect("tokio runtime");
}
