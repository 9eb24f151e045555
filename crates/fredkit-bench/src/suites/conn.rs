//! `conn`: the connection itself, against the clients a user could pick
//! instead. GET (128 B value), SET (128 B value over 1024 keys) and EVALSHA
//! (a one-key script doing a GET) at concurrency 1, 64 and 256 on:
//!
//! - **fred**: a raw fred 10 client with fred's defaults (no command timeout,
//!   no reconnect policy), one connection;
//! - **fredkit-conn**: a [`fredkit_conn::Redis`] with its defaults, every call
//!   through `redis.client()` (the pool's round robin included);
//! - **redis-rs**: a redis-rs 1.8 multiplexed connection with its defaults
//!   but no response timeout (its 500 ms default, and 1 s, aborted runs on
//!   this loaded machine; raw fred's defaults have none either, fredkit-conn
//!   keeps its 1 s: a timer per command that only it pays), cloned per call;
//! - **redis-benchmark** `-P 1` and `-P 16`, run as a subprocess against the
//!   same server: C, with its own C connections (`-c` = the concurrency), so
//!   it is a ceiling of this machine rather than a like-for-like contender.
//!
//! Each command is one interleaving: every contender at every concurrency,
//! round after round. Ratios: `conn.get_vs_redisrs.c64` (fredkit-conn /
//! redis-rs), `conn.get_fred_vs_redisrs.c64`, `conn.get_vs_fred.c64`,
//! `conn.get_vs_rb_p16.c64` (fredkit-conn / redis-benchmark -P 16), ...
//!
//! Developer knobs (environment): `FKB_CONN_CMDS=get,evalsha` runs only those
//! commands; `FKB_CONN_C=64` only those concurrencies; `FKB_CONN_POOLS=2,4`
//! adds fredkit-conn contenders with those pool sizes; `FKB_CONN_RB=0` leaves
//! redis-benchmark out; `FKB_CONN_SIDES=conn,redisrs` keeps only those
//! in-process clients (for profiling one of them); `FKB_CONN_FEEDS=16,64`
//! adds raw fred clients with those `max_feed_count`s.

use super::Suite;
use crate::harness::{interleave_with, measure, op, Load, Measurement, Report, Runner};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use fred::bytes::Bytes;
use fred::prelude::*;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// The `conn` suite.
pub(crate) struct Conn;

impl Suite for Conn {
    fn name(&self) -> &'static str {
        "conn"
    }

    fn about(&self) -> &'static str {
        "GET/SET/EVALSHA at c1/c64/c256: fred, fredkit-conn, redis-rs 1.8, redis-benchmark -P 1/-P 16 (C)"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(run(ctx, report))
    }
}

const GET_KEY: &str = "bench:conn:get";
const VALUE_SIZE: usize = 128;
const SET_KEYS: u64 = 1024;
const SCRIPT: &str = "return redis.call('GET', KEYS[1])";
const CONCURRENCIES: [usize; 3] = [1, 64, 256];
const PIPELINES: [u32; 2] = [1, 16];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Get,
    Set,
    EvalSha,
}

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Cmd::Get => "get",
            Cmd::Set => "set",
            Cmd::EvalSha => "evalsha",
        }
    }
}

/// One of the in-process clients.
#[derive(Clone)]
enum Side {
    Fred(Client),
    Conn(fredkit_conn::Redis),
    RedisRs(redis::aio::MultiplexedConnection),
}

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect()
        })
}

/// The measurement of this suite: 1 s windows (27+ contenders per run).
fn load(ctx: &Ctx) -> Load {
    Load::For {
        warmup: ctx.pick(Duration::from_millis(200), Duration::from_millis(100)),
        window: ctx.pick(Duration::from_secs(1), Duration::from_millis(300)),
    }
}

