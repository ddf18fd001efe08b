//! The `flowgate` command: `serve`, `keys`, `check`, `parse`, `test`, `config check`, `migrate`. Parsing
//! only (clap derive); the work is in the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use flowgate::config::{Config, ConfigError, Overrides};
use flowgate::domain::auth::{KeysError, KeysFile, Rate};
use flowgate::dtc::catalogue::CatalogueError;
use flowgate::rules::LoadError;
use flowgate::runtime::{RunError, StartError};

const ENVIRONMENT: &str = "\
Environment (over the configuration file, under the flags):
  FLOWGATE_LISTEN, FLOWGATE_DATA_DIR, FLOWGATE_RULES_DIR
  FLOWGATE_DATABASE_URL                      a PostgreSQL URL: the store shared by several instances
  FLOWGATE_S3_ENDPOINT, FLOWGATE_S3_BUCKET   with sink.kind: s3 (credentials: AWS_ACCESS_KEY_ID,
                                             AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)
  FLOWGATE_LOG                               log filter, default info (e.g. warn, flowgate=debug)";

/// The same three codes for every verb: the verb's answer (0 yes, 1 no), or no answer (2).
const EXIT_STATUS: &str = "\
Exit status:
  0  done; the answer is yes (check: accepted, parse: read, test: all passed, config check: valid)
  1  the answer is no: check of a body that would be refused (400) or fail a rule (500), parse of
     a file with findings, test with a failed case, config check of a refused configuration
  2  usage error (unknown verb or option, missing or stray argument, bad value), or the command
     could not run (a file it cannot read, a configuration or rule set it cannot load, a server
     that cannot start)";

#[derive(Parser)]
#[command(
    name = "flowgate",
    version,
    about = "The rules-as-data gateway from SIP job worksheets to DTC data flows",
    after_help = format!("{ENVIRONMENT}\n\n{EXIT_STATUS}"),
    subcommand_required = true,
    arg_required_else_help = true,
    // The hand parser it replaces let a repeated flag's last value win; scripts that append an
    // override to a base command line rely on that.
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Run the gateway
    ///
    /// HTTP on --listen; rule edits are picked up live; flow files are delivered in the
    /// background. On a first start (no keys file, no store in the data dir) a development
    /// client (SIP ID DEMO) is added and its key printed once. A data dir that holds a store but
    /// no keys file is refused. Stops on SIGTERM or Ctrl-C after the requests in flight.
    #[command(after_help = "Exit status: 0 stopped cleanly; 2 could not start (configuration, rules, keys, address)")]
    Serve {
        #[command(flatten)]
        settings: ServerSettings,
    },
    /// Add, list and revoke API keys
    ///
    /// The keys file is <data dir>/keys.yaml unless the configuration names another; it holds
    /// only SHA-256 hashes of the keys.
    Keys(KeysArgs),
    /// Show the answer `serve` would give a body, and why
    ///
    /// Prints the answer, every rule that fired with the values it read, and the flow files it
    /// would write, as JSON. Nothing is stored.
    #[command(
        after_help = "Exit status: 0 the body would be accepted (200); 1 refused (400) or a rule failed (500);\n2 usage error, or the file, configuration or rule set cannot be read"
    )]
    Check {
        /// The request body, as a SIP would POST it to /v4/sip
        #[arg(value_name = "REQUEST.json")]
        request: PathBuf,
        /// The sender's SIP ID
        #[arg(long, value_name = "ABCD", default_value = "DEMO")]
        sip_id: String,
        #[command(flatten)]
        config: ConfigFile,
        #[command(flatten)]
        rules_dir: RulesDirFlag,
    },
    /// Read a DTC flow file: its tree as JSON, or its findings
    #[command(after_help = "Exit status: 0 read; 1 the file has findings (printed);\n2 usage error, or the file, configuration or catalogue cannot be read")]
    Parse {
        #[arg(value_name = "FLOW_FILE")]
        file: PathBuf,
        #[command(flatten)]
        config: ConfigFile,
        #[command(flatten)]
        rules_dir: RulesDirFlag,
    },
    /// Replay the golden cases and say what they exercise
    ///
    /// One folder per case: request.json, expect.json and the expected flow files in flows/.
    /// Prints each case, `N passed, N failed`, and what the cases and the rule samples exercise.
    #[command(after_help = "Exit status: 0 every case passed; 1 a case failed;\n2 usage error, no cases, or the configuration or rule set cannot be read")]
    Test {
        /// The folder of cases (default: <rules dir>/tests/cases)
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Also write the results as JUnit XML to FILE
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Rewrite the expected flow files from what the rules give now (read the diff)
        #[arg(long)]
        bless: bool,
        #[command(flatten)]
        config: ConfigFile,
        #[command(flatten)]
        rules_dir: RulesDirFlag,
    },
    /// Check a configuration file
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Bring the shared database's schema up to date
    ///
    /// With store.database_url (or FLOWGATE_DATABASE_URL): applies the schema migrations this
    /// flowgate knows, one instance at a time, and prints the version before and after. `serve`
    /// does the same at start; a database migrated by a newer flowgate is refused by both.
    #[command(after_help = "Exit status: 0 up to date; 1 refused (a newer schema);\n2 usage error, no database URL, or the database cannot be reached")]
    Migrate {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Print the version (as -V does)
    #[command(hide = true)]
    Version,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Add a key for a client; prints the key once
    ///
    /// A new client, or another key for an existing one (same name and SIP ID: a rotation).
    Add {
        /// The client's name (a client keeps one SIP ID for good)
        #[arg(long)]
        name: String,
        /// The client's SIP ID
        #[arg(long, value_name = "ABCD")]
        sip_id: String,
        /// Requests per second allowed
        #[arg(long, value_name = "N", default_value_t = 10)]
        rate: u32,
        /// Requests allowed at once above the rate
        #[arg(long, value_name = "N", default_value_t = 20)]
        burst: u32,
    },
    /// List the keys: key id, SIP ID, rate, state, client
    List,
    /// Revoke every active key of a client, or one key by its id
    Revoke {
        #[arg(value_name = "NAME|KEY_ID")]
        who: String,
    },
}

