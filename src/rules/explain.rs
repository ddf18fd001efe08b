//! `flowgate check`: the answer `serve` would give a body, and what every rule did and why.

use serde_json::{json, Value};

use crate::domain::auth::Client;
use crate::domain::clock::Clock;
use crate::domain::problem::Problem;
use crate::rules::decide::{decide, Explain, Verdict};
use crate::rules::set::RuleSet;

/// The would-be answer (status and body, file ids left to the store) and the rule trace.
pub fn report(set: &RuleSet, client: &Client, body: &[u8], clock: Clock) -> Value {
    let decision = decide(set, client, body, clock, Explain::Trace);
    let (status, answer) = match &decision.verdict {
        Verdict::Accepted(a) => {
            let flows: Vec<Value> = a
                .flows
                .iter()
                .map(|f| {
                    let file = f.finish("(file id)", clock.now(), &set.envelope);
                    json!({ "flow": f.flow, "to": f.to_label(), "file_id": "(assigned when stored)", "file": file.lines().collect::<Vec<_>>() })
                })
                .collect();
            (200, crate::domain::answer::accepted(None, &a.scenario, &a.scenario_name, flows, &a.warnings, &decision.revision))
        }
        Verdict::Rejected(errors) => {
            let p = Problem::Invalid(errors.clone());
            (400, p.body("/v4/sip", "(check)"))
        }
        Verdict::Failed(f) => {
            let mut b = Problem::RuleFailed { rule: f.rule.clone() }.body("/v4/sip", "(check)");
            b["failure"] = json!(f.message);
            (500, b)
        }
    };
    let fired: Vec<&crate::rules::engine::Trace> = decision.trace.iter().filter(|t| t.fired || t.failed.is_some()).collect();
    json!({
        "status": status,
        "answer": answer,
        "ruleset": decision.revision,
        "fired": fired,
        "evaluated": decision.trace.len(),
        "not_fired": decision.trace.iter().filter(|t| !t.fired && t.failed.is_none()).map(|t| format!("{} {}", t.kind, t.rule)).collect::<Vec<_>>(),
    })
}
