//! Structured mutations of every golden body (fields dropped, retyped, flipped, given other
//! enum values) through the whole decision: never a panic, and never a rule that fails at run
//! time on a body the schema accepted. Deterministic, so a failure reproduces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use flowgate::domain::auth::{Client, Rate};
use flowgate::domain::clock::Clock;
use flowgate::rules::decide::{decide, Explain, Verdict};
use serde_json::{json, Value};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Every pointer to a leaf or block of the body.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    if let Value::Object(m) = v {
        for (k, child) in m {
            let p = format!("{at}/{k}");
            out.push(p.clone());
            pointers(child, p, out);
        }
    }
}

const VALUES: [&str; 14] = ["Yes", "No", "Completed", "Aborted", "None", "A", "B", "C", "Tampering", "Access", "04", "2025-01-08", "2025-01-08T12:00:00Z", ""];

fn mutate(body: &mut Value, rng: &mut Rng) {
    let mut ps = Vec::new();
    pointers(body, String::new(), &mut ps);
    if ps.is_empty() {
        return;
    }
    let p = ps[rng.below(ps.len())].clone();
    let (parent, key) = p.rsplit_once('/').unwrap();
    let choice = rng.below(8);
    let Some(Value::Object(m)) = body.pointer_mut(if parent.is_empty() { "" } else { parent }) else { return };
    match choice {
        0 => {
            m.remove(key);
        }
        1 => {
            m.insert(key.into(), Value::Null);
        }
        2 => {
            m.insert(key.into(), json!(true));
        }
        3 => {
            m.insert(key.into(), json!(false));
        }
        4 => {
            m.insert(key.into(), json!(rng.below(12) as i64 - 1));
        }
        5 => {
            m.insert(key.into(), json!(VALUES[rng.below(VALUES.len())]));
        }
        6 => {
            m.insert(key.into(), json!([]));
        }
        _ => {
            m.insert(key.into(), json!({}));
        }
    }
}

#[test]
fn mutated_bodies_never_make_a_rule_fail_or_the_pipeline_panic() {
    let config = flowgate::config::Config { rules_dir: common::repo(), ..Default::default() };
    let set = flowgate::rules::load::load(&config).unwrap();
    let client = Client { name: "m".into(), sip_id: "DEMO".into(), key_id: "m".into(), key_sha256: String::new(), rate: Rate::default(), revoked: false };
    let now = Clock::Fixed(flowgate::domain::clock::parse_rfc3339("2025-12-31T12:00:00Z").unwrap());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut rejected, mut total) = (0, 0, 0);
    for dir in flowgate::rules::samples::cases(&common::repo().join("tests/cases")) {
        let Ok(base) = serde_json::from_slice::<Value>(&std::fs::read(dir.join("request.json")).unwrap()) else { continue };
        for _ in 0..60 {
            let mut body = base.clone();
            for _ in 0..=rng.below(3) {
                mutate(&mut body, &mut rng);
            }
            let bytes = serde_json::to_vec(&body).unwrap();
            total += 1;
            match decide(&set, &client, &bytes, now, Explain::No).verdict {
                Verdict::Accepted(_) => accepted += 1,
                Verdict::Rejected(_) => rejected += 1,
                Verdict::Failed(f) => {
                    panic!("rule {} failed on a mutation of {}: {}\n{}", f.rule, dir.display(), f.message, serde_json::to_string(&body).unwrap())
                }
            }
        }
    }
    println!("mutations: {total} bodies, {accepted} accepted, {rejected} rejected, 0 rule failures");
    assert!(accepted > 0 && rejected > 0);
}
