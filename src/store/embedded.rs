//! The embedded store (one instance): redb, one writer thread, group commit.
//!
//! Every write goes through one thread that takes all the work queued while the previous commit
//! was being fsync'd and commits it as one transaction, so concurrent requests share an fsync.
//! A request's record, its body, its job-id claim, its file ids and its rendered flow files (the
//! outbox) are committed together: a 200 is only sent after that commit returns.
//!
//! Each accepted request also puts its job archive in the outbox, in the same commit: one
//! create-only object `jobs/<client>/<job id>.json` holding a JSON envelope (request id, instance
//! prefix, client, job id, time received, the body). Its name is the same on every instance, so
//! the store it is delivered to decides which instance's request owns a job (see [`crate::exchange::deliver`]),
//! and it fits every sink's limits whatever the client and job id ([`crate::domain::names`]).
//!
//! Bodies: one file each under `bodies/` from 64 KiB up (photos), written and fsync'd before the
//! commit that records them; smaller ones in the `body_parts` table (older stores: `bodies`).
//!
//! Tables: `requests` (id → record), `body_parts` (id + part → bytes), `jobs` (client + job id → id),
//! `outbox` (object name → file: flows and job archives), `pending` (object names not yet
//! delivered), `meta` (the file id counter), `mpans` (MPAN + request id → SIP ID and date of
//! action, to match incoming flows), `incoming` (request id + file name → the matched incoming
//! flow), `inbound_seen` (file name + SHA-256 → what became of an inbound file, so a file is
//! recorded once).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde_json::Value;
use time::OffsetDateTime;

use super::*;

const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");
/// Bodies written before they were stored in parts: read, and dropped by retention, still.
const BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("bodies");
/// Request bodies in parts: (request id, part number) → bytes. redb gives a value a run of pages
/// rounded up to a power of two, so an 8.4 MB body stored whole takes 16 MiB; parts sized to just
/// under a power of two pages take about their own size.
const BODY_PARTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("body_parts");
const JOBS: TableDefinition<&str, &str> = TableDefinition::new("jobs");
/// Client name → SIP ID, from its first accepted request: a client's identity never changes.
const CLIENTS: TableDefinition<&str, &str> = TableDefinition::new("clients");
const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox");
const PENDING: TableDefinition<&str, u64> = TableDefinition::new("pending");
/// Bodies by age: `<received, ms since 1970, 20 digits>\u{1f}<request id>` → request id. The
/// retention sweep reads it from the oldest and stops at its cutoff.
const RETAIN: TableDefinition<&str, &str> = TableDefinition::new("retain");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const MPANS: TableDefinition<&str, &[u8]> = TableDefinition::new("mpans");
const INCOMING: TableDefinition<&str, &[u8]> = TableDefinition::new("incoming");
const INBOUND_SEEN: TableDefinition<&str, &[u8]> = TableDefinition::new("inbound_seen");
const FILE_COUNTER: &str = "file_id_next";

fn mpan_key(mpan: &str, request_id: &str) -> String {
    format!("{mpan}\u{1f}{request_id}")
}

