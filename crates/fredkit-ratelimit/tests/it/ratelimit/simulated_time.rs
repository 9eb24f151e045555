//! The scripts' time arithmetic at server times the test chooses.
//!
//! Each script runs (with `EVAL`, on the real server) with its
//! `redis.call('TIME')` replaced by two trailing arguments, and its
//! `PEXPIRE`/`PTTL` by an expiry the harness emulates with Redis's
//! millisecond semantics (a key whose expiry is millisecond `x` is gone once
//! the clock is past `x`). A key's state is kept between calls with
//! `DUMP`/`RESTORE`, so one state can be probed at several times: what the
//! limiter answers `retry_after` or `reset_after` later is checked to be
//! what it promised, to the microsecond.

use fred::types::Value;
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::*;

/// One identity's key at a point of simulated time.
#[derive(Clone, Debug)]
struct Snapshot {
    /// `DUMP` of the key (`Null`: absent).
    dump: Value,
    /// Emulated expiry, in server milliseconds.
    expire_ms: Option<i64>,
}

impl Snapshot {
    fn empty() -> Snapshot {
        Snapshot {
            dump: Value::Null,
            expire_ms: None,
        }
    }
}

struct Sim {
    client: Client,
    key: String,
    source: String,
}

impl Sim {
    fn new(redis: &Redis, algorithm: Algorithm, name: &str) -> Sim {
        let original = algorithm.script().source();
        assert!(original.contains("redis.call('TIME')"));
        let source = original
            .replace("redis.call('TIME')", "{ARGV[#ARGV - 2], ARGV[#ARGV - 1]}")
            .replace("redis.call('PTTL', k)", "tonumber(ARGV[#ARGV])")
            .replace("redis.call('PEXPIRE', k, math.ceil(win / 1000))", "")
            .replace("redis.call('PEXPIRE', k, px)", "");
        assert!(
            !source.contains("redis.call('PEXPIRE'") && !source.contains("redis.call('PTTL'"),
            "the harness no longer matches {}: update it",
            algorithm.script().name()
        );
        Sim {
            client: redis.client().clone(),
            key: format!("{}{{sim}}:{name}", unique_prefix("rl_sim")),
            source,
        }
    }

    /// Runs the script at server time `now` (µs) on `state` with
    /// `cost, quota, window_us`; returns the reply and the state after.
    async fn run(
        &self,
        state: &Snapshot,
        now: i64,
        cost: i64,
        quota: i64,
        window_us: i64,
    ) -> (Vec<i64>, Snapshot) {
        let now_ms = now / 1000;
        let _: i64 = self.client.del(&self.key).await.unwrap();
        let live = state.expire_ms.is_none_or(|e| now_ms <= e);
        if live && !matches!(state.dump, Value::Null) {
            let _: () = self
                .client
                .restore(&self.key, 0, state.dump.clone(), true, false, None, None)
                .await
                .unwrap();
        }
        let pttl = match state.expire_ms {
            Some(e) if live => e - now_ms,
            _ => -2,
        };
        let args = vec![
            cost,
            quota,
            window_us,
            now / 1_000_000,
            now % 1_000_000,
            pttl,
        ];
        let reply: Vec<i64> = self
            .client
            .eval(self.source.clone(), vec![self.key.clone()], args)
            .await
            .unwrap();
        let dump: Value = self.client.dump(&self.key).await.unwrap();
        let expire_ms = if reply[0] == 1 && cost > 0 {
            // The script's PEXPIRE, emulated.
            Some(now_ms + (window_us + 999) / 1000)
        } else if live {
            state.expire_ms
        } else {
            None
        };
        (reply, Snapshot { dump, expire_ms })
    }
}

