//! Logs carry no secrets and no personal data: the golden suite is posted with JSON logging on,
//! and no key, name, telephone number, address, postcode or photo text may appear in any line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::TestServer;
use serde_json::Value;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The personal and secret values of a body: what must never be logged.
fn secrets_of(body: &Value, out: &mut Vec<String>) {
    const PERSONAL: [&str; 13] = [
        "contact_name",
        "address",
        "town",
        "post_code",
        "contact_telephone",
        "customer_vulnerability",
        "site_risk",
        "critical_medical_equipment_info",
        "third_party_presence_info",
        "photo",
        "pre_job_photo",
        "post_job_photo",
        "post_resealing_photo",
    ];
    if let Value::Object(m) = body {
        for (k, v) in m {
            match v {
                Value::String(s) if PERSONAL.contains(&k.as_str()) && s.trim().len() >= 4 => {
                    out.push(s.chars().take(40).collect());
                    if k == "post_code" {
                        out.push(s.replace(' ', "").to_uppercase());
                    }
                }
                other => secrets_of(other, out),
            }
        }
    }
}

#[test]
fn no_key_name_phone_address_postcode_or_photo_reaches_the_logs() {
    let capture = Capture::default();
    // The one global subscriber of the test process (the other tests' servers log into it too,
    // and are held to the same check): everything flowgate logs, its dependencies from info up.
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .with_writer(capture.clone())
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,flowgate=trace"))
        .init();
    let server = TestServer::start(|c| c.log_format = flowgate::config::LogFormat::Json);
    let mut secrets = vec![server.key.clone()];
    let mut requests = 0;
    for dir in flowgate::rules::samples::cases(&common::repo().join("tests/cases")) {
        let body = std::fs::read(dir.join("request.json")).unwrap();
        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
            secrets_of(&v, &mut secrets);
        }
        server.post(&body);
        requests += 1;
    }
    // A bad key is not logged either.
    common::request(server.addr, "POST", "/v4/sip", &[("Content-Type", "application/json"), ("X-API-Key", "fgk_not-a-real-key-1234")], b"{}");
    secrets.push("fgk_not-a-real-key-1234".into());
    // A client's own request id and trace context are logged beside ours, printable ASCII only
    // and at most 128 bytes of each.
    let long = format!("trace-{}\u{e9}{}", "x".repeat(20), "y".repeat(300));
    let kept: String = long.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(128).collect();
    common::request(
        server.addr,
        "GET",
        "/healthz",
        &[("X-Request-Id", &long), ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
        b"",
    );
    server.wait_for("deliveries", || common::usr_files(&server.data.join("dtn")).len() > 10);
    drop(server);
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() >= requests, "expected a log line per request, got {}", lines.len());
    let mut with_request_id = 0;
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if line.contains("request_id") {
            with_request_id += 1;
        }
        for s in &secrets {
            assert!(!line.contains(s.as_str()), "a log line contains {s:?}: {v}");
        }
    }
    assert!(with_request_id >= requests, "every request is logged with its request id");
    let client_id = format!("\"client_request_id\":\"{kept}\"");
    assert!(lines.iter().any(|l| l.contains(&client_id)), "no line carries {client_id}");
    assert!(!logs.contains(&format!("{kept}y")) && !logs.contains("xxx\u{e9}"), "the client's id is logged whole");
    assert!(logs.contains("\"traceparent\":\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\""), "traceparent is not logged");
    assert!(secrets.len() > 100, "the test looked for {} values", secrets.len());
}
