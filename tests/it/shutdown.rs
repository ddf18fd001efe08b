//! SIGTERM under load: the server stops accepting, finishes what is in flight, exits 0 within its
//! grace period, and every request that got a 200 is in the store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn sigterm_under_load_exits_zero_in_time_and_keeps_every_acknowledged_request() {
    let data = common::temp_dir("sigterm");
    let key = common::add_key_cli(&data, "Load");
    let (mut child, addr) = common::serve_binary(&data, &[]);
    let body: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::repo().join("tests/cases/public-energisation-only/request.json")).unwrap()).unwrap();
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (key, acknowledged, stop, mut body) = (key.clone(), acknowledged.clone(), stop.clone(), body.clone());
        workers.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 2000 {
                body["job_details"]["job_id"] = format!("term-{w}-{n}").into();
                n += 1;
                let b = serde_json::to_vec(&body).unwrap();
                match common::try_request(addr, "POST", "/v4/sip", &[("Content-Type", "application/json"), ("X-API-Key", &key)], &b) {
                    Ok(a) if a.status == 200 => acknowledged.lock().unwrap().push(a.json()["request_id"].as_str().unwrap().to_string()),
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(700));
    let sent = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(sent.elapsed() < Duration::from_secs(20), "not stopped 20 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(status.success(), "exit status {status:?}");
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 10, "the load got {} answers", acknowledged.len());
    // Restart: every acknowledged request is there.
    let (mut child, addr) = common::serve_binary(&data, &[]);
    for id in &acknowledged {
        let a = common::request(addr, "GET", &format!("/v4/sip/{id}"), &[("X-API-Key", &key)], b"");
        assert_eq!(a.status, 200, "request {id} is missing after the restart");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    println!("sigterm test: {} acknowledged, all found after restart; stopped {:?} after the signal", acknowledged.len(), sent.elapsed());
}
