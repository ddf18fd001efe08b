//! The durable store: what an accepted request leaves behind, kept so that a 200 is a promise.
//!
//! A request's record, its body, its job-id claim, its file ids and its rendered flow files (the
//! outbox) are committed together: a 200 is only sent after that commit returns.
//!
//! Each accepted request also puts its job archive in the outbox, in the same commit: one
//! create-only object `jobs/<client>/<job id>.json` holding a JSON envelope (request id, instance
//! prefix, client, job id, time received, the body), assembled from the stored body when it is
//! delivered. Its name is the same on every instance, so the store it is delivered to decides which
//! request owns a job (see [`crate::exchange::deliver`]), and it fits every sink's limits whatever
//! the client and job id ([`crate::domain::names`]).
//!
//! Two backends behind one [`Store`]: [`embedded`] (redb in the data folder: one instance, the
//! default) and [`shared`] (PostgreSQL: several instances, one gateway — global idempotency, one
//! file-id sequence, a shared outbox delivered by any live instance, one rate limit per key).

mod embedded;
mod shared;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::domain::finding::Finding;
use crate::dtc::write::{Envelope, FlowBody};

pub use shared::{migrate, pool, MigrateError, SCHEMA_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(String),
    #[error("store: the writer has stopped")]
    Closed,
    /// The shared database cannot be reached (or dropped the connection): nothing was written.
    #[error("store: the database is unavailable: {0}")]
    Unavailable(String),
    #[error("store: {0}")]
    Corrupt(String),
    /// A client name the store knows under another SIP ID.
    #[error("client {name:?} has SIP ID {stored} in the store, not {presented}: a client's name and SIP ID never change")]
    Identity { name: String, stored: String, presented: String },
}

trait Db<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T, E: std::fmt::Display> Db<T> for Result<T, E> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Db(e.to_string()))
    }
}

/// What an outbox file is.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A request's job archive: goes first; its flows wait until it is delivered.
    Archive,
    /// A DTC flow file.
    #[default]
    Flow,
}

/// A file in the outbox: a flow file or a job archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutboxFile {
    pub request_id: String,
    /// `flow` (the default, so stores written before archives existed still read) or `archive`.
    #[serde(default)]
    pub kind: FileKind,
    /// The flow id (D0139...); `archive` for a job archive.
    pub flow: String,
    pub to: String,
    pub file_id: String,
    pub object: String,
    /// The bytes to deliver. A job archive's are dropped once it is settled (the body stays in
    /// `bodies`), so the outbox keeps no second copy of photos.
    pub content: String,
    pub state: DeliveryState,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub delivered_at: Option<String>,
}

impl OutboxFile {
    /// A file waiting for its first delivery attempt.
    fn queued(request_id: &str, kind: FileKind, flow: &str, to: &str, file_id: String, object: &str, content: String) -> OutboxFile {
        OutboxFile {
            request_id: request_id.to_string(),
            kind,
            flow: flow.to_string(),
            to: to.to_string(),
            file_id,
            object: object.to_string(),
            content,
            state: DeliveryState::Queued,
            attempts: 0,
            last_error: None,
            delivered_at: None,
        }
    }
}

