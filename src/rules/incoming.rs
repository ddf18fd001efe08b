//! Incoming flows as data (`flow-templates/incoming/`): for each flow the gateway reads, which
//! top-level group carries one answer, which items match it to an accepted request (MPAN, date),
//! and what the request's status shows of it; with the code lists that give values a meaning
//! (`flow-templates/code-lists/`). A new incoming flow, or a new version of one, is a new file.
//!
//! Both load with the rule set: they count in its revision, and a description that names a
//! group or item its flow does not have (in the catalogue), or a code list that is not there,
//! refuses the whole candidate like any other broken rule file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::dtc::catalogue::{CatFlow, Catalogue};
use crate::dtc::reader::{iso_date, Group, ParsedFlow};

/// The folder of incoming flow descriptions, under the rules folder.
pub(crate) const INCOMING_DIR: &str = "flow-templates/incoming";
/// The folder of code lists, under the rules folder.
pub(crate) const CODE_LISTS_DIR: &str = "flow-templates/code-lists";

#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{file}: {source}")]
    Description { file: String, source: DescriptionError },
}

/// Why an incoming flow description does not fit its flow in the catalogue, or the code lists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptionError {
    #[error("{flow} is not in the catalogue")]
    UnknownFlow { flow: String },
    #[error("{flow} has no group {group}")]
    UnknownGroup { flow: String, group: String },
    #[error("group {group} of {flow} is not a top-level group")]
    NotTopLevel { flow: String, group: String },
    #[error("show {name}: no code list for {list} in {CODE_LISTS_DIR}")]
    NoCodeList { name: String, list: String },
    /// The MPAN or date item that matches a file to a request.
    #[error(transparent)]
    Item(#[from] ItemPathError),
    #[error("show {name}: {source}")]
    ShownItem { name: String, source: ItemPathError },
}

/// An item path (`J0003`, `61H/J1825`, `*/J0012`) that names no item of the flow below `top`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {flow} has no such item below group {top}")]
pub struct ItemPathError {
    pub path: String,
    pub flow: String,
    pub top: String,
}

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
    /// The meaning of `code` for `item`, if the list has it.
    pub fn meaning(&self, item: &str, code: &str) -> Option<&str> {
        self.0.get(item)?.codes.get(code).map(String::as_str)
    }

    /// Every (data item, code) of every list, for the samples' coverage.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().flat_map(|(item, list)| list.codes.keys().map(move |code| (item.as_str(), code.as_str())))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncomingDef {
    flow: String,
    name: String,
    group: String,
    #[serde(rename = "match")]
    matching: MatchDef,
    show: BTreeMap<String, ShowDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchDef {
    mpan: String,
    #[serde(default)]
    date: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowDef {
    item: String,
    /// Every value found (a list), rather than the first.
    #[serde(default)]
    all: bool,
    #[serde(default)]
    format: Option<ShowFormat>,
    /// A code list: shown as `{code, meaning}`.
    #[serde(default)]
    codes: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ShowFormat {
    /// A DTC date (`ccyymmdd`) shown as `YYYY-MM-DD`.
    Date,
}

/// Where an item is, from a top-level group: in it, in the groups of a code below it, or in its
/// direct child groups of any code.
#[derive(Debug, Clone)]
enum Place {
    Top,
    Below(String),
    Children,
}

#[derive(Debug, Clone)]
struct ItemPath {
    place: Place,
    item: String,
}

impl ItemPath {
    /// Every value of the item under `g`, in file order.
    fn values<'a>(&'a self, g: &'a Group) -> Box<dyn Iterator<Item = &'a str> + 'a> {
        match &self.place {
            Place::Top => Box::new(g.get(&self.item).into_iter()),
            Place::Below(code) => Box::new(g.descendants(code).filter_map(move |c| c.get(&self.item))),
            Place::Children => Box::new(g.children.iter().filter_map(move |c| c.get(&self.item))),
        }
    }

    fn first<'a>(&'a self, g: &'a Group) -> Option<&'a str> {
        self.values(g).next()
    }
}

#[derive(Debug, Clone)]
struct Shown {
    name: String,
    path: ItemPath,
    all: bool,
    format: Option<ShowFormat>,
    codes: Option<String>,
}

/// One incoming flow, checked against the catalogue.
#[derive(Debug, Clone)]
pub struct IncomingFlow {
    pub flow: String,
    pub name: String,
    group: String,
    mpan: ItemPath,
    date: Option<ItemPath>,
    show: Vec<Shown>,
}

/// One answer in a file: a top-level group, with the MPAN and date that match it to a request.
pub struct Answer<'a> {
    pub group: &'a Group,
    pub mpan: &'a str,
    /// `YYYY-MM-DD`, when the flow names a date and the group has it.
    pub date: Option<String>,
}

