//! HTTP: routes, the request path, answers, and the accept loop.
//!
//! `serve` takes a bound listener and a shutdown signal, so tests drive the real server on
//! `127.0.0.1:0`. The request path reads top to bottom in `post_sip`:
//! authenticate → rate-limit → read body → decide (schema, rules, flows) → store → answer.

pub mod limit;
pub mod openapi;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::config::Config;
use crate::domain::auth::{Client, KeysFile};
use crate::domain::clock::Clock;
use crate::domain::problem::Problem;
use crate::exchange::deliver::DispatchStats;
use crate::http::limit::{Decision as Limit, Limits};
use crate::metrics::Metrics;
use crate::rules::decide::{decide_parsed, Explain, Verdict};
use crate::rules::load::Live;
use crate::rules::set::RuleSet;
use crate::store::{AcceptOutcome, NewRequest, Store};

/// Keys and their limiters, swapped whole when the keys file changes.
pub struct KeyState {
    pub keys: KeysFile,
    pub limits: Limits,
}

/// What the last reload attempt of each kind did (shown on `/readyz`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub ok: bool,
    pub at: Option<String>,
    pub error: Option<String>,
}

/// What the last reload of rules and of keys did, written by the runtime's watcher.
#[derive(Default)]
pub struct Reloads {
    pub rules: Mutex<ReloadStatus>,
    pub keys: Mutex<ReloadStatus>,
}

/// The live handles the HTTP layer reads, each shared with the part of the runtime that owns it.
pub struct Handles {
    pub config: Arc<Config>,
    pub rules: Live,
    pub keys: Arc<ArcSwap<KeyState>>,
    pub store: Store,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    pub dispatch: Arc<DispatchStats>,
    pub reloads: Arc<Reloads>,
    /// The TLS acceptor when HTTPS is configured; swapped by the runtime when the PEM files change.
    pub tls: Option<Arc<ArcSwap<tokio_rustls::TlsAcceptor>>>,
}

/// The HTTP server: the handles, and what only the request path holds.
pub struct Server {
    h: Handles,
    /// When the oldest undelivered file's request was accepted, and when that was looked up:
    /// finding it reads the whole outbox index, so `/metrics` (unauthenticated) does it at most
    /// once every [`OLDEST_EVERY`].
    oldest: Mutex<Option<(std::time::Instant, Option<time::OffsetDateTime>)>>,
    /// Turns to decide a body on a blocking thread: deciding is CPU work that grows with the
    /// body, and on an async worker it would hold up health checks and every other client.
    deciders: Arc<tokio::sync::Semaphore>,
    /// Memory for request bodies in flight, in KiB: bounds what bodies hold whatever the number
    /// of connections.
    body_budget: Arc<tokio::sync::Semaphore>,
}

impl Server {
    pub fn new(h: Handles) -> Server {
        Server {
            oldest: Mutex::new(None),
            deciders: Arc::new(tokio::sync::Semaphore::new(h.config.deciders())),
            body_budget: Arc::new(tokio::sync::Semaphore::new(h.config.body_budget_kib())),
            h,
        }
    }
}

impl std::ops::Deref for Server {
    type Target = Handles;
    fn deref(&self) -> &Handles {
        &self.h
    }
}

const OLDEST_EVERY: Duration = Duration::from_secs(5);

type Answer = Response<Full<Bytes>>;

fn json_answer(status: StatusCode, content_type: &'static str, body: &Value) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(body).unwrap_or_default())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn problem(p: &Problem, instance: &str, request_id: &str) -> Answer {
    let status = StatusCode::from_u16(p.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_answer(status, "application/problem+json", &p.body(instance, request_id));
    match p {
        Problem::RateLimited { retry_after_secs } | Problem::Busy { retry_after_secs } => {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
        }
        // The store (a shared database) could not take the request: nothing was kept; the
        // database usually returns within seconds.
        Problem::StoreUnavailable => {
            r.headers_mut().insert("retry-after", HeaderValue::from_static("2"));
        }
        // RFC 9110 §11.6.1: a 401 names the scheme to authenticate with (X-API-Key is ours
        // alone; Bearer is the standard one the server also takes).
        Problem::Unauthorized => {
            r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"flowgate\""));
        }
        // RFC 9110 §15.5.6: a 405 lists the methods the route takes.
        Problem::MethodNotAllowed { allow } => {
            r.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
        }
        _ => {}
    }
    r
}