impl OutboxFile {
    /// Records one delivery attempt's result on the file; whether it is settled now (no longer
    /// waiting for delivery).
    pub(crate) fn record(&mut self, result: &Delivery) -> bool {
        self.attempts += 1;
        match result {
            Delivery::Delivered { at } => {
                self.state = DeliveryState::Delivered;
                self.delivered_at = Some(at.clone());
                self.last_error = None;
                if self.kind == FileKind::Archive {
                    self.content = String::new();
                }
                true
            }
            Delivery::Duplicate { winner } => {
                self.state = DeliveryState::Duplicate;
                self.last_error = Some(format!("the job was accepted first by request {winner}"));
                if self.kind == FileKind::Archive {
                    self.content = String::new();
                }
                true
            }
            Delivery::Failed { error } => {
                self.state = DeliveryState::Failing;
                self.last_error = Some(error.clone());
                false
            }
            Delivery::Conflict { error } => {
                self.state = DeliveryState::Conflict;
                self.last_error = Some(error.clone());
                true
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Queued,
    Delivered,
    Failing,
    /// The store already held different bytes under this name: never overwritten; an alarm.
    Conflict,
    /// Another instance had accepted the same job first (its job archive was there with other
    /// bytes): never sent.
    Duplicate,
}

/// An accepted request as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestRecord {
    pub request_id: String,
    /// The client: its name, with one SIP ID for good (the `clients` table).
    pub client: String,
    /// The client's SIP ID (empty in records written before it was kept).
    #[serde(default)]
    pub sip_id: String,
    pub key_id: String,
    pub job_id: String,
    pub body_hash: String,
    pub received_at: String,
    /// The prefix of the instance that accepted it (named in its job archive).
    #[serde(default)]
    pub instance: String,
    /// The 200 answer, given again on an idempotent replay.
    pub answer: Value,
    /// Object names of its flow files.
    pub objects: Vec<String>,
    /// Object name of its job archive (absent in stores written before archives existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// The request (of another instance) that owns this job: set when this request's archive
    /// found that one's; its flows are then never sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
}

/// What to store for an accepted request.
pub struct NewRequest {
    pub request_id: String,
    pub client: String,
    pub key_id: String,
    pub job_id: String,
    pub body_hash: String,
    pub body: bytes::Bytes,
    pub scenario: String,
    pub scenario_name: String,
    pub warnings: Vec<Finding>,
    pub flows: Vec<FlowBody>,
    pub ruleset: String,
    pub envelope: Envelope,
    pub now: OffsetDateTime,
    /// The client's SIP ID, the MPAN core and the date of action (`YYYY-MM-DD`, empty if the
    /// body has none): what incoming flows are matched on.
    pub sip_id: String,
    pub mpan: String,
    pub date_of_action: String,
}

/// An accepted request an MPAN points at (the `mpans` table).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct MpanEntry {
    pub request_id: String,
    pub sip_id: String,
    /// `YYYY-MM-DD`, or empty.
    pub date_of_action: String,
}

/// What to record for one inbound file, in one transaction.
#[derive(Debug, Clone)]
pub(crate) struct InboundRecord {
    /// `<file name>\u{1f}<sha256>`.
    pub seen_key: String,
    /// What became of the file (matched, unmatched, rejected), as shown to operators.
    pub outcome: Value,
    /// `(request id, file name and content hash, matched flow summary)`.
    pub incoming: Vec<(String, String, Value)>,
    /// A position in the bucket's inbound ledger to remember (kept as the larger of this and
    /// the one stored), whether or not the file was seen before.
    pub ledger_ms: Option<u64>,
}

/// The `meta` key of the inbound ledger position (milliseconds since the epoch).
pub const LEDGER_POSITION: &str = "inbound_ledger_ms";

#[derive(Debug)]
pub enum AcceptOutcome {
    /// Stored now; the answer to send.
    Accepted(RequestRecord),
    /// The same body was accepted before under this job id: its first answer.
    Replayed(RequestRecord),
    /// A different body was accepted before under this job id.
    Conflict { request_id: String },
}

/// The result of one delivery attempt, to be recorded.
#[derive(Debug, Clone)]
pub enum Delivery {
    Delivered {
        at: String,
    },
    Failed {
        error: String,
    },
    Conflict {
        error: String,
    },
    /// A job archive found another request's archive: `winner` is that request's id.
    Duplicate {
        winner: String,
    },
}

/// Counters of the group commit.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub commits: AtomicU64,
    pub accepts: AtomicU64,
    pub largest_batch: AtomicU64,
    /// Whether the last commit failed (what `/readyz` reports, without touching the database).
    pub last_failed: std::sync::atomic::AtomicBool,
}

