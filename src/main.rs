//! The `flowgate` command: `serve`, `keys`, `check`, `parse`, `test`. Parsing only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use flowgate::auth::{KeysFile, Rate};
use flowgate::config::Config;

const USAGE: &str = "\
flowgate: the rules-as-data gateway from SIP job worksheets to DTC data flows

usage:
  flowgate serve [--config FILE] [--listen ADDR] [--data-dir DIR] [--rules-dir DIR]
  flowgate keys add --name NAME --sip-id ABCD [--rate N] [--burst N] [--data-dir DIR] [--config FILE]
  flowgate keys list [--data-dir DIR] [--config FILE]
  flowgate keys revoke NAME|KEY_ID [--data-dir DIR] [--config FILE]
  flowgate check REQUEST.json [--sip-id ABCD] [--config FILE] [--rules-dir DIR]
  flowgate parse FLOW_FILE [--config FILE] [--rules-dir DIR]
  flowgate test [DIR] [--junit FILE] [--bless] [--config FILE] [--rules-dir DIR]

Defaults: listen 127.0.0.1:8080, data dir ./data, rules dir . (the folder holding schemas/,
rules/ and flow-templates/). Environment: FLOWGATE_LISTEN, FLOWGATE_DATA_DIR, FLOWGATE_RULES_DIR,
FLOWGATE_S3_ENDPOINT, FLOWGATE_S3_BUCKET (with sink.kind: s3), FLOWGATE_LOG (log filter).
";

/// Flags after the verb: `--name value` pairs, bare switches, and positional words.
struct Args {
    flags: Vec<(String, Option<String>)>,
    words: Vec<String>,
}

const SWITCHES: [&str; 1] = ["--bless"];

impl Args {
    fn parse(raw: &[String]) -> Result<Args, String> {
        let mut flags = Vec::new();
        let mut words = Vec::new();
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            if let Some((k, v)) = a.split_once('=').filter(|_| a.starts_with("--")) {
                flags.push((k.to_string(), Some(v.to_string())));
            } else if SWITCHES.contains(&a.as_str()) {
                flags.push((a.clone(), None));
            } else if a.starts_with("--") {
                let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
                flags.push((a.clone(), Some(v.clone())));
            } else {
                words.push(a.clone());
            }
        }
        Ok(Args { flags, words })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.flags.iter().rev().find(|(k, _)| k == name).and_then(|(_, v)| v.as_deref())
    }

    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(k, _)| k == name)
    }

    fn only(&self, allowed: &[&str]) -> Result<(), String> {
        match self.flags.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, _)) => Err(format!("unknown option {k}")),
            None => Ok(()),
        }
    }

    /// The configuration: file, environment, then these flags.
    fn config(&self) -> Result<Config, String> {
        let mut c = Config::load(self.get("--config").map(std::path::Path::new)).map_err(|e| e.to_string())?;
        if let Some(v) = self.get("--listen") {
            c.listen = v.parse().map_err(|_| format!("--listen: not an address: {v}"))?;
        }
        if let Some(v) = self.get("--data-dir") {
            c.data_dir = PathBuf::from(v);
        }
        if let Some(v) = self.get("--rules-dir") {
            c.rules_dir = PathBuf::from(v);
        }
        Ok(c)
    }
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((verb, rest)) = raw.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = Args::parse(rest).and_then(|args| match verb.as_str() {
        "serve" => serve(&args),
        "keys" => keys(&args),
        "check" => check(&args),
        "parse" => parse(&args),
        "test" => test(&args),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        "version" | "--version" => {
            println!("flowgate {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flowgate: {e}");
            ExitCode::from(2)
        }
    }
}

fn init_logs(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOWGATE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().flatten_event(true).with_current_span(true).init();
    } else {
        builder.with_ansi(false).init();
    }
}

