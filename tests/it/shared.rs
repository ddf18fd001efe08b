//! Several instances on one PostgreSQL database (`scripts/postgres.sh`) and the Ceph bucket
//! (`scripts/ceph.sh`): one gateway. The same job on two instances, GET anywhere, one file-id
//! sequence, SIGKILL of an instance mid-delivery, a database restart under load, the rate limit
//! across instances, incoming flows matched through the database, and schema versions.
//!
//! Needs `FLOWGATE_TEST_DATABASE_URL` (a role that may create databases: each test makes its own)
//! and the S3 variables of `s3.rs`; scripts/test.sh sets both. The tests take one lock: one of
//! them restarts the database server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{self, TestServer};

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::s3::{body, flow_objects, s3_config, s3_env, wait_until, Bucket, CASES};
use flowgate::config::{Config, SinkKind};
use flowgate::domain::auth::{KeysFile, Rate};

/// One shared test at a time: the restart test takes the database server down.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn admin_url() -> String {
    std::env::var("FLOWGATE_TEST_DATABASE_URL").ok().filter(|v| !v.is_empty()).expect(
        "the shared-store tests need PostgreSQL: FLOWGATE_TEST_DATABASE_URL is not set. Start it with\n    eval \"$(scripts/postgres.sh start)\"; export FLOWGATE_TEST_DATABASE_URL=$FLOWGATE_DATABASE_URL\n(scripts/test.sh does this)",
    )
}

/// A new, empty database for one test; its URL.
fn fresh_database(tag: &str) -> String {
    let admin = admin_url();
    let name = format!("fgt_{tag}_{}", ulid::Ulid::new().to_string().to_lowercase());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        drop(client);
        let _ = task.await;
    });
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

fn unique_prefix(tag: &str) -> String {
    format!("test-shared-{tag}-{}/", ulid::Ulid::new().to_string().to_lowercase())
}

/// An instance on the shared database and the bucket under `prefix`.
fn shared(config: &mut Config, url: &str, prefix: &str) {
    config.store.database_url = Some(url.to_string());
    config.store.lease_seconds = 3;
    config.sink.kind = SinkKind::S3;
    config.sink.s3 = s3_config(&s3_env().0, prefix);
    config.dispatch.retry_base_ms = 50;
    config.dispatch.retry_max_ms = 400;
    config.inbound.poll_ms = 100;
}

/// A data folder holding the given keys file and test key, for a second instance of a client.
fn data_with_keys(keys: &KeysFile, key: &str) -> std::path::PathBuf {
    let data = common::temp_dir("shared");
    std::fs::create_dir_all(&data).unwrap();
    keys.write(&data.join("keys.yaml")).unwrap();
    std::fs::write(data.join("test-key"), key).unwrap();
    data
}

fn one_key(rate: Rate) -> (KeysFile, String) {
    let mut keys = KeysFile::default();
    let key = keys.add("Test SIP", "DEMO", rate).unwrap();
    (keys, key)
}

fn post(addr: std::net::SocketAddr, key: &str, body: &[u8]) -> Result<common::Answer, String> {
    common::try_request(addr, "POST", "/v4/sip", &[("Content-Type", "application/json"), ("X-API-Key", key)], body)
}

const D0126: &str = "ZHV|EM00000042|D0126001|J|EMEB|M|DEMO|20250110093000||||TR01|\n\
    250|1129383838383|Fuse carrier replaced|Carrier was welded to the cut-out|\n\
    61H|20250108|B01|C|20250110|\n\
    ZPT|EM00000042|2||1|20250110093001|\n";

