//! Resumable training: a run interrupted by Ctrl-C, or killed at random moments, and resumed from
//! its checkpoint each time ends with the patch of a run never interrupted, byte for byte (on the
//! CPU, and on the GPU, whose kernels sum in a fixed order); a checkpoint of another run, or a
//! damaged one, is refused without touching it.

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cli_support::{assert_failed_run, binary, run};
use edgepatch_tests::{random_values, repo_root};

/// A fresh directory of this test process for the test `name`.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgepatch-checkpoint-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `train` arguments on the CPU: 64 px, 160 images (batches of 16, with augmentation), Adam,
/// `epochs`.
fn args(out: &Path, epochs: usize, extra: &[&str]) -> Vec<String> {
    args_on("cpu", 64, 160, 16, out, epochs, extra)
}

/// `train` arguments on `device` at `resolution` px with `limit` images in batches of `batch`.
fn args_on(
    device: &str,
    resolution: u32,
    limit: usize,
    batch: usize,
    out: &Path,
    epochs: usize,
    extra: &[&str],
) -> Vec<String> {
    let data = format!("idx:{}", repo_root().join("models/datasets/fashion-mnist-mini/train").display());
    let (epochs, resolution) = (epochs.to_string(), resolution.to_string());
    let (limit, batch) = (limit.to_string(), batch.to_string());
    let mut a: Vec<String> = [
        "train",
        "--train",
        &data,
        "--patch",
        "sb+logits",
        "--resolution",
        &resolution,
        "--batch",
        &batch,
        "--limit",
        &limit,
        "--epochs",
        &epochs,
        "--optimizer",
        "adam",
        "--augment",
        "--device",
        device,
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(out.display().to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn train(args: &[String]) -> std::process::Output {
    run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn a_run_interrupted_and_killed_and_resumed_gives_the_uninterrupted_patch() {
    let d = dir("cpu");
    let args = |out: &Path, extra: &[&str]| args(out, 4, extra);
    interrupted_and_killed_and_resumed(&d, &args, 5);
    std::fs::remove_dir_all(&d).ok();
}

/// The same on the GPU (lavapipe in CI; skipped without an adapter unless
/// `EDGEPATCH_REQUIRE_GPU=1`): 32 px, 16 images in batches of 8 for 4 epochs, since a software
/// GPU trains slowly (about 2 s a step on lavapipe here).
#[test]
fn a_gpu_run_interrupted_and_killed_and_resumed_gives_the_uninterrupted_patch() {
    let d = dir("gpu");
    let probe = run(&["info", "--devices", "--json"]);
    let devices = String::from_utf8_lossy(&probe.stdout).to_string();
    if !devices.contains("\"name\"") {
        assert!(std::env::var("EDGEPATCH_REQUIRE_GPU").map_or(true, |v| v != "1"), "no GPU adapter: {devices}");
        eprintln!("skipping: no GPU adapter ({devices})");
        return;
    }
    let args = |out: &Path, extra: &[&str]| args_on("gpu", 32, 16, 8, out, 4, extra);
    interrupted_and_killed_and_resumed(&d, &args, 3);
    std::fs::remove_dir_all(&d).ok();
}

/// Trains once uninterrupted; then, with a checkpoint after every step, interrupts a run with
/// SIGINT once its first checkpoint is written (it must stop cleanly with status 130), kills
/// `attempts` resumed runs at random moments (after each has checkpointed once, a seeded draw
/// within the next 5% of the whole run's time),
/// and resumes to the end: the patch must equal the uninterrupted one, byte for byte.
fn interrupted_and_killed_and_resumed(d: &Path, args: &dyn Fn(&Path, &[&str]) -> Vec<String>, attempts: usize) {
    let whole = d.join("whole.patch");
    let started = std::time::Instant::now();
    let out = train(&args(&whole, &[]));
    let took = started.elapsed().as_secs_f32();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = std::fs::read(&whole).unwrap();

    let (resumed, ckpt) = (d.join("resumed.patch"), d.join("run.ckpt"));
    let ckpt_arg = ckpt.display().to_string();
    let resumable = args(&resumed, &["--checkpoint", &ckpt_arg, "--checkpoint-every", "1", "--resume"]);

    // Ctrl-C: the run stops after its step, writes its checkpoint and exits with 130.
    let child = Command::new(binary()).args(&resumable).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs_f32(took * 2.0 + 60.0);
    while !ckpt.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ckpt.exists(), "no checkpoint was written");
    let first = std::fs::read(&ckpt).unwrap();
    let signalled = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(signalled.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted") && stderr.contains("its checkpoint resumes it"), "{stderr}");
    assert!(!resumed.exists(), "an interrupted run wrote its patch");
    assert_ne!(std::fs::read(&ckpt).unwrap(), first, "the interrupted run did not checkpoint where it stopped");

    let mut kills = 0;
    for delay in random_values(attempts, 42, 1.0) {
        let mut child = Command::new(binary())
            .args(&resumable)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts");
        // Once the resumed run has written a checkpoint of its own (it made progress), kill it
        // at a random moment of the next 5% of a whole run's time: timing-independent, so a
        // slow or loaded machine still kills every run that has not finished.
        let before = std::fs::read(&ckpt).unwrap_or_default();
        let deadline = std::time::Instant::now() + Duration::from_secs_f32(took * 2.0 + 60.0);
        while child.try_wait().unwrap().is_none()
            && std::fs::read(&ckpt).unwrap_or_default() == before
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_secs_f32(took * 0.05 * delay.abs()));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 2, "the run was killed only {kills} times: make it longer");
    let out = train(&resumable);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&resumed).unwrap() == expected, "the resumed patch differs from the uninterrupted one");
}

#[test]
fn a_checkpoint_of_another_run_or_a_damaged_one_is_refused_and_kept() {
    let d = dir("refused");
    let ckpt = d.join("run.ckpt");
    let ckpt_arg = ckpt.display().to_string();
    let first = args(&d.join("a.patch"), 1, &["--checkpoint", &ckpt_arg]);
    let out = train(&first);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let saved = std::fs::read(&ckpt).unwrap();
    // Another seed is another run.
    let other = args(&d.join("b.patch"), 1, &["--checkpoint", &ckpt_arg, "--resume", "--seed", "7"]);
    assert_failed_run(&train(&other), "another run");
    assert_eq!(std::fs::read(&ckpt).unwrap(), saved, "the refused checkpoint was changed");
    assert!(!d.join("b.patch").exists());
    // Starting from the prototype head instead of a random one is another run too.
    let protos = args(&d.join("b.patch"), 1, &["--checkpoint", &ckpt_arg, "--resume", "--head", "prototypes"]);
    assert_failed_run(&train(&protos), "another run");
    assert_eq!(std::fs::read(&ckpt).unwrap(), saved, "the refused checkpoint was changed");
    // A flipped byte and a truncation.
    for (what, bytes) in [("checksum", flip(&saved)), ("declares", saved[..saved.len() - 3].to_vec())] {
        std::fs::write(&ckpt, &bytes).unwrap();
        let again = args(&d.join("c.patch"), 1, &["--checkpoint", &ckpt_arg, "--resume"]);
        assert_failed_run(&train(&again), what);
        assert_eq!(std::fs::read(&ckpt).unwrap(), bytes);
    }
    std::fs::remove_dir_all(&d).ok();
}

fn flip(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    let i = v.len() - 5;
    v[i] ^= 0x40;
    v
}
