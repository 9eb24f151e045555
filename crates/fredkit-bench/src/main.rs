//! fredkit's benchmark harness.
//!
//! ```text
//! fredkit-bench [SUITE]... [--quick] [--rounds N] [--url redis://...] [--list]
//! ```
//!
//! Starts one throwaway `redis-server` (fredkit-testkit) unless `--url` is
//! given, runs the selected suites (default: all), prints a markdown table
//! and writes `target/bench/results.json` (one flat object, figure name ->
//! number, names prefixed with the suite; `meta.*` describe the run) and
//! `target/bench/machine.txt` (the machine, as text). Each run overwrites
//! both with what it measured.
//!
//! Usually run through `cargo xtask bench`, which builds it in release mode.

mod alloc_count;
mod bullmq;
mod commandstats;
mod harness;
mod machine;
mod suites;

use anyhow::{bail, Context, Result};
use fred::prelude::*;
use harness::{Load, Report};
use machine::Machine;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const USAGE: &str = "\
usage: fredkit-bench [SUITE]... [--quick] [--rounds N] [--url URL] [--list]

  SUITE      run only these suites (default: all; see --list)
  --quick    short windows and fewer rounds (a smoke run, noisier figures)
  --rounds N rounds of every interleaved comparison (default 5, 3 with --quick);
             more rounds steady the medians on a noisy machine
  --url URL  benchmark an existing server instead of a throwaway one
             (its data is left alone; absolute figures then include its load)
  --list     list the suites
";

/// What every suite gets: where the server is and how long to measure.
pub(crate) struct Ctx {
    url: String,
    quick: bool,
    rounds: Option<usize>,
}

impl Ctx {
    /// The server's URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Whether this is a `--quick` run.
    pub(crate) fn quick(&self) -> bool {
        self.quick
    }

    /// `full` normally, `quick` with `--quick`.
    pub(crate) fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// The standard measurement: a short warm-up, then a counted window.
    pub(crate) fn load(&self) -> Load {
        Load::For {
            warmup: self.pick(Duration::from_millis(300), Duration::from_millis(100)),
            window: self.pick(Duration::from_secs(2), Duration::from_millis(400)),
        }
    }

    /// Rounds of an interleaved comparison.
    pub(crate) fn rounds(&self) -> usize {
        self.rounds.unwrap_or_else(|| self.pick(5, 3))
    }

    /// A plain fred client configured the way fredkit-conn configures its
    /// own (1 s command timeout, exponential reconnect that never gives up),
    /// connected. The raw side of every comparison.
    pub(crate) async fn fred_client(&self) -> Result<Client> {
        self.fred_client_with(false).await
    }

    /// [`Ctx::fred_client`] with TCP_NODELAY on or off (fred's and
    /// fredkit-conn's default is off).
    pub(crate) async fn fred_client_with(&self, nodelay: bool) -> Result<Client> {
        let config = Config::from_url(self.url()).context("bad Redis URL")?;
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(1))
            .with_connection_config(|c| c.tcp.nodelay = Some(nodelay))
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()?;
        client.init().await.context("could not connect")?;
        Ok(client)
    }

    /// A fredkit-conn handle with its defaults, connected. The fredkit side
    /// of the comparisons.
    #[allow(dead_code)] // used by the suites that measure fredkit crates
    pub(crate) async fn redis(&self) -> Result<fredkit_conn::Redis> {
        let config = fredkit_conn::RedisConfig::from_url(self.url())?;
        let redis = fredkit_conn::Redis::connect(config).await?;
        redis.wait_connected().await?;
        Ok(redis)
    }
}

struct Args {
    suites: Vec<String>,
    quick: bool,
    rounds: Option<usize>,
    url: Option<String>,
    list: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        suites: Vec::new(),
        quick: false,
        rounds: None,
        url: None,
        list: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--list" => args.list = true,
            "--rounds" => {
                let n = it.next().context("--rounds needs a value")?;
                args.rounds = Some(rounds(&n)?);
            }
            s if s.starts_with("--rounds=") => args.rounds = Some(rounds(&s["--rounds=".len()..])?),
            "--url" => args.url = Some(it.next().context("--url needs a value")?),
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with("--url=") => args.url = Some(s["--url=".len()..].to_string()),
            s if s.starts_with('-') => bail!("unknown option `{s}`\n{USAGE}"),
            s => args.suites.push(s.to_string()),
        }
    }
    Ok(args)
}

fn rounds(n: &str) -> Result<usize> {
    match n.parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => bail!("--rounds takes a number from 1 to 1000, not `{n}`"),
    }
}

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// `$CARGO_TARGET_DIR` (relative to the current directory, as cargo reads
/// it) or `<workspace>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                std::env::current_dir().map_or(dir.clone(), |cwd| cwd.join(&dir))
            }
        }
        None => root.join("target"),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fredkit-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ok(false) when a suite failed (the others still ran and were written).
