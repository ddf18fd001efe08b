//! Writes a job body that carries four photos of pseudo-random bytes (see `gen.rs`), for
//! `bench/load.sh`; prints its size and SHA-256 to stderr.
//!
//!     cargo run --release --example photo_body -- --size 8mb --out photos-8mb.json
//!
//! Options: `--size 8mb` (the default: photos of 1.5 MiB each) or `--size 30mb` (5.5 MiB each),
//! or `--photo-kib N` (any decoded size per photo); `--seed N`; `--reference FILE` (default
//! `tests/bench/s01-reference.json`, from the repository root); `--out FILE` (default stdout).
#![allow(clippy::print_stderr)]

mod gen;

use std::io::Write as _;
use std::process::ExitCode;

use sha2::Digest as _;

struct Options {
    photo_kib: usize,
    seed: u64,
    reference: String,
    out: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut o = Options { photo_kib: gen::PHOTO_8MB / 1024, seed: gen::SEED, reference: "tests/bench/s01-reference.json".into(), out: None };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--size" => {
                o.photo_kib = match value()?.as_str() {
                    "8mb" => gen::PHOTO_8MB / 1024,
                    "30mb" => gen::PHOTO_30MB / 1024,
                    other => return Err(format!("--size: 8mb or 30mb, not {other}")),
                }
            }
            "--photo-kib" => o.photo_kib = value()?.parse().map_err(|e| format!("--photo-kib: {e}"))?,
            "--seed" => o.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--reference" => o.reference = value()?,
            "--out" => o.out = Some(value()?),
            _ => return Err(format!("unknown argument {a}; usage: photo_body [--size 8mb|30mb | --photo-kib N] [--seed N] [--reference FILE] [--out FILE]")),
        }
    }
    // The schema's limit is 10 MiB decoded per photo.
    if o.photo_kib == 0 || o.photo_kib > 10 * 1024 {
        return Err("--photo-kib must be between 1 and 10240".into());
    }
    Ok(o)
}

fn run() -> Result<(), String> {
    let o = options()?;
    let reference = std::fs::read(&o.reference).map_err(|e| format!("{}: {e}", o.reference))?;
    let body = gen::body_with_photos(&reference, o.photo_kib * 1024, o.seed)?;
    let digest: String = sha2::Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    match &o.out {
        Some(path) => std::fs::write(path, &body).map_err(|e| format!("{path}: {e}"))?,
        None => std::io::stdout().lock().write_all(&body).map_err(|e| e.to_string())?,
    }
    eprintln!("photo_body: {} bytes, 4 photos of {} KiB decoded, seed {}, sha256 {digest}", body.len(), o.photo_kib, o.seed);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("photo_body: {e}");
            ExitCode::from(2)
        }
    }
}
