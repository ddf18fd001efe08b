//! Test support: a real flowgate server on 127.0.0.1:0 with its own data folder, and a minimal
//! HTTP/1.1 client (one request per connection), so tests need no client crate.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flowgate::config::Config;
use flowgate::domain::auth::{KeysFile, Rate};
use flowgate::runtime::Gateway;

pub mod xml;

/// The repository root: the default rules folder.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh folder under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowgate-{tag}-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies the rule folders (schemas, rules, flow-templates) to a temp folder, for edits.
pub fn copy_rules(to: &Path) {
    for dir in ["schemas", "rules", "flow-templates"] {
        copy_tree(&repo().join(dir), &to.join(dir));
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// One HTTP/1.1 request on its own connection.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    try_request(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// The same, with connection failures (a killed server) as an error instead of a panic.
pub fn try_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Answer, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    // The server may answer (413) before reading a large body; a reset after that is fine.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err("the connection closed without an answer".into());
    }
    Ok(parse_answer(&raw))
}

pub fn parse_answer(raw: &[u8]) -> Answer {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        body = dechunk(&body);
    }
    Answer { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// A running server and what a test needs to talk to it.
pub struct TestServer {
    pub addr: SocketAddr,
    pub key: String,
    pub data: PathBuf,
    pub app: Gateway,
    stop: tokio::sync::watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    /// Starts a server on 127.0.0.1:0 with a fresh data folder (or `data`, to restart on one).
    pub fn start(configure: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_in(temp_dir("data"), configure)
    }

    pub fn start_in(data: PathBuf, configure: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.clone(),
            rules_dir: repo(),
            reload: flowgate::config::Reload { poll_ms: 100, debounce_ms: 100 },
            ..Config::default()
        };
        configure(&mut config);
        // One test key (added once per data folder), at a rate no test reaches by accident.
        let keys_path = config.keys_path();
        let key_file = data.join("test-key");
        let key = if key_file.exists() {
            std::fs::read_to_string(&key_file).unwrap()
        } else {
            let mut keys = if keys_path.exists() { KeysFile::read(&keys_path).unwrap() } else { KeysFile::default() };
            let key = keys.add("Test SIP", "DEMO", Rate { per_second: 10_000, burst: 10_000 }).unwrap();
            keys.write(&keys_path).unwrap();
            std::fs::write(&key_file, &key).unwrap();
            key
        };
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        // A restart on the same folder may find the previous store still closing: retry briefly.
        let mut tries = 0;
        let app = loop {
            match runtime.block_on(Gateway::start(config.clone())) {
                Ok(app) => break app,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("start: {e}"),
            }
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        {
            let _guard = runtime.enter();
            runtime.spawn(flowgate::runtime::run(app.clone(), listener, stopped, Duration::from_secs(5)));
        }
        TestServer { addr, key, data, app, stop, runtime: Some(runtime) }
    }

    /// Runs a future (a store read) on the server's runtime, from the test's thread.
    pub fn on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.runtime.as_ref().expect("the server is running").block_on(f)
    }

    pub fn post(&self, body: &[u8]) -> Answer {
        request(self.addr, "POST", "/v4/sip", &[("Content-Type", "application/json"), ("X-API-Key", &self.key)], body)
    }

    pub fn get(&self, path: &str) -> Answer {
        request(self.addr, "GET", path, &[("X-API-Key", &self.key)], b"")
    }

    /// Waits (bounded) until `f` holds.
    pub fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}");
    }

    /// Stops the server and its background tasks (the store closes when the app drops).
    pub fn stop(mut self) -> PathBuf {
        let _ = self.stop.send(true);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        self.data.clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Every `.usr` file under a folder, recursively.
pub fn usr_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(usr_files(&p));
            } else if p.extension().is_some_and(|x| x == "usr") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The built `flowgate` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_flowgate");

/// `flowgate keys add` into a data folder; the key it prints.
pub fn add_key_cli(data: &Path, name: &str) -> String {
    let out = std::process::Command::new(BIN)
        .args(["keys", "add", "--name", name, "--sip-id", "DEMO", "--rate", "100000", "--burst", "100000", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim().to_string()
}

/// Starts the real binary, `flowgate serve` on a free loopback port with `extra` arguments;
/// returns the child (the caller kills and waits for it) and its address.
#[allow(clippy::zombie_processes)]
pub fn serve_binary(data: &Path, extra: &[&str]) -> (std::process::Child, SocketAddr) {
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--rules-dir")
        .arg(repo())
        .args(extra)
        .env("FLOWGATE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "the server did not start");
        let line = lines.next().expect("server output").unwrap();
        if let Some(addr) = line.strip_prefix("flowgate listening on http://") {
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return (child, addr.parse().unwrap());
        }
    }
}

/// A self-signed certificate for `localhost`, written as `cert.pem` and `key.pem` in `dir`.
pub fn make_cert(dir: &Path) -> rustls_pki_types::CertificateDer<'static> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    cert.cert.der().clone()
}

/// A TLS client that trusts only `trust` and offers `alpn`.
pub fn tls_connector(trust: &rustls_pki_types::CertificateDer<'static>, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A test server over HTTPS with a fresh self-signed certificate (files in the returned folder).
pub fn tls_server(tag: &str) -> (TestServer, rustls_pki_types::CertificateDer<'static>, PathBuf) {
    let dir = temp_dir(tag);
    let trust = make_cert(&dir);
    let d = dir.clone();
    let server = TestServer::start(move |c| c.tls = Some(flowgate::config::TlsFiles { cert_file: d.join("cert.pem"), key_file: d.join("key.pem") }));
    (server, trust, dir)
}

#[allow(dead_code)]
/// A body with its four photos, each `photo_bytes` of pseudo-random data (base64).
pub fn photo_body(job_id: &str, photo_bytes: usize, seed: u64) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(repo().join("tests/cases/s01-all-flows/request.json")).unwrap()).unwrap();
    v["job_details"]["job_id"] = serde_json::Value::String(job_id.into());
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = seed | 1;
    let chars = photo_bytes.div_ceil(3) * 4;
    for (block, field) in
        [("job_execution", "pre_job_photo"), ("job_execution", "post_job_photo"), ("job_execution", "post_resealing_photo"), ("meter", "photo")]
    {
        let photo: String = (0..chars)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(ALPHABET[(state % 64) as usize])
            })
            .collect();
        v[block][field] = serde_json::Value::String(photo);
    }
    serde_json::to_vec(&v).unwrap()
}

#[allow(dead_code)]
/// The job archives in the sink: job id → the body bytes each holds, exactly as embedded.
pub fn archived_bodies(dtn: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(clients) = std::fs::read_dir(dtn.join("jobs")) else { return out };
    for client in clients.flatten() {
        for file in std::fs::read_dir(client.path()).unwrap().flatten() {
            let (job, body) = archived_body(&std::fs::read(file.path()).unwrap());
            out.insert(job, body);
        }
    }
    out
}

/// A job archive's job id and the body bytes it embeds, exactly as embedded.
#[allow(dead_code)]
pub fn archived_body(bytes: &[u8]) -> (String, Vec<u8>) {
    let head: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    let at = bytes.windows(8).position(|w| w == b",\"body\":").unwrap() + 8;
    (head["job_id"].as_str().unwrap().to_string(), bytes[at..bytes.len() - 2].to_vec())
}
