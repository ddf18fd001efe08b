//! HTTP/2: requests over one multiplexed connection, cleartext with prior knowledge (h2c) and
//! over TLS with ALPN h2, get the same answers as over HTTP/1.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use serde_json::Value;

/// An HTTP/2 connection over any stream; the connection task runs on the current runtime.
async fn h2<S>(io: S) -> SendRequest<Full<Bytes>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

async fn call(send: &mut SendRequest<Full<Bytes>>, method: &str, path: &str, key: &str, body: Vec<u8>) -> (u16, hyper::HeaderMap, Value) {
    send.ready().await.unwrap();
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"))
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.version(), hyper::Version::HTTP_2);
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status.as_u16(), parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn body_with_job(case: &str, job: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&std::fs::read(common::repo().join("tests/cases").join(case).join("request.json")).unwrap()).unwrap();
    v["job_details"]["job_id"] = Value::String(job.to_string());
    serde_json::to_vec(&v).unwrap()
}

/// Eight requests at once on one connection, a retry, a status call and a rejected body.
async fn exercise(mut send: SendRequest<Full<Bytes>>, key: String, tag: &str) -> Vec<Value> {
    let mut streams = Vec::new();
    for n in 0..8 {
        let mut s = send.clone();
        let (key, body) = (key.clone(), body_with_job("s01-all-flows", &format!("{tag}-{n}")));
        streams.push(tokio::spawn(async move { call(&mut s, "POST", "/v4/sip", &key, body).await }));
    }
    let mut answers = Vec::new();
    for s in streams {
        let (status, headers, answer) = s.await.unwrap();
        assert_eq!(status, 200, "{answer}");
        assert!(headers.contains_key("ratelimit"), "{headers:?}");
        answers.push(answer);
    }
    let (status, headers, again) = call(&mut send, "POST", "/v4/sip", &key, body_with_job("s01-all-flows", &format!("{tag}-0"))).await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    assert_eq!(again["request_id"], answers[0]["request_id"]);
    let id = answers[0]["request_id"].as_str().unwrap();
    let (status, _, shown) = call(&mut send, "GET", &format!("/v4/sip/{id}"), &key, vec![]).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["request_id"], answers[0]["request_id"]);
    let (status, headers, problem) = call(&mut send, "POST", "/v4/sip", &key, b"{\"job_details\": 1}".to_vec()).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(headers.get("content-type").unwrap(), "application/problem+json");
    answers
}

#[test]
fn h2c_with_prior_knowledge_multiplexes_requests() {
    let server = common::TestServer::start(|_| {});
    let plain = server.post(&body_with_job("s01-all-flows", "h1-reference"));
    assert_eq!(plain.status, 200);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answers = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        exercise(h2(tcp).await, server.key.clone(), "h2c").await
    });
    let reference = plain.json();
    for a in &answers {
        for k in ["status", "scenario", "ruleset"] {
            assert_eq!(a[k], reference[k], "{k}");
        }
        assert_eq!(a["flows"].as_array().unwrap().len(), reference["flows"].as_array().unwrap().len());
    }
    let ids: std::collections::BTreeSet<&str> = answers.iter().map(|a| a["request_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 8, "one request id per stream");
}

#[test]
fn h2_over_tls_by_alpn() {
    let (server, trust, _) = common::tls_server("h2tls");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answers = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let tls = common::tls_connector(&trust, &[b"h2"]).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        exercise(h2(tls).await, server.key.clone(), "h2tls").await
    });
    assert!(answers.iter().all(|a| a["scenario"] == "S01"), "{answers:#?}");
}