fn side_op(side: &Side, cmd: Cmd, sha: &str, value: &Bytes) -> crate::harness::Op {
    let sha = sha.to_string();
    let value = value.clone();
    match side.clone() {
        Side::Fred(c) => op(move |i| {
            let c = c.clone();
            let sha = sha.clone();
            let value = value.clone();
            async move {
                fred_call(&c, cmd, &sha, value, i).await?;
                Ok(())
            }
        }),
        Side::Conn(r) => op(move |i| {
            let r = r.clone();
            let sha = sha.clone();
            let value = value.clone();
            async move {
                fred_call(r.client(), cmd, &sha, value, i).await?;
                Ok(())
            }
        }),
        Side::RedisRs(conn) => op(move |i| {
            let mut conn = conn.clone();
            let sha = sha.clone();
            let value = value.clone();
            async move {
                match cmd {
                    Cmd::Get => {
                        let _: Option<Vec<u8>> = redis::cmd("GET")
                            .arg(GET_KEY)
                            .query_async(&mut conn)
                            .await?;
                    }
                    Cmd::Set => {
                        let _: () = redis::cmd("SET")
                            .arg(format!("bench:conn:set:{}", i % SET_KEYS))
                            .arg(&value[..])
                            .query_async(&mut conn)
                            .await?;
                    }
                    Cmd::EvalSha => {
                        let _: Option<Vec<u8>> = redis::cmd("EVALSHA")
                            .arg(&sha)
                            .arg(1)
                            .arg(GET_KEY)
                            .query_async(&mut conn)
                            .await?;
                    }
                }
                Ok(())
            }
        }),
    }
}

async fn fred_call(c: &Client, cmd: Cmd, sha: &str, value: Bytes, i: u64) -> Result<()> {
    match cmd {
        Cmd::Get => {
            let _: Option<Bytes> = c.get(GET_KEY).await?;
        }
        Cmd::Set => {
            c.set::<(), _, _>(
                format!("bench:conn:set:{}", i % SET_KEYS),
                value,
                None,
                None,
                false,
            )
            .await?;
        }
        Cmd::EvalSha => {
            let _: Option<Bytes> = c.evalsha(sha, GET_KEY, ()).await?;
        }
    }
    Ok(())
}

/// Where redis-benchmark connects, from the server URL.
struct Target {
    host: String,
    port: u16,
    password: Option<String>,
    user: Option<String>,
}

fn target(url: &str) -> Result<Target> {
    let config = Config::from_url(url).context("bad Redis URL")?;
    let ServerConfig::Centralized { server } = &config.server else {
        bail!("the conn suite needs a standalone server (redis-benchmark runs against it)");
    };
    Ok(Target {
        host: server.host.to_string(),
        port: server.port,
        password: config.password.clone(),
        user: config.username.clone(),
    })
}

/// Runs redis-benchmark once: `n` requests of `cmd` from `clients`
/// connections, `pipeline` in flight on each. Returns the measurement
/// (ops = n, elapsed = n / the rps it reports; no latencies).
async fn redis_benchmark(
    t: &Target,
    cmd: Cmd,
    sha: &str,
    clients: usize,
    pipeline: u32,
    n: u64,
) -> Result<Measurement> {
    let value = "x".repeat(VALUE_SIZE);
    let mut c = tokio::process::Command::new("redis-benchmark");
    c.arg("-h")
        .arg(&t.host)
        .arg("-p")
        .arg(t.port.to_string())
        .arg("-c")
        .arg(clients.to_string())
        .arg("-n")
        .arg(n.to_string())
        .arg("-P")
        .arg(pipeline.to_string())
        .arg("--csv");
    if let Some(user) = &t.user {
        c.arg("--user").arg(user);
    }
    if let Some(pass) = &t.password {
        c.arg("-a").arg(pass);
    }
    match cmd {
        Cmd::Get => {
            c.args(["GET", GET_KEY]);
        }
        Cmd::Set => {
            c.args([
                "-r",
                &SET_KEYS.to_string(),
                "SET",
                "bench:conn:set:__rand_int__",
            ])
            .arg(&value);
        }
        Cmd::EvalSha => {
            c.args(["EVALSHA", sha, "1", GET_KEY]);
        }
    }
    c.kill_on_drop(true);
    let out = c
        .output()
        .await
        .context("could not run redis-benchmark (apt-get install redis-tools)")?;
    if !out.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .rev()
        .filter_map(|l| l.split("\",\"").nth(1))
        .find_map(|f| f.trim_matches('"').parse::<f64>().ok())
        .with_context(|| format!("no rps in redis-benchmark's output: {text}"))?;
    if rps <= 0.0 {
        bail!("redis-benchmark reported {rps} rps");
    }
    Ok(Measurement::new(
        n,
        Duration::from_secs_f64(n as f64 / rps),
        Vec::new(),
    ))
}

