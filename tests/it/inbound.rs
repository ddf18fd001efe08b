//! End to end: the real server on 127.0.0.1:0 accepts an S07 with a D0135; a D0126 for its MPAN
//! dropped into `<data>/dtn/in/` shows on `GET /v4/sip/{id}` with its clearance code and meaning;
//! a broken file is moved aside with its reasons; the same file dropped again is recorded once.
//! (The folder is read by the same algorithm as a bucket's `in/`, ledger included: tests/s3.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowgate::config::Config;
use flowgate::domain::auth::{KeysFile, Rate};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One HTTP/1.1 request on its own connection; the status and the JSON body.
async fn call(addr: SocketAddr, method: &str, path: &str, key: &str, body: &[u8]) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("no end of headers");
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = serde_json::from_slice(&raw[split + 4..]).unwrap_or(Value::Null);
    (status, body)
}

/// Drops a file into the inbox the way a sender should: a temporary name, then a rename.
fn drop_file(inbox: &Path, name: &str, content: &[u8]) {
    std::fs::create_dir_all(inbox).unwrap();
    let tmp = inbox.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, inbox.join(name)).unwrap();
}

async fn wait_for<F, Fut>(what: &str, mut check: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const D0126: &str = "ZHV|EM00000042|D0126001|J|EMEB|M|DEMO|20250110093000||||TR01|\n\
    250|1129383838383|Fuse carrier replaced|Carrier was welded to the cut-out|\n\
    61H|20250108|B01|C|20250110|\n\
    ZPT|EM00000042|2||1|20250110093001|\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_d0126_for_an_accepted_request_shows_on_its_status() {
    let data = std::env::temp_dir().join(format!("flowgate-inbound-{}", ulid::Ulid::new()));
    let mut config = Config { listen: "127.0.0.1:0".parse().unwrap(), data_dir: data.clone(), rules_dir: repo(), ..Config::default() };
    config.inbound.poll_ms = 50;
    let mut keys = KeysFile::default();
    let key = keys.add("Inbound test SIP", "DEMO", Rate { per_second: 1000, burst: 1000 }).unwrap();
    keys.write(&config.keys_path()).unwrap();

    let app = flowgate::runtime::Gateway::start(config.clone()).await.unwrap();
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(flowgate::runtime::run(app.clone(), listener, stopped, Duration::from_secs(2)));

    let body = std::fs::read(repo().join("tests/cases/public-aborted-dno-category-b/request.json")).unwrap();
    let (status, answer) = call(addr, "POST", "/v4/sip", &key, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["flows"][0]["flow"], "D0135");
    let id = answer["request_id"].as_str().unwrap().to_string();

    let inbox = data.join("dtn").join("in");
    drop_file(&inbox, "D0126_EM00000042.usr", D0126.as_bytes());
    drop_file(&inbox, "D0126_broken.usr", D0126.replace("|2||1|", "|7||1|").as_bytes());

    let path = format!("/v4/sip/{id}");
    let status_now = || async { call(addr, "GET", &path, &key, b"").await.1 };
    let incoming = wait_for("the D0126 on the request's status", || async {
        let v = status_now().await;
        v["incoming"].as_array().filter(|a| !a.is_empty()).map(|a| Value::Array(a.clone()))
    })
    .await;
    assert_eq!(incoming.as_array().unwrap().len(), 1, "{incoming:#}");
    let flow = &incoming[0];
    assert_eq!(flow["flow"], "D0126");
    assert_eq!(flow["sender"], "J/EMEB");
    assert_eq!(flow["file"], "D0126_EM00000042.usr");
    assert_eq!(flow["mpan"], "1129383838383");
    assert_eq!(flow["clearance"]["code"], "C");
    assert_eq!(flow["clearance"]["meaning"], "cleared, category as reported");
    assert_eq!(flow["asset_condition_code"], "B01");
    assert_eq!(flow["additional_information"][0], "Carrier was welded to the cut-out");
    assert!(flow["received_at"].as_str().is_some_and(|t| !t.is_empty()));

    // The broken file is moved aside with its reasons; the good one to processed/.
    let why = inbox.join("rejected").join("D0126_broken.usr.why.txt");
    wait_for("the rejected file", || async { why.exists().then_some(Value::Null) }).await;
    assert!(std::fs::read_to_string(&why).unwrap().contains("ZPT group count 7 but the file has 2 group records"));
    assert!(inbox.join("rejected").join("D0126_broken.usr").exists());
    assert!(inbox.join("processed").join("D0126_EM00000042.usr").exists());

    // The same file again: taken (processed/ holds its bytes under its name already), recorded once.
    drop_file(&inbox, "D0126_EM00000042.usr", D0126.as_bytes());
    let again = inbox.join("D0126_EM00000042.usr");
    wait_for("the second copy to be taken", || async { (!again.exists()).then_some(Value::Null) }).await;
    let v = status_now().await;
    assert_eq!(v["incoming"].as_array().unwrap().len(), 1, "{v:#}");
    assert!(!inbox.join("processed").join("D0126_EM00000042.usr.1").exists(), "the same bytes are not copied twice");
    let counted = |outcome: &str| app.metrics.value("flowgate_inbound_files_total", &[("outcome", outcome)]);
    assert_eq!((counted("matched"), counted("rejected"), counted("unmatched")), (1.0, 1.0, 0.0));
    assert_eq!(app.metrics.value("flowgate_inbound_errors_total", &[]), 0.0);

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
    drop(app);
    let _ = std::fs::remove_dir_all(&data);
}

