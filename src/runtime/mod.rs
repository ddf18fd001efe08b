//! The runtime: the live state of a running gateway as separate handles (rules, keys, store,
//! metrics, delivery counters), built once at start; the watcher that reloads rules, keys and
//! certificates; the tasks beside the HTTP server (delivery, inbound, retention); and [`run`],
//! the one way a gateway runs, for `flowgate serve` and every test.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::domain::auth::KeysFile;
use crate::exchange::deliver::DispatchStats;
use crate::http::limit::Limits;
use crate::http::{Handles, KeyState, ReloadStatus, Reloads, Server};
use crate::metrics::Metrics;
use crate::rules::load::{self as ruleset, Live};
use crate::store::Store;

/// A started gateway: each piece of live state is its own handle, shared with the parts that
/// read it (the HTTP server, delivery, inbound) and replaced whole by the reload watcher.
#[derive(Clone)]
pub struct Gateway {
    pub config: Arc<Config>,
    pub rules: Live,
    pub keys: Arc<ArcSwap<KeyState>>,
    pub store: Store,
    /// One registry for the server and the dispatcher, so each family is exposed once.
    pub metrics: Arc<Metrics>,
    pub dispatch: Arc<DispatchStats>,
    reloads: Arc<Reloads>,
    /// The TLS acceptor when HTTPS is configured; swapped when the PEM files change.
    tls: Option<Arc<ArcSwap<tokio_rustls::TlsAcceptor>>>,
    http: Arc<Server>,
    /// The fingerprints of what was loaded, taken at start: the watcher's first baseline.
    seen: Seen,
}

/// Fingerprints of the rule folders, the keys file and the TLS files.
#[derive(Clone, Copy)]
struct Seen {
    rules: u64,
    keys: u64,
    tls: Option<u64>,
}

impl Seen {
    fn now(config: &Config) -> Seen {
        Seen { rules: ruleset::fingerprint(&config.rules_dir), keys: keys_fingerprint(&config.keys_path()), tls: tls_fingerprint(&config.tls) }
    }
}

fn tls_fingerprint(files: &Option<crate::config::TlsFiles>) -> Option<u64> {
    files.as_ref().map(|f| keys_fingerprint(&f.cert_file) ^ keys_fingerprint(&f.key_file).rotate_left(1))
}

/// Why the TLS files give no acceptor.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file that cannot be read or parsed.
    #[error("{}: {source}", .path.display())]
    Pem { path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("{}: no certificate", .path.display())]
    NoCertificate { path: PathBuf },
    #[error(transparent)]
    Protocols(rustls::Error),
    #[error("certificate and key: {0}")]
    CertificateAndKey(#[source] rustls::Error),
}

