//! The analysts' verbs on the real binary: `check` explains a decision (each rule, scenario and
//! flow choice that fired, with the body values its condition read, through helper calls too),
//! `test` runs a folder of golden cases and fails on a wrong one, `parse` reads a flow file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn flowgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::BIN).args(args).current_dir(common::repo()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `flowgate` with `env` added, ended after `limit` if it has not exited by then (a command that
/// should only print help may start a server instead): its exit code, or `None` if it was ended.
fn flowgate_within(args: &[&str], env: &[(&str, &std::ffi::OsStr)], limit: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(common::BIN)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(common::repo())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let (out, err) = (drain(Box::new(child.stdout.take().unwrap())), drain(Box::new(child.stderr.take().unwrap())));
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status.code().unwrap_or(-1));
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, out.join().unwrap(), err.join().unwrap())
}

fn fired<'a>(report: &'a Value, kind: &str, rule: &str) -> &'a Value {
    report["fired"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == kind && t["rule"] == rule)
        .unwrap_or_else(|| panic!("{kind} {rule} did not fire: {report:#}"))
}

#[test]
fn check_explains_what_fired_and_the_values_it_read() {
    let (code, out, err) = flowgate(&["check", "tests/cases/s03-left-de-energised/request.json"]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["status"], 200, "{report:#}");
    assert_eq!(report["answer"]["scenario"], "S03");
    // A flow choice written as a helper call shows the fields the helper read.
    let d0139 = fired(&report, "flow", "d0139-energisation-status");
    assert_eq!(d0139["values"]["exec.site_de_energised"], true, "{d0139:#}");
    assert_eq!(d0139["values"]["exec.site_re_energised"], false, "{d0139:#}");

    // A body that would be refused: the report, and exit status 1.
    let (code, out, _) = flowgate(&["check", "tests/cases/public-bad-mpan-check-digit/request.json"]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["status"], 400);
    let rule = fired(&report, "rule", "mpan-check-digit");
    assert_eq!(rule["values"].as_object().unwrap().keys().collect::<Vec<_>>(), ["job.mpan"], "{rule:#}");
    assert_eq!(rule["values"]["job.mpan"], "1129383838384");
    assert!(report["not_fired"].as_array().unwrap().iter().any(|r| r == "rule mpan-distributor-unknown"), "{report:#}");
}

