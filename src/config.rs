//! Configuration: one YAML file, every key optional, unknown keys rejected.
//!
//! Precedence, lowest first: built-in defaults, the file (`--config`), environment variables
//! (`FLOWGATE_LISTEN`, `FLOWGATE_DATA_DIR`, `FLOWGATE_RULES_DIR`, and for the S3 sink
//! `FLOWGATE_S3_ENDPOINT` and `FLOWGATE_S3_BUCKET`), command-line flags ([`Overrides`]).
//!
//! S3 credentials are not configuration: they come from the standard AWS environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`), see [`crate::sink::s3`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    /// `flows.object_name` or `sink.s3.prefix` cannot give names every sink takes.
    #[error(transparent)]
    Names(#[from] crate::domain::names::ConfiguredNameError),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the store, the keys file and the local DTN folder live.
    pub data_dir: PathBuf,
    /// The folder that holds `schemas/`, `rules/` and `flow-templates/`.
    pub rules_dir: PathBuf,
    /// The keys file; default `<data_dir>/keys.yaml`.
    pub keys_file: Option<PathBuf>,
    /// Largest accepted body, in bytes.
    pub body_limit_bytes: u64,
    /// Memory for request bodies in flight, in bytes: each body is charged three times its
    /// declared length (the bytes, the parsed value, the transient copies of reading it), or three
    /// times the body limit when it declares none. A body that does not fit waits up to
    /// `body_budget_wait_ms`, then gets 503 with Retry-After before it is read.
    pub body_budget_bytes: u64,
    pub body_budget_wait_ms: u64,
    /// Most errors listed in one 400 answer.
    pub max_errors: usize,
    /// Seconds a client has to send its request headers, and then its body.
    pub header_timeout_secs: u64,
    pub body_timeout_secs: u64,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Bodies decided at once (parse, schema, rules, flows), each on a blocking thread off the
    /// async workers; 0 means one per CPU. More wait their turn.
    pub decide_threads: usize,
    pub reload: Reload,
    pub rhai: RhaiLimits,
    pub flows: FlowSettings,
    pub sink: SinkConfig,
    pub dispatch: DispatchSettings,
    pub inbound: InboundSettings,
    pub store: StoreSettings,
    /// `json` for one JSON object per log line; `text` otherwise.
    pub log_format: LogFormat,
    /// HTTPS: PEM certificate chain and key; reloaded when they change. Absent: plain HTTP.
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reload {
    /// How often the rule folders and the keys file are looked at.
    pub poll_ms: u64,
    /// How long they must stay unchanged before a new set is built.
    pub debounce_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RhaiLimits {
    pub max_operations: u64,
    pub timeout_ms: u64,
    pub max_call_levels: usize,
    pub max_expr_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowSettings {
    /// Two characters that start every file identifier this instance mints.
    pub instance_prefix: String,
    /// Role code of the sender (the SIP) in ZHV.
    pub sender_role: String,
    /// Role code of each recipient kind named in `rules/flows.yaml`.
    pub roles: std::collections::BTreeMap<String, String>,
    /// J1063: `OPER` in production, `TRnn` elsewhere.
    pub test_flag: String,
    /// `lf` or `crlf`.
    pub line_ending: LineEnding,
    /// An RFC 3339 instant used as "now" for every file (golden tests only).
    pub fixed_clock: Option<String>,
    /// Object name of a delivered file; `{to_role}`, `{to_mpid}`, `{flow}`, `{from_role}`,
    /// `{from_mpid}` and `{file_id}` (required) are filled in. It must fit [`crate::domain::names`]'s
    /// limits with every placeholder at its longest.
    pub object_name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// `local` (files under `<data_dir>/dtn/`) or `s3`.
    pub kind: SinkKind,
    pub s3: S3Config,
}

/// How the logs are written: `log_format` in the YAML, `text` or `json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// The line ending of the flow files written: `flows.line_ending`, `lf` or `crlf`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LineEnding {
    #[default]
    Lf,
    Crlf,
}

/// Which object store holds the DTN area: `sink.kind` in the YAML, lower case; any other value
/// is refused when the file is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// The folder `<data_dir>/dtn/`.
    #[default]
    Local,
    /// The bucket of `sink.s3`.
    S3,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// `http(s)://host:port` of a self-hosted store (Ceph RGW); absent: AWS S3 for `region`.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Put before every object name (`site-a/` → `site-a/out/...`); a `/` is added if missing.
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), as self-hosted stores need.
    pub path_style: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchSettings {
    pub concurrency: usize,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundSettings {
    /// How often the inbox (`<data_dir>/dtn/in/`, or `in/` in the bucket) is read.
    pub poll_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// The store's page cache, in MiB (redb's own default is 1 GiB).
    pub cache_mb: u64,
    /// Hours a request's body stays in the local store once its job archive and flow files are
    /// settled (the archive in the bucket is then the long-term copy); 0 keeps bodies for ever.
    pub retain_bodies_hours: u64,
    /// A PostgreSQL URL (`postgres://user:password@host:port/database`): several instances share
    /// the database and are one gateway. Absent: the embedded store in the data folder (one
    /// instance). `flowgate serve` also takes it from `FLOWGATE_DATABASE_URL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Connections to the database, at most.
    pub pool_size: usize,
    /// Seconds an instance holds the outbox files it took for delivery; past that, another
    /// instance may take them (the instance may have stopped).
    pub lease_seconds: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        // Three days: time for an operator to look into a delivered job over a weekend with its
        // body at hand; past that, photos in the local store only cost disk and start-up time.
        StoreSettings { cache_mb: 64, retain_bodies_hours: 72, database_url: None, pool_size: 16, lease_seconds: 60 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            rules_dir: PathBuf::from("."),
            keys_file: None,
            body_limit_bytes: 32 * 1024 * 1024,
            // Eight ~8 MB job bodies (four phone photos each) at once, or two at the 32 MiB limit.
            body_budget_bytes: 256 * 1024 * 1024,
            body_budget_wait_ms: 2000,
            max_errors: 100,
            header_timeout_secs: 10,
            body_timeout_secs: 60,
            max_connections: 1024,
            decide_threads: 0,
            reload: Reload::default(),
            rhai: RhaiLimits::default(),
            flows: FlowSettings::default(),
            sink: SinkConfig::default(),
            dispatch: DispatchSettings::default(),
            inbound: InboundSettings::default(),
            store: StoreSettings::default(),
            log_format: LogFormat::Text,
            tls: None,
        }
    }
}

impl Default for Reload {
    fn default() -> Self {
        Reload { poll_ms: 500, debounce_ms: 300 }
    }
}

impl Default for RhaiLimits {
    fn default() -> Self {
        RhaiLimits {
            max_operations: 100_000,
            timeout_ms: 250,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_size: 64 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
        }
    }
}

/// What a body in flight costs in memory, as a multiple of its length: the bytes read, the
/// parsed value (photos are strings, copied once), and the copies made while reading it.
pub(crate) const BODY_MEMORY_FACTOR: u64 = 3;

impl Config {
    /// What a body of `len` bytes (or of unknown length) is charged against the body budget, in KiB.
    pub(crate) fn body_cost_kib(&self, len: Option<u64>) -> u32 {
        let len = len.unwrap_or(self.body_limit_bytes).min(self.body_limit_bytes);
        u32::try_from(len.saturating_mul(BODY_MEMORY_FACTOR).div_ceil(1024).max(1)).unwrap_or(u32::MAX)
    }

    /// The body budget in KiB (the unit of its semaphore).
    pub(crate) fn body_budget_kib(&self) -> usize {
        usize::try_from(self.body_budget_bytes / 1024).unwrap_or(usize::MAX).min(tokio::sync::Semaphore::MAX_PERMITS)
    }

    /// How many bodies are decided at once: `decide_threads`, or one per CPU.
    pub(crate) fn deciders(&self) -> usize {
        if self.decide_threads > 0 {
            return self.decide_threads;
        }
        std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(2)
    }
}

impl Default for FlowSettings {
    fn default() -> Self {
        let roles = [("supplier", "X"), ("dno", "J")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        FlowSettings {
            instance_prefix: "FG".into(),
            sender_role: "M".into(),
            roles,
            test_flag: "TR01".into(),
            line_ending: LineEnding::Lf,
            fixed_clock: None,
            object_name: "out/{to_role}{to_mpid}/{flow}_{from_mpid}_{file_id}.usr".into(),
        }
    }
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig { kind: SinkKind::Local, s3: S3Config::default() }
    }
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config { endpoint: None, region: "us-east-1".into(), bucket: "flowgate".into(), prefix: String::new(), path_style: true }
    }
}

