//! Incoming flows: the DTN inbox (`<data_dir>/dtn/in/`) read every `inbound.poll_ms`.
//!
//! Each file is read with [`crate::reader`] against the running rule set's catalogue. A D0126
//! (the DNO's answer to an asset condition report) or a D0002 (a Supplier's decision or request)
//! addressed to a SIP (ZHV to-role = the SIP role, to-MPID = the client's SIP ID) is matched to
//! that SIP's accepted requests by MPAN, and by date where the request has one (D0126 J1825 report
//! date or D0002 J1012 date = the request's date of action). What became of the file is recorded
//! durably first (once per name and content), then the file is moved: to `in/processed/`, or,
//! if it does not read, to `in/rejected/` with `<name>.why.txt` listing the findings. Nothing is
//! deleted. The meanings of code values (J1823) are rule data: `flow-templates/code-lists/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::reader::{iso_date, Group, ParsedFlow};
use crate::ruleset::Live;
use crate::store::{InboundRecord, MpanEntry, Store, StoreError};

/// Larger files are rejected without being read into the reader.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The folder of code lists, under the rules folder.
pub const CODE_LISTS_DIR: &str = "flow-templates/code-lists";

/// One code list file: a data item and the meaning of each of its values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeList {
    pub item: String,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub source: Option<String>,
    pub codes: BTreeMap<String, String>,
}

/// The code lists by data item (`J1823`).
#[derive(Debug, Clone, Default)]
pub struct CodeLists(BTreeMap<String, CodeList>);

impl CodeLists {
    /// Loads every `*.yaml` under `dir`; a missing folder is no code lists.
    pub fn load(dir: &Path) -> Result<CodeLists, String> {
        let mut lists = BTreeMap::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CodeLists::default()),
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "yaml")).collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let list: CodeList = serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            if lists.contains_key(&list.item) {
                return Err(format!("{}: a second code list for {}", path.display(), list.item));
            }
            lists.insert(list.item.clone(), list);
        }
        Ok(CodeLists(lists))
    }

    /// The meaning of `code` for `item`, if the list has it.
    pub fn meaning(&self, item: &str, code: &str) -> Option<&str> {
        self.0.get(item)?.codes.get(code).map(String::as_str)
    }
}

/// What became of one inbound file in one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Matched to these requests.
    Matched(Vec<String>),
    /// Read cleanly but matched to no request, and why.
    Unmatched(String),
    /// Did not read; the findings.
    Rejected(Vec<String>),
}

/// The inbox poller.
pub struct Poller {
    inbox: PathBuf,
    store: Store,
    rules: Live,
    sip_role: String,
    codes_dir: PathBuf,
    codes: CodeLists,
    codes_error: Option<String>,
}

impl Poller {
    /// A poller for `<data_dir>/dtn/in/`; fails if the code lists do not load.
    pub fn new(config: &Config, store: Store, rules: Live) -> Result<Poller, String> {
        let codes_dir = config.rules_dir.join(CODE_LISTS_DIR);
        let codes = CodeLists::load(&codes_dir)?;
        Ok(Poller { inbox: config.data_dir.join("dtn").join("in"), store, rules, sip_role: config.flows.sender_role.clone(), codes_dir, codes, codes_error: None })
    }