/// A problem the rule set decided: it names the revision (200s carry it already).
fn decided(p: &Problem, instance: &str, request_id: &str, revision: &str) -> Answer {
    let status = StatusCode::from_u16(p.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = p.body(instance, request_id);
    body["ruleset"] = Value::String(revision.to_string());
    json_answer(status, "application/problem+json", &body)
}

fn with_limit_headers(mut r: Answer, d: &Limit) -> Answer {
    if let Ok(v) = HeaderValue::from_str(&d.policy_header()) {
        r.headers_mut().insert("ratelimit-policy", v);
    }
    if let Ok(v) = HeaderValue::from_str(&d.limit_header()) {
        r.headers_mut().insert("ratelimit", v);
    }
    r
}

/// The route template of a path, for metrics (bounded label values).
fn route_of(method: &Method, path: &str) -> &'static str {
    match (method, path) {
        (_, "/v4/sip") => "/v4/sip",
        (_, p) if p.starts_with("/v4/sip/") => "/v4/sip/{id}",
        (_, "/healthz") => "/healthz",
        (_, "/readyz") => "/readyz",
        (_, "/metrics") => "/metrics",
        (_, "/v4/openapi.json") => "/v4/openapi.json",
        _ => "other",
    }
}

/// The methods a path's route takes (HEAD wherever GET is), for a 405's `Allow`; `None` for a
/// path that is no route (404).
fn allowed(path: &str) -> Option<&'static str> {
    match path {
        "/v4/sip" => Some("POST"),
        p if p.starts_with("/v4/sip/") => Some("GET, HEAD"),
        "/healthz" | "/readyz" | "/metrics" | "/v4/openapi.json" => Some("GET, HEAD"),
        _ => None,
    }
}

/// A header value a client sent, fit for a log field: printable ASCII only, at most 128 bytes.
/// Logged beside our own id so a client's trace can be followed here; never put in an answer.
pub(crate) fn loggable(value: &[u8]) -> String {
    value.iter().filter(|b| (0x20..=0x7e).contains(*b)).take(128).map(|b| char::from(*b)).collect()
}

/// Routes one request.
pub(crate) async fn handle(app: Arc<Server>, req: Request<Incoming>) -> Result<Answer, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = route_of(&method, &path);
    let request_id = ulid::Ulid::new().to_string();
    // One span per request; the client and rule set are recorded once known. Never the key,
    // the body, or anything personal.
    let span = tracing::info_span!(
        "request",
        %request_id,
        %route,
        client_request_id = tracing::field::Empty,
        traceparent = tracing::field::Empty,
        client = tracing::field::Empty,
        key_id = tracing::field::Empty,
        ruleset = tracing::field::Empty
    );
    if let Some(v) = req.headers().get("x-request-id") {
        span.record("client_request_id", loggable(v.as_bytes()).as_str());
    }
    if let Some(v) = req.headers().get("traceparent") {
        span.record("traceparent", loggable(v.as_bytes()).as_str());
    }
    let mut answer = route_request(&app, req, method, &path, &request_id).instrument(span.clone()).await;
    // Every answer names our id for this request (a ULID: always a valid header value), the one
    // the logs carry, so a client can quote it.
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        answer.headers_mut().insert("x-request-id", v);
    }
    let status = answer.status().as_u16();
    let elapsed = started.elapsed();
    span.in_scope(|| tracing::info!(status, micros = elapsed.as_micros() as u64, "answered"));
    let status = status.to_string();
    app.metrics.inc("flowgate_http_requests_total", &[("route", route), ("status", &status)], 1.0);
    app.metrics.observe("flowgate_http_request_duration_seconds", &[("route", route)], elapsed.as_secs_f64());
    Ok(answer)
}

