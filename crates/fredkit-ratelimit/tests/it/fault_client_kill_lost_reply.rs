//! A check whose reply is lost: the server ran the script, then the
//! connection was killed before the reply left, and fred sent the check
//! again on a new connection, where the script ran a second time. The
//! limiter's documented outcome: the cost may be consumed twice — stricter
//! than the limit, never looser. The same for the login throttle: a failure
//! may be counted twice (a lockout one failure early), never lost.
//!
//! How the reply is lost, deterministically: the server is frozen
//! (SIGSTOP); the check is sent; once its bytes are in the server socket's
//! receive queue (`/proc/net/tcp`), a connection opened beforehand sends
//! `CLIENT KILL TYPE normal SKIPME yes`, and once those bytes are queued too
//! the server resumes. It handles the two sockets in the order their data
//! arrived: it runs the script, then kills the connection whose reply was
//! still waiting to be written. Each test checks from `INFO commandstats`
//! that the script did run twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use fredkit_conn::{Redis, RedisConfig};
use fredkit_core::FailMode;
use fredkit_ratelimit::{Algorithm, Limit, Limiter, LoginThrottle};
use fredkit_testkit::{with_lost_reply, RedisServer, Reply};

/// A script call is well over 60 bytes; a watchdog PING is 14.
const SCRIPT_BYTES: u64 = 60;
use rstest::rstest;

/// Script runs so far (`EVALSHA` and `EVAL` calls).
fn script_runs(server: &RedisServer) -> u64 {
    let Reply::Bulk(info) = server.command(&["INFO", "commandstats"]).unwrap() else {
        panic!("INFO commandstats");
    };
    let info = String::from_utf8(info.unwrap()).unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .map(|l| {
            let calls = l.split("calls=").nth(1).unwrap();
            calls.split(',').next().unwrap().parse::<u64>().unwrap()
        })
        .sum()
}

/// A client whose commands wait 10 s before timing out: the freeze is far
/// shorter, so nothing but the kill ends the first attempt.
async fn client(server: &RedisServer) -> Redis {
    let config = RedisConfig::builder()
        .url(server.url())
        .command_timeout(Duration::from_secs(10))
        .pool_size(1)
        .build()
        .unwrap();
    let redis = Redis::connect(config).await.unwrap();
    redis.wait_connected().await.unwrap();
    redis
}

fn limit(algorithm: Algorithm, quota: u64) -> Limit {
    let hour = Duration::from_secs(3600);
    match algorithm {
        Algorithm::FixedWindow => Limit::fixed_window(quota, hour),
        Algorithm::SlidingLog => Limit::sliding_log(quota, hour),
        Algorithm::SlidingCounter => Limit::sliding_counter(quota, hour),
        Algorithm::Gcra => Limit::gcra(quota, hour),
        other => panic!("unknown algorithm {other:?}"),
    }
}

/// A check of cost 3 against a quota of 10 whose reply is lost runs twice
/// and consumes 6: the caller gets the second run's answer (allowed, from
/// Redis, not the fail mode's), and every later caller together gets at
/// most the 4 left: 3 + 4 <= 10, stricter, never looser.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_client_kill_lost_check_reply_consumes_at_most_twice_never_more_than_the_quota(
    #[values(
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::SlidingCounter,
        Algorithm::Gcra
    )]
    algorithm: Algorithm,
) {
    let server = RedisServer::start().unwrap();
    let redis = client(&server).await;
    let (quota, cost) = (10u64, 3u32);
    let limiter = Limiter::builder(&redis, "lost")
        .limit(limit(algorithm, quota))
        .fail_mode(FailMode::Closed)
        .build()
        .unwrap();
    // The script is cached: the checks below are one EVALSHA each.
    assert!(limiter.check("warm-up", 1).await.unwrap().allowed);

    let before = script_runs(&server);
    let outcome = {
        let limiter = limiter.clone();
        with_lost_reply(&server, SCRIPT_BYTES, async move {
            limiter.check_all("id", cost).await
        })
        .await
        .unwrap()
    }
    .unwrap();
    let runs = script_runs(&server) - before;
    assert_eq!(
        runs, 2,
        "the script ran {runs} times, not twice (once, then again when fred resent it)"
    );
    assert_eq!(
        outcome.fallback(),
        None,
        "answered by the fail mode, not Redis"
    );
    assert!(outcome.allowed(), "{outcome:?}");

    let state = limiter.check("id", 0).await.unwrap();
    let consumed = quota - state.remaining;
    assert!(
        consumed == u64::from(cost) || consumed == 2 * u64::from(cost),
        "consumed {consumed} for one check of cost {cost} (at most twice)"
    );
    let mut later = 0u64;
    while limiter.check("id", 1).await.unwrap().allowed {
        later += 1;
        assert!(later <= quota, "no denial in sight");
    }
    let granted = u64::from(cost) + later;
    assert!(
        granted <= quota,
        "{granted} units granted against a quota of {quota}: looser than the limit"
    );
    assert_eq!(later, quota - consumed, "later checks got what was left");
}

/// A failed login whose reply is lost is counted twice (the lockout comes
/// one failure early), never lost: with 3 allowed failures, the lost one
/// and one more lock the identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_client_kill_lost_login_failure_reply_counts_it_at_most_twice() {
    let server = RedisServer::start().unwrap();
    let redis = client(&server).await;
    let throttle = LoginThrottle::builder(&redis, "lost")
        .max_failures(3)
        .failure_window(Duration::from_secs(3600))
        .lockout(Duration::from_secs(3600))
        .fail_mode(FailMode::Closed)
        .build()
        .unwrap();
    assert!(!throttle.record_failure("warm-up").await.unwrap().locked);

    let before = script_runs(&server);
    let status = {
        let throttle = throttle.clone();
        with_lost_reply(&server, SCRIPT_BYTES, async move {
            throttle.record_failure("id").await
        })
        .await
        .unwrap()
    }
    .unwrap();
    let runs = script_runs(&server) - before;
    assert_eq!(
        runs, 2,
        "the script ran {runs} times, not twice (once, then again when fred resent it)"
    );
    assert_eq!(status.fallback, None);
    assert_eq!(status.failures, 2, "the second run answers: {status:?}");
    assert!(!status.locked);
    let next = throttle.record_failure("id").await.unwrap();
    assert!(next.locked, "{next:?}");
}
