//! The integration tests, one test crate so the heavy dependencies (hyper, the AWS SDK, rustls)
//! link once: each module is one area (`cargo test --test it crash::` runs one). The golden
//! cases are their own target (`tests/golden.rs`): a harness of their own, one trial per case.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod cli;
mod crash;
mod gate;
mod hostile;
mod http;
mod http2;
mod inbound;
mod logs;
mod mutations;
mod openapi;
mod packaging;
mod reader;
mod reload;
mod s3;
mod shared;
mod shutdown;
mod tls;