fn serve(args: &Args) -> Result<ExitCode, String> {
    args.only(&["--config", "--listen", "--data-dir", "--rules-dir"])?;
    let config = args.config()?;
    init_logs(&config);
    let keys_path = config.keys_path();
    if !keys_path.exists() && config.data_dir.join("store").exists() {
        // A store without its keys file is a misconfiguration (a volume not mounted, a mistyped
        // keys_file), not a first start: no development key is made for it.
        return Err(format!(
            "no keys file at {}, but {} holds a store: restore the keys file, or add a key with `flowgate keys add`",
            keys_path.display(),
            config.data_dir.display()
        ));
    }
    if !keys_path.exists() {
        let mut keys = KeysFile::default();
        let key = keys.add("Development SIP", "DEMO", Rate::default()).map_err(|e| e.to_string())?;
        keys.write(&keys_path).map_err(|e| e.to_string())?;
        println!("No keys file yet: created {} with a development client (SIP ID DEMO).", keys_path.display());
        println!("Its key, shown only this once:");
        println!("{key}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let app = flowgate::server::App::start(config.clone()).map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%addr, ruleset = %app.rules.load().revision, data_dir = %config.data_dir.display(), "flowgate listening");
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        println!("flowgate listening on {scheme}://{addr}");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let background = flowgate::server::start_background(&app, stopped.clone()).map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: no new connections; finishing requests in flight");
            let _ = stop.send(true);
        });
        flowgate::server::serve(listener, app.clone(), stopped, Duration::from_secs(10)).await.map_err(|e| e.to_string())?;
        for task in background {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        tracing::info!("stopped");
        Ok::<_, String>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn keys(args: &Args) -> Result<ExitCode, String> {
    let config = args.config()?;
    let path = config.keys_path();
    // One keys command at a time: two read-change-writes at once could undo a revoke.
    let _lock = KeysFile::lock(&path).map_err(|e| e.to_string())?;
    let mut file = if path.exists() { KeysFile::read(&path).map_err(|e| e.to_string())? } else { KeysFile::default() };
    match args.words.first().map(String::as_str) {
        Some("add") => {
            args.only(&["--config", "--data-dir", "--name", "--sip-id", "--rate", "--burst"])?;
            let name = args.get("--name").ok_or("keys add needs --name")?;
            let sip_id = args.get("--sip-id").ok_or("keys add needs --sip-id")?;
            let num = |flag: &str, default: u32| -> Result<u32, String> {
                args.get(flag).map_or(Ok(default), |v| v.parse().map_err(|_| format!("{flag} must be a whole number")))
            };
            let rate = Rate { per_second: num("--rate", 10)?, burst: num("--burst", 20)? };
            let key = file.add(name, sip_id, rate).map_err(|e| e.to_string())?;
            file.write(&path).map_err(|e| e.to_string())?;
            let client = file.clients.last().ok_or("no client")?;
            eprintln!("added client {name:?} (SIP ID {sip_id}, key id {}) to {}; the key is shown once, below", client.key_id, path.display());
            println!("{key}");
        }
        Some("list") => {
            args.only(&["--config", "--data-dir"])?;
            println!("{:<14} {:<6} {:<10} {:<8} name", "key id", "sip id", "rate", "state");
            for c in &file.clients {
                let state = if c.revoked { "revoked" } else { "active" };
                println!("{:<14} {:<6} {:<10} {:<8} {}", c.key_id, c.sip_id, format!("{}/s+{}", c.rate.per_second, c.rate.burst), state, c.name);
            }
        }
        Some("revoke") => {
            args.only(&["--config", "--data-dir"])?;
            let who = args.words.get(1).ok_or("keys revoke needs a client name or key id")?;
            let n = file.revoke(who);
            if n == 0 {
                return Err(format!("no active key for {who:?}"));
            }
            file.write(&path).map_err(|e| e.to_string())?;
            println!("revoked {n} key(s) of {who:?}; a running server stops accepting them at its next reload");
        }
        _ => return Err("keys: add, list or revoke".into()),
    }
    Ok(ExitCode::SUCCESS)
}

fn check(args: &Args) -> Result<ExitCode, String> {
    args.only(&["--config", "--rules-dir", "--sip-id"])?;
    let config = args.config()?;
    let path = args.words.first().ok_or("check needs a REQUEST.json")?;
    let body = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let set = flowgate::ruleset::load(&config)?;
    let client = flowgate::auth::Client {
        name: "check".into(),
        sip_id: args.get("--sip-id").unwrap_or("DEMO").to_string(),
        key_id: "check".into(),
        key_sha256: String::new(),
        rate: Rate::default(),
        revoked: false,
    };
    let report = flowgate::explain::report(&set, &client, &body, config.clock());
    println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    Ok(ExitCode::SUCCESS)
}

/// Reads one DTC flow file: the parsed tree as JSON, or the findings and exit status 1.
fn parse(args: &Args) -> Result<ExitCode, String> {
    args.only(&["--config", "--rules-dir"])?;
    let config = args.config()?;
    let path = args.words.first().ok_or("parse needs a flow file")?;
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let catalogue = flowgate::flows::Catalogue::load(&config.rules_dir.join("flow-templates/catalogue"))?;
    match flowgate::reader::read(&bytes, &catalogue) {
        Ok(flow) => {
            println!("{}", serde_json::to_string_pretty(&flow).map_err(|e| e.to_string())?);
            Ok(ExitCode::SUCCESS)
        }
        Err(findings) => {
            for f in &findings {
                println!("{path}: {f}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn test(args: &Args) -> Result<ExitCode, String> {
    args.only(&["--config", "--rules-dir", "--junit", "--bless"])?;
    let config = args.config()?;
    let dir = args.words.first().map(PathBuf::from).unwrap_or_else(|| config.rules_dir.join("tests").join("cases"));
    let set = Arc::new(flowgate::ruleset::load(&config)?);
    let cases = flowgate::golden::cases(&dir);
    if cases.is_empty() {
        return Err(format!("no cases (folders with request.json) under {}", dir.display()));
    }
    let mut results = Vec::new();
    for case in &cases {
        let r = flowgate::golden::run_case(&set, case, args.has("--bless"));
        match &r.failure {
            None => println!("ok   {}", r.name),
            Some(f) => println!("FAIL {}: {f}", r.name),
        }
        results.push(r);
    }
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    println!("{} passed, {} failed", results.len() - failed, failed);
    let mut coverage = flowgate::golden::Coverage::new(&set);
    for r in &results {
        coverage.add(&r.pinned);
    }
    println!("coverage: {}", coverage.summary());
    let uncovered = coverage.uncovered();
    if !uncovered.is_empty() {
        println!("not exercised by these cases: {}", uncovered.join(", "));
    }
    // The samples always cover the whole set (the set would not have loaded otherwise): this line
    // says how, for whoever trims or adds samples.
    println!("samples coverage: {} ({} samples in {})", set.coverage.summary(), set.samples, config.rules_dir.join("rules").join("samples").display());
    if let Some(file) = args.get("--junit") {
        std::fs::write(file, flowgate::golden::junit(&results)).map_err(|e| format!("{file}: {e}"))?;
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
