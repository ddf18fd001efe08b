//! Hostile input: each bad body gets its expected status and a specific problem; slow clients
//! are cut off; none of it affects the next request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::Value;

fn good() -> Value {
    serde_json::from_slice(&std::fs::read(common::repo().join("tests/cases/public-completed-isolation/request.json")).unwrap()).unwrap()
}

fn with(path: &str, v: Value) -> Vec<u8> {
    let mut b = good();
    *b.pointer_mut(path).unwrap() = v;
    serde_json::to_vec(&b).unwrap()
}

#[test]
fn each_bad_input_gets_its_status_and_a_specific_problem() {
    let server = TestServer::start(|c| c.body_limit_bytes = 4 * 1024 * 1024);
    let deep_array = format!("{{\"a\": {}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(300), "}".repeat(300));
    let dup = String::from_utf8(serde_json::to_vec(&good()).unwrap()).unwrap().replacen("\"job_details\":{", "\"job_details\":{\"job_id\":\"X\",", 1);
    let many: Vec<Value> = (0..10_000).map(|i| Value::String(format!("Other {i}"))).collect();
    // (what, body, status, a pointer the errors must include, a word the message must include)
    type Case<'a> = (&'a str, Vec<u8>, u16, Option<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        ("empty body", vec![], 400, None, "JSON"),
        ("white space only", b"   \n ".to_vec(), 400, None, "JSON"),
        ("deeply nested arrays", deep_array.into_bytes(), 400, None, "recursion"),
        ("deeply nested objects", deep_object.into_bytes(), 400, None, "recursion"),
        ("invalid UTF-8", b"{\"job_details\": \"\xc3\x28\"}".to_vec(), 400, None, "JSON"),
        ("a raw NUL byte", b"{\"a\": \"x\x00y\"}".to_vec(), 400, None, "JSON"),
        ("duplicate keys", dup.into_bytes(), 400, None, "duplicate"),
        ("a number out of range", b"{\"a\": 1e400}".to_vec(), 400, None, "JSON"),
        ("a huge integer", with("/meter/number_of_dials", serde_json::json!(99999999999999999999u128 as f64)), 400, Some("/meter/number_of_dials"), "at most"),
        ("a 1 MB name", with("/job_details/contact_name", Value::String("A".repeat(1 << 20))), 400, Some("/job_details/contact_name"), "at most 50"),
        (
            "an escaped NUL in a name",
            with("/job_details/contact_name", Value::String("Bob\u{0}Smith".into())),
            400,
            Some("/job_details/contact_name"),
            "control character",
        ),
        (
            "the DTC separator in notes",
            with("/job_completion/job_notes", Value::String("fitted | tested".into())),
            400,
            Some("/job_completion/job_notes"),
            "separator",
        ),
        ("a 10,000-element array", with("/risk_assessment/site_risk_list", Value::Array(many)), 400, Some("/risk_assessment/site_risk_list"), "at most"),
        (
            "a million-integer list",
            with("/risk_assessment/site_risk_list", Value::Array(vec![Value::from(1); 1_000_000])),
            400,
            Some("/risk_assessment/site_risk_list"),
            "at most 10 items",
        ),
        ("an array for an object", with("/meter", serde_json::json!([1, 2])), 400, Some("/meter"), "type"),
        ("null for a required string", with("/job_details/mpan", Value::Null), 400, Some("/job_details/mpan"), "type"),
    ];
    for (what, body, status, pointer, word) in cases {
        let started = Instant::now();
        let a = server.post(&body);
        assert_eq!(a.status, status, "{what}: {}", a.text().chars().take(400).collect::<String>());
        assert!(started.elapsed() < Duration::from_secs(5), "{what} took {:?}", started.elapsed());
        assert!(a.body.len() < 64 * 1024, "{what}: the answer echoes the input ({} bytes)", a.body.len());
        let p = a.json();
        let errors = p["errors"].as_array().unwrap();
        let text = p.to_string();
        assert!(text.to_lowercase().contains(&word.to_lowercase()), "{what}: no {word:?} in {text}");
        if let Some(ptr) = pointer {
            assert!(errors.iter().any(|e| e["pointer"] == ptr), "{what}: no error at {ptr}: {text}");
        }
        assert_eq!(server.post(&with("/job_details/job_id", Value::String(format!("ok-after-{}", what.replace(' ', "-"))))).status, 200, "after {what}");
    }
}