impl S3Config {
    /// The prefix as it is put before every object name: with a trailing `/` unless empty.
    pub(crate) fn key_prefix(&self) -> String {
        let mut prefix = self.prefix.clone();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        prefix
    }
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings { concurrency: 8, retry_base_ms: 200, retry_max_ms: 30_000 }
    }
}

impl Default for InboundSettings {
    fn default() -> Self {
        InboundSettings { poll_ms: 2000 }
    }
}

/// The settings a command line may give, over the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub rules_dir: Option<PathBuf>,
}

impl Config {
    /// Defaults, then the file if given, then the environment, then `flags`; checked as a whole
    /// once all are applied (a flag can make a setting valid or invalid: `--data-dir`'s length).
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
                yaml_serde::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?
            }
            None => Config::default(),
        };
        if let Ok(v) = std::env::var("FLOWGATE_LISTEN") {
            config.listen = v.parse().map_err(|_| ConfigError::Invalid(format!("FLOWGATE_LISTEN: not an address: {v}")))?;
        }
        if let Ok(v) = std::env::var("FLOWGATE_DATA_DIR") {
            config.data_dir = v.into();
        }
        if let Ok(v) = std::env::var("FLOWGATE_RULES_DIR") {
            config.rules_dir = v.into();
        }
        if let Ok(v) = std::env::var("FLOWGATE_DATABASE_URL") {
            config.store.database_url = Some(v).filter(|v| !v.is_empty());
        }
        if let Ok(v) = std::env::var("FLOWGATE_S3_ENDPOINT") {
            config.sink.s3.endpoint = Some(v).filter(|v| !v.is_empty());
        }
        if let Ok(v) = std::env::var("FLOWGATE_S3_BUCKET") {
            config.sink.s3.bucket = v;
        }
        if let Some(v) = flags.listen {
            config.listen = v;
        }
        if let Some(v) = &flags.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &flags.rules_dir {
            config.rules_dir = v.clone();
        }
        config.check()?;
        Ok(config)
    }

    /// Settings that parse but make no sense.
    pub fn check(&self) -> Result<(), ConfigError> {
        let f = &self.flows;
        if f.instance_prefix.len() != 2 || !f.instance_prefix.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) {
            return Err(ConfigError::Invalid("flows.instance_prefix must be 2 upper-case letters or digits".into()));
        }
        let one_letter = |s: &str| s.len() == 1 && s.chars().all(|c| c.is_ascii_uppercase());
        if !one_letter(&f.sender_role) || !f.roles.values().all(|r| one_letter(r)) {
            return Err(ConfigError::Invalid("role codes must be one upper-case letter".into()));
        }
        if f.test_flag != "OPER" && !(f.test_flag.len() == 4 && f.test_flag.starts_with("TR")) {
            return Err(ConfigError::Invalid("flows.test_flag must be OPER or TRnn".into()));
        }
        if let Some(t) = &f.fixed_clock {
            if crate::domain::clock::parse_rfc3339(t).is_none() {
                return Err(ConfigError::Invalid("flows.fixed_clock must be an RFC 3339 date-time".into()));
            }
        }
        if self.header_timeout_secs == 0 || self.body_timeout_secs == 0 {
            return Err(ConfigError::Invalid("header_timeout_secs and body_timeout_secs must be at least 1".into()));
        }
        if self.body_budget_bytes < self.body_limit_bytes.saturating_mul(BODY_MEMORY_FACTOR) {
            return Err(ConfigError::Invalid(format!(
                "body_budget_bytes ({}) must hold at least one body at the limit: {} × body_limit_bytes = {}",
                self.body_budget_bytes,
                BODY_MEMORY_FACTOR,
                self.body_limit_bytes.saturating_mul(BODY_MEMORY_FACTOR)
            )));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid("max_connections must be at least 1".into()));
        }
        if self.sink.kind == SinkKind::S3 {
            let s3 = &self.sink.s3;
            if s3.bucket.is_empty() {
                return Err(ConfigError::Invalid("sink.s3.bucket must be set".into()));
            }
            if let Some(e) = &s3.endpoint {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    return Err(ConfigError::Invalid("sink.s3.endpoint must start with http:// or https://".into()));
                }
            }
            if s3.prefix.starts_with('/') || s3.prefix.split('/').any(|p| p == "." || p == "..") {
                return Err(ConfigError::Invalid("sink.s3.prefix must be relative, without . or .. parts".into()));
            }
        }
        // Every name a 200 promises must be deliverable: the template and the prefix are the parts
        // of it that configuration decides.
        let prefix = if self.sink.kind == SinkKind::S3 { self.sink.s3.key_prefix() } else { String::new() };
        let longest = crate::domain::names::check_configured(&self.flows.object_name, &prefix)?;
        if self.sink.kind == SinkKind::Local {
            let root = self.data_dir.join("dtn").as_os_str().len();
            if root + 1 + longest > crate::domain::names::PATH_MAX {
                return Err(ConfigError::Invalid(format!(
                    "data_dir is too long: its sink folder's paths would pass {} bytes; at most {} bytes",
                    crate::domain::names::PATH_MAX,
                    crate::domain::names::PATH_MAX.saturating_sub(longest + 1 + "/dtn".len())
                )));
            }
        }
        if self.dispatch.concurrency == 0 {
            return Err(ConfigError::Invalid("dispatch.concurrency must be at least 1".into()));
        }
        Ok(())
    }

    pub fn keys_path(&self) -> PathBuf {
        self.keys_file.clone().unwrap_or_else(|| self.data_dir.join("keys.yaml"))
    }

    pub fn clock(&self) -> crate::domain::clock::Clock {
        match self.flows.fixed_clock.as_deref().and_then(crate::domain::clock::parse_rfc3339) {
            Some(t) => crate::domain::clock::Clock::Fixed(t),
            None => crate::domain::clock::Clock::System,
        }
    }
}

