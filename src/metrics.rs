//! Prometheus metrics: a small registry of labelled counters, gauges and histograms, text
//! exposition.
//!
//! Every family is declared once, in [`FAMILIES`], with its type and help: the type never depends
//! on which call site ran first, every family is shown (`# HELP`/`# TYPE`) from the first scrape
//! even before it has a sample, and the README's table is checked against this one by a test.
//! Kept as our own code rather than the `prometheus` or `metrics` crates: it is a hundred lines,
//! and those would add a dependency tree to every build for what this table already keeps right.
//!
//! Labels are bounded: route templates, statuses, rule ids, scenario ids, flow ids. Never job
//! ids, keys or MPANs.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histogram.
/// A family's type in the exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Only goes up (from 0 at start); named `..._total`.
    Counter,
    /// Goes up and down: a current value.
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Every metric flowgate exposes: name, type, help. The README lists the same names and types.
pub(crate) const FAMILIES: &[(&str, Kind, &str)] = &[
    ("flowgate_http_requests_total", Kind::Counter, "HTTP requests by route and status"),
    ("flowgate_http_request_duration_seconds", Kind::Histogram, "Time to answer, by route"),
    ("flowgate_rate_limited_total", Kind::Counter, "Requests refused by the rate limit"),
    ("flowgate_body_budget_refusals_total", Kind::Counter, "Bodies refused unread because the body memory budget was taken"),
    ("flowgate_validation_findings_total", Kind::Counter, "Findings by rule: errors in refused bodies and warnings in accepted ones"),
    ("flowgate_rule_failures_total", Kind::Counter, "Rules that failed at run time"),
    ("flowgate_scenarios_total", Kind::Counter, "Accepted requests by scenario"),
    ("flowgate_flows_queued_total", Kind::Counter, "Flow files queued for delivery, by flow"),
    ("flowgate_rule_reloads_total", Kind::Counter, "Rule set reloads by result"),
    ("flowgate_ruleset_info", Kind::Gauge, "The active rule set revision (1), earlier ones (0)"),
    ("flowgate_store_commits_total", Kind::Counter, "Store commits (fsyncs) since start"),
    ("flowgate_store_commit_accepts_total", Kind::Counter, "Requests accepted in those commits"),
    ("flowgate_store_largest_commit_batch", Kind::Gauge, "Most requests that shared one commit since start"),
    ("flowgate_outbox_depth", Kind::Gauge, "Flow files and job archives waiting for delivery"),
    ("flowgate_outbox_oldest_age_seconds", Kind::Gauge, "Age of the oldest undelivered file (0 when none)"),
    ("flowgate_flows_delivered_total", Kind::Counter, "Flow files delivered (written, or found with the same bytes), by flow"),
    ("flowgate_flows_found_delivered_total", Kind::Counter, "Flow files found already delivered with the same bytes (a retry after a crash), by flow"),
    ("flowgate_flow_delivery_failures_total", Kind::Counter, "Failed delivery attempts, by flow (archive: job archives)"),
    ("flowgate_flow_conflicts_total", Kind::Counter, "Flow files found with different bytes in the store (alarms), by flow"),
    ("flowgate_job_archives_delivered_total", Kind::Counter, "Job archives written (or found with the same bytes)"),
    ("flowgate_job_duplicates_total", Kind::Counter, "Requests whose job another instance had archived first (flows not sent)"),
    ("flowgate_inbound_files_total", Kind::Counter, "Incoming flow files recorded, by outcome"),
    ("flowgate_inbound_errors_total", Kind::Counter, "Inbound polls, files and ledger entries that failed (retried)"),
];

const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

pub struct Metrics {
    counters: Mutex<BTreeMap<(String, String), f64>>,
    histograms: Mutex<BTreeMap<(String, String), Histogram>>,
    help: Mutex<BTreeMap<String, (Kind, &'static str)>>,
}

impl Default for Metrics {
    /// A registry with every family of [`FAMILIES`] declared.
    fn default() -> Metrics {
        let help = FAMILIES.iter().map(|(name, kind, help)| (name.to_string(), (*kind, *help))).collect();
        Metrics { counters: Mutex::default(), histograms: Mutex::default(), help: Mutex::new(help) }
    }
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let _ = write!(s, "{k}=\"{v}\"");
    }
    s
}

impl Metrics {
    /// A name missing from [`FAMILIES`] still gets a type (the one its use implies), so no
    /// sample is ever exposed untyped; the metrics test catches the omission.
    fn describe(&self, name: &str, kind: Kind) {
        if let Ok(mut h) = self.help.lock() {
            h.entry(name.to_string()).or_insert((kind, "undeclared"));
        }
    }

    /// Adds `by` to a counter.
    pub(crate) fn inc(&self, name: &str, pairs: &[(&str, &str)], by: f64) {
        self.describe(name, Kind::Counter);
        if let Ok(mut c) = self.counters.lock() {
            *c.entry((name.to_string(), labels(pairs))).or_default() += by;
        }
    }

    /// Sets a series to `value`: a gauge, or a counter whose running total is kept elsewhere
    /// (an atomic the store or the dispatcher adds to); its type is the one [`FAMILIES`] gives.
    pub fn set(&self, name: &str, pairs: &[(&str, &str)], value: f64) {
        self.describe(name, Kind::Gauge);
        if let Ok(mut c) = self.counters.lock() {
            c.insert((name.to_string(), labels(pairs)), value);
        }
    }

    /// Records one observation in a histogram.
    pub(crate) fn observe(&self, name: &str, pairs: &[(&str, &str)], value: f64) {
        self.describe(name, Kind::Histogram);
        if let Ok(mut hs) = self.histograms.lock() {
            let h = hs.entry((name.to_string(), labels(pairs))).or_default();
            for (i, b) in BUCKETS.iter().enumerate() {
                if value <= *b {
                    h.counts[i] += 1;
                }
            }
            h.sum += value;
            h.count += 1;
        }
    }

    /// The current value of a counter or gauge (tests).
    pub fn value(&self, name: &str, pairs: &[(&str, &str)]) -> f64 {
        self.counters.lock().ok().and_then(|c| c.get(&(name.to_string(), labels(pairs))).copied()).unwrap_or(0.0)
    }

    /// The text exposition format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let help = self.help.lock().map(|h| h.clone()).unwrap_or_default();
        // Family by family, each header once followed by its samples: a family with no sample
        // yet is still declared, so dashboards and alerts find every name from the start.
        let counters = self.counters.lock().map(|c| c.clone()).unwrap_or_default();
        let histograms = self.histograms.lock();
        for (name, (kind, text)) in &help {
            let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {}", kind.as_str());
            for ((_, l), v) in counters.range((name.clone(), String::new())..).take_while(|((n, _), _)| n == name) {
                if l.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{l}}} {v}");
                }
            }
            let Ok(hs) = &histograms else { continue };
            for ((_, l), h) in hs.range((name.clone(), String::new())..).take_while(|((n, _), _)| n == name) {
                let sep = if l.is_empty() { "" } else { "," };
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(out, "{name}_bucket{{{l}{sep}le=\"{b}\"}} {}", h.counts[i]);
                }
                let _ = writeln!(out, "{name}_bucket{{{l}{sep}le=\"+Inf\"}} {}", h.count);
                let braces = if l.is_empty() { String::new() } else { format!("{{{l}}}") };
                let _ = writeln!(out, "{name}_sum{braces} {}", h.sum);
                let _ = writeln!(out, "{name}_count{braces} {}", h.count);
            }
        }
        out
    }
}