/// A contender's place in the results.
struct Entry {
    /// `fred`, `conn`, `redisrs`, `rb_p1`, `rb_p16`, `conn_pool2`, ...
    who: String,
    concurrency: usize,
}

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let url = ctx.url().to_string();
    let value = Bytes::from(vec![b'x'; VALUE_SIZE]);

    // raw fred with fred's defaults.
    let fred = Client::new(Config::from_url(&url)?, None, None, None);
    fred.init().await.context("fred could not connect")?;
    let conn = ctx.redis().await?;
    let rs = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .context("redis-rs could not connect")?;

    fred.set::<(), _, _>(GET_KEY, value.clone(), None, None, false)
        .await?;
    let sha: String = fred.script_load(SCRIPT).await?;

    let mut sides: Vec<(String, Side)> = vec![
        ("fred".into(), Side::Fred(fred.clone())),
        ("conn".into(), Side::Conn(conn.clone())),
        ("redisrs".into(), Side::RedisRs(rs)),
    ];
    for f in env_list("FKB_CONN_FEEDS").unwrap_or_default() {
        let n: u64 = f
            .parse()
            .with_context(|| format!("FKB_CONN_FEEDS: `{f}`"))?;
        let c = Builder::from_config(Config::from_url(&url)?)
            .with_performance_config(|p| p.max_feed_count = n)
            .build()?;
        c.init().await.context("fred could not connect")?;
        sides.push((format!("fred_feed{n}"), Side::Fred(c)));
    }
    if let Some(only) = env_list("FKB_CONN_SIDES") {
        sides.retain(|(who, _)| only.iter().any(|o| o == who));
    }
    let mut extra = Vec::new();
    for p in env_list("FKB_CONN_POOLS").unwrap_or_default() {
        let n: usize = p
            .parse()
            .with_context(|| format!("FKB_CONN_POOLS: `{p}`"))?;
        let config = fredkit_conn::RedisConfig::builder()
            .url(&url)
            .pool_size(n)
            .build()?;
        let r = fredkit_conn::Redis::connect(config).await?;
        r.wait_connected().await?;
        extra.push(r.clone());
        sides.push((format!("conn_pool{n}"), Side::Conn(r)));
    }

    let cmds: Vec<Cmd> = match env_list("FKB_CONN_CMDS") {
        Some(list) => [Cmd::Get, Cmd::Set, Cmd::EvalSha]
            .into_iter()
            .filter(|c| list.iter().any(|l| l == c.name()))
            .collect(),
        None => vec![Cmd::Get, Cmd::Set, Cmd::EvalSha],
    };
    let concurrencies: Vec<usize> = match env_list("FKB_CONN_C") {
        Some(list) => list.iter().filter_map(|c| c.parse().ok()).collect(),
        None => CONCURRENCIES.to_vec(),
    };
    let with_rb = std::env::var("FKB_CONN_RB").map_or(true, |v| v != "0");
    let rb_target = Arc::new(target(&url)?);
    if with_rb {
        println!(
            "   redis-benchmark: C, its own -c connections (= the concurrency), -P 1 and -P 16; a ceiling, not a like-for-like contender"
        );
    }

    let load = load(ctx);
    let window = match load {
        Load::For { window, .. } => window,
        Load::Ops(_) => Duration::from_secs(1),
    };

    for cmd in cmds {
        let mut entries = Vec::new();
        let mut runs: Vec<(String, Runner<'_>)> = Vec::new();
        for &c in &concurrencies {
            for (who, side) in &sides {
                let o = side_op(side, cmd, &sha, &value);
                entries.push(Entry {
                    who: who.clone(),
                    concurrency: c,
                });
                runs.push((
                    format!("{} {who} c{c}", cmd.name()),
                    Box::new(move || Box::pin(measure(c, load, Arc::clone(&o)))),
                ));
            }
            if with_rb {
                for p in PIPELINES {
                    let t = Arc::clone(&rb_target);
                    let sha = sha.clone();
                    // Requests per run sized from the previous run to last about a window.
                    let n = Arc::new(Mutex::new(20_000u64));
                    entries.push(Entry {
                        who: format!("rb_p{p}"),
                        concurrency: c,
                    });
                    runs.push((
                        format!("{} redis-benchmark -P {p} c{c}", cmd.name()),
                        Box::new(move || {
                            let t = Arc::clone(&t);
                            let sha = sha.clone();
                            let n = Arc::clone(&n);
                            Box::pin(async move {
                                let requests = n.lock().map(|g| *g).unwrap_or(20_000);
                                let m = redis_benchmark(&t, cmd, &sha, c, p, requests).await?;
                                let next = (m.ops_per_sec() * window.as_secs_f64()) as u64;
                                if let Ok(mut g) = n.lock() {
                                    *g = next.clamp(2_000, 20_000_000);
                                }
                                Ok(m)
                            })
                        }),
                    ));
                }
            }
        }
        println!("   {}:", cmd.name());
        let summaries = interleave_with(ctx.rounds(), runs).await?;
        let find = |who: &str, c: usize| {
            entries
                .iter()
                .zip(&summaries)
                .find(|(e, _)| e.who == who && e.concurrency == c)
                .map(|(_, s)| s)
        };
        let name = cmd.name();
        for &c in &concurrencies {
            for (e, s) in entries.iter().zip(&summaries) {
                if e.concurrency == c {
                    let what = if e.who.starts_with("rb_") {
                        format!(
                            "{} via redis-benchmark {} (C, {c} connections)",
                            name.to_uppercase(),
                            e.who.replace("rb_p", "-P ")
                        )
                    } else {
                        format!("{} on {}, {c} tasks", name.to_uppercase(), e.who)
                    };
                    report.ops(&format!("{name}_{}.c{c}", e.who), s.ops_per_sec, what);
                }
            }
            let Some(conn_s) = find("conn", c) else {
                continue;
            };
            if let Some(rs) = find("redisrs", c) {
                report.ratio(
                    &format!("{name}_vs_redisrs.c{c}"),
                    conn_s.ratio_to(rs),
                    "fredkit-conn / redis-rs 1.8 multiplexed",
                );
                if let Some(f) = find("fred", c) {
                    report.ratio(
                        &format!("{name}_fred_vs_redisrs.c{c}"),
                        f.ratio_to(rs),
                        "raw fred (defaults) / redis-rs",
                    );
                }
            }
            if let Some(f) = find("fred", c) {
                report.ratio(
                    &format!("{name}_vs_fred.c{c}"),
                    conn_s.ratio_to(f),
                    "fredkit-conn / raw fred (defaults)",
                );
            }
            for (e, s) in entries.iter().zip(&summaries) {
                if e.concurrency == c && e.who.starts_with("conn_pool") {
                    report.ratio(
                        &format!("{name}_{}_vs_redisrs.c{c}", e.who),
                        find("redisrs", c).map_or(f64::NAN, |rs| s.ratio_to(rs)),
                        "fredkit-conn with that pool size / redis-rs",
                    );
                }
            }
            for p in PIPELINES {
                if let Some(rb) = find(&format!("rb_p{p}"), c) {
                    report.ratio(
                        &format!("{name}_vs_rb_p{p}.c{c}"),
                        conn_s.ratio_to(rb),
                        format!("fredkit-conn / redis-benchmark -P {p} (C, {c} connections)"),
                    );
                }
            }
        }
    }

    for r in extra {
        let _ = r.shutdown().await;
    }
    let _ = conn.shutdown().await;
    let _ = fred.quit().await;
    Ok(())
}
