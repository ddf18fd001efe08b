//! Delivery to a real object store (Ceph RADOS Gateway, started by `scripts/ceph.sh`): create-only
//! writes, a store outage, SIGKILL of the real binary mid-dispatch, two instances given the same
//! job, and the public cases read back from the bucket. Each test writes under its own prefix.
//!
//! Needs `FLOWGATE_S3_ENDPOINT`, `FLOWGATE_S3_BUCKET`, `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY`: `eval "$(scripts/ceph.sh start)"` (scripts/test.sh does it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowgate::config::{Config, S3Config, SinkKind};
use flowgate::sink::s3::S3Sink;
use flowgate::sink::{Got, Listing, ObjectStore, PutOutcome};
use serde_json::Value;

/// The store's endpoint and bucket from the environment; fails loudly without them.
pub(crate) fn s3_env() -> (String, String) {
    let names = ["FLOWGATE_S3_ENDPOINT", "FLOWGATE_S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"];
    let missing: Vec<&str> = names.iter().copied().filter(|k| std::env::var(k).map_or(true, |v| v.is_empty())).collect();
    assert!(
        missing.is_empty(),
        "the S3 tests need a real store, but these are not set: {missing:?}. Start the local Ceph first with\n    eval \"$(scripts/ceph.sh start)\"\n(scripts/test.sh does this, and stops it afterwards)"
    );
    (std::env::var("FLOWGATE_S3_ENDPOINT").unwrap(), std::env::var("FLOWGATE_S3_BUCKET").unwrap())
}

/// A prefix no other test (or earlier run) uses.
fn unique_prefix(tag: &str) -> String {
    format!("test-{tag}-{}/", ulid::Ulid::new().to_string().to_lowercase())
}

pub(crate) fn s3_config(endpoint: &str, prefix: &str) -> S3Config {
    let (_, bucket) = s3_env();
    S3Config { endpoint: Some(endpoint.to_string()), region: "us-east-1".into(), bucket, prefix: prefix.to_string(), path_style: true }
}

/// The bucket under one prefix, read directly (not through any proxy), with its own runtime.
pub(crate) struct Bucket {
    sink: S3Sink,
    rt: tokio::runtime::Runtime,
}

impl Bucket {
    pub(crate) fn new(prefix: &str) -> Bucket {
        let (endpoint, _) = s3_env();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let sink = {
            let _guard = rt.enter();
            S3Sink::new(&s3_config(&endpoint, prefix)).unwrap()
        };
        Bucket { sink, rt }
    }

    pub(crate) fn list(&self, under: &str) -> Vec<String> {
        self.rt.block_on(self.sink.list(under, Listing::default())).unwrap().into_iter().map(|o| o.name).collect()
    }

    pub(crate) fn get(&self, name: &str) -> Option<Vec<u8>> {
        match self.rt.block_on(self.sink.get(name, u64::MAX)).unwrap() {
            Got::Bytes { bytes, .. } => Some(bytes),
            _ => None,
        }
    }

    pub(crate) fn put(&self, name: &str, bytes: &[u8]) {
        self.rt.block_on(self.sink.put(name, bytes.to_vec())).unwrap();
    }
}

/// Configures a test server for the S3 sink at `endpoint` under `prefix`, with quick retries.
fn use_s3(config: &mut Config, endpoint: &str, prefix: &str) {
    config.sink.kind = SinkKind::S3;
    config.sink.s3 = s3_config(endpoint, prefix);
    config.dispatch.retry_base_ms = 50;
    config.dispatch.retry_max_ms = 400;
}

/// A public or golden case's body with its job id replaced.
pub(crate) fn body(case: &str, job_id: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&std::fs::read(common::repo().join("tests/cases").join(case).join("request.json")).unwrap()).unwrap();
    v["job_details"]["job_id"] = Value::String(job_id.to_string());
    serde_json::to_vec(&v).unwrap()
}

/// Accepted cases with one to four flows each.
pub(crate) const CASES: [&str; 4] = ["public-energisation-only", "s01-all-flows", "public-completed-isolation", "public-aborted-dno-category-b"];

/// The object names a 200 answer promises.
pub(crate) fn flow_objects(answer: &Value) -> Vec<String> {
    answer["flows"].as_array().unwrap().iter().map(|f| f["object"].as_str().unwrap().to_string()).collect()
}

/// One value from the Prometheus text (0 if absent).
/// A family's value: its one unlabelled series, or the sum of its labelled ones (by flow).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|r| if r.starts_with('{') { r.split_once("} ").map(|(_, v)| v) } else { r.strip_prefix(' ') })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

