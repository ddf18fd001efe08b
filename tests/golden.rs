//! One generated test per golden case folder in `tests/cases/`: the decision (status, scenario,
//! flows, pointers, warnings) and the flow files, byte for byte; every flow file written also
//! reads back without a finding through the DTC reader (catalogue check).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = flowgate::config::Config { rules_dir: repo.clone(), ..Default::default() };
    let set = Arc::new(flowgate::rules::load::load(&config).unwrap_or_else(|e| panic!("rule set: {e}")));
    let trials = flowgate::rules::samples::cases(&repo.join("tests/cases"))
        .into_iter()
        .map(|dir| {
            let set = set.clone();
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            Trial::test(name, move || {
                let result = flowgate::rules::samples::run_case(&set, &dir, false);
                if let Some(f) = result.failure {
                    return Err(Failed::from(f));
                }
                let expect: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("expect.json")).unwrap()).unwrap();
                let produces = expect["flows"].as_array().is_some_and(|f| !f.is_empty());
                if produces && !dir.join("flows").is_dir() {
                    return Err(Failed::from("the case produces flows but has no flows/ folder"));
                }
                // Every file written also reads back cleanly through the catalogue-driven reader.
                for (name, content) in &result.files {
                    if let Err(findings) = flowgate::dtc::reader::read(content.as_bytes(), &set.catalogue) {
                        let listed: Vec<String> = findings.iter().map(|f| format!("{f:?}")).collect();
                        return Err(Failed::from(format!("{name} fails the catalogue check: {}", listed.join("; "))));
                    }
                }
                Ok(())
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
