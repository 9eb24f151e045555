//! `cargo xtask test`: everything CI checks, in order, stopping at the first
//! failure.
//!
//! Steps: make sure redis-server is installed, `cargo fmt --check`, clippy
//! with `-D warnings`, every test of every crate with all features
//! (cargo-nextest when installed, `cargo test` otherwise), doc tests (which
//! nextest does not run), every README example compiled in a scratch crate
//! outside the workspace (`cargo xtask readme`), and rustdoc with
//! `-D warnings`.
//!
//! Child output, stderr included, goes to our stdout so that a CI log reading
//! stdout sees the test runner's closing summary and every error in order.

use crate::{cmd, redis_setup};
use anyhow::{bail, Result};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: [&str; 8] = [
    "redis", "fmt", "clippy", "tests", "doctests", "readme", "doc", "demo",
];

struct Options {
    skip: Vec<String>,
    runner_args: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        skip: Vec::new(),
        runner_args: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options
                .skip
                .extend(["fmt", "clippy", "doc", "demo"].map(String::from)),
            "--no-fmt" => options.skip.push("fmt".into()),
            "--no-clippy" => options.skip.push("clippy".into()),
            "--no-doc" => options.skip.push("doc".into()),
            "--skip" => match args.next() {
                Some(step) if STEPS.contains(&step.as_str()) => options.skip.push(step.clone()),
                Some(step) => bail!("unknown step `{step}` (steps: {})", STEPS.join(", ")),
                None => bail!("--skip needs a step name ({})", STEPS.join(", ")),
            },
            "--" => options.runner_args.extend(args.by_ref().cloned()),
            other => bail!(
                "unknown option `{other}` for `test` \
                 (--quick, --skip STEP, --no-fmt, --no-clippy, --no-doc, -- ARGS)"
            ),
        }
    }
    Ok(options)
}

enum Action {
    Redis,
    /// `cargo xtask readme`: the README examples built in a scratch crate
    /// outside the workspace (generated when the step runs).
    Readme,
    /// The test runner, given shared servers for the whole run (see [`SharedServers`]).
    Tests(Command),
    /// `cargo xtask demo`, run in this process: `cargo run` would relink
    /// xtask, whose binary the tests step rebuilt with every feature.
    Demo,
    Cargo(Command),
}

struct Step {
    name: &'static str,
    action: Action,
}

fn cargo(args: &[&str]) -> Command {
    let mut command = cmd::cargo();
    command.args(args);
    command
}

