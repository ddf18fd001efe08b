//! flowgate: the rules-as-data gateway from SIP job worksheets to DTC data flows.
//!
//! A request travels one way through these modules:
//!
//! - [`server`]: HTTP (hyper 1): routes, body limits, problem answers; calls [`pipeline`].
//! - [`auth`]: API keys (hashed, constant-time compare) and the clients they belong to.
//! - [`limit`]: per-key GCRA rate limits (governor) and the `RateLimit` header fields.
//! - [`pipeline`]: one function, `decide`, that runs the steps below in order.
//! - [`validate`]: the JSON Schema of the body (`schemas/`), findings with exact pointers.
//! - [`rules`]: the rhai rule set (`rules/`): required-if, consistency, warnings, scenario,
//!   the choice of flows and recipients.
//! - [`flows`]: flow definitions (`flow-templates/`) and the one DTC writer (and reader).
//! - [`ruleset`]: loads schemas + rules + templates as one immutable, checked [`ruleset::RuleSet`],
//!   and hot-reloads it whole through arc-swap.
//! - [`store`]: the durable store (redb): requests, idempotency, file ids, the outbox;
//!   group commit so concurrent requests share an fsync.
//! - [`dispatch`]: delivers outbox files to the sink (a local DTN folder, or S3) exactly once;
//!   a request's job archive first, which settles which instance owns a job.
//! - [`s3`]: the S3 sink (aws-sdk-s3): create-only `PutObject` with `If-None-Match: *`.
//! - [`reader`]: the DTC reader: a flow file to a typed tree, or findings with line numbers.
//! - [`inbound`]: polls the DTN inbox, reads each file, matches D0126/D0002 to accepted requests.
//! - [`config`]: the YAML configuration and its defaults.
//! - [`names`]: the limits every object name is held to (bytes per segment and per key).
//! - [`finding`]: the finding type shared by schema and rules.
//! - [`clock`]: wall clock, Europe/London dates, and a fixed clock for golden tests.

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
