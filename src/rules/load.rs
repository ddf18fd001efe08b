//! Loading a rule set: read the three folders, compile, check against the catalogue, run the
//! samples, those of requests and those of incoming flows (the gate), and fingerprint the folders
//! so the running server sees an edit.

use crate::config::Config;
use crate::domain::names::FlowIdError;
use crate::dtc::catalogue::{Catalogue, CatalogueError};
use crate::dtc::write::Envelope;
use crate::rules::engine::{CompileError, Rules, RulesFile};
use crate::rules::files::sorted_files;
use crate::rules::incoming_samples::{IncomingCoverage, IncomingSampleFailure};
use crate::rules::samples::CaseFailure;
use crate::rules::schema::{Schema, SchemaError};
use crate::rules::set::{RuleSet, SCHEMA_FILE};
use crate::rules::template::{Template, TemplateDef, TemplateError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a rule set was not loaded: the file and its cause, the rule, template group or item at
/// fault, or the samples that refuse it. Its text is what `/readyz` and the command line show.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{} does not hold schemas/, rules/ and flow-templates/: run from the repository root or pass --rules-dir", .root.display())]
    NotRulesDir { root: PathBuf },
    /// A file or folder that could not be read.
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {source}")]
    Yaml { path: PathBuf, source: yaml_serde::Error },
    #[error("{path}: {source}")]
    Schema { path: PathBuf, source: SchemaError },
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Incoming(#[from] crate::rules::incoming::IncomingError),
    #[error("{file}: {source}")]
    FlowId { file: String, source: FlowIdError },
    #[error("{file}: a second template for {flow}")]
    SecondTemplate { file: String, flow: String },
    #[error("flow choice {choice:?}: no template for {flow}")]
    NoTemplate { choice: String, flow: String },
    #[error("recipient {recipient:?}: role {role:?} has no role code in the configuration (flows.roles)")]
    NoRoleCode { recipient: String, role: String },
    /// Samples that do not get their expected answer (each case's folder and why), of `total`.
    #[error("{} of {total} samples do not get their expected answer:\n{}", .failures.len(), sample_lines(.failures))]
    Samples { failures: Vec<(PathBuf, CaseFailure)>, total: usize },
    /// Incoming samples that do not read to their expected answers (each case's folder and why), of `total`.
    #[error("{} of {total} incoming samples do not read to their expected answers:\n{}", .failures.len(), incoming_sample_lines(.failures))]
    IncomingSamples { failures: Vec<(PathBuf, IncomingSampleFailure)>, total: usize },
    /// What no sample in `dir` exercises, each named, and the coverage as a summary line.
    #[error(
        "no sample in {dir} exercises {} (coverage: {coverage}): add a sample that does, or remove what none needs",
        .uncovered.join(", ")
    )]
    Uncovered { dir: PathBuf, uncovered: Vec<String>, coverage: String },
}

fn sample_lines(failures: &[(PathBuf, CaseFailure)]) -> String {
    failures.iter().map(|(case, why)| format!("sample {}: {why}", case.display())).collect::<Vec<_>>().join("\n")
}

fn incoming_sample_lines(failures: &[(PathBuf, IncomingSampleFailure)]) -> String {
    failures.iter().map(|(case, why)| format!("incoming sample {}: {why}", case.display())).collect::<Vec<_>>().join("\n")
}

fn files_in(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, LoadError> {
    sorted_files(dir, ext).map_err(|source| LoadError::Read { path: dir.to_path_buf(), source })
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })
}

/// The folders a rule set is read from (the sample folders as they are now: list them again to
/// see a sample added since).
pub(crate) fn watched_dirs(root: &Path) -> Vec<PathBuf> {
    let templates = root.join("flow-templates");
    let mut dirs = vec![
        root.join("schemas"),
        root.join("rules"),
        templates.clone(),
        templates.join("catalogue"),
        templates.join("catalogue").join("flows"),
        root.join(crate::rules::incoming::INCOMING_DIR),
        root.join(crate::rules::incoming::CODE_LISTS_DIR),
    ];
    for case in crate::rules::samples::cases(&root.join("rules").join("samples")) {
        dirs.push(case.join("flows"));
        dirs.push(case);
    }
    dirs.push(root.join("rules").join("samples"));
    dirs.extend(crate::rules::incoming_samples::cases(root));
    dirs.push(root.join(crate::rules::incoming_samples::INCOMING_SAMPLES_DIR));
    dirs
}