#[test]
fn test_passes_the_golden_cases_and_fails_a_wrong_expectation() {
    let (code, out, err) = flowgate(&["test", "tests/cases"]);
    assert_eq!(code, 0, "{out}{err}");
    let cases = flowgate::rules::samples::cases(&common::repo().join("tests/cases")).len();
    assert!(out.contains(&format!("{cases} passed, 0 failed")), "{out}");
    // The golden cases, and the reload gate's samples, exercise every rule, scenario, flow choice
    // and optional template group; the samples also every incoming flow description, what it
    // matches and shows, and every code.
    for (prefix, kinds) in [("coverage:", 4), ("samples coverage:", 7)] {
        let line = out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} line: {out}"));
        let counts = line.trim_start_matches(prefix).split(" (").next().unwrap();
        let parts: Vec<&str> = counts.split(',').map(str::trim).collect();
        assert_eq!(parts.len(), kinds, "{line}");
        for part in parts {
            let (what, count) = part.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            let (got, of) = count.split_once('/').unwrap_or_else(|| panic!("{line}"));
            assert!(got == of && of != "0", "{what} {count} in {line}");
        }
        assert!(line.contains("scenarios 8/8"), "{line}");
    }
    assert!(out.contains("incoming flows 2/2, incoming items 15/15, codes 4/4 (32 samples in"), "{out}");
    assert!(!out.contains("not exercised"), "{out}");

    let dir = common::temp_dir("cli-test");
    let case = dir.join("wrong-scenario");
    std::fs::create_dir_all(&case).unwrap();
    std::fs::copy(common::repo().join("tests/cases/s01-minimal/request.json"), case.join("request.json")).unwrap();
    std::fs::write(case.join("expect.json"), r#"{"status": 200, "scenario": "S02", "flows": ["D0396>X/TEST"]}"#).unwrap();
    // The same field blamed, by another rule than expected.
    let case = dir.join("wrong-rule");
    std::fs::create_dir_all(&case).unwrap();
    std::fs::copy(common::repo().join("tests/cases/public-bad-mpan-check-digit/request.json"), case.join("request.json")).unwrap();
    std::fs::write(case.join("expect.json"), r#"{"status": 400, "pointers": ["/job_details/mpan"], "rules": ["mpan-distributor-unknown"]}"#).unwrap();
    let (code, out, err) = flowgate(&["test", dir.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(out.contains("FAIL wrong-scenario") && out.contains("0 passed, 2 failed"), "{out}");
    assert!(out.contains("FAIL wrong-rule: rules {\"mpan-check-digit\"}, want {\"mpan-distributor-unknown\"}"), "{out}");
    // Two cases cover little, and say what they leave out.
    assert!(out.contains("not exercised by these cases: rule risk-assessment-required"), "{out}");
}

#[test]
fn check_and_test_refuse_a_rule_set_whose_samples_leave_a_scenario_unexercised_and_name_it() {
    let rules = common::temp_dir("cli-coverage");
    common::copy_rules(&rules);
    std::fs::remove_dir_all(rules.join("rules/samples/s06-risk-assessment")).unwrap();
    let dir = rules.to_str().unwrap();
    for args in [vec!["check", "tests/cases/s01-minimal/request.json", "--rules-dir", dir], vec!["test", "tests/cases", "--rules-dir", dir]] {
        let (code, out, err) = flowgate(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains("exercises scenario S06 (coverage: rules 21/21, scenarios 7/8, flow choices 5/5, optional groups 4/4, incoming flows 2/2, incoming items 15/15, codes 4/4)"), "{args:?}: {err}");
    }
}

#[test]
fn parse_prints_a_flow_file_or_its_findings() {
    let (code, out, err) = flowgate(&["parse", "tests/reader/valid/D0126-two-mpans.usr"]);
    assert_eq!(code, 0, "{err}");
    let parsed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(parsed["header"]["flow"], "D0126", "{parsed:#}");
    let broken = common::temp_dir("cli-parse").join("broken.usr");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    std::fs::write(&broken, "ZHV|X|D0126001|J|EMEB|M|DEMO|20250110093000||||TR01|\n").unwrap();
    let (code, out, err) = flowgate(&["parse", broken.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(format!("{out}{err}").contains("ZPT"), "{out}{err}");
}

#[test]
fn serve_makes_no_development_key_for_a_store_whose_keys_file_is_missing() {
    let data = common::temp_dir("cli-serve");
    std::fs::create_dir_all(data.join("store")).unwrap();
    let (code, out, err) = flowgate(&["serve", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("holds a store"), "{err}");
    assert!(!out.contains("fgk_") && !data.join("keys.yaml").exists(), "{out}");
}

#[test]
fn keys_commands_keep_the_file_private_and_whole() {
    let data = common::temp_dir("cli-keys");
    let dir = data.to_str().unwrap();
    let (code, out, err) = flowgate(&["keys", "add", "--name", "Acme SIP", "--sip-id", "ACME", "--data-dir", dir]);
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().starts_with("fgk_"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("keys.yaml")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "keys.yaml mode {mode:o}");
    }
    let (code, _, err) = flowgate(&["keys", "revoke", "Acme SIP", "--data-dir", dir]);
    assert_eq!(code, 0, "{err}");
    let (_, list, _) = flowgate(&["keys", "list", "--data-dir", dir]);
    assert!(list.contains("revoked") && list.contains("Acme SIP"), "{list}");
    // The keys file's flags may come before the sub-verb too.
    let (code, before, err) = flowgate(&["keys", "--data-dir", dir, "list"]);
    assert_eq!((code, before), (0, list), "{err}");
    let leftovers: Vec<_> =
        std::fs::read_dir(&data).unwrap().filter_map(Result::ok).map(|e| e.file_name().into_string().unwrap()).filter(|n| n.ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_configuration_whose_names_cannot_be_delivered_is_refused() {
    let dir = common::temp_dir("cli-names");
    let request = "tests/cases/public-completed-isolation/request.json";
    let refused = |yaml: &str, why: &str| {
        let config = dir.join(format!("{}.yaml", ulid::Ulid::new()));
        std::fs::write(&config, yaml).unwrap();
        let (code, out, err) = flowgate(&["check", request, "--config", config.to_str().unwrap()]);
        assert_ne!(code, 0, "{yaml}: accepted\n{out}");
        assert!(err.contains(why), "{yaml}: {err}");
    };
    // A file name over 255 bytes, a key over 1,024 with the prefix, two flows under one name.
    refused(&format!("flows:\n  object_name: out/{}_{{file_id}}.usr\n", "x".repeat(250)), "segment of 265 bytes");
    refused(&format!("sink:\n  kind: s3\n  s3:\n    prefix: {}/{}/\n", "p".repeat(255), "q".repeat(255)), "at most 508 bytes");
    refused("flows:\n  object_name: out/{to_mpid}/{flow}.usr\n", "{file_id}");
}

/// The check `test --junit` is read with refuses what is not well-formed, so its passing means something.
#[test]
fn the_xml_check_refuses_what_is_not_well_formed() {
    assert!(common::xml::parse("<?xml version=\"1.0\"?>\n<a x=\"1\"><b>t &amp; &#60; &#x3E;</b><c/></a>\n").is_ok());
    for bad in [
        "<a>&</a>",
        "<a>a < b</a>",
        "<a>&nbsp;</a>",
        "<a>\u{1}</a>",
        "<a>&#1;</a>",
        "<a x=\"\u{1b}\"/>",
        "<a x=\"a\"b\"/>",
        "<a x=\"<\"/>",
        "<a x=1/>",
        "<a x=\"1\" x=\"2\"/>",
        "<a><b></a></b>",
        "<a></a><b/>",
        "<a>]]></a>",
        "<a>",
    ] {
        assert!(common::xml::parse(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn test_junit_is_well_formed_with_the_attributes_ci_tools_read() {
    let dir = common::temp_dir("cli-junit");
    let case = |name: &str, expect: &str| {
        let case = dir.join(name);
        std::fs::create_dir_all(&case).unwrap();
        std::fs::copy(common::repo().join("tests/cases/s01-minimal/request.json"), case.join("request.json")).unwrap();
        std::fs::write(case.join("expect.json"), expect).unwrap();
    };
    case("a-passes", r#"{"status": 200, "scenario": "S01"}"#);
    // The failure names the expected scenario: XML's special characters, two control characters
    // XML 1.0 cannot carry at all (even as references), and the end of a CDATA section.
    case("b-fails", r#"{"status": 200, "scenario": "S0<&\"'>\u0001\u001b]]>"}"#);
    let junit = dir.join("junit.xml");
    let (code, out, err) = flowgate(&["test", dir.to_str().unwrap(), "--junit", junit.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    let root = common::xml::parse(&xml).unwrap_or_else(|e| panic!("not well-formed: {e}\n{xml}"));
    let seconds = |el: &common::xml::Element| {
        let t: f64 = el.attr("time").unwrap_or_else(|| panic!("no time on <{}>: {xml}", el.name)).parse().unwrap();
        assert!(t.is_finite() && t >= 0.0, "{xml}");
    };
    let counts = |el: &common::xml::Element| {
        assert_eq!((el.attr("tests"), el.attr("failures"), el.attr("errors")), (Some("2"), Some("1"), Some("0")), "<{}>: {xml}", el.name);
        seconds(el);
    };
    assert_eq!(root.name, "testsuites", "{xml}");
    counts(&root);
    let suites: Vec<_> = root.children_named("testsuite").collect();
    assert_eq!(suites.len(), 1, "{xml}");
    let suite = suites[0];
    assert!(suite.attr("name").is_some_and(|n| !n.is_empty()), "{xml}");
    counts(suite);
    let cases: Vec<_> = suite.children_named("testcase").collect();
    assert_eq!(cases.iter().map(|c| c.attr("name").unwrap()).collect::<Vec<_>>(), ["a-passes", "b-fails"], "{xml}");
    for c in &cases {
        assert!(c.attr("classname").is_some_and(|n| !n.is_empty()), "{xml}");
        seconds(c);
    }
    assert_eq!(cases[0].children.len(), 0, "{xml}");
    let failures: Vec<_> = cases[1].children_named("failure").collect();
    assert_eq!(failures.len(), 1, "{xml}");
    // Each control character is named where it was; everything else arrives as it was written.
    let want = "scenario S01, want S0<&\"'>[U+0001][U+001B]]]>";
    assert_eq!(failures[0].attr("message"), Some(want), "{xml}");
    assert!(failures[0].text.contains(want), "{xml}");
}

/// Every verb and sub-verb, as a user would type it before `-h` or `--help`.
const VERBS: [&[&str]; 11] = [
    &[],
    &["serve"],
    &["keys"],
    &["keys", "add"],
    &["keys", "list"],
    &["keys", "revoke"],
    &["check"],
    &["parse"],
    &["test"],
    &["config"],
    &["config", "check"],
];

#[test]
fn help_on_every_verb_and_sub_verb_prints_help_and_starts_nothing() {
    for verb in VERBS {
        for flag in ["-h", "--help"] {
            // Should the help flag be taken for something else, the server starts on a free port
            // in an empty folder: it is caught there, and ended.
            let data = common::temp_dir("cli-help");
            let args: Vec<&str> = verb.iter().copied().chain([flag]).collect();
            let env = [("FLOWGATE_DATA_DIR", data.as_os_str()), ("FLOWGATE_LISTEN", "127.0.0.1:0".as_ref())];
            let (code, out, err) = flowgate_within(&args, &env, Duration::from_secs(20));
            assert_eq!(code, Some(0), "{args:?}: exit {code:?}\n{out}{err}");
            assert!(out.contains("Usage: flowgate") && out.contains(&verb.join(" ")), "{args:?}: {out}{err}");
            assert!(std::fs::read_dir(&data).unwrap().next().is_none(), "{args:?} wrote to the data folder: {out}{err}");
        }
    }
    // Each verb says what its exit status means.
    for verb in [&["check"][..], &["parse"], &["test"], &["config", "check"]] {
        let args: Vec<&str> = verb.iter().copied().chain(["--help"]).collect();
        let (_, out, _) = flowgate(&args);
        assert!(out.contains("Exit status"), "{args:?}: {out}");
    }
    let (code, out, _) = flowgate(&["--help"]);
    assert_eq!(code, 0);
    for line in ["Exit status", "0  ", "1  ", "2  ", "FLOWGATE_LISTEN"] {
        assert!(out.contains(line), "no {line:?} in: {out}");
    }
    let (code, out, _) = flowgate(&["help", "keys", "add"]);
    assert!(code == 0 && out.contains("--sip-id"), "{out}");
}

#[test]
fn version_is_printed_by_dash_v() {
    for flag in ["-V", "--version"] {
        let (code, out, err) = flowgate(&[flag]);
        assert_eq!((code, out.as_str()), (0, format!("flowgate {}\n", env!("CARGO_PKG_VERSION")).as_str()), "{flag}: {err}");
    }
}

#[test]
fn a_stray_argument_is_refused_before_anything_runs() {
    let data = common::temp_dir("cli-stray");
    let request = "tests/cases/s01-minimal/request.json";
    for args in [
        vec!["serve", "extra"],
        vec!["check", request, "another.json"],
        vec!["parse", "tests/reader/valid/D0126-two-mpans.usr", "another.usr"],
        vec!["test", "tests/cases", "tests/cases"],
        vec!["keys", "list", "extra"],
        vec!["keys", "revoke", "Acme SIP", "extra"],
        vec!["config", "check", "extra"],
        vec!["check", request, "--no-such-flag"],
        vec!["sevre"],
    ] {
        let env = [("FLOWGATE_DATA_DIR", data.as_os_str()), ("FLOWGATE_LISTEN", "127.0.0.1:0".as_ref())];
        let (code, out, err) = flowgate_within(&args, &env, Duration::from_secs(20));
        assert_eq!(code, Some(2), "{args:?}: exit {code:?}\n{out}{err}");
        assert!(out.is_empty() && err.contains("Usage:"), "{args:?}: {out}{err}");
    }
    // A mistyped verb gets a suggestion.
    let (_, _, err) = flowgate(&["sevre"]);
    assert!(err.contains("serve"), "{err}");
    assert!(std::fs::read_dir(&data).unwrap().next().is_none());
}

#[test]
fn check_exits_zero_for_a_body_that_would_be_accepted_and_one_for_one_that_would_be_refused() {
    let (code, out, err) = flowgate(&["check", "tests/cases/s01-minimal/request.json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"status\": 200"), "{out}");
    let (code, out, err) = flowgate(&["check", "tests/cases/public-bad-mpan-check-digit/request.json"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("\"status\": 400"), "{out}");
    // Could not answer at all: 2.
    let (code, _, err) = flowgate(&["check", "no-such-request.json"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn settings_come_from_defaults_then_the_file_then_the_environment_then_flags() {
    let dir = common::temp_dir("cli-precedence");
    let file = dir.join("flowgate.yaml");
    std::fs::write(&file, "listen: 127.0.0.1:1111\ndata_dir: from-file\nrules_dir: from-file\nmax_errors: 7\n").unwrap();
    let config = format!("--config={}", file.display());
    let env = [("FLOWGATE_LISTEN", "127.0.0.1:2222".as_ref()), ("FLOWGATE_RULES_DIR", "from-env".as_ref())];
    // The last of a repeated flag wins, `--flag=value` and `--flag value` alike.
    let args = ["config", "check", &config, "--rules-dir", "first-flag", "--rules-dir=from-flag"];
    let (code, out, err) = flowgate_within(&args, &env, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{out}{err}");
    let effective: Value = yaml_serde::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(effective["max_errors"], 7, "file over default: {out}");
    assert_eq!(effective["data_dir"], "from-file", "file over default: {out}");
    assert_eq!(effective["listen"], "127.0.0.1:2222", "environment over file: {out}");
    assert_eq!(effective["rules_dir"], "from-flag", "flag over environment: {out}");
    assert_eq!(effective["body_limit_bytes"], 33554432, "default: {out}");

    // A configuration refused is the verb's answer (1); one that cannot be read is not (2).
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "log_format: xml\n").unwrap();
    let (code, _, err) = flowgate(&["config", "check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("log_format") && err.contains("expected `text` or `json`"), "{err}");
    std::fs::write(&bad, "no_such_key: 1\n").unwrap();
    let (code, _, err) = flowgate(&["config", "check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no_such_key"), "{err}");
    let (code, _, err) = flowgate(&["config", "check", "--config", dir.join("missing.yaml").to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
}

/// Every key of a value, as dotted paths (`flows.roles.dno`).
fn key_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Object(map) = value {
        for (k, v) in map {
            let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            out.push(path.clone());
            key_paths(v, &path, out);
        }
    }
}

#[test]
fn the_example_configuration_is_valid_and_holds_every_key_at_its_default() {
    // Without the environment's settings, the example takes effect as it is written.
    let out = Command::new(common::BIN)
        .args(["config", "check", "--config", "flowgate.example.yaml"])
        .current_dir(common::repo())
        .env_remove("FLOWGATE_LISTEN")
        .env_remove("FLOWGATE_DATA_DIR")
        .env_remove("FLOWGATE_RULES_DIR")
        .env_remove("FLOWGATE_S3_ENDPOINT")
        .env_remove("FLOWGATE_S3_BUCKET")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let defaults = serde_json::to_value(flowgate::config::Config::default()).unwrap();
    let effective: Value = yaml_serde::from_str(&stdout).unwrap();
    assert_eq!(effective, defaults, "{stdout}");

    // The file itself names every key Config has (a key added to Config and not to the example
    // fails here), at its default.
    let text = std::fs::read_to_string(common::repo().join("flowgate.example.yaml")).unwrap();
    let example: Value = yaml_serde::from_str(&text).unwrap();
    let (mut want, mut got) = (Vec::new(), Vec::new());
    key_paths(&defaults, "", &mut want);
    key_paths(&example, "", &mut got);
    let missing: Vec<_> = want.iter().filter(|k| !got.contains(k)).collect();
    let extra: Vec<_> = got.iter().filter(|k| !want.contains(k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing from the example: {missing:?}; not in Config: {extra:?}");
    assert_eq!(example, defaults);
}