/// Random traffic at random server times on one sliding-counter or
/// sliding-log identity; after every request:
/// - a denial's `retry_after` is honest: the same request at exactly
///   `now + retry_after` is allowed;
/// - `reset_after` is honest: at `now + reset_after`, `remaining == limit`;
/// - `remaining` is exact: a cost of `remaining` is allowed now and one more
///   is denied.
async fn waits_are_honest_at_simulated_times(algorithm: Algorithm, redis: &Redis) {
    let sim = Sim::new(redis, algorithm, algorithm.name());
    let mut rng = StdRng::seed_from_u64(6);
    let mut failures = Vec::new();
    for _ in 0..40 {
        let quota: i64 = [1, 2, 3, 7, 10, 100][rng.gen_range(0..6)];
        let win: i64 = [1_000, 1_500, 1_000_000, 60_000_000][rng.gen_range(0..4)];
        let mut now: i64 = 1_700_000_000_000_000 + rng.gen_range(0..1_000_000);
        let mut state = Snapshot::empty();
        for _ in 0..12 {
            now += match rng.gen_range(0..4) {
                0 => 0,
                1 => rng.gen_range(0..=win / 10),
                2 => rng.gen_range(0..=win),
                _ => rng.gen_range(0..=2 * win),
            };
            let cost = rng.gen_range(1..=quota);
            let (out, after) = sim.run(&state, now, cost, quota, win).await;
            let case = format!("quota {quota}, window {win} µs, cost {cost}, at {now}: {out:?}");
            if out[0] == 1 {
                state = after;
            } else {
                let retry = out[3];
                let (again, _) = sim.run(&state, now + retry, cost, quota, win).await;
                if again[0] != 1 {
                    failures.push(format!("retry_after not enough: {case} -> {again:?}"));
                }
            }
            let (now_state, _) = sim.run(&state, now, 0, quota, win).await;
            let (remaining, reset) = (now_state[1], now_state[2]);
            let (later, _) = sim.run(&state, now + reset, 0, quota, win).await;
            if later[1] != quota {
                failures.push(format!(
                    "reset_after {reset} not enough: {case} -> {later:?}"
                ));
            }
            if !(0..=quota).contains(&remaining) {
                failures.push(format!("remaining out of range: {case} {now_state:?}"));
            }
            if remaining > 0 && sim.run(&state, now, remaining, quota, win).await.0[0] != 1 {
                failures.push(format!("remaining {remaining} not admitted: {case}"));
            }
            if remaining < quota && sim.run(&state, now, remaining + 1, quota, win).await.0[0] != 0
            {
                failures.push(format!("more than remaining {remaining} admitted: {case}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}: {} failures, first ones:\n{}",
        algorithm.name(),
        failures.len(),
        failures[..failures.len().min(5)].join("\n")
    );
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_reset_after_and_remaining_are_honest_at_simulated_server_times(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    #[values(Algorithm::SlidingLog, Algorithm::SlidingCounter)] algorithm: Algorithm,
) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    waits_are_honest_at_simulated_times(algorithm, &redis).await;
}

/// The sliding counter's wait can end in a fraction of a microsecond; it is
/// rounded up, never lost to the precision of absolute server times (a
/// double holds a 2026 timestamp in µs only to a quarter microsecond).
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_counter_rounds_fractional_waits_up(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let sim = Sim::new(&redis, Algorithm::SlidingCounter, "fraction");
    let (quota, win) = (100, 1_000_000);
    let start: i64 = 1_796_031_733_000_000;
    // 1 admitted at the start of a window, 10 more late in it…
    let (out, state) = sim.run(&Snapshot::empty(), start, 1, quota, win).await;
    assert_eq!(out[0], 1);
    let (out, state) = sim.run(&state, start + 900_000, 10, quota, win).await;
    assert_eq!(out[0], 1);
    // …so 90 more must wait for the next window, until this one's 11 weigh
    // at most 10: 1/11 of a window (90_909.09… µs) into it.
    let now = start + 900_100;
    let (denied, _) = sim.run(&state, now, 90, quota, win).await;
    assert_eq!(denied[0], 0, "{denied:?}");
    let exact: f64 = 1_000_000.0 + 1_000_000.0 / 11.0 - 900_100.0; // 190_809.09…
    assert_eq!(denied[3], exact.ceil() as i64, "{denied:?}");
    let (allowed, _) = sim.run(&state, now + denied[3], 90, quota, win).await;
    assert_eq!(allowed[0], 1, "{allowed:?}");
}

/// The sliding log never goes back in time for a key (a failover to a
/// server whose clock is behind); its waits still count from the server's
/// `now`, so they are honest there too.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_log_waits_are_honest_after_the_server_clock_went_back(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let sim = Sim::new(&redis, Algorithm::SlidingLog, "clock_back");
    let (quota, win) = (2, 1_000_000);
    let start: i64 = 1_796_031_733_000_000;
    let (out, state) = sim.run(&Snapshot::empty(), start, 2, quota, win).await;
    assert_eq!(out[0], 1);
    // The clock is now 5 ms behind the newest entry.
    let now = start - 5_000;
    let (denied, _) = sim.run(&state, now, 1, quota, win).await;
    assert_eq!(denied[0], 0, "{denied:?}");
    let (retry, reset) = (denied[3], denied[2]);
    let (again, _) = sim.run(&state, now + retry, 1, quota, win).await;
    assert_eq!(again[0], 1, "denied after retry_after {retry}: {again:?}");
    let (later, _) = sim.run(&state, now + reset, 0, quota, win).await;
    assert_eq!(
        later[1], quota,
        "not full after reset_after {reset}: {later:?}"
    );
    let (before, _) = sim.run(&state, now + retry - 1, 1, quota, win).await;
    assert_eq!(before[0], 0, "retry_after {retry} is longer than needed");
}
