//! Issue #14's acceptance for the cache ("Redis down = full speed"): Redis
//! frozen (SIGSTOP) under steady load from 64 concurrent `get_or_set`-style
//! callers, with the cache's default circuit breaker. The calls in flight
//! when Redis froze wait for the command timeout (1 s) — at most that one
//! wave — and the breaker then opens, after which no caller waits more than
//! 5 ms for its fail-safe answer (the loader's value): the open breaker
//! answers without touching the network. After SIGCONT a half-open trial
//! closes it and values come from Redis again.
//!
//! Timing is asserted here because the acceptance is a timing: 5 ms
//! is generous for an answer that never leaves the process, measured per
//! call from its start to its answer, with the callers paced (10-30 ms
//! apart, spread so they do not all fire on the same timer tick) so the
//! runtime is mostly idle and a call is not queued behind many others.
//! The runtime has two worker threads (a cache call hops through spawned
//! tasks, and a burst of 64 callers on one thread would queue behind each
//! other's CPU work in a debug build). A call that does not wait for
//! anything can still take long when the OS takes a worker's CPU away —
//! which on a loaded 2-core machine happens. A sampler thread records the
//! workers' nonvoluntary context switches (from `/proc/self/task/*/status`)
//! every half millisecond; a call during which they rose is held to a
//! looser bound instead of 5 ms: 500 ms, half the command timeout (a wait
//! for the frozen Redis lasts the whole command timeout, so it still fails
//! the test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fredkit_cache::{Cache, CacheOptions, Origin};
use fredkit_core::BreakerState;
use fredkit_testkit::{unique_prefix, RedisServer};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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

/// The bound for a call during which the OS preempted a runtime thread:
/// below the command timeout, which any wait for the frozen Redis lasts.
const PREEMPTED: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy)]
struct Call {
    start: Instant,
    wait: Duration,
    /// The answer came from the loader, not from Redis.
    fallback: bool,
    /// The OS took the CPU from a runtime thread during the call.
    preempted: bool,
}

/// The sum of the nonvoluntary context switches of these threads (ids as
/// in `/proc/self/task`); 0 where `/proc` does not say (then no call counts
/// as preempted).
fn preemptions(threads: &[String]) -> u64 {
    threads
        .iter()
        .filter_map(|tid| {
            let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// `(when, preemptions of the runtime's threads)`, every half millisecond.
type Samples = Arc<Mutex<Vec<(Instant, u64)>>>;

/// Whether the runtime's threads were preempted between `from` and `to`:
/// the count rose from the last sample before `from` to the first after `to`.
fn preempted_between(samples: &[(Instant, u64)], from: Instant, to: Instant) -> bool {
    let before = samples
        .iter()
        .rev()
        .find(|(t, _)| *t <= from)
        .or(samples.first())
        .map_or(0, |s| s.1);
    let after = samples
        .iter()
        .find(|(t, _)| *t >= to)
        .or(samples.last())
        .map_or(0, |s| s.1);
    after > before
}

#[test]
fn fault_paused_redis_default_breaker_serves_64_callers_at_full_speed() {
    let threads: Arc<Mutex<Vec<String>>> = Arc::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start({
            let threads = Arc::clone(&threads);
            move || {
                if let Ok(path) = std::fs::read_link("/proc/thread-self") {
                    if let Some(tid) = path.file_name() {
                        let tid = tid.to_string_lossy().into_owned();
                        threads.lock().unwrap().push(tid);
                    }
                }
            }
        })
        .build()
        .unwrap();
    let samples: Samples = Arc::default();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = std::thread::spawn({
        let (threads, samples, sampling) = (
            Arc::clone(&threads),
            Arc::clone(&samples),
            Arc::clone(&sampling),
        );
        move || {
            while sampling.load(Ordering::Acquire) {
                let tids = threads.lock().unwrap().clone();
                let count = preemptions(&tids);
                samples.lock().unwrap().push((Instant::now(), count));
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    });
    runtime.block_on(outage(samples));
    sampling.store(false, Ordering::Release);
    sampler.join().unwrap();
}

async fn outage(samples: Samples) {
    let server = RedisServer::start().unwrap();
    let redis = fredkit_testkit::connect(&server.url()).await.unwrap();
    let prefix = unique_prefix("cache_outage");
    let options = CacheOptions::builder(prefix.trim_end_matches(':'))
        .ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let cache: Cache<u64> = Cache::new(&redis, options).await.unwrap();
    assert_eq!(
        redis.config().command_timeout(),
        Duration::from_secs(1),
        "the scenario of the issue: the default 1 s command timeout"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let cache = cache.clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let key = format!("k{i}");
                let value = i as u64;
                let mut calls = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let start = Instant::now();
                    let fetched = cache
                        .fetch(
                            &key,
                            move || async move { Ok::<_, Infallible>(Some(value)) },
                        )
                        .await
                        .unwrap();
                    let wait = start.elapsed();
                    assert_eq!(fetched.value, Some(value), "never a wrong value");
                    calls.push(Call {
                        start,
                        wait,
                        fallback: fetched.origin == Origin::Factory,
                        preempted: false,
                    });
                    tokio::time::sleep(pace(i, calls.len())).await;
                }
                calls
            })
        })
        .collect();

    // Steady load with Redis up: the breaker's window fills with successes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cache.breaker().state(), BreakerState::Closed);

    server.pause().unwrap();
    let paused_at = Instant::now();
    let opened_seen = loop {
        if cache.breaker().state() == BreakerState::Open {
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
    {
        let samples = samples.lock().unwrap();
        for c in &mut calls {
            c.preempted = preempted_between(&samples, c.start, c.start + c.wait);
        }
    }

    let from_redis = calls
        .iter()
        .filter(|c| c.start < paused_at && !c.fallback)
        .count();
    assert!(
        from_redis >= CALLERS,
        "with Redis up, values came from Redis ({from_redis} calls)"
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
        "an open breaker answers from the loader"
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
        "a caller waited {max:?} for its fail-safe answer after the breaker opened \
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
    // closes the breaker; values come from Redis again.
    let resumed = Instant::now();
    loop {
        let f = cache
            .fetch("k0", || async { Ok::<_, Infallible>(Some(u64::MAX)) })
            .await
            .unwrap();
        if f.origin == Origin::L2 {
            assert_eq!(f.value, Some(0), "the value stored before the outage");
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(20),
            "values never came from Redis again after SIGCONT"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cache.breaker().state(), BreakerState::Closed);
}
