//! Samples of incoming flows: the gate's share for `flow-templates/incoming/` and the code lists.
//!
//! One folder per case under `rules/samples/incoming/`, holding `flow.usr` (a file as a DNO or a
//! Supplier sends it) and `expect.json`, what the gateway must read from it:
//! `{"answers": [{"mpan": "1129383838383", "date": "2025-01-08", "shows": {...}}]}`, every answer
//! of the file in file order, with the date that matches it to a request and what the request's
//! status shows of it (a code with its meaning). A case pins its whole reading, so a description
//! or a code list cut short reads differently and the candidate is refused; together the cases
//! must exercise every description, each of its match and shown items (a value found in some
//! answer), and every code of every code list (shown with its meaning), so that nothing is left
//! that a cut could remove unseen.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dtc::catalogue::Catalogue;
use crate::dtc::reader::ReadFinding;
use crate::rules::incoming::Incoming;

/// The folder of incoming samples, under the rules folder.
pub(crate) const INCOMING_SAMPLES_DIR: &str = "rules/samples/incoming";
/// The flow file of an incoming sample.
pub(crate) const FLOW_FILE: &str = "flow.usr";
/// What it must read to.
pub(crate) const EXPECT_FILE: &str = "expect.json";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// What the case is for: read by people, not by the gate.
    #[serde(default)]
    #[allow(dead_code)]
    covers: Option<String>,
    answers: Vec<ReadAnswer>,
}

/// One answer as read: the MPAN and date that match it, and what the request's status shows.
#[derive(Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ReadAnswer {
    mpan: String,
    date: Option<String>,
    shows: serde_json::Map<String, Value>,
}

