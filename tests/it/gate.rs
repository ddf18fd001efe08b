//! The reload gate is total: an emptied or half-written file of any rule folder (an editor that
//! writes in place, a copy cut short) never loads, whichever line it stops after. The samples in
//! `rules/samples/` pin their whole answers and together exercise every rule, scenario, flow
//! choice and optional template group, and every incoming flow description, what it matches and
//! shows, and every code of the code lists; so a file cut short either loses something a sample
//! expects or keeps something no sample exercises any more, and the candidate is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::path::Path;
use std::time::Instant;

/// The files a rule set is built from, relative to the rules folder (the catalogue is reference
/// data checked on its own, not written by analysts).
fn rule_files(root: &Path) -> Vec<String> {
    let mut out = vec![format!("schemas/{}", flowgate::rules::set::SCHEMA_FILE)];
    let folders =
        [("rules", "yaml"), ("rules", "rhai"), ("flow-templates", "yaml"), ("flow-templates/incoming", "yaml"), ("flow-templates/code-lists", "yaml")];
    for (dir, ext) in folders {
        let mut names: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(&format!(".{ext}")))
            .map(|n| format!("{dir}/{n}"))
            .collect();
        names.sort();
        out.extend(names);
    }
    out
}

/// How many whole lines to keep: none (emptied), all but the last, and about 16 evenly spaced
/// points in between.
fn cut_points(lines: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..16).map(|i| i * lines / 16).collect();
    cuts.push(lines.saturating_sub(1));
    cuts.sort_unstable();
    cuts.dedup();
    cuts.retain(|&k| k < lines);
    cuts
}

/// True when the lines removed are only blank lines and comments: the file means what it did.
fn only_comments(removed: &[&str], file: &str) -> bool {
    let comment = match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("rhai") => Some("//"),
        Some("yaml") => Some("#"),
        _ => None,
    };
    removed.iter().all(|l| l.trim().is_empty() || comment.is_some_and(|c| l.trim_start().starts_with(c)))
}