#[derive(Args)]
#[command(subcommand_required = true, arg_required_else_help = true)]
struct KeysArgs {
    /// The configuration file (YAML), for data_dir or keys_file
    // Global: `keys --data-dir D list` and `keys list --data-dir D` both work, as they did.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// The data folder, whose keys.yaml is the keys file [default: ./data]
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    action: KeysAction,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Check a configuration and print it as it takes effect
    ///
    /// Reads it as `serve` would (defaults, then the file, the environment and the flags), checks
    /// it, and prints every key with its value as YAML.
    #[command(after_help = "Exit status: 0 valid (printed as YAML); 1 refused (why, on stderr);\n2 usage error, or the file cannot be read")]
    Check {
        #[command(flatten)]
        settings: ServerSettings,
    },
}

/// Everything `serve` reads its configuration from (and `config check` checks).
#[derive(Args)]
struct ServerSettings {
    #[command(flatten)]
    config: ConfigFile,
    #[command(flatten)]
    listen: ListenFlag,
    #[command(flatten)]
    data_dir: DataDirFlag,
    #[command(flatten)]
    rules_dir: RulesDirFlag,
}

impl ServerSettings {
    fn overrides(self) -> (ConfigFile, Overrides) {
        (self.config, Overrides { listen: self.listen.listen, data_dir: self.data_dir.data_dir, rules_dir: self.rules_dir.rules_dir })
    }
}

