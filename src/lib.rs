//! flowgate: the rules-as-data gateway from SIP job worksheets to DTC data flows.
//!
//! Layers, each depending only on those listed before it (no import cycles):
//!
//! - [`config`], [`metrics`]: the YAML configuration and its defaults; the metrics registry.
//! - [`domain`]: the contract's own types: findings and problem answers, the 200 answer, clients
//!   and their keys, clocks and Europe/London dates, the limits of object names.
//! - [`dtc`]: the DTC industry facts: the catalogue extract and what text a flow may carry, the
//!   data items' checks (MPAN check digit, postcode, address lines), the one writer and reader.
//! - [`rules`]: rules as data. The rhai engine, the JSON Schema, flow templates and incoming flow
//!   descriptions, compiled into one immutable [`rules::set::RuleSet`] by [`rules::load`] (which
//!   runs the samples: the gate); [`rules::decide`] judges a body with it.
//! - [`store`], [`sink`]: the durable store (redb: requests, idempotency, file ids, the outbox,
//!   group commit); where files go and come from (a local folder, or an S3 bucket).
//! - [`exchange`]: delivery of the outbox exactly once per object name, and the inbox of
//!   incoming flows matched to accepted requests.
//! - [`http`]: hyper 1: routes, rate limits, body budget, answers, the accept loop, OpenAPI.
//! - [`runtime`]: the live state as separate handles, reloads, background tasks, and
//!   [`runtime::run`], the one way a gateway runs (`flowgate serve` and every test).
//!
//! `src/main.rs` is the command line on top (`serve`, `check`, `test`, `keys`, `config`...).

// Nothing a client or a rule file sends may panic the server (unit tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;
pub mod domain;
pub mod dtc;
pub mod exchange;
pub mod http;
pub mod metrics;
pub mod rules;
pub mod runtime;
pub mod sink;
pub mod store;