impl IncomingFlow {
    /// The answers in a file of this flow.
    pub fn answers<'a>(&'a self, flow: &'a ParsedFlow) -> impl Iterator<Item = Answer<'a>> + 'a {
        flow.groups.iter().filter(|g| g.code == self.group).filter_map(|g| {
            let mpan = self.mpan.first(g)?;
            let date = self.date.as_ref().and_then(|d| d.first(g)).and_then(iso_date);
            Some(Answer { group: g, mpan, date })
        })
    }

    /// The parts of this description a sample can exercise: `match mpan`, `match date` and
    /// `show <name>` for each item shown.
    pub(crate) fn parts(&self) -> Vec<String> {
        let mut out = vec!["match mpan".to_string()];
        if self.date.is_some() {
            out.push("match date".into());
        }
        out.extend(self.show.iter().map(|s| format!("show {}", s.name)));
        out
    }

    /// What one answer exercises: the parts it has a value for, and the codes it shows with a
    /// meaning (list, code). A part with no value in any sample could be cut unseen.
    pub(crate) fn exercised(&self, answer: &Answer, codes: &CodeLists) -> (Vec<String>, Vec<(String, String)>) {
        let mut parts = vec!["match mpan".to_string()];
        if answer.date.is_some() {
            parts.push("match date".into());
        }
        let mut shown_codes = Vec::new();
        for s in &self.show {
            let values: Vec<&str> = s.path.values(answer.group).collect();
            if values.is_empty() {
                continue;
            }
            parts.push(format!("show {}", s.name));
            if let Some(list) = &s.codes {
                shown_codes.extend(values.iter().filter(|v| codes.meaning(list, v).is_some()).map(|v| (list.clone(), v.to_string())));
            }
        }
        (parts, shown_codes)
    }

    /// What the request's status shows of one answer, beyond what every incoming flow shows.
    pub(crate) fn details(&self, g: &Group, codes: &CodeLists) -> serde_json::Map<String, Value> {
        let mut out = serde_json::Map::new();
        for s in &self.show {
            let shown = |v: &str| -> Value {
                let text = match s.format {
                    Some(ShowFormat::Date) => iso_date(v).map_or(Value::Null, Value::from),
                    None => Value::from(v),
                };
                match &s.codes {
                    Some(list) => json!({ "code": text, "meaning": codes.meaning(list, v) }),
                    None => text,
                }
            };
            let value = if s.all {
                Value::Array(s.path.values(g).map(shown).collect())
            } else {
                match s.path.first(g) {
                    Some(v) => shown(v),
                    // A code list item keeps its shape when absent.
                    None if s.codes.is_some() => json!({ "code": null, "meaning": null }),
                    None => Value::Null,
                }
            };
            out.insert(s.name.clone(), value);
        }
        out
    }
}

/// The incoming flows by flow id (`D0126`), and the code lists.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    pub flows: BTreeMap<String, IncomingFlow>,
    pub codes: CodeLists,
}

impl Incoming {
    /// The description of `flow`, if the gateway reads it.
    pub fn flow(&self, flow: &str) -> Option<&IncomingFlow> {
        self.flows.get(flow)
    }

