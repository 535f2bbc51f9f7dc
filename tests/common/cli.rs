//! Running the `pseudoword` binary from integration tests.

use std::process::{Command, Output};

/// Runs the CLI; prints its stderr when it fails (the caller asserts).
pub fn pw(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_pseudoword")).args(args).output().unwrap();
    if !out.status.success() {
        eprintln!("stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    out
}

/// The command's stdout as one JSON value; fails the test when the command failed.
pub fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "command failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A JSON array of integers.
pub fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}
