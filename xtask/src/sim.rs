//! `cargo xtask sim`: the DHT simulator (`daemon/sim`), built with the `sim` profile, and
//! `sim --bars [--seeds A..B] [--nodes N]`: the DHT's bars checked over several seeds, which
//! `test` runs.

use std::process::Command;

use crate::*;

/// What a lookup must do, over every seed: a field of the simulator's `worst` figures, whether
/// it is a floor or a ceiling, and the bar.
struct Bar {
    field: &'static str,
    floor: bool,
    value: f64,
}

const fn floor(field: &'static str, value: f64) -> Bar {
    Bar {
        field,
        floor: true,
        value,
    }
}

const fn ceiling(field: &'static str, value: f64) -> Bar {
    Bar {
        field,
        floor: false,
        value,
    }
}

/// Nodes killed without warning: lookups stay fast and right.
const KILLED: &[Bar] = &[
    floor("lookup_success", 0.99),
    floor("closest_k_recall", 0.95),
    ceiling("hops_p95", 6.0),
    ceiling("latency_ms_p50", 600.0),
    ceiling("latency_ms_p95", 1500.0),
];

/// Sybils answering with made-up contacts and stale records.
const SYBILS: &[Bar] = &[
    floor("lookup_success", 0.99),
    floor("closest_k_recall", 0.95),
    ceiling("hops_p95", 6.0),
];

fn sim_command() -> Command {
    let mut c = cargo();
    c.args([
        "run",
        "--quiet",
        "--profile",
        "sim",
        "--package",
        "shadowmesh-sim",
        "--",
    ]);
    c
}

pub(crate) fn sim(args: &[String]) -> Result {
    if args.iter().any(|a| a == "--bars") {
        let seeds = flag_str(args, "--seeds").unwrap_or("1..10");
        let nodes = flag_str(args, "--nodes").unwrap_or("10000");
        let (passed, failures) = bars(nodes, seeds)?;
        println!("DHT bars: {passed} passed, {} failed", failures.len());
        return if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("\n"))
        };
    }
    run(sim_command().args(args))
}

fn flag_str<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Runs both scenarios on `nodes` nodes over `seeds` (`A..B`) and checks every bar against the
/// worst seed. Returns the checks passed and the failures.
pub(crate) fn bars(nodes: &str, seeds: &str) -> Result<(u64, Vec<String>)> {
    let mut passed = 0;
    let mut failures = Vec::new();
    for (name, scenario, bars) in [
        ("20% killed", "--kill-fraction", KILLED),
        ("20% Sybils", "--sybil-fraction", SYBILS),
    ] {
        let mut cmd = sim_command();
        cmd.args(["--nodes", nodes, "--seeds", seeds, "--loss", "0.01"])
            .args([scenario, "0.2", "--json"]);
        eprintln!("+ {cmd:?}");
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "the simulator failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let json = String::from_utf8_lossy(&out.stdout).into_owned();
        let worst = json
            .split_once("\"worst\":")
            .map(|(_, w)| w.to_string())
            .ok_or("no worst figures in the simulator's output")?;
        let median = json
            .split_once("\"median\":")
            .map(|(_, m)| m.to_string())
            .unwrap_or_default();
        for bar in bars {
            let got: f64 = field(&worst, bar.field)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no {} in the simulator's output", bar.field))?;
            let ok = if bar.floor {
                got >= bar.value
            } else {
                got <= bar.value
            };
            let sign = if bar.floor { ">=" } else { "<=" };
            let med = field(&median, bar.field).unwrap_or_default();
            println!(
                "  {nodes} nodes, {name}, seeds {seeds}: {:<18} worst {got} (median {med}), bar {sign} {}: {}",
                bar.field,
                bar.value,
                if ok { "ok" } else { "FAILED" }
            );
            if ok {
                passed += 1;
            } else {
                failures.push(format!(
                    "DHT, {nodes} nodes, {name}: {} worst {got} over seeds {seeds}, bar {sign} {}",
                    bar.field, bar.value
                ));
            }
        }
    }
    Ok((passed, failures))
}