#[test]
fn two_instances_are_one_gateway_one_answer_per_job_status_anywhere_one_file_id_sequence() {
    let _one = serial();
    let url = fresh_database("same");
    let prefix = unique_prefix("same");
    let (keys, key) = one_key(Rate { per_second: 10_000, burst: 10_000 });
    let a = TestServer::start_in(data_with_keys(&keys, &key), |c| shared(c, &url, &prefix));
    let b = TestServer::start_in(data_with_keys(&keys, &key), |c| shared(c, &url, &prefix));

    // The same job and body, at the same moment on both instances: one request id, two 200s.
    let same = body("s01-all-flows", "SHARED-1");
    let (x, y) = std::thread::scope(|s| {
        let x = s.spawn(|| post(a.addr, &key, &same).unwrap());
        let y = s.spawn(|| post(b.addr, &key, &same).unwrap());
        (x.join().unwrap(), y.join().unwrap())
    });
    assert_eq!((x.status, y.status), (200, 200), "{} / {}", x.text(), y.text());
    let (xa, ya) = (x.json(), y.json());
    assert_eq!(xa["request_id"], ya["request_id"], "one request for one job");
    assert_eq!(xa["flows"], ya["flows"], "the same answer");
    let id = xa["request_id"].as_str().unwrap().to_string();

    // Another body under the job: 409 on either instance, naming the first request.
    let other = body("public-energisation-only", "SHARED-1");
    for server in [&a, &b] {
        let r = post(server.addr, &key, &other).unwrap();
        assert_eq!(r.status, 409, "{}", r.text());
        assert!(r.text().contains(&id), "{}", r.text());
    }

    // More jobs across both: file ids from one sequence, never twice.
    let mut file_ids = BTreeSet::new();
    let mut objects: BTreeSet<String> = flow_objects(&xa).into_iter().collect();
    for f in xa["flows"].as_array().unwrap() {
        assert!(file_ids.insert(f["file_id"].as_str().unwrap().to_string()));
    }
    for n in 0..12 {
        let server = if n % 2 == 0 { &a } else { &b };
        let r = post(server.addr, &key, &body(CASES[n % 4], &format!("SHARED-SEQ-{n}"))).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        for f in v["flows"].as_array().unwrap() {
            let fid = f["file_id"].as_str().unwrap().to_string();
            assert!(file_ids.insert(fid.clone()), "file id {fid} given twice");
        }
        objects.extend(flow_objects(&v));
    }

    // The status on both instances, and the flows delivered once each.
    let bucket = Bucket::new(&prefix);
    wait_until("every flow in the bucket", Duration::from_secs(60), || {
        let listed: BTreeSet<String> = bucket.list("out/").into_iter().collect();
        objects.iter().all(|o| listed.contains(o))
    });
    for server in [&a, &b] {
        let s = server.get(&format!("/v4/sip/{id}"));
        assert_eq!(s.status, 200, "{}", s.text());
        let v = s.json();
        assert_eq!(v["request_id"], id.as_str());
        wait_until("the flows shown delivered", Duration::from_secs(30), || {
            let v = server.get(&format!("/v4/sip/{id}")).json();
            v["flows"].as_array().unwrap().iter().all(|f| f["state"] == "delivered")
        });
    }
    assert_eq!(bucket.list("out/").len(), objects.len(), "a flow file in the bucket no answer promised");

    // An incoming D0126 dropped in the bucket: whichever instance takes it matches it, through
    // the database, to the request the other one took.
    let d0126_case = post(a.addr, &key, &body("public-aborted-dno-category-b", "SHARED-IN")).unwrap();
    assert_eq!(d0126_case.status, 200, "{}", d0126_case.text());
    let in_id = d0126_case.json()["request_id"].as_str().unwrap().to_string();
    bucket.put("in/D0126_EM00000042.usr", D0126.as_bytes());
    for server in [&b, &a] {
        wait_until("the D0126 on the request's status", Duration::from_secs(30), || {
            let v = server.get(&format!("/v4/sip/{in_id}")).json();
            v["incoming"].as_array().is_some_and(|i| i.len() == 1)
        });
    }
    assert!(bucket.list("in/ledger/").is_empty(), "no ledger with a shared store");
    println!("shared: one request id for the same job on two instances, 409 for another body on both, {} file ids distinct, {} flows delivered once, the D0126 matched through the database", file_ids.len(), objects.len());
}