async fn route_request(app: &Arc<Server>, req: Request<Incoming>, method: Method, path: &str, request_id: &str) -> Answer {
    let app = app.clone();
    let request_id = request_id.to_string();
    let request_id = request_id.as_str();
    let path = path.to_string();
    // HEAD is answered as GET is, then the body is dropped (RFC 9110 §9.3.2): same status and
    // headers, Content-Length included.
    let head = method == Method::HEAD;
    let method = if head { Method::GET } else { method };
    let answer = match (method, path.as_str()) {
        (Method::POST, "/v4/sip") => post_sip(&app, req, request_id).await,
        (Method::GET, p) if p.starts_with("/v4/sip/") => get_sip(&app, &req, &p["/v4/sip/".len()..], request_id).await,
        (Method::GET, "/healthz") => json_answer(StatusCode::OK, "application/json", &json!({"status": "alive"})),
        (Method::GET, "/readyz") => readyz(&app),
        (Method::GET, "/metrics") => metrics(&app).await,
        (Method::GET, "/v4/openapi.json") => json_answer(StatusCode::OK, "application/json", &crate::http::openapi::document(&app.rules.load())),
        _ => match allowed(&path) {
            Some(allow) => problem(&Problem::MethodNotAllowed { allow }, &path, request_id),
            None => problem(&Problem::NotFound, &path, request_id),
        },
    };
    if head {
        without_body(answer)
    } else {
        answer
    }
}

/// The answer to a HEAD: the GET's status and headers, with the length its body would have had.
fn without_body(answer: Answer) -> Answer {
    use hyper::body::Body as _;
    let (mut parts, body) = answer.into_parts();
    if let Some(n) = body.size_hint().exact() {
        parts.headers.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}

fn is_json(req: &Request<Incoming>) -> bool {
    let Some(ct) = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let mut parts = ct.split(';').map(str::trim);
    let essence = parts.next().unwrap_or_default();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    // A charset, if given, must be UTF-8.
    parts.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8"),
        _ => true,
    })
}

