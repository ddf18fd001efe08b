//! The baseline `bench/load.sh` compares the gateway with: a bare hyper 1 hello-world with the
//! same crates, features and accept loop as `flowgate::http::serve` (auto builder, nodelay,
//! one task per connection), so the difference is the gateway's own work.
//!
//!     cargo run --release --example hello -- --listen 127.0.0.1:0
#![allow(clippy::print_stdout)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"hello, world\n")));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r)
}

fn listen_addr() -> Result<SocketAddr, String> {
    let mut addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = match a.split_once('=') {
            Some(("--listen", v)) => v.to_string(),
            _ if a == "--listen" => args.next().ok_or("--listen needs a value")?,
            _ => return Err(format!("unknown argument {a}; usage: hello [--listen ADDR]")),
        };
        addr = value.parse().map_err(|_| format!("--listen: not an address: {value}"))?;
    }
    Ok(addr)
}

fn main() -> ExitCode {
    let addr = match listen_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hello: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hello: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: std::io::Result<()> = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("listening on http://{}", listener.local_addr()?);
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // Same HTTP/1 settings as the gateway: a timer and a header read timeout.
        builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("hello: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let conn = builder.serve_connection(TokioIo::new(stream), hyper::service::service_fn(hello)).into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello: {e}");
            ExitCode::FAILURE
        }
    }
}