/// A fingerprint of the files under the rule folders: their names and their bytes, read through
/// symlinks. Not sizes and modification times: a copy that keeps times (`cp -p`, `rsync -t`,
/// `tar`) can change a file without changing either, and a file reached through a link (a
/// Kubernetes ConfigMap swaps its `..data` link to a new folder) changes while the link the
/// folder holds does not. The folders hold a few hundred KB, read about once a second.
pub(crate) fn fingerprint(root: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for dir in watched_dirs(root) {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.filter_map(Result::ok).map(|e| e.path()).collect(),
            Err(_) => {
                dir.hash(&mut h);
                continue;
            }
        };
        entries.sort();
        for path in entries {
            path.hash(&mut h);
            // Sub-folders that matter are in the list themselves; only their names count here.
            if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                match std::fs::read(&path) {
                    Ok(bytes) => bytes.hash(&mut h),
                    Err(e) => e.kind().hash(&mut h),
                }
            }
        }
    }
    h.finish()
}

/// Loads, compiles and checks a rule set from `config.rules_dir`.
pub fn load(config: &Config) -> Result<RuleSet, LoadError> {
    let root = &config.rules_dir;
    if !root.join("schemas").is_dir() || !root.join("rules").is_dir() || !root.join("flow-templates").is_dir() {
        return Err(LoadError::NotRulesDir { root: root.clone() });
    }
    let mut sources = Sources::new(root);
    let schema = read_schema(root, &mut sources)?;
    let rules = read_rules(root, config, &mut sources)?;
    let catalogue = Catalogue::load(&root.join("flow-templates").join("catalogue"))?;
    let templates = read_templates(root, &rules, &catalogue, &mut sources)?;
    let incoming = crate::rules::incoming::load(root, &catalogue, |path: &Path| sources.take(path))?;
    check_references(config, &rules, &templates)?;
    let samples = read_samples(root, &mut sources)?;
    let (revision, files) = sources.finish();
    let mut set = RuleSet {
        revision: format!("{}+{}", schema.version, revision),
        schema,
        rules,
        templates,
        catalogue,
        incoming,
        envelope: Envelope {
            test_flag: config.flows.test_flag.clone(),
            crlf: config.flows.line_ending == crate::config::LineEnding::Crlf,
            object_name: config.flows.object_name.clone(),
        },
        sender_role: config.flows.sender_role.clone(),
        roles: config.flows.roles.clone(),
        max_errors: config.max_errors,
        files,
        coverage: String::new(),
        samples: samples.requests.len() + samples.incoming.len(),
    };
    set.coverage = gate(&set, &samples, &root.join("rules").join("samples"))?;
    Ok(set)
}

/// The files a rule set is read from: each one read adds its path and bytes to the revision.
struct Sources<'a> {
    root: &'a Path,
    hasher: Sha256,
    /// Relative to the rules folder, in the order read.
    files: Vec<String>,
}