    /// Polls every `every` until `stop` fires.
    pub async fn run(mut self, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.poll_once().await {
                tracing::error!(error = %e, inbox = %self.inbox.display(), "cannot read the inbox");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Reads every file waiting in the inbox once, in name order.
    pub async fn poll_once(&mut self) -> Result<Vec<(String, FileOutcome)>, String> {
        self.reload_codes();
        let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
        for dir in [self.inbox.join("processed"), self.inbox.join("rejected")] {
            tokio::fs::create_dir_all(&dir).await.map_err(|e| err(&dir, e))?;
        }
        let mut names = Vec::new();
        let mut rd = tokio::fs::read_dir(&self.inbox).await.map_err(|e| err(&self.inbox, e))?;
        while let Some(entry) = rd.next_entry().await.map_err(|e| err(&self.inbox, e))? {
            let Ok(name) = entry.file_name().into_string() else {
                tracing::warn!(file = ?entry.file_name(), "inbound file name is not UTF-8; left in place");
                continue;
            };
            // Senders write under a temporary name and rename into place.
            if name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part") {
                continue;
            }
            if entry.file_type().await.is_ok_and(|t| t.is_file()) {
                names.push(name);
            }
        }
        names.sort();
        let mut out = Vec::new();
        for name in names {
            match self.take(&name).await {
                Ok(outcome) => out.push((name, outcome)),
                Err(e) => tracing::error!(file = %name, error = %e, "inbound file left in place; will retry"),
            }
        }
        Ok(out)
    }

    fn reload_codes(&mut self) {
        match CodeLists::load(&self.codes_dir) {
            Ok(c) => {
                self.codes = c;
                self.codes_error = None;
            }
            Err(e) => {
                if self.codes_error.as_ref() != Some(&e) {
                    tracing::error!(error = %e, "code lists refused; the previous ones stay");
                }
                self.codes_error = Some(e);
            }
        }
    }

    /// One file: read, match, record, move.
    async fn take(&self, name: &str) -> Result<FileOutcome, String> {
        let path = self.inbox.join(name);
        let size = tokio::fs::metadata(&path).await.map_err(|e| e.to_string())?.len();
        let bytes = if size > MAX_FILE_BYTES { Vec::new() } else { tokio::fs::read(&path).await.map_err(|e| e.to_string())? };
        let sha: String = if size > MAX_FILE_BYTES { format!("unread, {size} bytes") } else { Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect() };
        let seen_key = format!("{name}\u{1f}{sha}");
        let received_at = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let set = self.rules.load_full();
        let read = if size > MAX_FILE_BYTES {
            Err(vec![format!("file: larger than {MAX_FILE_BYTES} bytes")])
        } else {
            crate::reader::read(&bytes, &set.catalogue).map_err(|f| f.iter().map(ToString::to_string).collect())
        };
        let (outcome, incoming) = match &read {
            Err(findings) => (FileOutcome::Rejected(findings.clone()), Vec::new()),
            Ok(flow) => match_flow(flow, name, &received_at, &self.sip_role, &self.codes, |m| self.store.requests_for_mpan(m)).map_err(|e| e.to_string())?,
        };
        let flow_id = read.as_ref().map(|f| f.header.flow.clone()).ok();
        let mut shown = match &outcome {
            FileOutcome::Matched(ids) => json!({ "outcome": "matched", "requests": ids }),
            FileOutcome::Unmatched(why) => json!({ "outcome": "unmatched", "reason": why }),
            FileOutcome::Rejected(findings) => json!({ "outcome": "rejected", "findings": findings }),
        };
        if let Some(obj) = shown.as_object_mut() {
            obj.insert("file".into(), json!(name));
            obj.insert("sha256".into(), json!(sha));
            obj.insert("flow".into(), json!(flow_id));
            obj.insert("received_at".into(), json!(received_at));
        }
        let incoming = incoming.into_iter().map(|(id, summary)| (id, name.to_string(), summary)).collect();
        let new = self.store.record_inbound(InboundRecord { seen_key, outcome: shown, incoming }).await.map_err(|e| e.to_string())?;
        match &outcome {
            FileOutcome::Rejected(findings) => {
                let dir = self.inbox.join("rejected");
                let target = free_name(&dir, name);
                let mut why = format!("{name}: rejected at {received_at}\n");
                for f in findings {
                    why.push_str(f);
                    why.push('\n');
                }
                tokio::fs::write(dir.join(format!("{target}.why.txt")), why).await.map_err(|e| e.to_string())?;
                tokio::fs::rename(&path, dir.join(&target)).await.map_err(|e| e.to_string())?;
                tracing::warn!(file = %name, moved_to = %target, findings = findings.len(), new, "inbound file rejected");
            }
            other => {
                let dir = self.inbox.join("processed");
                let target = free_name(&dir, name);
                tokio::fs::rename(&path, dir.join(&target)).await.map_err(|e| e.to_string())?;
                match other {
                    FileOutcome::Matched(ids) => tracing::info!(file = %name, flow = flow_id.as_deref().unwrap_or("-"), requests = ids.len(), new, "inbound flow matched"),
                    FileOutcome::Unmatched(why) => tracing::warn!(file = %name, flow = flow_id.as_deref().unwrap_or("-"), reason = %why, new, "inbound flow matched no request"),
                    FileOutcome::Rejected(_) => {}
                }
            }
        }
        Ok(outcome)
    }
}

/// `name`, or `name.1`, `name.2`... whichever is not yet in `dir` (a move never overwrites).
fn free_name(dir: &Path, name: &str) -> String {
    if !dir.join(name).exists() {
        return name.to_string();
    }
    (1..10_000u32).map(|i| format!("{name}.{i}")).find(|n| !dir.join(n).exists()).unwrap_or_else(|| format!("{name}.{}", ulid::Ulid::new()))
}

/// The requests a clean flow file belongs to, each with the summary shown on
/// `GET /v4/sip/{id}`; or why it belongs to none.
pub fn match_flow(
    flow: &ParsedFlow,
    file: &str,
    received_at: &str,
    sip_role: &str,
    codes: &CodeLists,
    requests_for: impl Fn(&str) -> Result<Vec<MpanEntry>, StoreError>,
) -> Result<(FileOutcome, Vec<(String, Value)>), StoreError> {
    let h = &flow.header;
    if !matches!(h.flow.as_str(), "D0126" | "D0002") {
        return Ok((FileOutcome::Unmatched(format!("{} is not an incoming flow the gateway matches (D0126, D0002)", h.flow)), Vec::new()));
    }
    if h.to_role != sip_role {
        return Ok((FileOutcome::Unmatched(format!("addressed to role {}, not the SIP role {sip_role}", h.to_role)), Vec::new()));
    }
    // One summary per request; further groups of the same file for it go under "also".
    let mut by_request: BTreeMap<String, Value> = BTreeMap::new();
    for g in &flow.groups {
        let Some(mpan) = g.get("J0003") else { continue };
        let date = match h.flow.as_str() {
            "D0126" => g.descendants("61H").next().and_then(|r| r.get("J1825")),
            _ => g.get("J1012"),
        }
        .and_then(iso_date);
        for entry in requests_for(mpan)? {
            if entry.sip_id != h.to_mpid {
                continue;
            }
            if !entry.date_of_action.is_empty() && date.as_ref().is_some_and(|d| *d != entry.date_of_action) {
                continue;
            }
            let s = summary(flow, g, file, received_at, codes);
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

/// What `GET /v4/sip/{id}` shows of one top-level group of an incoming flow.
fn summary(flow: &ParsedFlow, g: &Group, file: &str, received_at: &str, codes: &CodeLists) -> Value {
    let h = &flow.header;
    let date = |v: Option<&str>| v.and_then(iso_date);
    let mut s = json!({
        "flow": h.flow,
        "sender": format!("{}/{}", h.from_role, h.from_mpid),
        "file": file,
        "file_id": h.file_id,
        "file_created": h.created,
        "received_at": received_at,
        "mpan": g.get("J0003"),
    });
    let details = match h.flow.as_str() {
        "D0126" => {
            let r = g.descendants("61H").next();
            let item = |i: &str| r.and_then(|r| r.get(i));
            let clearance = item("J1823");
            json!({
                "report_date": date(item("J1825")),
                "asset_condition_code": item("J1824"),
                "clearance": {
                    "code": clearance,
                    "meaning": clearance.and_then(|c| codes.meaning("J1823", c)),
                },
                "clearance_date": date(item("J1822")),
                "nature_of_maintenance": g.get("J0008"),
                "additional_information": g.get("J0012").into_iter().collect::<Vec<_>>(),
            })
        }
        _ => {
            let texts: Vec<&str> = g.children.iter().filter_map(|c| c.get("J0012")).collect();
            json!({
                "fault_date": date(g.get("J1012")),
                "reason": g.get("J0173"),
                "meters": g.descendants("005").filter_map(|m| m.get("J0004")).collect::<Vec<_>>(),
                "site_visit_checks": g.descendants("760").filter_map(|m| m.get("J0024")).collect::<Vec<_>>(),
                "additional_information": texts,
            })
        }
    };
    if let (Some(obj), Value::Object(more)) = (s.as_object_mut(), details) {
        obj.extend(more);
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::flows::Catalogue;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn parse(text: &str) -> ParsedFlow {
        let cat = Catalogue::load(&repo().join("flow-templates/catalogue")).unwrap();
        crate::reader::read(text.as_bytes(), &cat).unwrap()
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
        let codes = CodeLists::load(&repo().join(CODE_LISTS_DIR)).unwrap();
        for c in ["C", "R", "D", "U"] {
            assert!(codes.meaning("J1823", c).is_some(), "{c}");
        }
        assert_eq!(codes.meaning("J1823", "X"), None);
    }

    #[test]
    fn d0126_matches_by_sip_mpan_and_date() {
        let codes = CodeLists::load(&repo().join(CODE_LISTS_DIR)).unwrap();
        let flow = parse(D0126);
        let lookup = |m: &str| {
            assert_eq!(m, "1129383838383");
            Ok(vec![entry("A", "DEMO", "2025-01-08"), entry("B", "DEMO", "2025-01-09"), entry("C", "OTHR", "2025-01-08"), entry("D", "DEMO", "")])
        };
        let (outcome, incoming) = match_flow(&flow, "f.usr", "now", "M", &codes, lookup).unwrap();
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
        let (outcome, incoming) = match_flow(&flow, "d.usr", "now", "M", &CodeLists::default(), lookup).unwrap();
        assert_eq!(outcome, FileOutcome::Matched(vec!["A".into()]));
        let s = &incoming[0].1;
        assert_eq!(s["sender"], "X/TEST");
        assert_eq!(s["reason"], "Meter case cracked: replace meter and confirm readings");
        assert_eq!(s["additional_information"], json!(["Case cracked at the terminal cover", "Damage seen by the SIP engineer"]));
        assert_eq!(s["fault_date"], "2025-01-08");
    }

    #[test]
    fn other_roles_and_flows_do_not_match() {
        let codes = CodeLists::default();
        let flow = parse(&D0126.replace("|M|DEMO|", "|X|DEMO|"));
        let (outcome, _) = match_flow(&flow, "f", "now", "M", &codes, |_| Ok(vec![entry("A", "DEMO", "")])).unwrap();
        assert!(matches!(outcome, FileOutcome::Unmatched(_)));
    }

    #[test]
    fn moves_never_overwrite() {
        let dir = std::env::temp_dir().join(format!("flowgate-inbound-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(free_name(&dir, "a.usr"), "a.usr");
        std::fs::write(dir.join("a.usr"), "x").unwrap();
        assert_eq!(free_name(&dir, "a.usr"), "a.usr.1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