/// Reads the whole body, within the size limit and the body timeout. A declared length over the
/// limit was refused by the caller, before the body's memory was taken.
///
/// Into one buffer of the declared length, each chunk copied in as it comes and let go: the body
/// is in memory once while it is read (collecting the chunks, then joining them, held it twice
/// at the end and allocated it twice).
async fn read_body(app: &Server, req: Request<Incoming>) -> Result<Bytes, Problem> {
    let limit = app.config.body_limit_bytes;
    let max = usize::try_from(limit).unwrap_or(usize::MAX);
    let declared = req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let mut incoming = req.into_body();
    let read = async move {
        let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(max));
        while let Some(frame) = incoming.frame().await {
            // The client's fault (cut short, bad chunk framing), not slowness: a 400, not a 408.
            let frame = frame.map_err(|_| Problem::BodyIncomplete)?;
            let Ok(data) = frame.into_data() else { continue };
            if buf.len() + data.len() > max {
                return Err(Problem::TooLarge { limit });
            }
            if buf.is_empty() && declared == Some(data.len()) {
                // The whole body in one chunk: kept as it is, not copied.
                return Ok(data);
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(Duration::from_secs(app.config.body_timeout_secs), read).await {
        Err(_) => Err(Problem::BodyTimeout),
        Ok(r) => r,
    }
}

/// Notes the client on the request's span and takes one request from its key's rate limit:
/// the limit state for the answer's headers, or the 429 to send.
async fn admit(app: &Server, client: &Client, instance: &str, request_id: &str) -> Result<Limit, Box<Answer>> {
    tracing::Span::current().record("client", client.name.as_str()).record("key_id", client.key_id.as_str());
    // A shared store holds one rate state per key for every instance; when it cannot answer,
    // or the store is this instance's own, the instance limits alone.
    let local = app.keys.load().limits.check(&client.key_id);
    let limit = match app.store.rate(&client.key_id, local.rate()).await {
        Some(Ok(remaining)) => Limit::Allowed { rate: local.rate(), remaining },
        Some(Err(retry_after)) => Limit::Limited { rate: local.rate(), retry_after },
        None => local,
    };
    if let Limit::Limited { retry_after, .. } = limit {
        app.metrics.inc("flowgate_rate_limited_total", &[], 1.0);
        let p = Problem::RateLimited { retry_after_secs: crate::http::limit::retry_secs(retry_after) };
        return Err(Box::new(with_limit_headers(problem(&p, instance, request_id), &limit)));
    }
    Ok(limit)
}

/// The client a request authenticates as.
fn authenticate(app: &Server, req: &Request<Incoming>) -> Option<Client> {
    let key = crate::domain::auth::presented_key(req.headers())?;
    app.keys.load().keys.authenticate(key).cloned()
}

async fn post_sip(app: &Server, req: Request<Incoming>, request_id: &str) -> Answer {
    let instance = "/v4/sip";
    let Some(client) = authenticate(app, &req) else {
        return problem(&Problem::Unauthorized, instance, request_id);
    };
    let limit = match admit(app, &client, instance, request_id).await {
        Ok(limit) => limit,
        Err(refused) => return *refused,
    };
    let answer = accept(app, req, &client, request_id).await;
    with_limit_headers(answer, &limit)
}

async fn accept(app: &Server, req: Request<Incoming>, client: &Client, request_id: &str) -> Answer {
    let instance = "/v4/sip";
    if !is_json(&req) {
        return problem(&Problem::UnsupportedMediaType, instance, request_id);
    }
    let _budget = match body_budget(app, &req).await {
        Ok(permit) => permit,
        Err(p) => return problem(&p, instance, request_id),
    };
    let body = match read_body(app, req).await {
        Ok(b) => b,
        Err(p) => return problem(&p, instance, request_id),
    };
    // One snapshot of the rule set decides the whole request.
    let set = app.rules.load_full();
    tracing::Span::current().record("ruleset", set.revision.as_str());
    let decision = match decide_off_workers(app, &set, client, &body).await {
        Ok(Ok(decision)) => decision,
        Ok(Err(first)) => return replayed(&first),
        Err(p) => return decided(&p, instance, request_id, &set.revision),
    };
    match decision.verdict {
        Verdict::Rejected(errors) => {
            for e in &errors {
                app.metrics.inc("flowgate_validation_findings_total", &[("rule", &e.rule)], 1.0);
            }
            tracing::info!(status = 400, findings = errors.len(), "rejected");
            decided(&Problem::Invalid(errors), instance, request_id, &set.revision)
        }
        Verdict::Failed(f) => {
            app.metrics.inc("flowgate_rule_failures_total", &[("rule", &f.rule)], 1.0);
            tracing::error!(status = 500, rule = %f.rule, error = %redacted(&f.message), "a rule failed at run time (`flowgate check` on the body shows the whole error)");
            decided(&Problem::RuleFailed { rule: f.rule }, instance, request_id, &set.revision)
        }
        Verdict::Accepted(a) => store_accepted(app, a, &set, client, body, request_id).await,
    }
}

/// The body's share of the memory budget, taken before a byte of it is read and held until the
/// answer: a body that does not fit within the wait is refused unread.
async fn body_budget(app: &Server, req: &Request<Incoming>) -> Result<tokio::sync::OwnedSemaphorePermit, Problem> {
    let declared = req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.config.body_limit_bytes) {
        return Err(Problem::TooLarge { limit: app.config.body_limit_bytes });
    }
    let cost = app.config.body_cost_kib(declared);
    let wait = Duration::from_millis(app.config.body_budget_wait_ms);
    match tokio::time::timeout(wait, app.body_budget.clone().acquire_many_owned(cost)).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => {
            app.metrics.inc("flowgate_body_budget_refusals_total", &[], 1.0);
            tracing::warn!(status = 503, cost_kib = cost, "body budget taken; refused unread");
            Err(Problem::Busy { retry_after_secs: 1 })
        }
    }
}