#[test]
fn every_emptied_or_truncated_rule_file_is_refused() {
    let root = common::temp_dir("gate");
    common::copy_rules(&root);
    let config = flowgate::config::Config { rules_dir: root.clone(), ..Default::default() };
    let started = Instant::now();
    flowgate::rules::load::load(&config).unwrap_or_else(|e| panic!("the unchanged copy does not load: {e}"));

    let (mut tried, mut skipped, mut accepted) = (0, 0, Vec::new());
    for file in rule_files(&root) {
        let path = root.join(&file);
        let whole = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = whole.split_inclusive('\n').collect();
        for keep in cut_points(lines.len()) {
            if keep > 0 && only_comments(&lines[keep..], &file) {
                skipped += 1;
                continue;
            }
            std::fs::write(&path, lines[..keep].concat()).unwrap();
            tried += 1;
            if flowgate::rules::load::load(&config).is_ok() {
                accepted.push(if keep == 0 { format!("{file} emptied") } else { format!("{file} cut after line {keep} of {}", lines.len()) });
            }
        }
        std::fs::write(&path, &whole).unwrap();
    }
    println!(
        "gate: {tried} emptied or truncated rule files tried, {} accepted, {skipped} cuts skipped (only comments or blank lines removed), {:.1} s",
        accepted.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(accepted.is_empty(), "{} of {tried} broken rule files loaded:\n  {}", accepted.len(), accepted.join("\n  "));
}

/// Deletes entry `index` of the list `key` in a YAML file (comments are lost; the meaning stays).
fn without_entry(text: &str, key: &str, index: usize) -> (String, String) {
    let mut doc: yaml_serde::Value = yaml_serde::from_str(text).unwrap();
    let list = doc.get_mut(key).and_then(yaml_serde::Value::as_sequence_mut).unwrap();
    let gone = list.remove(index);
    let id = gone.get("id").and_then(yaml_serde::Value::as_str).unwrap().to_string();
    (yaml_serde::to_string(&doc).unwrap(), id)
}

#[test]
fn removing_any_one_rule_scenario_or_flow_choice_is_refused() {
    let root = common::temp_dir("gate-remove");
    common::copy_rules(&root);
    let config = flowgate::config::Config { rules_dir: root.clone(), ..Default::default() };
    let (mut tried, mut accepted) = (0, Vec::new());
    for (file, key) in
        [("rules/blocks.yaml", "rules"), ("rules/consistency.yaml", "rules"), ("rules/scenarios.yaml", "scenarios"), ("rules/flows.yaml", "flows")]
    {
        let path = root.join(file);
        let whole = std::fs::read_to_string(&path).unwrap();
        let doc: yaml_serde::Value = yaml_serde::from_str(&whole).unwrap();
        let n = doc.get(key).and_then(yaml_serde::Value::as_sequence).unwrap().len();
        for i in 0..n {
            let (text, id) = without_entry(&whole, key, i);
            std::fs::write(&path, text).unwrap();
            tried += 1;
            if flowgate::rules::load::load(&config).is_ok() {
                accepted.push(format!("{file}: without {id}"));
            }
        }
        std::fs::write(&path, &whole).unwrap();
    }
    println!("gate: {tried} sets each missing one rule, scenario or flow choice tried, {} accepted", accepted.len());
    assert!(accepted.is_empty(), "{} of {tried} sets missing an entry loaded:\n  {}", accepted.len(), accepted.join("\n  "));
}

/// `whole` (a YAML mapping) with `edit` applied; comments are lost, the meaning stays otherwise.
fn edited(whole: &str, edit: impl FnOnce(&mut yaml_serde::Mapping)) -> String {
    let mut doc: yaml_serde::Value = yaml_serde::from_str(whole).unwrap();
    edit(doc.as_mapping_mut().unwrap());
    yaml_serde::to_string(&doc).unwrap()
}

/// The keys of the mapping `key` of a YAML file.
fn keys(whole: &str, key: &str) -> Vec<String> {
    let doc: yaml_serde::Value = yaml_serde::from_str(whole).unwrap();
    doc.get(key).and_then(yaml_serde::Value::as_mapping).unwrap().keys().map(|k| k.as_str().unwrap().to_string()).collect()
}

#[test]
fn removing_any_one_part_of_an_incoming_description_or_code_is_refused() {
    let root = common::temp_dir("gate-incoming");
    common::copy_rules(&root);
    let config = flowgate::config::Config { rules_dir: root.clone(), ..Default::default() };
    let (mut tried, mut accepted) = (0, Vec::new());
    let mut attempt = |file: &str, text: String, what: String| {
        let path = root.join(file);
        let whole = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text).unwrap();
        tried += 1;
        if flowgate::rules::load::load(&config).is_ok() {
            accepted.push(format!("{file}: without {what}"));
        }
        std::fs::write(&path, whole).unwrap();
    };
    for file in rule_files(&root).into_iter().filter(|f| f.starts_with("flow-templates/incoming/")) {
        let whole = std::fs::read_to_string(root.join(&file)).unwrap();
        for name in keys(&whole, "show") {
            let text = edited(&whole, |doc| {
                doc.get_mut("show").and_then(yaml_serde::Value::as_mapping_mut).unwrap().remove(name.as_str());
            });
            attempt(&file, text, format!("show {name}"));
        }
        for name in keys(&whole, "match").into_iter().filter(|k| k != "mpan") {
            let text = edited(&whole, |doc| {
                doc.get_mut("match").and_then(yaml_serde::Value::as_mapping_mut).unwrap().remove(name.as_str());
            });
            attempt(&file, text, format!("match {name}"));
        }
    }
    for file in rule_files(&root).into_iter().filter(|f| f.starts_with("flow-templates/code-lists/")) {
        let whole = std::fs::read_to_string(root.join(&file)).unwrap();
        for code in keys(&whole, "codes") {
            let text = edited(&whole, |doc| {
                doc.get_mut("codes").and_then(yaml_serde::Value::as_mapping_mut).unwrap().remove(code.as_str());
            });
            attempt(&file, text, format!("code {code}"));
        }
    }
    for file in rule_files(&root).into_iter().filter(|f| f.starts_with("flow-templates/incoming/")) {
        let path = root.join(&file);
        let whole = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        tried += 1;
        if flowgate::rules::load::load(&config).is_ok() {
            accepted.push(format!("without {file}"));
        }
        std::fs::write(&path, whole).unwrap();
    }
    // The refusal says which sample read what, against what it expects.
    let path = root.join("flow-templates/code-lists/J1823.yaml");
    let whole = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edited(&whole, |doc| drop(doc.get_mut("codes").and_then(yaml_serde::Value::as_mapping_mut).unwrap().remove("U")))).unwrap();
    let err = flowgate::rules::load::load(&config).err().unwrap().to_string();
    std::fs::write(&path, whole).unwrap();
    assert!(err.contains("d0126-every-clearance-code: answer 4 reads") && err.contains(r#""meaning":null"#), "{err}");
    println!("gate: {tried} sets each missing one part of an incoming flow description, a code or a description tried, {} accepted", accepted.len());
    assert!(tried > 0 && accepted.is_empty(), "{} of {tried} sets missing a part loaded:\n  {}", accepted.len(), accepted.join("\n  "));
}
