//! `shadowmesh-sim`: see [`shadowmesh_sim`]. Usage:
//! `shadowmesh-sim --nodes N --seed S [--loss P] [--kill-fraction F] [--churn R]
//! [--sybil-fraction F] [--lookups Q] [--json]`

#![forbid(unsafe_code)]

use shadowmesh_sim::{run, SimConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut c = SimConfig::default();
    let mut json = false;
    let mut i = 0;
    let fail = |m: String| -> ! {
        eprintln!("shadowmesh-sim: {m}");
        eprintln!("usage: shadowmesh-sim --nodes N --seed S [--loss P] [--kill-fraction F] [--churn R] [--sybil-fraction F] [--lookups Q] [--json]");
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
    let r = run(&c);
    if json {
        println!("{}", r.to_json());
    } else {
        println!("{}", r.to_table());
    }
}