pub(crate) fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn s3_puts_are_create_only_and_concurrent_writers_have_one_winner() {
    let prefix = unique_prefix("put");
    let b = Bucket::new(&prefix);
    let s = &b.sink;
    let (first, other) = (b"ZHV|first|\n".to_vec(), b"ZHV|other|\n".to_vec());
    b.rt.block_on(async {
        assert_eq!(s.put("out/a.usr", first.clone()).await.unwrap(), PutOutcome::Created);
        assert_eq!(s.put("out/a.usr", first.clone()).await.unwrap(), PutOutcome::AlreadyThere);
        assert_eq!(s.put("out/a.usr", other.clone()).await.unwrap(), PutOutcome::Different(first.clone()));
        assert!(matches!(s.get("out/a.usr", u64::MAX).await.unwrap(), Got::Bytes { bytes, .. } if bytes == first), "never overwritten");
        assert_eq!(s.get("out/missing.usr", u64::MAX).await.unwrap(), Got::Missing);
        // The rest of the object store: bounded reads, copies to free names, conditional deletes.
        let Got::TooLarge { size, etag } = s.get("out/a.usr", 4).await.unwrap() else { panic!("read past the bound") };
        assert_eq!(size, first.len() as u64);
        assert_eq!(s.put("copy/b.usr", other.clone()).await.unwrap(), PutOutcome::Created);
        assert!(s.copy_if_absent("out/a.usr", "copy/a.usr").await.unwrap());
        assert!(!s.copy_if_absent("copy/b.usr", "copy/a.usr").await.unwrap(), "the name is taken");
        assert_eq!(s.head("copy/a.usr").await.unwrap().map(|o| o.etag), Some(etag.clone()), "not overwritten");
        assert!(matches!(s.delete("copy/b.usr", etag.as_deref()).await, Err(flowgate::sink::SinkError::Replaced(_))));
        assert!(matches!(s.get("copy/b.usr", u64::MAX).await.unwrap(), Got::Bytes { bytes, .. } if bytes == other), "kept");
        s.delete("copy/a.usr", etag.as_deref()).await.unwrap();
        assert_eq!(s.head("copy/a.usr").await.unwrap(), None);
        let listed: Vec<String> = s.list("", Listing { shallow: false, after: None }).await.unwrap().into_iter().map(|o| o.name).collect();
        assert_eq!(listed, ["copy/b.usr", "out/a.usr"]);
        s.delete("copy/b.usr", None).await.unwrap();
    });
    // Eight writers race for each name: one creates it, the others find its bytes.
    let rounds = 6;
    for round in 0..rounds {
        let name = format!("race/{round}.usr");
        let outcomes = b.rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for w in 0..8u8 {
                let (s, name) = (s.clone(), name.clone());
                set.spawn(async move { (w, s.put(&name, vec![b'0' + w; 64]).await.unwrap()) });
            }
            set.join_all().await
        });
        let winners: Vec<u8> = outcomes.iter().filter(|(_, o)| *o == PutOutcome::Created).map(|(w, _)| *w).collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        let stored = b.get(&name).unwrap();
        assert_eq!(stored, vec![b'0' + winners[0]; 64]);
        assert!(outcomes.iter().all(|(_, o)| *o == PutOutcome::Created || *o == PutOutcome::Different(stored.clone())));
    }
    assert_eq!(b.list("").len(), 1 + rounds);
    println!("s3 create-only: {rounds} races of 8 writers, one winner each, 0 overwrites");
}

/// A loopback TCP proxy in front of the store that can be cut (every connection dropped, new
/// ones closed at once) and restored: a store outage without touching Ceph.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let is_up = up.clone();
        rt.spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { continue };
                if !is_up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, up, cut, _rt: rt }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn upstream() -> SocketAddr {
    let (endpoint, _) = s3_env();
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    host.parse().unwrap_or_else(|_| panic!("the outage test needs a loopback http:// endpoint with an IP, not {endpoint}"))
}

