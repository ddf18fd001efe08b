//! Delivery: takes files from the durable outbox and writes each to the sink exactly once.
//!
//! Each file goes out with one create-only write under its deterministic object name. If the
//! name is already taken, the existing bytes are read: the same bytes mean it was delivered
//! (by an earlier attempt that died before recording it); different bytes are an alarm, never an
//! overwrite. Failures back off exponentially with jitter; results are recorded durably, so a
//! restart resumes where it stopped. Accepting requests never waits on the sink.
//!
//! A request's job archive (`jobs/<client>/<job id>.json`) goes first, and its flows only once the
//! archive is known delivered: created now, or found with the same bytes. The archive name is the
//! same on every instance, so when two instances accepted the same job only one archive write
//! wins; the loser finds different bytes, records whose request won (`duplicate_of`) and never
//! sends its flows.
use std::collections::HashMap;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::sink::{ObjectStore, PutOutcome};
use crate::store::{Delivery, DeliveryState, FileKind, OutboxFile, Store};

/// Counters of delivery, for metrics and the closing figures.
#[derive(Default)]
pub struct DispatchStats {
    pub delivered: AtomicU64,
    pub already_there: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub conflicts: AtomicU64,
    /// Job archives written (or found with the same bytes).
    pub archived: AtomicU64,
    /// Requests whose job another instance had archived first: their flows are not sent.
    pub duplicates: AtomicU64,
    /// Per-flow counters (`flowgate_flows_delivered_total{flow}` and the like): the server's own
    /// registry when it runs, so they are exposed with the rest.
    pub metrics: Arc<Metrics>,
}

impl DispatchStats {
    fn count(&self, name: &str, flow: &str) {
        self.metrics.inc(name, &[("flow", flow)], 1.0);
    }
}

/// Settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Exponential with full jitter: a random wait in [delay/2, delay].
    pub(crate) fn delay(&self, attempts: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempts.min(16)).min(self.max);
        let mut b = [0u8; 2];
        let _ = getrandom::fill(&mut b);
        let frac = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
        exp.mul_f64(0.5 + 0.5 * frac)
    }
}

/// Whether a request's flows may go: its archive is delivered, or it has none (stored before
/// job archives existed). Answers are kept for one pass of the loop.
async fn archive_cleared(store: &Store, request_id: &str, seen: &mut HashMap<String, bool>) -> bool {
    if let Some(ok) = seen.get(request_id) {
        return *ok;
    }
    let ok = match store.archive_state(request_id).await {
        Ok(None) => true,
        Ok(Some(state)) => state == DeliveryState::Delivered,
        Err(e) => {
            tracing::error!(error = %e, "cannot read a request's archive state");
            false
        }
    };
    seen.insert(request_id.to_string(), ok);
    ok
}

/// What one attempt was about, carried through the join.
struct Attempt {
    object: String,
    flow: String,
    kind: FileKind,
    request_id: String,
}

/// Bytes gathered for one batch (past its first file): bounds the dispatcher's memory when job
/// archives carry photos.
const BATCH_BYTES: usize = 64 * 1024 * 1024;

