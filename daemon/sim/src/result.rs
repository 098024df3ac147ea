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
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    }

    /// A human-readable table.
    pub fn to_table(&self) -> String {
        self.to_json()
            .trim_matches(|c| c == '{' || c == '}')
            .split(',')
            .map(|kv| {
                let (k, v) = kv.split_once(':').unwrap_or((kv, ""));
                format!("{:22} {}", k.trim_matches('"'), v)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
