//! Golden cases: one folder per case with `request.json`, `expect.json` and, for accepted
//! cases, the expected flow files in `flows/`. The same runner serves `flowgate test` and the
//! project's test suite.
//!
//! `expect.json`: `{"status": 200, "scenario": "S01", "flows": ["D0396>X/TEST"]}` or
//! `{"status": 400, "pointers": [...], "rules": [...]}`; optional `warnings` (rule ids; absent
//! means none), `rules` (the rule ids or schema keywords of a 400's errors), `sip_id` (the
//! sender, default `DEMO`) and `covers` (what the case is for). Flow files are written with a
//! fixed clock ([`GOLDEN_NOW`]) and file ids `GT00000001`, `GT00000002`... in the order the flows
//! are chosen, and compared byte for byte; `flows/<flow>_<role><mpid>.usr`.
//!
//! A case also tells which rules, scenario, flow choices and template groups its expected
//! answer pins ([`CaseResult::pinned`]); [`Coverage`] adds them up over a folder of cases.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use time::OffsetDateTime;

use crate::domain::auth::Client;
use crate::domain::clock::Clock;
use crate::domain::finding::Finding;
use crate::rules::decide::{decide, Accepted, Explain, Fired, Verdict};
use crate::rules::engine::{Level, RuleFailure};
use crate::rules::set::RuleSet;

/// The instant golden flow files are written at.
pub(crate) const GOLDEN_NOW: &str = "2025-12-31T12:00:00Z";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub status: u16,
    #[serde(default)]
    pub scenario: Option<String>,
    #[serde(default)]
    pub flows: Option<Vec<String>>,
    #[serde(default)]
    pub pointers: Option<Vec<String>>,
    #[serde(default)]
    pub rules: Option<Vec<String>>,
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
    #[serde(default)]
    pub sip_id: Option<String>,
    #[serde(default)]
    pub covers: Option<String>,
}