/// The names under `dir` that are files.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.file_type().unwrap().is_file()).map(|e| e.file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn files_whose_names_take_a_whole_file_name_are_moved_aside_not_left_in_the_inbox() {
    let server = common::TestServer::start(|c| c.inbound.poll_ms = 50);
    let inbox = server.data.join("dtn").join("in");
    std::fs::create_dir_all(&inbox).unwrap();
    // Names as long as a file name may be (254 and 255 bytes): `.why.txt` or `.1` after them is not.
    let broken = format!("D0126_{}.usr", "\u{e9}".repeat(122));
    let good = format!("D0126_{}.usr", "e".repeat(245));
    assert_eq!((broken.len(), good.len()), (254, 255));
    let put = |name: &str, content: &str| {
        let tmp = inbox.join(".incoming.tmp");
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, inbox.join(name)).unwrap();
    };
    let taken = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !files_in(&inbox).is_empty() {
            let errors = server.app.metrics.value("flowgate_inbound_errors_total", &[]);
            assert!(Instant::now() < deadline, "{what} still in the inbox after 10 s ({errors} inbound errors): {:?}", files_in(&inbox));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    put(&broken, &D0126.replace("|2||1|", "|7||1|"));
    put(&good, D0126);
    taken("the two files");
    put(&good, &D0126.replace("Carrier was welded", "Other text"));
    taken("the second file under a used name");
    let (processed, rejected) = (files_in(&inbox.join("processed")), files_in(&inbox.join("rejected")));
    assert_eq!((processed.len(), rejected.len()), (2, 2), "{processed:?} {rejected:?}");
    for name in processed.iter().chain(&rejected) {
        assert!(name.len() <= 255, "{name}");
    }
    let why = rejected.iter().find(|n| n.ends_with(".why.txt")).unwrap();
    let text = std::fs::read_to_string(inbox.join("rejected").join(why)).unwrap();
    assert!(text.starts_with(&format!("{broken}: rejected at")), "the reasons name the file as it came: {text}");
    assert!(processed.iter().any(|n| n.ends_with(".1")), "{processed:?}");
    assert_eq!(server.app.metrics.value("flowgate_inbound_errors_total", &[]), 0.0);
}