fn run() -> Result<bool> {
    let args = parse_args()?;
    let all = suites::all();
    if args.list {
        for s in &all {
            println!("{:<12} {}", s.name(), s.about());
        }
        return Ok(true);
    }
    for wanted in &args.suites {
        if !all.iter().any(|s| s.name() == wanted) {
            let names: Vec<&str> = all.iter().map(|s| s.name()).collect();
            bail!("unknown suite `{wanted}` (suites: {})", names.join(", "));
        }
    }
    let selected: Vec<&dyn suites::Suite> = all
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| args.suites.is_empty() || args.suites.iter().any(|w| w == s.name()))
        .collect();

    let root = workspace_root();
    let mut machine = Machine::detect(&root);
    let started = Instant::now();

    // The testkit is synchronous: start the server before the runtime and
    // drop it after.
    let (url, server) = match &args.url {
        Some(url) => (url.clone(), None),
        None => {
            let server = fredkit_testkit::RedisServer::start()
                .context("could not start a throwaway redis-server (is it installed?)")?;
            (server.url(), Some(server))
        }
    };
    let owned = server.is_some();
    let ctx = Ctx {
        url,
        quick: args.quick,
        rounds: args.rounds,
    };

    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("FKB_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        rt.worker_threads(n);
    }
    let runtime = rt
        .enable_all()
        .build()
        .context("could not build a tokio runtime")?;
    let mut report = Report::default();
    let failures = runtime.block_on(async {
        let probe = ctx.fred_client().await?;
        machine.probe_redis(&probe).await;
        print_machine(&machine, &ctx, owned);

        let mut failures = Vec::new();
        for suite in &selected {
            println!("\n-- {}: {} ...", suite.name(), suite.about());
            let t = Instant::now();
            report.begin_suite(suite.name());
            match suite.run(&ctx, &mut report).await {
                Ok(()) => println!("   done in {:.1}s", t.elapsed().as_secs_f64()),
                Err(e) => {
                    println!("   FAILED after {:.1}s: {e:#}", t.elapsed().as_secs_f64());
                    failures.push(suite.name());
                }
            }
            if owned {
                // A clean slate for the next suite (only on our own server).
                let _ = probe.flushall::<()>(false).await;
            }
        }
        let _ = probe.quit().await;
        Ok::<_, anyhow::Error>(failures)
    })?;
    drop(runtime);
    drop(server);

    report.begin_suite("");
    let elapsed = started.elapsed();
    add_meta(&mut report, &machine, &ctx, elapsed);
    print_table(&report);
    write_results(&target_dir(&root), &report, &machine, &ctx, &selected)?;
    if !failures.is_empty() {
        eprintln!("fredkit-bench: suites failed: {}", failures.join(", "));
    }
    Ok(failures.is_empty())
}

fn print_machine(machine: &Machine, ctx: &Ctx, owned: bool) {
    println!(
        "## fredkit-bench{}",
        if ctx.quick() { " (--quick)" } else { "" }
    );
    println!();
    for (k, v) in machine.lines() {
        println!("- {k}: {v}");
    }
    let server = if owned {
        "throwaway redis-server (testkit), same machine"
    } else {
        "external server (--url)"
    };
    println!("- server: {server}");
}

fn add_meta(report: &mut Report, machine: &Machine, ctx: &Ctx, elapsed: Duration) {
    use harness::Unit::{Count, Plain};
    report.add("meta.cores", machine.cores as f64, Count, "logical CPUs");
    if let Some(mb) = machine.mem_mb {
        report.add("meta.mem_mb", mb as f64, Count, "memory, MiB");
    }
    if let Some(v) = machine.redis_version_num() {
        report.add(
            "meta.redis_version_num",
            v,
            Plain,
            "redis version as major*10000+minor*100+patch",
        );
    }
    report.add(
        "meta.quick",
        if ctx.quick() { 1.0 } else { 0.0 },
        Count,
        "1 for a --quick run",
    );
    report.add(
        "meta.rounds",
        ctx.rounds() as f64,
        Count,
        "rounds of each interleaved comparison",
    );
    report.add(
        "meta.run_s",
        elapsed.as_secs_f64().round(),
        Count,
        "run time, s",
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs() as f64);
    report.add("meta.unix_time", now, Plain, "when the run ended");
}

fn print_table(report: &Report) {
    println!();
    println!("| figure | value | note |");
    println!("|---|---:|---|");
    for f in report.figures() {
        println!("| `{}` | {} | {} |", f.name, f.display_value(), f.note);
    }
    println!();
}

fn write_results(
    target: &Path,
    report: &Report,
    machine: &Machine,
    ctx: &Ctx,
    selected: &[&dyn suites::Suite],
) -> Result<()> {
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;

    let mut json = serde_json::Map::new();
    for f in report.figures() {
        let v = f.json_value();
        // Whole numbers are written as integers (`2`, not `2.0`).
        let number = if v.fract() == 0.0 && v.abs() < 9.0e15 {
            Some(serde_json::Number::from(v as i64))
        } else {
            serde_json::Number::from_f64(v)
        };
        match number {
            Some(n) => {
                json.insert(f.name.clone(), serde_json::Value::Number(n));
            }
            None => eprintln!(
                "fredkit-bench: {} is not a number; left out of the JSON",
                f.name
            ),
        }
    }
    let results = dir.join("results.json");
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(json))?;
    std::fs::write(&results, text + "\n")
        .with_context(|| format!("could not write {}", results.display()))?;

    let mut txt = String::new();
    for (k, v) in machine.lines() {
        txt.push_str(&format!("{k}: {v}\n"));
    }
    let names: Vec<&str> = selected.iter().map(|s| s.name()).collect();
    txt.push_str(&format!("suites: {}\n", names.join(" ")));
    txt.push_str(&format!("quick: {}\n", ctx.quick()));
    let machine_txt = dir.join("machine.txt");
    std::fs::write(&machine_txt, txt)
        .with_context(|| format!("could not write {}", machine_txt.display()))?;

    println!("wrote {} and {}", results.display(), machine_txt.display());
    Ok(())
}
