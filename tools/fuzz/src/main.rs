//! `edgepatch-fuzz`: feeds mutated patch files to the decoder and reports executions and
//! crashes (panics), saving each crashing input.
//!
//! Mutations start from valid files (f32 and f16, format versions 1 and 2, small and large) and
//! flip bits, set interesting bytes, cut, insert, duplicate and splice byte ranges, and rewrite
//! the length fields; half of them then fix the CRC so the input gets past the checksum into the
//! postcard decoder and the checks behind it. An input whose outcome (accepted, or the error's
//! message with its numbers blanked) has not been seen before joins the corpus, a cheap stand-in
//! for coverage feedback. Every accepted input must re-encode to a file that decodes to the same
//! patch.
//!
//! `cargo run --release -p edgepatch-fuzz -- --seconds 60 [--seed N] [--crashes DIR]`
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use edgepatch::patch::file::{self, ValueType, PREFIX_LEN};
use edgepatch::patch::{Patch, PatchTensor, Role};
use edgepatch_format::RawPatch;

#[derive(Parser)]
struct Args {
    /// Run for this long.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Stop after this many executions (whichever comes first).
    #[arg(long)]
    execs: Option<u64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to save crashing inputs.
    #[arg(long, default_value = "target/fuzz-crashes")]
    crashes: PathBuf,
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seed_patch(tensors: usize, len: usize, classes: usize, rng: &mut Rng) -> Patch {
    let mut values = |n: usize| (0..n).map(|_| (rng.next() % 2001) as f32 / 1000.0 - 1.0).collect::<Vec<f32>>();
    let mut t: Vec<PatchTensor> = (0..tensors)
        .map(|i| PatchTensor {
            node: i as u32 * 3 + 1,
            role: if i % 2 == 0 { Role::Scale } else { Role::Bias },
            shape: vec![len as u32],
            values: values(len),
        })
        .collect();
    t.push(PatchTensor {
        node: 200,
        role: Role::Weights,
        shape: vec![classes as u32, 4, 1],
        values: values(classes * 4),
    });
    Patch {
        kinds: "sb+dw+logits".parse().expect("valid kinds"),
        fingerprint: "0123456789abcdef".into(),
        resolution: 96,
        labels: (0..classes).map(|i| format!("class {i} ✓")).collect(),
        tensors: t,
    }
}

fn seeds(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (tensors, len, classes) in [(0, 0, 1), (2, 3, 2), (6, 17, 5), (40, 130, 12)] {
        let p = seed_patch(tensors, len, classes, rng);
        for vt in [ValueType::F32, ValueType::F16] {
            out.push(file::to_bytes_as(&p, vt).expect("a valid seed"));
        }
    }
    let mut v1 = out[2].clone();
    v1[8] = 1;
    fix_crc(&mut v1);
    out.push(v1);
    out
}

fn fix_crc(b: &mut [u8]) {
    if b.len() >= PREFIX_LEN {
        let crc = crc32fast::hash(&[&b[..36], &b[PREFIX_LEN..]].concat());
        b[36..40].copy_from_slice(&crc.to_le_bytes());
    }
}

fn mutate(input: &[u8], corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                b[i] = [0, 1, 0x7f, 0x80, 0xff, 0xfe, 0x40][rng.below(7)];
            }
            2 => b.truncate(rng.below(len + 1)),
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, bytes);
            }
            4 if len > 1 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(32)).min(len);
                b.drain(at..end);
            }
            5 if len > 1 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(64)).min(len);
                let chunk = b[at..end].to_vec();
                let to = rng.below(len + 1);
                b.splice(to..to, chunk);
            }
            6 if len >= PREFIX_LEN => {
                let (field, width) = [(24, 4), (28, 8), (20, 4), (10, 1), (11, 1), (8, 2)][rng.below(6)];
                let v: u64 = match rng.below(4) {
                    0 => rng.next(),
                    1 => rng.next() % 4096,
                    2 => u64::MAX,
                    _ => (len - PREFIX_LEN) as u64 + rng.below(5) as u64,
                };
                b[field..field + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            7 => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            _ if len > PREFIX_LEN => {
                let i = PREFIX_LEN + rng.below(len - PREFIX_LEN);
                b[i] = b[i].wrapping_add(1 + rng.below(3) as u8);
            }
            _ => {}
        }
    }
    if rng.below(2) == 0 {
        fix_crc(&mut b);
    }
    b
}

/// The outcome with every word holding a digit blanked, so that inputs differing only in numbers
/// count once.
fn outcome(r: &Result<RawPatch, edgepatch_format::FormatError>, full: &Result<Patch, edgepatch::Error>) -> String {
    let text = match (r, full) {
        (Ok(_), Ok(_)) => "accepted".to_string(),
        (Err(e), _) => format!("format: {e}"),
        (Ok(_), Err(e)) => format!("meaning: {e}"),
    };
    text.split(' ').map(|w| if w.bytes().any(|b| b.is_ascii_digit()) { "#" } else { w }).collect::<Vec<_>>().join(" ")
}

/// Decodes `input` both ways and checks that an accepted file re-encodes to itself.
fn execute(input: &[u8]) -> String {
    let raw = edgepatch_format::decode(input);
    let full = file::from_bytes_typed(input);
    if let Ok((p, vt)) = &full {
        let again = file::to_bytes_as(p, *vt).expect("an accepted patch encodes");
        assert_eq!(file::from_bytes_typed(&again).expect("a re-encoded patch decodes"), (p.clone(), *vt));
    }
    assert!(full.is_err() || raw.is_ok(), "the runtime accepted what the codec refused");
    outcome(&raw, &full.map(|x| x.0))
}

fn main() {
    let args = Args::parse();
    let mut rng = Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut corpus = seeds(&mut rng);
    let mut seen: HashSet<String> = corpus.iter().map(|c| execute(c)).collect();
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let start = Instant::now();
    let budget = Duration::from_secs(args.seconds);
    let (mut execs, mut crashes, mut accepted) = (0u64, 0u64, 0u64);
    while start.elapsed() < budget && args.execs.is_none_or(|n| execs < n) {
        let parent = corpus[rng.below(corpus.len())].clone();
        let input = mutate(&parent, &corpus, &mut rng);
        execs += 1;
        match panic::catch_unwind(AssertUnwindSafe(|| execute(&input))) {
            Ok(o) => {
                accepted += (o == "accepted") as u64;
                if corpus.len() < 4096 && seen.insert(o) {
                    corpus.push(input);
                }
            }
            Err(_) => {
                crashes += 1;
                std::fs::create_dir_all(&args.crashes).ok();
                let path = args.crashes.join(format!("crash-{execs}.patch"));
                if std::fs::write(&path, &input).is_ok() {
                    eprintln!("crash: input saved to {}", path.display());
                }
            }
        }
    }
    panic::set_hook(default_hook);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{execs} executions in {secs:.1} s ({:.0}/s), {crashes} crashes, {accepted} accepted, {} distinct outcomes, corpus {}",
        execs as f64 / secs,
        seen.len(),
        corpus.len()
    );
    let mut outcomes: Vec<&String> = seen.iter().collect();
    outcomes.sort();
    for o in outcomes.iter().take(60) {
        println!("  {o}");
    }
    if crashes > 0 {
        std::process::exit(1);
    }
}
