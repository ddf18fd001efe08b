//! Incoming flows: the DTN inbox `in/` of the sink's object store ([`crate::sink::ObjectStore`]),
//! read every `inbound.poll_ms`: `<data_dir>/dtn/in/` with the local sink, `in/` in the bucket
//! (under the sink's prefix) with the S3 sink. One algorithm for both.
//!
//! Each file is read with [`crate::dtc::reader`] against the running rule set's catalogue. A D0126
//! (the DNO's answer to an asset condition report) or a D0002 (a Supplier's decision or request)
//! addressed to a SIP (ZHV to-role = the SIP role, to-MPID = the client's SIP ID) is matched to
//! that SIP's accepted requests by MPAN, and by date where the request has one (D0126 J1825 report
//! date or D0002 J1012 date = the request's date of action): which flows, groups and items is rule
//! data, `flow-templates/incoming/` (see [`crate::rules::incoming`]). The meanings of code values (J1823)
//! are rule data: `flow-templates/code-lists/`.
//!
//! Files are taken in name order; names starting with `.` or ending `.tmp` or `.part` are left
//! alone (senders write under such a name and rename into place). The instance that takes a file
//! does not match it: it copies it (create-only) to `in/processed/`, or, if it does not read, to
//! `in/rejected/` with `<name>.why.txt` listing the findings; writes a ledger entry
//! `in/ledger/<time taken>-<instance>-<sha>.json` naming the copy; and only then deletes the
//! original (while its identity is unchanged). Every instance reads the ledger from a margin
//! before its stored position and matches each entry against its own requests: in a bucket
//! shared by several instances, each knowing only its own requests, every one of them sees every
//! file. Every step can be repeated after a crash or by a second instance: the copy is
//! create-only (the same bytes under a used name count as done; other bytes go to `<name>.1`,
//! `<name>.2`...), and files are recorded once by name and content. A name too long to take
//! those suffixes within a file name is shortened first (`moved_name`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use std::sync::Arc;

use crate::config::Config;
use crate::config::SinkKind;
use crate::dtc::reader::{Group, ParsedFlow};
use crate::metrics::Metrics;
use crate::rules::incoming::{CodeLists, Incoming, IncomingFlow};
use crate::rules::load::Live;
use crate::sink::{Got, Listing, ObjectStore, PutOutcome, Sink};
use crate::store::{InboundRecord, MpanEntry, Store, StoreError};

/// Larger files are rejected without being read into the reader.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Why a step of taking or recording an inbound file failed (it is retried at the next poll).
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{name}: no free name in {folder}")]
    NoFreeName { name: String, folder: String },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A ledger entry that cannot be written or does not hold.
    #[error("{0}")]
    Ledger(String),
}

/// What became of one inbound file in one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileOutcome {
    /// Matched to these requests.
    Matched(Vec<String>),
    /// Read cleanly but matched to no request, and why.
    Unmatched(String),
    /// Did not read; the findings.
    Rejected(Vec<String>),
}

/// The inbox poller.
pub(crate) struct Poller {
    /// The object store whose `in/` is read: the sink's, local folder or bucket.
    inbox: Sink,
    metrics: Arc<Metrics>,
    store: Store,
    rules: Live,
    sip_role: String,
    instance: String,
    /// Ledger entries read since their time fell within [`LEDGER_MARGIN_MS`] of the position.
    ledger_done: BTreeMap<String, u64>,
    /// Ledger entries that failed to read, and when they first failed.
    ledger_failing: BTreeMap<String, u64>,
    /// Files of the inbox (`name` + SHA-256) whose ledger entry this instance wrote but
    /// which are not yet deleted from `in/`: a retry does not write another entry.
    ledgered: BTreeMap<String, String>,
}

/// A file of the inbox as read: its bytes (`None`: too large to read) and identity.
struct Fetched {
    bytes: Option<Vec<u8>>,
    size: u64,
    etag: Option<String>,
}

/// A file read (or not: too large) and judged.
struct Examined {
    sha: String,
    read: Result<ParsedFlow, Vec<String>>,
}

