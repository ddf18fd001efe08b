//! Prometheus metrics: a small registry of labelled counters and histograms, text exposition.
//!
//! Labels are bounded: route templates, statuses, rule ids, scenario ids, flow ids. Never job
//! ids, keys or MPANs.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histogram.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(String, String), f64>>,
    histograms: Mutex<BTreeMap<(String, String), Histogram>>,
    help: Mutex<BTreeMap<String, (&'static str, &'static str)>>,
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
    fn describe(&self, name: &str, kind: &'static str, help: &'static str) {
        if let Ok(mut h) = self.help.lock() {
            h.entry(name.to_string()).or_insert((kind, help));
        }
    }

    /// Adds `by` to a counter.
    pub fn inc(&self, name: &str, help: &'static str, pairs: &[(&str, &str)], by: f64) {
        self.describe(name, "counter", help);
        if let Ok(mut c) = self.counters.lock() {
            *c.entry((name.to_string(), labels(pairs))).or_default() += by;
        }
    }

    /// Sets a gauge.
    pub fn set(&self, name: &str, help: &'static str, pairs: &[(&str, &str)], value: f64) {
        self.describe(name, "gauge", help);
        if let Ok(mut c) = self.counters.lock() {
            c.insert((name.to_string(), labels(pairs)), value);
        }
    }

    /// Records one observation in a histogram.
    pub fn observe(&self, name: &str, help: &'static str, pairs: &[(&str, &str)], value: f64) {
        self.describe(name, "histogram", help);
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
    pub fn render(&self) -> String {
        let mut out = String::new();
        let help = self.help.lock().map(|h| h.clone()).unwrap_or_default();
        let mut last = String::new();
        let mut header = |out: &mut String, name: &str| {
            if name != last {
                if let Some((kind, text)) = help.get(name) {
                    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
                }
                last = name.to_string();
            }
        };
        if let Ok(c) = self.counters.lock() {
            for ((name, l), v) in c.iter() {
                header(&mut out, name);
                if l.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{l}}} {v}");
                }
            }
        }
        if let Ok(hs) = self.histograms.lock() {
            for ((name, l), h) in hs.iter() {
                header(&mut out, name);
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
