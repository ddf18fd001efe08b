//! Rules are data: an edit changes the next answer; a broken edit never replaces the running set;
//! a runaway or failing rule is a 500 naming the rule, and the server keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TestServer;
use serde_json::Value;

fn body(name: &str, job_id: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&std::fs::read(common::repo().join("tests/cases").join(name).join("request.json")).unwrap()).unwrap();
    v["job_details"]["job_id"] = Value::String(job_id.into());
    serde_json::to_vec(&v).unwrap()
}

fn edit(path: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

#[test]
fn a_rule_edit_changes_the_next_answer_and_a_broken_edit_leaves_the_old_rules_serving() {
    let rules = common::temp_dir("rules");
    common::copy_rules(&rules);
    let r = rules.clone();
    let server = TestServer::start(move |c| c.rules_dir = r);
    let before = server.app.rules.load().revision.clone();
    let a = server.post(&body("public-completed-isolation", "reload-1"));
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["ruleset"], before.as_str());

    // An analyst makes D0396 go out for S01 only to a second recipient... simpler: turn the
    // category A warning into an error, and see the next answer change.
    edit(&rules.join("rules/consistency.yaml"), "  - id: dno-category-a-by-phone\n    level: warning", "  - id: dno-category-a-by-phone\n    level: error");
    server.wait_for("the new revision", || server.app.rules.load().revision != before);
    let after = server.app.rules.load().revision.clone();
    let a = server.post(&body("s01-dno-category-a-warning", "reload-2"));
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(a.json()["errors"][0]["rule"], "dno-category-a-by-phone");

    // A syntax error: the running set stays, /readyz shows the refusal.
    edit(&rules.join("rules/blocks.yaml"), "when: is_true(risk.meter_access_clear)", "when: is_true(risk.meter_access_clear &&");
    server.wait_for("the refusal", || server.get("/readyz").json()["last_rules_reload"]["ok"] == false);
    let ready = server.get("/readyz").json();
    assert_eq!(ready["ruleset"], after.as_str());
    assert!(ready["last_rules_reload"]["error"].as_str().unwrap().contains("meter-required"), "{ready}");
    let a = server.post(&body("public-missing-meter-when-access-clear", "reload-3"));
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["errors"][0]["pointer"], "/meter");

    // An empty file compiles cleanly; the sample bodies catch a call to a function that does not exist.
    edit(&rules.join("rules/blocks.yaml"), "when: is_true(risk.meter_access_clear &&", "when: no_such_helper(risk) && is_true(risk.meter_access_clear)");
    server.wait_for("the second refusal", || {
        server.get("/readyz").json()["last_rules_reload"]["error"].as_str().is_some_and(|e| e.contains("no_such_helper") || e.contains("Function not found"))
    });
    assert_eq!(server.app.rules.load().revision, after);

    // An emptied file parses as "no rules"; the samples with expected answers refuse it.
    std::fs::write(rules.join("rules/blocks.yaml"), "").unwrap();
    server.wait_for("the third refusal", || {
        server.get("/readyz").json()["last_rules_reload"]["error"].as_str().is_some_and(|e| e.contains("missing-meter-when-access-clear"))
    });
    assert_eq!(server.app.rules.load().revision, after);
    let m = server.get("/metrics").text();
    assert!(m.contains("flowgate_rule_reloads_total{result=\"failed\"}"), "{m}");
    assert!(m.contains("flowgate_rule_reloads_total{result=\"ok\"} 1"), "{m}");
}

#[test]
fn a_rule_that_loops_forever_is_a_500_naming_it_within_its_deadline_and_others_are_unaffected() {
    let rules = common::temp_dir("rules");
    common::copy_rules(&rules);
    // A rule that only spins for one job id (so the sample bodies still pass the load check).
    let spin = "\n  - id: spin-forever\n    pointer: /job_details/job_id\n    message: never\n    when: |\n      if job.job_id == \"spin\" { loop { } }\n      false\n";
    let path = rules.join("rules/consistency.yaml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(spin);
    std::fs::write(&path, text).unwrap();
    let r = rules.clone();
    let server = TestServer::start(move |c| {
        c.rules_dir = r;
        c.rhai.max_operations = u64::MAX;
        c.rhai.timeout_ms = 200;
    });
    let started = std::time::Instant::now();
    let a = server.post(&body("public-completed-isolation", "spin"));
    assert_eq!(a.status, 500, "{}", a.text());
    assert_eq!(a.json()["rule"], "spin-forever");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(server.post(&body("public-completed-isolation", "fine")).status, 200);
    let m = server.get("/metrics").text();
    assert!(m.contains("flowgate_rule_failures_total{rule=\"spin-forever\"} 1"), "{m}");
}