fn examine(bytes: Option<&[u8]>, size: u64, catalogue: &crate::dtc::catalogue::Catalogue) -> Examined {
    match bytes {
        None => Examined { sha: format!("unread, {size} bytes"), read: Err(vec![format!("file: larger than {MAX_FILE_BYTES} bytes")]) },
        Some(bytes) => Examined {
            sha: Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect(),
            read: crate::dtc::reader::read(bytes, catalogue).map_err(|f| f.iter().map(ToString::to_string).collect()),
        },
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// `20261127T213728123Z`: a ledger time that sorts as text.
fn ledger_stamp(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}{:02}{:02}T{:02}{:02}{:02}{:03}Z", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second(), t.millisecond())
}

/// The time of a ledger entry from its name (`in/ledger/<stamp>-…`).
fn ledger_time(name: &str) -> Option<u64> {
    let stamp = name.strip_prefix(LEDGER)?.get(..19)?;
    let n = |r: std::ops::Range<usize>| stamp.get(r).and_then(|s| s.parse::<u32>().ok());
    let month = time::Month::try_from(u8::try_from(n(4..6)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(n(0..4)?).ok()?, month, u8::try_from(n(6..8)?).ok()?).ok()?;
    let hms = time::Time::from_hms_milli(
        u8::try_from(n(9..11)?).ok()?,
        u8::try_from(n(11..13)?).ok()?,
        u8::try_from(n(13..15)?).ok()?,
        u16::try_from(n(15..18)?).ok()?,
    )
    .ok()?;
    u64::try_from(date.with_time(hms).assume_utc().unix_timestamp_nanos() / 1_000_000).ok()
}

/// Incoming files: `in/<name>`; copied to `in/processed/` or `in/rejected/`, then deleted.
const INBOX: &str = "in/";
/// One small JSON object per file taken from the bucket's inbox, named by the time it was taken.
const LEDGER: &str = "in/ledger/";
/// Each poll reads the ledger again from this long before the last entry read: entries written
/// by other instances (whose clocks and listings lag) within it are still found.
const LEDGER_MARGIN_MS: u64 = 10 * 60 * 1000;
/// A ledger entry that keeps failing to read holds the position back this long, then is given up.
const LEDGER_GIVE_UP_MS: u64 = 60 * 60 * 1000;
/// Ledger entries are small; a larger object under `in/ledger/` is not one.
const LEDGER_ENTRY_MAX: u64 = 1024 * 1024;

fn skipped(name: &str) -> bool {
    // Senders write under a temporary name and rename into place.
    name.is_empty() || name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part")
}

impl Poller {
    /// A poller for `in/` in `inbox`, the sink's object store (`<data_dir>/dtn/in/`, or `in/`
    /// in the bucket). Which flows it reads, and how, is rule data: the running rule set's
    /// incoming flow descriptions and code lists.
    pub fn new(config: &Config, inbox: Sink, store: Store, rules: Live, metrics: Arc<Metrics>) -> Poller {
        if config.sink.kind == SinkKind::S3 {
            let folder = config.data_dir.join("dtn").join("in");
            let waiting =
                std::fs::read_dir(&folder).map(|rd| rd.filter_map(Result::ok).filter(|e| e.file_type().is_ok_and(|t| t.is_file())).count()).unwrap_or(0);
            if waiting > 0 {
                tracing::warn!(folder = %folder.display(), files = waiting, "files wait in the local inbox, which is not read with the S3 sink: put them under in/ in the bucket");
            }
        }
        Poller {
            inbox,
            store,
            rules,
            sip_role: config.flows.sender_role.clone(),
            instance: config.flows.instance_prefix.clone(),
            metrics,
            ledger_done: BTreeMap::new(),
            ledger_failing: BTreeMap::new(),
            ledgered: BTreeMap::new(),
        }
    }

    fn failed(&self) {
        self.metrics.inc("flowgate_inbound_errors_total", &[], 1.0);
    }

    fn where_(&self) -> String {
        self.inbox.location(INBOX)
    }

    /// Polls every `every` until `stop` fires.
    pub async fn run(mut self, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.poll_once().await {
                self.failed();
                tracing::error!(error = %e, inbox = %self.where_(), "cannot read the inbox");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Takes every file waiting in the inbox once, in name order, then reads the ledger: what
    /// this or any other instance took, matched against this instance's requests. The files the
    /// ledger gave this poll, with what became of each.
    pub(crate) async fn poll_once(&mut self) -> Result<Vec<(String, FileOutcome)>, InboundError> {
        let inbox = self.inbox.clone();
        // The ledger is read even when in/ cannot be: other instances may take its files.
        let taken = match self.take_all(&inbox).await {
            Ok(taken) => taken,
            Err(e) => {
                self.failed();
                tracing::error!(error = %e, inbox = %self.where_(), "cannot list the inbox");
                Vec::new()
            }
        };
        if self.store.is_shared() {
            // One store for every instance: the instance that takes a file matches it against
            // every request, so there is no ledger to read.
            return Ok(taken);
        }
        self.read_ledger(&inbox).await
    }

    /// Matches a judged file to this instance's requests and records the outcome durably, once
    /// per file name and content.
    async fn record(&self, name: &str, ex: &Examined, received_at: &str, ledger_ms: Option<u64>) -> Result<FileOutcome, InboundError> {
        let (outcome, incoming) = match &ex.read {
            Err(findings) => (FileOutcome::Rejected(findings.clone()), Vec::new()),
            Ok(flow) => {
                let set = self.rules.load_full();
                // The requests of each MPAN the file answers for, read before matching.
                let mut known: BTreeMap<String, Vec<crate::store::MpanEntry>> = BTreeMap::new();
                if let Some(described) = set.incoming.flow(&flow.header.flow) {
                    for answer in described.answers(flow) {
                        if !known.contains_key(answer.mpan) {
                            known.insert(answer.mpan.to_string(), self.store.requests_for_mpan(answer.mpan).await?);
                        }
                    }
                }
                match_flow(flow, name, received_at, &self.sip_role, &set.incoming, |m| Ok(known.get(m).cloned().unwrap_or_default()))?
            }
        };
        let flow_id = ex.read.as_ref().map(|f| f.header.flow.clone()).ok();
        let mut shown = match &outcome {
            FileOutcome::Matched(ids) => json!({ "outcome": "matched", "requests": ids }),
            FileOutcome::Unmatched(why) => json!({ "outcome": "unmatched", "reason": why }),
            FileOutcome::Rejected(findings) => json!({ "outcome": "rejected", "findings": findings }),
        };
        if let Some(obj) = shown.as_object_mut() {
            obj.insert("file".into(), json!(name));
            obj.insert("sha256".into(), json!(ex.sha));
            obj.insert("flow".into(), json!(flow_id));
            obj.insert("received_at".into(), json!(received_at));
        }
        // Keyed by name and content: another file under a used name is shown beside the first.
        let incoming = incoming.into_iter().map(|(id, summary)| (id, format!("{name}\u{1f}{}", ex.sha), summary)).collect();
        let seen_key = format!("{name}\u{1f}{}", ex.sha);
        let new = self.store.record_inbound(InboundRecord { seen_key, outcome: shown, incoming, ledger_ms }).await?;
        let flow = flow_id.as_deref().unwrap_or("-");
        if new {
            let label = match &outcome {
                FileOutcome::Matched(_) => "matched",
                FileOutcome::Unmatched(_) => "unmatched",
                FileOutcome::Rejected(_) => "rejected",
            };
            self.metrics.inc("flowgate_inbound_files_total", &[("outcome", label)], 1.0);
        }
        match &outcome {
            FileOutcome::Matched(ids) if new => tracing::info!(file = %name, flow, requests = ids.len(), "inbound flow matched"),
            FileOutcome::Unmatched(why) if new => tracing::info!(file = %name, flow, reason = %why, "inbound flow matched no request here"),
            _ => {}
        }
        Ok(outcome)
    }

    /// Takes every file waiting directly under `in/`: judged, copied (create-only) to
    /// `in/processed/` or `in/rejected/` (with a `.why.txt`), written to the ledger, and only
    /// then deleted from `in/` (while its entity tag is unchanged). Each step can be repeated:
    /// a crash or a second instance taking the same file ends with one copy, and the readers of
    /// the ledger record a file once by name and content.
    async fn take_all(&mut self, b: &Sink) -> Result<Vec<(String, FileOutcome)>, InboundError> {
        let listed = b.list(INBOX, Listing { shallow: true, after: None }).await?;
        let mut taken = Vec::new();
        for object in listed {
            let Some(name) = object.name.strip_prefix(INBOX).map(str::to_string) else { continue };
            if skipped(&name) {
                continue;
            }
            match self.take_object(b, &name).await {
                Ok(Some(outcome)) => taken.push((name, outcome)),
                Ok(None) => {}
                Err(e) => {
                    self.failed();
                    tracing::error!(file = %name, error = %e, "inbound object left in place; will retry");
                }
            }
        }
        Ok(taken)
    }

    /// Takes one file; with a shared store, what became of it (matched here, at once).
    async fn take_object(&mut self, b: &Sink, name: &str) -> Result<Option<FileOutcome>, InboundError> {
        let source = format!("{INBOX}{name}");
        let fetched = match b.get(&source, MAX_FILE_BYTES).await? {
            Got::Missing => return Ok(None), // taken meanwhile (by another instance)
            Got::Bytes { bytes, etag } => Fetched { size: bytes.len() as u64, bytes: Some(bytes), etag },
            Got::TooLarge { size, etag } => Fetched { bytes: None, size, etag },
        };
        let ex = examine(fetched.bytes.as_deref(), fetched.size, &self.rules.load_full().catalogue);
        let taken_at = now_rfc3339();
        let findings = ex.read.as_ref().err().cloned().unwrap_or_default();
        let folder = if ex.read.is_ok() { "processed" } else { "rejected" };
        let moved = moved_name(name);
        let stored = match &fetched.bytes {
            Some(bytes) => put_free(b, folder, &moved, bytes).await?,
            None => copy_free(b, &source, folder, &moved, &fetched).await?,
        };
        if !findings.is_empty() {
            let why = why_text(name, &taken_at, &findings);
            b.put(&format!("{INBOX}{folder}/{stored}.why.txt"), why.into_bytes()).await?;
            tracing::warn!(file = %name, moved_to = %stored, findings = findings.len(), "inbound file rejected");
        }
        let entry = json!({
            "file": name,
            "object": format!("{INBOX}{folder}/{stored}"),
            "sha256": ex.sha,
            "size": fetched.size,
            "outcome": folder,
            "findings": findings,
            "taken_by": self.instance,
            "taken_at": taken_at,
        });
        if self.store.is_shared() {
            // Recorded (once per name and content) before the file leaves in/: a crash between
            // the two takes it again and finds it recorded.
            let outcome = self.record(name, &ex, &taken_at, None).await?;
            b.delete(&source, fetched.etag.as_deref()).await?;
            return Ok(Some(outcome));
        }
        let taken = format!("{source}\u{1f}{}", ex.sha);
        if !self.ledgered.contains_key(&taken) {
            let key = format!("{LEDGER}{}-{}-{}.json", ledger_stamp(now_ms()), self.instance, ex.sha.get(..12).unwrap_or("unread"));
            let bytes = serde_json::to_vec_pretty(&entry)?;
            match b.put(&key, bytes).await? {
                PutOutcome::Created | PutOutcome::AlreadyThere => {}
                PutOutcome::Different(_) => return Err(InboundError::Ledger(format!("{key}: another ledger entry has this name; the file stays in in/"))),
            }
            self.ledgered.insert(taken.clone(), key);
        }
        b.delete(&source, fetched.etag.as_deref()).await?;
        self.ledgered.remove(&taken);
        Ok(None)
    }

    /// Reads the ledger from a margin before the last position, records each entry not read yet.
    /// The position never passes an entry that failed in this pass (until it has failed for
    /// [`LEDGER_GIVE_UP_MS`]), nor the present: a clock running ahead cannot make it skip others.
    async fn read_ledger(&mut self, b: &Sink) -> Result<Vec<(String, FileOutcome)>, InboundError> {
        let now = now_ms();
        let position = match self.store.meta(crate::store::LEDGER_POSITION).await? {
            Some(ms) => ms,
            // A new data dir has no requests older than now to match.
            None => now,
        };
        let from = position.saturating_sub(LEDGER_MARGIN_MS);
        self.ledger_done.retain(|_, t| *t >= from);
        let after = format!("{LEDGER}{}", ledger_stamp(from));
        let listed = b.list(LEDGER, Listing { shallow: true, after: Some(after) }).await?;
        let mut out = Vec::new();
        let mut hold = false;
        for object in listed {
            if self.ledger_done.contains_key(&object.name) {
                continue;
            }
            let Some(at) = ledger_time(&object.name) else {
                tracing::warn!(entry = %object.name, "not a ledger entry name; ignored");
                self.ledger_done.insert(object.name, u64::MAX);
                continue;
            };
            let advance = (!hold).then_some(at.min(now));
            match self.read_entry(b, &object.name, advance).await {
                Ok(taken) => {
                    self.ledger_failing.remove(&object.name);
                    self.ledger_done.insert(object.name, at);
                    out.extend(taken);
                }
                Err(e) => {
                    self.failed();
                    let since = *self.ledger_failing.entry(object.name.clone()).or_insert(now);
                    if now.saturating_sub(since) > LEDGER_GIVE_UP_MS {
                        tracing::error!(entry = %object.name, error = %e, "inbound ledger entry given up after failing for an hour; its file is not matched here");
                        self.ledger_failing.remove(&object.name);
                        self.ledger_done.insert(object.name, at);
                    } else {
                        tracing::error!(entry = %object.name, error = %e, "inbound ledger entry not read; will retry");
                        hold = true;
                    }
                }
            }
        }
        Ok(out)
    }

    /// One ledger entry: `None` if it was recorded before or is not one of ours (logged).
    async fn read_entry(&self, b: &Sink, key: &str, advance: Option<u64>) -> Result<Option<(String, FileOutcome)>, InboundError> {
        let not_ours = |why: &str| {
            tracing::warn!(entry = %key, why, "not a ledger entry flowgate wrote; ignored");
            Ok(None)
        };
        let bytes = match b.get(key, LEDGER_ENTRY_MAX).await? {
            Got::Missing => return Err(InboundError::Ledger("listed but not there".into())),
            Got::TooLarge { .. } => return not_ours("too large"),
            Got::Bytes { bytes, .. } => bytes,
        };
        let Ok(entry) = serde_json::from_slice::<LedgerEntry>(&bytes) else { return not_ours("not a ledger entry's JSON") };
        let folder_ok = match entry.outcome.as_str() {
            "processed" => entry.object.starts_with("in/processed/"),
            "rejected" => entry.object.starts_with("in/rejected/"),
            _ => false,
        };
        if !folder_ok || !entry.sha256.get(..12).is_some_and(|sha| key.ends_with(&format!("-{sha}.json"))) {
            return not_ours("its name, outcome and object do not agree");
        }
        let seen_key = format!("{}\u{1f}{}", entry.file, entry.sha256);
        if self.store.inbound_seen(&seen_key).await?.is_some() {
            if advance.is_some() {
                self.store.record_inbound(InboundRecord { seen_key, outcome: Value::Null, incoming: Vec::new(), ledger_ms: advance }).await?;
            }
            return Ok(None);
        }
        let ex = if entry.outcome == "processed" {
            let bytes = match b.get(&entry.object, MAX_FILE_BYTES).await? {
                Got::Bytes { bytes, .. } => bytes,
                Got::Missing | Got::TooLarge { .. } => return Err(InboundError::Ledger(format!("{}: named by {key} but not there", entry.object))),
            };
            let ex = examine(Some(&bytes), bytes.len() as u64, &self.rules.load_full().catalogue);
            if ex.sha != entry.sha256 {
                return Err(InboundError::Ledger(format!("{}: its SHA-256 is not the one {key} names", entry.object)));
            }
            ex
        } else {
            Examined { sha: entry.sha256.clone(), read: Err(entry.findings.clone()) }
        };
        let outcome = self.record(&entry.file, &ex, &entry.taken_at, advance).await?;
        Ok(Some((entry.file, outcome)))
    }
}

/// What the bucket's ledger holds for one file taken from `in/`.
#[derive(Debug, Deserialize)]
struct LedgerEntry {
    file: String,
    object: String,
    sha256: String,
    outcome: String,
    #[serde(default)]
    findings: Vec<String>,
    taken_at: String,
}

fn why_text(name: &str, at: &str, findings: &[String]) -> String {
    let mut why = format!("{name}: rejected at {at}\n");
    for f in findings {
        why.push_str(f);
        why.push('\n');
    }
    why
}

/// The most bytes a moved file's name may get after it: room for `.N` ([`candidates`]; as much
/// as a `.<ulid>` once took, so names stay what they were) and `.why.txt`.
const MOVED_SUFFIX_MAX: usize = 1 + 26 + ".why.txt".len();

/// The name a file taken from the inbox is moved or copied under: its own, unless it would leave
/// no room for [`MOVED_SUFFIX_MAX`] in a file name (a sender may use all 255 bytes of one, and a
/// bucket's names may be longer still); then cut and ended with its hash ([`crate::domain::names::fit`]).
/// The same on every instance, so a repeated copy of the same file finds the first. The file's
/// own name stays in its record, its ledger entry and its `.why.txt`.
fn moved_name(name: &str) -> String {
    crate::domain::names::fit(name, name, crate::domain::names::SEGMENT_MAX - MOVED_SUFFIX_MAX)
}

/// The names a moved file may take: `name`, then `name.1`, `name.2`...
fn candidates(name: &str) -> impl Iterator<Item = String> + '_ {
    std::iter::once(name.to_string()).chain((1..10_000u32).map(move |i| format!("{name}.{i}")))
}

/// Copies `bytes` to `in/<folder>/<name or name.N>`, create-only: the first name that is free or
/// already holds these bytes (a repeated attempt). Returns the name used.
async fn put_free(b: &impl ObjectStore, folder: &str, name: &str, bytes: &[u8]) -> Result<String, InboundError> {
    for candidate in candidates(name) {
        match b.put(&format!("{INBOX}{folder}/{candidate}"), bytes.to_vec()).await? {
            PutOutcome::Created | PutOutcome::AlreadyThere => return Ok(candidate),
            PutOutcome::Different(_) => {}
        }
    }
    Err(InboundError::NoFreeName { name: name.to_string(), folder: format!("{INBOX}{folder}/") })
}

/// The same for an object too large to read through: a server-side copy to the first free name,
/// or the name that already holds an object with the same entity tag and size.
async fn copy_free(b: &impl ObjectStore, source: &str, folder: &str, name: &str, fetched: &Fetched) -> Result<String, InboundError> {
    for candidate in candidates(name) {
        let target = format!("{INBOX}{folder}/{candidate}");
        // Twice: a copy refused with 412 was just made by someone else; look at it.
        for _ in 0..2 {
            match b.head(&target).await? {
                Some(there) if there.size == fetched.size && there.etag.is_some() && there.etag == fetched.etag => return Ok(candidate),
                Some(_) => break,
                None => {
                    if b.copy_if_absent(source, &target).await? {
                        return Ok(candidate);
                    }
                }
            }
        }
    }
    Err(InboundError::NoFreeName { name: name.to_string(), folder: format!("{INBOX}{folder}/") })
}

/// The requests a clean flow file belongs to, each with the summary shown on
/// `GET /v4/sip/{id}`; or why it belongs to none.
pub(crate) fn match_flow(
    flow: &ParsedFlow,
    file: &str,
    received_at: &str,
    sip_role: &str,
    incoming: &Incoming,
    requests_for: impl Fn(&str) -> Result<Vec<MpanEntry>, StoreError>,
) -> Result<(FileOutcome, Vec<(String, Value)>), StoreError> {
    let h = &flow.header;
    let Some(described) = incoming.flow(&h.flow) else {
        let why = format!("{} is not an incoming flow the gateway matches ({})", h.flow, incoming.names());
        return Ok((FileOutcome::Unmatched(why), Vec::new()));
    };
    if h.to_role != sip_role {
        return Ok((FileOutcome::Unmatched(format!("addressed to role {}, not the SIP role {sip_role}", h.to_role)), Vec::new()));
    }
    // One summary per request; further groups of the same file for it go under "also".
    let mut by_request: BTreeMap<String, Value> = BTreeMap::new();
    for answer in described.answers(flow) {
        for entry in requests_for(answer.mpan)? {
            if entry.sip_id != h.to_mpid {
                continue;
            }
            if !entry.date_of_action.is_empty() && answer.date.as_ref().is_some_and(|d| *d != entry.date_of_action) {
                continue;
            }
            let s = summary(flow, described, answer.group, file, received_at, &incoming.codes);
            match by_request.get_mut(&entry.request_id) {
                None => {
                    by_request.insert(entry.request_id, s);
                }
                Some(first) => {
                    if let Some(obj) = first.as_object_mut() {
                        match obj.get_mut("also") {
                            Some(Value::Array(also)) => also.push(s),
                            _ => {
                                obj.insert("also".into(), json!([s]));
                            }
                        }
                    }
                }
            }
        }
    }
    if by_request.is_empty() {
        let why = format!("no accepted request of SIP {} for the MPAN(s) and date(s) in the file", h.to_mpid);
        return Ok((FileOutcome::Unmatched(why), Vec::new()));
    }
    let ids = by_request.keys().cloned().collect();
    Ok((FileOutcome::Matched(ids), by_request.into_iter().collect()))
}

/// What `GET /v4/sip/{id}` shows of one answer of an incoming flow: what every incoming flow
/// shows, then what its description names.
fn summary(flow: &ParsedFlow, described: &IncomingFlow, g: &Group, file: &str, received_at: &str, codes: &CodeLists) -> Value {
    let h = &flow.header;
    let mut s = serde_json::Map::new();
    s.insert("flow".into(), json!(h.flow));
    s.insert("sender".into(), json!(format!("{}/{}", h.from_role, h.from_mpid)));
    s.insert("file".into(), json!(file));
    s.insert("file_id".into(), json!(h.file_id));
    s.insert("file_created".into(), json!(h.created));
    s.insert("received_at".into(), json!(received_at));
    s.insert("mpan".into(), json!(g.get("J0003")));
    s.extend(described.details(g, codes));
    Value::Object(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::dtc::catalogue::Catalogue;
    use std::path::{Path, PathBuf};

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn parse(text: &str) -> ParsedFlow {
        let cat = Catalogue::load(&repo().join("flow-templates/catalogue")).unwrap();
        crate::dtc::reader::read(text.as_bytes(), &cat).unwrap()
    }

    fn incoming() -> Incoming {
        let cat = Catalogue::load(&repo().join("flow-templates/catalogue")).unwrap();
        crate::rules::incoming::load(&repo(), &cat, |p: &Path| std::fs::read_to_string(p).map_err(|e| e.to_string())).unwrap()
    }

    fn entry(id: &str, sip: &str, date: &str) -> MpanEntry {
        MpanEntry { request_id: id.into(), sip_id: sip.into(), date_of_action: date.into() }
    }

    const D0126: &str = "ZHV|F000000001|D0126001|J|EMEB|M|DEMO|20250110093000||||TR01|\n\
        250|1129383838383|Fuse carrier replaced|Carrier was welded|\n\
        61H|20250108|B01|R|20250110|\n\
        ZPT|F000000001|2||1|20250110093000|\n";

    #[test]
    fn the_j1823_code_list_loads() {
        let codes = incoming().codes;
        for c in ["C", "R", "D", "U"] {
            assert!(codes.meaning("J1823", c).is_some(), "{c}");
        }
        assert_eq!(codes.meaning("J1823", "X"), None);
    }

    #[test]
    fn d0126_matches_by_sip_mpan_and_date() {
        let incoming_flows = incoming();
        let flow = parse(D0126);
        let lookup = |m: &str| {
            assert_eq!(m, "1129383838383");
            Ok(vec![entry("A", "DEMO", "2025-01-08"), entry("B", "DEMO", "2025-01-09"), entry("C", "OTHR", "2025-01-08"), entry("D", "DEMO", "")])
        };
        let (outcome, incoming) = match_flow(&flow, "f.usr", "now", "M", &incoming_flows, lookup).unwrap();
        assert_eq!(outcome, FileOutcome::Matched(vec!["A".into(), "D".into()]));
        let s = &incoming[0].1;
        assert_eq!(s["sender"], "J/EMEB");
        assert_eq!(s["clearance"]["code"], "R");
        assert!(s["clearance"]["meaning"].as_str().unwrap().contains("less serious"));
        assert_eq!(s["asset_condition_code"], "B01");
        assert_eq!(s["additional_information"][0], "Carrier was welded");
        assert_eq!(s["report_date"], "2025-01-08");
    }

    #[test]
    fn d0002_matches_by_fault_date_and_shows_its_texts() {
        let text = std::fs::read_to_string(repo().join("tests/reader/valid/D0002-supplier-decision.usr")).unwrap();
        let flow = parse(&text);
        let lookup = |_: &str| Ok(vec![entry("A", "DEMO", "2025-01-08"), entry("B", "DEMO", "2025-01-07")]);
        let (outcome, incoming) = match_flow(&flow, "d.usr", "now", "M", &incoming(), lookup).unwrap();
        assert_eq!(outcome, FileOutcome::Matched(vec!["A".into()]));
        let s = &incoming[0].1;
        assert_eq!(s["sender"], "X/TEST");
        assert_eq!(s["reason"], "Meter case cracked: replace meter and confirm readings");
        assert_eq!(s["additional_information"], json!(["Case cracked at the terminal cover", "Damage seen by the SIP engineer"]));
        assert_eq!(s["fault_date"], "2025-01-08");
    }

    #[test]
    fn other_roles_and_flows_do_not_match() {
        let flows = incoming();
        let flow = parse(&D0126.replace("|M|DEMO|", "|X|DEMO|"));
        let (outcome, _) = match_flow(&flow, "f", "now", "M", &flows, |_| Ok(vec![entry("A", "DEMO", "")])).unwrap();
        assert!(matches!(outcome, FileOutcome::Unmatched(_)));
        // A flow with no description is not matched, and the answer names the ones there are.
        let mut fewer = incoming();
        fewer.flows.remove("D0126");
        let (outcome, _) = match_flow(&parse(D0126), "f", "now", "M", &fewer, |_| Ok(vec![entry("A", "DEMO", "")])).unwrap();
        assert_eq!(outcome, FileOutcome::Unmatched("D0126 is not an incoming flow the gateway matches (D0002)".into()));
    }

    #[test]
    fn ledger_names_sort_by_time_and_read_back() {
        let ms = 1_795_815_448_123; // 2026-11-27T21:37:28.123Z
        assert_eq!(ledger_stamp(ms), "20261127T213728123Z");
        assert_eq!(ledger_time(&format!("{LEDGER}{}-A1-0123456789ab.json", ledger_stamp(ms))), Some(ms));
        assert!(ledger_stamp(ms - 1) < ledger_stamp(ms) && ledger_stamp(ms) < ledger_stamp(ms + 86_400_000));
        for bad in ["in/ledger/x.json", "in/ledger/20261327T213728123Z-A1.json", "in/other/20261127T213728123Z.json", "in/ledger/2026"] {
            assert_eq!(ledger_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn moved_names_are_tried_in_order() {
        let names: Vec<String> = candidates("a.usr").take(3).collect();
        assert_eq!(names, ["a.usr", "a.usr.1", "a.usr.2"]);
    }

    #[test]
    fn moved_names_leave_room_for_their_suffixes() {
        assert_eq!(moved_name("D0126_EM00000042.usr"), "D0126_EM00000042.usr");
        let kept = "a".repeat(crate::domain::names::SEGMENT_MAX - MOVED_SUFFIX_MAX);
        assert_eq!(moved_name(&kept), kept);
        for long in ["b".repeat(kept.len() + 1), "\u{e9}".repeat(127), "c".repeat(1000)] {
            let moved = moved_name(&long);
            assert!(moved.len() + MOVED_SUFFIX_MAX <= crate::domain::names::SEGMENT_MAX, "{moved}");
            assert_eq!(moved, moved_name(&long));
            assert_ne!(moved, moved_name(&format!("{long}x")));
        }
    }

    #[tokio::test]
    async fn copies_never_overwrite_and_the_same_bytes_count_as_done() {
        let dir = std::env::temp_dir().join(format!("flowgate-inbound-{}", ulid::Ulid::new()));
        let store = crate::sink::local::LocalSink::new(&dir);
        assert_eq!(put_free(&store, "processed", "a.usr", b"x").await.unwrap(), "a.usr");
        assert_eq!(put_free(&store, "processed", "a.usr", b"x").await.unwrap(), "a.usr", "a repeated copy finds the first");
        assert_eq!(put_free(&store, "processed", "a.usr", b"y").await.unwrap(), "a.usr.1");
        assert_eq!(put_free(&store, "processed", "a.usr", b"z").await.unwrap(), "a.usr.2");
        assert_eq!(std::fs::read(dir.join("in/processed/a.usr")).unwrap(), b"x");
        // Too large to read: copied whole, or found by its identity.
        store.put("in/big.usr", b"big".to_vec()).await.unwrap();
        let Got::TooLarge { size, etag } = store.get("in/big.usr", 1).await.unwrap() else { panic!("read past the bound") };
        let fetched = Fetched { bytes: None, size, etag };
        assert_eq!(copy_free(&store, "in/big.usr", "rejected", "big.usr", &fetched).await.unwrap(), "big.usr");
        assert_eq!(copy_free(&store, "in/big.usr", "rejected", "big.usr", &fetched).await.unwrap(), "big.usr");
        store.put("in/rejected/other.usr", b"other".to_vec()).await.unwrap();
        assert_eq!(copy_free(&store, "in/big.usr", "rejected", "other.usr", &fetched).await.unwrap(), "other.usr.1");
        assert_eq!(std::fs::read(dir.join("in/rejected/other.usr.1")).unwrap(), b"big");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
