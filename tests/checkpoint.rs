//! Resumable training: a run killed at random moments and resumed from its checkpoint each time
//! ends with the patch of a run never interrupted, byte for byte (CPU); a checkpoint of another
//! run, or a damaged one, is refused without touching it.

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cli_support::{assert_failed_run, binary, run};
use edgepatch_tests::{random_values, repo_root};

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgepatch-checkpoint-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `train` arguments: 64 px, 160 images (batches of 16, with augmentation), Adam, `epochs`.
fn args(out: &Path, epochs: usize, extra: &[&str]) -> Vec<String> {
    let data = format!("idx:{}", repo_root().join("models/datasets/fashion-mnist-mini/train").display());
    let epochs = epochs.to_string();
    let mut a: Vec<String> = [
        "train",
        "--train",
        &data,
        "--patch",
        "sb+logits",
        "--resolution",
        "64",
        "--batch",
        "16",
        "--limit",
        "160",
        "--epochs",
        &epochs,
        "--optimizer",
        "adam",
        "--augment",
        "--device",
        "cpu",
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
fn a_run_killed_and_resumed_gives_the_uninterrupted_patch() {
    let d = dir();
    let whole = d.join("whole.patch");
    let started = std::time::Instant::now();
    let out = train(&args(&whole, 4, &[]));
    let took = started.elapsed().as_secs_f32();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = std::fs::read(&whole).unwrap();

    let (resumed, ckpt) = (d.join("resumed.patch"), d.join("run.ckpt"));
    let ckpt_arg = ckpt.display().to_string();
    let resumable = args(&resumed, 4, &["--checkpoint", &ckpt_arg, "--checkpoint-every", "1", "--resume"]);
    // Kill the run at random moments (a seeded draw of 20–60% of the whole run's time), each
    // time resuming it.
    let delays = random_values(6, 42, 1.0);
    let mut kills = 0;
    for delay in delays {
        let mut child = Command::new(binary())
            .args(&resumable)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts");
        std::thread::sleep(Duration::from_secs_f32(took * (0.4 + 0.2 * delay)));
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
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_checkpoint_of_another_run_or_a_damaged_one_is_refused_and_kept() {
    let d = dir().join("refused");
    std::fs::create_dir_all(&d).unwrap();
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
