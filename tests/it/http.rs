//! The HTTP contract, against the real server on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::{request, TestServer};
use serde_json::Value;

fn case(name: &str) -> Vec<u8> {
    std::fs::read(common::repo().join("tests/cases").join(name).join("request.json")).unwrap()
}

/// Every golden case over HTTP: status, scenario, flows (flow and recipient), error pointers.
#[test]
fn every_golden_case_gets_its_answer_over_http() {
    let server = TestServer::start(|_| {});
    let mut failures = Vec::new();
    let mut expected: std::collections::BTreeMap<String, u64> = Default::default();
    let cases = flowgate::rules::samples::cases(&common::repo().join("tests/cases"));
    assert!(cases.len() >= 13);
    for dir in &cases {
        let expect: Value = serde_json::from_slice(&std::fs::read(dir.join("expect.json")).unwrap()).unwrap();
        let answer = server.post(&std::fs::read(dir.join("request.json")).unwrap());
        let body = answer.json();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        *expected.entry(format!("flowgate_http_requests_total{{route=\"/v4/sip\",status=\"{}\"}}", expect["status"])).or_default() += 1;
        if let Some(s) = expect["scenario"].as_str() {
            *expected.entry(format!("flowgate_scenarios_total{{scenario=\"{s}\"}}")).or_default() += 1;
        }
        for f in expect["flows"].as_array().into_iter().flatten() {
            let flow = f.as_str().unwrap().split('>').next().unwrap();
            *expected.entry(format!("flowgate_flows_queued_total{{flow=\"{flow}\"}}")).or_default() += 1;
        }
        if u64::from(answer.status) != expect["status"].as_u64().unwrap() {
            failures.push(format!("{name}: status {} {}", answer.status, answer.text()));
            continue;
        }
        if answer.status == 200 {
            let mut flows: Vec<String> =
                body["flows"].as_array().unwrap().iter().map(|f| format!("{}>{}", f["flow"].as_str().unwrap(), f["to"].as_str().unwrap())).collect();
            flows.sort();
            let want: Vec<String> = serde_json::from_value(expect["flows"].clone()).unwrap();
            if flows != want || body["scenario"] != expect["scenario"] {
                failures.push(format!("{name}: {} {flows:?}", body["scenario"]));
            }
            for f in body["flows"].as_array().unwrap() {
                let id = f["file_id"].as_str().unwrap();
                assert!(id.len() == 10 && id.starts_with("FG"), "{name}: file id {id}");
            }
            assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
            assert!(body["ruleset"].as_str().is_some_and(|s| !s.is_empty()));
            assert!(answer.header("ratelimit").is_some(), "{name}: 2xx carries RateLimit");
        } else {
            assert_eq!(answer.header("content-type"), Some("application/problem+json"));
            let mut got: Vec<String> = body["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap().to_string()).collect();
            got.sort();
            got.dedup();
            let want: Vec<String> = serde_json::from_value(expect["pointers"].clone()).unwrap();
            if got != want {
                failures.push(format!("{name}: pointers {got:?}, want {want:?}"));
            }
            assert!(body["ruleset"].as_str().is_some_and(|s| !s.is_empty()), "{name}: a 400 names the rule set");
            for e in body["errors"].as_array().unwrap() {
                assert!(e["rule"].as_str().is_some_and(|r| !r.is_empty()) && e["message"].as_str().is_some_and(|m| !m.is_empty()));
            }
        }
    }
    assert!(failures.is_empty(), "{} cases differ:\n{}", failures.len(), failures.join("\n"));
    // The metrics moved as the cases say they should.
    let metrics = server.get("/metrics").text();
    for (series, n) in &expected {
        assert!(metrics.lines().any(|l| l == format!("{series} {n}")), "metrics lack `{series} {n}`:\n{metrics}");
    }
    assert!(metrics.contains("flowgate_http_request_duration_seconds_bucket{route=\"/v4/sip\",le=\"+Inf\"}"));
    assert!(metrics.contains("flowgate_outbox_oldest_age_seconds "), "{metrics}");
}

#[test]
fn each_kind_of_bad_request_gets_its_own_status_and_the_next_request_is_unaffected() {
    let server = TestServer::start(|c| c.body_limit_bytes = 64 * 1024);
    let good = case("public-completed-isolation");
    let key = server.key.clone();
    let json = [("Content-Type", "application/json"), ("X-API-Key", key.as_str())];
    type Send<'a> = Box<dyn Fn() -> common::Answer + 'a>;
    let cases: Vec<(&str, u16, Send)> = vec![
        ("malformed JSON", 400, Box::new(|| server.post(b"{\"job_details\": "))),
        ("not an object", 400, Box::new(|| server.post(b"[1,2,3]"))),
        ("invalid UTF-8", 400, Box::new(|| server.post(b"{\"a\": \"\xff\xfe\"}"))),
        ("wrong content type", 415, Box::new(|| request(server.addr, "POST", "/v4/sip", &[("Content-Type", "text/plain"), ("X-API-Key", &key)], &good))),
        ("too large", 413, Box::new(|| request(server.addr, "POST", "/v4/sip", &json, &vec![b' '; 200 * 1024]))),
        ("no key", 401, Box::new(|| request(server.addr, "POST", "/v4/sip", &[("Content-Type", "application/json")], &good))),
        ("unknown key", 401, Box::new(|| request(server.addr, "POST", "/v4/sip", &[("Content-Type", "application/json"), ("X-API-Key", "fgk_nope")], &good))),
        ("unknown route", 404, Box::new(|| server.get("/v5/nothing"))),
        ("wrong method", 405, Box::new(|| server.get("/v4/sip"))),
    ];
    for (what, status, send) in cases {
        let a = send();
        assert_eq!(a.status, status, "{what}: {}", a.text());
        let p = a.json();
        assert_eq!(p["status"], status, "{what}");
        assert!(p["type"].as_str().unwrap().starts_with("/problems/"), "{what}");
        assert!(p["title"].is_string() && p["detail"].is_string() && p["request_id"].is_string(), "{what}");
        assert_eq!(a.header("content-type"), Some("application/problem+json"), "{what}");
        // The next good request is unaffected.
        let mut body: Value = serde_json::from_slice(&good).unwrap();
        body["job_details"]["job_id"] = Value::String(format!("after-{}", what.replace(' ', "-")));
        let ok = server.post(&serde_json::to_vec(&body).unwrap());
        assert_eq!(ok.status, 200, "after {what}: {}", ok.text());
    }
    // Bearer works as well as X-API-Key.
    let bearer = format!("Bearer {}", server.key);
    let a = request(server.addr, "POST", "/v4/sip", &[("Content-Type", "application/json; charset=utf-8"), ("Authorization", &bearer)], &good);
    assert_eq!(a.status, 200, "{}", a.text());
}

#[test]
fn a_burst_over_the_limit_gets_429_with_retry_after_and_ratelimit_fields() {
    let server = TestServer::start(|_| {});
    // A second client with a small quota.
    let mut keys = flowgate::domain::auth::KeysFile::read(&server.data.join("keys.yaml")).unwrap();
    let key = keys.add("Small SIP", "SMAL", flowgate::domain::auth::Rate { per_second: 1, burst: 3 }).unwrap();
    keys.write(&server.data.join("keys.yaml")).unwrap();
    server.wait_for("the keys reload", || server.app.keys.load().keys.authenticate(&key).is_some());
    let post = || request(server.addr, "POST", "/v4/sip", &[("Content-Type", "application/json"), ("X-API-Key", &key)], b"{}");
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let a = post();
        statuses.push(a.status);
        if a.status == 429 {
            limited = Some(a);
        }
    }
    assert_eq!(&statuses[..3], &[400, 400, 400], "the burst of 3 passes: {statuses:?}");
    let a = limited.expect("a 429 within 6 requests");
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert!(a.header("ratelimit-policy").unwrap().contains("q=3"));
    assert!(a.header("ratelimit").unwrap().contains("r=0"));
    // The default client is not affected.
    assert_eq!(server.post(b"{}").status, 400);
}

