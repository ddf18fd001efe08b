//! The durable store: redb, one writer thread, group commit.
//!
//! Every write goes through one thread that takes all the work queued while the previous commit
//! was being fsync'd and commits it as one transaction, so concurrent requests share an fsync.
//! A request's record, its body, its job-id claim, its file ids and its rendered flow files (the
//! outbox) are committed together: a 200 is only sent after that commit returns.
//!
//! Tables: `requests` (id → record), `bodies` (id → raw body), `jobs` (client + job id → id),
//! `outbox` (object name → file), `pending` (object names not yet delivered), `meta` (the file
//! id counter), `mpans` (MPAN + request id → SIP ID and date of action, to match incoming
//! flows), `incoming` (request id + file name → the matched incoming flow), `inbound_seen`
//! (file name + SHA-256 → what became of an inbound file, so a file is recorded once).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::finding::Finding;
use crate::flows::{Envelope, FlowBody};

const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");
const BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("bodies");
const JOBS: TableDefinition<&str, &str> = TableDefinition::new("jobs");
const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox");
const PENDING: TableDefinition<&str, u64> = TableDefinition::new("pending");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const MPANS: TableDefinition<&str, &[u8]> = TableDefinition::new("mpans");
const INCOMING: TableDefinition<&str, &[u8]> = TableDefinition::new("incoming");
const INBOUND_SEEN: TableDefinition<&str, &[u8]> = TableDefinition::new("inbound_seen");
const FILE_COUNTER: &str = "file_id_next";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(String),
    #[error("store: the writer has stopped")]
    Closed,
    #[error("store: {0}")]
    Corrupt(String),
}

trait Db<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T, E: std::fmt::Display> Db<T> for Result<T, E> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Db(e.to_string()))
    }
}

/// A flow file in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutboxFile {
    pub request_id: String,
    pub flow: String,
    pub to: String,
    pub file_id: String,
    pub object: String,
    pub content: String,
    pub state: DeliveryState,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub delivered_at: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Queued,
    Delivered,
    Failing,
    /// The store already held different bytes under this name: never overwritten; an alarm.
    Conflict,
}

/// An accepted request as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestRecord {
    pub request_id: String,
    pub client: String,
    pub key_id: String,
    pub job_id: String,
    pub body_hash: String,
    pub received_at: String,
    /// The 200 answer, given again on an idempotent replay.
    pub answer: Value,
    /// Object names of its flow files.
    pub objects: Vec<String>,
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
pub struct MpanEntry {
    pub request_id: String,
    pub sip_id: String,
    /// `YYYY-MM-DD`, or empty.
    pub date_of_action: String,
}

/// What to record for one inbound file, in one transaction.
#[derive(Debug, Clone)]
pub struct InboundRecord {
    /// `<file name>\u{1f}<sha256>`.
    pub seen_key: String,
    /// What became of the file (matched, unmatched, rejected), as shown to operators.
    pub outcome: Value,
    /// `(request id, file name, matched flow summary)`.
    pub incoming: Vec<(String, String, Value)>,
}

fn mpan_key(mpan: &str, request_id: &str) -> String {
    format!("{mpan}\u{1f}{request_id}")
}

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
    Delivered { at: String },
    Failed { error: String },
    Conflict { error: String },
}

enum Job {
    Accept(Box<NewRequest>, tokio::sync::oneshot::Sender<Result<AcceptOutcome, StoreError>>),
    Mark(Vec<(String, Delivery)>, tokio::sync::oneshot::Sender<Result<(), StoreError>>),
    /// An inbound file's outcome and matches; the reply says whether it was new.
    Inbound(Box<InboundRecord>, tokio::sync::oneshot::Sender<Result<bool, StoreError>>),
}

/// Counters of the group commit.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub commits: AtomicU64,
    pub accepts: AtomicU64,
    pub largest_batch: AtomicU64,
}

/// The store: a redb database and the writer thread in front of it.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    tx: mpsc::Sender<Job>,
    pub stats: Arc<CommitStats>,
    /// Woken after each commit that queued files, for the dispatcher.
    pub queued: Arc<tokio::sync::Notify>,
    prefix: String,
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

fn job_key(client: &str, job_id: &str) -> String {
    format!("{client}\u{1f}{job_id}")
}