fn base36(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// A client name as one object-key segment: lower-case `[a-z0-9-]`. A name that is not already
/// in that form gets a short hash of the exact name, so two different names never share a key.
/// One longer than a segment may be is cut and ends in the exact name's full hash ([`crate::domain::names::fit`]).
pub(crate) fn safe_client(name: &str) -> String {
    crate::domain::names::fit(&client_slug(name), name, crate::domain::names::SEGMENT_MAX)
}

fn client_slug(name: &str) -> String {
    use sha2::Digest;
    let mut slug = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-').to_string();
    if slug == name {
        return slug;
    }
    let hash = sha2::Sha256::digest(name.as_bytes());
    let short: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
    if slug.is_empty() {
        short
    } else {
        format!("{slug}-{short}")
    }
}

/// A job id as the archive's file name (without `.json`): `[A-Za-z0-9._-]` kept, every other
/// byte `%XX`. An encoding too long for a file name (past 250 bytes: 42 two-byte or 21 four-byte
/// characters; no ASCII id of up to 64 characters comes near) is cut and ends in the exact id's hash: every name that could
/// ever be written to a folder stays as it was, and the rule needs nothing but the id, so every
/// instance still names the same job alike.
fn safe_job_id(job_id: &str) -> String {
    crate::domain::names::fit(&percent_job_id(job_id), job_id, crate::domain::names::SEGMENT_MAX - ".json".len())
}

fn percent_job_id(job_id: &str) -> String {
    let mut out = String::new();
    for b in job_id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_') || (b == b'.' && !out.is_empty()) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The object name of a job's archive: the same for the same client and job id on every instance.
pub fn archive_name(client: &str, job_id: &str) -> String {
    format!("jobs/{}/{}.json", safe_client(client), safe_job_id(job_id))
}

/// The bytes of a job archive: `{request_id, instance, client, job_id, received_at, body}`, the
/// body embedded as it was accepted (JSON the pipeline has parsed). A retry by the same instance
/// writes the same bytes; another instance's request differs at least in its request id.
pub fn archive_envelope(request_id: &str, instance: &str, client: &str, job_id: &str, received_at: &str, body: &[u8]) -> String {
    let text = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into());
    let body = String::from_utf8_lossy(body);
    let body = body.trim();
    let body = if body.is_empty() { "null" } else { body };
    format!(
        "{{\"request_id\":{},\"instance\":{},\"client\":{},\"job_id\":{},\"received_at\":{},\"body\":{}}}\n",
        text(request_id),
        text(instance),
        text(client),
        text(job_id),
        text(received_at),
        body
    )
}

/// The request id in a job archive's bytes, if they are one.
pub fn archive_request_id(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        request_id: String,
    }
    serde_json::from_slice::<Head>(bytes).ok().map(|h| h.request_id)
}

/// Bodies dropped by one sweep at most: bounds one write transaction.
pub(crate) const SWEEP_BATCH: usize = 10_000;

/// What an accepted request stores: its record, its job archive and its flow files.
pub(crate) struct Assembled {
    pub record: RequestRecord,
    pub archive: OutboxFile,
    pub flows: Vec<OutboxFile>,
}

/// Builds an accepted request's record and outbox files: the job archive first (its content is
/// assembled from the one stored copy of the body when it is delivered), then one file per flow,
/// each with the next id `file_id` gives.
pub(crate) fn assemble(req: &NewRequest, instance: &str, mut file_id: impl FnMut() -> String) -> Assembled {
    let archive_object = archive_name(&req.client, &req.job_id);
    let archive = OutboxFile::queued(&req.request_id, FileKind::Archive, "archive", "archive", String::new(), &archive_object, String::new());
    let mut flows = Vec::with_capacity(req.flows.len());
    let mut shown = Vec::with_capacity(req.flows.len());
    for flow in &req.flows {
        let id = file_id();
        let object = flow.object_name(&id, &req.envelope);
        let content = flow.finish(&id, req.now, &req.envelope);
        shown.push(json!({ "flow": flow.flow, "to": flow.to_label(), "file_id": id, "object": object }));
        flows.push(OutboxFile::queued(&req.request_id, FileKind::Flow, &flow.flow, &flow.to_label(), id, &object, content));
    }
    let answer = crate::domain::answer::accepted(Some(&req.request_id), &req.scenario, &req.scenario_name, shown, &req.warnings, &req.ruleset);
    let record = RequestRecord {
        request_id: req.request_id.clone(),
        client: req.client.clone(),
        sip_id: req.sip_id.clone(),
        key_id: req.key_id.clone(),
        job_id: req.job_id.clone(),
        body_hash: req.body_hash.clone(),
        received_at: req.now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        instance: instance.to_string(),
        answer,
        objects: flows.iter().map(|f| f.object.clone()).collect(),
        archive: Some(archive_object),
        duplicate_of: None,
    };
    Assembled { record, archive, flows }
}

/// A file id: the instance prefix and a number in eight base-36 digits.
pub(crate) fn file_id(prefix: &str, n: u64) -> String {
    format!("{prefix}{}", base36(n, 8))
}