/// Runs until `shutdown` fires: delivers pending files, `concurrency` at a time.
pub async fn run<S: ObjectStore>(
    store: Store,
    sink: S,
    concurrency: usize,
    backoff: Backoff,
    stats: Arc<DispatchStats>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut not_before: HashMap<String, (u32, Instant)> = HashMap::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let now = Instant::now();
        let batch = match store.pending(4096).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                Vec::new()
            }
        };
        let mut cleared = HashMap::new();
        let mut due: Vec<OutboxFile> = Vec::with_capacity(batch.len());
        for f in batch {
            if not_before.get(&f.object).is_none_or(|(_, t)| *t <= now)
                && (f.kind == FileKind::Archive || archive_cleared(&store, &f.request_id, &mut cleared).await)
            {
                due.push(f);
            }
        }
        let mut results = Vec::new();
        // The folder takes a batch in one blocking task (one folder fsync per batch); the bucket
        // takes `concurrency` writes at a time.
        let batch_size = sink.batch_size(concurrency);
        let mut queue = due.iter().peekable();
        while queue.peek().is_some() {
            if *shutdown.borrow() {
                break;
            }
            // A batch holds at most `batch_size` files and, past its first, BATCH_BYTES: job
            // archives carry photos, and their bytes are only assembled here, a batch at a time.
            let mut items = Vec::new();
            let mut bytes = 0usize;
            while let Some(f) = queue.next_if(|_| items.len() < batch_size && (items.is_empty() || bytes < BATCH_BYTES)) {
                let attempt = Attempt { object: f.object.clone(), flow: f.flow.clone(), kind: f.kind, request_id: f.request_id.clone() };
                let Some(content) = content_of(&store, f).await else { continue };
                bytes += content.len();
                items.push((attempt, f.object.clone(), content));
            }
            for (attempt, r) in sink.put_all(items).await {
                let at = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
                let name = attempt.object.clone();
                let delivery = judged(&attempt, r, at, &stats);
                if let Delivery::Failed { error } = &delivery {
                    let entry = not_before.entry(name.clone()).or_insert((0, now));
                    entry.0 += 1;
                    entry.1 = Instant::now() + backoff.delay(entry.0);
                    tracing::warn!(object = %name, attempts = entry.0, error = %error, "delivery failed; will retry");
                }
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
        if due.is_empty() || !results_pending_now(&store).await {
            idle(&store, &not_before, &mut shutdown).await;
        }
    }
}

/// Sleeps until new work is queued, the next retry is due (at most a second: other instances
/// queue work this one is not told of), or shutdown.
async fn idle(store: &Store, not_before: &HashMap<String, (u32, Instant)>, shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let next_retry = not_before.values().map(|(_, t)| *t).min();
    let wait = next_retry.map_or(Duration::from_secs(1), |t| t.saturating_duration_since(Instant::now()).min(Duration::from_secs(1)));
    tokio::select! {
        _ = store.queued.notified() => {}
        _ = tokio::time::sleep(wait) => {}
        _ = shutdown.changed() => {}
    }
}

/// The bytes of an outbox file: a job archive is assembled from its stored body (`None`, logged,
/// if that cannot be read now); a flow file's are in the outbox.
async fn content_of(store: &Store, f: &OutboxFile) -> Option<Vec<u8>> {
    match (f.kind, f.content.is_empty()) {
        (FileKind::Archive, true) => match store.archive_bytes(&f.request_id).await {
            Ok(Some(b)) => Some(b),
            Ok(None) => {
                tracing::error!(object = %f.object, "the job archive's request or body is not in the store; it cannot be delivered");
                None
            }
            Err(e) => {
                tracing::error!(object = %f.object, error = %e, "cannot read a job archive's body; will retry");
                None
            }
        },
        // A flow file, or an archive stored whole by an earlier version.
        _ => Some(f.content.clone().into_bytes()),
    }
}

