//! The durable promise against the real binary: SIGKILL at any moment, restart, and every
//! request that got a 200 has its flow files in the sink exactly once; nothing else is there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

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
        if round == 0 {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !acknowledged.lock().unwrap().contains_key("photos-0-0-0") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_millis(300));
        } else {
            std::thread::sleep(kill_after);
        }
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
    // Partial files of the killed runs are cleared at start; the last run's own are removed as it goes.
    let leftovers = tmp_files(&dtn);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(depth_zero, "the outbox is not empty: {ready}");
    assert!(leftovers.is_empty(), "{} temporary files left in dtn/.tmp after the restart: {leftovers:?}", leftovers.len());
    println!("crash test: {rounds} SIGKILLs, {} flow files acknowledged, {} found, duplicates 0, leftovers in .tmp 0", expected.len(), files.len());
}

/// The names in the local sink's temporary folder.
fn tmp_files(dtn: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dtn.join(".tmp")).map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect()).unwrap_or_default();
    names.sort();
    names
}

#[test]
fn partial_files_left_in_the_sinks_temporary_folder_are_cleared_at_start() {
    let data = common::temp_dir("leftovers");
    let tmp = data.join("dtn").join(".tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let hour = Duration::from_secs(3600);
    let now = std::time::SystemTime::now();
    // What a SIGKILL leaves: files named like the sink's own (`<ulid>.<pid>`), part-written.
    let stale: Vec<String> = (0..5).map(|n| format!("{}.{}", ulid::Ulid::new(), 4000 + n)).collect();
    for name in &stale {
        let f = std::fs::File::create(tmp.join(name)).unwrap();
        std::io::Write::write_all(&mut &f, b"ZHV|FG0000").unwrap();
        f.set_modified(now - hour).unwrap();
    }
    // Dated after the start: not a leftover of an earlier run, so it is left alone.
    let newer = format!("{}.{}", ulid::Ulid::new(), 4999);
    std::fs::File::create(tmp.join(&newer)).unwrap().set_modified(now + hour).unwrap();
    let server = common::TestServer::start_in(data.clone(), |_| {});
    assert_eq!(tmp_files(&data.join("dtn")), vec![newer.clone()], "only the file dated after the start stays");
    // Delivery works as before and leaves nothing of its own behind.
    let b = body(0, 0);
    let a = server.post(&b);
    assert_eq!(a.status, 200, "{}", a.text());
    server.wait_for("the outbox to drain", || server.on(server.app.store.pending_count()).unwrap() == 0);
    assert_eq!(tmp_files(&data.join("dtn")), vec![newer]);
    println!("leftovers: {} stale temporary files cleared at start, 1 newer kept", stale.len());
}

/// Job id → (the body sent, the object names of its flows) for every 200.
type Acknowledged = BTreeMap<String, (Vec<u8>, Vec<String>)>;

/// The durable promise with real job bodies (photos, one of 30 MB): SIGKILL while they are being
/// received, decided and stored; after a restart every acknowledged body is in its job archive
/// byte for byte and its flow files are delivered, each once.
#[test]
fn photo_bodies_acknowledged_before_a_sigkill_are_archived_byte_for_byte() {
    let data = common::temp_dir("crash-photos");
    let key = common::add_key_cli(&data, "Crash Photos");
    let acknowledged: Arc<Mutex<Acknowledged>> = Arc::default();
    let mut seed: u64 = 0x9407_0b0d;
    for round in 0..3 {
        let (mut child, addr) = common::serve_binary(&data, &[]);
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        // The first round kills once the 30 MB body is acknowledged (however long that takes on
        // a loaded machine, up to two minutes); the others cut in while bodies are being
        // received, decided and stored.
        let kill_after = Duration::from_millis(1500 + (seed >> 33) % 2500);
        let mut workers = Vec::new();
        for w in 0..2 {
            let (key, acknowledged) = (key.clone(), acknowledged.clone());
            workers.push(std::thread::spawn(move || {
                for n in 0..4 {
                    let job_id = format!("photos-{round}-{w}-{n}");
                    // One 30 MB body (four photos of 5.5 MB, in base64), the others about 8 MB.
                    let size = if round == 0 && w == 0 && n == 0 { 5_500_000 } else { 1_500_000 };
                    let b = common::photo_body(&job_id, size, (round * 100 + w * 10 + n) as u64 + 1);
                    let r = common::try_request(addr, "POST", "/v4/sip", &[("Content-Type", "application/json"), ("X-API-Key", &key)], &b);
                    let Ok(a) = r else { return };
                    if a.status == 200 {
                        let objects = a.json()["flows"].as_array().unwrap().iter().map(|f| f["object"].as_str().unwrap().to_string()).collect();
                        acknowledged.lock().unwrap().insert(job_id, (b, objects));
                    }
                }
            }));
        }
        if round == 0 {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !acknowledged.lock().unwrap().contains_key("photos-0-0-0") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_millis(300));
        } else {
            std::thread::sleep(kill_after);
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for w in workers {
            let _ = w.join();
        }
    }
    let (mut child, _addr) = common::serve_binary(&data, &[]);
    let dtn = data.join("dtn");
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(!acknowledged.is_empty(), "no photo body was acknowledged before the kills");
    let deadline = Instant::now() + Duration::from_secs(120);
    let archives = loop {
        let archives = common::archived_bodies(&dtn);
        let present: BTreeSet<String> = common::usr_files(&dtn).iter().map(|p| p.strip_prefix(&dtn).unwrap().display().to_string()).collect();
        let done = acknowledged.iter().all(|(job, (_, objects))| archives.contains_key(job) && objects.iter().all(|o| present.contains(o)));
        if done {
            break archives;
        }
        assert!(Instant::now() < deadline, "acknowledged photo jobs not delivered after restart");
        std::thread::sleep(Duration::from_millis(200));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(acknowledged.values().any(|(b, _)| b.len() > 29_000_000), "the 30 MB body was not acknowledged before the first kill");
    let mut largest = 0;
    for (job, (body, _)) in &acknowledged {
        assert!(archives[job] == *body, "{job}: the archived body differs from the one acknowledged");
        largest = largest.max(body.len());
    }
    println!(
        "photo crash test: 3 SIGKILLs, {} photo bodies acknowledged (largest {} bytes), {} archived, each byte for byte",
        acknowledged.len(),
        largest,
        archives.len()
    );
}