enum Job {
    /// A request (its job archive is assembled from its body when it is delivered).
    /// With whether its body is already in its own file (`bodies/<request id>`).
    Accept(Box<NewRequest>, bool, tokio::sync::oneshot::Sender<Result<AcceptOutcome, StoreError>>),
    Mark(Vec<(String, Delivery)>, tokio::sync::oneshot::Sender<Result<(), StoreError>>),
    /// An inbound file's outcome and matches; the reply says whether it was new.
    Inbound(Box<InboundRecord>, tokio::sync::oneshot::Sender<Result<bool, StoreError>>),
    /// Drops the bodies of settled requests received before the cutoff (ms since 1970).
    Sweep(i64, tokio::sync::oneshot::Sender<Result<usize, StoreError>>),
    /// Commits what came before, then stops the writer and closes the database.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// The embedded store: a redb database and the writer thread in front of it.
#[derive(Clone)]
pub(crate) struct Embedded {
    /// The writer thread holds the database; reads borrow it for a moment. When the writer
    /// stops ([`Embedded::close`]) the database closes cleanly, and the next open needs no repair.
    db: std::sync::Weak<Database>,
    tx: mpsc::Sender<Job>,
    pub stats: Arc<CommitStats>,
    /// Woken after each commit that queued files, for the dispatcher.
    pub queued: Arc<tokio::sync::Notify>,
    prefix: String,
    /// Bodies of at least [`BODY_FILE_MIN`] bytes, one file each (`<request id>`).
    bodies_dir: std::path::PathBuf,
}

fn job_key(client: &str, job_id: &str) -> String {
    format!("{client}\u{1f}{job_id}")
}

impl Embedded {
    /// Opens (or creates) the store under `dir`, with a page cache of `cache_mb` MiB, and starts
    /// its writer thread.
    pub(crate) fn open_with_cache(dir: &Path, instance_prefix: &str, cache_mb: u64) -> Result<Embedded, StoreError> {
        std::fs::create_dir_all(dir).db()?;
        let cache = usize::try_from(cache_mb.max(1).saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
        let db = Arc::new(Database::builder().set_cache_size(cache).create(dir.join("flowgate.redb")).db()?);
        {
            let w = db.begin_write().db()?;
            w.open_table(REQUESTS).db()?;
            w.open_table(BODIES).db()?;
            w.open_table(BODY_PARTS).db()?;
            w.open_table(JOBS).db()?;
            w.open_table(CLIENTS).db()?;
            w.open_table(OUTBOX).db()?;
            w.open_table(PENDING).db()?;
            w.open_table(RETAIN).db()?;
            w.open_table(META).db()?;
            w.open_table(MPANS).db()?;
            w.open_table(INCOMING).db()?;
            w.open_table(INBOUND_SEEN).db()?;
            w.commit().db()?;
        }
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(CommitStats::default());
        let queued = Arc::new(tokio::sync::Notify::new());
        let bodies_dir = dir.join("bodies");
        std::fs::create_dir_all(&bodies_dir).db()?;
        clear_orphan_bodies(&db, &bodies_dir)?;
        let writer =
            Writer { db: db.clone(), stats: stats.clone(), queued: queued.clone(), prefix: instance_prefix.to_string(), bodies_dir: bodies_dir.clone() };
        std::thread::Builder::new().name("store-writer".into()).spawn(move || writer.run(rx)).db()?;
        Ok(Embedded { db: Arc::downgrade(&db), tx, stats, queued, prefix: instance_prefix.to_string(), bodies_dir })
    }

    /// A read transaction, while the store is open.
    fn read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.db.upgrade().ok_or(StoreError::Closed)?.begin_read().db()
    }

    /// Commits what is queued, stops the writer and closes the database (so the next start
    /// opens it without a repair). Calls after it get [`StoreError::Closed`].
    pub(crate) async fn close(&self) {
        let (reply, done) = tokio::sync::oneshot::channel();
        if self.tx.send(Job::Close(reply)).is_ok() {
            let _ = done.await;
        }
    }