#[test]
fn a_store_outage_while_requests_are_accepted_delays_delivery_and_loses_nothing() {
    let prefix = unique_prefix("outage");
    let proxy = Proxy::start(upstream());
    let endpoint = proxy.endpoint();
    let server = common::TestServer::start(|c| use_s3(c, &endpoint, &prefix));
    let bucket = Bucket::new(&prefix);
    let mut objects = BTreeSet::new();
    let mut accepted = 0;
    let mut post = |job: String, case: &str| {
        let a = server.post(&body(case, &job));
        assert_eq!(a.status, 200, "{}", a.text());
        objects.extend(flow_objects(&a.json()));
        objects.insert(flowgate::store::archive_name("Test SIP", &job));
        accepted += 1;
    };
    // Half while the store is up, half while it is down: accepting never waits on the store.
    for n in 0..8 {
        post(format!("outage-{n}"), CASES[n % 4]);
    }
    proxy.down();
    for n in 8..16 {
        post(format!("outage-{n}"), CASES[n % 4]);
    }
    // Real job bodies while the store is down: about 8 MB, and 29 MB (four photos of 5.5 MB).
    let mut photo_jobs = Vec::new();
    for (n, photo_bytes) in [(0, 1_500_000), (1, 5_500_000)] {
        let job = format!("outage-photos-{n}");
        let bytes = common::photo_body(&job, photo_bytes, 7 + n as u64);
        let a = server.post(&bytes);
        assert_eq!(a.status, 200, "{}", a.text());
        objects.extend(flow_objects(&a.json()));
        objects.insert(flowgate::store::archive_name("Test SIP", &job));
        photo_jobs.push((job, bytes));
        accepted += 1;
    }
    let d = &server.app.dispatch;
    server.wait_for("failed attempts during the outage", || d.failed_attempts.load(Ordering::Relaxed) >= 3);
    let waiting = server.on(server.app.store.pending_count()).unwrap();
    assert!(waiting > 0, "the outage should hold files in the outbox");
    std::thread::sleep(Duration::from_millis(300));
    proxy.restore();
    wait_until("the outbox to drain after the outage", Duration::from_secs(60), || server.on(server.app.store.pending_count()).unwrap() == 0);
    // Exactly the promised objects are in the bucket, each with the bytes the outbox holds.
    let stored: BTreeSet<String> = bucket.list("").into_iter().collect();
    let extra: Vec<&String> = stored.difference(&objects).collect();
    let missing: Vec<&String> = objects.difference(&stored).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
    let mut flows = 0;
    for name in objects.iter().filter(|o| o.starts_with("out/")) {
        let f = server.on(server.app.store.outbox_file(name)).unwrap().unwrap();
        assert_eq!(f.state, flowgate::store::DeliveryState::Delivered);
        assert_eq!(bucket.get(name).unwrap(), f.content.into_bytes(), "{name}");
        flows += 1;
    }
    // Each photo body is in its job archive in the bucket, byte for byte.
    for (job, bytes) in &photo_jobs {
        let archive = bucket.get(&flowgate::store::archive_name("Test SIP", job)).unwrap();
        let (archived_job, body) = common::archived_body(&archive);
        assert_eq!(&archived_job, job);
        assert!(body == *bytes, "{job}: the archived body differs from the one acknowledged");
    }
    let delivered = d.delivered.load(Ordering::Relaxed) + d.already_there.load(Ordering::Relaxed);
    assert_eq!(delivered, flows);
    assert_eq!(d.conflicts.load(Ordering::Relaxed), 0);
    assert_eq!(d.duplicates.load(Ordering::Relaxed), 0);
    let metrics = server.get("/metrics").text();
    assert!(metrics.contains("flowgate_flows_delivered_total{flow=\"D0396\"}"), "{metrics}");
    assert!(metrics.contains("flowgate_flow_delivery_failures_total{flow="), "{metrics}");
    println!(
        "s3 outage: accepted {accepted} requests, two of them photo bodies of 8 and 29 MB archived byte for byte ({flows} flow files), {waiting} files held during the outage, {} failed attempts, delivered {delivered}, duplicates 0",
        d.failed_attempts.load(Ordering::Relaxed)
    );
}

