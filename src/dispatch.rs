//! Delivery: takes flow files from the durable outbox and writes each to the sink exactly once.
//!
//! Each file goes out with one create-only write under its deterministic object name. If the
//! name is already taken, the existing bytes are read: the same bytes mean it was delivered
//! (by an earlier attempt that died before recording it); different bytes are an alarm, never an
//! overwrite. Failures back off exponentially with jitter; results are recorded durably, so a
//! restart resumes where it stopped. Accepting requests never waits on the sink.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{Delivery, Store};

/// What a create-only write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// The object was there already with the same bytes.
    AlreadyThere,
    /// The object was there with different bytes.
    Different,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// A folder standing in for the DTN bucket: `<data-dir>/dtn/<object name>`.
#[derive(Debug, Clone)]
pub struct LocalSink {
    root: PathBuf,
}

impl LocalSink {
    pub fn new(root: impl Into<PathBuf>) -> LocalSink {
        LocalSink { root: root.into() }
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, SinkError> {
        if name.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
            return Err(SinkError(format!("unsafe object name {name:?}")));
        }
        Ok(self.root.join(name))
    }

    /// Create-only: written to a temporary file, fsync'd, then hard-linked into place (a link
    /// fails if the name exists, atomically), and the folder fsync'd.
    pub fn put_if_absent(&self, name: &str, bytes: &[u8]) -> Result<PutOutcome, SinkError> {
        use std::io::Write;
        let err = |e: std::io::Error| SinkError(format!("{name}: {e}"));
        let path = self.path_of(name)?;
        let dir = path.parent().ok_or_else(|| SinkError(format!("{name}: no folder")))?;
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp_dir = self.root.join(".tmp");
        std::fs::create_dir_all(&tmp_dir).map_err(err)?;
        let tmp = tmp_dir.join(format!("{}.{}", ulid::Ulid::new(), std::process::id()));
        {
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(bytes).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(dir).map_err(err)?;
                Ok(PutOutcome::Created)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let existing = std::fs::read(&path).map_err(err)?;
                Ok(if existing == bytes { PutOutcome::AlreadyThere } else { PutOutcome::Different })
            }
            Err(e) => Err(err(e)),
        }
    }

    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>, SinkError> {
        match std::fs::read(self.path_of(name)?) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SinkError(format!("{name}: {e}"))),
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Where flow files go.
#[derive(Clone)]
pub enum Sink {
    Local(LocalSink),
}

impl Sink {
    pub async fn put_if_absent(&self, name: &str, bytes: Vec<u8>) -> Result<PutOutcome, SinkError> {
        match self {
            Sink::Local(l) => {
                let (l, name) = (l.clone(), name.to_string());
                tokio::task::spawn_blocking(move || l.put_if_absent(&name, &bytes))
                    .await
                    .map_err(|e| SinkError(e.to_string()))?
            }
        }
    }
}

/// Counters of delivery, for metrics and the closing figures.
#[derive(Debug, Default)]
pub struct DispatchStats {
    pub delivered: AtomicU64,
    pub already_there: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub conflicts: AtomicU64,
}

/// Settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Exponential with full jitter: a random wait in [delay/2, delay].
    pub fn delay(&self, attempts: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempts.min(16)).min(self.max);
        let mut b = [0u8; 2];
        let _ = getrandom::fill(&mut b);
        let frac = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
        exp.mul_f64(0.5 + 0.5 * frac)
    }
}

/// Runs until `shutdown` fires: delivers pending files, `concurrency` at a time.
pub async fn run(store: Store, sink: Sink, concurrency: usize, backoff: Backoff, stats: Arc<DispatchStats>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut not_before: HashMap<String, (u32, Instant)> = HashMap::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let now = Instant::now();
        let batch = match store.pending(4096) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                Vec::new()
            }
        };
        let due: Vec<_> = batch.into_iter().filter(|f| not_before.get(&f.object).is_none_or(|(_, t)| *t <= now)).collect();
        let mut results = Vec::new();
        for chunk in due.chunks(concurrency) {
            let mut set = tokio::task::JoinSet::new();
            for f in chunk {
                let (sink, name, bytes) = (sink.clone(), f.object.clone(), f.content.clone().into_bytes());
                set.spawn(async move {
                    let r = sink.put_if_absent(&name, bytes).await;
                    (name, r)
                });
            }
            while let Some(joined) = set.join_next().await {
                let Ok((name, r)) = joined else { continue };
                let at = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
                let delivery = match r {
                    Ok(PutOutcome::Created) => {
                        stats.delivered.fetch_add(1, Ordering::Relaxed);
                        Delivery::Delivered { at }
                    }
                    Ok(PutOutcome::AlreadyThere) => {
                        stats.already_there.fetch_add(1, Ordering::Relaxed);
                        Delivery::Delivered { at }
                    }
                    Ok(PutOutcome::Different) => {
                        stats.conflicts.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(object = %name, "ALARM: the store holds different bytes under this object name; not overwritten");
                        Delivery::Conflict { error: "the store holds different bytes under this name".into() }
                    }
                    Err(e) => {
                        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        let entry = not_before.entry(name.clone()).or_insert((0, now));
                        entry.0 += 1;
                        entry.1 = Instant::now() + backoff.delay(entry.0);
                        tracing::warn!(object = %name, attempts = entry.0, error = %e, "delivery failed; will retry");
                        Delivery::Failed { error: e.to_string() }
                    }
                };
                if !matches!(delivery, Delivery::Failed { .. }) {
                    not_before.remove(&name);
                }
                results.push((name, delivery));
            }
        }
        if !results.is_empty() {
            if let Err(e) = store.mark(results).await {
                tracing::error!(error = %e, "cannot record deliveries; they will be retried");
            }
        }
        // Sleep until new work is queued, the next retry is due, or shutdown.
        let next_retry = not_before.values().map(|(_, t)| *t).min();
        let wait = next_retry.map_or(Duration::from_secs(1), |t| t.saturating_duration_since(Instant::now()).min(Duration::from_secs(1)));
        if due.is_empty() || !results_pending_now(&store) {
            tokio::select! {
                _ = store.queued.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

fn results_pending_now(store: &Store) -> bool {
    store.pending_count().map(|n| n > 0).unwrap_or(false)
}
