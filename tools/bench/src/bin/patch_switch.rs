//! Loading a patch file and switching a live session between task patches, on the shipped
//! MobileNetV2, beside one inference for scale.
//!
//! `cargo run --release -p edgepatch-bench --bin patch_switch -- [--kinds sb+logits,dw+logits]
//! [--reps 200] [--json]`
//!
//! For each patch kind, two patches A and B (the kind's values moved off the backbone's, 10
//! classes, 224 px), saved as f32 and f16 files and in a store. Timed, median and fastest of
//! `reps`: `load` (read and decode the file), `store get` (index + file + checks), `switch`
//! (`Session::set_patch`, alternating A and B in one session), `fresh session` (what switching
//! would cost without it: `Session::with_patch` on a clone of the backbone), and one batch-1
//! classification at 224 px.

use std::time::Instant;

use edgepatch::data::image::Rgb8;
use edgepatch::patch::file::{self, ValueType};
use edgepatch::patch::store::Store;
use edgepatch::train::{TrainConfig, Trainer};
use edgepatch::{Backbone, Patch, Session};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// Median and fastest of `reps` runs of `f`, in microseconds.
fn time(reps: usize, mut f: impl FnMut(usize)) -> (f64, f64) {
    let mut t: Vec<f64> = (0..reps)
        .map(|i| {
            let s = Instant::now();
            f(i);
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[0])
}

fn patch(b: &Backbone, kinds: &str, seed: u64) -> Patch {
    let mut config = TrainConfig::new(kinds.parse().expect("patch kinds"));
    config.seed = seed;
    let labels = (0..10).map(|i| format!("class {i}")).collect();
    let mut p = Trainer::new(b, config, labels).expect("a trainer").patch().expect("a patch");
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for v in p.tensors.iter_mut().flat_map(|t| t.values.iter_mut()) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *v *= 1.0 + ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1;
    }
    p
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind_list = arg(&args, "--kinds").unwrap_or_else(|| "sb+logits,dw+logits".into());
    let reps: usize = arg(&args, "--reps").and_then(|v| v.parse().ok()).unwrap_or(200);
    let json = args.iter().any(|a| a == "--json");
    let backbone = Backbone::embedded().expect("the embedded model");
    let dir = std::env::temp_dir().join(format!("edgepatch-bench-switch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let store = Store::open_or_create(&dir.join("store")).expect("a store");
    let image = Rgb8 { width: 224, height: 224, data: (0..224 * 224 * 3).map(|i| (i * 7 % 251) as u8).collect() };
    let mut rows = Vec::new();
    println!("| patch | file (B) | operation | median (µs) | fastest (µs) |\n| --- | --- | --- | --- | --- |");
    for kinds in kind_list.split(',') {
        let (a, b) = (patch(&backbone, kinds, 1), patch(&backbone, kinds, 2));
        let mut results: Vec<(String, u64, (f64, f64))> = Vec::new();
        for vt in [ValueType::F32, ValueType::F16] {
            let path = dir.join(format!("{kinds}.{vt}.patch"));
            file::save_as(&a, &path, vt).expect("save");
            let bytes = std::fs::metadata(&path).expect("saved").len();
            let r = time(reps, |_| drop(file::load(&path).expect("load")));
            results.push((format!("load ({vt})"), bytes, r));
            let name = format!("{}-{vt}", kinds.replace('+', "_"));
            store.add(&name, &a, vt).expect("store add");
            results.push((format!("store get ({vt})"), bytes, time(reps, |_| drop(store.get(&name).expect("get")))));
        }
        let mut session = Session::with_patch(backbone.clone(), &a).expect("a session");
        let r = time(reps, |i| session.set_patch(if i % 2 == 0 { &b } else { &a }).expect("switch"));
        results.push(("switch A↔B (set_patch)".into(), 0, r));
        let r = time(reps.min(50), |_| drop(Session::with_patch(backbone.clone(), &b).expect("a session")));
        results.push(("fresh session with B".into(), 0, r));
        let r = time(reps.min(20), |_| drop(session.classify(std::slice::from_ref(&image), 1).expect("classify")));
        results.push(("classify 1 image, 224 px".into(), 0, r));
        for (op, bytes, (median, fastest)) in results {
            let b = if bytes > 0 { bytes.to_string() } else { String::new() };
            println!("| {kinds} | {b} | {op} | {median:.1} | {fastest:.1} |");
            rows.push(format!(
                "{{\"patch\":\"{kinds}\",\"operation\":\"{op}\",\"bytes\":{bytes},\"median_us\":{median:.2},\"fastest_us\":{fastest:.2}}}"
            ));
        }
    }
    if json {
        println!("\n[{}]", rows.join(","));
    }
    std::fs::remove_dir_all(&dir).ok();
}