#[test]
fn the_same_body_again_replays_the_first_answer_and_a_different_body_conflicts_also_after_restart() {
    let server = TestServer::start(|_| {});
    let body = case("public-energisation-only");
    let first = server.post(&body);
    assert_eq!(first.status, 200, "{}", first.text());
    // Same JSON value, other key order and white space.
    let value: Value = serde_json::from_slice(&body).unwrap();
    let pretty = serde_json::to_vec_pretty(&value).unwrap();
    let again = server.post(&pretty);
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["request_id"], first.json()["request_id"]);
    assert_eq!(again.json()["flows"], first.json()["flows"]);
    let mut changed = value.clone();
    changed["job_completion"]["job_notes"] = Value::String("changed".into());
    let conflict = server.post(&serde_json::to_vec(&changed).unwrap());
    assert_eq!(conflict.status, 409, "{}", conflict.text());
    assert_eq!(conflict.json()["existing_request_id"], first.json()["request_id"]);

    let data = server.stop();
    let server = TestServer::start_in(data, |_| {});
    let after = server.post(&body);
    assert_eq!(after.status, 200);
    assert_eq!(after.header("idempotent-replayed"), Some("true"));
    assert_eq!(after.json()["request_id"], first.json()["request_id"]);
    assert_eq!(server.post(&serde_json::to_vec(&changed).unwrap()).status, 409);
    // One set of files: two flows, written once each.
    server.wait_for("delivery", || common::usr_files(&server.data.join("dtn")).len() == 2);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(common::usr_files(&server.data.join("dtn")).len(), 2);
}