    /// `D0002, D0126`.
    pub fn names(&self) -> String {
        self.flows.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// `*.yaml` files of a folder, sorted; a missing folder has none.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, IncomingError> {
    match crate::rules::files::sorted_files(dir, "yaml") {
        Ok(paths) => Ok(paths),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(IncomingError::Read { path: dir.to_path_buf(), source: e }),
    }
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, IncomingError> {
    yaml_serde::from_str(text).map_err(|e| IncomingError::Parse { path: path.to_path_buf(), message: e.to_string() })
}

/// Loads the code lists and the incoming flow descriptions under `root`, checked against the
/// catalogue. `read` is the rule set's reader (it adds each file to the revision).
pub fn load<E: std::fmt::Display>(root: &Path, catalogue: &Catalogue, mut read: impl FnMut(&Path) -> Result<String, E>) -> Result<Incoming, IncomingError> {
    let mut read = |path: &Path| read(path).map_err(|e| IncomingError::Parse { path: path.to_path_buf(), message: e.to_string() });
    let mut lists = BTreeMap::new();
    for path in yaml_files(&root.join(CODE_LISTS_DIR))? {
        let list: CodeList = parse(&path, &read(&path)?)?;
        if lists.contains_key(&list.item) {
            return Err(IncomingError::Invalid { file: path.display().to_string(), message: format!("a second code list for {}", list.item) });
        }
        lists.insert(list.item.clone(), list);
    }
    let codes = CodeLists(lists);
    let mut flows = BTreeMap::new();
    for path in yaml_files(&root.join(INCOMING_DIR))? {
        let def: IncomingDef = parse(&path, &read(&path)?)?;
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let flow = compile(def, catalogue, &codes).map_err(|source| IncomingError::Description { file: file.clone(), source })?;
        if flows.contains_key(&flow.flow) {
            return Err(IncomingError::Invalid { file, message: format!("a second description of {}", flow.flow) });
        }
        flows.insert(flow.flow.clone(), flow);
    }
    Ok(Incoming { flows, codes })
}

fn compile(def: IncomingDef, catalogue: &Catalogue, codes: &CodeLists) -> Result<IncomingFlow, DescriptionError> {
    let Some(cat) = catalogue.flows.get(&def.flow) else {
        return Err(DescriptionError::UnknownFlow { flow: def.flow });
    };
    let Some(top) = cat.groups.get(&def.group) else {
        return Err(DescriptionError::UnknownGroup { flow: def.flow, group: def.group });
    };
    if top.parent.is_some() {
        return Err(DescriptionError::NotTopLevel { flow: def.flow, group: def.group });
    }
    let path = |text: &str| item_path(text, &def.group, cat);
    let mpan = path(&def.matching.mpan)?;
    let date = def.matching.date.as_deref().map(path).transpose()?;
    let mut show = Vec::new();
    for (name, s) in def.show {
        if let Some(list) = &s.codes {
            if !codes.0.contains_key(list) {
                return Err(DescriptionError::NoCodeList { name, list: list.clone() });
            }
        }
        let p = match path(&s.item) {
            Ok(p) => p,
            Err(source) => return Err(DescriptionError::ShownItem { name, source }),
        };
        show.push(Shown { name, path: p, all: s.all, format: s.format, codes: s.codes });
    }
    Ok(IncomingFlow { flow: def.flow, name: def.name, group: def.group, mpan, date, show })
}

/// `J0003`, `61H/J1825` or `*/J0012`, checked against the flow's groups below `top`.
fn item_path(text: &str, top: &str, cat: &CatFlow) -> Result<ItemPath, ItemPathError> {
    let has = |group: &str, item: &str| cat.groups.get(group).is_some_and(|g| g.fields.iter().any(|f| f.item == item));
    let below = |code: &str| {
        let mut parent = cat.groups.get(code).and_then(|g| g.parent.clone());
        while let Some(p) = parent {
            if p == top {
                return true;
            }
            parent = cat.groups.get(&p).and_then(|g| g.parent.clone());
        }
        false
    };
    let (place, item) = match text.split_once('/') {
        None => (Place::Top, text),
        Some(("*", item)) => (Place::Children, item),
        Some((code, item)) => (Place::Below(code.to_string()), item),
    };
    let found = match &place {
        Place::Top => has(top, item),
        Place::Below(code) => below(code) && has(code, item),
        Place::Children => cat.groups.values().any(|g| g.parent.as_deref() == Some(top) && has(&g.code, item)),
    };
    if !found {
        return Err(ItemPathError { path: text.to_string(), flow: cat.id.clone(), top: top.to_string() });
    }
    Ok(ItemPath { place, item: item.to_string() })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn catalogue() -> Catalogue {
        Catalogue::load(&repo().join("flow-templates/catalogue")).unwrap()
    }

    fn read(p: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(p)
    }

    #[test]
    fn the_shipped_descriptions_load() {
        let incoming = load(&repo(), &catalogue(), read).unwrap();
        assert_eq!(incoming.names(), "D0002, D0126");
        assert_eq!(incoming.codes.meaning("J1823", "C").map(str::is_empty), Some(false));
    }

    #[test]
    fn a_group_or_item_the_flow_does_not_have_is_refused() {
        let cat = catalogue();
        let def = |mpan: &str, date: &str, group: &str| IncomingDef {
            flow: "D0126".into(),
            name: "n".into(),
            group: group.into(),
            matching: MatchDef { mpan: mpan.into(), date: Some(date.into()) },
            show: BTreeMap::new(),
        };
        assert!(compile(def("J0003", "61H/J1825", "250"), &cat, &CodeLists::default()).is_ok());
        let e = compile(def("J0003", "61H/J9999", "250"), &cat, &CodeLists::default()).unwrap_err().to_string();
        assert_eq!(e, "61H/J9999: D0126 has no such item below group 250");
        let e = compile(def("J0003", "62X/J1825", "250"), &cat, &CodeLists::default()).unwrap_err().to_string();
        assert!(e.contains("62X/J1825"), "{e}");
        let e = compile(def("J0003", "61H/J1825", "61H"), &cat, &CodeLists::default()).unwrap_err().to_string();
        assert_eq!(e, "group 61H of D0126 is not a top-level group");
        let mut bad_codes = def("J0003", "61H/J1825", "250");
        bad_codes.show.insert("clearance".into(), ShowDef { item: "61H/J1823".into(), all: false, format: None, codes: Some("J1823".into()) });
        let e = compile(bad_codes, &cat, &CodeLists::default()).unwrap_err().to_string();
        assert_eq!(e, format!("show clearance: no code list for J1823 in {CODE_LISTS_DIR}"));
    }
}
