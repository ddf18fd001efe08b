//! The DTC reader against fixtures: `tests/reader/valid/*.usr` read cleanly and round-trip,
//! `tests/reader/broken/<name>.usr` give exactly the findings in `<name>.expect.txt`, every golden
//! flow file the writer produced (`tests/cases/*/flows/*.usr`) reads back to the same bytes, and
//! 20,000 deterministic mutations of those files never make the reader panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use flowgate::dtc::catalogue::Catalogue;
use flowgate::dtc::reader::{read, ParsedFlow};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn catalogue() -> Catalogue {
    Catalogue::load(&repo().join("flow-templates/catalogue")).unwrap()
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

/// Every golden flow file the writer produced.
fn golden_flow_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for case in std::fs::read_dir(repo().join("tests/cases")).unwrap() {
        let flows = case.unwrap().path().join("flows");
        if flows.is_dir() {
            out.extend(files(&flows, "usr"));
        }
    }
    out.sort();
    out
}

fn read_clean(path: &Path, cat: &Catalogue) -> ParsedFlow {
    let bytes = std::fs::read(path).unwrap();
    match read(&bytes, cat) {
        Ok(flow) => {
            assert_eq!(String::from_utf8_lossy(&flow.to_bytes()), String::from_utf8_lossy(&bytes), "{}: written again, the bytes differ", path.display());
            flow
        }
        Err(findings) => panic!("{}: {}", path.display(), findings.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")),
    }
}

#[test]
fn valid_fixtures_read_cleanly_and_round_trip() {
    let cat = catalogue();
    let valid = files(&repo().join("tests/reader/valid"), "usr");
    assert!(valid.len() >= 2);
    let mut flows = Vec::new();
    for path in &valid {
        flows.push(read_clean(path, &cat).header.flow);
    }
    flows.sort();
    assert_eq!(flows, ["D0002", "D0126"]);
}

#[test]
fn valid_fixture_values_are_where_the_catalogue_puts_them() {
    let cat = catalogue();
    let d0126 = read_clean(&repo().join("tests/reader/valid/D0126-two-mpans.usr"), &cat);
    assert_eq!((d0126.header.from_role.as_str(), d0126.header.to_mpid.as_str()), ("J", "DEMO"));
    assert_eq!(d0126.groups.len(), 2);
    assert_eq!(d0126.groups[1].get("J0003"), Some("1400000000010"));
    assert_eq!(d0126.groups[1].children[0].get("J1823"), Some("D"));
    assert_eq!(d0126.trailer.group_count, 4);
    let d0002 = read_clean(&repo().join("tests/reader/valid/D0002-supplier-decision.usr"), &cat);
    assert!(d0002.crlf);
    assert_eq!(d0002.header.from_role, "X");
    let g = &d0002.groups[0];
    assert_eq!(g.children.iter().map(|c| c.code.as_str()).collect::<Vec<_>>(), ["005", "760"]);
    assert_eq!(g.children[0].children.len(), 2);
    assert_eq!(g.children[0].children[1].get("J0014"), None);
}

#[test]
fn broken_fixtures_give_the_expected_findings() {
    let cat = catalogue();
    let dir = repo().join("tests/reader/broken");
    let broken = files(&dir, "usr");
    assert!(broken.len() >= 8);
    let mut failures = Vec::new();
    for path in &broken {
        let expect_path = path.with_extension("expect.txt");
        let expected = std::fs::read_to_string(&expect_path).unwrap_or_else(|e| panic!("{}: {e}", expect_path.display()));
        let expected: Vec<&str> = expected.lines().collect();
        let got: Vec<String> = match read(&std::fs::read(path).unwrap(), &cat) {
            Ok(_) => vec!["(read cleanly)".into()],
            Err(f) => f.iter().map(ToString::to_string).collect(),
        };
        if got != expected {
            failures.push(format!("{}:\n  expected: {expected:#?}\n  got:      {got:#?}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_golden_flow_file_reads_back_to_the_same_bytes() {
    let cat = catalogue();
    let golden = golden_flow_files();
    assert!(!golden.is_empty());
    for path in &golden {
        let flow = read_clean(path, &cat);
        // The counts the writer put in ZPT are the ones the reader finds.
        let mut n = 0;
        fn count(gs: &[flowgate::dtc::reader::Group], n: &mut u64) {
            for g in gs {
                *n += 1;
                count(&g.children, n);
            }
        }
        count(&flow.groups, &mut n);
        assert_eq!(flow.trailer.group_count, n, "{}", path.display());
        assert_eq!(flow.trailer.flow_count, flow.groups.len() as u64, "{}", path.display());
    }
}

/// xorshift64*: deterministic, no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn line_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    for (i, c) in b.iter().enumerate() {
        if *c == b'\n' {
            spans.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < b.len() {
        spans.push((start, b.len()));
    }
    spans
}

fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    const INTERESTING: &[u8] = b"|\n\r\x00\xff\xc3\xe2\x8209Z -.T";
    let pos = rng.below(b.len() + 1);
    match rng.below(11) {
        0 if !b.is_empty() => {
            let i = rng.below(b.len());
            b[i] ^= 1 << rng.below(8);
        }
        1 if !b.is_empty() => {
            let i = rng.below(b.len());
            b[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 if !b.is_empty() => {
            let start = rng.below(b.len());
            let end = (start + 1 + rng.below(16)).min(b.len());
            b.drain(start..end);
        }
        3 => {
            for _ in 0..1 + rng.below(8) {
                b.insert(pos, rng.next() as u8);
            }
        }
        4..=6 => {
            let spans = line_spans(b);
            if spans.is_empty() {
                return;
            }
            let (s, e) = spans[rng.below(spans.len())];
            let line = b[s..e].to_vec();
            match rng.below(3) {
                0 => {
                    b.splice(s..s, line);
                }
                1 => {
                    b.drain(s..e);
                }
                _ => {
                    let (s2, e2) = spans[rng.below(spans.len())];
                    if e <= s2 {
                        let other = b[s2..e2].to_vec();
                        b.splice(s2..e2, line);
                        b.splice(s..e, other);
                    }
                }
            }
        }
        7 => b.truncate(pos),
        8 => {
            let chars = ["€", "é", "\u{1f}", "\u{7f}", "\r\n", "||", "\u{feff}"];
            let c = chars[rng.below(chars.len())];
            let at = pos.min(b.len());
            b.splice(at..at, c.bytes());
        }
        _ => {
            // Replace one field (between two pipes) with digits, nothing, or a long run.
            let pipes: Vec<usize> = b.iter().enumerate().filter(|(_, c)| **c == b'|').map(|(i, _)| i).collect();
            if pipes.len() < 2 {
                return;
            }
            let k = rng.below(pipes.len() - 1);
            let (s, e) = (pipes[k] + 1, pipes[k + 1]);
            let value: Vec<u8> = match rng.below(4) {
                0 => Vec::new(),
                1 => (0..rng.below(20)).map(|_| b'0' + rng.below(10) as u8).collect(),
                2 => vec![b'9'; 300],
                _ => b"99999999999999999999999".to_vec(),
            };
            b.splice(s..e, value);
        }
    }
}

#[test]
fn twenty_thousand_mutations_never_panic() {
    let cat = catalogue();
    let mut seeds: Vec<Vec<u8>> = golden_flow_files().iter().map(|p| std::fs::read(p).unwrap()).collect();
    seeds.extend(files(&repo().join("tests/reader/valid"), "usr").iter().map(|p| std::fs::read(p).unwrap()));
    let mut rng = Rng(0x0F10_3A7E_2026_1127);
    let (mut clean, mut refused) = (0u32, 0u32);
    for i in 0..20_000u32 {
        let mut bytes = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut bytes);
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&bytes, &cat)));
        match result {
            Err(_) => panic!("mutation {i} made the reader panic on {:?}", String::from_utf8_lossy(&bytes)),
            Ok(Ok(flow)) => {
                clean += 1;
                // What reads cleanly is written out and read back to the same tree.
                let again = read(&flow.to_bytes(), &cat).unwrap_or_else(|f| panic!("mutation {i}: written again, it does not read: {f:?}"));
                assert_eq!(again, flow, "mutation {i}");
            }
            Ok(Err(findings)) => {
                refused += 1;
                assert!(!findings.is_empty(), "mutation {i}: refused without a finding");
            }
        }
    }
    assert!(refused > 10_000, "too few mutations were refused: {refused}");
    eprintln!("{clean} mutations still read cleanly, {refused} refused");
}