#[test]
fn accepted_flows_are_delivered_to_the_local_dtn_folder_under_their_object_names() {
    let server = TestServer::start(|_| {});
    let a = server.post(&case("s01-all-flows"));
    assert_eq!(a.status, 200, "{}", a.text());
    let body = a.json();
    let flows = body["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 4);
    server.wait_for("all four files", || common::usr_files(&server.data.join("dtn")).len() == 4);
    for f in flows {
        let object = f["object"].as_str().unwrap();
        let to = f["to"].as_str().unwrap().replace('/', "");
        let expected = format!("out/{to}/{}_DEMO_{}.usr", f["flow"].as_str().unwrap(), f["file_id"].as_str().unwrap());
        assert_eq!(object, expected);
        let text = std::fs::read_to_string(server.data.join("dtn").join(object)).unwrap();
        assert!(text.starts_with(&format!("ZHV|{}|", f["file_id"].as_str().unwrap())));
        assert!(text.lines().last().unwrap().starts_with(&format!("ZPT|{}|", f["file_id"].as_str().unwrap())));
    }
    // The status route shows each delivered.
    let id = body["request_id"].as_str().unwrap();
    server.wait_for("delivered states", || {
        let s = server.get(&format!("/v4/sip/{id}")).json();
        s["flows"].as_array().unwrap().iter().all(|f| f["state"] == "delivered")
    });
    // An id that does not exist is not found; the status carries the key's rate limit.
    let other = request(server.addr, "GET", "/v4/sip/01JNOTANID", &[("X-API-Key", &server.key)], b"");
    assert_eq!(other.status, 404);
    let mine = server.get(&format!("/v4/sip/{id}"));
    assert_eq!(mine.status, 200);
    assert!(mine.header("ratelimit").is_some(), "every 2xx carries RateLimit");

    // Keys added while the server runs: a second key of the same client (a rotation) sees the
    // client's request, as it would get its first answer again; another client's key gets 404.
    // Status calls count against the calling key's rate limit.
    let keys_path = server.data.join("keys.yaml");
    let mut keys = flowgate::domain::auth::KeysFile::read(&keys_path).unwrap();
    let rotated = keys.add("Test SIP", "DEMO", flowgate::domain::auth::Rate { per_second: 1, burst: 1 }).unwrap();
    let stranger = keys.add("Other SIP", "OTHR", flowgate::domain::auth::Rate { per_second: 100, burst: 100 }).unwrap();
    keys.write(&keys_path).unwrap();
    let get_with = |key: &str| request(server.addr, "GET", &format!("/v4/sip/{id}"), &[("X-API-Key", key)], b"");
    server.wait_for("the new keys to be loaded", || get_with(&stranger).status != 401);
    let theirs = get_with(&stranger);
    assert_eq!(theirs.status, 404, "{}", theirs.text());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let seen = get_with(&rotated);
    assert_eq!(seen.status, 200, "{}", seen.text());
    assert_eq!(seen.json()["request_id"], id);
    let again = get_with(&rotated);
    assert_eq!(again.status, 429, "{}", again.text());
    assert!(again.header("retry-after").is_some());
    assert_eq!(get_with(&server.key).status, 200);
}

#[test]
fn health_readiness_metrics_and_openapi_answer() {
    let server = TestServer::start(|_| {});
    assert_eq!(server.get("/healthz").status, 200);
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 200);
    assert!(ready.json()["ruleset"].as_str().is_some());
    assert_eq!(server.post(&case("public-completed-isolation")).status, 200);
    assert_eq!(server.post(&case("public-bad-mpan-check-digit")).status, 400);
    let m = server.get("/metrics").text();
    assert!(m.contains("flowgate_http_requests_total{route=\"/v4/sip\",status=\"200\"} 1"), "{m}");
    assert!(m.contains("flowgate_scenarios_total{scenario=\"S01\"} 1"), "{m}");
    assert!(m.contains("flowgate_validation_findings_total{rule=\"mpan-check-digit\"} 1"), "{m}");
    let api = server.get("/v4/openapi.json").json();
    assert_eq!(api["openapi"], "3.1.0");
    assert_eq!(api["components"]["schemas"]["SipRequest"]["properties"]["job_details"]["type"], "object");
}