/// Decides a body on a blocking thread, one of the configured turns: the decision, or the first
/// answer when the same body was accepted for the job before (not decided again, whatever the
/// rules say now).
async fn decide_off_workers(
    app: &Server,
    set: &Arc<RuleSet>,
    client: &Client,
    body: &Bytes,
) -> Result<Result<crate::rules::decide::Decision, Box<crate::store::RequestRecord>>, Problem> {
    let Ok(_turn) = app.deciders.clone().acquire_owned().await else {
        return Err(Problem::StoreUnavailable);
    };
    let (snapshot, client, store, clock, body) = (set.clone(), client.clone(), app.store.clone(), app.clock, body.clone());
    let span = tracing::Span::current();
    let runtime = tokio::runtime::Handle::current();
    let work = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let parsed = crate::rules::decide::parse(&body);
        if let Some(first) = parsed.as_ref().ok().and_then(|value| earlier_answer(&runtime, &store, &client, value)) {
            return Err(Box::new(first));
        }
        Ok(decide_parsed(&snapshot, &client, parsed, clock, Explain::No))
    });
    work.await.map_err(|e| {
        // A panic in deciding (a defect; the lints keep them out of library code).
        tracing::error!(status = 500, error = %e, "deciding the body panicked");
        Problem::RuleFailed { rule: "decide".into() }
    })
}

/// Stores an accepted body with its flows (durably, before the answer) and answers 200; or the
/// first answer of a replay, 409 for another body under the same job, 503 if the store refuses.
async fn store_accepted(app: &Server, a: crate::rules::decide::Accepted, set: &RuleSet, client: &Client, body: Bytes, request_id: &str) -> Answer {
    for w in &a.warnings {
        app.metrics.inc("flowgate_validation_findings_total", &[("rule", &w.rule)], 1.0);
    }
    let flows: Vec<String> = a.flows.iter().map(|f| f.flow.clone()).collect();
    let scenario = a.scenario.clone();
    let new = NewRequest {
        request_id: request_id.to_string(),
        client: client.name.clone(),
        key_id: client.key_id.clone(),
        job_id: a.job_id,
        body_hash: a.body_hash,
        body,
        scenario: a.scenario,
        scenario_name: a.scenario_name,
        warnings: a.warnings,
        flows: a.flows,
        ruleset: set.revision.clone(),
        envelope: set.envelope.clone(),
        now: app.clock.now(),
        sip_id: client.sip_id.clone(),
        mpan: a.mpan,
        date_of_action: a.date_of_action,
    };
    match app.store.accept(new).await {
        Ok(AcceptOutcome::Accepted(record)) => {
            app.metrics.inc("flowgate_scenarios_total", &[("scenario", &scenario)], 1.0);
            for f in &flows {
                app.metrics.inc("flowgate_flows_queued_total", &[("flow", f)], 1.0);
            }
            tracing::info!(status = 200, %scenario, flows = flows.len(), "accepted");
            json_answer(StatusCode::OK, "application/json", &record.answer)
        }
        Ok(AcceptOutcome::Replayed(record)) => replayed(&record),
        Ok(AcceptOutcome::Conflict { request_id: first }) => {
            tracing::info!(status = 409, first = %first, "job_id conflict");
            problem(&Problem::Conflict { request_id: first }, "/v4/sip", request_id)
        }
        Err(e) => {
            tracing::error!(status = 503, error = %e, "store refused the request");
            problem(&Problem::StoreUnavailable, "/v4/sip", request_id)
        }
    }
}

/// A rule's run-time error for the log: quoted text (where rhai puts the values it read from
/// the body) replaced by "…", and at most 200 characters, so no personal data reaches the logs.
fn redacted(message: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    for c in message.chars() {
        match quote {
            Some(q) if c == q => {
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '"' || c == '\'' {
                    out.push('…');
                    quote = Some(c);
                }
            }
        }
        if out.chars().count() >= 200 {
            out.push('…');
            break;
        }
    }
    out
}

/// The first answer to this very body, if the client's job was accepted before.
/// Runs on a blocking thread: `runtime` drives the store's lookup there.
fn earlier_answer(runtime: &tokio::runtime::Handle, store: &Store, client: &Client, value: &serde_json::Value) -> Option<crate::store::RequestRecord> {
    let job_id = value.pointer("/job_details/job_id")?.as_str()?;
    let first = runtime.block_on(store.job(&client.name, &client.sip_id, job_id)).ok()??;
    (first.body_hash == crate::rules::decide::canonical_hash(value)).then_some(first)
}