impl<'a> Sources<'a> {
    fn new(root: &'a Path) -> Sources<'a> {
        Sources { root, hasher: Sha256::new(), files: Vec::new() }
    }

    /// Reads one file and counts it in the revision.
    fn take(&mut self, path: &Path) -> Result<String, LoadError> {
        let text = read(path)?;
        let rel = path.strip_prefix(self.root).unwrap_or(path).display().to_string();
        self.hasher.update(rel.as_bytes());
        self.hasher.update([0]);
        self.hasher.update(text.as_bytes());
        self.hasher.update([0]);
        self.files.push(rel);
        Ok(text)
    }

    /// The short revision hash, and the files read.
    fn finish(self) -> (String, Vec<String>) {
        let digest = self.hasher.finalize();
        (digest.iter().take(6).map(|b| format!("{b:02x}")).collect(), self.files)
    }
}

/// The JSON Schema of the body, compiled.
fn read_schema(root: &Path, sources: &mut Sources) -> Result<Schema, LoadError> {
    let path = root.join("schemas").join(SCHEMA_FILE);
    let doc: serde_json::Value = serde_json::from_str(&sources.take(&path)?).map_err(|source| LoadError::Json { path: path.clone(), source })?;
    Schema::compile(doc).map_err(|source| LoadError::Schema { path, source })
}

/// The rule files (`rules/*.yaml`) and the rhai helpers (`rules/*.rhai`), compiled.
fn read_rules(root: &Path, config: &Config, sources: &mut Sources) -> Result<Rules, LoadError> {
    let rules_dir = root.join("rules");
    let mut rule_files = Vec::new();
    for path in files_in(&rules_dir, "yaml")? {
        let text = sources.take(&path)?;
        let file: RulesFile = yaml_serde::from_str(&text).map_err(|source| LoadError::Yaml { path: path.clone(), source })?;
        rule_files.push((path.display().to_string(), file));
    }
    let mut helpers = Vec::new();
    for path in files_in(&rules_dir, "rhai")? {
        helpers.push((path.display().to_string(), sources.take(&path)?));
    }
    Ok(Rules::compile(rule_files, helpers, &config.rhai)?)
}

/// The outgoing flow templates (`flow-templates/*.yaml`), compiled and checked against the
/// catalogue, by flow id.
fn read_templates(root: &Path, rules: &Rules, catalogue: &Catalogue, sources: &mut Sources) -> Result<HashMap<String, Template>, LoadError> {
    let mut templates = HashMap::new();
    for path in files_in(&root.join("flow-templates"), "yaml")? {
        let text = sources.take(&path)?;
        let def: TemplateDef = yaml_serde::from_str(&text).map_err(|source| LoadError::Yaml { path: path.clone(), source })?;
        let name = path.display().to_string();
        let t = Template::compile(&name, def, rules, catalogue)?;
        // The configuration checked `flows.object_name` with flow ids of at most this length.
        if let Err(source) = crate::domain::names::check_flow_id(&t.flow) {
            return Err(LoadError::FlowId { file: name, source });
        }
        if templates.contains_key(&t.flow) {
            return Err(LoadError::SecondTemplate { file: name, flow: t.flow });
        }
        templates.insert(t.flow.clone(), t);
    }
    Ok(templates)
}

/// Every flow choice has a template, and every recipient's role a role code in the configuration.
fn check_references(config: &Config, rules: &Rules, templates: &HashMap<String, Template>) -> Result<(), LoadError> {
    for choice in &rules.flows {
        if !templates.contains_key(&choice.def.flow) {
            return Err(LoadError::NoTemplate { choice: choice.def.id.clone(), flow: choice.def.flow.clone() });
        }
    }
    for (name, r) in &rules.recipients {
        if !config.flows.roles.contains_key(&r.role) {
            return Err(LoadError::NoRoleCode { recipient: name.clone(), role: r.role.clone() });
        }
    }
    Ok(())
}

/// The sample folders of the gate: those of requests and those of incoming flows.
struct Samples {
    requests: Vec<PathBuf>,
    incoming: Vec<PathBuf>,
}

/// Lists the samples and counts their files in the revision: a sample edited is a new revision.
fn read_samples(root: &Path, sources: &mut Sources) -> Result<Samples, LoadError> {
    let requests = crate::rules::samples::cases(&root.join("rules").join("samples"));
    for case in &requests {
        sources.take(&case.join("request.json"))?;
        sources.take(&case.join("expect.json"))?;
        let flows = case.join("flows");
        if flows.is_dir() {
            for path in files_in(&flows, "usr")? {
                sources.take(&path)?;
            }
        }
    }
    let incoming = crate::rules::incoming_samples::cases(root);
    for case in &incoming {
        sources.take(&case.join(crate::rules::incoming_samples::FLOW_FILE))?;
        sources.take(&case.join(crate::rules::incoming_samples::EXPECT_FILE))?;
    }
    Ok(Samples { requests, incoming })
}

/// The gate: each sample must get its expected answer from the candidate, and together they
/// must exercise all of it. Returns the coverage line.
fn gate(set: &RuleSet, samples: &Samples, dir: &Path) -> Result<String, LoadError> {
    let coverage = gate_requests(set, &samples.requests)?;
    let incoming_coverage = gate_incoming(set, &samples.incoming)?;
    let mut uncovered = coverage.uncovered();
    uncovered.extend(incoming_coverage.uncovered());
    let summary = format!("{}, {}", coverage.summary(), incoming_coverage.summary());
    if !uncovered.is_empty() {
        return Err(LoadError::Uncovered { dir: dir.to_path_buf(), uncovered, coverage: summary });
    }
    Ok(summary)
}

/// The request samples: each must get its whole expected answer from the candidate. Returns
/// what they exercise.
fn gate_requests(set: &RuleSet, cases: &[PathBuf]) -> Result<crate::rules::samples::Coverage, LoadError> {
    let mut coverage = crate::rules::samples::Coverage::new(set);
    let mut failures = Vec::new();
    for case in cases {
        let result = crate::rules::samples::run_sample(set, case);
        match result.failure {
            Some(why) => failures.push((case.clone(), why)),
            None => coverage.add(&result.pinned),
        }
    }
    if !failures.is_empty() {
        return Err(LoadError::Samples { failures, total: cases.len() });
    }
    Ok(coverage)
}

/// The incoming samples: each must read to its expected answers with the candidate's
/// descriptions and code lists. Returns what they exercise.
fn gate_incoming(set: &RuleSet, cases: &[PathBuf]) -> Result<IncomingCoverage, LoadError> {
    let mut coverage = IncomingCoverage::new(&set.incoming);
    let mut failures = Vec::new();
    for case in cases {
        match crate::rules::incoming_samples::run(&set.incoming, &set.catalogue, case) {
            Ok(exercised) => coverage.add(&exercised),
            Err(why) => failures.push((case.clone(), why)),
        }
    }
    if !failures.is_empty() {
        return Err(LoadError::IncomingSamples { failures, total: cases.len() });
    }
    Ok(coverage)
}

/// The running rule set, shared by every request; requests take one snapshot at entry.
pub(crate) type Live = Arc<arc_swap::ArcSwap<RuleSet>>;
