//! The shared store: PostgreSQL, for several instances behind one address.
//!
//! Every instance reads and writes the same tables, so the instances are one gateway:
//!
//! - idempotency is global: a request claims `(client, job id)` in the transaction that stores
//!   it, so the same body on any instance gets the first answer and another body a 409, before
//!   any 200 (a second claim waits on the first's row lock and then sees it);
//! - file ids come from one sequence;
//! - the outbox is shared: an instance takes a batch of due files with `FOR UPDATE SKIP LOCKED`
//!   and leases them; the files of an instance that stopped go to the others when their lease
//!   ends. Delivery stays create-only, so a file delivered twice (a lease that ran out under a
//!   slow write) is found "already there": exactly once per object name;
//! - a key's rate limit is one GCRA state in the database (one statement per request);
//! - incoming flows are matched against every instance's requests through the `requests` table.
//!
//! Bodies, photos included, live in the database too (`bodies`, in parts): a 200 must not wait on
//! the bucket, and the job archive must be reachable by whichever instance delivers it, also after
//! the one that took the request is gone. Retention drops them once settled, as in the embedded
//! store.
//!
//! A 200 still means committed. When the database cannot be reached, the request gets a 503
//! and nothing of it is kept; the pool makes new connections once the database is back.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::NoTls;

use super::*;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = 1;

/// The migrations, in order: `MIGRATIONS[n]` brings the schema from version n to n + 1.
const MIGRATIONS: &[&str] = &[include_str!("migrations/0001_initial.sql")];

/// Any number, the same for every instance: the advisory lock that lets one migrate at a time.
const MIGRATION_LOCK: i64 = 0x666c_6f77_6761_7465;

/// Parts a body is stored in: at most this many bytes each.
const BODY_PART: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the database URL: {0}")]
    Url(String),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("migration to schema version {version}: {error}")]
    Failed { version: i32, error: String },
    /// A newer flowgate migrated this database: this one would misread it.
    #[error("the database has schema version {found}, newer than this flowgate's {known}: upgrade flowgate")]
    Newer { found: i32, known: i32 },
}

impl From<MigrateError> for StoreError {
    fn from(e: MigrateError) -> StoreError {
        match e {
            MigrateError::Unavailable(m) => StoreError::Unavailable(m),
            other => StoreError::Db(other.to_string()),
        }
    }
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    // An error the server sent (a constraint, a bad statement) is the store's; anything else
    // (refused, reset, closed) means the database could not be reached.
    match e.as_db_error() {
        Some(db) => StoreError::Db(format!("{}: {}", db.code().code(), db.message())),
        None => StoreError::Unavailable(e.to_string()),
    }
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The pool for a database URL (`postgres://user:password@host:port/db` or `key=value` form).
/// Connections are made when first needed; none is made here.
pub fn pool(url: &str, size: usize) -> Result<Pool, MigrateError> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(|e| MigrateError::Url(e.to_string()))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(2));
    }
    config.application_name("flowgate");
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(2)))
        .create_timeout(Some(Duration::from_secs(2)))
        .recycle_timeout(Some(Duration::from_secs(2)))
        .build()
        .map_err(|e| MigrateError::Url(e.to_string()))
}