fn replayed(record: &crate::store::RequestRecord) -> Answer {
    tracing::info!(status = 200, first = %record.request_id, "idempotent replay");
    let mut r = json_answer(StatusCode::OK, "application/json", &record.answer);
    r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    r
}

/// `GET /v4/sip/{id}`: for the client whose key created the request — its keys share its requests
/// as they share its idempotency (a rotated key gets the first answer again, so it can see it);
/// another client's id is 404. Under the calling key's rate limit like every call.
async fn get_sip(app: &Server, req: &Request<Incoming>, id: &str, request_id: &str) -> Answer {
    let instance = format!("/v4/sip/{id}");
    let Some(client) = authenticate(app, req) else {
        return problem(&Problem::Unauthorized, &instance, request_id);
    };
    let limit = match admit(app, &client, &instance, request_id).await {
        Ok(limit) => limit,
        Err(refused) => return *refused,
    };
    with_limit_headers(request_status(app, &client, id, &instance, request_id).await, &limit)
}

async fn request_status(app: &Server, client: &Client, id: &str, instance: &str, request_id: &str) -> Answer {
    let record = match app.store.request(id).await {
        Ok(Some(r)) if r.client == client.name => r,
        Ok(_) => return problem(&Problem::NotFound, instance, request_id),
        Err(_) => return problem(&Problem::StoreUnavailable, instance, request_id),
    };
    let mut flows = Vec::new();
    for object in &record.objects {
        if let Ok(Some(f)) = app.store.outbox_file(object).await {
            flows.push(json!({
                "flow": f.flow,
                "to": f.to,
                "file_id": f.file_id,
                "object": f.object,
                "state": f.state,
                "attempts": f.attempts,
                "delivered_at": f.delivered_at,
                "last_error": f.last_error,
            }));
        }
    }
    let incoming = match app.store.incoming(&record.request_id).await {
        Ok(v) => v,
        Err(_) => return problem(&Problem::StoreUnavailable, instance, request_id),
    };
    // The job archive settles which instance owns the job; `duplicate_of` names the winner.
    let archive = match record.archive.as_deref() {
        Some(a) => Some(app.store.outbox_file(a).await),
        None => None,
    };
    let archive = match archive {
        Some(Ok(Some(f))) => json!({
            "object": f.object,
            "state": f.state,
            "attempts": f.attempts,
            "delivered_at": f.delivered_at,
            "last_error": f.last_error,
        }),
        Some(Err(_)) => return problem(&Problem::StoreUnavailable, instance, request_id),
        _ => Value::Null,
    };
    let body = json!({
        "request_id": record.request_id,
        "job_id": record.job_id,
        "received_at": record.received_at,
        "answer": record.answer,
        "flows": flows,
        "archive": archive,
        "duplicate_of": record.duplicate_of,
        "incoming": incoming,
    });
    json_answer(StatusCode::OK, "application/json", &body)
}

