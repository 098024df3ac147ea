//! `shadowmesh-sim`: see [`shadowmesh_sim`]. Usage:
//! `shadowmesh-sim --nodes N (--seed S | --seeds A..B) [--loss P] [--kill-fraction F]
//! [--churn R] [--sybil-fraction F] [--lookups Q] [--paths D] [--json]`
//!
//! `--seeds A..B` runs every seed from A to B inclusive (as many at once as there are cores)
//! and prints each figure's median and worst over them, then each seed's.

#![forbid(unsafe_code)]

use shadowmesh_sim::{run, SimConfig, Sweep};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut c = SimConfig::default();
    let mut json = false;
    let mut seeds: Option<(u64, u64)> = None;
    let mut i = 0;
    let fail = |m: String| -> ! {
        eprintln!("shadowmesh-sim: {m}");
        eprintln!("usage: shadowmesh-sim --nodes N (--seed S | --seeds A..B) [--loss P] [--kill-fraction F] [--churn R] [--sybil-fraction F] [--lookups Q] [--paths D] [--json]");
        std::process::exit(2)
    };
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--json" {
            json = true;
            i += 1;
            continue;
        }
        let v = args
            .get(i + 1)
            .unwrap_or_else(|| fail(format!("{a} needs a value")));
        fn p<T: std::str::FromStr>(a: &str, v: &str) -> T {
            v.parse().unwrap_or_else(|_| {
                eprintln!("shadowmesh-sim: invalid value '{v}' for {a}");
                std::process::exit(2)
            })
        }
        match a {
            "--nodes" => c.nodes = p(a, v),
            "--seed" => c.seed = p(a, v),
            "--loss" => c.loss = p(a, v),
            "--kill-fraction" => c.kill_fraction = p(a, v),
            "--churn" => c.churn = p(a, v),
            "--sybil-fraction" => c.sybil_fraction = p(a, v),
            "--lookups" => c.lookups = p(a, v),
            "--paths" => c.paths = p(a, v),
            "--seeds" => {
                let range = v.split_once("..").and_then(|(a, b)| {
                    Some((
                        a.parse::<u64>().ok()?,
                        b.trim_start_matches('=').parse::<u64>().ok()?,
                    ))
                });
                match range {
                    Some((a, b)) if a <= b => seeds = Some((a, b)),
                    _ => fail(format!("--seeds takes A..B with A <= B, not '{v}'")),
                }
            }
            _ => fail(format!("unknown option {a}")),
        }
        i += 2;
    }
    if c.nodes < 10 {
        fail("--nodes must be at least 10".into());
    }
    for (name, f) in [
        ("--loss", c.loss),
        ("--kill-fraction", c.kill_fraction),
        ("--sybil-fraction", c.sybil_fraction),
    ] {
        if !(0.0..0.9).contains(&f) {
            fail(format!("{name} must be in [0, 0.9)"));
        }
    }
    if !(1..=shadowmesh_proto::dht::lookup::MAX_PATHS).contains(&c.paths) {
        fail(format!(
            "--paths must be 1 to {}",
            shadowmesh_proto::dht::lookup::MAX_PATHS
        ));
    }
    if let Some((a, b)) = seeds {
        let sweep = sweep(&c, a, b);
        if json {
            println!("{}", sweep.to_json());
        } else {
            println!("{}", sweep.to_table());
        }
        return;
    }
    let r = run(&c);
    if json {
        println!("{}", r.to_json());
    } else {
        println!("{}", r.to_table());
    }
}

/// Runs seeds `a..=b`, as many at once as there are cores, each printing a line to stderr as it
/// ends.
fn sweep(c: &SimConfig, a: u64, b: u64) -> Sweep {
    let next = std::sync::atomic::AtomicU64::new(a);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut runs = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if seed > b {
                            return done;
                        }
                        let r = run(&SimConfig { seed, ..c.clone() });
                        eprintln!("seed {seed}: {}", r.to_json());
                        done.push(r);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation panicked"))
            .collect::<Vec<_>>()
    });
    runs.sort_by_key(|r| r.config.seed);
    Sweep { runs }
}