fn nextest_available() -> bool {
    cmd::cargo()
        .args(["nextest", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn plan(options: &Options) -> Vec<Step> {
    let mut steps = vec![
        Step {
            name: "redis",
            action: Action::Redis,
        },
        Step {
            name: "fmt",
            action: Action::Cargo(cargo(&["fmt", "--all", "--", "--check"])),
        },
        Step {
            name: "clippy",
            action: Action::Cargo(cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ])),
        },
    ];

    let tests = if nextest_available() {
        let mut c = cargo(&[
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--no-fail-fast",
            "--no-tests=warn",
        ]);
        if cmd::env_flag("CI") && std::env::var_os("NEXTEST_PROFILE").is_none() {
            c.args(["--profile", "ci"]);
        }
        c
    } else {
        println!("==> cargo-nextest not found: running the tests with `cargo test`");
        cargo(&["test", "--workspace", "--all-features", "--no-fail-fast"])
    };
    steps.push(Step {
        name: "tests",
        action: Action::Tests(tests),
    });
    steps.push(Step {
        name: "doctests",
        action: Action::Cargo(cargo(&["test", "--workspace", "--all-features", "--doc"])),
    });

    steps.push(Step {
        name: "readme",
        action: Action::Readme,
    });

    let mut doc = cargo(&["doc", "--workspace", "--all-features", "--no-deps"]);
    let mut rustdocflags = std::env::var("RUSTDOCFLAGS").unwrap_or_default();
    if !rustdocflags.is_empty() {
        rustdocflags.push(' ');
    }
    rustdocflags.push_str("-D warnings");
    doc.env("RUSTDOCFLAGS", rustdocflags);
    steps.push(Step {
        name: "doc",
        action: Action::Cargo(doc),
    });
    // `cargo xtask demo` as a user runs it: the OrderFlow scripted load,
    // which fails when a task's result is not the expected one.
    steps.push(Step {
        name: "demo",
        action: Action::Demo,
    });

    for step in &mut steps {
        match &mut step.action {
            Action::Tests(command) => {
                command.args(&options.runner_args);
            }
            Action::Cargo(command) if step.name == "doctests" => {
                command.args(&options.runner_args);
            }
            _ => {}
        }
    }
    steps
}

enum Outcome {
    Passed,
    Failed,
    Skipped,
    NotRun,
}

/// Runs `cargo xtask test`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    let started = Instant::now();
    let steps = plan(&options);
    let is_skipped = |name: &str| options.skip.iter().any(|k| k == name);
    let total = steps.iter().filter(|s| !is_skipped(s.name)).count();
    let mut done: Vec<(&'static str, Outcome, Duration)> = Vec::new();
    let mut number = 0;
    let mut chromium: Option<std::thread::JoinHandle<Result<()>>> = None;

    let mut steps = steps.into_iter();
    while let Some(step) = steps.next() {
        let Step { name, action } = step;
        if is_skipped(name) {
            done.push((name, Outcome::Skipped, Duration::ZERO));
            continue;
        }
        number += 1;
        let shown = match &action {
            Action::Redis => "make sure redis-server is installed".to_string(),
            Action::Demo => "cargo xtask demo (the OrderFlow scripted load)".to_string(),
            Action::Readme => "every README example in a scratch crate outside the workspace \
                 (cargo xtask readme)"
                .to_string(),
            Action::Cargo(command) | Action::Tests(command) => cmd::display(command),
        };
        println!("\n=== [{number}/{total}] {name}: {shown}");
        let t = Instant::now();
        let result = match action {
            Action::Redis => redis_setup::ensure_redis().map(|_| ()),
            Action::Demo => crate::orderflow_demo::run(&[]),
            Action::Readme => crate::scratch::command().and_then(|mut command| {
                command
                    .stdin(Stdio::null())
                    .stderr(Stdio::from(std::io::stdout()));
                cmd::run(&mut command)
            }),
            Action::Tests(mut command) => {
                if let Some(install) = chromium.take() {
                    match install.join() {
                        Ok(Ok(())) => println!("==> chromium installed"),
                        Ok(Err(e)) => println!("==> {e:#}: the dashboard test will be skipped"),
                        Err(_) => println!(
                            "==> the chromium install panicked: the dashboard test will be skipped"
                        ),
                    }
                }
                SharedServers::start().and_then(|shared| {
                    command
                        .envs(shared.env())
                        .stdin(Stdio::null())
                        .stderr(Stdio::from(std::io::stdout()));
                    let result = cmd::run(&mut command);
                    drop(shared);
                    result
                })
            }
            Action::Cargo(mut command) => {
                command
                    .stdin(Stdio::null())
                    .stderr(Stdio::from(std::io::stdout()));
                cmd::run(&mut command)
            }
        };
        let elapsed = t.elapsed();
        if name == "redis" && result.is_ok() && !is_skipped("tests") {
            // After redis (apt-get update done, dpkg free), while fmt and
            // clippy run.
            chromium = redis_setup::start_chromium_install(std::path::Path::new(
                "target/chromium-install.log",
            ));
        }
        match result {
            Ok(()) => {
                println!("=== {name}: ok ({})", cmd::human(elapsed));
                done.push((name, Outcome::Passed, elapsed));
            }
            Err(e) => {
                println!("=== {name}: FAILED ({}): {e:#}", cmd::human(elapsed));
                done.push((name, Outcome::Failed, elapsed));
                done.extend(steps.map(|s| (s.name, Outcome::NotRun, Duration::ZERO)));
                summary(&done, started.elapsed());
                bail!("step `{name}` failed");
            }
        }
    }
    summary(&done, started.elapsed());
    println!("=== all {total} steps passed");
    Ok(())
}

fn summary(done: &[(&'static str, Outcome, Duration)], total: Duration) {
    println!("\n=== summary");
    for (name, outcome, elapsed) in done {
        let status = match outcome {
            Outcome::Passed => "ok",
            Outcome::Failed => "FAILED",
            Outcome::Skipped | Outcome::NotRun => {
                let why = if matches!(outcome, Outcome::Skipped) {
                    "skipped"
                } else {
                    "not run"
                };
                println!("    {name:<9} {why}");
                continue;
            }
        };
        println!("    {name:<9} {status:<7} {:>8}", cmd::human(*elapsed));
    }
    println!("    {:<9} {:<7} {:>8}", "total", "", cmd::human(total));
}

/// One standalone server, one cluster and one sentinel group started for the whole test
/// run and handed to every test process through the environment
/// ([`fredkit_testkit::SHARED_URL_ENV`]), so that `fredkit_testkit::shared_url` reuses them
/// instead of starting its own: nextest runs each test in its own process, and a cluster
/// start per cluster test cost ~2 s of the run's ~1,240 s of test time 190 times over.
/// Tests isolate themselves on these with unique key prefixes and never fault them (the
/// rule of `shared_url`); fault tests start their own servers. Dropped (killed) when the
/// tests step ends. Set `FREDKIT_TESTKIT_PER_PROCESS=1` to give every test process its own
/// servers again.
struct SharedServers {
    running: Option<(
        fredkit_testkit::RedisServer,
        fredkit_testkit::RedisCluster,
        fredkit_testkit::SentinelGroup,
    )>,
}

impl SharedServers {
    fn start() -> Result<SharedServers> {
        if cmd::env_flag("FREDKIT_TESTKIT_PER_PROCESS") {
            println!(
                "==> FREDKIT_TESTKIT_PER_PROCESS is set: each test process starts its own servers"
            );
            return Ok(SharedServers { running: None });
        }
        let t = Instant::now();
        let standalone = fredkit_testkit::RedisServer::start()?;
        let cluster =
            fredkit_testkit::RedisCluster::start(fredkit_testkit::ClusterOptions::default())?;
        let sentinel = fredkit_testkit::SentinelGroup::start()?;
        println!(
            "==> shared servers for every test process, started in {}: standalone {}, cluster {}, sentinel {}",
            cmd::human(t.elapsed()),
            standalone.url(),
            cluster.url(),
            sentinel.url()
        );
        Ok(SharedServers {
            running: Some((standalone, cluster, sentinel)),
        })
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        use fredkit_testkit::{Topology, SHARED_URL_ENV};
        let Some((standalone, cluster, sentinel)) = &self.running else {
            return Vec::new();
        };
        let url = |t: Topology| match t {
            Topology::Standalone => standalone.url(),
            Topology::Cluster => cluster.url(),
            Topology::Sentinel => sentinel.url(),
        };
        SHARED_URL_ENV
            .iter()
            .map(|(t, var)| (*var, url(*t)))
            .collect()
    }
}