/// The durable store, embedded (redb) or shared (PostgreSQL).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    pub stats: Arc<CommitStats>,
    /// Woken after each commit that queued files, for the dispatcher.
    pub queued: Arc<tokio::sync::Notify>,
}

#[derive(Clone)]
enum Backend {
    Embedded(embedded::Embedded),
    Shared(shared::Shared),
}

impl Store {
    /// Opens (or creates) an embedded store under `dir`.
    pub fn open(dir: &std::path::Path, instance_prefix: &str) -> Result<Store, StoreError> {
        Store::open_with_cache(dir, instance_prefix, crate::config::StoreSettings::default().cache_mb)
    }

    /// [`Store::open`] with a page cache of `cache_mb` MiB.
    pub(crate) fn open_with_cache(dir: &std::path::Path, instance_prefix: &str, cache_mb: u64) -> Result<Store, StoreError> {
        let e = embedded::Embedded::open_with_cache(dir, instance_prefix, cache_mb)?;
        Ok(Store { stats: e.stats.clone(), queued: e.queued.clone(), backend: Backend::Embedded(e) })
    }

    /// The store a configuration names: PostgreSQL when it has a database URL (its schema
    /// brought up to date first), else the embedded store in the data folder.
    pub async fn from_config(config: &crate::config::Config) -> Result<Store, StoreError> {
        match &config.store.database_url {
            Some(url) => {
                let s = shared::Shared::connect(url, config).await?;
                Ok(Store { stats: s.stats.clone(), queued: s.queued.clone(), backend: Backend::Shared(s) })
            }
            None => Store::open_with_cache(&config.data_dir.join("store"), &config.flows.instance_prefix, config.store.cache_mb),
        }
    }

