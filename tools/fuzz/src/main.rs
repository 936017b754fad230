//! `edgepatch-fuzz`: feeds mutated inputs to the runtime's three parsers of outside files — the
//! patch decoder, the ONNX importer and the image decoder — and reports executions, crashes
//! (panics) and the process's peak memory, saving each crashing input.
//!
//! Each target starts from valid files and mutates them, both as bytes (bit flips, interesting
//! bytes, cuts, insertions, duplicated and spliced ranges) and by structure (header and length
//! fields of patches, ONNX nodes, attributes and tensor shapes, PNG and JPEG size fields with
//! their checksums fixed). An input whose outcome (accepted, or the error's message with its
//! numbers blanked) has not been seen before joins the corpus, a cheap stand-in for coverage
//! feedback. A run fails on any crash, and when the process's peak resident memory exceeds
//! `--max-rss-mb` (every input is read with bounded memory).
//!
//! `cargo run --release -p edgepatch-fuzz -- --target patch|onnx|image|all --seconds 60 [--seed N]`
//! (`--seconds` per target).
#![forbid(unsafe_code)]

mod image;
mod onnx;
mod patch;

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// What to fuzz: patch, onnx, image, or all three one after the other.
    #[arg(long, default_value = "patch")]
    target: String,
    /// Run each target for this long.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Stop each target after this many executions (whichever comes first).
    #[arg(long)]
    execs: Option<u64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fail when the process's peak resident memory exceeds this.
    #[arg(long, default_value_t = 1024)]
    max_rss_mb: u64,
    /// Where to save crashing inputs.
    #[arg(long, default_value = "target/fuzz-crashes")]
    crashes: PathBuf,
}

/// xorshift64*.
pub struct Rng(u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// One byte-level mutation of `b`: a bit flip, an interesting byte, a cut, random bytes
/// inserted, a range deleted or duplicated, or a splice with another corpus entry.
pub fn mutate_bytes(b: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng) {
    let len = b.len();
    match rng.below(7) {
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
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
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
        _ => {
            let other = &corpus[rng.below(corpus.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            b.truncate(cut);
            b.extend_from_slice(&other[from..]);
        }
    }
}

/// `text` with every word that holds a digit replaced by `#`, so that inputs differing only in
/// numbers count as one outcome.
pub fn blank_numbers(text: &str) -> String {
    text.split(' ').map(|w| if w.bytes().any(|b| b.is_ascii_digit()) { "#" } else { w }).collect::<Vec<_>>().join(" ")
}

/// The process's peak resident memory in bytes (`VmHWM`; 0 where /proc is absent).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A mutator: an input, the corpus (for splices) and the generator give a new input.
type Mutator = fn(&[u8], &[Vec<u8>], &mut Rng) -> Vec<u8>;

/// A fuzzing target: its valid seeds, its mutator and one execution (the outcome in words).
struct Target {
    name: &'static str,
    seeds: fn(&mut Rng) -> Vec<Vec<u8>>,
    mutate: Mutator,
    execute: fn(&[u8]) -> String,
}

/// Fuzzes one target; the number of crashes.
fn run(t: &Target, args: &Args) -> u64 {
    let mut rng = Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut corpus = (t.seeds)(&mut rng);
    let mut seen: HashSet<String> = corpus.iter().map(|c| (t.execute)(c)).collect();
    let start = Instant::now();
    let budget = Duration::from_secs(args.seconds);
    let (mut execs, mut crashes, mut accepted) = (0u64, 0u64, 0u64);
    while start.elapsed() < budget && args.execs.is_none_or(|n| execs < n) {
        let parent = corpus[rng.below(corpus.len())].clone();
        let input = (t.mutate)(&parent, &corpus, &mut rng);
        execs += 1;
        match panic::catch_unwind(AssertUnwindSafe(|| (t.execute)(&input))) {
            Ok(o) => {
                accepted += (o == "accepted") as u64;
                if corpus.len() < 4096 && seen.insert(o) {
                    corpus.push(input);
                }
            }
            Err(_) => {
                crashes += 1;
                std::fs::create_dir_all(&args.crashes).ok();
                let path = args.crashes.join(format!("crash-{}-{execs}.bin", t.name));
                if std::fs::write(&path, &input).is_ok() {
                    eprintln!("crash: input saved to {}", path.display());
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}: {execs} executions in {secs:.1} s ({:.0}/s), {crashes} crashes, {accepted} accepted, {} distinct outcomes, corpus {}, peak RSS so far {} MB",
        t.name,
        execs as f64 / secs,
        seen.len(),
        corpus.len(),
        peak_rss() >> 20
    );
    let mut outcomes: Vec<&String> = seen.iter().collect();
    outcomes.sort();
    for o in outcomes.iter().take(40) {
        println!("  {o}");
    }
    crashes
}

fn main() {
    let args = Args::parse();
    let targets = [
        Target { name: "patch", seeds: patch::seeds, mutate: patch::mutate, execute: patch::execute },
        Target { name: "onnx", seeds: onnx::seeds, mutate: onnx::mutate, execute: onnx::execute },
        Target { name: "image", seeds: image::seeds, mutate: image::mutate, execute: image::execute },
    ];
    let chosen: Vec<&Target> = targets.iter().filter(|t| args.target == "all" || args.target == t.name).collect();
    if chosen.is_empty() {
        eprintln!("edgepatch-fuzz: unknown target '{}' (patch, onnx, image or all)", args.target);
        std::process::exit(2);
    }
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let crashes: u64 = chosen.iter().map(|t| run(t, &args)).sum();
    panic::set_hook(default_hook);
    let peak = peak_rss();
    println!("peak resident memory {} MB (limit {} MB)", peak >> 20, args.max_rss_mb);
    if crashes > 0 {
        std::process::exit(1);
    }
    if peak > args.max_rss_mb << 20 {
        eprintln!("edgepatch-fuzz: peak resident memory {} MB is over the limit of {} MB", peak >> 20, args.max_rss_mb);
        std::process::exit(1);
    }
}