/// A database URL as it may be shown: its password replaced by `***` (URL and `key=value` forms).
pub fn without_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (auth, host) = match rest.rsplit_once('@') {
            Some((auth, host)) => (auth, host),
            None => return url.to_string(),
        };
        let user = auth.split_once(':').map_or(auth, |(user, _)| user);
        let shown = if auth.contains(':') { format!("{user}:***") } else { user.to_string() };
        return format!("{scheme}://{shown}@{host}");
    }
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_delivered_are_refused_by_the_check() {
        assert!(Config::default().check().is_ok());
        let with = |f: &dyn Fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.check().err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(with(&|c| c.flows.object_name = format!("out/{}/{{file_id}}.usr", "x".repeat(300))).contains("segment of 300 bytes"));
        assert!(with(&|c| c.flows.object_name = "out/{flow}.usr".into()).contains("{file_id}"));
        let s3 = |c: &mut Config, prefix: String| {
            c.sink.kind = SinkKind::S3;
            c.sink.s3.prefix = prefix;
        };
        // 508 bytes with the `/` the sink adds is the most a prefix may be beside the longest archive name.
        assert_eq!(with(&|c| s3(c, format!("{}/{}", "a".repeat(254), "b".repeat(252)))), "");
        assert!(with(&|c| s3(c, format!("{}/{}", "a".repeat(254), "b".repeat(253)))).contains("at most 508 bytes"));
        assert!(with(&|c| s3(c, "c".repeat(256))).contains("segment of 256 bytes"));
        // The local folder's paths, data dir included, must stay within PATH_MAX.
        assert!(with(&|c| c.data_dir = PathBuf::from("d".repeat(200)).join("e".repeat(200)).join("f".repeat(200)).join("g".repeat(200))).is_empty());
        let deep: PathBuf = (0..15).map(|_| "h".repeat(250)).collect();
        assert!(with(&|c| c.data_dir = deep.clone()).contains("data_dir is too long"));
    }

    #[test]
    fn the_sink_kind_is_local_or_s3_and_nothing_else() {
        let kind = |yaml: &str| yaml_serde::from_str::<Config>(yaml).map(|c| c.sink.kind).map_err(|e| e.to_string());
        assert_eq!(kind("sink:\n  kind: local\n"), Ok(SinkKind::Local));
        assert_eq!(kind("sink:\n  kind: s3\n"), Ok(SinkKind::S3));
        assert_eq!(kind("listen: 127.0.0.1:8080\n"), Ok(SinkKind::Local));
        for bad in ["ftp", "S3", "Local", "\"\""] {
            let e = kind(&format!("sink:\n  kind: {bad}\n")).unwrap_err();
            assert!(e.contains("sink.kind") && e.contains("`local`") && e.contains("`s3`"), "{bad}: {e}");
        }
        let dir = std::env::temp_dir().join(format!("flowgate-config-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("flowgate.yaml");
        std::fs::write(&file, "sink:\n  kind: ftp\n").unwrap();
        let e = Config::load(Some(&file), &Overrides::default()).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_database_url_is_shown_without_its_password() {
        assert_eq!(without_password("postgres://fg:s3cret@db:5432/flowgate"), "postgres://fg:***@db:5432/flowgate");
        assert_eq!(without_password("postgres://fg@db/flowgate"), "postgres://fg@db/flowgate");
        assert_eq!(without_password("host=db user=fg password=s3cret dbname=flowgate"), "host=db user=fg password=*** dbname=flowgate");
        assert!(!without_password("postgresql://a:p@ss:word@h/d").contains("word"));
    }
}