/// A client's identity is its name and SIP ID, unique and fixed: a key for a name another
/// client holds is refused (by `keys add` and in a hand-edited file), another key of the same
/// client is a rotation, and no key of one client reads, replays or conflicts with another's job.
#[test]
fn a_client_name_is_one_identity_and_no_other_client_can_read_replay_or_conflict_with_its_jobs() {
    let server = TestServer::start(|_| {});
    let keys_add = |name: &str, sip_id: &str| {
        std::process::Command::new(common::BIN).args(["keys", "add", "--name", name, "--sip-id", sip_id, "--data-dir"]).arg(&server.data).output().unwrap()
    };
    let key_of = |out: std::process::Output| -> String {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim().to_string()
    };
    let alpha = key_of(keys_add("Alpha", "ALPH"));
    let beta = key_of(keys_add("Beta", "BETA"));
    let post_with = |key: &str, body: &[u8]| request(server.addr, "POST", "/v4/sip", &[("X-API-Key", key), ("Content-Type", "application/json")], body);
    let get_with = |key: &str, id: &str| request(server.addr, "GET", &format!("/v4/sip/{id}"), &[("X-API-Key", key)], b"");
    server.wait_for("the new keys", || get_with(&beta, "01JNOTANID").status != 401);

    let body = case("public-completed-isolation");
    let first = post_with(&alpha, &body);
    assert_eq!(first.status, 200, "{}", first.text());
    let id = first.json()["request_id"].as_str().unwrap().to_string();

    // Alpha's name under another SIP ID, in any case: refused, and the file is unchanged.
    let before = std::fs::read(server.data.join("keys.yaml")).unwrap();
    for name in ["Alpha", "alpha", " ALPHA "] {
        let out = keys_add(name, "ZZZZ");
        assert!(!out.status.success(), "keys add {name:?} ZZZZ was accepted");
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(why.contains("held by client \"Alpha\" (SIP ID ALPH)"), "{why}");
    }
    assert_eq!(std::fs::read(server.data.join("keys.yaml")).unwrap(), before);

    // The same clash written by hand: the reload is refused and the key it adds is unknown.
    let mut forged = flowgate::domain::auth::KeysFile::default();
    let forged_key = forged.add("Alpha", "ZZZZ", flowgate::domain::auth::Rate::default()).unwrap();
    let mut text = String::from_utf8(before.clone()).unwrap();
    let entry = yaml_serde::to_string(&forged).unwrap();
    text.push_str(entry.trim_start_matches("clients:\n"));
    std::fs::write(server.data.join("keys.yaml"), text).unwrap();
    server.wait_for("the refused keys reload", || server.get("/readyz").json()["last_keys_reload"]["ok"] == false);
    let refused = server.get("/readyz").json()["last_keys_reload"]["error"].as_str().unwrap().to_string();
    assert!(refused.contains("held by client"), "{refused}");
    assert_eq!(post_with(&forged_key, &body).status, 401);
    assert_eq!(get_with(&forged_key, &id).status, 401);
    // Alpha's SIP ID changed by hand in every entry: the file is consistent, but the store holds
    // Alpha's requests under ALPH, so the reload is refused.
    std::fs::write(server.data.join("keys.yaml"), String::from_utf8(before.clone()).unwrap().replace("sip_id: ALPH", "sip_id: ZZZZ")).unwrap();
    server.wait_for("the second refused keys reload", || {
        server.get("/readyz").json()["last_keys_reload"]["error"].as_str().is_some_and(|e| e.contains("SIP ID ALPH in the store"))
    });
    assert_eq!(get_with(&alpha, &id).status, 200, "the running keys stay");
    std::fs::write(server.data.join("keys.yaml"), &before).unwrap();
    server.wait_for("the keys file back", || server.get("/readyz").json()["last_keys_reload"]["ok"] == true);

    // A rotation (same name, same SIP ID) is the same client: it sees, replays and conflicts.
    let rotated = key_of(keys_add("Alpha", "ALPH"));
    server.wait_for("the rotated key", || get_with(&rotated, &id).status != 401);
    assert_eq!(get_with(&rotated, &id).status, 200);
    let again = post_with(&rotated, &body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["request_id"], id.as_str());
    let mut changed: Value = serde_json::from_slice(&body).unwrap();
    changed["job_completion"]["job_notes"] = Value::String("changed".into());
    let changed = serde_json::to_vec(&changed).unwrap();
    assert_eq!(post_with(&rotated, &changed).status, 409);

    // Another client with the same job id: its own request every time, never Alpha's.
    assert_eq!(get_with(&beta, &id).status, 404);
    let theirs = post_with(&beta, &body);
    assert_eq!(theirs.status, 200, "{}", theirs.text());
    assert_eq!(theirs.header("idempotent-replayed"), None);
    assert_ne!(theirs.json()["request_id"], id.as_str());
    let theirs_changed = post_with(&beta, &changed);
    assert_eq!(theirs_changed.status, 409, "Beta's second body conflicts with Beta's first, not Alpha's: {}", theirs_changed.text());
    assert_eq!(theirs_changed.json()["existing_request_id"], theirs.json()["request_id"]);
}