/// Brings the database's schema to [`SCHEMA_VERSION`], one instance at a time; refuses a database
/// a newer flowgate migrated. Returns the versions before and after.
pub async fn migrate(pool: &Pool) -> Result<(i32, i32), MigrateError> {
    let unavailable = |e: &dyn std::fmt::Display| MigrateError::Unavailable(e.to_string());
    let mut client = pool.get().await.map_err(|e| unavailable(&e))?;
    let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
    // Another instance migrating holds the lock for seconds at most; a minute means something
    // is wrong, and waiting for ever would hide it.
    tx.batch_execute("SET LOCAL lock_timeout = '60s'").await.map_err(|e| unavailable(&e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(|e| unavailable(&e))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_versions (version integer NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        .await
        .map_err(|e| unavailable(&e))?;
    let found: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM schema_versions", &[]).await.map_err(|e| unavailable(&e))?.get(0);
    let applied = async {
        if found > SCHEMA_VERSION {
            return Err(MigrateError::Newer { found, known: SCHEMA_VERSION });
        }
        for version in found + 1..=SCHEMA_VERSION {
            let failed = |e: tokio_postgres::Error| MigrateError::Failed { version, error: e.to_string() };
            tx.batch_execute(MIGRATIONS[usize::try_from(version - 1).unwrap_or(0)]).await.map_err(failed)?;
            tx.execute("INSERT INTO schema_versions (version) VALUES ($1)", &[&version]).await.map_err(failed)?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = applied {
        // Ended here, not whenever the connection is next used: the lock goes with it.
        let _ = tx.rollback().await;
        return Err(e);
    }
    tx.commit().await.map_err(|e| unavailable(&e))?;
    Ok((found, SCHEMA_VERSION))
}

/// The shared store: a pool of connections to one PostgreSQL database.
#[derive(Clone)]
pub(crate) struct Shared {
    pool: Pool,
    pub stats: Arc<CommitStats>,
    pub queued: Arc<tokio::sync::Notify>,
    prefix: String,
    /// Who holds a lease: this instance's prefix and a name unique to this run.
    owner: String,
    lease: Duration,
}

impl Shared {
    /// Connects to the database a configuration names and brings its schema up to date.
    pub(crate) async fn connect(url: &str, config: &crate::config::Config) -> Result<Shared, StoreError> {
        let pool = pool(url, config.store.pool_size)?;
        let (from, to) = migrate(&pool).await?;
        if from != to {
            tracing::info!(from, to, "database schema migrated");
        }
        let prefix = config.flows.instance_prefix.clone();
        Ok(Shared {
            pool,
            stats: Arc::new(CommitStats::default()),
            queued: Arc::new(tokio::sync::Notify::new()),
            owner: format!("{prefix}-{}", ulid::Ulid::new()),
            prefix,
            lease: Duration::from_secs(config.store.lease_seconds.max(1)),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    pub(crate) fn close(&self) {
        self.pool.close();
    }

    pub(crate) fn instance_prefix(&self) -> &str {
        &self.prefix
    }

    /// Stores an accepted request in one transaction: the identity check, the job claim, the file
    /// ids, the record, the body and the outbox files.
    pub(crate) async fn accept(&self, req: NewRequest) -> Result<AcceptOutcome, StoreError> {
        // No lookup first: the request path has just looked the job up (a replay never gets
        // here), and the claim in the transaction finds a job accepted meanwhile.
        let mut c = self.client().await?;
        let outcome = self.accept_in(&mut c, &req).await;
        let failed = matches!(outcome, Err(StoreError::Unavailable(_)) | Err(StoreError::Db(_)));
        self.stats.last_failed.store(failed, Ordering::Relaxed);
        if let Ok(AcceptOutcome::Accepted(_)) = &outcome {
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            self.stats.accepts.fetch_add(1, Ordering::Relaxed);
            self.stats.largest_batch.fetch_max(1, Ordering::Relaxed);
            self.queued.notify_one();
        }
        outcome
    }

    async fn accept_in(&self, c: &mut deadpool_postgres::Object, req: &NewRequest) -> Result<AcceptOutcome, StoreError> {
        let tx = c.transaction().await.map_err(pg)?;
        tx.execute("INSERT INTO clients (name, sip_id) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", &[&req.client, &req.sip_id]).await.map_err(pg)?;
        let stored: String = tx.query_one("SELECT sip_id FROM clients WHERE name = $1", &[&req.client]).await.map_err(pg)?.get(0);
        if stored != req.sip_id {
            return Err(StoreError::Identity { name: req.client.clone(), stored, presented: req.sip_id.clone() });
        }
        // The claim: a second instance's insert waits here until this transaction ends, then
        // finds the row and answers with this request's outcome.
        let claimed = tx
            .execute("INSERT INTO jobs (client, job_id, request_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", &[&req.client, &req.job_id, &req.request_id])
            .await
            .map_err(pg)?;
        if claimed == 0 {
            drop(tx);
            let first = job(c, &req.client, &req.job_id).await?.ok_or_else(|| StoreError::Corrupt("a job claim without its request".into()))?;
            return earlier(first, req);
        }
        let count = i32::try_from(req.flows.len()).unwrap_or(i32::MAX);
        let ids: Vec<i64> =
            tx.query("SELECT nextval('file_ids') FROM generate_series(1, $1)", &[&count]).await.map_err(pg)?.iter().map(|r| r.get::<_, i64>(0)).collect();
        let mut next = ids.into_iter();
        let Assembled { record, archive, flows } = assemble(req, &self.prefix, || file_id(&self.prefix, next.next().map_or(0, |n| n.unsigned_abs())));
        let received_ms = i64::try_from(req.now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0).max(0);
        let text = serde_json::to_string(&record).map_err(corrupt)?;
        tx.execute(
            "INSERT INTO requests (request_id, client, job_id, received_ms, mpan, sip_id, date_of_action, body_kept, record) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, true, $8)",
            &[&req.request_id, &req.client, &req.job_id, &received_ms, &req.mpan, &req.sip_id, &req.date_of_action, &text],
        )
        .await
        .map_err(pg)?;
        let insert_part = tx.prepare_cached("INSERT INTO bodies (request_id, part, bytes) VALUES ($1, $2, $3)").await.map_err(pg)?;
        for (n, part) in req.body.chunks(BODY_PART).enumerate() {
            let n = i32::try_from(n).unwrap_or(i32::MAX);
            tx.execute(&insert_part, &[&req.request_id, &n, &part]).await.map_err(pg)?;
        }
        let insert_file =
            tx.prepare_cached("INSERT INTO outbox (object, request_id, kind, pending, ready, file) VALUES ($1, $2, $3, true, $4, $5)").await.map_err(pg)?;
        for (file, ready) in std::iter::once((&archive, true)).chain(flows.iter().map(|f| (f, false))) {
            let kind = kind_name(file.kind);
            let text = serde_json::to_string(file).map_err(corrupt)?;
            tx.execute(&insert_file, &[&file.object, &req.request_id, &kind, &ready, &text]).await.map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(AcceptOutcome::Accepted(record))
    }

    pub(crate) async fn job(&self, client: &str, job_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let c = self.client().await?;
        job(&c, client, job_id).await
    }

    pub(crate) async fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let c = self.client().await?;
        let row = c.query_opt("SELECT record FROM requests WHERE request_id = $1", &[&request_id]).await.map_err(pg)?;
        row.map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(corrupt)).transpose()
    }

    pub(crate) async fn body(&self, request_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let c = self.client().await?;
        body(&c, request_id).await
    }

    pub(crate) async fn archive_bytes(&self, request_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let c = self.client().await?;
        let Some(row) = c.query_opt("SELECT record FROM requests WHERE request_id = $1", &[&request_id]).await.map_err(pg)? else { return Ok(None) };
        let record: RequestRecord = serde_json::from_str(row.get::<_, &str>(0)).map_err(corrupt)?;
        let Some(body) = body(&c, request_id).await? else { return Ok(None) };
        let instance = if record.instance.is_empty() { self.prefix.as_str() } else { record.instance.as_str() };
        Ok(Some(archive_envelope(&record.request_id, instance, &record.client, &record.job_id, &record.received_at, &body).into_bytes()))
    }

    pub(crate) async fn archive_state(&self, request_id: &str) -> Result<Option<DeliveryState>, StoreError> {
        let c = self.client().await?;
        let row = c.query_opt("SELECT file FROM outbox WHERE request_id = $1 AND kind = 'archive'", &[&request_id]).await.map_err(pg)?;
        Ok(row.map(|r| serde_json::from_str::<OutboxFile>(r.get::<_, &str>(0)).map_err(corrupt)).transpose()?.map(|f| f.state))
    }

    pub(crate) async fn outbox_file(&self, object: &str) -> Result<Option<OutboxFile>, StoreError> {
        let c = self.client().await?;
        let row = c.query_opt("SELECT file FROM outbox WHERE object = $1", &[&object]).await.map_err(pg)?;
        row.map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(corrupt)).transpose()
    }

    /// Leases up to `limit` due files to this instance, oldest first: queued or failing, their
    /// job archive delivered (for flows), and not leased to a live instance now.
    pub(crate) async fn claim(&self, limit: usize) -> Result<Vec<OutboxFile>, StoreError> {
        let c = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let secs = self.lease.as_secs_f64();
        let rows = c
            .query(
                "UPDATE outbox SET lease_owner = $1, lease_until = clock_timestamp() + make_interval(secs => $2) \
                 WHERE object IN (SELECT object FROM outbox WHERE pending AND ready AND (lease_until IS NULL OR lease_until < clock_timestamp()) \
                 ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING seq, file",
                &[&self.owner, &secs, &limit],
            )
            .await
            .map_err(pg)?;
        let mut files = Vec::with_capacity(rows.len());
        for r in rows {
            files.push((r.get::<_, i64>(0), serde_json::from_str::<OutboxFile>(r.get::<_, &str>(1)).map_err(corrupt)?));
        }
        files.sort_by_key(|(seq, _)| *seq);
        Ok(files.into_iter().map(|(_, f)| f).collect())
    }

    /// Records delivery results in one transaction. A failed file keeps its lease for a back-off
    /// (so no instance retries it at once); a settled one leaves the outbox's due list, and a
    /// delivered job archive lets its request's flows go.
    pub(crate) async fn mark(&self, results: Vec<(String, Delivery)>) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        for (name, result) in results {
            let Some(row) = tx.query_opt("SELECT file, pending FROM outbox WHERE object = $1 FOR UPDATE", &[&name]).await.map_err(pg)? else { continue };
            let mut file: OutboxFile = serde_json::from_str(row.get::<_, &str>(0)).map_err(corrupt)?;
            if !row.get::<_, bool>(1) {
                // Settled meanwhile by another instance whose lease this one outlived.
                continue;
            }
            let settled = file.record(&result);
            let text = serde_json::to_string(&file).map_err(corrupt)?;
            if settled {
                tx.execute("UPDATE outbox SET file = $2, pending = false, lease_owner = NULL, lease_until = NULL WHERE object = $1", &[&name, &text])
                    .await
                    .map_err(pg)?;
            } else {
                let backoff = f64::from(1u32 << file.attempts.min(8)).min(300.0);
                tx.execute(
                    "UPDATE outbox SET file = $2, lease_until = clock_timestamp() + make_interval(secs => $3) WHERE object = $1",
                    &[&name, &text, &backoff],
                )
                .await
                .map_err(pg)?;
            }
            match (&file.kind, &result) {
                (FileKind::Archive, Delivery::Delivered { .. }) => {
                    tx.execute("UPDATE outbox SET ready = true WHERE request_id = $1 AND kind = 'flow'", &[&file.request_id]).await.map_err(pg)?;
                }
                (FileKind::Archive, Delivery::Duplicate { winner }) => duplicate(&tx, &file.request_id, winner).await?,
                _ => {}
            }
        }
        tx.commit().await.map_err(pg)
    }

    pub(crate) async fn oldest_pending(&self) -> Result<Option<String>, StoreError> {
        let c = self.client().await?;
        let row = c.query_opt("SELECT request_id FROM outbox WHERE pending ORDER BY seq LIMIT 1", &[]).await.map_err(pg)?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(crate) async fn pending_count(&self) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let n: i64 = c.query_one("SELECT count(*) FROM outbox WHERE pending", &[]).await.map_err(pg)?.get(0);
        Ok(n.unsigned_abs())
    }

    /// Drops the bodies of settled requests received before `cutoff`, oldest first, at most
    /// [`SWEEP_BATCH`]; several instances may sweep at once (each skips the others' rows).
    pub(crate) async fn sweep(&self, cutoff: OffsetDateTime) -> Result<usize, StoreError> {
        let cutoff_ms = i64::try_from(cutoff.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let batch = i64::try_from(SWEEP_BATCH).unwrap_or(i64::MAX);
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let rows = tx
            .query(
                "SELECT r.request_id FROM requests r WHERE r.body_kept AND r.received_ms < $1 \
                 AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.request_id = r.request_id AND o.pending) \
                 ORDER BY r.received_ms LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&cutoff_ms, &batch],
            )
            .await
            .map_err(pg)?;
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if !ids.is_empty() {
            tx.execute("DELETE FROM bodies WHERE request_id = ANY($1)", &[&ids]).await.map_err(pg)?;
            tx.execute("UPDATE requests SET body_kept = false WHERE request_id = ANY($1)", &[&ids]).await.map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(ids.len())
    }

    pub(crate) async fn record_inbound(&self, record: InboundRecord) -> Result<bool, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        if let Some(ms) = record.ledger_ms {
            let ms = i64::try_from(ms).unwrap_or(i64::MAX);
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = greatest(meta.value, EXCLUDED.value)",
                &[&LEDGER_POSITION, &ms],
            )
            .await
            .map_err(pg)?;
        }
        let outcome = serde_json::to_string(&record.outcome).map_err(corrupt)?;
        let new = tx
            .execute("INSERT INTO inbound_seen (seen_key, outcome) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&record.seen_key, &outcome])
            .await
            .map_err(pg)?
            == 1;
        if new {
            for (request_id, file, summary) in &record.incoming {
                let summary = serde_json::to_string(summary).map_err(corrupt)?;
                tx.execute("INSERT INTO incoming (request_id, file, summary) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", &[request_id, file, &summary])
                    .await
                    .map_err(pg)?;
            }
        }
        tx.commit().await.map_err(pg)?;
        Ok(new)
    }

    pub(crate) async fn inbound_seen(&self, seen_key: &str) -> Result<Option<Value>, StoreError> {
        let c = self.client().await?;
        let row = c.query_opt("SELECT outcome FROM inbound_seen WHERE seen_key = $1", &[&seen_key]).await.map_err(pg)?;
        row.map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(corrupt)).transpose()
    }

    pub(crate) async fn meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let c = self.client().await?;
        let row = c.query_opt("SELECT value FROM meta WHERE key = $1", &[&key]).await.map_err(pg)?;
        Ok(row.map(|r| r.get::<_, i64>(0).unsigned_abs()))
    }

    pub(crate) async fn requests_for_mpan(&self, mpan: &str) -> Result<Vec<MpanEntry>, StoreError> {
        let c = self.client().await?;
        let rows = c.query("SELECT request_id, sip_id, date_of_action FROM requests WHERE mpan = $1 ORDER BY request_id", &[&mpan]).await.map_err(pg)?;
        Ok(rows.iter().map(|r| MpanEntry { request_id: r.get(0), sip_id: r.get(1), date_of_action: r.get(2) }).collect())
    }

    pub(crate) async fn incoming(&self, request_id: &str) -> Result<Vec<Value>, StoreError> {
        let c = self.client().await?;
        let rows = c.query("SELECT summary FROM incoming WHERE request_id = $1 ORDER BY file", &[&request_id]).await.map_err(pg)?;
        rows.iter().map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(corrupt)).collect()
    }

    pub(crate) async fn identities(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let c = self.client().await?;
        let rows = c.query("SELECT name, sip_id FROM clients", &[]).await.map_err(pg)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// One request of `key_id` against its rate, for every instance at once: GCRA on the
    /// database's clock, one statement. What is left, or how long to wait; `None` if the
    /// database cannot answer (the caller then limits on its own).
    pub(crate) async fn rate(&self, key_id: &str, rate: crate::domain::auth::Rate) -> Option<Result<u32, Duration>> {
        let interval = i64::try_from(rate.cell_interval().as_micros()).unwrap_or(i64::MAX).max(1);
        let tolerance = interval.saturating_mul(i64::from(rate.burst.max(1)));
        let c = self.client().await.ok()?;
        let statement = c
            .prepare_cached(
                "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS us) \
                 INSERT INTO rate_limits AS r (key_id, tat_us) SELECT $1, now.us + $2 FROM now \
                 ON CONFLICT (key_id) DO UPDATE SET tat_us = greatest(r.tat_us, (SELECT us FROM now)) + $2 \
                 WHERE greatest(r.tat_us, (SELECT us FROM now)) + $2 - $3 <= (SELECT us FROM now) \
                 RETURNING r.tat_us, (SELECT us FROM now)",
            )
            .await
            .ok()?;
        let rows = c.query(&statement, &[&key_id, &interval, &tolerance]).await.ok()?;
        if let Some(row) = rows.first() {
            let (tat, now): (i64, i64) = (row.get(0), row.get(1));
            let remaining = (now + tolerance - tat) / interval;
            return Some(Ok(u32::try_from(remaining.max(0)).unwrap_or(u32::MAX)));
        }
        let row = c
            .query_one("SELECT tat_us, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint FROM rate_limits WHERE key_id = $1", &[&key_id])
            .await
            .ok()?;
        let (tat, now): (i64, i64) = (row.get(0), row.get(1));
        let wait = (tat + interval - tolerance - now).max(1);
        Some(Err(Duration::from_micros(wait.unsigned_abs())))
    }
}

fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Archive => "archive",
        FileKind::Flow => "flow",
    }
}

/// The answer for a job claimed before: its first answer for the same body, else a conflict.
fn earlier(first: RequestRecord, req: &NewRequest) -> Result<AcceptOutcome, StoreError> {
    if !first.sip_id.is_empty() && first.sip_id != req.sip_id {
        return Err(StoreError::Identity { name: req.client.clone(), stored: first.sip_id, presented: req.sip_id.clone() });
    }
    Ok(if first.body_hash == req.body_hash { AcceptOutcome::Replayed(first) } else { AcceptOutcome::Conflict { request_id: first.request_id } })
}

async fn job(c: &tokio_postgres::Client, client: &str, job_id: &str) -> Result<Option<RequestRecord>, StoreError> {
    let row = c
        .query_opt("SELECT r.record FROM jobs j JOIN requests r ON r.request_id = j.request_id WHERE j.client = $1 AND j.job_id = $2", &[&client, &job_id])
        .await
        .map_err(pg)?;
    row.map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(corrupt)).transpose()
}

async fn body(c: &tokio_postgres::Client, request_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let kept = c.query_opt("SELECT body_kept FROM requests WHERE request_id = $1", &[&request_id]).await.map_err(pg)?;
    if !kept.is_some_and(|r| r.get::<_, bool>(0)) {
        return Ok(None);
    }
    let rows = c.query("SELECT bytes FROM bodies WHERE request_id = $1 ORDER BY part", &[&request_id]).await.map_err(pg)?;
    let mut out = Vec::with_capacity(rows.iter().map(|r| r.get::<_, &[u8]>(0).len()).sum());
    for r in &rows {
        out.extend_from_slice(r.get::<_, &[u8]>(0));
    }
    Ok(Some(out))
}

/// A request that lost its job to another gateway's (a job archive already in the bucket with
/// other bytes): recorded on the request, and its flows leave the outbox unsent.
async fn duplicate(tx: &deadpool_postgres::Transaction<'_>, request_id: &str, winner: &str) -> Result<(), StoreError> {
    let rows = tx.query("SELECT object, file FROM outbox WHERE request_id = $1 AND kind = 'flow' FOR UPDATE", &[&request_id]).await.map_err(pg)?;
    for row in rows {
        let object: &str = row.get(0);
        let mut file: OutboxFile = serde_json::from_str(row.get::<_, &str>(1)).map_err(corrupt)?;
        if file.state == DeliveryState::Delivered {
            continue;
        }
        file.state = DeliveryState::Duplicate;
        file.last_error = Some(format!("not sent: the job was accepted first by request {winner}"));
        let text = serde_json::to_string(&file).map_err(corrupt)?;
        tx.execute("UPDATE outbox SET file = $2, pending = false, lease_owner = NULL, lease_until = NULL WHERE object = $1", &[&object, &text])
            .await
            .map_err(pg)?;
    }
    if let Some(row) = tx.query_opt("SELECT record FROM requests WHERE request_id = $1 FOR UPDATE", &[&request_id]).await.map_err(pg)? {
        let mut record: RequestRecord = serde_json::from_str(row.get::<_, &str>(0)).map_err(corrupt)?;
        record.duplicate_of = Some(winner.to_string());
        let text = serde_json::to_string(&record).map_err(corrupt)?;
        tx.execute("UPDATE requests SET record = $2 WHERE request_id = $1", &[&request_id, &text]).await.map_err(pg)?;
    }
    Ok(())
}