#[test]
fn an_instance_killed_mid_delivery_leaves_its_files_to_another_none_lost_none_twice() {
    let _one = serial();
    let url = fresh_database("kill");
    let prefix = unique_prefix("kill");
    let data = common::temp_dir("shared-kill");
    std::fs::create_dir_all(&data).unwrap();
    let (endpoint, bucket_name) = s3_env();
    let config = data.join("flowgate.yaml");
    // The killed instance delivers slowly (one file at a time) so that it dies with files leased.
    std::fs::write(
        &config,
        format!(
            "store:\n  database_url: {url}\n  lease_seconds: 3\nsink:\n  kind: s3\n  s3:\n    endpoint: {endpoint}\n    region: us-east-1\n    bucket: {bucket_name}\n    prefix: {prefix}\n    path_style: true\ndispatch:\n  concurrency: 1\n  retry_base_ms: 50\n  retry_max_ms: 400\n"
        ),
    )
    .unwrap();
    let key = common::add_key_cli(&data, "Test SIP");
    let keys = KeysFile::read(&data.join("keys.yaml")).unwrap();
    let (mut child, addr) = common::serve_binary(&data, &["--config", &config.display().to_string()]);
    let acknowledged: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..4 {
        let (key, acknowledged) = (key.clone(), acknowledged.clone());
        workers.push(std::thread::spawn(move || {
            for n in (w..48).step_by(4) {
                let job = format!("kill-{n}");
                let Ok(a) = post(addr, &key, &body(CASES[n % 4], &job)) else { return };
                if a.status == 200 {
                    let mut ack = acknowledged.lock().unwrap();
                    ack.extend(flow_objects(&a.json()));
                    ack.insert(flowgate::store::archive_name("Test SIP", &job));
                }
            }
        }));
    }
    // SIGKILL once some files are out and more wait.
    let bucket = Bucket::new(&prefix);
    wait_until("the first deliveries", Duration::from_secs(60), || bucket.list("").len() >= 4);
    child.kill().unwrap();
    child.wait().unwrap();
    for w in workers {
        let _ = w.join();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let out_at_kill = bucket.list("").len();
    assert!(out_at_kill < acknowledged.len(), "everything was out before the kill ({out_at_kill}); nothing left to hand over");

    // Another instance on the same database: it takes the dead one's files once their lease ends.
    let other = TestServer::start_in(data_with_keys(&keys, &key), |c| shared(c, &url, &prefix));
    wait_until("the outbox to drain through the other instance", Duration::from_secs(90), || other.on(other.app.store.pending_count()).unwrap() == 0);
    let listed: BTreeSet<String> = bucket.list("").into_iter().collect();
    let missing: Vec<&String> = acknowledged.difference(&listed).collect();
    assert!(missing.is_empty(), "acknowledged but never delivered: {missing:?}");
    let metrics = other.get("/metrics").text();
    assert!(metrics.contains("flowgate_flow_conflicts_total 0") || !metrics.contains("flowgate_flow_conflicts_total{"), "{metrics}");
    // Each flow file once: distinct file ids, each object's bytes the ones the outbox recorded.
    let mut file_ids = BTreeSet::new();
    for name in listed.iter().filter(|n| n.starts_with("out/")) {
        let f = other.on(other.app.store.outbox_file(name)).unwrap().unwrap_or_else(|| panic!("{name} in the bucket but not in the outbox"));
        assert_eq!(bucket.get(name).unwrap(), f.content.as_bytes(), "{name}");
        assert!(file_ids.insert(f.file_id.clone()), "file id {} twice", f.file_id);
    }
    println!(
        "shared sigkill: {} objects acknowledged, {out_at_kill} in the bucket at the kill, the rest delivered by the other instance; missing 0, file ids distinct {}",
        acknowledged.len(),
        file_ids.len()
    );
}

#[test]
fn a_database_restart_under_load_gives_503s_loses_nothing_and_recovers_without_a_restart() {
    let _one = serial();
    let url = fresh_database("restart");
    let prefix = unique_prefix("restart");
    let (keys, key) = one_key(Rate { per_second: 10_000, burst: 10_000 });
    let server = TestServer::start_in(data_with_keys(&keys, &key), |c| shared(c, &url, &prefix));
    let addr = server.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let statuses: Arc<Mutex<std::collections::BTreeMap<u16, usize>>> = Arc::default();
    let load = {
        let (stop, acknowledged, statuses, key) = (stop.clone(), acknowledged.clone(), statuses.clone(), key.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let job = format!("restart-{n}");
                n += 1;
                let Ok(a) = post(addr, &key, &body(CASES[n % 4], &job)) else { continue };
                *statuses.lock().unwrap().entry(a.status).or_default() += 1;
                match a.status {
                    200 => acknowledged.lock().unwrap().push((job, a.json()["request_id"].as_str().unwrap().to_string())),
                    503 => assert!(a.header("retry-after").is_some(), "a 503 without Retry-After"),
                    other => panic!("status {other}: {}", a.text()),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    // The server it starts keeps any pipe it is given open: its output goes to a file.
    let log = common::temp_dir("pg-restart").join("restart.log");
    let restart = std::process::Command::new("bash")
        .arg(common::repo().join("scripts/postgres.sh"))
        .args(["restart", "3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(restart.success(), "{}", std::fs::read_to_string(&log).unwrap_or_default());
    // Recovered by itself: 200s again after the database is back.
    let after = acknowledged.lock().unwrap().len();
    wait_until("200s again after the restart", Duration::from_secs(30), || acknowledged.lock().unwrap().len() >= after + 5);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    let statuses = statuses.lock().unwrap().clone();
    assert!(statuses.get(&503).copied().unwrap_or(0) > 0, "no 503 while the database was down: {statuses:?}");
    // Everything acknowledged is stored: GET answers with the same request.
    let acknowledged = acknowledged.lock().unwrap().clone();
    for (job, id) in &acknowledged {
        let s = server.get(&format!("/v4/sip/{id}"));
        assert_eq!(s.status, 200, "{job}: {}", s.text());
        assert_eq!(s.json()["job_id"], job.as_str());
    }
    wait_until("the outbox to drain", Duration::from_secs(60), || server.on(server.app.store.pending_count()).unwrap() == 0);
    let bucket = Bucket::new(&prefix);
    let listed: BTreeSet<String> = bucket.list("jobs/").into_iter().collect();
    for (job, _) in &acknowledged {
        assert!(listed.contains(&flowgate::store::archive_name("Test SIP", job)), "{job}: acknowledged, its archive not delivered");
    }
    println!("shared restart: statuses {statuses:?}; {} acknowledged, every one readable and archived", acknowledged.len());
}

#[test]
fn a_keys_rate_holds_across_two_instances() {
    let _one = serial();
    let url = fresh_database("rate");
    let prefix = unique_prefix("rate");
    let rate = Rate { per_second: 40, burst: 20 };
    let (keys, key) = one_key(rate);
    let a = TestServer::start_in(data_with_keys(&keys, &key), |c| shared(c, &url, &prefix));
    let b = TestServer::start_in(data_with_keys(&keys, &key), |c| shared(c, &url, &prefix));
    // GETs of an unknown id: each counts against the key's rate like any call.
    let started = Instant::now();
    let (mut allowed, mut limited) = (0u32, 0u32);
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let server = if n % 2 == 0 { &a } else { &b };
        n += 1;
        let r = server.get("/v4/sip/01NOTAREQUEST");
        match r.status {
            404 => allowed += 1,
            429 => limited += 1,
            other => panic!("status {other}: {}", r.text()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = f64::from(rate.burst) + f64::from(rate.per_second) * elapsed;
    println!("shared rate: {allowed} allowed, {limited} limited in {elapsed:.2} s over two instances; the key's rate allows {expected:.0}");
    assert!(limited > 0, "nothing was limited: the load did not reach the rate");
    let ratio = f64::from(allowed) / expected;
    assert!((0.9..=1.1).contains(&ratio), "{allowed} allowed where the rate allows {expected:.0} ({ratio:.2}x)");
}

#[test]
fn a_database_of_a_newer_schema_is_refused() {
    let _one = serial();
    let url = fresh_database("newer");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let pool = flowgate::store::pool(&url, 1).unwrap();
        let (from, to) = flowgate::store::migrate(&pool).await.unwrap();
        assert_eq!((from, to), (0, flowgate::store::SCHEMA_VERSION));
        assert_eq!(flowgate::store::migrate(&pool).await.unwrap(), (to, to), "a second migration changes nothing");
        pool.get().await.unwrap().execute("INSERT INTO schema_versions (version) VALUES ($1)", &[&(to + 1)]).await.unwrap();
        let e = flowgate::store::migrate(&pool).await.unwrap_err();
        assert!(matches!(e, flowgate::store::MigrateError::Newer { .. }), "{e}");
        assert!(e.to_string().contains("newer than this flowgate"), "{e}");
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowgate")).arg("migrate").env("FLOWGATE_DATABASE_URL", &url).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("newer than this flowgate"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(url.rsplit_once('@').unwrap().0), "the URL's password was printed");
}
