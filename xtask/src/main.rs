//! fredkit's developer tasks, run as `cargo xtask <command>`.
//!
//! ```text
//! cargo xtask test [--quick] [--skip STEP]... [-- TEST-RUNNER-ARGS]
//! cargo xtask demo [--serve]
//! cargo xtask tour [SECTION]...
//! cargo xtask bench [SUITE]... [--quick] [--rounds N]
//! cargo xtask servers standalone|cluster|sentinel
//! cargo xtask ensure-redis
//! ```
//!
//! Every command that needs Redis first makes sure `redis-server` is
//! installed (see [`redis_setup`]).

mod bench;
mod cmd;
mod demo;
mod orderflow_demo;
mod redis_setup;
mod scratch;
mod servers;
mod test;

use anyhow::{bail, Result};
use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  test [--quick] [--skip STEP]... [-- ARGS]
        ensure redis, then fmt check, clippy, tests (nextest or cargo test),
        doc tests, README examples in a scratch crate and rustdoc,
        stopping at the first failure.
        steps: redis, fmt, clippy, tests, doctests, readme, doc, demo.
        --quick: only redis, tests and doctests.
        ARGS after -- go to the test runner (e.g. a test name filter).
  demo [--serve]
        the OrderFlow run: two instances of examples/orderflow on a throwaway
        redis-server (or $REDIS_URL), a scripted load showing each task
        (cache, cart, checkout lock, rate limit, logout, metrics) and a
        summary; --serve keeps the service up afterwards.
  tour [SECTION]...
        a readable tour of every fredkit crate, section by section
        (`tour --list`).
  bench [SUITE]... [--quick] [--rounds N]
        run fredkit-bench (release build) against a throwaway server;
        writes target/bench/results.json.  `bench --list` lists the suites;
        --rounds N: interleaved rounds per comparison (default 5).
  servers standalone|cluster|sentinel
        start a throwaway topology, print its URL, keep it up until Ctrl-C.
  readme
        compile (and run) every README example in a scratch crate outside
        the workspace, depending on fredkit as a user's crate does.
  ensure-redis
        make sure redis-server is installed (apt-get when root), nothing else.
  help  this text.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nxtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some((command, rest)) = args.split_first() else {
        print!("{USAGE}");
        bail!("no command given");
    };
    match command.as_str() {
        "test" => test::run(rest),
        "demo" => orderflow_demo::run(rest),
        "tour" => demo::run(rest),
        "bench" => bench::run(rest),
        "servers" => servers::run(rest),
        "readme" => scratch::run(rest),
        "ensure-redis" => {
            if !rest.is_empty() {
                bail!("ensure-redis takes no arguments");
            }
            redis_setup::ensure_redis().map(|_| ())
        }
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            print!("{USAGE}");
            bail!("unknown command `{other}`")
        }
    }
}