/// Writes a YAML config for the real binary: the S3 sink under `prefix`.
fn s3_config_file(dir: &std::path::Path, prefix: &str, instance: &str) -> std::path::PathBuf {
    let (endpoint, bucket) = s3_env();
    let path = dir.join("flowgate.yaml");
    let yaml = format!(
        "flows:\n  instance_prefix: {instance}\nsink:\n  kind: s3\n  s3:\n    endpoint: {endpoint}\n    region: us-east-1\n    bucket: {bucket}\n    prefix: {prefix}\n    path_style: true\ndispatch:\n  concurrency: 1\n  retry_base_ms: 50\n  retry_max_ms: 400\n"
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn sigkill_mid_dispatch_then_restart_delivers_every_acknowledged_flow_once() {
    let prefix = unique_prefix("kill");
    let data = common::temp_dir("s3-kill");
    let config = s3_config_file(&data, &prefix, "K1");
    let config_arg = config.display().to_string();
    let client = "S3 Kill SIP";
    let key = common::add_key_cli(&data, client);
    let acknowledged: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let rounds = 4;
    let per_round = 16;
    let mut mid_dispatch = 0;
    let mut seed: u64 = 0x5eed_0053;
    for round in 0..rounds {
        let (mut child, addr) = common::serve_binary(&data, &["--config", &config_arg]);
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let threshold = 1.0 + ((seed >> 33) % 6) as f64;
        let mut workers = Vec::new();
        for w in 0..4 {
            let (key, acknowledged) = (key.clone(), acknowledged.clone());
            workers.push(std::thread::spawn(move || {
                for n in (w..per_round).step_by(4) {
                    let job = format!("kill-{round}-{n}");
                    let b = body(CASES[n % 4], &job);
                    let r = common::try_request(addr, "POST", "/v4/sip", &[("Content-Type", "application/json"), ("X-API-Key", &key)], &b);
                    let Ok(a) = r else { return };
                    if a.status == 200 {
                        let mut ack = acknowledged.lock().unwrap();
                        ack.extend(flow_objects(&a.json()));
                        ack.insert(flowgate::store::archive_name(client, &job));
                    }
                }
            }));
        }
        // SIGKILL once some files are out and more are still waiting: in the middle of dispatching.
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(m) = common::try_request(addr, "GET", "/metrics", &[], b"") {
            let m = m.text();
            let out = metric(&m, "flowgate_flows_delivered_total") + metric(&m, "flowgate_job_archives_delivered_total");
            let depth = metric(&m, "flowgate_outbox_depth");
            if out >= threshold && depth > 0.0 {
                mid_dispatch += 1;
                break;
            }
            if Instant::now() > deadline || (workers.iter().all(|w| w.is_finished()) && depth == 0.0 && out > 0.0) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for w in workers {
            let _ = w.join();
        }
    }
    // A last clean start delivers whatever was left.
    let (mut child, addr) = common::serve_binary(&data, &["--config", &config_arg]);
    let mut metrics = String::new();
    wait_until("the outbox to drain after the restarts", Duration::from_secs(60), || {
        metrics = common::request(addr, "GET", "/metrics", &[], b"").text();
        metric(&metrics, "flowgate_outbox_depth") == 0.0 && metrics.contains("flowgate_outbox_depth 0")
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(metric(&metrics, "flowgate_flow_conflicts_total"), 0.0, "{metrics}");
    assert_eq!(metric(&metrics, "flowgate_job_duplicates_total"), 0.0, "{metrics}");
    let found_again = metric(&metrics, "flowgate_flows_found_delivered_total");

    // Every acknowledged object is in the bucket with the bytes the outbox recorded; every flow
    // file in the bucket is one of this store's, with distinct file ids.
    let store = flowgate::store::Store::open(&data.join("store"), "K1").unwrap();
    let reader = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let bucket = Bucket::new(&prefix);
    let listed = bucket.list("");
    let in_bucket: BTreeSet<String> = listed.iter().cloned().collect();
    let acknowledged = acknowledged.lock().unwrap().clone();
    let missing: Vec<&String> = acknowledged.difference(&in_bucket).collect();
    assert!(missing.is_empty(), "acknowledged but not delivered: {missing:?}");
    let mut file_ids = BTreeSet::new();
    let mut flows = 0;
    for name in &listed {
        let f = reader.block_on(store.outbox_file(name)).unwrap().unwrap_or_else(|| panic!("{name} is in the bucket but not in the outbox"));
        assert_eq!(f.state, flowgate::store::DeliveryState::Delivered, "{name}");
        let bytes = bucket.get(name).unwrap();
        if name.starts_with("jobs/") {
            // The archive's bytes are not kept once delivered: made again from the record and body.
            let r = reader.block_on(store.request(&f.request_id)).unwrap().unwrap();
            let body = reader.block_on(store.body(&f.request_id)).unwrap().unwrap();
            let expected = flowgate::store::archive_envelope(&r.request_id, "K1", &r.client, &r.job_id, &r.received_at, &body);
            assert_eq!(String::from_utf8_lossy(&bytes), expected, "{name}: other bytes than the request's envelope");
        } else {
            assert_eq!(bytes, f.content.into_bytes(), "{name}: other bytes than recorded");
            assert!(file_ids.insert(f.file_id.clone()), "file id {} written twice", f.file_id);
            flows += 1;
        }
    }
    let acked_flows = acknowledged.iter().filter(|o| o.starts_with("out/")).count();
    println!(
        "s3 sigkill: {rounds} SIGKILLs ({mid_dispatch} mid-dispatch), accepted {acked_flows} acknowledged flow files ({flows} stored, incl. 200s lost to the kill), delivered {flows}, found already delivered after restart {found_again}, duplicates 0, conflicts 0"
    );
}

#[test]
fn two_instances_given_the_same_job_write_one_set_of_flows() {
    let prefix = unique_prefix("pair");
    let (endpoint, _) = s3_env();
    let a = common::TestServer::start(|c| {
        use_s3(c, &endpoint, &prefix);
        c.flows.instance_prefix = "A1".into();
    });
    let b = common::TestServer::start(|c| {
        use_s3(c, &endpoint, &prefix);
        c.flows.instance_prefix = "B2".into();
    });
    let jobs = 7;
    // The same body to both instances at once; the last one a real job body (8 MB of photos).
    let mut pairs = Vec::new();
    for n in 0..jobs {
        let job = format!("pair-{n}");
        let bytes = if n == jobs - 1 { common::photo_body(&job, 1_500_000, 11) } else { body(CASES[n % 4], &job) };
        let (ra, rb) = std::thread::scope(|s| {
            let ha = s.spawn(|| a.post(&bytes));
            let hb = s.spawn(|| b.post(&bytes));
            (ha.join().unwrap(), hb.join().unwrap())
        });
        assert_eq!((ra.status, rb.status), (200, 200));
        pairs.push((ra.json(), rb.json()));
    }
    let settled = |server: &common::TestServer, id: &str| {
        let s = server.get(&format!("/v4/sip/{id}")).json();
        let flows_done = s["flows"].as_array().unwrap().iter().all(|f| f["state"] == "delivered" || f["state"] == "duplicate");
        (flows_done && matches!(s["archive"]["state"].as_str(), Some("delivered" | "duplicate"))).then_some(s)
    };
    let bucket = Bucket::new(&prefix);
    let mut winners_flows = BTreeSet::new();
    let mut duplicates_shown = 0;
    let mut accepted = 0;
    for (ra, rb) in &pairs {
        let (ida, idb) = (ra["request_id"].as_str().unwrap(), rb["request_id"].as_str().unwrap());
        let mut sa = None;
        let mut sb = None;
        wait_until("both instances to settle the job", Duration::from_secs(60), || {
            sa = settled(&a, ida);
            sb = settled(&b, idb);
            sa.is_some() && sb.is_some()
        });
        let (sa, sb) = (sa.unwrap(), sb.unwrap());
        accepted += 2;
        // Exactly one wins; the other names it and sent nothing.
        let (win, lose, win_answer) = match (sa["duplicate_of"].as_str(), sb["duplicate_of"].as_str()) {
            (None, Some(w)) => {
                assert_eq!(w, ida);
                (&sa, &sb, ra)
            }
            (Some(w), None) => {
                assert_eq!(w, idb);
                (&sb, &sa, rb)
            }
            other => panic!("exactly one request should be the duplicate: {other:?}\n{sa}\n{sb}"),
        };
        duplicates_shown += 1;
        assert_eq!(win["archive"]["state"], "delivered");
        assert_eq!(lose["archive"]["state"], "duplicate");
        assert!(win["flows"].as_array().unwrap().iter().all(|f| f["state"] == "delivered"), "{win}");
        assert!(lose["flows"].as_array().unwrap().iter().all(|f| f["state"] == "duplicate"), "{lose}");
        winners_flows.extend(flow_objects(win_answer));
        let archive = bucket.get(&flowgate::store::archive_name("Test SIP", win["job_id"].as_str().unwrap())).unwrap();
        assert_eq!(flowgate::store::archive_request_id(&archive).as_deref(), win["request_id"].as_str());
        let (job, archived) = common::archived_body(&archive);
        let sent = if job == format!("pair-{}", jobs - 1) {
            common::photo_body(&job, 1_500_000, 11)
        } else {
            body(CASES[job.trim_start_matches("pair-").parse::<usize>().unwrap() % 4], &job)
        };
        assert!(archived == sent, "{job}: the archived body differs from the one both instances acknowledged");
    }
    let in_bucket: BTreeSet<String> = bucket.list("out/").into_iter().collect();
    assert_eq!(in_bucket, winners_flows, "the bucket should hold exactly the winners' flows");
    assert_eq!(bucket.list("jobs/").len(), jobs);
    let dups = a.app.dispatch.duplicates.load(Ordering::Relaxed) + b.app.dispatch.duplicates.load(Ordering::Relaxed);
    assert_eq!(dups, jobs as u64);
    let conflicts = a.app.dispatch.conflicts.load(Ordering::Relaxed) + b.app.dispatch.conflicts.load(Ordering::Relaxed);
    assert_eq!(conflicts, 0);
    println!(
        "s3 two instances: {jobs} jobs posted to both, accepted {accepted}, delivered {} flow files (one set per job), {duplicates_shown} requests shown duplicate_of, duplicates 0",
        in_bucket.len()
    );
}

#[test]
fn the_public_cases_replayed_through_s3_read_back_clean() {
    let prefix = unique_prefix("public");
    let (endpoint, _) = s3_env();
    let server = common::TestServer::start(|c| use_s3(c, &endpoint, &prefix));
    let catalogue = flowgate::dtc::catalogue::Catalogue::load(&common::repo().join("flow-templates/catalogue")).unwrap();
    let cases: Vec<_> = flowgate::rules::samples::cases(&common::repo().join("tests/cases"))
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("public-"))
        .collect();
    assert_eq!(cases.len(), 13);
    // object → (case, "flow>to") for every flow file promised.
    let mut promised: BTreeMap<String, (String, String)> = BTreeMap::new();
    let (mut accepted, mut rejected) = (0, 0);
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let expect: Value = serde_json::from_slice(&std::fs::read(dir.join("expect.json")).unwrap()).unwrap();
        let a = server.post(&std::fs::read(dir.join("request.json")).unwrap());
        assert_eq!(u64::from(a.status), expect["status"].as_u64().unwrap(), "{name}: {}", a.text());
        if a.status != 200 {
            rejected += 1;
            continue;
        }
        accepted += 1;
        let answer = a.json();
        let mut got: Vec<String> = Vec::new();
        for f in answer["flows"].as_array().unwrap() {
            let label = format!("{}>{}", f["flow"].as_str().unwrap(), f["to"].as_str().unwrap());
            promised.insert(f["object"].as_str().unwrap().to_string(), (name.clone(), label.clone()));
            got.push(label);
        }
        got.sort();
        let want: Vec<String> = expect["flows"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        assert_eq!(got, want, "{name}");
    }
    wait_until("the public cases to be delivered", Duration::from_secs(60), || server.on(server.app.store.pending_count()).unwrap() == 0);
    let bucket = Bucket::new(&prefix);
    let in_bucket: BTreeSet<String> = bucket.list("out/").into_iter().collect();
    assert_eq!(in_bucket, promised.keys().cloned().collect::<BTreeSet<_>>(), "the bucket holds other flow files than promised");
    let mut findings = Vec::new();
    for (object, (case, label)) in &promised {
        let bytes = bucket.get(object).unwrap();
        match flowgate::dtc::reader::read(&bytes, &catalogue) {
            Ok(parsed) => {
                let h = &parsed.header;
                assert_eq!(format!("{}>{}/{}", h.flow, h.to_role, h.to_mpid), *label, "{case}: {object}");
            }
            Err(f) => findings.extend(f.iter().map(|f| format!("{case}: {object}: {f}"))),
        }
    }
    assert!(findings.is_empty(), "the reader found: {findings:#?}");
    assert_eq!(bucket.list("jobs/").len(), accepted, "one job archive per accepted case");
    println!(
        "s3 public cases: {} cases, accepted {accepted}, rejected {rejected}, delivered {} flow files, read back with {} findings, duplicates 0",
        cases.len(),
        promised.len(),
        findings.len()
    );
}

/// A D0126 from the DNO for the MPAN and date of the public S07 case (aborted, category B).
const D0126: &str = "ZHV|EM00000042|D0126001|J|EMEB|M|DEMO|20250110093000||||TR01|\n\
    250|1129383838383|Fuse carrier replaced|Carrier was welded to the cut-out|\n\
    61H|20250108|B01|C|20250110|\n\
    ZPT|EM00000042|2||1|20250110093001|\n";

#[test]
fn incoming_flows_in_the_bucket_reach_every_instance_that_accepted_a_matching_request() {
    let prefix = unique_prefix("inbound");
    let (endpoint, _) = s3_env();
    let start = |instance: &str| {
        let instance = instance.to_string();
        common::TestServer::start(|c| {
            use_s3(c, &endpoint, &prefix);
            c.flows.instance_prefix = instance;
            c.inbound.poll_ms = 100;
        })
    };
    let (a, b) = (start("A1"), start("B2"));
    // The same visit reported twice (two job ids), one request on each instance.
    let case = "public-aborted-dno-category-b";
    let (ra, rb) = (a.post(&body(case, "inbound-a")), b.post(&body(case, "inbound-b")));
    assert_eq!((ra.status, rb.status), (200, 200), "{} {}", ra.text(), rb.text());
    let ida = ra.json()["request_id"].as_str().unwrap().to_string();
    let idb = rb.json()["request_id"].as_str().unwrap().to_string();

    let bucket = Bucket::new(&prefix);
    let put = |name: &str, bytes: &[u8]| assert_eq!(bucket.rt.block_on(bucket.sink.put(name, bytes.to_vec())).unwrap(), PutOutcome::Created);
    // Planted in the ledger: an entry dated 2099 (a clock far ahead, or someone else's hand) and
    // junk. Neither may move any instance's position past the present.
    let sha = "0".repeat(64);
    let planted = serde_json::json!({"file": "planted.usr", "object": "in/rejected/planted.usr", "sha256": sha, "outcome": "rejected", "findings": ["planted"], "taken_at": "2099-12-31T00:00:00Z"});
    put("in/ledger/20991231T000000000Z-XX-000000000000.json", planted.to_string().as_bytes());
    put("in/ledger/20991231T000000001Z-XX-junk.json", b"not json");
    put("in/D0126_EM00000042.usr", D0126.as_bytes());
    put("in/D0126_broken.usr", D0126.replace("|2||1|", "|7||1|").as_bytes());
    // Not files of the inbox: still being written, or in a folder of its own.
    put("in/.D0126_partial.usr.tmp", b"ZHV|");

    let incoming = |server: &common::TestServer, id: &str| server.get(&format!("/v4/sip/{id}")).json()["incoming"].as_array().cloned().unwrap_or_default();
    wait_until("the D0126 on both instances' requests", Duration::from_secs(20), || !incoming(&a, &ida).is_empty() && !incoming(&b, &idb).is_empty());
    for (server, id) in [(&a, &ida), (&b, &idb)] {
        let shown = incoming(server, id);
        assert_eq!(shown.len(), 1, "{shown:#?}");
        assert_eq!(shown[0]["flow"], "D0126");
        assert_eq!(shown[0]["sender"], "J/EMEB");
        assert_eq!(shown[0]["clearance"]["code"], "C");
        assert_eq!(shown[0]["clearance"]["meaning"], "cleared, category as reported");
        assert_eq!(shown[0]["file"], "D0126_EM00000042.usr");
    }
    wait_until("both files to be moved out of in/", Duration::from_secs(20), || {
        let top: Vec<String> = bucket.list("in/").into_iter().filter(|n| !n["in/".len()..].contains('/')).collect();
        top == ["in/.D0126_partial.usr.tmp"]
    });
    assert_eq!(bucket.get("in/processed/D0126_EM00000042.usr").unwrap(), D0126.as_bytes());
    assert!(bucket.get("in/rejected/D0126_broken.usr").is_some());
    let why = String::from_utf8(bucket.get("in/rejected/D0126_broken.usr.why.txt").unwrap()).unwrap();
    assert!(why.contains("ZPT group count 7 but the file has 2 group records"), "{why}");
    let ledger = bucket.list("in/ledger/");
    assert!(ledger.len() >= 4, "{ledger:?}");
    let now_ms = u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap();
    for server in [&a, &b] {
        let position = server.on(server.app.store.meta(flowgate::store::LEDGER_POSITION)).unwrap().expect("a ledger position");
        assert!(position <= now_ms, "the position {position} passed the present {now_ms}");
    }

    // The same file again: taken (its bytes are already in processed/ under its name), shown
    // once. A different file under a name already used goes to processed/ as name.1.
    put("in/D0126_EM00000042.usr", D0126.as_bytes());
    wait_until("the same file to be taken again", Duration::from_secs(20), || bucket.get("in/D0126_EM00000042.usr").is_none());
    let other = D0126.replace("Carrier was welded", "Same name, other text");
    put("in/D0126_EM00000042.usr", other.as_bytes());
    wait_until("the other file to be moved beside the first", Duration::from_secs(20), || bucket.get("in/processed/D0126_EM00000042.usr.1").is_some());
    assert_eq!(bucket.get("in/processed/D0126_EM00000042.usr.1").unwrap(), other.as_bytes());
    assert_eq!(bucket.get("in/processed/D0126_EM00000042.usr").unwrap(), D0126.as_bytes());
    assert!(bucket.get("in/processed/D0126_EM00000042.usr.2").is_none());
    std::thread::sleep(Duration::from_millis(500));
    // Same name, other content: a second record, shown beside the first.
    for (server, id) in [(&a, &ida), (&b, &idb)] {
        wait_until("the other file's text on the request", Duration::from_secs(20), || incoming(server, id).len() == 2);
        let texts: BTreeSet<String> = incoming(server, id).iter().map(|f| f["additional_information"][0].as_str().unwrap().to_string()).collect();
        assert_eq!(texts, BTreeSet::from(["Carrier was welded to the cut-out".to_string(), "Same name, other text to the cut-out".to_string()]));
    }

    // A restarted instance reads the ledger from where it was: nothing recorded twice, and a
    // file taken by the other instance while it was down still reaches its request.
    let data_a = a.stop();
    put("in/D0126_second.usr", D0126.replace("Carrier was welded", "Second visit").replace("EM00000042", "EM00000043").as_bytes());
    wait_until("B to take the file while A is down", Duration::from_secs(20), || bucket.get("in/processed/D0126_second.usr").is_some());
    let a = common::TestServer::start_in(data_a, |c| {
        use_s3(c, &endpoint, &prefix);
        c.flows.instance_prefix = "A1".into();
        c.inbound.poll_ms = 100;
    });
    wait_until("the second D0126 on A's request after its restart", Duration::from_secs(20), || incoming(&a, &ida).len() == 3);
    wait_until("the second D0126 on B's request", Duration::from_secs(20), || incoming(&b, &idb).len() == 3);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(incoming(&a, &ida).len(), 3, "nothing recorded twice after the restart");
    println!(
        "s3 inbound: 2 instances, 5 files dropped into in/ (1 rejected, 1 the same again), each request shows 3 incoming flows, ledger entries {}",
        bucket.list("in/ledger/").len()
    );
}

#[test]
fn long_non_ascii_job_ids_are_delivered_to_the_bucket_under_a_long_prefix() {
    // A prefix of over 400 bytes (each part within 255): the longest archive name any client and
    // job id can get must still fit S3's 1,024-byte key after it.
    let prefix = format!("{}{}/{}/", unique_prefix("long"), "p".repeat(200), "q".repeat(200));
    assert!(prefix.len() > 400);
    let (endpoint, _) = s3_env();
    let server = common::TestServer::start(|c| use_s3(c, &endpoint, &prefix));
    let bucket = Bucket::new(&prefix);
    // Schema-valid job ids (1-64 characters) far longer once percent-encoded: 43 × "é",
    // 60 emoji, 64 four-byte characters.
    let jobs = ["\u{e9}".repeat(43), "\u{1f600}".repeat(60), "\u{10348}".repeat(64)];
    let mut promised = BTreeSet::new();
    let mut ids = Vec::new();
    for job in &jobs {
        let a = server.post(&body("public-completed-isolation", job));
        assert_eq!(a.status, 200, "{}", a.text());
        promised.extend(flow_objects(&a.json()));
        promised.insert(flowgate::store::archive_name("Test SIP", job));
        ids.push(a.json()["request_id"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.on(server.app.store.pending_count()).unwrap() > 0 {
        if Instant::now() > deadline {
            let status: Vec<Value> = ids.iter().map(|id| server.get(&format!("/v4/sip/{id}")).json()).collect();
            panic!("not delivered: {status:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stored: BTreeSet<String> = bucket.list("").into_iter().collect();
    assert_eq!(stored, promised, "the bucket holds other objects than promised");
    for (job, id) in jobs.iter().zip(&ids) {
        let archive = bucket.get(&flowgate::store::archive_name("Test SIP", job)).unwrap();
        assert_eq!(flowgate::store::archive_request_id(&archive).as_deref(), Some(id.as_str()));
    }
    for name in &stored {
        let key = format!("{prefix}{name}");
        assert!(key.len() <= 1024 && key.split('/').all(|s| s.len() <= 255), "{} bytes: {key}", key.len());
    }
    let longest = stored.iter().map(|n| prefix.len() + n.len()).max().unwrap_or(0);
    println!("s3 long job ids: {} jobs, {} objects delivered under a {}-byte prefix, longest key {longest} bytes", jobs.len(), stored.len(), prefix.len());
}

#[test]
fn an_inbound_file_whose_name_is_longer_than_a_file_name_is_copied_under_one_that_fits() {
    let prefix = unique_prefix("inlong");
    let (endpoint, _) = s3_env();
    let server = common::TestServer::start(|c| {
        use_s3(c, &endpoint, &prefix);
        c.inbound.poll_ms = 100;
    });
    let bucket = Bucket::new(&prefix);
    // A bucket takes names a file system would not: 400 bytes in one segment.
    let name = format!("D0126_{}.usr", "\u{e9}".repeat(195));
    assert_eq!(name.len(), 400);
    assert_eq!(bucket.rt.block_on(bucket.sink.put(&format!("in/{name}"), D0126.as_bytes().to_vec())).unwrap(), PutOutcome::Created);
    wait_until("the file to be taken from in/", Duration::from_secs(20), || bucket.get(&format!("in/{name}")).is_none());
    let copies = bucket.list("in/processed/");
    assert_eq!(copies.len(), 1, "{copies:?}");
    let copy = &copies[0];
    assert!(copy.split('/').all(|s| s.len() <= 255), "{} bytes: {copy}", copy.len());
    assert_eq!(bucket.get(copy).unwrap(), D0126.as_bytes());
    let ledger = bucket.list("in/ledger/");
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    let entry: Value = serde_json::from_slice(&bucket.get(&ledger[0]).unwrap()).unwrap();
    assert_eq!(entry["file"], name.as_str(), "the ledger names the file as it came");
    assert_eq!(entry["object"], copy.as_str());
    assert_eq!(server.app.metrics.value("flowgate_inbound_errors_total", &[]), 0.0);
    println!("s3 inbound long name: a {}-byte name copied to in/processed/ as {} bytes", name.len(), copy.len() - "in/processed/".len());
}
