//! Issue #14's acceptance for the rate limiter: Redis frozen (SIGSTOP) under
//! steady load from 64 concurrent callers, with the limiter's default
//! circuit breaker. The calls in flight when Redis froze wait for the
//! command timeout (1 s) — at most that one wave — and the breaker then
//! opens, after which no caller waits more than 5 ms for its fail-mode
//! answer: the open breaker answers without touching the network. After
//! SIGCONT a half-open trial closes it and Redis decides again.
//!
//! Timing is asserted here because the acceptance is a timing: 5 ms
//! is generous for an answer that never leaves the process, measured per
//! call from its start to its answer, with the callers paced (10-30 ms
//! apart, spread so they do not all fire on the same timer tick) so the
//! runtime is mostly idle and a call is not queued behind many others.
//! Everything runs on one runtime thread, so the only way a call that does
//! not wait for anything can take long is the OS taking that thread's CPU
//! away — which on a loaded 2-core machine happens. Such a call (a
//! nonvoluntary context switch of the thread during the call, read from
//! `/proc/thread-self/status`) is held to a looser bound instead of 5 ms:
//! 500 ms, half the command timeout (a wait for the frozen Redis lasts the
//! whole command timeout, so it still fails the test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fredkit_core::{BreakerState, FailMode};
use fredkit_ratelimit::{Limit, Limiter};
use fredkit_testkit::{unique_prefix, RedisServer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CALLERS: usize = 64;
/// Pause between call `n` and `n + 1` of caller `i`: 10 to 30 ms, spread
/// pseudo-randomly so the callers do not fire together. Steady load on a
/// mostly idle runtime.
fn pace(i: usize, n: usize) -> Duration {
    let spread = (i.wrapping_mul(7_919) ^ n.wrapping_mul(104_729)) % 20_000;
    Duration::from_micros(10_000 + spread as u64)
}
/// The bound on a fail-fast answer once the breaker is open.
const FAIL_FAST: Duration = Duration::from_millis(5);
/// The default breaker's consecutive-failure threshold.
const THRESHOLD: usize = 5;
/// A call that waited this long waited for Redis (the command timeout is 1 s).
const WAITED_FOR_REDIS: Duration = Duration::from_millis(500);
const HOUR: Duration = Duration::from_secs(3600);

/// The bound for a call during which the OS preempted a runtime thread:
/// below the command timeout, which any wait for the frozen Redis lasts.
const PREEMPTED: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy)]
struct Call {
    start: Instant,
    wait: Duration,
    /// The answer came from the fail mode, not from Redis.
    fallback: bool,
    /// The OS took the CPU from the runtime's thread during the call.
    preempted: bool,
}

/// Nonvoluntary context switches of the current thread so far; 0 where
/// `/proc` does not say (then no call counts as preempted).
fn preemptions() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "current_thread")]
async fn fault_paused_redis_default_breaker_answers_64_callers_without_waiting() {
    let server = RedisServer::start().unwrap();
    let redis = fredkit_testkit::connect(&server.url()).await.unwrap();
    let prefix = unique_prefix("rl_outage");
    let limiter = Limiter::builder(&redis, prefix.trim_end_matches(':'))
        .limit(Limit::gcra(1_000_000_000, HOUR))
        .fail_mode(FailMode::Open)
        .build()
        .unwrap();
    assert_eq!(
        redis.config().command_timeout(),
        Duration::from_secs(1),
        "the scenario of the issue: the default 1 s command timeout"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let limiter = limiter.clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let identity = format!("caller-{i}");
                let mut calls = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let switches = preemptions();
                    let start = Instant::now();
                    let outcome = limiter.check_all(&identity, 1).await.unwrap();
                    let wait = start.elapsed();
                    let preempted = preemptions() != switches;
                    assert!(outcome.allowed(), "FailMode::Open and a huge limit");
                    calls.push(Call {
                        start,
                        wait,
                        fallback: outcome.fallback().is_some(),
                        preempted,
                    });
                    tokio::time::sleep(pace(i, calls.len())).await;
                }
                calls
            })
        })
        .collect();

    // Steady load with Redis up: the breaker's window fills with successes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(limiter.breaker().state(), BreakerState::Closed);

    server.pause().unwrap();
    let paused_at = Instant::now();
    let opened_seen = loop {
        if limiter.breaker().state() == BreakerState::Open {
            break Instant::now();
        }
        assert!(
            paused_at.elapsed() < Duration::from_secs(15),
            "the breaker did not open within 15 s of Redis freezing under load"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    // Keep the load on while open, well inside the 5 s break duration so no
    // half-open trial (which waits for Redis by design) is measured.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let measured_until = Instant::now();
    stop.store(true, Ordering::Release);
    let mut calls = Vec::new();
    for c in callers {
        calls.extend(c.await.unwrap());
    }
    server.resume().unwrap();

    let before_pause = calls.iter().filter(|c| c.start < paused_at);
    assert!(
        before_pause
            .clone()
            .all(|c| !c.fallback || c.wait >= WAITED_FOR_REDIS),
        "with Redis up, Redis decided"
    );
    let after_open: Vec<Call> = calls
        .iter()
        .filter(|c| c.start >= opened_seen && c.start < measured_until)
        .copied()
        .collect();
    assert!(
        after_open.len() >= CALLERS * 10,
        "too few calls after the breaker opened to say anything: {}",
        after_open.len()
    );
    assert!(
        after_open.iter().all(|c| c.fallback),
        "an open breaker answers by the fail mode"
    );
    let mut waits: Vec<Duration> = after_open.iter().map(|c| c.wait).collect();
    waits.sort();
    let p99 = waits[waits.len() * 99 / 100];
    let raw_max = *waits.last().unwrap();
    let max = after_open
        .iter()
        .filter(|c| !c.preempted)
        .map(|c| c.wait)
        .max()
        .unwrap();
    let preempted: Vec<Duration> = after_open
        .iter()
        .filter(|c| c.preempted)
        .map(|c| c.wait)
        .collect();
    let preempted_max = preempted.iter().max().copied().unwrap_or_default();
    let full_waits = calls.iter().filter(|c| c.wait >= WAITED_FOR_REDIS).count();
    eprintln!(
        "breaker opened {:?} after the pause; {} calls after it: p99 {p99:?}, max {raw_max:?}, \
         max of the {} not preempted {max:?}, max of the {} preempted {preempted_max:?}; \
         {full_waits} calls waited for the command timeout",
        opened_seen - paused_at,
        after_open.len(),
        after_open.len() - preempted.len(),
        preempted.len(),
    );
    assert!(
        max <= FAIL_FAST,
        "a caller waited {max:?} for its fail-mode answer after the breaker opened \
         (p99 {p99:?}); the open breaker must not wait for Redis"
    );
    assert!(
        preempted_max <= PREEMPTED,
        "a caller whose thread the OS preempted waited {preempted_max:?} after the breaker \
         opened: more than any preemption explains"
    );
    assert!(
        (1..=CALLERS + THRESHOLD).contains(&full_waits),
        "{full_waits} calls waited for the command timeout; at most the wave in flight \
         when Redis froze ({CALLERS}) plus the threshold ({THRESHOLD}) may"
    );

    // Redis is back: after the break duration a trial goes through and
    // closes the breaker; Redis decides again.
    let resumed = Instant::now();
    loop {
        let o = limiter.check_all("after", 1).await.unwrap();
        if o.fallback().is_none() {
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(20),
            "Redis never decided again after SIGCONT"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(limiter.breaker().state(), BreakerState::Closed);
}
