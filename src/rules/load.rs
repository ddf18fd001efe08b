//! Loading a rule set: read the three folders, compile, check against the catalogue, run the
//! samples (the gate), and fingerprint the folders so the running server sees an edit.

use crate::config::Config;
use crate::dtc::catalogue::Catalogue;
use crate::dtc::write::Envelope;
use crate::rules::engine::{Rules, RulesFile};
use crate::rules::schema::Schema;
use crate::rules::set::{RuleSet, SCHEMA_FILE};
use crate::rules::template::{Template, TemplateDef};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn files_in(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, String> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    Ok(out)
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The folders a rule set is read from (the sample folders as they are now: list them again to
/// see a sample added since).
pub fn watched_dirs(root: &Path) -> Vec<PathBuf> {
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
    dirs
}

/// A fingerprint of the files under the rule folders: their names and their bytes, read through
/// symlinks. Not sizes and modification times: a copy that keeps times (`cp -p`, `rsync -t`,
/// `tar`) can change a file without changing either, and a file reached through a link (a
/// Kubernetes ConfigMap swaps its `..data` link to a new folder) changes while the link the
/// folder holds does not. The folders hold a few hundred KB, read about once a second.
pub fn fingerprint(root: &Path) -> u64 {
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
pub fn load(config: &Config) -> Result<RuleSet, String> {
    let root = &config.rules_dir;
    let mut hasher = Sha256::new();
    let mut files = Vec::new();
    let mut take = |path: &Path| -> Result<String, String> {
        let text = read(path)?;
        let rel = path.strip_prefix(root).unwrap_or(path).display().to_string();
        hasher.update(rel.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
        files.push(rel);
        Ok(text)
    };

    if !root.join("schemas").is_dir() || !root.join("rules").is_dir() || !root.join("flow-templates").is_dir() {
        return Err(format!("{} does not hold schemas/, rules/ and flow-templates/: run from the repository root or pass --rules-dir", root.display()));
    }
    let schema_path = root.join("schemas").join(SCHEMA_FILE);
    let schema_doc: serde_json::Value = serde_json::from_str(&take(&schema_path)?).map_err(|e| format!("{}: {e}", schema_path.display()))?;
    let schema = Schema::compile(schema_doc).map_err(|e| format!("{}: {e}", schema_path.display()))?;

    let rules_dir = root.join("rules");
    let mut rule_files = Vec::new();
    for path in files_in(&rules_dir, "yaml")? {
        let text = take(&path)?;
        let file: RulesFile = serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        rule_files.push((path.display().to_string(), file));
    }
    let mut helpers = Vec::new();
    for path in files_in(&rules_dir, "rhai")? {
        helpers.push((path.display().to_string(), take(&path)?));
    }
    let rules = Rules::compile(rule_files, helpers, &config.rhai).map_err(|e| e.to_string())?;

    let tdir = root.join("flow-templates");
    let catalogue = Catalogue::load(&tdir.join("catalogue")).map_err(|e| e.to_string())?;
    let mut templates = HashMap::new();
    for path in files_in(&tdir, "yaml")? {
        let text = take(&path)?;
        let def: TemplateDef = serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path.display().to_string();
        let t = Template::compile(&name, def, &rules, &catalogue).map_err(|e| e.to_string())?;
        // The configuration checked `flows.object_name` with flow ids of at most this length.
        crate::domain::names::check_flow_id(&t.flow).map_err(|e| format!("{name}: {e}"))?;
        if templates.contains_key(&t.flow) {
            return Err(format!("{name}: a second template for {}", t.flow));
        }
        templates.insert(t.flow.clone(), t);
    }
    let incoming = crate::rules::incoming::load(root, &catalogue, &mut take).map_err(|e| e.to_string())?;
    for choice in &rules.flows {
        if !templates.contains_key(&choice.def.flow) {
            return Err(format!("flow choice {:?}: no template for {}", choice.def.id, choice.def.flow));
        }
    }
    for (name, r) in &rules.recipients {
        if !config.flows.roles.contains_key(&r.role) {
            return Err(format!("recipient {name:?}: role {:?} has no role code in the configuration (flows.roles)", r.role));
        }
    }
    let sdir = rules_dir.join("samples");
    let samples = crate::rules::samples::cases(&sdir);
    for case in &samples {
        take(&case.join("request.json"))?;
        take(&case.join("expect.json"))?;
        let flows = case.join("flows");
        if flows.is_dir() {
            for path in files_in(&flows, "usr")? {
                take(&path)?;
            }
        }
    }

    let digest = hasher.finalize();
    let revision: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let mut set = RuleSet {
        revision: format!("{}+{}", schema.version, revision),
        schema,
        rules,
        templates,
        catalogue,
        incoming,
        envelope: Envelope {
            test_flag: config.flows.test_flag.clone(),
            crlf: config.flows.line_ending == "crlf",
            object_name: config.flows.object_name.clone(),
        },
        sender_role: config.flows.sender_role.clone(),
        roles: config.flows.roles.clone(),
        max_errors: config.max_errors,
        files,
        coverage: String::new(),
        samples: samples.len(),
    };
    // Sample bodies: each must get its expected answer from the candidate, and together they
    // must exercise all of it.
    let mut coverage = crate::rules::samples::Coverage::new(&set);
    let mut failures = Vec::new();
    for case in &samples {
        let result = crate::rules::samples::run_sample(&set, case);
        match result.failure {
            Some(why) => failures.push(format!("sample {}: {why}", case.display())),
            None => coverage.add(&result.pinned),
        }
    }
    if !failures.is_empty() {
        return Err(format!("{} of {} samples do not get their expected answer:\n{}", failures.len(), samples.len(), failures.join("\n")));
    }
    let uncovered = coverage.uncovered();
    if !uncovered.is_empty() {
        return Err(format!(
            "no sample in {} exercises {} (coverage: {}): add a sample that does, or remove what none needs",
            sdir.display(),
            uncovered.join(", "),
            coverage.summary()
        ));
    }
    set.coverage = coverage.summary();
    Ok(set)
}

/// The running rule set, shared by every request; requests take one snapshot at entry.
pub type Live = Arc<arc_swap::ArcSwap<RuleSet>>;
