//! Per-request cost of each step on the 3 KB reference body (a completed S01 job with two
//! readings), on the same body carrying three 1 MB photos, and on the realistic ~8 MB body: four
//! photos of 1.5 MiB of pseudo-random bytes (`examples/photo_body/gen.rs`, the generator
//! `bench/load.sh` uses too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/photo_body/gen.rs"]
#[allow(dead_code)]
mod photo_gen;

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flowgate::domain::auth::{Client, Rate};
use flowgate::domain::clock::Clock;
use sha2::Digest;

fn setup() -> (flowgate::rules::set::RuleSet, Vec<u8>, Vec<u8>, Vec<u8>) {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = flowgate::config::Config { rules_dir: repo.clone(), ..Default::default() };
    let set = flowgate::rules::load::load(&config).unwrap();
    let reference = std::fs::read(repo.join("tests/bench/s01-reference.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&reference).unwrap();
    // Three photos of 1 MB decoded each (base64: 4/3 of that).
    let photo = "QUJD".repeat(1024 * 1024 / 3);
    v["job_execution"]["pre_job_photo"] = photo.clone().into();
    v["job_execution"]["post_job_photo"] = photo.clone().into();
    v["job_execution"]["post_resealing_photo"] = photo.into();
    let four = photo_gen::body_with_photos(&reference, photo_gen::PHOTO_8MB, photo_gen::SEED).unwrap();
    (set, reference, serde_json::to_vec(&v).unwrap(), four)
}

fn client() -> Client {
    Client { name: "bench".into(), sip_id: "DEMO".into(), key_id: "bench".into(), key_sha256: String::new(), rate: Rate::default(), revoked: false }
}

fn steps(c: &mut Criterion) {
    let (set, reference, photos, four) = setup();
    let client = client();
    let now = Clock::Fixed(flowgate::domain::clock::parse_rfc3339("2025-12-31T12:00:00Z").unwrap());
    for (name, body) in [("reference-3kb", &reference), ("three-1mb-photos", &photos), ("four-photos-8mb", &four)] {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(1));
        match name {
            "reference-3kb" => {}
            // Tens of milliseconds a decision: criterion's smallest sample keeps `cargo bench` bounded.
            "four-photos-8mb" => {
                g.sample_size(10);
            }
            _ => {
                g.sample_size(20);
            }
        }
        g.bench_function("parse", |b| b.iter(|| flowgate::rules::decide::parse(body).unwrap()));
        let value = flowgate::rules::decide::parse(body).unwrap();
        g.bench_function("schema", |b| b.iter(|| set.schema.findings(&value)));
        g.bench_function("rules-scope", |b| b.iter(|| flowgate::rules::engine::scope_for(&value, "2025-12-31")));
        // What the idempotency hash cost before it skipped the serializer's escape loop for
        // strings that need no escape: the compact JSON written through serde_json into SHA-256
        // (decide-whole includes the hash as it is now).
        g.bench_function("hash-through-serializer", |b| b.iter(|| hash_through_serializer(&value)));
        g.bench_function("sha256-of-body", |b| b.iter(|| sha2::Sha256::digest(body.as_slice())));
        g.bench_function("decide-whole", |b| {
            b.iter(|| {
                let d = flowgate::rules::decide::decide(&set, &client, body, now, flowgate::rules::decide::Explain::No);
                assert!(matches!(d.verdict, flowgate::rules::decide::Verdict::Accepted(_)));
            })
        });
        // The flow file does not depend on the photos; the 8 MB group leaves it out.
        if name == "four-photos-8mb" {
            g.finish();
            continue;
        }
        if let flowgate::rules::decide::Verdict::Accepted(a) =
            flowgate::rules::decide::decide(&set, &client, body, now, flowgate::rules::decide::Explain::No).verdict
        {
            let flow = a.flows[0].clone();
            g.bench_function("finish-file", |b| b.iter(|| flow.finish("FG00000001", now.now(), &set.envelope)));
        }
        g.finish();
    }
}

fn hash_through_serializer(v: &serde_json::Value) -> Vec<u8> {
    struct Hashing(sha2::Sha256);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Hashing(sha2::Sha256::new());
    serde_json::to_writer(&mut h, v).unwrap();
    h.0.finalize().to_vec()
}

criterion_group!(benches, steps);
criterion_main!(benches);