impl Store {
    /// Opens (or creates) the store under `dir` and starts its writer thread.
    pub fn open(dir: &Path, instance_prefix: &str) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).db()?;
        let db = Arc::new(Database::create(dir.join("flowgate.redb")).db()?);
        {
            let w = db.begin_write().db()?;
            w.open_table(REQUESTS).db()?;
            w.open_table(BODIES).db()?;
            w.open_table(JOBS).db()?;
            w.open_table(OUTBOX).db()?;
            w.open_table(PENDING).db()?;
            w.open_table(META).db()?;
            w.open_table(MPANS).db()?;
            w.open_table(INCOMING).db()?;
            w.open_table(INBOUND_SEEN).db()?;
            w.commit().db()?;
        }
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(CommitStats::default());
        let queued = Arc::new(tokio::sync::Notify::new());
        let writer = Writer { db: db.clone(), stats: stats.clone(), queued: queued.clone(), prefix: instance_prefix.to_string() };
        std::thread::Builder::new().name("store-writer".into()).spawn(move || writer.run(rx)).db()?;
        Ok(Store { db, tx, stats, queued, prefix: instance_prefix.to_string() })
    }

    /// Stores an accepted request durably (or finds its first answer, or a conflict).
    pub async fn accept(&self, req: NewRequest) -> Result<AcceptOutcome, StoreError> {
        // Fast path for a replay: no write, no fsync.
        if let Some(first) = self.job(&req.client, &req.job_id)? {
            return Ok(if first.body_hash == req.body_hash { AcceptOutcome::Replayed(first) } else { AcceptOutcome::Conflict { request_id: first.request_id } });
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send(Job::Accept(Box::new(req), reply)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Records the results of delivery attempts durably.
    pub async fn mark(&self, results: Vec<(String, Delivery)>) -> Result<(), StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send(Job::Mark(results, reply)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Records an inbound file durably: its outcome and its matches, once per name and content.
    /// `false` if it was recorded before.
    pub async fn record_inbound(&self, record: InboundRecord) -> Result<bool, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send(Job::Inbound(Box::new(record), reply)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// What became of an inbound file seen before (by name and SHA-256).
    pub fn inbound_seen(&self, seen_key: &str) -> Result<Option<Value>, StoreError> {
        let r = self.db.begin_read().db()?;
        let t = r.open_table(INBOUND_SEEN).db()?;
        let Some(v) = t.get(seen_key).db()? else { return Ok(None) };
        serde_json::from_slice(v.value()).map(Some).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// The accepted requests for an MPAN core, oldest key first.
    pub fn requests_for_mpan(&self, mpan: &str) -> Result<Vec<MpanEntry>, StoreError> {
        let r = self.db.begin_read().db()?;
        let t = r.open_table(MPANS).db()?;
        let (from, to) = (format!("{mpan}\u{1f}"), format!("{mpan}\u{20}"));
        let mut out = Vec::new();
        for item in t.range(from.as_str()..to.as_str()).db()? {
            let (_, v) = item.db()?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    /// The incoming flows matched to a request, by file name.
    pub fn incoming(&self, request_id: &str) -> Result<Vec<Value>, StoreError> {
        let r = self.db.begin_read().db()?;
        let t = r.open_table(INCOMING).db()?;
        let (from, to) = (format!("{request_id}\u{1f}"), format!("{request_id}\u{20}"));
        let mut out = Vec::new();
        for item in t.range(from.as_str()..to.as_str()).db()? {
            let (_, v) = item.db()?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    /// The request first accepted for this client and job id.
    pub fn job(&self, client: &str, job_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let r = self.db.begin_read().db()?;
        let jobs = r.open_table(JOBS).db()?;
        let Some(id) = jobs.get(job_key(client, job_id).as_str()).db()? else { return Ok(None) };
        let id = id.value().to_string();
        self.request(&id)
    }

    pub fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let r = self.db.begin_read().db()?;
        let t = r.open_table(REQUESTS).db()?;
        let Some(v) = t.get(request_id).db()? else { return Ok(None) };
        serde_json::from_slice(v.value()).map(Some).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    pub fn body(&self, request_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.db.begin_read().db()?;
        let t = r.open_table(BODIES).db()?;
        Ok(t.get(request_id).db()?.map(|v| v.value().to_vec()))
    }

    pub fn outbox_file(&self, object: &str) -> Result<Option<OutboxFile>, StoreError> {
        let r = self.db.begin_read().db()?;
        let t = r.open_table(OUTBOX).db()?;
        let Some(v) = t.get(object).db()? else { return Ok(None) };
        serde_json::from_slice(v.value()).map(Some).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// Up to `limit` undelivered files, oldest first.
    pub fn pending(&self, limit: usize) -> Result<Vec<OutboxFile>, StoreError> {
        let r = self.db.begin_read().db()?;
        let pending = r.open_table(PENDING).db()?;
        let outbox = r.open_table(OUTBOX).db()?;
        let mut names: Vec<(u64, String)> = Vec::new();
        for item in pending.iter().db()? {
            let (k, v) = item.db()?;
            names.push((v.value(), k.value().to_string()));
        }
        names.sort();
        let mut out = Vec::new();
        for (_, name) in names.into_iter().take(limit) {
            if let Some(v) = outbox.get(name.as_str()).db()? {
                out.push(serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?);
            }
        }
        Ok(out)
    }

    /// How many files wait for delivery.
    pub fn pending_count(&self) -> Result<u64, StoreError> {
        let r = self.db.begin_read().db()?;
        r.open_table(PENDING).db()?.len().db()
    }

    /// Whether the store can take a write (for `/readyz`).
    pub fn writable(&self) -> bool {
        self.db.begin_write().map(|w| w.abort().is_ok()).unwrap_or(false)
    }

    pub fn instance_prefix(&self) -> &str {
        &self.prefix
    }
}

struct Writer {
    db: Arc<Database>,
    stats: Arc<CommitStats>,
    queued: Arc<tokio::sync::Notify>,
    prefix: String,
}

/// The reply a job waits for, filled once the batch's commit is known.
enum Pending {
    Accept(tokio::sync::oneshot::Sender<Result<AcceptOutcome, StoreError>>, Result<AcceptOutcome, StoreError>),
    Mark(tokio::sync::oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
    Inbound(tokio::sync::oneshot::Sender<Result<bool, StoreError>>, Result<bool, StoreError>),
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
    }

    fn commit_batch(&self, batch: Vec<Job>) {
        let mut replies = Vec::with_capacity(batch.len());
        let mut accepted = 0u64;
        let outcome = (|| -> Result<(), StoreError> {
            let w = self.db.begin_write().db()?;
            {
                let mut t = Tables {
                    requests: w.open_table(REQUESTS).db()?,
                    bodies: w.open_table(BODIES).db()?,
                    jobs: w.open_table(JOBS).db()?,
                    outbox: w.open_table(OUTBOX).db()?,
                    pending: w.open_table(PENDING).db()?,
                    meta: w.open_table(META).db()?,
                    mpans: w.open_table(MPANS).db()?,
                    incoming: w.open_table(INCOMING).db()?,
                    inbound_seen: w.open_table(INBOUND_SEEN).db()?,
                };
                for job in batch {
                    match job {
                        Job::Accept(req, reply) => {
                            let r = self.accept_one(&mut t, *req);
                            if matches!(r, Ok(AcceptOutcome::Accepted(_))) {
                                accepted += 1;
                            }
                            replies.push(Pending::Accept(reply, r));
                        }
                        Job::Mark(results, reply) => {
                            let r = mark(&mut t, results);
                            replies.push(Pending::Mark(reply, r));
                        }
                        Job::Inbound(record, reply) => {
                            let r = inbound(&mut t, *record);
                            replies.push(Pending::Inbound(reply, r));
                        }
                    }
                }
            }
            w.commit().db()
        })();
        if outcome.is_ok() {
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            self.stats.accepts.fetch_add(accepted, Ordering::Relaxed);
            self.stats.largest_batch.fetch_max(accepted, Ordering::Relaxed);
            if accepted > 0 {
                self.queued.notify_one();
            }
        }
        // Nothing is promised unless the commit (and its fsync) succeeded.
        for p in replies {
            match p {
                Pending::Accept(reply, r) => {
                    let _ = reply.send(match &outcome {
                        Ok(()) => r,
                        Err(e) => Err(StoreError::Db(e.to_string())),
                    });
                }
                Pending::Mark(reply, r) => {
                    let _ = reply.send(match &outcome {
                        Ok(()) => r,
                        Err(e) => Err(StoreError::Db(e.to_string())),
                    });
                }
                Pending::Inbound(reply, r) => {
                    let _ = reply.send(match &outcome {
                        Ok(()) => r,
                        Err(e) => Err(StoreError::Db(e.to_string())),
                    });
                }
            }
        }
    }

    fn accept_one(&self, t: &mut Tables<'_>, req: NewRequest) -> Result<AcceptOutcome, StoreError> {
        let key = job_key(&req.client, &req.job_id);
        let earlier = t.jobs.get(key.as_str()).db()?.map(|v| v.value().to_string());
        if let Some(id) = earlier {
            let record: RequestRecord = match t.requests.get(id.as_str()).db()? {
                Some(v) => serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                None => return Err(StoreError::Corrupt(format!("job {key:?} names a missing request"))),
            };
            return Ok(if record.body_hash == req.body_hash { AcceptOutcome::Replayed(record) } else { AcceptOutcome::Conflict { request_id: id } });
        }
        let mut next = t.meta.get(FILE_COUNTER).db()?.map(|v| v.value()).unwrap_or(1);
        let mut flows_json = Vec::new();
        let mut objects = Vec::new();
        let seq_base = next;
        for flow in &req.flows {
            let file_id = format!("{}{}", self.prefix, base36(next, 8));
            next += 1;
            let object = flow.object_name(&file_id, &req.envelope);
            let content = flow.finish(&file_id, req.now, &req.envelope);
            let file = OutboxFile {
                request_id: req.request_id.clone(),
                flow: flow.flow.clone(),
                to: flow.to_label(),
                file_id: file_id.clone(),
                object: object.clone(),
                content,
                state: DeliveryState::Queued,
                attempts: 0,
                last_error: None,
                delivered_at: None,
            };
            let bytes = serde_json::to_vec(&file).db()?;
            t.outbox.insert(object.as_str(), bytes.as_slice()).db()?;
            t.pending.insert(object.as_str(), seq_base).db()?;
            flows_json.push(json!({ "flow": flow.flow, "to": flow.to_label(), "file_id": file_id, "object": object }));
            objects.push(object);
        }
        t.meta.insert(FILE_COUNTER, next).db()?;
        let n = req.flows.len();
        let message = format!(
            "Accepted: scenario {}, {} industry flow{} queued",
            req.scenario,
            n,
            if n == 1 { "" } else { "s" }
        );
        let answer = json!({
            "status": "accepted",
            "message": message,
            "request_id": req.request_id,
            "scenario": req.scenario,
            "scenario_name": req.scenario_name,
            "flows": flows_json,
            "warnings": req.warnings,
            "ruleset": req.ruleset,
        });
        let received_at = req.now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let record = RequestRecord {
            request_id: req.request_id.clone(),
            client: req.client.clone(),
            key_id: req.key_id,
            job_id: req.job_id,
            body_hash: req.body_hash,
            received_at,
            answer,
            objects,
        };
        t.requests.insert(req.request_id.as_str(), serde_json::to_vec(&record).db()?.as_slice()).db()?;
        t.bodies.insert(req.request_id.as_str(), req.body.as_ref()).db()?;
        t.jobs.insert(key.as_str(), req.request_id.as_str()).db()?;
        if !req.mpan.is_empty() {
            let entry = MpanEntry { request_id: req.request_id.clone(), sip_id: req.sip_id, date_of_action: req.date_of_action };
            t.mpans.insert(mpan_key(&req.mpan, &req.request_id).as_str(), serde_json::to_vec(&entry).db()?.as_slice()).db()?;
        }
        Ok(AcceptOutcome::Accepted(record))
    }
}

struct Tables<'t> {
    requests: redb::Table<'t, &'static str, &'static [u8]>,
    bodies: redb::Table<'t, &'static str, &'static [u8]>,
    jobs: redb::Table<'t, &'static str, &'static str>,
    outbox: redb::Table<'t, &'static str, &'static [u8]>,
    pending: redb::Table<'t, &'static str, u64>,
    meta: redb::Table<'t, &'static str, u64>,
    mpans: redb::Table<'t, &'static str, &'static [u8]>,
    incoming: redb::Table<'t, &'static str, &'static [u8]>,
    inbound_seen: redb::Table<'t, &'static str, &'static [u8]>,
}

/// Records an inbound file unless the same name and content was recorded before.
fn inbound(t: &mut Tables<'_>, record: InboundRecord) -> Result<bool, StoreError> {
    if t.inbound_seen.get(record.seen_key.as_str()).db()?.is_some() {
        return Ok(false);
    }
    for (request_id, file, summary) in &record.incoming {
        let key = format!("{request_id}\u{1f}{file}");
        t.incoming.insert(key.as_str(), serde_json::to_vec(summary).db()?.as_slice()).db()?;
    }
    t.inbound_seen.insert(record.seen_key.as_str(), serde_json::to_vec(&record.outcome).db()?.as_slice()).db()?;
    Ok(true)
}

fn mark(t: &mut Tables<'_>, results: Vec<(String, Delivery)>) -> Result<(), StoreError> {
    for (name, result) in results {
        let mut file: OutboxFile = match t.outbox.get(name.as_str()).db()? {
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            None => continue,
        };
        file.attempts += 1;
        match result {
            Delivery::Delivered { at } => {
                file.state = DeliveryState::Delivered;
                file.delivered_at = Some(at);
                file.last_error = None;
                t.pending.remove(name.as_str()).db()?;
            }
            Delivery::Failed { error } => {
                file.state = DeliveryState::Failing;
                file.last_error = Some(error);
            }
            Delivery::Conflict { error } => {
                file.state = DeliveryState::Conflict;
                file.last_error = Some(error);
                t.pending.remove(name.as_str()).db()?;
            }
        }
        t.outbox.insert(name.as_str(), serde_json::to_vec(&file).db()?.as_slice()).db()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ids_are_ten_characters() {
        assert_eq!(format!("FG{}", base36(1, 8)), "FG00000001");
        assert_eq!(format!("FG{}", base36(36 * 36 + 35, 8)), "FG0000010Z");
    }
}