/// What one write's result means for its file, counted in `stats`.
fn judged(attempt: &Attempt, r: Result<PutOutcome, crate::sink::SinkError>, at: String, stats: &DispatchStats) -> Delivery {
    match (attempt.kind, r) {
        (FileKind::Archive, Ok(PutOutcome::Created | PutOutcome::AlreadyThere)) => {
            stats.archived.fetch_add(1, Ordering::Relaxed);
            Delivery::Delivered { at }
        }
        (FileKind::Archive, Ok(PutOutcome::Different(existing))) => {
            // Another instance accepted this job first: its flows are the ones sent.
            stats.duplicates.fetch_add(1, Ordering::Relaxed);
            let winner = crate::store::archive_request_id(&existing).unwrap_or_else(|| "unknown (not a flowgate job archive)".into());
            if winner == attempt.request_id {
                tracing::error!(object = %attempt.object, "ALARM: the job archive holds different bytes under this request's own id");
            }
            tracing::warn!(object = %attempt.object, request = %attempt.request_id, duplicate_of = %winner, "job already accepted by another instance; this request's flows are not sent");
            Delivery::Duplicate { winner }
        }
        (FileKind::Flow, Ok(PutOutcome::Created)) => {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            stats.count("flowgate_flows_delivered_total", &attempt.flow);
            Delivery::Delivered { at }
        }
        (FileKind::Flow, Ok(PutOutcome::AlreadyThere)) => {
            stats.already_there.fetch_add(1, Ordering::Relaxed);
            stats.count("flowgate_flows_delivered_total", &attempt.flow);
            stats.count("flowgate_flows_found_delivered_total", &attempt.flow);
            Delivery::Delivered { at }
        }
        (FileKind::Flow, Ok(PutOutcome::Different(_))) => {
            stats.conflicts.fetch_add(1, Ordering::Relaxed);
            stats.count("flowgate_flow_conflicts_total", &attempt.flow);
            tracing::error!(object = %attempt.object, "ALARM: the store holds different bytes under this object name; not overwritten");
            Delivery::Conflict { error: "the store holds different bytes under this name".into() }
        }
        (kind, Err(e)) => {
            stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            let label = if kind == FileKind::Archive { "archive" } else { attempt.flow.as_str() };
            stats.count("flowgate_flow_delivery_failures_total", label);
            Delivery::Failed { error: e.to_string() }
        }
    }
}

