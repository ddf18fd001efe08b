//! Golden cases: one folder per case with `request.json`, `expect.json` and, for accepted
//! cases, the expected flow files in `flows/`. The same runner serves `flowgate test` and the
//! project's test suite.
//!
//! `expect.json`: `{"status": 200, "scenario": "S01", "flows": ["D0396>X/TEST"]}` or
//! `{"status": 400, "pointers": [...]}`; optional `warnings` (rule ids), `sip_id` (the sender,
//! default `DEMO`) and `covers` (what the case is for). Flow files are written with a fixed clock
//! ([`GOLDEN_NOW`]) and file ids `GT00000001`, `GT00000002`... in the order the flows are chosen,
//! and compared byte for byte; `flows/<flow>_<role><mpid>.usr`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::Client;
use crate::clock::Clock;
use crate::pipeline::{decide, Explain, Verdict};
use crate::ruleset::RuleSet;

/// The instant golden flow files are written at.
pub const GOLDEN_NOW: &str = "2025-12-31T12:00:00Z";

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
    pub warnings: Option<Vec<String>>,
    #[serde(default)]
    pub sip_id: Option<String>,
    #[serde(default)]
    pub covers: Option<String>,
}

/// One case's result: `Ok` or what differs.
pub struct CaseResult {
    pub name: String,
    pub failure: Option<String>,
    /// The flow files written (name, content), for catalogue checks.
    pub files: Vec<(String, String)>,
}

/// Every case folder under `dir` (those holding `request.json`), sorted.
pub fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("request.json").is_file())
        .collect();
    out.sort();
    out
}

/// Runs one case against a rule set. `bless` rewrites the expected flow files.
pub fn run_case(set: &RuleSet, dir: &Path, bless: bool) -> CaseResult {
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let mut result = CaseResult { name, failure: None, files: vec![] };
    match check(set, dir, bless, &mut result.files) {
        Ok(()) => {}
        Err(e) => result.failure = Some(e),
    }
    result
}

fn check(set: &RuleSet, dir: &Path, bless: bool, files: &mut Vec<(String, String)>) -> Result<(), String> {
    let body = std::fs::read(dir.join("request.json")).map_err(|e| format!("request.json: {e}"))?;
    let expect_text = std::fs::read_to_string(dir.join("expect.json")).map_err(|e| format!("expect.json: {e}"))?;
    let expect: Expect = serde_json::from_str(&expect_text).map_err(|e| format!("expect.json: {e}"))?;
    let client = Client {
        name: "golden".into(),
        sip_id: expect.sip_id.clone().unwrap_or_else(|| "DEMO".into()),
        key_id: "golden".into(),
        key_sha256: String::new(),
        rate: Default::default(),
        revoked: false,
    };
    let now = crate::clock::parse_rfc3339(GOLDEN_NOW).ok_or("bad golden clock")?;
    let decision = decide(set, &client, &body, Clock::Fixed(now), Explain::No);
    match decision.verdict {
        Verdict::Failed(f) => Err(format!("status 500: rule {} failed: {}", f.rule, f.message)),
        Verdict::Rejected(errors) => {
            if expect.status != 400 {
                let listed: Vec<String> = errors.iter().map(|e| format!("{} ({}: {})", e.pointer, e.rule, e.message)).collect();
                return Err(format!("status 400, want {}: {}", expect.status, listed.join("; ")));
            }
            let got: BTreeSet<String> = errors.iter().map(|e| e.pointer.clone()).collect();
            let want: BTreeSet<String> = expect.pointers.unwrap_or_default().into_iter().collect();
            if got != want {
                let detail: Vec<String> = errors.iter().map(|e| format!("{} [{}] {}", e.pointer, e.rule, e.message)).collect();
                return Err(format!("pointers {got:?}, want {want:?}; found: {}", detail.join("; ")));
            }
            Ok(())
        }
        Verdict::Accepted(a) => {
            if expect.status != 200 {
                return Err(format!("status 200 (scenario {}), want {}", a.scenario, expect.status));
            }
            if let Some(s) = &expect.scenario {
                if *s != a.scenario {
                    return Err(format!("scenario {}, want {s}", a.scenario));
                }
            }
            let mut got: Vec<String> = a.flows.iter().map(|f| format!("{}>{}", f.flow, f.to_label())).collect();
            got.sort();
            if let Some(want) = &expect.flows {
                if got != *want {
                    return Err(format!("flows {got:?}, want {want:?}"));
                }
            }
            if let Some(want) = &expect.warnings {
                let mut w: Vec<String> = a.warnings.iter().map(|w| w.rule.clone()).collect();
                w.sort();
                let mut want = want.clone();
                want.sort();
                if w != want {
                    return Err(format!("warnings {w:?}, want {want:?}"));
                }
            }
            let flows_dir = dir.join("flows");
            // Without a flows/ folder (rule samples), the files are not compared byte for byte.
            let compare = bless || flows_dir.is_dir();
            for (i, f) in a.flows.iter().enumerate() {
                let file_id = format!("GT{:08}", i + 1);
                let content = f.finish(&file_id, now, &set.envelope);
                let fname = format!("{}_{}{}.usr", f.flow, f.to_role, f.to_mpid);
                files.push((fname.clone(), content.clone()));
                let path = flows_dir.join(&fname);
                if bless {
                    std::fs::create_dir_all(&flows_dir).map_err(|e| e.to_string())?;
                    std::fs::write(&path, &content).map_err(|e| e.to_string())?;
                    continue;
                }
                if !compare {
                    continue;
                }
                match std::fs::read_to_string(&path) {
                    Ok(want) if want == content => {}
                    Ok(want) => return Err(format!("flows/{fname} differs:\n{}", diff(&want, &content))),
                    Err(_) => return Err(format!("flows/{fname} is missing (run `flowgate test --bless` after checking the output)")),
                }
            }
            if !bless && flows_dir.is_dir() {
                let expected = std::fs::read_dir(&flows_dir).map(|rd| rd.filter_map(Result::ok).count()).unwrap_or(0);
                if expected != a.flows.len() {
                    return Err(format!("flows/ holds {expected} files, the case wrote {}", a.flows.len()));
                }
            }
            Ok(())
        }
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

/// JUnit XML for a run.
pub fn junit(results: &[CaseResult]) -> String {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let failures = results.iter().filter(|r| r.failure.is_some()).count();
    let mut out = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"flowgate-golden\" tests=\"{}\" failures=\"{failures}\">\n", results.len());
    for r in results {
        match &r.failure {
            None => out.push_str(&format!("  <testcase name=\"{}\"/>\n", esc(&r.name))),
            Some(f) => out.push_str(&format!("  <testcase name=\"{}\"><failure message=\"{}\"/></testcase>\n", esc(&r.name), esc(f))),
        }
    }
    out.push_str("</testsuite>\n");
    out
}