/// Job ids the schema allows (1-64 characters) whose percent-encoded form is longer than one
/// file name may be: 43 × "é" (258 bytes encoded), 60 emoji, 64 four-byte characters.
fn long_job_ids() -> Vec<String> {
    vec!["\u{e9}".repeat(43), "\u{1f600}".repeat(60), "\u{10348}".repeat(64)]
}

#[test]
fn long_non_ascii_job_ids_are_delivered_to_the_local_folder() {
    let server = TestServer::start(|_| {});
    let dtn = server.data.join("dtn");
    for job in long_job_ids() {
        let mut v: Value = serde_json::from_slice(&case("public-completed-isolation")).unwrap();
        v["job_details"]["job_id"] = Value::String(job.clone());
        let a = server.post(&serde_json::to_vec(&v).unwrap());
        assert_eq!(a.status, 200, "{}", a.text());
        let id = a.json()["request_id"].as_str().unwrap().to_string();
        // The 200 promised delivery: the archive and every flow reach the folder.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            let status = server.get(&format!("/v4/sip/{id}")).json();
            let flows_done = status["flows"].as_array().unwrap().iter().all(|f| f["state"] == "delivered");
            if status["archive"]["state"] == "delivered" && flows_done {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "job id of {} bytes not delivered: {status:#}", job.len());
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let archive = status["archive"]["object"].as_str().unwrap();
        assert_eq!(archive, flowgate::store::archive_name("Test SIP", &job));
        let stored = std::fs::read(dtn.join(archive)).unwrap();
        assert_eq!(flowgate::store::archive_request_id(&stored).as_deref(), Some(id.as_str()));
        let envelope: Value = serde_json::from_slice(&stored).unwrap();
        assert_eq!(envelope["job_id"], job.as_str(), "the archive keeps the exact job id");
        for f in status["flows"].as_array().unwrap() {
            let text = std::fs::read_to_string(dtn.join(f["object"].as_str().unwrap())).unwrap();
            assert!(text.starts_with(&format!("ZHV|{}|", f["file_id"].as_str().unwrap())));
        }
        // Within the limits of any sink: a file system's 255 bytes a segment, S3's 1,024 a key.
        assert!(archive.len() <= 1024 && archive.split('/').all(|s| s.len() <= 255), "{archive}");
    }
    // The same id again is the same job: its first answer, not a second archive.
    let mut v: Value = serde_json::from_slice(&case("public-completed-isolation")).unwrap();
    v["job_details"]["job_id"] = Value::String(long_job_ids()[0].clone());
    let again = server.post(&serde_json::to_vec(&v).unwrap());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
}