async fn results_pending_now(store: &Store) -> bool {
    store.pending_count().await.map(|n| n > 0).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtc::write::{Envelope, FlowBody};
    use crate::sink::local::LocalSink;
    use crate::sink::{Got, Sink};
    use crate::store::{AcceptOutcome, NewRequest, StoreError};

    fn request(request_id: &str, job_id: &str) -> NewRequest {
        let flow = FlowBody {
            flow: "D0396".into(),
            version: "001".into(),
            from_role: "M".into(),
            from_mpid: "DEMO".into(),
            to_role: "X".into(),
            to_mpid: "TEST".into(),
            records: vec![vec!["04A".into(), "1234".into()]],
            top_level: 1,
        };
        NewRequest {
            request_id: request_id.into(),
            client: "Test SIP".into(),
            key_id: "k".into(),
            job_id: job_id.into(),
            body_hash: "h".into(),
            body: bytes::Bytes::from_static(b"{\"job_details\": {\"job_id\": \"J\"}}"),
            scenario: "S01".into(),
            scenario_name: "s".into(),
            warnings: vec![],
            flows: vec![flow],
            ruleset: "r".into(),
            envelope: Envelope { test_flag: "TR01".into(), crlf: false, object_name: "out/{to_role}{to_mpid}/{flow}_{from_mpid}_{file_id}.usr".into() },
            now: time::OffsetDateTime::UNIX_EPOCH,
            sip_id: "DEMO".into(),
            mpan: String::new(),
            date_of_action: String::new(),
        }
    }

    /// Runs a dispatcher on `store` until its outbox is empty.
    async fn drain(store: &Store, sink: &Sink) -> Arc<DispatchStats> {
        let stats = Arc::new(DispatchStats::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let backoff = Backoff { base: Duration::from_millis(10), max: Duration::from_millis(50) };
        let task = tokio::spawn(run(store.clone(), sink.clone(), 4, backoff, stats.clone(), stopped));
        for _ in 0..500 {
            if store.pending_count().await.unwrap() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.pending_count().await.unwrap(), 0);
        stop.send(true).unwrap();
        task.await.unwrap();
        stats
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_name_keeps_its_sip_id_in_the_store() {
        let dir = std::env::temp_dir().join(format!("flowgate-identity-{}", ulid::Ulid::new()));
        let store = Store::open(&dir, "A1").unwrap();
        let AcceptOutcome::Accepted(first) = store.accept(request("REQ-1", "J1")).await.unwrap() else { panic!("not accepted") };
        assert_eq!(first.sip_id, "DEMO");
        // The same name under another SIP ID would find, replay and conflict with this client's
        // jobs (and share its archive names): the store refuses it, whatever the keys file says.
        let mut other = request("REQ-2", "J1");
        other.sip_id = "ZZZZ".into();
        other.body_hash = "another body".into();
        let e = store.accept(other).await.unwrap_err();
        assert!(matches!(&e, StoreError::Identity { stored, .. } if stored == "DEMO"), "{e}");
        let mut keys = crate::domain::auth::KeysFile::default();
        keys.add("Test SIP", "ZZZZ", crate::domain::auth::Rate::default()).unwrap();
        assert!(store.check_identities(&keys).await.is_err());
        let mut keys = crate::domain::auth::KeysFile::default();
        keys.add("Test SIP", "DEMO", crate::domain::auth::Rate::default()).unwrap();
        keys.add("Other SIP", "ZZZZ", crate::domain::auth::Rate::default()).unwrap();
        store.check_identities(&keys).await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_drops_a_body_only_once_its_archive_and_flows_are_settled() {
        let dir = std::env::temp_dir().join(format!("flowgate-retain-{}", ulid::Ulid::new()));
        let store = Store::open(&dir.join("store"), "A1").unwrap();
        let AcceptOutcome::Accepted(_) = store.accept(request("REQ-1", "J1")).await.unwrap() else { panic!("not accepted") };
        let later = time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(3600);
        // Not delivered yet: the archive is built from the body, so it stays.
        assert_eq!(store.sweep(later).await.unwrap(), 0);
        assert!(store.body("REQ-1").await.unwrap().is_some());
        let sink = Sink::Local(LocalSink::new(dir.join("dtn")));
        drain(&store, &sink).await;
        // Delivered, but received after the cutoff: stays.
        assert_eq!(store.sweep(time::OffsetDateTime::UNIX_EPOCH).await.unwrap(), 0);
        // Delivered and older than the cutoff: the body goes, the request and its answer stay.
        assert_eq!(store.sweep(later).await.unwrap(), 1);
        assert!(store.body("REQ-1").await.unwrap().is_none());
        assert!(store.request("REQ-1").await.unwrap().is_some());
        assert!(store.job("Test SIP", "DEMO", "J1").await.unwrap().is_some(), "idempotency outlives the body");
        assert_eq!(store.sweep(later).await.unwrap(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_job_archive_goes_first_and_the_second_instance_with_the_same_job_sends_nothing() {
        let dir = std::env::temp_dir().join(format!("flowgate-dispatch-{}", ulid::Ulid::new()));
        let sink = Sink::Local(LocalSink::new(dir.join("dtn")));
        let a = Store::open(&dir.join("a"), "A1").unwrap();
        let b = Store::open(&dir.join("b"), "B2").unwrap();
        let AcceptOutcome::Accepted(ra) = a.accept(request("REQ-A", "J1")).await.unwrap() else { panic!("not accepted") };
        let AcceptOutcome::Accepted(rb) = b.accept(request("REQ-B", "J1")).await.unwrap() else { panic!("not accepted") };
        let archive = ra.archive.clone().unwrap();
        assert!(archive.starts_with("jobs/test-sip-") && archive.ends_with("/J1.json"), "{archive}");
        assert_eq!(a.archive_state("REQ-A").await.unwrap(), Some(DeliveryState::Queued));
        // One durable copy of a body: the queued archive holds none of it; its bytes are
        // assembled from the stored body when it is delivered.
        assert_eq!(a.outbox_file(&archive).await.unwrap().unwrap().content, "");
        let bytes = a.archive_bytes("REQ-A").await.unwrap().unwrap();
        assert!(bytes.ends_with(b"\"body\":{\"job_details\": {\"job_id\": \"J\"}}}\n"), "{}", String::from_utf8_lossy(&bytes));
        assert_eq!(crate::store::archive_request_id(&bytes).as_deref(), Some("REQ-A"));

        let sa = drain(&a, &sink).await;
        assert_eq!((sa.archived.load(Ordering::Relaxed), sa.delivered.load(Ordering::Relaxed)), (1, 1));
        assert_eq!(a.outbox_file(&ra.objects[0]).await.unwrap().unwrap().state, DeliveryState::Delivered);
        assert_eq!(a.outbox_file(&archive).await.unwrap().unwrap().content, "", "a settled archive keeps no copy of the body");

        let sb = drain(&b, &sink).await;
        assert_eq!((sb.duplicates.load(Ordering::Relaxed), sb.delivered.load(Ordering::Relaxed)), (1, 0));
        let lost = b.request("REQ-B").await.unwrap().unwrap();
        assert_eq!(lost.duplicate_of.as_deref(), Some("REQ-A"));
        assert_eq!(b.outbox_file(&rb.objects[0]).await.unwrap().unwrap().state, DeliveryState::Duplicate);
        assert_eq!(b.archive_state("REQ-B").await.unwrap(), Some(DeliveryState::Duplicate));

        // Only instance A's flow file is in the sink, beside the one archive (which names REQ-A).
        let sink_files = |sub: &str| std::fs::read_dir(dir.join("dtn").join(sub)).map(|d| d.count()).unwrap_or(0);
        assert_eq!(sink_files("out/XTEST"), 1);
        assert_eq!(sink.get(&rb.objects[0], u64::MAX).await.unwrap(), Got::Missing);
        let Got::Bytes { bytes: stored, .. } = sink.get(&archive, u64::MAX).await.unwrap() else { panic!("no archive") };
        assert_eq!(crate::store::archive_request_id(&stored).as_deref(), Some("REQ-A"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flows_wait_while_their_archive_cannot_be_written() {
        let dir = std::env::temp_dir().join(format!("flowgate-dispatch-{}", ulid::Ulid::new()));
        // A file where the `jobs/` folder should be: every archive write fails.
        std::fs::create_dir_all(dir.join("dtn")).unwrap();
        std::fs::write(dir.join("dtn/jobs"), b"in the way").unwrap();
        let sink = Sink::Local(LocalSink::new(dir.join("dtn")));
        let store = Store::open(&dir.join("a"), "A1").unwrap();
        let AcceptOutcome::Accepted(r) = store.accept(request("REQ-A", "J1")).await.unwrap() else { panic!("not accepted") };
        let stats = Arc::new(DispatchStats::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let backoff = Backoff { base: Duration::from_millis(10), max: Duration::from_millis(50) };
        let task = tokio::spawn(run(store.clone(), sink.clone(), 4, backoff, stats.clone(), stopped));
        for _ in 0..500 {
            if stats.failed_attempts.load(Ordering::Relaxed) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(stats.failed_attempts.load(Ordering::Relaxed) >= 3);
        assert_eq!(store.archive_state("REQ-A").await.unwrap(), Some(DeliveryState::Failing));
        assert_eq!(store.outbox_file(&r.objects[0]).await.unwrap().unwrap().state, DeliveryState::Queued, "no flow before its archive");
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);
        stop.send(true).unwrap();
        task.await.unwrap();
        std::fs::remove_file(dir.join("dtn/jobs")).unwrap();
        let stats = drain(&store, &sink).await;
        assert_eq!((stats.archived.load(Ordering::Relaxed), stats.delivered.load(Ordering::Relaxed)), (1, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn outbox_files_written_before_archives_existed_still_read_as_flows() {
        let old = r#"{"request_id":"R","flow":"D0396","to":"X/TEST","file_id":"FG00000001","object":"out/x.usr","content":"ZHV|","state":"queued"}"#;
        let f: OutboxFile = serde_json::from_str(old).unwrap();
        assert_eq!(f.kind, FileKind::Flow);
    }
}
