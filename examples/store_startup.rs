//! Start-up time of a store holding many accepted requests (issue 13: start-up ≤ 1 s with 1M
//! requests stored). Fills a store through the public `Store` API, concurrently so the writer's
//! group commit batches the accepts, then closes it and times `Store::open` on it.
//!
//!     cargo run --release --example store_startup -- --dir DIR [--requests 1000000]
//!         [--concurrency 512] [--opens 3] [--reuse]
//!
//! Each request is the 3 KB reference body (`tests/bench/s01-reference.json`) decided once by the
//! repository's rule set, stored under its own request and job id with the flow files the
//! decision chose, as the server stores an accepted request. `--reuse` skips the fill and only
//! times the opens of a store filled before. Prints the fill rate, the store's size and each
//! open's time; a benchmark with a report, not a test.
//!
//! The store is closed cleanly between opens here. A store the last process did not close (a
//! crash, or a process that exits without dropping its database) is repaired by redb on open,
//! which walks every page: run `--reuse` after such a stop to time that case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use flowgate::domain::auth::{Client, Rate};
use flowgate::domain::clock::Clock;
use flowgate::rules::decide::{decide, Explain, Verdict};
use flowgate::store::{AcceptOutcome, NewRequest, Store};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(arg(&args, "--dir").expect("--dir DIR: where the store goes"));
    let requests: u64 = arg(&args, "--requests").map_or(1_000_000, |v| v.parse().expect("--requests N"));
    let concurrency: u64 = arg(&args, "--concurrency").map_or(512, |v| v.parse().expect("--concurrency N"));
    let opens: usize = arg(&args, "--opens").map_or(3, |v| v.parse().expect("--opens N"));
    let reuse = args.iter().any(|a| a == "--reuse");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    if !reuse {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let config = flowgate::config::Config { rules_dir: repo.clone(), ..Default::default() };
        let set = flowgate::rules::load::load(&config).unwrap();
        let body = bytes::Bytes::from(std::fs::read(repo.join("tests/bench/s01-reference.json")).unwrap());
        let client = Client {
            name: "Startup Bench".into(),
            sip_id: "DEMO".into(),
            key_id: "bench".into(),
            key_sha256: String::new(),
            rate: Rate::default(),
            revoked: false,
        };
        let now = Clock::System;
        let Verdict::Accepted(accepted) = decide(&set, &client, &body, now, Explain::No).verdict else { panic!("the reference body is not accepted") };
        let accepted = Arc::new(accepted);
        let envelope = set.envelope.clone();
        let ruleset = set.revision.clone();
        let store = Store::open(&dir, "SB").unwrap();
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for worker in 0..concurrency {
                let (store, accepted, body, envelope, ruleset, done) =
                    (store.clone(), accepted.clone(), body.clone(), envelope.clone(), ruleset.clone(), done.clone());
                tasks.push(tokio::spawn(async move {
                    let mut n = worker;
                    while n < requests {
                        let new = NewRequest {
                            request_id: format!("SB{n:014}"),
                            client: "Startup Bench".into(),
                            key_id: "bench".into(),
                            job_id: format!("STARTUP-{n}"),
                            body_hash: format!("{n:064x}"),
                            body: body.clone(),
                            scenario: accepted.scenario.clone(),
                            scenario_name: accepted.scenario_name.clone(),
                            warnings: vec![],
                            flows: accepted.flows.clone(),
                            ruleset: ruleset.clone(),
                            envelope: envelope.clone(),
                            now: time::OffsetDateTime::now_utc(),
                            sip_id: "DEMO".into(),
                            mpan: accepted.mpan.clone(),
                            date_of_action: accepted.date_of_action.clone(),
                        };
                        match store.accept(new).await {
                            Ok(AcceptOutcome::Accepted(_)) => {}
                            Ok(_) => panic!("request {n} was not new"),
                            Err(e) => panic!("request {n}: {e}"),
                        }
                        let total = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if total % 100_000 == 0 {
                            eprintln!("{total} stored in {:.1} s", started.elapsed().as_secs_f64());
                        }
                        n += concurrency;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        let secs = started.elapsed().as_secs_f64();
        println!(
            "filled: {requests} requests in {secs:.1} s ({:.0} req/s, {} commits, largest batch {})",
            requests as f64 / secs,
            store.stats.commits.load(Ordering::Relaxed),
            store.stats.largest_batch.load(Ordering::Relaxed)
        );
        rt.block_on(store.close());
    }
    println!("store: {:.1} MiB", dir_bytes(&dir) as f64 / 1048576.0);
    for i in 0..opens {
        let t = Instant::now();
        let store = loop {
            match Store::open(&dir, "SB") {
                Ok(s) => break s,
                // The previous handle's writer thread may still be closing the database.
                Err(e) if t.elapsed().as_secs() < 10 => {
                    eprintln!("open: {e}; again");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => panic!("open: {e}"),
            }
        };
        let opened = t.elapsed();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let pending = rt.block_on(store.pending_count()).unwrap();
        println!("open {}: Store::open took {:.3} s ({} files in the outbox)", i + 1, opened.as_secs_f64(), pending);
        rt.block_on(store.close());
    }
}
