//! Any bytes as a request body through the whole decision (parse, schema, rules, flows): it
//! must answer, never panic, and never blame a rule for failing on a body the schema accepted.
#![no_main]

use std::sync::OnceLock;

use flowgate::domain::auth::{Client, Rate};
use flowgate::domain::clock::Clock;
use flowgate::rules::decide::{decide, Explain, Verdict};
use flowgate::rules::set::RuleSet;
use libfuzzer_sys::fuzz_target;

fn set() -> &'static RuleSet {
    static SET: OnceLock<RuleSet> = OnceLock::new();
    SET.get_or_init(|| {
        let config = flowgate::config::Config { rules_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."), ..Default::default() };
        flowgate::rules::load::load(&config).unwrap_or_else(|e| panic!("rule set: {e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let client = Client { name: "fuzz".into(), sip_id: "DEMO".into(), key_id: "fuzz".into(), key_sha256: String::new(), rate: Rate::default(), revoked: false };
    let now = Clock::Fixed(flowgate::domain::clock::parse_rfc3339("2025-12-31T12:00:00Z").unwrap_or_else(|| panic!("clock")));
    if let Verdict::Failed(f) = decide(set(), &client, data, now, Explain::No).verdict {
        panic!("rule {} failed: {}", f.rule, f.message);
    }
});