/// Why a case does not pass: what the case could not read, or where the answer differs from
/// what `expect.json` and `flows/` say (`flows/<name>` files named by their file name).
#[derive(Debug, thiserror::Error)]
pub enum CaseFailure {
    #[error("request.json: {0}")]
    ReadRequest(#[source] std::io::Error),
    #[error("expect.json: {0}")]
    ReadExpect(#[source] std::io::Error),
    #[error("expect.json: {0}")]
    ParseExpect(#[source] serde_json::Error),
    /// A sample's `expect.json` leaves part of the answer unpinned (`lacks`: what it should hold).
    #[error("a sample must pin its whole answer: expect.json lacks {lacks}")]
    NotWhole { lacks: &'static str },
    #[error("bad golden clock")]
    GoldenClock,
    #[error("status 500: {0}")]
    RuleFailed(#[source] RuleFailure),
    /// A 400 where `want` was expected: its findings.
    #[error("status 400, want {want}: {}", listed(.findings))]
    Rejected { want: u16, findings: Vec<Finding> },
    #[error("pointers {got:?}, want {want:?}; found: {}", detail(.findings))]
    Pointers { got: BTreeSet<String>, want: BTreeSet<String>, findings: Vec<Finding> },
    #[error("rules {got:?}, want {want:?}; found: {}", detail(.findings))]
    Rules { got: BTreeSet<String>, want: BTreeSet<String>, findings: Vec<Finding> },
    #[error("status 200 (scenario {scenario}), want {want}")]
    Accepted { want: u16, scenario: String },
    #[error("scenario {got}, want {want}")]
    Scenario { got: String, want: String },
    #[error("flows {got:?}, want {want:?}")]
    Flows { got: Vec<String>, want: Vec<String> },
    #[error("warnings {got:?}, want {want:?}")]
    Warnings { got: Vec<String>, want: Vec<String> },
    /// `--bless` could not write the expected flow files.
    #[error("{source}")]
    Bless { path: PathBuf, source: std::io::Error },
    #[error("flows/{file} differs:\n{}", diff(.want, .got))]
    FlowDiffers { file: String, want: String, got: String },
    #[error("flows/{file} is missing (run `flowgate test --bless` after checking the output)")]
    FlowMissing { file: String },
    #[error("flows/ holds {expected} files, the case wrote {wrote}")]
    FlowCount { expected: usize, wrote: usize },
}

/// A 400's findings in one line, for a case that expected another status.
fn listed(findings: &[Finding]) -> String {
    findings.iter().map(|e| format!("{} ({}: {})", e.pointer, e.rule, e.message)).collect::<Vec<_>>().join("; ")
}

/// A 400's findings in one line, for a case whose pointers or rules differ.
fn detail(findings: &[Finding]) -> String {
    findings.iter().map(|e| format!("{} [{}] {}", e.pointer, e.rule, e.message)).collect::<Vec<_>>().join("; ")
}

/// One case's result: `Ok` or what differs.
pub struct CaseResult {
    pub name: String,
    pub failure: Option<CaseFailure>,
    /// The flow files written (name, content), for catalogue checks.
    pub files: Vec<(String, String)>,
    /// What fired and is checked by the expected answer: a rule whose finding is in a 400 (or a
    /// warning in a 200), the scenario and flow choices of a 200 that names them, the template
    /// groups of flow files compared byte for byte. What fired unseen proves nothing.
    pub pinned: Fired,
    /// How long the case took, for the JUnit report.
    pub elapsed: Duration,
}

/// Every case folder under `dir` (those holding `request.json`), sorted.
pub fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> =
        std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok).map(|e| e.path()).filter(|p| p.join("request.json").is_file()).collect();
    out.sort();
    out
}

/// How much of the answer a case's `expect.json` must pin.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// Golden cases: what `expect.json` leaves out is not compared.
    AsWritten,
    /// Rule samples: the whole answer (scenario and flows with their files for a 200, pointers
    /// and rule ids for a 400), or a sample could pass while a rule it exercises is cut short.
    Whole,
}

/// Runs one case against a rule set. `bless` rewrites the expected flow files.
pub fn run_case(set: &RuleSet, dir: &Path, bless: bool) -> CaseResult {
    run(set, dir, bless, Strictness::AsWritten)
}

/// Runs one sample of the reload gate: as [`run_case`], but its `expect.json` must pin the whole
/// answer (`scenario`, `flows` and the `flows/` files for a 200; `pointers` and `rules` for a 400).
pub(crate) fn run_sample(set: &RuleSet, dir: &Path) -> CaseResult {
    run(set, dir, false, Strictness::Whole)
}

fn run(set: &RuleSet, dir: &Path, bless: bool, strictness: Strictness) -> CaseResult {
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let started = Instant::now();
    let mut result = CaseResult { name, failure: None, files: vec![], pinned: Fired::default(), elapsed: Duration::ZERO };
    match check(set, dir, bless, strictness, &mut result.files, &mut result.pinned) {
        Ok(()) => {}
        Err(e) => {
            result.failure = Some(e);
            result.pinned = Fired::default();
        }
    }
    result.elapsed = started.elapsed();
    result
}

fn check(set: &RuleSet, dir: &Path, bless: bool, strictness: Strictness, files: &mut Vec<(String, String)>, pinned: &mut Fired) -> Result<(), CaseFailure> {
    let body = std::fs::read(dir.join("request.json")).map_err(CaseFailure::ReadRequest)?;
    let expect_text = std::fs::read_to_string(dir.join("expect.json")).map_err(CaseFailure::ReadExpect)?;
    let expect: Expect = serde_json::from_str(&expect_text).map_err(CaseFailure::ParseExpect)?;
    let flows_dir = dir.join("flows");
    if strictness == Strictness::Whole {
        require_whole(&expect, &flows_dir)?;
    }
    let client = Client {
        name: "golden".into(),
        sip_id: expect.sip_id.clone().unwrap_or_else(|| "DEMO".into()),
        key_id: "golden".into(),
        key_sha256: String::new(),
        rate: Default::default(),
        revoked: false,
    };
    let now = crate::domain::clock::parse_rfc3339(GOLDEN_NOW).ok_or(CaseFailure::GoldenClock)?;
    let decision = decide(set, &client, &body, Clock::Fixed(now), Explain::Fired);
    let fired = decision.fired;
    match decision.verdict {
        Verdict::Failed(f) => Err(CaseFailure::RuleFailed(f)),
        Verdict::Rejected(errors) => {
            check_rejected(&expect, errors)?;
            // A 400 shows its errors only: a warning that fired is not in the answer.
            pinned.rules = fired.rules.into_iter().filter(|&i| set.rules.rules.get(i).is_some_and(|r| r.def.level == Level::Error)).collect();
            Ok(())
        }
        Verdict::Accepted(a) => {
            check_accepted(&expect, &a)?;
            // Without a flows/ folder the files are not compared byte for byte.
            let compare = bless || flows_dir.is_dir();
            *files = check_files(set, &a, now, &flows_dir, bless, compare)?;
            pinned.rules = fired.rules;
            if expect.scenario.is_some() {
                pinned.scenario = fired.scenario;
            }
            if expect.flows.is_some() {
                pinned.flows = fired.flows;
                if compare {
                    pinned.groups = fired.groups;
                }
            }
            Ok(())
        }
    }
}

/// A sample's `expect.json` must pin the whole answer.
fn require_whole(expect: &Expect, flows_dir: &Path) -> Result<(), CaseFailure> {
    let missing = match expect.status {
        200 if expect.scenario.is_none() || expect.flows.is_none() => Some("`scenario` and `flows`"),
        200 if expect.flows.as_ref().is_some_and(|f| !f.is_empty()) && !flows_dir.is_dir() => Some("its flow files in flows/"),
        400 if expect.pointers.is_none() || expect.rules.is_none() => Some("`pointers` and `rules`"),
        200 | 400 => None,
        _ => Some("status 200 or 400"),
    };
    match missing {
        Some(lacks) => Err(CaseFailure::NotWhole { lacks }),
        None => Ok(()),
    }
}

/// A 400: the status, the pointers blamed and, when given, the rules that blamed them.
fn check_rejected(expect: &Expect, errors: Vec<Finding>) -> Result<(), CaseFailure> {
    if expect.status != 400 {
        return Err(CaseFailure::Rejected { want: expect.status, findings: errors });
    }
    let got: BTreeSet<String> = errors.iter().map(|e| e.pointer.clone()).collect();
    let want: BTreeSet<String> = expect.pointers.clone().unwrap_or_default().into_iter().collect();
    if got != want {
        return Err(CaseFailure::Pointers { got, want, findings: errors });
    }
    // Two rules may blame the same field: the pointers alone do not tell which fired.
    if let Some(want) = &expect.rules {
        let got: BTreeSet<String> = errors.iter().map(|e| e.rule.clone()).collect();
        let want: BTreeSet<String> = want.iter().cloned().collect();
        if got != want {
            return Err(CaseFailure::Rules { got, want, findings: errors });
        }
    }
    Ok(())
}

/// A 200: the status, the scenario and flow choices when given, and the warnings.
fn check_accepted(expect: &Expect, a: &Accepted) -> Result<(), CaseFailure> {
    if expect.status != 200 {
        return Err(CaseFailure::Accepted { want: expect.status, scenario: a.scenario.clone() });
    }
    if let Some(s) = &expect.scenario {
        if *s != a.scenario {
            return Err(CaseFailure::Scenario { got: a.scenario.clone(), want: s.clone() });
        }
    }
    let mut got: Vec<String> = a.flows.iter().map(|f| format!("{}>{}", f.flow, f.to_label())).collect();
    got.sort();
    if let Some(want) = &expect.flows {
        if got != *want {
            return Err(CaseFailure::Flows { got, want: want.clone() });
        }
    }
    // No `warnings` means none is expected (the format says so).
    let mut w: Vec<String> = a.warnings.iter().map(|w| w.rule.clone()).collect();
    w.sort();
    let mut want = expect.warnings.clone().unwrap_or_default();
    want.sort();
    if w != want {
        return Err(CaseFailure::Warnings { got: w, want });
    }
    Ok(())
}

/// A 200's flow files, written with the golden clock and file ids: compared byte for byte with
/// `flows/` when `compare`, or written there when `bless`. Returns them (name, content).
fn check_files(set: &RuleSet, a: &Accepted, now: OffsetDateTime, flows_dir: &Path, bless: bool, compare: bool) -> Result<Vec<(String, String)>, CaseFailure> {
    let mut files = Vec::new();
    for (i, f) in a.flows.iter().enumerate() {
        let file_id = format!("GT{:08}", i + 1);
        let content = f.finish(&file_id, now, &set.envelope);
        let fname = format!("{}_{}{}.usr", f.flow, f.to_role, f.to_mpid);
        files.push((fname.clone(), content.clone()));
        let path = flows_dir.join(&fname);
        if bless {
            std::fs::create_dir_all(flows_dir).map_err(|source| CaseFailure::Bless { path: flows_dir.to_path_buf(), source })?;
            std::fs::write(&path, &content).map_err(|source| CaseFailure::Bless { path: path.clone(), source })?;
            continue;
        }
        if !compare {
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(want) if want == content => {}
            Ok(want) => return Err(CaseFailure::FlowDiffers { file: fname, want, got: content }),
            Err(_) => return Err(CaseFailure::FlowMissing { file: fname }),
        }
    }
    if !bless && flows_dir.is_dir() {
        let expected = std::fs::read_dir(flows_dir).map(|rd| rd.filter_map(Result::ok).count()).unwrap_or(0);
        if expected != a.flows.len() {
            return Err(CaseFailure::FlowCount { expected, wrote: a.flows.len() });
        }
    }
    Ok(files)
}

/// Which rules, scenarios, flow choices and optional template groups (those written only when
/// their `when` holds or their `repeat` gives elements) a set of cases pins, out of a rule set's.
#[derive(Debug, Clone, Default)]
pub struct Coverage {
    rules: Vec<(String, bool)>,
    scenarios: Vec<(String, bool)>,
    flows: Vec<(String, bool)>,
    /// (flow, group index in its template, `flow path`, covered)
    groups: Vec<(String, usize, String, bool)>,
}

impl Coverage {
    /// Nothing covered yet, out of everything `set` holds.
    pub fn new(set: &RuleSet) -> Coverage {
        let mut templates: Vec<_> = set.templates.values().collect();
        templates.sort_by(|a, b| a.flow.cmp(&b.flow));
        let groups = templates
            .iter()
            .flat_map(|t| t.groups.iter().enumerate().filter(|(_, g)| g.optional).map(|(i, g)| (t.flow.clone(), i, format!("{} {}", t.flow, g.path), false)))
            .collect();
        Coverage {
            rules: set.rules.rules.iter().map(|r| (r.def.id.clone(), false)).collect(),
            scenarios: set.rules.scenarios.iter().map(|s| (s.id.clone(), false)).collect(),
            flows: set.rules.flows.iter().map(|f| (f.def.id.clone(), false)).collect(),
            groups,
        }
    }

    /// Counts what one case pinned.
    pub fn add(&mut self, pinned: &Fired) {
        let mark = |list: &mut Vec<(String, bool)>, i: usize| {
            if let Some(entry) = list.get_mut(i) {
                entry.1 = true;
            }
        };
        for &i in &pinned.rules {
            mark(&mut self.rules, i);
        }
        if let Some(i) = pinned.scenario {
            mark(&mut self.scenarios, i);
        }
        for &i in &pinned.flows {
            mark(&mut self.flows, i);
        }
        for (flow, i) in &pinned.groups {
            if let Some(entry) = self.groups.iter_mut().find(|g| g.0 == *flow && g.1 == *i) {
                entry.3 = true;
            }
        }
    }

    /// `rules 21/21, scenarios 8/8, flow choices 5/5, optional groups 4/4`.
    pub fn summary(&self) -> String {
        let count = |covered: usize, of: usize| format!("{covered}/{of}");
        let n = |list: &[(String, bool)]| count(list.iter().filter(|e| e.1).count(), list.len());
        format!(
            "rules {}, scenarios {}, flow choices {}, optional groups {}",
            n(&self.rules),
            n(&self.scenarios),
            n(&self.flows),
            count(self.groups.iter().filter(|g| g.3).count(), self.groups.len())
        )
    }

    /// What no case pins, each named: `rule mpan-check-digit`, `scenario S05`, `flow choice
    /// d0002-fault-resolution-report`, `optional group D0139 261/262`.
    pub fn uncovered(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, list) in [("rule", &self.rules), ("scenario", &self.scenarios), ("flow choice", &self.flows)] {
            out.extend(list.iter().filter(|e| !e.1).map(|e| format!("{kind} {}", e.0)));
        }
        out.extend(self.groups.iter().filter(|g| !g.3).map(|g| format!("optional group {}", g.2)));
        out
    }
}

/// A line diff of two small files.
fn diff(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let mut out = String::new();
    for i in 0..w.len().max(g.len()) {
        let (a, b) = (w.get(i).copied().unwrap_or(""), g.get(i).copied().unwrap_or(""));
        if a != b {
            out.push_str(&format!("  line {}:\n    want {a}\n    got  {b}\n", i + 1));
        }
    }
    out
}

/// JUnit XML for a run, in the shape CI tools read (the common JUnit schema of Ant and Jenkins): a
/// `testsuites` root holding one `testsuite`, each with `tests`, `failures`, `errors` and `time`;
/// a `testcase` per case with `name`, `classname` and `time` (seconds); a failing case holds a
/// `failure` whose `message` is the first line of what differs and whose body is all of it.
pub fn junit(results: &[CaseResult]) -> String {
    const SUITE: &str = "flowgate-golden";
    let failures = results.iter().filter(|r| r.failure.is_some()).count();
    let total: f64 = results.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let counts = format!("tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{total:.3}\"", results.len());
    let mut out = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"{SUITE}\" {counts}>\n");
    out.push_str(&format!("  <testsuite name=\"{SUITE}\" {counts} skipped=\"0\">\n"));
    for r in results {
        let case = format!("<testcase name=\"{}\" classname=\"{SUITE}\" time=\"{:.3}\"", xml_escape(&r.name, true), r.elapsed.as_secs_f64());
        match &r.failure {
            None => out.push_str(&format!("    {case}/>\n")),
            Some(f) => {
                let f = f.to_string();
                let message = f.lines().next().unwrap_or_default();
                out.push_str(&format!(
                    "    {case}>\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                    xml_escape(message, true),
                    xml_escape(&f, false)
                ));
            }
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// `s` as XML 1.0 character data, or an attribute value (`attribute`). A failure quotes the body
/// and the expected answer, so it can hold anything: the five special characters become
/// references, and the characters XML 1.0 cannot carry at all, not even as a reference (C0
/// controls other than tab, line feed and carriage return; U+FFFE, U+FFFF), are named instead:
/// `[U+001B]`. A carriage return, and in an attribute a tab or line feed, are written as
/// references, since a parser would otherwise turn them into a line feed or a space.
fn xml_escape(s: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' if attribute => out.push_str(&format!("&#{};", u32::from(c))),
            '\t' | '\n' => out.push(c),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push_str(&format!("[U+{:04X}]", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}