#[test]
fn slow_clients_are_cut_off_and_do_not_hold_others_up() {
    let server = TestServer::start(|c| {
        c.header_timeout_secs = 1;
        c.body_timeout_secs = 1;
    });
    // Headers that never end.
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(b"POST /v4/sip HTTP/1.1\r\nHost: x\r\n").unwrap();
    // A body that never comes.
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    let head = format!("POST /v4/sip HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: {}\r\nContent-Length: 1000\r\n\r\n{{", server.key);
    stalled.write_all(head.as_bytes()).unwrap();
    // A connection that sends nothing, and one that sends a byte that could begin either
    // protocol ("P": POST or the HTTP/2 preface) and then nothing.
    let mut silent = TcpStream::connect(server.addr).unwrap();
    let mut one_byte = TcpStream::connect(server.addr).unwrap();
    one_byte.write_all(b"P").unwrap();
    // Meanwhile others are served.
    assert_eq!(server.get("/healthz").status, 200);
    let started = Instant::now();
    for (what, conn) in [("silent", &mut silent), ("one-byte", &mut one_byte)] {
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let _ = conn.read_to_end(&mut buf);
        assert!(started.elapsed() < Duration::from_secs(5), "the {what} connection was held {:?}", started.elapsed());
        assert!(buf.is_empty(), "{what}: {buf:?}");
    }
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(started.elapsed() < Duration::from_secs(5), "the header-slow client was held {:?}", started.elapsed());
    stalled.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = stalled.read_to_end(&mut buf);
    let a = common::parse_answer(&buf);
    assert_eq!(a.status, 408, "{}", a.text());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_body_cut_short_or_badly_chunked_is_a_400_not_a_timeout() {
    let server = TestServer::start(|c| c.body_timeout_secs = 30);
    let head = |framing: &str| format!("POST /v4/sip HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: {}\r\n{framing}\r\n", server.key);
    let cases = [
        ("cut short, then the write side closed", format!("{}{{\"job_details\":", head("Content-Length: 1000\r\n"))),
        ("a chunk size that is not hex", format!("{}zz\r\n{{}}\r\n0\r\n\r\n", head("Transfer-Encoding: chunked\r\n"))),
        ("a chunk longer than its size", format!("{}2\r\n{{\"job\"}}\r\n0\r\n\r\n", head("Transfer-Encoding: chunked\r\n"))),
    ];
    for (what, raw) in cases {
        let started = Instant::now();
        let mut conn = TcpStream::connect(server.addr).unwrap();
        conn.write_all(raw.as_bytes()).unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let _ = conn.read_to_end(&mut buf);
        let a = common::parse_answer(&buf);
        assert_eq!(a.status, 400, "{what}: {}", a.text());
        assert_eq!(a.json()["type"], "/problems/body-incomplete", "{what}: {}", a.text());
        // Answered at once, not after the 30 s body timeout.
        assert!(started.elapsed() < Duration::from_secs(5), "{what} took {:?}", started.elapsed());
    }
    assert_eq!(server.post(&with("/job_details/job_id", Value::String("after-cut-bodies".into()))).status, 200);
}

#[test]
fn a_photo_may_decode_to_10_mib_and_not_a_byte_more() {
    let server = TestServer::start(|_| {});
    // 13,981,016 characters: with "==" at the end exactly 10 MiB decoded; without padding 2 bytes more.
    let over = with("/meter/photo", Value::String("A".repeat(13_981_016)));
    let a = server.post(&over);
    assert_eq!(a.status, 400, "{}", a.text().chars().take(400).collect::<String>());
    let pointers: Vec<String> = a.json()["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap().to_string()).collect();
    assert_eq!(pointers, ["/meter/photo"]);
    assert!(a.text().contains("10 MiB"), "{}", a.text().chars().take(600).collect::<String>());
    let exact = with("/meter/photo", Value::String(format!("{}==", "A".repeat(13_981_014))));
    let b = server.post(&exact);
    assert_eq!(b.status, 200, "{}", b.text().chars().take(600).collect::<String>());
}

/// Deciding is CPU work that grows with the body: it runs on a bounded pool of blocking threads,
/// so health checks are answered while large bodies are being decided (on the async workers
/// they waited for the decisions). Ordering, not timing: /healthz answers before any of them.
#[test]
fn health_is_answered_while_large_bodies_are_decided() {
    let server = TestServer::start(|c| c.decide_threads = 2);
    // Four 2 MB photos: deciding each body takes long enough (hundreds of ms in a debug build)
    // that the health check, sent 100 ms after the bodies, lands while they are being decided.
    let photo = "QUJD".repeat(2 * 1024 * 1024 / 3);
    let mut bodies = Vec::new();
    for i in 0..4 {
        let mut b = good();
        b["job_details"]["job_id"] = Value::String(format!("large-{i}"));
        for field in ["pre_job_photo", "post_job_photo", "post_resealing_photo"] {
            b["job_execution"][field] = Value::String(photo.clone());
        }
        b["meter"]["photo"] = Value::String(photo.clone());
        bodies.push(serde_json::to_vec(&b).unwrap());
    }
    let (addr, key) = (server.addr, server.key.clone());
    let posts: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let key = key.clone();
            std::thread::spawn(move || {
                let a = common::request(addr, "POST", "/v4/sip", &[("X-API-Key", &key), ("Content-Type", "application/json")], &body);
                (a.status, Instant::now())
            })
        })
        .collect();
    // Let the bodies arrive (loopback: milliseconds) and their decisions start.
    std::thread::sleep(Duration::from_millis(100));
    let health = server.get("/healthz");
    let health_at = Instant::now();
    assert_eq!(health.status, 200);
    let done: Vec<(u16, Instant)> = posts.into_iter().map(|p| p.join().unwrap()).collect();
    assert!(done.iter().all(|(status, _)| *status == 200), "{done:?}");
    let first_done = done.iter().map(|(_, at)| *at).min().unwrap();
    assert!(health_at < first_done, "/healthz waited for a decision to finish");
}