fn readyz(app: &Server) -> Answer {
    let set = app.rules.load();
    let writable = app.store.writable();
    let rules = app.reloads.rules.lock().map(|s| s.clone()).unwrap_or_default();
    let keys = app.reloads.keys.lock().map(|s| s.clone()).unwrap_or_default();
    let body = json!({
        "status": if writable { "ready" } else { "not ready" },
        "ruleset": set.revision,
        "store_writable": writable,
        "last_rules_reload": rules,
        "last_keys_reload": keys,
    });
    let status = if writable { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json_answer(status, "application/json", &body)
}

async fn metrics(app: &Server) -> Answer {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &app.metrics;
    let s = &app.store.stats;
    // Counters kept as atomics by the store and the dispatcher, copied in at each scrape; the
    // type each is exposed with comes from the one table of families (metrics::FAMILIES).
    m.set("flowgate_store_commits_total", &[], s.commits.load(Relaxed) as f64);
    m.set("flowgate_store_commit_accepts_total", &[], s.accepts.load(Relaxed) as f64);
    m.set("flowgate_store_largest_commit_batch", &[], s.largest_batch.load(Relaxed) as f64);
    if let Ok(n) = app.store.pending_count().await {
        m.set("flowgate_outbox_depth", &[], n as f64);
    }
    // Age of the oldest undelivered file: when its request was accepted.
    let cached = *app.oldest.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let accepted_at = match cached {
        Some((looked, at)) if looked.elapsed() < OLDEST_EVERY => at,
        _ => {
            let oldest = app.store.oldest_pending().await.ok().flatten();
            let record = match oldest {
                Some(id) => app.store.request(&id).await.ok().flatten(),
                None => None,
            };
            let at = record.and_then(|r| crate::domain::clock::parse_rfc3339(&r.received_at));
            *app.oldest.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((std::time::Instant::now(), at));
            at
        }
    };
    let age = accepted_at.map_or(0.0, |t| (time::OffsetDateTime::now_utc() - t).as_seconds_f64().max(0.0));
    m.set("flowgate_outbox_oldest_age_seconds", &[], age);
    let d = &app.dispatch;
    // Flow deliveries, conflicts and failures are counted by flow as they happen, in the same
    // registry (`DispatchStats::metrics`); only the unlabelled job counters are copied here.
    m.set("flowgate_job_archives_delivered_total", &[], d.archived.load(Relaxed) as f64);
    m.set("flowgate_job_duplicates_total", &[], d.duplicates.load(Relaxed) as f64);
    let mut r = Response::new(Full::new(Bytes::from(m.render())));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

/// Serves until `shutdown` fires, then lets in-flight requests finish (bounded by `grace`).
///
/// At most `max_connections` connections at a time (the rest wait in the listen backlog). A
/// connection must send its first bytes within the header timeout (plain TCP: before hyper reads
/// the protocol preface, which has no timeout of its own; TLS: the handshake, then the protocol
/// ALPN chose, HTTP/1.1 with its header timeout or HTTP/2). HTTP/2 connections are pinged and
/// closed when the peer stops answering.
pub async fn serve(listener: TcpListener, app: Arc<Server>, mut shutdown: tokio::sync::watch::Receiver<bool>, grace: Duration) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let first_bytes = Duration::from_secs(app.config.header_timeout_secs);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(first_bytes);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Duration::from_secs(20)).keep_alive_timeout(Duration::from_secs(10));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(app.config.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = {
                    let app = app.clone();
                    hyper::service::service_fn(move |req| handle(app.clone(), req))
                };
                let (builder, watcher) = (builder.clone(), graceful.watcher());
                match &app.tls {
                    None => {
                        tokio::spawn(async move {
                            let _permit = permit;
                            if !protocol_known(&stream, first_bytes).await {
                                return;
                            }
                            let _ = watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await;
                        });
                    }
                    Some(tls) => {
                        // The handshake runs in its own task, bounded like a header read.
                        let acceptor = tls.load_full();
                        tokio::spawn(async move {
                            let _permit = permit;
                            let Ok(Ok(tls_stream)) = tokio::time::timeout(first_bytes, acceptor.accept(stream)).await else { return };
                            let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            let builder = if h2 { builder.http2_only() } else { builder.http1_only() };
                            let _ = watcher.watch(builder.serve_connection(TokioIo::new(tls_stream), service).into_owned()).await;
                        });
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing the remaining connections");
    }
    Ok(())
}

/// The HTTP/2 connection preface: hyper tells HTTP/1 from HTTP/2 by reading it, without a timeout.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether, within `limit`, the client has sent enough for the protocol to be known: a byte that
/// departs from the HTTP/2 preface (HTTP/1, whose header timeout then applies), or the whole
/// preface (HTTP/2, kept alive by pings). Peeks only: hyper reads the bytes again.
async fn protocol_known(stream: &tokio::net::TcpStream, limit: Duration) -> bool {
    let wait = async {
        let mut seen = [0u8; 24];
        loop {
            let n = match stream.peek(&mut seen).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if n >= H2_PREFACE.len() || seen[..n] != H2_PREFACE[..n] {
                return true;
            }
            // A part of the preface: wait for the rest (peek returns what is there at once).
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(limit, wait).await.unwrap_or(false)
}