/// The families of a text exposition: name → the types its `# TYPE` lines give, and the names
/// its samples carry (histogram samples under their family's name).
fn families(text: &str) -> (std::collections::BTreeMap<String, Vec<String>>, std::collections::BTreeSet<String>) {
    let mut types: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut sampled = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.entry(name.to_string()).or_default().push(kind.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|t| t.contains(&"histogram".to_string()))))
                .unwrap_or(name);
            sampled.insert(family.to_string());
        }
    }
    (types, sampled)
}

/// Prometheus conventions, as a new user's dashboards and alerts assume them: every cumulative
/// series is a counter named `_total`, a gauge never is, no name has two types, every sample has
/// a type, and the README's metrics table names exactly what `/metrics` shows, with its type.
#[test]
fn metrics_follow_prometheus_naming_and_the_readme_lists_every_one() {
    let server = TestServer::start(|_| {});
    assert_eq!(server.post(&case("s01-all-flows")).status, 200);
    assert_eq!(server.post(&case("public-bad-mpan-check-digit")).status, 400);
    // The files reach the folder a moment before the dispatcher counts them: wait for the count.
    server.wait_for("delivery to be counted", || {
        let m = server.get("/metrics").text();
        m.lines().any(|l| l == "flowgate_flows_delivered_total{flow=\"D0396\"} 1") || m.lines().any(|l| l == "flowgate_flows_delivered 4")
    });
    let text = server.get("/metrics").text();
    let (types, sampled) = families(&text);
    let mut wrong = Vec::new();
    for (name, kinds) in &types {
        if kinds.len() != 1 {
            wrong.push(format!("{name} has {} TYPE lines: {kinds:?}", kinds.len()));
        }
        let counter = kinds.iter().any(|k| k == "counter");
        if name.ends_with("_total") != counter {
            wrong.push(format!("{name} is a {kinds:?}: a counter, and only a counter, is named _total"));
        }
    }
    for name in &sampled {
        if !types.contains_key(name) {
            wrong.push(format!("{name} has samples but no TYPE"));
        }
    }
    // The counts a user would graph after this traffic.
    for series in ["flowgate_flows_delivered_total{flow=\"D0396\"}", "flowgate_job_archives_delivered_total", "flowgate_store_commits_total"] {
        let v: f64 = text.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' '))).map_or(0.0, |v| v.parse().unwrap());
        if v < 1.0 {
            wrong.push(format!("{series} is {v} after delivery"));
        }
    }
    // The README's table: | `name` | type | meaning |
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    let listed: std::collections::BTreeMap<String, String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `flowgate_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once('`')?;
            let kind = rest.trim_start_matches([' ', '|']).split('|').next()?.trim();
            Some((format!("flowgate_{name}"), kind.to_string()))
        })
        .collect();
    let exposed: std::collections::BTreeMap<String, String> = types.iter().map(|(n, k)| (n.clone(), k[0].clone())).collect();
    if listed != exposed {
        let only_readme: Vec<_> = listed.iter().filter(|(n, k)| exposed.get(*n) != Some(k)).collect();
        let only_metrics: Vec<_> = exposed.iter().filter(|(n, k)| listed.get(*n) != Some(k)).collect();
        wrong.push(format!("README and /metrics differ: README only (or other type) {only_readme:?}; /metrics only (or other type) {only_metrics:?}"));
    }
    // Every metric name the README and the docs mention is one /metrics shows.
    for file in ["README.md", "docs/deployment.md", "docs/PROOF.md"] {
        let doc = std::fs::read_to_string(common::repo().join(file)).unwrap();
        for (i, _) in doc.match_indices("flowgate_") {
            let name: String = doc[i..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            if !exposed.contains_key(&name) {
                wrong.push(format!("{file} names {name}, which /metrics does not show"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}\n\n{text}", wrong.join("\n"));
}

/// What a new client expects of any HTTP API: a 405 names the methods the route takes (`Allow`),
/// HEAD works wherever GET does (same status and headers, no body), a 401 names the scheme to use
/// (`WWW-Authenticate: Bearer`), and every answer carries the server's request id, whatever id
/// the client sent.
#[test]
fn methods_head_auth_challenge_and_request_id_follow_http_conventions() {
    let server = TestServer::start(|_| {});
    let key = server.key.clone();
    let accepted = server.post(&case("public-completed-isolation"));
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    let id = accepted.json()["request_id"].as_str().unwrap().to_string();
    let status_path = format!("/v4/sip/{id}");
    let mut wrong = Vec::new();

    // 405 with Allow, on every route, for methods it does not take.
    let routes: [(&str, &str, &[&str]); 6] = [
        ("/v4/sip", "POST", &["GET", "PUT", "DELETE", "HEAD"]),
        (&status_path, "GET, HEAD", &["POST", "PUT", "DELETE", "PATCH"]),
        ("/healthz", "GET, HEAD", &["POST", "DELETE"]),
        ("/readyz", "GET, HEAD", &["POST"]),
        ("/metrics", "GET, HEAD", &["POST"]),
        ("/v4/openapi.json", "GET, HEAD", &["POST"]),
    ];
    for (path, allow, refused) in routes {
        for method in refused {
            let a = request(server.addr, method, path, &[("X-API-Key", &key)], b"");
            if a.status != 405 || a.header("allow") != Some(allow) {
                wrong.push(format!("{method} {path}: {} Allow {:?}, want 405 Allow {allow:?}", a.status, a.header("allow")));
            }
        }
    }

    // HEAD on every GET route: the GET's status and headers, no body.
    for path in ["/healthz", "/readyz", "/metrics", "/v4/openapi.json", status_path.as_str()] {
        let get = request(server.addr, "GET", path, &[("X-API-Key", &key)], b"");
        let head = request(server.addr, "HEAD", path, &[("X-API-Key", &key)], b"");
        if head.status != get.status || head.header("content-type") != get.header("content-type") || !head.body.is_empty() {
            wrong.push(format!(
                "HEAD {path}: {} {:?} body {} bytes; GET: {} {:?}",
                head.status,
                head.header("content-type"),
                head.body.len(),
                get.status,
                get.header("content-type")
            ));
        }
        // /metrics and the status change between two calls; the others are the same bytes.
        if !path.starts_with("/metrics") && !path.starts_with("/v4/sip/") && head.header("content-length") != get.header("content-length") {
            wrong.push(format!("HEAD {path}: Content-Length {:?}, GET {:?}", head.header("content-length"), get.header("content-length")));
        }
        if path.starts_with("/v4/sip/") && head.header("ratelimit").is_none() {
            wrong.push(format!("HEAD {path}: no RateLimit"));
        }
    }

    // 401 names the scheme.
    for (method, path) in [("POST", "/v4/sip"), ("GET", status_path.as_str())] {
        let a = request(server.addr, method, path, &[("Content-Type", "application/json"), ("X-API-Key", "fgk_unknown")], b"{}");
        if a.status != 401 || !a.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")) {
            wrong.push(format!("{method} {path} with an unknown key: {} WWW-Authenticate {:?}", a.status, a.header("www-authenticate")));
        }
    }

    // Every answer carries our request id; a problem's body names the same one; a client's own
    // X-Request-Id or traceparent is never echoed.
    let sent = [
        ("X-API-Key", key.as_str()),
        ("Content-Type", "application/json"),
        ("X-Request-Id", "client-chosen-id"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ];
    let answers = [
        (
            "POST /v4/sip 200",
            request(server.addr, "POST", "/v4/sip", &sent, &{
                let mut b: Value = serde_json::from_slice(&case("public-completed-isolation")).unwrap();
                b["job_details"]["job_id"] = Value::String("request-id-test".into());
                serde_json::to_vec(&b).unwrap()
            }),
        ),
        ("POST /v4/sip 400", request(server.addr, "POST", "/v4/sip", &sent, b"{}")),
        ("GET status", request(server.addr, "GET", &status_path, &sent, b"")),
        ("404", request(server.addr, "GET", "/nothing", &sent, b"")),
        ("405", request(server.addr, "DELETE", "/v4/sip", &sent, b"")),
        ("401", request(server.addr, "POST", "/v4/sip", &[("X-Request-Id", "client-chosen-id")], b"{}")),
        ("healthz", request(server.addr, "GET", "/healthz", &sent, b"")),
        ("HEAD metrics", request(server.addr, "HEAD", "/metrics", &sent, b"")),
    ];
    for (what, a) in &answers {
        match a.header("x-request-id") {
            Some(v) if v.len() == 26 && v.chars().all(|c| c.is_ascii_alphanumeric()) => {
                if a.status >= 400 && a.json()["request_id"] != *v {
                    wrong.push(format!("{what}: X-Request-Id {v} but the problem names {}", a.json()["request_id"]));
                }
            }
            other => wrong.push(format!("{what}: {} X-Request-Id {other:?}, want the server's id", a.status)),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
