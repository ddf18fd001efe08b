//! The 200 answer of `POST /v4/sip`, built in one place: by the store as it accepts a request
//! (with the request id, file ids and object names it assigns, kept for idempotent replays), and
//! by `flowgate check` for the answer `serve` would give (file ids not yet assigned).

use serde::Serialize;
use serde_json::Value;

use crate::domain::finding::Finding;

#[derive(Serialize)]
struct Accepted<'a> {
    status: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    scenario: &'a str,
    scenario_name: &'a str,
    flows: Vec<Value>,
    warnings: &'a [Finding],
    ruleset: &'a str,
}

/// The answer to an accepted body: `request_id` once stored, `flows` one object per flow file.
pub fn accepted(request_id: Option<&str>, scenario: &str, scenario_name: &str, flows: Vec<Value>, warnings: &[Finding], ruleset: &str) -> Value {
    let n = flows.len();
    let message = format!("Accepted: scenario {scenario}, {n} industry flow{} queued", if n == 1 { "" } else { "s" });
    let answer = Accepted { status: "accepted", message, request_id, scenario, scenario_name, flows, warnings, ruleset };
    serde_json::to_value(answer).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_counts_the_flows_and_the_request_id_shows_once_stored() {
        let one = accepted(Some("REQ"), "S01", "Completed", vec![serde_json::json!({"flow": "D0139"})], &[], "r1");
        assert_eq!(one["message"], "Accepted: scenario S01, 1 industry flow queued");
        assert_eq!(one["request_id"], "REQ");
        let none = accepted(None, "S05", "Aborted", vec![], &[], "r1");
        assert_eq!(none["message"], "Accepted: scenario S05, 0 industry flows queued");
        assert!(none.get("request_id").is_none());
        assert_eq!(none["status"], "accepted");
    }
}