    /// Closes the store once nothing else will use it: the embedded store commits what is queued
    /// and closes its database cleanly (a store left open is repaired at the next start, which
    /// takes tens of seconds for a million requests); the shared store closes its connections.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Embedded(e) => e.close().await,
            Backend::Shared(s) => s.close(),
        }
    }

    /// Whether the store is shared by several instances (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Shared(_))
    }

    /// Stores an accepted request durably (or finds its first answer, or a conflict).
    pub async fn accept(&self, req: NewRequest) -> Result<AcceptOutcome, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.accept(req).await,
            Backend::Shared(s) => s.accept(req).await,
        }
    }

    /// Retention: drops the stored bodies of requests received before `cutoff` whose job archive
    /// and flow files are all settled; at most [`SWEEP_BATCH`] per call; how many were dropped.
    pub(crate) async fn sweep(&self, cutoff: OffsetDateTime) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.sweep(cutoff).await,
            Backend::Shared(s) => s.sweep(cutoff).await,
        }
    }

    /// Records the results of delivery attempts durably.
    pub(crate) async fn mark(&self, results: Vec<(String, Delivery)>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.mark(results).await,
            Backend::Shared(s) => s.mark(results).await,
        }
    }

    /// Records an inbound file durably: its outcome and its matches, once per name and content.
    /// `false` if it was recorded before.
    pub(crate) async fn record_inbound(&self, record: InboundRecord) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.record_inbound(record).await,
            Backend::Shared(s) => s.record_inbound(record).await,
        }
    }

    /// What became of an inbound file seen before (by name and SHA-256).
    pub(crate) async fn inbound_seen(&self, seen_key: &str) -> Result<Option<Value>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.inbound_seen(seen_key),
            Backend::Shared(s) => s.inbound_seen(seen_key).await,
        }
    }

    /// A value of the `meta` table (counters and positions).
    pub async fn meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.meta(key),
            Backend::Shared(s) => s.meta(key).await,
        }
    }

    /// The accepted requests for an MPAN core.
    pub(crate) async fn requests_for_mpan(&self, mpan: &str) -> Result<Vec<MpanEntry>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.requests_for_mpan(mpan),
            Backend::Shared(s) => s.requests_for_mpan(mpan).await,
        }
    }

    /// The incoming flows matched to a request, by file name.
    pub async fn incoming(&self, request_id: &str) -> Result<Vec<Value>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.incoming(request_id),
            Backend::Shared(s) => s.incoming(request_id).await,
        }
    }

    /// Client names and SIP IDs the store has requests of.
    pub(crate) async fn identities(&self) -> Result<BTreeMap<String, String>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.identities(),
            Backend::Shared(s) => s.identities().await,
        }
    }

    /// A keys file fits the store when none of its clients has a name the store knows under
    /// another SIP ID (that key would read and replay the other client's requests).
    pub(crate) async fn check_identities(&self, keys: &crate::domain::auth::KeysFile) -> Result<(), StoreError> {
        let known = self.identities().await?;
        for c in &keys.clients {
            if let Some(stored) = known.get(&c.name).filter(|s| **s != c.sip_id) {
                return Err(StoreError::Identity { name: c.name.clone(), stored: stored.clone(), presented: c.sip_id.clone() });
            }
        }
        Ok(())
    }

    /// The request first accepted for this client and job id; an error if the client's name is
    /// the store's under another SIP ID.
    pub async fn job(&self, client: &str, sip_id: &str, job_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let record = match &self.backend {
            Backend::Embedded(e) => e.job(client, job_id)?,
            Backend::Shared(s) => s.job(client, job_id).await?,
        };
        if let Some(first) = record.as_ref().filter(|f| !f.sip_id.is_empty() && f.sip_id != sip_id) {
            return Err(StoreError::Identity { name: client.to_string(), stored: first.sip_id.clone(), presented: sip_id.to_string() });
        }
        Ok(record)
    }

    /// The bytes of a request's job archive, assembled from the one stored copy of its body
    /// (`None` if the request or its body is not here). Always the same bytes for a request, so a
    /// retried delivery finds its own archive as "already there".
    pub(crate) async fn archive_bytes(&self, request_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => {
                let (e, id) = (e.clone(), request_id.to_string());
                tokio::task::spawn_blocking(move || e.archive_bytes(&id)).await.map_err(|e| StoreError::Db(e.to_string()))?
            }
            Backend::Shared(s) => s.archive_bytes(request_id).await,
        }
    }

    pub async fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.request(request_id),
            Backend::Shared(s) => s.request(request_id).await,
        }
    }

    pub async fn body(&self, request_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.body(request_id),
            Backend::Shared(s) => s.body(request_id).await,
        }
    }

    /// The state of a request's job archive; `None` if the request has none (or is unknown).
    pub(crate) async fn archive_state(&self, request_id: &str) -> Result<Option<DeliveryState>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.archive_state(request_id),
            Backend::Shared(s) => s.archive_state(request_id).await,
        }
    }

    pub async fn outbox_file(&self, object: &str) -> Result<Option<OutboxFile>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.outbox_file(object),
            Backend::Shared(s) => s.outbox_file(object).await,
        }
    }

    /// Up to `limit` undelivered files, oldest first. A shared store hands each file to one
    /// instance at a time (a lease): the files of an instance that stopped go to the others
    /// once their lease ends; a file whose flows wait for their job archive is not handed out.
    pub(crate) async fn pending(&self, limit: usize) -> Result<Vec<OutboxFile>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.pending(limit),
            Backend::Shared(s) => s.claim(limit).await,
        }
    }

    /// The request of the oldest file waiting for delivery (nothing is leased by asking).
    pub(crate) async fn oldest_pending(&self) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => Ok(e.pending(1)?.into_iter().next().map(|f| f.request_id)),
            Backend::Shared(s) => s.oldest_pending().await,
        }
    }

    /// How many files wait for delivery.
    pub async fn pending_count(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.pending_count(),
            Backend::Shared(s) => s.pending_count().await,
        }
    }

    /// One request of a key against its rate across every instance (a shared store): what is
    /// left, or how long to wait; `None` when the store is embedded (each instance limits alone)
    /// or cannot answer now.
    pub(crate) async fn rate(&self, key_id: &str, rate: crate::domain::auth::Rate) -> Option<Result<u32, std::time::Duration>> {
        match &self.backend {
            Backend::Embedded(_) => None,
            Backend::Shared(s) => s.rate(key_id, rate).await,
        }
    }

    /// Whether the store takes writes (for `/readyz`): its last commit succeeded. It never
    /// waits on the database, so readiness probes cannot hold up the writer or the workers.
    pub(crate) fn writable(&self) -> bool {
        !self.stats.last_failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn instance_prefix(&self) -> &str {
        match &self.backend {
            Backend::Embedded(e) => e.instance_prefix(),
            Backend::Shared(s) => s.instance_prefix(),
        }
    }
}