#[derive(Args)]
struct ConfigFile {
    /// The configuration file (YAML; every key optional, unknown keys refused)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ListenFlag {
    /// The address to listen on [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

#[derive(Args)]
struct DataDirFlag {
    /// The store, keys file and local DTN folder [default: ./data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct RulesDirFlag {
    /// The folder holding schemas/, rules/ and flow-templates/ [default: .]
    #[arg(long, value_name = "DIR")]
    rules_dir: Option<PathBuf>,
}

/// The configuration: defaults, file, environment, then the flags given (the library applies
/// them in that order and checks the result once).
fn load(file: &ConfigFile, flags: Overrides) -> Result<Config, ConfigError> {
    Config::load(file.config.as_deref(), &flags)
}

/// A verb's outcome: its answer as an exit code (0 yes, 1 no), or why it could not answer (2).
type Outcome = Result<ExitCode, CliError>;

/// Why a verb could not answer (exit status 2): what `flowgate:` prints on standard error.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    Rules(#[from] LoadError),
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Yaml(#[from] yaml_serde::Error),
    /// A file the verb was given, or writes.
    #[error("{}: {source}", .path.display())]
    File { path: PathBuf, source: std::io::Error },
    /// The async runtime, or the bound listener's address.
    #[error(transparent)]
    Io(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    /// A store without its keys file is a misconfiguration (a volume not mounted, a mistyped
    /// keys_file), not a first start: no development key is made for it.
    #[error("no keys file at {}, but {} holds a store: restore the keys file, or add a key with `flowgate keys add`", .keys.display(), .data_dir.display())]
    StoreWithoutKeys { keys: PathBuf, data_dir: PathBuf },
    #[error("no client")]
    NoClient,
    #[error(transparent)]
    Migrate(#[from] flowgate::store::MigrateError),
    #[error("no database: set store.database_url or FLOWGATE_DATABASE_URL")]
    NoDatabase,
    #[error("no active key for {who:?}")]
    NoActiveKey { who: String },
    #[error("no cases (folders with request.json) under {}", .dir.display())]
    NoCases { dir: PathBuf },
}

impl CliError {
    /// A read or write of `path` that failed.
    fn file(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
        move |source| CliError::File { path: path.to_path_buf(), source }
    }
}

/// glibc keeps freed buffers of a few MiB in per-thread arenas (its mmap threshold rises with each
/// large buffer freed), so a gateway that had taken photo bodies held hundreds of MiB it no longer
/// used. A fixed threshold maps buffers of 1 MiB and more on their own and gives them back when
/// they are freed. Measured with the same setting given through MALLOC_MMAP_THRESHOLD_: peak RSS
/// 213 -> 179 MiB for 8 MB bodies at 8 connections, 266 -> 201 MiB for 64 bodies of 30 MB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_large_buffers_back() {
    // SAFETY: mallopt only tunes the allocator; it runs once, first thing, before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_large_buffers_back() {}

fn main() -> ExitCode {
    give_large_buffers_back();
    // Usage errors and help end here, before any verb runs: clap prints them and exits 2 or 0.
    let cli = Cli::parse();
    let outcome = match cli.verb {
        Verb::Serve { settings } => {
            let (config, overrides) = settings.overrides();
            serve(&config, overrides)
        }
        Verb::Keys(args) => keys(args),
        Verb::Check { request, sip_id, config, rules_dir } => {
            check(&request, sip_id, &config, Overrides { rules_dir: rules_dir.rules_dir, ..Overrides::default() })
        }
        Verb::Parse { file, config, rules_dir } => parse(&file, &config, Overrides { rules_dir: rules_dir.rules_dir, ..Overrides::default() }),
        Verb::Test { dir, junit, bless, config, rules_dir } => {
            test(dir, junit.as_deref(), bless, &config, Overrides { rules_dir: rules_dir.rules_dir, ..Overrides::default() })
        }
        Verb::Config { action: ConfigAction::Check { settings } } => {
            let (config, overrides) = settings.overrides();
            config_check(&config, overrides)
        }
        Verb::Migrate { config } => migrate(&config),
        Verb::Version => {
            println!("flowgate {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    };
    match outcome {
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
    if config.log_format == flowgate::config::LogFormat::Json {
        builder.json().flatten_event(true).with_current_span(true).init();
    } else {
        builder.with_ansi(false).init();
    }
}

fn serve(file: &ConfigFile, flags: Overrides) -> Outcome {
    let config = load(file, flags)?;
    init_logs(&config);
    let keys_path = config.keys_path();
    if !keys_path.exists() && config.data_dir.join("store").exists() {
        return Err(CliError::StoreWithoutKeys { keys: keys_path, data_dir: config.data_dir.clone() });
    }
    if !keys_path.exists() {
        let mut keys = KeysFile::default();
        let key = keys.add("Development SIP", "DEMO", Rate::default())?;
        keys.write(&keys_path)?;
        println!("No keys file yet: created {} with a development client (SIP ID DEMO).", keys_path.display());
        println!("Its key, shown only this once:");
        println!("{key}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(CliError::Io)?;
    runtime.block_on(async move {
        let gateway = flowgate::runtime::Gateway::start(config.clone()).await?;
        let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|source| CliError::Listen { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(CliError::Io)?;
        tracing::info!(%addr, ruleset = %gateway.rules.load().revision, data_dir = %config.data_dir.display(), "flowgate listening");
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        println!("flowgate listening on {scheme}://{addr}");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: no new connections; finishing requests in flight");
            let _ = stop.send(true);
        });
        flowgate::runtime::run(gateway, listener, stopped, Duration::from_secs(10)).await?;
        tracing::info!("stopped");
        Ok::<_, CliError>(())
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

fn keys(args: KeysArgs) -> Outcome {
    let config = load(&ConfigFile { config: args.config }, Overrides { data_dir: args.data_dir, ..Overrides::default() })?;
    let path = config.keys_path();
    // One keys command at a time: two read-change-writes at once could undo a revoke.
    let _lock = KeysFile::lock(&path)?;
    let mut file = if path.exists() { KeysFile::read(&path)? } else { KeysFile::default() };
    match args.action {
        KeysAction::Add { name, sip_id, rate, burst } => {
            let key = file.add(&name, &sip_id, Rate { per_second: rate, burst })?;
            file.write(&path)?;
            let client = file.clients.last().ok_or(CliError::NoClient)?;
            eprintln!("added client {name:?} (SIP ID {sip_id}, key id {}) to {}; the key is shown once, below", client.key_id, path.display());
            println!("{key}");
        }
        KeysAction::List => {
            println!("{:<14} {:<6} {:<10} {:<8} name", "key id", "sip id", "rate", "state");
            for c in &file.clients {
                let state = if c.revoked { "revoked" } else { "active" };
                println!("{:<14} {:<6} {:<10} {:<8} {}", c.key_id, c.sip_id, format!("{}/s+{}", c.rate.per_second, c.rate.burst), state, c.name);
            }
        }
        KeysAction::Revoke { who } => {
            let n = file.revoke(&who);
            if n == 0 {
                return Err(CliError::NoActiveKey { who });
            }
            file.write(&path)?;
            println!("revoked {n} key(s) of {who:?}; a running server stops accepting them at its next reload");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check(request: &Path, sip_id: String, file: &ConfigFile, flags: Overrides) -> Outcome {
    let config = load(file, flags)?;
    let body = std::fs::read(request).map_err(CliError::file(request))?;
    let set = flowgate::rules::load::load(&config)?;
    let client = flowgate::domain::auth::Client {
        name: "check".into(),
        sip_id,
        key_id: "check".into(),
        key_sha256: String::new(),
        rate: Rate::default(),
        revoked: false,
    };
    let report = flowgate::rules::explain::report(&set, &client, &body, config.clock());
    println!("{}", serde_json::to_string_pretty(&report)?);
    // The exit status answers "would this body be accepted?", so a script or CI step can use
    // `check` without reading the report.
    let accepted = report.get("status").and_then(serde_json::Value::as_u64) == Some(200);
    Ok(if accepted { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Reads one DTC flow file: the parsed tree as JSON, or the findings and exit status 1.
fn parse(path: &Path, file: &ConfigFile, flags: Overrides) -> Outcome {
    let config = load(file, flags)?;
    let bytes = std::fs::read(path).map_err(CliError::file(path))?;
    let catalogue = flowgate::dtc::catalogue::Catalogue::load(&config.rules_dir.join("flow-templates/catalogue"))?;
    match flowgate::dtc::reader::read(&bytes, &catalogue) {
        Ok(flow) => {
            println!("{}", serde_json::to_string_pretty(&flow)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(findings) => {
            for f in &findings {
                println!("{}: {f}", path.display());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn test(dir: Option<PathBuf>, junit: Option<&Path>, bless: bool, file: &ConfigFile, flags: Overrides) -> Outcome {
    let config = load(file, flags)?;
    let dir = dir.unwrap_or_else(|| config.rules_dir.join("tests").join("cases"));
    let set = Arc::new(flowgate::rules::load::load(&config)?);
    let cases = flowgate::rules::samples::cases(&dir);
    if cases.is_empty() {
        return Err(CliError::NoCases { dir });
    }
    let mut results = Vec::new();
    for case in &cases {
        let r = flowgate::rules::samples::run_case(&set, case, bless);
        match &r.failure {
            None => println!("ok   {}", r.name),
            Some(f) => println!("FAIL {}: {f}", r.name),
        }
        results.push(r);
    }
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    println!("{} passed, {} failed", results.len() - failed, failed);
    let mut coverage = flowgate::rules::samples::Coverage::new(&set);
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
    println!("samples coverage: {} ({} samples in {})", set.coverage, set.samples, config.rules_dir.join("rules").join("samples").display());
    if let Some(file) = junit {
        std::fs::write(file, flowgate::rules::samples::junit(&results)).map_err(CliError::file(file))?;
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `config check`: the configuration as it takes effect, or why it is refused (the answer, 1); a
/// file that cannot be read is no answer (2).
fn config_check(file: &ConfigFile, flags: Overrides) -> Outcome {
    let config = match load(file, flags) {
        Ok(config) => config,
        Err(e @ ConfigError::Read { .. }) => return Err(e.into()),
        Err(e) => {
            eprintln!("flowgate: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let source = file.config.as_ref().map_or("defaults".to_string(), |f| format!("defaults < {}", f.display()));
    println!("# the configuration in effect: {source} < environment < flags");
    let mut shown = config;
    // The database URL may carry a password: shown without it.
    shown.store.database_url = shown.store.database_url.as_deref().map(flowgate::config::without_password);
    print!("{}", yaml_serde::to_string(&shown)?);
    Ok(ExitCode::SUCCESS)
}

/// `migrate`: the shared database's schema brought to this flowgate's version.
fn migrate(file: &ConfigFile) -> Outcome {
    let config = load(file, Overrides::default())?;
    let Some(url) = config.store.database_url.clone() else {
        return Err(CliError::NoDatabase);
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(CliError::Io)?;
    runtime.block_on(async move {
        let pool = flowgate::store::pool(&url, 1)?;
        match flowgate::store::migrate(&pool).await {
            Ok((from, to)) if from == to => println!("schema version {to}: up to date"),
            Ok((from, to)) => println!("schema version {from} -> {to}: migrated"),
            Err(e @ flowgate::store::MigrateError::Newer { .. }) => {
                eprintln!("flowgate: {e}");
                return Ok(ExitCode::FAILURE);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(ExitCode::SUCCESS)
    })
}
