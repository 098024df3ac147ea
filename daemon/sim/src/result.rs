//! What a run measured, and its text and JSON forms.

use super::*;

/// What a run measured.
#[derive(Debug, Clone)]
pub struct SimResult {
    /// The parameters.
    pub config: SimConfig,
    /// FIND_VALUE lookups that found the newest record.
    pub lookup_success: f64,
    /// Mean fraction of the true k closest live honest nodes a FIND_NODE returned.
    pub closest_k_recall: f64,
    /// Median successive request rounds.
    pub hops_p50: f64,
    /// 95th percentile of rounds.
    pub hops_p95: f64,
    /// Lookup latency percentiles (virtual ms).
    pub latency_ms_p50: f64,
    /// 95th percentile latency.
    pub latency_ms_p95: f64,
    /// 99th percentile latency.
    pub latency_ms_p99: f64,
    /// Mean requests per measured lookup.
    pub messages_per_lookup: f64,
    /// Mean bytes (requests and answers) per measured lookup.
    pub bytes_per_lookup: f64,
    /// Measured lookups that finished.
    pub lookups_done: usize,
    /// Messages the whole simulation sent.
    pub messages_total: u64,
    /// Largest routing table, and the mean.
    pub table_max: usize,
    /// Mean routing table size among live honest nodes.
    pub table_mean: f64,
    /// Virtual time simulated.
    pub virtual_seconds: f64,
    /// Real time taken.
    pub wall_seconds: f64,
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        "null".into()
    }
}

impl SimResult {
    /// The measured figures, by name, in output order.
    pub fn metrics(&self) -> [(&'static str, f64); 16] {
        [
            ("lookup_success", self.lookup_success),
            ("closest_k_recall", self.closest_k_recall),
            ("hops_p50", self.hops_p50),
            ("hops_p95", self.hops_p95),
            ("latency_ms_p50", self.latency_ms_p50),
            ("latency_ms_p95", self.latency_ms_p95),
            ("latency_ms_p99", self.latency_ms_p99),
            ("messages_per_lookup", self.messages_per_lookup),
            ("bytes_per_lookup", self.bytes_per_lookup),
            ("lookups", self.lookups_done as f64),
            ("messages_total", self.messages_total as f64),
            ("table_max", self.table_max as f64),
            ("table_mean", self.table_mean),
            ("virtual_seconds", self.virtual_seconds),
            ("wall_seconds", self.wall_seconds),
            ("seed", self.config.seed as f64),
        ]
    }

    /// One JSON object (field order fixed).
    pub fn to_json(&self) -> String {
        let c = &self.config;
        let fields: Vec<(&str, String)> = vec![
            ("nodes", c.nodes.to_string()),
            ("seed", c.seed.to_string()),
            ("loss", num(c.loss)),
            ("kill_fraction", num(c.kill_fraction)),
            ("churn", num(c.churn)),
            ("sybil_fraction", num(c.sybil_fraction)),
            ("paths", c.paths.to_string()),
            ("lookups", self.lookups_done.to_string()),
            ("lookup_success", num(self.lookup_success)),
            ("closest_k_recall", num(self.closest_k_recall)),
            ("hops_p50", num(self.hops_p50)),
            ("hops_p95", num(self.hops_p95)),
            ("latency_ms_p50", num(self.latency_ms_p50)),
            ("latency_ms_p95", num(self.latency_ms_p95)),
            ("latency_ms_p99", num(self.latency_ms_p99)),
            ("messages_per_lookup", num(self.messages_per_lookup)),
            ("bytes_per_lookup", num(self.bytes_per_lookup)),
            ("messages_total", self.messages_total.to_string()),
            ("table_max", self.table_max.to_string()),
            ("table_mean", num(self.table_mean)),
            ("virtual_seconds", num(self.virtual_seconds)),
            ("wall_seconds", num(self.wall_seconds)),
        ];
        object(&fields)
    }

    /// A human-readable table.
    pub fn to_table(&self) -> String {
        table(&self.to_json())
    }
}

fn object(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

fn table(json: &str) -> String {
    json.trim_matches(|c| c == '{' || c == '}')
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once(':').unwrap_or((kv, ""));
            format!("{:22} {}", k.trim_matches('"'), v)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs of one configuration over several seeds: each figure's median and worst.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// One run per seed, in seed order.
    pub runs: Vec<SimResult>,
}

impl Sweep {
    /// Whether a larger value of `field` is better.
    fn higher_is_better(field: &str) -> bool {
        matches!(field, "lookup_success" | "closest_k_recall")
    }

    /// `(field, median, worst)` for every measured figure (not the seed).
    pub fn summary(&self) -> Vec<(&'static str, f64, f64)> {
        let Some(first) = self.runs.first() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, (name, _)) in first.metrics().iter().enumerate() {
            if *name == "seed" {
                continue;
            }
            let mut v: Vec<f64> = self.runs.iter().map(|r| r.metrics()[i].1).collect();
            v.sort_by(f64::total_cmp);
            let median = if v.len() % 2 == 1 {
                v[v.len() / 2]
            } else {
                (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
            };
            let worst = if Self::higher_is_better(name) {
                v[0]
            } else {
                v[v.len() - 1]
            };
            out.push((*name, median, worst));
        }
        out
    }

    /// `{"seeds":[..],"runs":[..],"median":{..},"worst":{..}}`.
    pub fn to_json(&self) -> String {
        let seeds: Vec<String> = self
            .runs
            .iter()
            .map(|r| r.config.seed.to_string())
            .collect();
        let runs: Vec<String> = self.runs.iter().map(SimResult::to_json).collect();
        let summary = self.summary();
        let median: Vec<(&str, String)> = summary.iter().map(|(k, m, _)| (*k, num(*m))).collect();
        let worst: Vec<(&str, String)> = summary.iter().map(|(k, _, w)| (*k, num(*w))).collect();
        format!(
            "{{\"seeds\":[{}],\"runs\":[{}],\"median\":{},\"worst\":{}}}",
            seeds.join(","),
            runs.join(","),
            object(&median),
            object(&worst)
        )
    }

    /// A table: a row per field, its median and worst, then each seed's value.
    pub fn to_table(&self) -> String {
        let mut out = format!("{:22} {:>12} {:>12}", "field", "median", "worst");
        for r in &self.runs {
            out += &format!(" {:>10}", format!("seed {}", r.config.seed));
        }
        for (i, (name, median, worst)) in self.summary().iter().enumerate() {
            out += &format!("\n{name:22} {:>12} {:>12}", num(*median), num(*worst));
            for r in &self.runs {
                out += &format!(" {:>10}", num(r.metrics()[i].1));
            }
        }
        out
    }
}
