//! The durable promise against the real binary: SIGKILL at any moment, restart, and every
//! request that got a 200 has its flow files in the sink exactly once; nothing else is there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

fn body(n: usize, round: usize) -> Vec<u8> {
    let name = ["public-energisation-only", "s01-all-flows", "public-completed-isolation", "s08-left-de-energised-with-fault"][n % 4];
    let mut v: Value = serde_json::from_slice(&std::fs::read(common::repo().join("tests/cases").join(name).join("request.json")).unwrap()).unwrap();
    v["job_details"]["job_id"] = Value::String(format!("crash-{round}-{n}"));
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_flow_and_writes_none_twice() {
    let data = common::temp_dir("crash");
    let key = common::add_key_cli(&data, "Crash SIP");
    // file id → (request, object) for every flow of every 200.
    let acknowledged: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let rounds = 4;
    let per_round = 24;
    let mut seed: u64 = 0x5eed_f10e;
    for round in 0..rounds {
        let (mut child, addr) = common::serve_binary(&data, &[]);
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let kill_after = Duration::from_millis(20 + (seed >> 33) % 150);
        let mut workers = Vec::new();
        for w in 0..4 {
            let (key, acknowledged) = (key.clone(), acknowledged.clone());
            workers.push(std::thread::spawn(move || {
                for n in (w..per_round).step_by(4) {
                    let b = body(n, round);
                    let r = common::try_request(addr, "POST", "/v4/sip", &[("Content-Type", "application/json"), ("X-API-Key", &key)], &b);
                    let Ok(a) = r else { return };
                    if a.status == 200 {
                        for f in a.json()["flows"].as_array().unwrap() {
                            acknowledged.lock().unwrap().insert(f["file_id"].as_str().unwrap().to_string(), f["object"].as_str().unwrap().to_string());
                        }
                    }
                }
            }));
        }
        std::thread::sleep(kill_after);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for w in workers {
            let _ = w.join();
        }
    }
    // A last clean start delivers whatever was still in the outbox.
    let (mut child, addr) = common::serve_binary(&data, &[]);
    let dtn = data.join("dtn");
    let expected: BTreeSet<String> = acknowledged.lock().unwrap().values().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let present: BTreeSet<String> = common::usr_files(&dtn).iter().map(|p| p.strip_prefix(&dtn).unwrap().display().to_string()).collect();
        if expected.is_subset(&present) {
            break;
        }
        assert!(Instant::now() < deadline, "missing after restart: {:?}", expected.difference(&present).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let files = common::usr_files(&dtn);
    // Every file on disk is a distinct file id; any extra file belongs to a request that was
    // stored but whose 200 was lost with the connection (the client retries and gets it back).
    let ids: Vec<String> = files.iter().map(|p| p.file_stem().unwrap().to_string_lossy().rsplit('_').next().unwrap().to_string()).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a file id was written twice");
    let ready = common::request(addr, "GET", "/metrics", &[], b"").text();
    let depth_zero = ready.lines().any(|l| l == "flowgate_outbox_depth 0");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(depth_zero, "the outbox is not empty: {ready}");
    println!("crash test: {rounds} SIGKILLs, {} flow files acknowledged, {} found, duplicates 0", expected.len(), files.len());
}