/// A TLS acceptor from PEM files (HTTP/2 and HTTP/1.1 offered by ALPN).
pub(crate) fn tls_acceptor(files: &crate::config::TlsFiles) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pem = |path: PathBuf| move |source| TlsError::Pem { path, source };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&files.cert_file).and_then(|it| it.collect::<Result<Vec<_>, _>>()).map_err(pem(files.cert_file.clone()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: files.cert_file.clone() });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(pem(files.key_file.clone()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::CertificateAndKey)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("rule set: {0}")]
    Rules(#[source] crate::rules::LoadError),
    #[error(transparent)]
    Keys(#[from] crate::domain::auth::KeysError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("TLS: {0}")]
    Tls(#[source] TlsError),
    #[error("configuration: {0}")]
    Config(#[source] crate::config::ConfigError),
}

/// Why a keys file was not reloaded: it does not read, or the store refuses it.
#[derive(Debug, thiserror::Error)]
pub enum KeysReloadError {
    #[error(transparent)]
    Read(#[from] crate::domain::auth::KeysError),
    #[error("the keys file is refused: {0}")]
    Refused(#[source] crate::store::StoreError),
}

/// Why a started gateway stopped running: its sink could not be built, or the HTTP server failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error(transparent)]
    Serve(std::io::Error),
}

impl Gateway {
    /// Loads rules and keys and opens the store.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        // Config::load checks too; a configuration built in code (tests, embedders) is held to
        // the same rules, such as names that fit every sink.
        config.check().map_err(StartError::Config)?;
        // Before anything is read: an edit made while the gateway starts is seen by the watcher.
        let seen = Seen::now(&config);
        let set = ruleset::load(&config).map_err(StartError::Rules)?;
        let keys = KeysFile::read(&config.keys_path())?;
        let limits = Limits::for_keys(&keys, None);
        let store = Store::from_config(&config).await?;
        store.check_identities(&keys).await?;
        clear_sink_leftovers(&config);
        let clock = config.clock();
        let now = Some(rfc3339_now());
        let tls = match &config.tls {
            Some(files) => Some(ArcSwap::from_pointee(tls_acceptor(files).map_err(StartError::Tls)?)),
            None => None,
        };
        let metrics = Arc::new(Metrics::default());
        let config = Arc::new(config);
        let rules: Live = Arc::new(ArcSwap::from_pointee(set));
        let keys = Arc::new(ArcSwap::from_pointee(KeyState { keys, limits }));
        let reloads = Arc::new(Reloads {
            rules: Mutex::new(ReloadStatus { ok: true, at: now.clone(), error: None }),
            keys: Mutex::new(ReloadStatus { ok: true, at: now, error: None }),
        });
        let tls = tls.map(Arc::new);
        let dispatch = Arc::new(DispatchStats { metrics: metrics.clone(), ..DispatchStats::default() });
        let http = Arc::new(Server::new(Handles {
            config: config.clone(),
            rules: rules.clone(),
            keys: keys.clone(),
            store: store.clone(),
            clock,
            metrics: metrics.clone(),
            dispatch: dispatch.clone(),
            reloads: reloads.clone(),
            tls: tls.clone(),
        }));
        metrics.set("flowgate_ruleset_info", &[("revision", &rules.load().revision)], 1.0);
        Ok(Gateway { config, rules, keys, store, metrics, dispatch, reloads, tls, http, seen })
    }

    /// Builds a candidate rule set and swaps it in only if it loads and checks whole.
    pub(crate) fn reload_rules(&self) -> Result<String, ruleset::LoadError> {
        let result = ruleset::load(&self.config);
        let mut status = self.reloads.rules.lock().unwrap_or_else(|p| p.into_inner());
        status.at = Some(rfc3339_now());
        match result {
            Ok(set) => {
                let old = self.rules.load().revision.clone();
                let revision = set.revision.clone();
                self.rules.store(Arc::new(set));
                self.metrics.inc("flowgate_rule_reloads_total", &[("result", "ok")], 1.0);
                self.metrics.set("flowgate_ruleset_info", &[("revision", &old)], 0.0);
                self.metrics.set("flowgate_ruleset_info", &[("revision", &revision)], 1.0);
                tracing::info!(%revision, previous = %old, "rule set reloaded");
                *status = ReloadStatus { ok: true, at: status.at.clone(), error: None };
                Ok(revision)
            }
            Err(e) => {
                self.metrics.inc("flowgate_rule_reloads_total", &[("result", "failed")], 1.0);
                tracing::error!(error = %e, serving = %self.rules.load().revision, "rule edit refused; the running rule set stays");
                status.ok = false;
                status.error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Re-reads the keys file; a broken file leaves the running keys in place.
    pub(crate) async fn reload_keys(&self) -> Result<(), KeysReloadError> {
        let result = match KeysFile::read(&self.config.keys_path()) {
            Ok(keys) => self.store.check_identities(&keys).await.map(|()| keys).map_err(KeysReloadError::Refused),
            Err(e) => Err(KeysReloadError::Read(e)),
        };
        let mut status = self.reloads.keys.lock().unwrap_or_else(|p| p.into_inner());
        status.at = Some(rfc3339_now());
        match result {
            Ok(keys) => {
                let limits = Limits::for_keys(&keys, Some(&self.keys.load().limits));
                self.keys.store(Arc::new(KeyState { keys, limits }));
                tracing::info!("keys reloaded");
                status.ok = true;
                status.error = None;
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "keys file refused; the running keys stay");
                status.ok = false;
                status.error = Some(e.to_string());
                Err(e)
            }
        }
    }
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// A fingerprint of one file's bytes, read through symlinks (as the rule folders' is: a copy that
/// keeps modification times, or a swapped link, changes nothing else).
fn keys_fingerprint(path: &std::path::Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match std::fs::read(path) {
        Ok(bytes) => bytes.hash(&mut h),
        Err(e) => e.kind().hash(&mut h),
    }
    h.finish()
}

/// Watches the rule folders and the keys file; debounced, then reloads whatever changed.
/// The starting fingerprints are those taken at start, before the files were read, so no edit
/// made while the gateway starts, or before this task first runs, is missed.
fn watch(app: Gateway, mut shutdown: tokio::sync::watch::Receiver<bool>) -> impl std::future::Future<Output = ()> {
    let poll = Duration::from_millis(app.config.reload.poll_ms.max(50));
    let debounce = Duration::from_millis(app.config.reload.debounce_ms);
    let root = app.config.rules_dir.clone();
    let keys = app.config.keys_path();
    let Seen { rules: mut rules_seen, keys: mut keys_seen, tls: mut tls_seen } = app.seen;
    let tls_files = app.config.tls.clone();
    let tls_print = tls_fingerprint;
    // Off the request workers: the fingerprint reads every file of the rule folders.
    let rules_print = move || {
        let root = root.clone();
        async move { tokio::task::spawn_blocking(move || ruleset::fingerprint(&root)).await.ok() }
    };
    async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => return,
            }
            let Some(now) = rules_print().await else { continue };
            if now != rules_seen {
                // Editors write several times per save: wait until the files stop changing.
                let mut settled = now;
                loop {
                    tokio::time::sleep(debounce).await;
                    let Some(again) = rules_print().await else { continue };
                    if again == settled {
                        break;
                    }
                    settled = again;
                }
                rules_seen = settled;
                let app = app.clone();
                let _ = tokio::task::spawn_blocking(move || app.reload_rules()).await;
            }
            if keys_fingerprint(&keys) != keys_seen {
                tokio::time::sleep(debounce).await;
                keys_seen = keys_fingerprint(&keys);
                let _ = app.reload_keys().await;
            }
            if tls_print(&tls_files) != tls_seen {
                tokio::time::sleep(debounce).await;
                tls_seen = tls_print(&tls_files);
                if let (Some(files), Some(current)) = (&tls_files, &app.tls) {
                    match tls_acceptor(files) {
                        Ok(acceptor) => {
                            current.store(Arc::new(acceptor));
                            tracing::info!("TLS certificate reloaded");
                        }
                        Err(e) => tracing::error!(error = %e, "TLS files refused; the running certificate stays"),
                    }
                }
            }
        }
    }
}

/// Removes what a previous run left in the local sink's temporary folder, before anything is
/// delivered, so every temporary file there is a leftover.
fn clear_sink_leftovers(config: &Config) {
    if let Ok(crate::sink::Sink::Local(local)) = crate::sink::Sink::from_config(config) {
        match local.clear_leftovers(std::time::SystemTime::now()) {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "removed temporary files a previous run left in the sink folder"),
            Err(e) => tracing::warn!(error = %e, "cannot clear the sink folder's temporary files; they stay"),
        }
    }
}

/// Retention: every minute, drops the bodies of settled requests older than
/// `store.retain_bodies_hours`, until none is left to drop.
async fn retain(app: Gateway, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let hours = app.config.store.retain_bodies_hours;
    if hours == 0 {
        return;
    }
    loop {
        let cutoff = time::OffsetDateTime::now_utc() - Duration::from_secs(hours.saturating_mul(3600));
        match app.store.sweep(cutoff).await {
            Ok(n) if n >= crate::store::SWEEP_BATCH => continue,
            Ok(0) => {}
            Ok(n) => tracing::info!(bodies = n, "retention: bodies of settled requests dropped"),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Starts what runs beside the HTTP server: the rule and key watcher, the dispatcher, the
/// inbound poller and the retention sweep.
fn start_background(app: &Gateway, stop: tokio::sync::watch::Receiver<bool>) -> Result<Vec<tokio::task::JoinHandle<()>>, RunError> {
    let sink = crate::sink::Sink::from_config(&app.config)?;
    let backoff = crate::exchange::deliver::Backoff {
        base: Duration::from_millis(app.config.dispatch.retry_base_ms),
        max: Duration::from_millis(app.config.dispatch.retry_max_ms),
    };
    let stop_retention = stop.clone();
    let watcher = tokio::spawn(watch(app.clone(), stop.clone()));
    let inbound = crate::exchange::inbound::Poller::new(&app.config, sink.clone(), app.store.clone(), app.rules.clone(), app.metrics.clone());
    let inbound = tokio::spawn(inbound.run(Duration::from_millis(app.config.inbound.poll_ms.max(10)), stop.clone()));
    let dispatcher = tokio::spawn(crate::exchange::deliver::run(app.store.clone(), sink, app.config.dispatch.concurrency, backoff, app.dispatch.clone(), stop));
    let retention = tokio::spawn(retain(app.clone(), stop_retention));
    Ok(vec![watcher, dispatcher, inbound, retention])
}

/// Runs a started gateway on `listener` until `shutdown` fires: the background tasks, then the
/// HTTP server; in-flight requests get `grace` to finish, the background tasks 5 s to stop.
pub async fn run(gateway: Gateway, listener: TcpListener, shutdown: tokio::sync::watch::Receiver<bool>, grace: Duration) -> Result<(), RunError> {
    let background = start_background(&gateway, shutdown.clone())?;
    crate::http::serve(listener, gateway.http.clone(), shutdown, grace).await.map_err(RunError::Serve)?;
    for task in background {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    gateway.store.close().await;
    Ok(())
}