    /// Stores an accepted request durably (or finds its first answer, or a conflict).
    pub async fn accept(&self, req: NewRequest) -> Result<AcceptOutcome, StoreError> {
        // Fast path for a replay: no write, no fsync.
        if let Some(first) = self.job(&req.client, &req.job_id)? {
            if !first.sip_id.is_empty() && first.sip_id != req.sip_id {
                return Err(StoreError::Identity { name: req.client, stored: first.sip_id, presented: req.sip_id });
            }
            return Ok(if first.body_hash == req.body_hash {
                AcceptOutcome::Replayed(first)
            } else {
                AcceptOutcome::Conflict { request_id: first.request_id }
            });
        }
        // A large body goes to its own file, durably, before the commit that records it: the
        // store takes about its size (redb rounds a value up to a power-of-two run of pages and
        // keeps its file at its high-water mark), and retention gives the space back.
        let mut req = req;
        let in_file = req.body.len() >= BODY_FILE_MIN;
        let file = self.bodies_dir.join(&req.request_id);
        if in_file {
            let (dir, id, body) = (self.bodies_dir.clone(), req.request_id.clone(), std::mem::take(&mut req.body));
            tokio::task::spawn_blocking(move || write_body_file(&dir, &id, &body)).await.map_err(|e| StoreError::Db(e.to_string()))??;
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sent = self.tx.send(Job::Accept(Box::new(req), in_file, reply)).map_err(|_| StoreError::Closed);
        let outcome = match sent {
            Ok(()) => answer.await.map_err(|_| StoreError::Closed).and_then(|r| r),
            Err(e) => Err(e),
        };
        if in_file && !matches!(outcome, Ok(AcceptOutcome::Accepted(_))) {
            // A replay, a conflict or a failed commit: no record names this file.
            let _ = std::fs::remove_file(&file);
        }
        outcome
    }

    /// Retention: drops the stored bodies of requests received before `cutoff` whose job archive
    /// and flow files are all settled (delivered, or never to be sent); the bucket's job archive
    /// is then the copy. At most [`SWEEP_BATCH`] per call; returns how many were dropped.
    pub(crate) async fn sweep(&self, cutoff: OffsetDateTime) -> Result<usize, StoreError> {
        let cutoff_ms = i64::try_from(cutoff.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send(Job::Sweep(cutoff_ms, reply)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Records the results of delivery attempts durably.
    pub(crate) async fn mark(&self, results: Vec<(String, Delivery)>) -> Result<(), StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send(Job::Mark(results, reply)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Records an inbound file durably: its outcome and its matches, once per name and content.
    /// `false` if it was recorded before.
    pub(crate) async fn record_inbound(&self, record: InboundRecord) -> Result<bool, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send(Job::Inbound(Box::new(record), reply)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// What became of an inbound file seen before (by name and SHA-256).
    pub(crate) fn inbound_seen(&self, seen_key: &str) -> Result<Option<Value>, StoreError> {
        let r = self.read()?;
        let t = r.open_table(INBOUND_SEEN).db()?;
        let Some(v) = t.get(seen_key).db()? else { return Ok(None) };
        serde_json::from_slice(v.value()).map(Some).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// A value of the `meta` table (counters and positions).
    pub fn meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let r = self.read()?;
        let t = r.open_table(META).db()?;
        Ok(t.get(key).db()?.map(|v| v.value()))
    }

    /// The accepted requests for an MPAN core, oldest key first.
    pub(crate) fn requests_for_mpan(&self, mpan: &str) -> Result<Vec<MpanEntry>, StoreError> {
        let r = self.read()?;
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
        let r = self.read()?;
        let t = r.open_table(INCOMING).db()?;
        let (from, to) = (format!("{request_id}\u{1f}"), format!("{request_id}\u{20}"));
        let mut out = Vec::new();
        for item in t.range(from.as_str()..to.as_str()).db()? {
            let (_, v) = item.db()?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    /// Client names and SIP IDs the store has requests of.
    pub(crate) fn identities(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let r = self.read()?;
        let t = r.open_table(CLIENTS).db()?;
        let mut out = BTreeMap::new();
        for row in t.iter().db()? {
            let (k, v) = row.db()?;
            out.insert(k.value().to_string(), v.value().to_string());
        }
        Ok(out)
    }

    /// The request first accepted for this client and job id; an error if the client's name is
    /// the store's under another SIP ID.
    pub(crate) fn job(&self, client: &str, job_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let r = self.read()?;
        let jobs = r.open_table(JOBS).db()?;
        let Some(id) = jobs.get(job_key(client, job_id).as_str()).db()? else { return Ok(None) };
        let id = id.value().to_string();
        self.request(&id)
    }

    /// The bytes of a request's job archive, assembled from the one stored copy of its body
    /// (`None` if the request or its body is not here). Always the same bytes for a request, so a
    /// retried delivery finds its own archive as "already there".
    pub(crate) fn archive_bytes(&self, request_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.read()?;
        let requests = r.open_table(REQUESTS).db()?;
        let Some(record) = requests.get(request_id).db()? else { return Ok(None) };
        let record: RequestRecord = serde_json::from_slice(record.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let Some(body) = read_body(&r, &self.bodies_dir, request_id)? else { return Ok(None) };
        let instance = if record.instance.is_empty() { self.prefix.as_str() } else { record.instance.as_str() };
        Ok(Some(archive_envelope(&record.request_id, instance, &record.client, &record.job_id, &record.received_at, &body).into_bytes()))
    }

    pub fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let r = self.read()?;
        let t = r.open_table(REQUESTS).db()?;
        let Some(v) = t.get(request_id).db()? else { return Ok(None) };
        serde_json::from_slice(v.value()).map(Some).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    pub fn body(&self, request_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.read()?;
        read_body(&r, &self.bodies_dir, request_id)
    }

    /// The state of a request's job archive; `None` if the request has none (or is unknown).
    pub(crate) fn archive_state(&self, request_id: &str) -> Result<Option<DeliveryState>, StoreError> {
        let r = self.read()?;
        let requests = r.open_table(REQUESTS).db()?;
        let Some(v) = requests.get(request_id).db()? else { return Ok(None) };
        let record: RequestRecord = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let Some(name) = record.archive else { return Ok(None) };
        let outbox = r.open_table(OUTBOX).db()?;
        let Some(v) = outbox.get(name.as_str()).db()? else { return Ok(None) };
        let file: OutboxFile = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some(file.state))
    }

    pub fn outbox_file(&self, object: &str) -> Result<Option<OutboxFile>, StoreError> {
        let r = self.read()?;
        let t = r.open_table(OUTBOX).db()?;
        let Some(v) = t.get(object).db()? else { return Ok(None) };
        serde_json::from_slice(v.value()).map(Some).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// Up to `limit` undelivered files, oldest first.
    pub(crate) fn pending(&self, limit: usize) -> Result<Vec<OutboxFile>, StoreError> {
        let r = self.read()?;
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
        let r = self.read()?;
        r.open_table(PENDING).db()?.len().db()
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
    bodies_dir: std::path::PathBuf,
}

/// The reply a job waits for, filled once the batch's commit is known.
enum Pending {
    Accept(tokio::sync::oneshot::Sender<Result<AcceptOutcome, StoreError>>, Box<Result<AcceptOutcome, StoreError>>),
    Mark(tokio::sync::oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
    Inbound(tokio::sync::oneshot::Sender<Result<bool, StoreError>>, Result<bool, StoreError>),
    Sweep(tokio::sync::oneshot::Sender<Result<usize, StoreError>>, Result<usize, StoreError>),
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::new();
            let mut close = None;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Close(reply) => close = Some(reply),
                    job => batch.push(job),
                }
                if close.is_none() && batch.len() < 512 {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_batch(batch);
            }
            if let Some(reply) = close {
                // The last strong reference: the database is closed (cleanly) before the reply.
                drop(self);
                let _ = reply.send(());
                return;
            }
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
                    body_parts: w.open_table(BODY_PARTS).db()?,
                    jobs: w.open_table(JOBS).db()?,
                    clients: w.open_table(CLIENTS).db()?,
                    outbox: w.open_table(OUTBOX).db()?,
                    pending: w.open_table(PENDING).db()?,
                    retain: w.open_table(RETAIN).db()?,
                    meta: w.open_table(META).db()?,
                    mpans: w.open_table(MPANS).db()?,
                    incoming: w.open_table(INCOMING).db()?,
                    inbound_seen: w.open_table(INBOUND_SEEN).db()?,
                };
                for job in batch {
                    match job {
                        Job::Accept(job, in_file, reply) => {
                            let r = self.accept_one(&mut t, *job, in_file);
                            if matches!(r, Ok(AcceptOutcome::Accepted(_))) {
                                accepted += 1;
                            }
                            replies.push(Pending::Accept(reply, Box::new(r)));
                        }
                        Job::Mark(results, reply) => {
                            let r = mark(&mut t, results);
                            replies.push(Pending::Mark(reply, r));
                        }
                        Job::Inbound(record, reply) => {
                            let r = inbound(&mut t, *record);
                            replies.push(Pending::Inbound(reply, r));
                        }
                        Job::Sweep(cutoff, reply) => {
                            let r = sweep(&mut t, cutoff, &self.bodies_dir);
                            replies.push(Pending::Sweep(reply, r));
                        }
                        // Taken out of the batch by `run`.
                        Job::Close(reply) => {
                            let _ = reply.send(());
                        }
                    }
                }
            }
            w.commit().db()
        })();
        self.stats.last_failed.store(outcome.is_err(), Ordering::Relaxed);
        if outcome.is_ok() {
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            self.stats.accepts.fetch_add(accepted, Ordering::Relaxed);
            self.stats.largest_batch.fetch_max(accepted, Ordering::Relaxed);
            if accepted > 0 {
                self.queued.notify_one();
            }
        }
        // Nothing is promised unless the commit (and its fsync) succeeded.
        reply_all(replies, &outcome);
    }

    fn accept_one(&self, t: &mut Tables<'_>, req: NewRequest, body_in_file: bool) -> Result<AcceptOutcome, StoreError> {
        claim_identity(t, &req.client, &req.sip_id)?;
        let key = job_key(&req.client, &req.job_id);
        if let Some(earlier) = earlier_outcome(t, &key, &req.body_hash)? {
            return Ok(earlier);
        }
        let mut next = t.meta.get(FILE_COUNTER).db()?.map(|v| v.value()).unwrap_or(1);
        let seq_base = next;
        let Assembled { record, archive, flows } = assemble(&req, &self.prefix, || {
            next += 1;
            file_id(&self.prefix, next - 1)
        });
        // The job archive first, in the same commit as the flows.
        if t.outbox.get(archive.object.as_str()).db()?.is_some() {
            return Err(StoreError::Corrupt(format!("job archive {:?} is already in the outbox", archive.object)));
        }
        queue(t, &archive, seq_base)?;
        for file in &flows {
            queue(t, file, seq_base)?;
        }
        t.meta.insert(FILE_COUNTER, next).db()?;
        t.requests.insert(req.request_id.as_str(), serde_json::to_vec(&record).db()?.as_slice()).db()?;
        if !body_in_file {
            for (n, part) in body_parts(&req.body).enumerate() {
                t.body_parts.insert((req.request_id.as_str(), u32::try_from(n).unwrap_or(u32::MAX)), part).db()?;
            }
        }
        let received_ms = i64::try_from(req.now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0).max(0);
        t.retain.insert(format!("{received_ms:020}\u{1f}{}", req.request_id).as_str(), req.request_id.as_str()).db()?;
        t.jobs.insert(key.as_str(), req.request_id.as_str()).db()?;
        if !req.mpan.is_empty() {
            let entry = MpanEntry { request_id: req.request_id.clone(), sip_id: req.sip_id, date_of_action: req.date_of_action };
            t.mpans.insert(mpan_key(&req.mpan, &req.request_id).as_str(), serde_json::to_vec(&entry).db()?.as_slice()).db()?;
        }
        Ok(AcceptOutcome::Accepted(record))
    }
}

/// Sends each job of a batch its answer: its own result if the commit succeeded, else the
/// commit's error.
fn reply_all(replies: Vec<Pending>, outcome: &Result<(), StoreError>) {
    fn settled<T>(outcome: &Result<(), StoreError>, r: Result<T, StoreError>) -> Result<T, StoreError> {
        match outcome {
            Ok(()) => r,
            Err(e) => Err(StoreError::Db(e.to_string())),
        }
    }
    for p in replies {
        match p {
            Pending::Accept(reply, r) => drop(reply.send(settled(outcome, *r))),
            Pending::Mark(reply, r) => drop(reply.send(settled(outcome, r))),
            Pending::Inbound(reply, r) => drop(reply.send(settled(outcome, r))),
            Pending::Sweep(reply, r) => drop(reply.send(settled(outcome, r))),
        }
    }
}

/// The client's SIP ID as the store knows it: recorded on its first request, and any other one
/// refused. The keys are checked against this table when they load; this is the last line.
fn claim_identity(t: &mut Tables<'_>, client: &str, sip_id: &str) -> Result<(), StoreError> {
    let stored = t.clients.get(client).db()?.map(|v| v.value().to_string());
    match stored {
        Some(stored) if stored != sip_id => Err(StoreError::Identity { name: client.to_string(), stored, presented: sip_id.to_string() }),
        Some(_) => Ok(()),
        None => t.clients.insert(client, sip_id).db().map(|_| ()),
    }
}

/// What a job accepted before answers now: its first answer for the same body, a conflict for
/// another; nothing for a new job.
fn earlier_outcome(t: &Tables<'_>, job_key: &str, body_hash: &str) -> Result<Option<AcceptOutcome>, StoreError> {
    let Some(id) = t.jobs.get(job_key).db()?.map(|v| v.value().to_string()) else { return Ok(None) };
    let record: RequestRecord = match t.requests.get(id.as_str()).db()? {
        Some(v) => serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        None => return Err(StoreError::Corrupt(format!("job {job_key:?} names a missing request"))),
    };
    Ok(Some(if record.body_hash == body_hash { AcceptOutcome::Replayed(record) } else { AcceptOutcome::Conflict { request_id: id } }))
}

/// Puts a file in the outbox, waiting, in the order of its request.
fn queue(t: &mut Tables<'_>, file: &OutboxFile, seq: u64) -> Result<(), StoreError> {
    t.outbox.insert(file.object.as_str(), serde_json::to_vec(file).db()?.as_slice()).db()?;
    t.pending.insert(file.object.as_str(), seq).db()?;
    Ok(())
}

/// Bodies this large or larger are stored in a file of their own.
pub(crate) const BODY_FILE_MIN: usize = 64 * 1024;

/// Writes a body to `<dir>/<id>`: a temporary file, fsync'd, renamed into place, the folder
/// fsync'd; so the file is whole and durable before the commit that names it.
fn write_body_file(dir: &Path, id: &str, body: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    if id.is_empty() || id.contains(['/', '\\', '.']) {
        return Err(StoreError::Corrupt(format!("request id {id:?} cannot name a body file")));
    }
    let tmp = dir.join(format!("{id}.tmp"));
    let io = |e: std::io::Error| StoreError::Db(format!("body file of {id}: {e}"));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(body).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, dir.join(id)).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// At start: removes body files no stored request names (a crash between the file and the commit
/// that would have recorded it) and temporary files. One lookup per file: the files are bounded
/// by retention, and nothing is held but the folder's listing.
fn clear_orphan_bodies(db: &Database, dir: &Path) -> Result<(), StoreError> {
    let r = db.begin_read().db()?;
    let requests = r.open_table(REQUESTS).db()?;
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).db()?.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let orphan = name.ends_with(".tmp") || requests.get(name.as_str()).db()?.is_none();
        if orphan && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(files = removed, "removed body files no stored request names (left by a crash before their commit)");
    }
    Ok(())
}

/// redb's page size, and the room a leaf needs beside one value (its header, the key, the
/// offsets), rounded up generously.
const PAGE: usize = 4096;
const LEAF_ROOM: usize = 512;

/// A body cut into parts that each fill a power-of-two run of pages: the largest that fits what
/// is left, so the waste is at most `LEAF_ROOM` per part plus part of the last page.
fn body_parts(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = body;
    // An empty body is one empty part, so it reads back as empty, not as missing.
    let mut first = true;
    std::iter::from_fn(move || {
        if rest.is_empty() && !std::mem::take(&mut first) {
            return None;
        }
        first = false;
        let mut run = PAGE << 8; // 1 MiB: at most 256 pages a part
        while run > PAGE && run - LEAF_ROOM > rest.len() {
            run /= 2;
        }
        let (part, left) = rest.split_at(rest.len().min(run - LEAF_ROOM));
        rest = left;
        Some(part)
    })
}

/// A request's body: its parts in order, or the whole body as stores before parts kept it.
fn read_body(r: &redb::ReadTransaction, bodies_dir: &Path, request_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
    match std::fs::read(bodies_dir.join(request_id)) {
        Ok(body) => return Ok(Some(body)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::Db(format!("body of {request_id}: {e}"))),
    }
    let parts = r.open_table(BODY_PARTS).db()?;
    let mut body = Vec::new();
    let mut found = false;
    for part in parts.range((request_id, 0)..=(request_id, u32::MAX)).db()? {
        let (_, v) = part.db()?;
        body.extend_from_slice(v.value());
        found = true;
    }
    if found {
        return Ok(Some(body));
    }
    let whole = r.open_table(BODIES).db()?;
    Ok(whole.get(request_id).db()?.map(|v| v.value().to_vec()))
}

struct Tables<'t> {
    requests: redb::Table<'t, &'static str, &'static [u8]>,
    bodies: redb::Table<'t, &'static str, &'static [u8]>,
    body_parts: redb::Table<'t, (&'static str, u32), &'static [u8]>,
    jobs: redb::Table<'t, &'static str, &'static str>,
    clients: redb::Table<'t, &'static str, &'static str>,
    outbox: redb::Table<'t, &'static str, &'static [u8]>,
    pending: redb::Table<'t, &'static str, u64>,
    retain: redb::Table<'t, &'static str, &'static str>,
    meta: redb::Table<'t, &'static str, u64>,
    mpans: redb::Table<'t, &'static str, &'static [u8]>,
    incoming: redb::Table<'t, &'static str, &'static [u8]>,
    inbound_seen: redb::Table<'t, &'static str, &'static [u8]>,
}

/// Drops the bodies of settled requests received before `cutoff_ms`, oldest first.
fn sweep(t: &mut Tables<'_>, cutoff_ms: i64, bodies_dir: &Path) -> Result<usize, StoreError> {
    let end = format!("{:020}", cutoff_ms.max(0));
    let mut due = Vec::new();
    for row in t.retain.range::<&str>(..end.as_str()).db()? {
        let (key, id) = row.db()?;
        due.push((key.value().to_string(), id.value().to_string()));
        if due.len() >= SWEEP_BATCH * 4 {
            break;
        }
    }
    let mut dropped = 0;
    for (key, id) in due {
        if dropped >= SWEEP_BATCH {
            break;
        }
        let record: RequestRecord = match t.requests.get(id.as_str()).db()? {
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            None => {
                t.retain.remove(key.as_str()).db()?;
                continue;
            }
        };
        // Settled: nothing of the request is still waiting to go (its archive is built from the
        // body, so the body stays while the archive is pending or failing).
        let mut settled = true;
        for object in record.archive.iter().chain(record.objects.iter()) {
            if t.pending.get(object.as_str()).db()?.is_some() {
                settled = false;
                break;
            }
        }
        if settled {
            t.bodies.remove(id.as_str()).db()?;
            for part in t.body_parts.extract_from_if((id.as_str(), 0)..=(id.as_str(), u32::MAX), |_, _| true).db()? {
                drop(part.db()?);
            }
            t.retain.remove(key.as_str()).db()?;
            // Before the commit: the request is settled (its archive is in the store it was
            // delivered to), so its body may go even if this commit then fails, and a crash
            // after the commit cannot leave a file no record keeps.
            match std::fs::remove_file(bodies_dir.join(&id)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(request_id = %id, error = %e, "retention: cannot remove a body file; it stays"),
            }
            dropped += 1;
        }
    }
    Ok(dropped)
}

/// Records an inbound file unless the same name and content was recorded before.
fn inbound(t: &mut Tables<'_>, record: InboundRecord) -> Result<bool, StoreError> {
    if let Some(ms) = record.ledger_ms {
        let stored = t.meta.get(LEDGER_POSITION).db()?.map_or(0, |v| v.value());
        if ms > stored {
            t.meta.insert(LEDGER_POSITION, ms).db()?;
        }
    }
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
        let settled = file.record(&result);
        if settled {
            t.pending.remove(name.as_str()).db()?;
        }
        if let (FileKind::Archive, Delivery::Duplicate { winner }) = (file.kind, &result) {
            duplicate(t, &file.request_id, winner)?;
        }
        t.outbox.insert(name.as_str(), serde_json::to_vec(&file).db()?.as_slice()).db()?;
    }
    Ok(())
}

/// A request that lost its job to another instance's: recorded on the request, and its flows
/// leave the outbox unsent.
fn duplicate(t: &mut Tables<'_>, request_id: &str, winner: &str) -> Result<(), StoreError> {
    let mut record: RequestRecord = match t.requests.get(request_id).db()? {
        Some(v) => serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        None => return Ok(()),
    };
    for object in &record.objects {
        let mut file: OutboxFile = match t.outbox.get(object.as_str()).db()? {
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            None => continue,
        };
        if file.state == DeliveryState::Delivered {
            // Sent before the archive existed (a store from before archives): nothing to undo.
            continue;
        }
        file.state = DeliveryState::Duplicate;
        file.last_error = Some(format!("not sent: the job was accepted first by request {winner}"));
        t.pending.remove(object.as_str()).db()?;
        t.outbox.insert(object.as_str(), serde_json::to_vec(&file).db()?.as_slice()).db()?;
    }
    record.duplicate_of = Some(winner.to_string());
    t.requests.insert(request_id, serde_json::to_vec(&record).db()?.as_slice()).db()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_parts_cover_the_body_in_order_and_fit_their_runs() {
        for len in [0usize, 1, 3583, 3584, 3585, 1_048_000, 1_048_064, 1_048_065, 8_390_277] {
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let parts: Vec<&[u8]> = body_parts(&body).collect();
            assert_eq!(parts.concat(), body, "{len}");
            assert!(!parts.is_empty());
            for p in &parts {
                let run = (p.len() + LEAF_ROOM).next_power_of_two().max(PAGE);
                assert!(run <= PAGE << 8 && run - p.len() <= LEAF_ROOM + PAGE, "{len}: a part of {} takes a run of {run}", p.len());
            }
        }
    }

    fn photo_request(n: usize, body: &[u8]) -> NewRequest {
        NewRequest {
            request_id: format!("REQ-{n:04}"),
            client: "Test SIP".into(),
            key_id: "k".into(),
            job_id: format!("JOB-{n}"),
            body_hash: format!("h{n}"),
            body: bytes::Bytes::copy_from_slice(body),
            scenario: "S01".into(),
            scenario_name: "s".into(),
            warnings: vec![],
            flows: vec![],
            ruleset: "r".into(),
            envelope: Envelope { test_flag: "TR01".into(), crlf: false, object_name: "out/{flow}_{file_id}.usr".into() },
            now: OffsetDateTime::UNIX_EPOCH,
            sip_id: "DEMO".into(),
            mpan: String::new(),
            date_of_action: String::new(),
        }
    }

    /// A photo body is stored once, in about its own size: the store file grows by at most 1.1
    /// times the bodies it took (the issue's target), whatever their length.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_photo_body_takes_about_its_own_size_in_the_store() {
        let dir = std::env::temp_dir().join(format!("flowgate-store-size-{}", ulid::Ulid::new()));
        let store = Store::open(&dir, "T").unwrap();
        // The whole store folder: the database file and the body files.
        let size = || -> u64 {
            let db = std::fs::metadata(dir.join("flowgate.redb")).unwrap().len();
            db + std::fs::read_dir(dir.join("bodies")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum::<u64>()
        };
        let warm: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        assert!(matches!(store.accept(photo_request(0, &warm)).await.unwrap(), AcceptOutcome::Accepted(_)));
        let before = size();
        // The size of the reference body with four 1.5 MB photos, and lengths around it.
        let sizes = [8_390_277usize, 6_000_001, 4_194_305, 9_437_000, 8_388_600];
        let mut total = 0u64;
        for (n, size) in sizes.iter().cycle().take(20).enumerate() {
            let body: Vec<u8> = (0..*size).map(|i| (i % 253) as u8).collect();
            assert!(matches!(store.accept(photo_request(n + 1, &body)).await.unwrap(), AcceptOutcome::Accepted(_)));
            assert_eq!(store.body(&format!("REQ-{:04}", n + 1)).await.unwrap().as_deref(), Some(body.as_slice()), "the body reads back whole");
            total += *size as u64;
        }
        let grown = size() - before;
        let ratio = grown as f64 / total as f64;
        println!("store: {total} body bytes took {grown} bytes of store ({ratio:.3}x)");
        assert!(ratio <= 1.1, "the store grew {ratio:.2} times the bodies it took");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A closed store's database is closed: it opens again in the same process at once (redb
    /// refuses a database still open), with what was accepted before the close.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_store_opens_again_at_once_with_what_it_held() {
        let dir = std::env::temp_dir().join(format!("flowgate-store-close-{}", ulid::Ulid::new()));
        let store = Store::open(&dir, "T").unwrap();
        assert!(matches!(store.accept(photo_request(1, b"{}")).await.unwrap(), AcceptOutcome::Accepted(_)));
        let reader = store.clone();
        store.close().await;
        assert!(matches!(reader.request("REQ-0001").await, Err(StoreError::Closed)), "a read after the close");
        let again = Store::open(&dir, "T").expect("the database was left open");
        assert!(again.request("REQ-0001").await.unwrap().is_some());
        again.close().await;
        drop((store, reader, again));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn archive_names_are_safe_and_distinct() {
        assert_eq!(archive_name("test-sip", "JOB-1"), "jobs/test-sip/JOB-1.json");
        let a = archive_name("Test SIP", "a/b ..");
        assert!(a.starts_with("jobs/test-sip-"), "{a}");
        assert!(a.ends_with("/a%2Fb%20...json"), "{a}");
        assert_ne!(archive_name("Test SIP", "x"), archive_name("test sip", "x"));
        assert_ne!(archive_name("Test SIP", "x"), archive_name("test-sip", "x"));
        assert_eq!(safe_job_id(".."), "%2E.");
        let weird = archive_name("Ünïcode / ..", "..");
        assert!(weird.split('/').all(|p| !p.is_empty() && p != "." && p != ".."), "{weird}");
    }

    /// Schema-valid job ids (1-64 characters) whose encoding is longer than a file name may be.
    fn long_ids() -> Vec<String> {
        let mut ids = vec!["\u{e9}".repeat(43), "\u{1f600}".repeat(60), "\u{10348}".repeat(64)];
        // Ids that differ only at the end, past the part a shortened name keeps readable.
        for c in ["a", "b", "\u{e9}", "\u{e8}", "\u{1f601}"] {
            ids.push(format!("{}{c}", "\u{1f600}".repeat(63)));
            ids.push(format!("{}{c}", "\u{e9}".repeat(63)));
        }
        ids.push(format!("a{}", "\u{1f600}".repeat(63)));
        ids
    }

    #[test]
    fn long_job_ids_get_distinct_stable_names_within_the_limits() {
        let ids = long_ids();
        let names: Vec<String> = ids.iter().map(|id| archive_name("Test SIP", id)).collect();
        let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "two long ids share a name: {names:#?}");
        for (id, name) in ids.iter().zip(&names) {
            assert_eq!(&archive_name("Test SIP", id), name, "the same id, another name");
            assert!(crate::domain::names::check("", name).is_ok(), "{name}: {:?}", crate::domain::names::check("", name));
            assert!(name.len() <= crate::domain::names::ARCHIVE_MAX);
            assert!(name.ends_with(".json") && name.contains('~'), "{name}");
        }
        // Each id's name starts as its encoding does: still readable, still sorted alike.
        assert!(names[0].starts_with("jobs/test-sip-29551bd8/%C3%A9%C3%A9"), "{}", names[0]);
        // A shortened name never equals one kept as it was: the encoding writes `~` as %7E.
        assert_eq!(archive_name("Test SIP", "~"), "jobs/test-sip-29551bd8/%7E.json");
    }

    #[test]
    fn every_name_that_fit_before_keeps_it() {
        // ASCII ids of up to 64 characters, however many bytes they encode to, and non-ASCII ones
        // whose encoding fits a file name: the names they were always given.
        let worst_ascii = " ".repeat(64);
        assert_eq!(archive_name("test-sip", &worst_ascii), format!("jobs/test-sip/{}.json", "%20".repeat(64)));
        let fits = "\u{e9}".repeat(41); // 246 bytes encoded, 251 with .json
        assert_eq!(archive_name("test-sip", &fits), format!("jobs/test-sip/{}.json", "%C3%A9".repeat(41)));
        let first_cut = "\u{e9}".repeat(42); // 252 + 5 bytes: one too many
        assert!(archive_name("test-sip", &first_cut).contains('~'));
        assert_eq!(safe_client("Test SIP"), "test-sip-29551bd8");
    }

    #[test]
    fn long_client_names_fit_one_segment_and_stay_distinct() {
        let a = "A".repeat(1000);
        let b = format!("{}B", "A".repeat(999));
        let (sa, sb) = (safe_client(&a), safe_client(&b));
        assert_ne!(sa, sb);
        assert!(sa.len() <= crate::domain::names::SEGMENT_MAX && sb.len() <= crate::domain::names::SEGMENT_MAX);
        assert_eq!(safe_client(&a), sa);
        let canonical = "a".repeat(300);
        assert!(safe_client(&canonical).len() <= crate::domain::names::SEGMENT_MAX);
        assert_eq!(safe_client(&"a".repeat(255)), "a".repeat(255));
        let name = archive_name(&a, &"\u{10348}".repeat(64));
        assert!(crate::domain::names::check("", &name).is_ok(), "{name}");
    }

    #[test]
    fn archive_envelopes_are_json_and_name_their_request() {
        let e = archive_envelope("01J", "FG", "Test SIP", "JOB-1", "2025-01-01T00:00:00Z", b"{\"a\": [1, \"\\u00e9\"]}");
        let v: Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["instance"], "FG");
        assert_eq!(v["body"]["a"][1], "\u{e9}");
        assert_eq!(archive_request_id(e.as_bytes()).as_deref(), Some("01J"));
        assert_eq!(archive_request_id(b"not json"), None);
    }

    #[test]
    fn file_ids_are_ten_characters() {
        assert_eq!(format!("FG{}", base36(1, 8)), "FG00000001");
        assert_eq!(format!("FG{}", base36(36 * 36 + 35, 8)), "FG0000010Z");
    }
}
