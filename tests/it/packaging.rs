//! The packaging files, checked without Docker or systemd (neither may run where the tests do):
//! the image's toolchain is the one Cargo.toml asks for, and the image's HEALTHCHECK command,
//! run as Docker would run it, tells a ready server from no server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::process::Command;

fn read(path: &str) -> String {
    std::fs::read_to_string(common::repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_image_builds_with_the_toolchain_cargo_toml_names() {
    let manifest = read("Cargo.toml");
    let version = manifest.lines().find_map(|l| l.strip_prefix("rust-version = ")).unwrap().trim_matches('"');
    let dockerfile = read("Dockerfile");
    let builder = dockerfile.lines().find(|l| l.starts_with("FROM rust:")).unwrap();
    assert!(builder.starts_with(&format!("FROM rust:{version}-")), "{builder} is not Rust {version}");
}

/// The HEALTHCHECK's command, in exec form: the program and its arguments.
fn healthcheck() -> Vec<String> {
    let dockerfile = read("Dockerfile");
    let json = dockerfile.lines().find_map(|l| l.trim().strip_prefix("CMD [\"bash\"")).map(|rest| format!("[\"bash\"{rest}")).unwrap();
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

#[test]
fn the_image_healthcheck_passes_on_a_ready_server_and_fails_without_one() {
    let cmd = healthcheck();
    // As in the image: FLOWGATE_LISTEN names the port, on every address.
    let check = |port: u16| Command::new(&cmd[0]).args(&cmd[1..]).env("FLOWGATE_LISTEN", format!("0.0.0.0:{port}")).status().unwrap().success();
    let data = common::temp_dir("healthcheck");
    let (mut child, addr) = common::serve_binary(&data, &[]);
    let ready = check(addr.port());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ready, "the healthcheck failed on a ready server: {cmd:?}");
    assert!(!check(addr.port()), "the healthcheck passed with no server");
}
