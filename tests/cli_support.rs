//! Helpers of the end-to-end tests that run the `edgepatch` binary (`cli.rs`, `hostile.rs`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The binary Cargo built for this test, or `EDGEPATCH_BIN` when set (to run the tests against
/// another build, e.g. an older one, and see which fail).
pub fn binary() -> PathBuf {
    std::env::var_os("EDGEPATCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_edgepatch")))
}

pub fn run(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().expect("the binary starts")
}

pub fn tmp(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgepatch-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

pub fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// A failure: non-zero exit, exactly one line on stderr mentioning `needle`, no panic.
pub fn assert_clean_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status 0 for bad input; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "stderr is not one line: {err}");
    assert!(err.contains(needle), "stderr {err:?} does not mention {needle:?}");
}

/// A failed run whose last stderr line is the CLI's error naming `needle` (earlier lines may be
/// log output), no panic.
pub fn assert_failed_run(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status 0; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("edgepatch: error:") && last.contains(needle), "last line {last:?}, wanted {needle:?}");
}