/// Bodies in flight share a memory budget: a body that does not fit waits briefly, then gets 503
/// with Retry-After before it is read; once the memory is free again it is taken.
#[test]
fn a_body_that_does_not_fit_the_memory_budget_gets_503_unread() {
    let server = TestServer::start(|c| {
        c.body_limit_bytes = 1024 * 1024;
        // Room for one body at the limit (three times its length), not two.
        c.body_budget_bytes = 4 * 1024 * 1024;
        c.body_budget_wait_ms = 200;
    });
    let body = with("/job_details/job_id", Value::String("budget-holder".into()));
    let mut padded = body.clone();
    padded.resize(900 * 1024, b' ');
    // A client that declares 900 KiB and sends it slowly holds the budget meanwhile.
    let mut slow = TcpStream::connect(server.addr).unwrap();
    let head =
        format!("POST /v4/sip HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: {}\r\nContent-Length: {}\r\n\r\n", server.key, padded.len());
    slow.write_all(head.as_bytes()).unwrap();
    slow.write_all(&padded[..1000]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut second = with("/job_details/job_id", Value::String("budget-second".into()));
    second.resize(900 * 1024, b' ');
    let refused = server.post(&second);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["type"], "/problems/busy");
    assert_eq!(refused.header("retry-after"), Some("1"));
    // Small bodies still fit beside the slow one.
    assert_eq!(server.post(&with("/job_details/job_id", Value::String("budget-small".into()))).status, 200);
    // The slow body completes, its memory is returned, and the second body is taken.
    slow.write_all(&padded[1000..]).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = slow.read(&mut buf).unwrap();
    assert_eq!(common::parse_answer(&buf[..n]).status, 200);
    assert_eq!(server.post(&second).status, 200);
    let metrics = server.get("/metrics").text();
    assert!(metrics.contains("flowgate_body_budget_refusals_total 1"), "{metrics}");
}
