//! `cargo xtask bench [SUITE]... [--quick] [--rounds N]`: runs `fredkit-bench` in release
//! mode (it starts its own throwaway server and writes
//! `target/bench/results.json`).

use crate::{cmd, redis_setup};
use anyhow::Result;

/// Runs `cargo xtask bench`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let listing = args
        .iter()
        .any(|a| matches!(a.as_str(), "--list" | "--help" | "-h"));
    let external = args.iter().any(|a| a == "--url" || a.starts_with("--url="));
    if !listing && !external {
        redis_setup::ensure_redis()?;
    }
    let mut command = cmd::cargo();
    command
        .args(["run", "--release", "--package", "fredkit-bench", "--"])
        .args(args);
    println!("==> {}", cmd::display(&command));
    cmd::run(&mut command)
}
