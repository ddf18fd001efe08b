//! HTTPS in-process: with a certificate made here, a request gets the same answer as over HTTP;
//! ALPN offers HTTP/2; a new certificate on disk is picked up without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request over TLS; returns the negotiated ALPN protocol and the answer.
fn https(addr: std::net::SocketAddr, trust: &CertificateDer<'static>, alpn: &[&[u8]], raw: Vec<u8>) -> (Option<Vec<u8>>, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let connector = common::tls_connector(trust, alpn);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if raw.is_empty() {
            return (negotiated, vec![]);
        }
        tls.write_all(&raw).await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        (negotiated, out)
    })
}

#[test]
fn an_https_request_gets_the_same_answer_as_over_http() {
    let (server, trust, dir) = common::tls_server("tls");
    let plain = common::TestServer::start(|_| {});
    let body = std::fs::read(common::repo().join("tests/cases/s01-all-flows/request.json")).unwrap();
    let mut raw = format!(
        "POST /v4/sip HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nX-API-Key: {}\r\nContent-Length: {}\r\n\r\n",
        server.key,
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let (alpn, answer) = https(server.addr, &trust, &[b"http/1.1"], raw);
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let over_tls = common::parse_answer(&answer);
    let over_http = plain.post(&body);
    assert_eq!(over_tls.status, 200, "{}", over_tls.text());
    assert_eq!(over_tls.status, over_http.status);
    let (a, b) = (over_tls.json(), over_http.json());
    for k in ["status", "scenario", "scenario_name", "warnings", "ruleset"] {
        assert_eq!(a[k], b[k], "{k}");
    }
    let flows = |v: &serde_json::Value| v["flows"].as_array().unwrap().iter().map(|f| format!("{}>{}", f["flow"], f["to"])).collect::<Vec<_>>();
    assert_eq!(flows(&a), flows(&b));
    // HTTP/2 is offered.
    let (alpn, _) = https(server.addr, &trust, &[b"h2", b"http/1.1"], vec![]);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    // A renewed certificate is picked up without a restart: the old one is no longer trusted.
    let renewed = common::make_cert(&dir);
    server.wait_for("the new certificate", || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
            common::tls_connector(&renewed, &[]).connect(ServerName::try_from("localhost").unwrap(), tcp).await.is_ok()
        })
    });
}
