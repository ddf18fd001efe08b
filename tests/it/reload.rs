//! Rules are data: an edit changes the next answer; a broken edit never replaces the running set;
//! a runaway or failing rule is a 500 naming the rule, and the server keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

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

/// A server on a copy of the repo's rule folders: the server, the copy, its first revision.
fn on_copied_rules() -> (TestServer, std::path::PathBuf, String) {
    let rules = common::temp_dir("rules");
    common::copy_rules(&rules);
    let r = rules.clone();
    let server = TestServer::start(move |c| c.rules_dir = r);
    let before = server.app.rules.load().revision.clone();
    (server, rules, before)
}

#[test]
fn a_rule_edit_changes_the_next_answer_and_a_broken_edit_leaves_the_old_rules_serving() {
    let (server, rules, before) = on_copied_rules();
    let a = server.post(&body("public-completed-isolation", "reload-1"));
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["ruleset"], before.as_str());

    // An analyst turns the category A warning into an error, and the sample that pinned the
    // warning in the same edit (a sample that still expects the old answer refuses the edit).
    let sample = rules.join("rules/samples/s01-dno-category-a-warning");
    std::fs::write(sample.join("expect.json"), r#"{"status": 400, "pointers": ["/site_safety/dno_code_a"], "rules": ["dno-category-a-by-phone"]}"#).unwrap();
    std::fs::remove_dir_all(sample.join("flows")).unwrap();
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
    // A rule that only spins for one job id (so the sample bodies still pass the load check),
    // and fires for another, which a sample pins (every rule must fire in a sample).
    let spin = "\n  - id: spin-forever\n    pointer: /job_details/job_id\n    message: never\n    when: |\n      if job.job_id == \"spin\" { loop { } }\n      job.job_id == \"spin-sample\"\n";
    let path = rules.join("rules/consistency.yaml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(spin);
    std::fs::write(&path, text).unwrap();
    let sample = rules.join("rules/samples/spin-forever");
    std::fs::create_dir_all(&sample).unwrap();
    std::fs::write(sample.join("request.json"), body("public-completed-isolation", "spin-sample")).unwrap();
    std::fs::write(sample.join("expect.json"), r#"{"status": 400, "pointers": ["/job_details/job_id"], "rules": ["spin-forever"]}"#).unwrap();
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

#[test]
fn a_broken_rule_file_written_under_load_fails_no_request() {
    let (server, rules, before) = on_copied_rules();
    let server = std::sync::Arc::new(server);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..3 {
        let (server, stop) = (server.clone(), stop.clone());
        workers.push(std::thread::spawn(move || {
            let (mut ok, mut other) = (0, Vec::new());
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let a = server.post(&body("public-energisation-only", &format!("load-{w}-{n}")));
                n += 1;
                if a.status == 200 {
                    ok += 1;
                } else {
                    other.push(a.status);
                }
            }
            (ok, other)
        }));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Half-written, then broken, then an unknown field: each refused while requests flow.
    let path = rules.join("rules/scenarios.yaml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    server.wait_for("the first refusal", || server.get("/readyz").json()["last_rules_reload"]["ok"] == false);
    std::fs::write(&path, good.replace("scenarios:", "scenarioz:")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(server.app.rules.load().revision, before, "a broken edit replaced the running set");
    // Put right again: accepted.
    std::fs::write(&path, good.replace("name: \"Aborted: during work\"", "name: \"Aborted: during the work\"")).unwrap();
    server.wait_for("the good edit", || server.app.rules.load().revision != before);
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut other) = (0, Vec::new());
    for w in workers {
        let (o, x) = w.join().unwrap();
        ok += o;
        other.extend(x);
    }
    println!("broken rule under load: {ok} requests answered 200, {} otherwise", other.len());
    assert!(ok > 20, "the load ran: {ok}");
    assert!(other.is_empty(), "requests failed while rules were edited: {other:?}");
}

#[test]
fn a_revoked_key_is_refused_without_a_restart() {
    let server = TestServer::start(|_| {});
    assert_eq!(server.post(&body("public-completed-isolation", "before-revoke")).status, 200);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowgate")).args(["keys", "revoke", "Test SIP", "--data-dir"]).arg(&server.data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    server.wait_for("the revocation", || server.post(&body("public-completed-isolation", "after-revoke")).status == 401);
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_flowgate")).args(["keys", "list", "--data-dir"]).arg(&server.data).output().unwrap();
    let text = String::from_utf8(list.stdout).unwrap();
    assert!(text.contains("revoked") && text.contains("Test SIP"), "{text}");
    assert!(!text.contains(&server.key), "keys list shows a key");
}

/// The last reload's outcome once the server has looked at an edit: the revision moved, or
/// `/readyz` shows a refusal.
fn reload_outcome(server: &TestServer, before: &str) -> Value {
    server.wait_for("the reload", || server.app.rules.load().revision != before || server.get("/readyz").json()["last_rules_reload"]["ok"] == false);
    server.get("/readyz").json()
}

#[test]
fn an_emptied_consistency_file_is_refused_and_the_check_digit_rule_keeps_serving() {
    let (server, rules, before) = on_copied_rules();

    std::fs::write(rules.join("rules/consistency.yaml"), "").unwrap();
    let ready = reload_outcome(&server, &before);
    assert_eq!(ready["last_rules_reload"]["ok"], false, "the emptied file was accepted: {ready}");
    assert_eq!(ready["ruleset"], before.as_str(), "{ready}");
    assert_eq!(server.app.rules.load().revision, before);
    // The refusal names a sample that no longer gets its answer.
    let error = ready["last_rules_reload"]["error"].as_str().unwrap();
    assert!(error.contains("sample"), "{error}");

    let a = server.post(&body("public-bad-mpan-check-digit", "emptied-1"));
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(a.json()["errors"][0]["rule"], "mpan-check-digit", "{}", a.text());
}

#[test]
fn a_rule_no_sample_fires_is_refused_and_readyz_names_it() {
    let (server, rules, before) = on_copied_rules();

    let path = rules.join("rules/consistency.yaml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(
        "\n  - id: town-in-capitals\n    pointer: /job_details/town\n    message: the town is written in capitals\n    when: job.town == job.town.to_upper()\n",
    );
    std::fs::write(&path, text).unwrap();
    let ready = reload_outcome(&server, &before);
    assert_eq!(ready["last_rules_reload"]["ok"], false, "a rule no sample fires was accepted: {ready}");
    let error = ready["last_rules_reload"]["error"].as_str().unwrap();
    assert!(error.contains("exercises rule town-in-capitals") && error.contains("coverage: rules 21/22"), "{error}");
    assert_eq!(server.app.rules.load().revision, before);
}

/// Rewrites a file without changing its size and puts its modification time back, as `cp -p`,
/// `rsync -t` or `tar` do.
fn edit_keeping_size_and_mtime(path: &std::path::Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    edit(path, from, to);
    std::fs::File::options().write(true).open(path).unwrap().set_modified(mtime).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().modified().unwrap(), mtime);
}

#[test]
fn a_same_size_edit_with_its_modification_time_put_back_is_loaded() {
    let (server, rules, before) = on_copied_rules();
    assert_eq!(server.post(&body("s08-re-energised", "mtime-1")).json()["scenario_name"], "Aborted: during work");

    edit_keeping_size_and_mtime(&rules.join("rules/scenarios.yaml"), "name: \"Aborted: during work\"", "name: \"Aborted: during WORK\"");
    server.wait_for("the edit to load", || server.app.rules.load().revision != before);
    assert_eq!(server.post(&body("s08-re-energised", "mtime-2")).json()["scenario_name"], "Aborted: during WORK");
}

#[cfg(unix)]
#[test]
fn rule_files_linked_into_a_configmap_style_data_folder_reload_when_the_data_link_is_swapped() {
    use std::os::unix::fs::symlink;
    // Kubernetes mounts a ConfigMap as `..<version>/` folders and a `..data` link to the current
    // one; each file is a link through `..data`. An update writes a new version folder and
    // renames a new link over `..data`: the links the rules folder holds never change.
    let root = common::temp_dir("rules");
    common::copy_rules(&root);
    let (rules, config) = (root.join("rules"), root.join("config"));
    let v1 = config.join("..v1");
    std::fs::create_dir_all(&v1).unwrap();
    let mut names = Vec::new();
    for e in std::fs::read_dir(&rules).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            let name = e.file_name().to_string_lossy().into_owned();
            std::fs::rename(e.path(), v1.join(&name)).unwrap();
            symlink(format!("../config/..data/{name}"), rules.join(&name)).unwrap();
            names.push(name);
        }
    }
    assert!(names.iter().any(|n| n == "scenarios.yaml"), "{names:?}");
    symlink("..v1", config.join("..data")).unwrap();

    let r = root.clone();
    let server = TestServer::start(move |c| c.rules_dir = r);
    let before = server.app.rules.load().revision.clone();

    let v2 = config.join("..v2");
    std::fs::create_dir_all(&v2).unwrap();
    for name in &names {
        std::fs::copy(v1.join(name), v2.join(name)).unwrap();
    }
    edit(&v2.join("scenarios.yaml"), "name: \"Aborted: during work\"", "name: \"Aborted: during the work\"");
    symlink("..v2", config.join("..data_tmp")).unwrap();
    std::fs::rename(config.join("..data_tmp"), config.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();

    server.wait_for("the swapped files to load", || server.app.rules.load().revision != before);
    let ready = server.get("/readyz").json();
    assert_eq!(ready["last_rules_reload"]["ok"], true, "{ready}");
    assert_eq!(server.post(&body("s08-re-energised", "configmap-1")).json()["scenario_name"], "Aborted: during the work");
}

#[test]
fn a_same_size_keys_edit_with_its_modification_time_put_back_is_loaded() {
    let server = TestServer::start(|_| {});
    assert_eq!(server.post(&body("public-completed-isolation", "keys-mtime-1")).status, 200);
    // Revoking turns `revoked: false` into `revoked: true`, one byte shorter: the client's name
    // gains a character so the file keeps its size.
    let path = server.data.join("keys.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let revoked = text.replacen("revoked: false", "revoked: true", 1).replacen("name: Test SIP", "name: Test SIPs", 1);
    assert_eq!(revoked.len(), text.len(), "{text}");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, revoked).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
    server.wait_for("the revocation", || server.post(&body("public-completed-isolation", "keys-mtime-2")).status == 401);
}