/// Why an incoming sample does not pass.
#[derive(Debug, thiserror::Error)]
pub enum IncomingSampleFailure {
    #[error("{FLOW_FILE}: {0}")]
    ReadFlow(#[source] std::io::Error),
    #[error("{EXPECT_FILE}: {0}")]
    ReadExpect(#[source] std::io::Error),
    #[error("{EXPECT_FILE}: {0}")]
    ParseExpect(#[source] serde_json::Error),
    #[error("{FLOW_FILE} does not read: {}", .findings.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Unreadable { findings: Vec<ReadFinding> },
    #[error("{flow} is not an incoming flow the rule set describes ({described})")]
    NotDescribed { flow: String, described: String },
    #[error("{got} answers read, want {want}")]
    AnswerCount { got: usize, want: usize },
    #[error("answer {number} reads {got}, want {want}")]
    Answer { number: usize, got: String, want: String },
}

/// What one passing sample exercised: its flow, the parts of the description it found values
/// for (`match date`, `show clearance`) and the codes it showed with a meaning (list, code).
#[derive(Debug, Default)]
pub(crate) struct Exercised {
    flow: String,
    parts: Vec<String>,
    codes: Vec<(String, String)>,
}

/// Every incoming sample folder under `root` (those holding `flow.usr`), sorted.
pub(crate) fn cases(root: &Path) -> Vec<std::path::PathBuf> {
    let dir = root.join(INCOMING_SAMPLES_DIR);
    let mut out: Vec<_> =
        std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok).map(|e| e.path()).filter(|p| p.join(FLOW_FILE).is_file()).collect();
    out.sort();
    out
}

/// Reads one sample's flow file with the candidate's descriptions and code lists, and compares
/// every answer with what `expect.json` says.
pub(crate) fn run(incoming: &Incoming, catalogue: &Catalogue, dir: &Path) -> Result<Exercised, IncomingSampleFailure> {
    let bytes = std::fs::read(dir.join(FLOW_FILE)).map_err(IncomingSampleFailure::ReadFlow)?;
    let text = std::fs::read_to_string(dir.join(EXPECT_FILE)).map_err(IncomingSampleFailure::ReadExpect)?;
    let expect: Expect = serde_json::from_str(&text).map_err(IncomingSampleFailure::ParseExpect)?;
    let flow = crate::dtc::reader::read(&bytes, catalogue).map_err(|findings| IncomingSampleFailure::Unreadable { findings })?;
    let Some(described) = incoming.flow(&flow.header.flow) else {
        return Err(IncomingSampleFailure::NotDescribed { flow: flow.header.flow.clone(), described: incoming.names() });
    };
    let mut exercised = Exercised { flow: described.flow.clone(), ..Exercised::default() };
    let mut got = Vec::new();
    for answer in described.answers(&flow) {
        let (parts, codes) = described.exercised(&answer, &incoming.codes);
        exercised.parts.extend(parts);
        exercised.codes.extend(codes);
        got.push(ReadAnswer { mpan: answer.mpan.to_string(), date: answer.date, shows: described.details(answer.group, &incoming.codes) });
    }
    if got.len() != expect.answers.len() {
        return Err(IncomingSampleFailure::AnswerCount { got: got.len(), want: expect.answers.len() });
    }
    for (i, (got, want)) in got.iter().zip(&expect.answers).enumerate() {
        if got != want {
            let json = |a: &ReadAnswer| serde_json::to_string(a).unwrap_or_default();
            return Err(IncomingSampleFailure::Answer { number: i + 1, got: json(got), want: json(want) });
        }
    }
    Ok(exercised)
}

/// Which incoming flow descriptions, parts of them and codes a set of samples exercises.
#[derive(Debug, Clone, Default)]
pub(crate) struct IncomingCoverage {
    flows: Vec<(String, bool)>,
    /// (flow, part, covered)
    parts: Vec<(String, String, bool)>,
    /// (list, code, covered)
    codes: Vec<(String, String, bool)>,
}

impl IncomingCoverage {
    /// Nothing covered yet, out of everything `incoming` describes.
    pub(crate) fn new(incoming: &Incoming) -> IncomingCoverage {
        IncomingCoverage {
            flows: incoming.flows.keys().map(|f| (f.clone(), false)).collect(),
            parts: incoming.flows.values().flat_map(|f| f.parts().into_iter().map(|p| (f.flow.clone(), p, false))).collect(),
            codes: incoming.codes.entries().map(|(list, code)| (list.to_string(), code.to_string(), false)).collect(),
        }
    }

    /// Counts what one sample exercised.
    pub(crate) fn add(&mut self, e: &Exercised) {
        for flow in self.flows.iter_mut().filter(|f| f.0 == e.flow) {
            flow.1 = true;
        }
        for part in self.parts.iter_mut().filter(|p| p.0 == e.flow && e.parts.contains(&p.1)) {
            part.2 = true;
        }
        for code in self.codes.iter_mut().filter(|c| e.codes.iter().any(|(list, code)| *list == c.0 && *code == c.1)) {
            code.2 = true;
        }
    }

    /// `incoming flows 2/2, incoming items 13/13, codes 4/4`.
    pub(crate) fn summary(&self) -> String {
        let flows = self.flows.iter().filter(|f| f.1).count();
        let parts = self.parts.iter().filter(|p| p.2).count();
        let codes = self.codes.iter().filter(|c| c.2).count();
        format!("incoming flows {flows}/{}, incoming items {parts}/{}, codes {codes}/{}", self.flows.len(), self.parts.len(), self.codes.len())
    }

    /// What no sample exercises, each named: `incoming flow D0002`, `incoming item D0126 show
    /// clearance`, `code J1823 U`.
    pub(crate) fn uncovered(&self) -> Vec<String> {
        let mut out: Vec<String> = self.flows.iter().filter(|f| !f.1).map(|f| format!("incoming flow {}", f.0)).collect();
        out.extend(self.parts.iter().filter(|p| !p.2).map(|p| format!("incoming item {} {}", p.0, p.1)));
        out.extend(self.codes.iter().filter(|c| !c.2).map(|c| format!("code {} {}", c.0, c.1)));
        out
    }
}
