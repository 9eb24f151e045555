//! fredkit-ratelimit against real servers, standalone and a 3-master
//! cluster: exactness under concurrency, all-or-nothing multi-limits,
//! honest GCRA retry_after, server clock only, TTLs, login throttling, and
//! (feature `tower`) the HTTP layer with fail-open / fail-closed outages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(feature = "axum")]
mod http_layer;
mod model;
mod simulated_time;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fred::prelude::*;
use fredkit_conn::Redis;
use fredkit_core::{CircuitBreaker, ErrorKind, FailMode, ManualClock};
use fredkit_ratelimit::{Algorithm, Limit, Limiter, LoginThrottle};
use fredkit_testkit::{
    connect, shared_url, unique_prefix, ClusterOptions, RedisCluster, RedisServer, Reply,
    ServerOptions, Topology,
};
use futures::StreamExt;
use rstest::rstest;

const HOUR: Duration = Duration::from_secs(3600);

fn limit(algorithm: Algorithm, quota: u64, window: Duration) -> Limit {
    match algorithm {
        Algorithm::FixedWindow => Limit::fixed_window(quota, window),
        Algorithm::SlidingLog => Limit::sliding_log(quota, window),
        Algorithm::SlidingCounter => Limit::sliding_counter(quota, window),
        Algorithm::Gcra => Limit::gcra(quota, window),
        other => panic!("unknown algorithm {other:?}"),
    }
}

fn build(redis: &Redis, prefix: &str, limits: Vec<Limit>) -> Limiter {
    let mut b = Limiter::builder(redis, prefix.trim_end_matches(':')).fail_mode(FailMode::Closed);
    for l in limits {
        b = b.limit(l);
    }
    b.build().unwrap()
}

/// 64 tasks over two limiters with their own connections send 1,000
/// requests against a limit of 100 per hour: exactly 100 are allowed.
///
/// The windows cannot straddle a boundary: fixed windows and sliding
/// counters start with the identity's first request and last an hour, GCRA
/// refills one unit per 36 s, and the test takes well under a second. So
/// the sliding counter's previous window is empty and its documented error
/// is zero here: it must be exact too.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_quota_is_allowed_under_64_concurrent_tasks_on_two_instances(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    #[values(
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::SlidingCounter,
        Algorithm::Gcra
    )]
    algorithm: Algorithm,
) {
    let url = shared_url(topology).unwrap();
    let prefix = unique_prefix("rl_exact");
    let (ra, rb) = (connect(&url).await.unwrap(), connect(&url).await.unwrap());
    let a = build(&ra, &prefix, vec![limit(algorithm, 100, HOUR)]);
    let b = build(&rb, &prefix, vec![limit(algorithm, 100, HOUR)]);

    let issued = Arc::new(AtomicU64::new(0));
    let allowed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..64 {
        let limiter = if t % 2 == 0 { a.clone() } else { b.clone() };
        let (issued, allowed) = (Arc::clone(&issued), Arc::clone(&allowed));
        tasks.push(tokio::spawn(async move {
            while issued.fetch_add(1, Ordering::SeqCst) < 1000 {
                let d = limiter.check("client-1", 1).await.unwrap();
                assert!(d.remaining <= 100);
                if d.allowed {
                    allowed.fetch_add(1, Ordering::SeqCst);
                    assert!(d.retry_after.is_none());
                } else {
                    assert_eq!(d.remaining, 0, "{d:?}");
                    let wait = d.retry_after.expect("a denial says when to retry");
                    assert!(
                        wait > Duration::ZERO && wait <= HOUR + Duration::from_secs(1),
                        "{d:?}"
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(allowed.load(Ordering::SeqCst), 100, "{}", algorithm.name());
    let (ma, mb) = (a.metrics(), b.metrics());
    assert_eq!(ma.allowed + mb.allowed, 100);
    assert_eq!(ma.denied + mb.denied, 900);
    assert_eq!(ma.fail_closed + mb.fail_closed + ma.errors + mb.errors, 0);
    // The state agrees: nothing left.
    assert_eq!(a.check("client-1", 0).await.unwrap().remaining, 0);
}

/// Two limits on one identity are checked and consumed together: once the
/// small one denies, the big one is not charged either.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_requests_consume_nothing_on_any_limit(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    #[values(
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::SlidingCounter,
        Algorithm::Gcra
    )]
    algorithm: Algorithm,
) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_all_or_nothing");
    let limiter = build(
        &redis,
        &prefix,
        vec![
            limit(algorithm, 3, HOUR).name("small"),
            limit(algorithm, 10, HOUR).name("big"),
        ],
    );
    // cost 2 then 1: small is full, big has 7 left.
    for cost in [2, 1] {
        let o = limiter.check_all("u", cost).await.unwrap();
        assert!(o.allowed());
    }
    let o = limiter.check_all("u", 0).await.unwrap();
    assert!(o.allowed());
    assert_eq!(o.per_limit()[0].remaining, 0);
    assert_eq!(o.per_limit()[1].remaining, 7);
    assert_eq!(o.binding(), 0);

    let mut last_retry = Duration::MAX;
    for _ in 0..20 {
        let o = limiter.check_all("u", 1).await.unwrap();
        assert!(!o.allowed());
        assert_eq!(o.binding(), 0, "the small limit denies");
        let retry = o.decision().retry_after.unwrap();
        assert!(retry > Duration::ZERO);
        // Denials do not push the small limit's retry further away.
        assert!(retry <= last_retry, "{retry:?} > {last_retry:?}");
        last_retry = retry;
        assert_eq!(o.per_limit()[1].remaining, 7, "big was charged by a denial");
    }
    let keys = limiter.keys("u").unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k.contains("{u}")), "{keys:?}");

    // A cost above the smallest limit is misuse, not a denial.
    let e = limiter.check("u", 4).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(
        limiter.check("", 1).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );

    // reset forgets the identity: the full quota is back.
    limiter.reset("u").await.unwrap();
    assert!(limiter.check("u", 3).await.unwrap().allowed);
}

/// GCRA's retry_after is exact: after a denial, waiting exactly
/// `retry_after` (measured from when the reply arrived, which is after the
/// server's `now`) gets the same request allowed — and with nothing to spare
/// (remaining 0), so the wait was not longer than needed by a whole unit.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_retry_after_is_honest(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_gcra_honest");
    // One unit per second, bursts of 3: the wait after retry_after may
    // overshoot by up to a second (a loaded machine) without changing
    // `remaining`.
    let limiter = build(
        &redis,
        &prefix,
        vec![Limit::gcra(1, Duration::from_secs(1)).burst(3)],
    );
    assert!(limiter.check("u", 3).await.unwrap().allowed);
    let unit = Duration::from_secs(1);
    for cost in [1, 2] {
        let denied = limiter.check("u", cost).await.unwrap();
        assert!(!denied.allowed, "cost {cost}: {denied:?}");
        let wait = denied.retry_after.unwrap();
        assert!(
            wait <= unit * cost && wait > unit * (cost - 1),
            "cost {cost}: {wait:?}"
        );
        tokio::time::sleep(wait).await;
        let d = limiter.check("u", cost).await.unwrap();
        assert!(
            d.allowed,
            "cost {cost}: denied after waiting retry_after {wait:?}: {d:?}"
        );
        assert_eq!(d.remaining, 0, "cost {cost}: {d:?}");
    }
}

/// Decisions depend only on the server's clock. The only clock the API
/// takes (the circuit breaker's) is set ten years ahead, and every command
/// the limiters send is captured from the server's SLOWLOG (threshold 0):
/// no argument is a timestamp of the client's wall clock in seconds,
/// milliseconds or microseconds. So a client whose clock is wrong sends
/// exactly what a correct one sends, and gets the same decisions — which are
/// checked to be the policy's.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_use_the_server_clock_not_the_clients(#[case] topology: Topology) {
    let opts = ServerOptions::default()
        .arg("slowlog-log-slower-than", "0")
        .arg("slowlog-max-len", "100000");
    let deployment = match topology {
        Topology::Standalone => Deployment::Server(RedisServer::start_with(opts).unwrap()),
        _ => Deployment::Cluster(
            RedisCluster::start(ClusterOptions::default().server_options(opts)).unwrap(),
        ),
    };
    skewed_clock_run(&deployment).await;
}

/// A private standalone server or cluster.
pub(crate) enum Deployment {
    Server(RedisServer),
    Cluster(RedisCluster),
}

#[cfg_attr(not(feature = "axum"), allow(dead_code))]
impl Deployment {
    pub(crate) fn url(&self) -> String {
        match self {
            Deployment::Server(s) => s.url(),
            Deployment::Cluster(c) => c.url(),
        }
    }

    /// The servers holding data.
    pub(crate) fn nodes(&self) -> Vec<&RedisServer> {
        match self {
            Deployment::Server(s) => vec![s],
            Deployment::Cluster(c) => c.masters().iter().collect(),
        }
    }

    /// Kills every server holding data.
    pub(crate) fn kill(&mut self) {
        match self {
            Deployment::Server(s) => s.kill().unwrap(),
            Deployment::Cluster(c) => c.masters_mut().iter_mut().for_each(|m| m.kill().unwrap()),
        }
    }

    pub(crate) fn start(topology: Topology) -> Deployment {
        match topology {
            Topology::Standalone => Deployment::Server(RedisServer::start().unwrap()),
            _ => Deployment::Cluster(RedisCluster::start(ClusterOptions::default()).unwrap()),
        }
    }
}

async fn skewed_clock_run(holder: &Deployment) {
    let redis = connect(&holder.url()).await.unwrap();
    let skewed = ManualClock::new();
    skewed.advance(Duration::from_secs(10 * 365 * 24 * 3600));
    for node in holder.nodes() {
        node.command(&["SLOWLOG", "RESET"]).unwrap();
    }
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::SlidingCounter,
        Algorithm::Gcra,
    ] {
        let breaker = CircuitBreaker::builder()
            .clock(Arc::new(skewed.clone()))
            .build()
            .unwrap();
        let limiter = Limiter::builder(&redis, "skew")
            .limit(limit(algorithm, 3, Duration::from_secs(60)))
            .fail_mode(FailMode::Closed)
            .breaker(breaker)
            .build()
            .unwrap();
        let allowed = {
            let mut n = 0;
            for _ in 0..5 {
                let d = limiter.check(algorithm.name(), 1).await.unwrap();
                assert!(d.reset_after <= Duration::from_secs(61), "{d:?}");
                n += u32::from(d.allowed);
            }
            n
        };
        assert_eq!(allowed, 3, "{}", algorithm.name());
    }

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let day = 2 * 86_400u64;
    let near = |v: u64, unit_now: u64, unit_day: u64| v.abs_diff(unit_now) < unit_day;
    let mut evals = 0;
    for node in holder.nodes() {
        let log = node.command(&["SLOWLOG", "GET", "100000"]).unwrap();
        for entry in log.as_array().unwrap_or(&[]) {
            let Some(fields) = entry.as_array() else {
                continue;
            };
            let Some(args) = fields.get(3).and_then(Reply::as_array) else {
                continue;
            };
            let args: Vec<String> = args
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            let Some(cmd) = args.first() else { continue };
            if !cmd.eq_ignore_ascii_case("evalsha") && !cmd.eq_ignore_ascii_case("eval") {
                continue;
            }
            evals += 1;
            for a in &args[1..] {
                if let Ok(v) = a.parse::<u64>() {
                    assert!(
                        !near(v, now.as_secs(), day)
                            && !near(v, now.as_millis() as u64, day * 1000)
                            && !near(v, now.as_micros() as u64, day * 1_000_000),
                        "a client timestamp was sent to Redis: {args:?}"
                    );
                }
            }
        }
    }
    assert!(
        evals >= 20,
        "expected the 20 checks in the SLOWLOG, saw {evals}"
    );
}

/// After traffic on every algorithm, multi-limits and the login throttle,
/// every key under the test's prefix (SCAN on every node) has a TTL, and no
/// TTL is longer than its window + 1 s.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_expires_within_its_window(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_ttl");
    let base = prefix.trim_end_matches(':');
    let secs = Duration::from_secs;
    let mut windows: HashMap<&str, Duration> = HashMap::new();
    let mut limiters = Vec::new();
    for (algorithm, w) in [
        (Algorithm::FixedWindow, secs(10)),
        (Algorithm::SlidingLog, secs(11)),
        (Algorithm::SlidingCounter, secs(12)),
        (Algorithm::Gcra, secs(13)),
    ] {
        let name = algorithm.name();
        windows.insert(name, w);
        let multi = format!("{name}m");
        limiters.push(build(
            &redis,
            &format!("{base}:{name}"),
            vec![limit(algorithm, 5, w)],
        ));
        limiters.push(build(
            &redis,
            &format!("{base}:{name}m"),
            vec![
                limit(algorithm, 3, w).name("a"),
                limit(algorithm, 10, w * 2).name("b"),
            ],
        ));
        windows.insert(Box::leak(multi.into_boxed_str()), w * 2);
    }
    for limiter in &limiters {
        for id in 0..20 {
            for _ in 0..4 {
                limiter.check(&format!("id{id}"), 1).await.unwrap();
            }
        }
    }
    let login = LoginThrottle::builder(&redis, format!("{base}:login"))
        .max_failures(3)
        .failure_window(secs(14))
        .lockout(secs(15))
        .fail_mode(FailMode::Closed)
        .build()
        .unwrap();
    for id in 0..10 {
        for _ in 0..id % 5 {
            login.record_failure(&format!("user{id}")).await.unwrap();
        }
    }
    windows.insert("login", secs(15));

    let pattern = format!("{base}:*");
    let client = redis.client();
    let keys: Vec<Key> = if client.is_clustered() {
        client
            .scan_cluster_buffered(pattern, Some(100), None)
            .collect::<Vec<_>>()
            .await
    } else {
        client
            .scan_buffered(pattern, Some(100), None)
            .collect::<Vec<_>>()
            .await
    }
    .into_iter()
    .map(|k| k.unwrap())
    .collect();
    // 8 limiters x 20 identities x (1 or 2 keys), + the login keys.
    assert!(keys.len() >= 4 * 20 * 3, "found only {} keys", keys.len());
    for key in keys {
        let name = key.as_str().unwrap().to_string();
        let space = name[base.len() + 1..]
            .split(':')
            .next()
            .unwrap()
            .to_string();
        let window = windows[space.as_str()];
        let ttl: i64 = client.pttl(key).await.unwrap();
        assert_ne!(ttl, -1, "{name} has no TTL");
        // -2: it expired between SCAN and PTTL, as it should eventually.
        assert!(
            Duration::from_millis(ttl.max(0) as u64) <= window + Duration::from_secs(1),
            "{name}: TTL {ttl} ms is longer than its window {window:?} + 1 s"
        );
    }
}

/// Failures are counted, the N-th locks the identity out, a success
/// resets the count, unlock lifts a lockout.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_locks_out_after_n_failures_and_success_resets(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_login");
    let login = LoginThrottle::builder(&redis, prefix.trim_end_matches(':'))
        .max_failures(3)
        .failure_window(HOUR)
        .lockout(HOUR)
        .fail_mode(FailMode::Closed)
        .build()
        .unwrap();
    let user = "alice@example.com";
    for n in 1..=2 {
        let s = login.record_failure(user).await.unwrap();
        assert!(!s.locked);
        assert_eq!((s.failures, s.remaining_attempts), (n, 3 - n));
    }
    login.record_success(user).await.unwrap();
    let s = login.status(user).await.unwrap();
    assert_eq!((s.locked, s.failures), (false, 0));

    for _ in 0..2 {
        login.record_failure(user).await.unwrap();
    }
    let s = login.record_failure(user).await.unwrap();
    assert!(s.locked, "{s:?}");
    let lock = s.retry_after.unwrap();
    assert!(
        lock > HOUR - Duration::from_secs(5) && lock <= HOUR,
        "{lock:?}"
    );
    // Failures while locked do not extend the lockout.
    let again = login.record_failure(user).await.unwrap();
    assert!(again.locked && again.retry_after.unwrap() <= lock);
    // A success does not lift a lockout; unlock does.
    login.record_success(user).await.unwrap();
    assert!(login.status(user).await.unwrap().locked);
    login.unlock(user).await.unwrap();
    let s = login.status(user).await.unwrap();
    assert_eq!((s.locked, s.failures, s.remaining_attempts), (false, 0, 3));
    // Another identity was never affected.
    assert!(!login.status("bob").await.unwrap().locked);
}

/// 64 concurrent failures with a threshold of 5: failures 1..4 are each
/// reported once, every other attempt sees the lockout.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_login_failures_lock_out_exactly_at_the_threshold(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_login_conc");
    let login = LoginThrottle::builder(&redis, prefix.trim_end_matches(':'))
        .max_failures(5)
        .fail_mode(FailMode::Closed)
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let login = login.clone();
            tokio::spawn(async move { login.record_failure("mallory").await.unwrap() })
        })
        .collect();
    let mut seen = Vec::new();
    let mut locked = 0;
    for t in tasks {
        let s = t.await.unwrap();
        if s.locked {
            locked += 1;
        } else {
            seen.push(s.failures);
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![1, 2, 3, 4]);
    assert_eq!(locked, 60);
    assert_eq!(login.metrics().denied, 60);
}

/// For every algorithm, a denied request's `retry_after` is enough: the
/// same request sent that long after the denial (by the reply's arrival,
/// which is after the server's decision) is allowed.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_retry_after_gets_the_request_allowed(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    #[values(
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::SlidingCounter,
        Algorithm::Gcra
    )]
    algorithm: Algorithm,
) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_retry");
    let limiter = build(
        &redis,
        &prefix,
        vec![limit(algorithm, 3, Duration::from_millis(600))],
    );
    // Through the object-safe trait, as a consumer depending on core only would.
    let dynamic: Arc<dyn fredkit_core::traits::RateLimiter> = Arc::new(limiter.clone());
    for cost in [1, 2] {
        // The first denial (a second check could land in a new window on a
        // stalled machine and be allowed).
        let denied = loop {
            let d = dynamic.check("u", cost).await.unwrap();
            if !d.allowed {
                break d;
            }
        };
        let wait = denied.retry_after.unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(1201),
            "{wait:?}"
        );
        tokio::time::sleep(wait).await;
        let d = dynamic.check("u", cost).await.unwrap();
        assert!(
            d.allowed,
            "{}: cost {cost} denied after waiting {wait:?}: {d:?}",
            algorithm.name()
        );
    }
}

/// Sliding log members stay unique for concurrent requests of cost 3 (many
/// land in the same microsecond): the sorted set holds exactly 3 members
/// per allowed request, and exactly 33 of 64 requests fit a quota of 100.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_log_counts_every_unit_of_concurrent_costly_requests(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_log_units");
    let limiter = build(&redis, &prefix, vec![Limit::sliding_log(100, HOUR)]);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.check("u", 3).await.unwrap().allowed })
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        allowed += u64::from(t.await.unwrap());
    }
    assert_eq!(allowed, 33);
    let key = limiter.keys("u").unwrap().remove(0);
    let members: u64 = redis.client().zcard(&key).await.unwrap();
    assert_eq!(members, 99);
    assert_eq!(limiter.check("u", 0).await.unwrap().remaining, 1);
}

/// With the server (every cluster master) killed, the login throttle
/// answers with its fail mode — closed: locked, open: not locked — flagged
/// as a fallback and counted; after the first failure the breaker answers
/// without waiting for Redis.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_login_throttle_uses_its_fail_mode_when_server_killed(#[case] topology: Topology) {
    let mut deployment = Deployment::start(topology);
    let redis = connect(&deployment.url()).await.unwrap();
    let throttle = |mode: FailMode| {
        let breaker = CircuitBreaker::builder()
            .minimum_throughput(1)
            .break_duration(Duration::from_secs(60))
            .build()
            .unwrap();
        LoginThrottle::builder(&redis, "login")
            .max_failures(3)
            .fail_mode(mode)
            .breaker(breaker)
            .build()
            .unwrap()
    };
    let (closed, open) = (throttle(FailMode::Closed), throttle(FailMode::Open));
    let s = closed.record_failure("u").await.unwrap();
    assert_eq!((s.locked, s.failures, s.fallback), (false, 1, None));

    deployment.kill();

    for _ in 0..3 {
        let s = closed.status("u").await.unwrap();
        assert!(s.locked && s.retry_after.is_some(), "{s:?}");
        assert_eq!(s.fallback, Some(FailMode::Closed));
        let s = open.record_failure("u").await.unwrap();
        assert!(!s.locked, "{s:?}");
        assert_eq!(s.fallback, Some(FailMode::Open));
    }
    assert_eq!(closed.metrics().fail_closed, 3);
    assert_eq!(open.metrics().fail_open, 3);
    // record_success has no fail mode: the outage is an error.
    let e = closed.record_success("u").await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
}

/// Cost 0 only reports, and is allowed, even when the state is over a
/// policy that was lowered since it was written; the next real request is
/// denied and reports remaining 0.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_zero_reports_without_consuming_even_over_a_lowered_limit(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    #[values(
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::SlidingCounter,
        Algorithm::Gcra
    )]
    algorithm: Algorithm,
) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_cost0");
    let before = build(&redis, &prefix, vec![limit(algorithm, 10, HOUR)]);
    assert!(before.check("u", 8).await.unwrap().allowed);
    for _ in 0..3 {
        let d = before.check("u", 0).await.unwrap();
        assert!(d.allowed && d.remaining == 2, "{d:?}");
    }
    // (GCRA: a lower burst at the same rate; a lower rate would stretch the
    // emission interval and the stored state would fit it again.)
    let lower = match algorithm {
        Algorithm::Gcra => Limit::gcra(10, HOUR).burst(5),
        _ => limit(algorithm, 5, HOUR),
    };
    let lowered = build(&redis, &prefix, vec![lower]);
    let d = lowered.check("u", 0).await.unwrap();
    assert!(d.allowed && d.remaining == 0, "{d:?}");
    let d = lowered.check("u", 1).await.unwrap();
    assert!(!d.allowed && d.remaining == 0, "{d:?}");
    // Nothing was consumed by the reports or the denial.
    assert_eq!(before.check("u", 0).await.unwrap().remaining, 2);
}

/// A key of the limiter overwritten with another type is an error (Redis
/// answered; it is not an outage), counted, and not a fail-mode decision.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_value_in_a_limiter_key_is_an_error_not_a_fallback(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_foreign");
    let limiter = build(&redis, &prefix, vec![Limit::sliding_log(5, HOUR)]);
    let key = limiter.keys("u").unwrap().remove(0);
    let _: () = redis
        .client()
        .set(
            &key,
            "not a sorted set",
            Some(Expiration::EX(60)),
            None,
            false,
        )
        .await
        .unwrap();
    let e = limiter.check("u", 1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Script, "{e}");
    let m = limiter.metrics();
    assert_eq!((m.errors, m.fail_closed), (1, 0));
    assert_eq!(
        limiter.breaker().state(),
        fredkit_core::BreakerState::Closed
    );
}

/// With the server (every cluster master) frozen by SIGSTOP — connections
/// stay open, nothing is answered — a check does not hang: it returns the
/// fail mode's decision once the limiter's timeout (or, without one, the
/// connection's command timeout) runs out, then the breaker answers without
/// waiting; after the server resumes and the breaker's pause ends, Redis
/// decides again.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_paused_server_checks_return_the_fail_mode_decision(#[case] topology: Topology) {
    let deployment = Deployment::start(topology);
    let redis = connect(&deployment.url()).await.unwrap();
    let limiter = |mode: FailMode, timeout: Option<Duration>| {
        let breaker = CircuitBreaker::builder()
            .minimum_throughput(2)
            .break_duration(Duration::from_millis(300))
            .build()
            .unwrap();
        let mut b = Limiter::builder(&redis, "paused")
            .limit(Limit::gcra(5, HOUR))
            .fail_mode(mode)
            .breaker(breaker);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().unwrap()
    };
    let open = limiter(FailMode::Open, None);
    let closed = limiter(FailMode::Closed, Some(Duration::from_millis(200)));
    assert!(open.check("u", 2).await.unwrap().allowed);
    assert!(closed.check("v", 2).await.unwrap().allowed);

    for node in deployment.nodes() {
        node.pause().unwrap();
    }
    // Not a timing assertion: a generous bound that only a hang exceeds.
    let bounded = Duration::from_secs(10);
    for _ in 0..4 {
        let o = tokio::time::timeout(bounded, open.check_all("u", 1))
            .await
            .expect("a check hung on a paused server")
            .unwrap();
        assert!(o.allowed() && o.fallback() == Some(FailMode::Open), "{o:?}");
        let o = tokio::time::timeout(bounded, closed.check_all("v", 1))
            .await
            .expect("a check hung on a paused server")
            .unwrap();
        assert!(
            !o.allowed() && o.fallback() == Some(FailMode::Closed),
            "{o:?}"
        );
        assert!(o.decision().retry_after.unwrap() > Duration::ZERO);
    }
    assert_eq!(open.metrics().fail_open, 4);
    assert_eq!(closed.metrics().fail_closed, 4);
    assert_eq!(open.breaker().state(), fredkit_core::BreakerState::Open);

    for node in deployment.nodes() {
        node.resume().unwrap();
    }
    // Redis decides again (the breaker lets a trial through after 300 ms).
    let mut decided = None;
    for _ in 0..100 {
        let o = open.check_all("u", 0).await.unwrap();
        if o.fallback().is_none() {
            decided = Some(o.decision());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = decided.expect("Redis never answered again after the server resumed");
    // 2 consumed before the freeze. The checks that timed out had been sent:
    // the server ran them when it resumed, so they may have consumed too
    // (documented on `LimiterBuilder::timeout`), never more than the burst.
    assert!(d.remaining <= 3, "{d:?}");
}

/// A GCRA key holding an absurd number (written by something else) makes
/// the script reply with an integer at the edge of i64; the limiter decodes
/// it without overflowing (a debug build would panic): the request is
/// denied, nothing remains, and the state is not touched.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_gcra_state_is_decoded_without_overflow(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_gcra_absurd");
    let one = build(&redis, &prefix, vec![Limit::gcra(10, HOUR)]);
    let key = one.keys("u").unwrap().remove(0);
    let _: () = redis
        .client()
        .set(&key, "1e300", Some(Expiration::EX(60)), None, false)
        .await
        .unwrap();
    let d = one.check("u", 1).await.unwrap();
    assert!(!d.allowed && d.remaining == 0, "{d:?}");
    assert!(d.retry_after.unwrap() > HOUR, "{d:?}");
    let stored: String = redis.client().get(&key).await.unwrap();
    assert_eq!(stored, "1e300");
}

/// A server demoted to a replica under the client (a failover the client has
/// not followed yet) refuses the check's writes with `READONLY`: Redis
/// cannot count there, so the check answers with the fail mode and tells
/// the breaker, as for an outage — it is not an error the caller must
/// handle. The login throttle does the same. (Standalone only: a cluster
/// client follows the failover through `MOVED`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_failover_demoted_server_gets_the_fail_mode_decision() {
    let (primary, demoted) = (RedisServer::start().unwrap(), RedisServer::start().unwrap());
    let redis = connect(&demoted.url()).await.unwrap();
    let port = primary
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    demoted.command(&["REPLICAOF", "127.0.0.1", &port]).unwrap();
    for mode in [FailMode::Open, FailMode::Closed] {
        let breaker = CircuitBreaker::builder()
            .minimum_throughput(2)
            .build()
            .unwrap();
        let limiter = Limiter::builder(&redis, "demoted")
            .limit(Limit::gcra(10, HOUR))
            .fail_mode(mode)
            .breaker(breaker.clone())
            .build()
            .unwrap();
        for _ in 0..2 {
            let o = limiter.check_all("u", 1).await.unwrap();
            assert_eq!(o.fallback(), Some(mode), "{o:?}");
            assert_eq!(o.allowed(), mode == FailMode::Open);
        }
        let m = limiter.metrics();
        assert_eq!((m.errors, m.fail_open + m.fail_closed), (0, 2), "{m:?}");
        assert_eq!(breaker.state(), fredkit_core::BreakerState::Open);

        let login = LoginThrottle::builder(&redis, "demoted_login")
            .fail_mode(mode)
            .build()
            .unwrap();
        let s = login.record_failure("u").await.unwrap();
        assert_eq!(s.fallback, Some(mode), "{s:?}");
    }
}

/// Plants, in a limiter key, a state that denies for ever unless repaired:
/// far-future state with no TTL (PERSIST, a restore, another tool).
async fn plant_denying_state_without_ttl(redis: &Redis, algorithm: Algorithm, key: &str) {
    let c = redis.client();
    // 1e17 µs: the year ~5138.
    match algorithm {
        Algorithm::FixedWindow => {
            let _: () = c.set(key, 1_000_000_000, None, None, false).await.unwrap();
        }
        Algorithm::SlidingLog => {
            let members: Vec<(f64, String)> = (0..10).map(|i| (1e17, format!("{i}"))).collect();
            let _: () = c
                .zadd(key, None, None, false, false, members)
                .await
                .unwrap();
        }
        Algorithm::SlidingCounter => {
            let _: () = c
                .hset(
                    key,
                    [("s", "100000000000000000"), ("c", "1000000000"), ("p", "0")],
                )
                .await
                .unwrap();
        }
        Algorithm::Gcra => {
            let _: () = c.set(key, "1e300", None, None, false).await.unwrap();
        }
        other => panic!("unknown algorithm {other:?}"),
    }
    let ttl: i64 = c.pttl(key).await.unwrap();
    assert_eq!(ttl, -1, "planted without a TTL");
}

/// A key found without a TTL holding a state that denies (far-future
/// timestamps, a huge count) is repaired by the very next check, denied or
/// reporting (cost 0): it gets a TTL no longer than its window, and the
/// denial says to come back within the window — never "for ever". On every
/// algorithm, one limit and two (the scripts' two code paths).
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_ttl_is_repaired_and_never_denies_for_ever(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    #[values(
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::SlidingCounter,
        Algorithm::Gcra
    )]
    algorithm: Algorithm,
    #[values(0, 1)] cost: u32,
    #[values(1, 2)] limits: usize,
) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_no_ttl");
    let all = vec![
        limit(algorithm, 10, HOUR).name("a"),
        limit(algorithm, 100, HOUR * 2).name("b"),
    ];
    let limiter = build(&redis, &prefix, all.into_iter().take(limits).collect());
    let key = limiter.keys("u").unwrap().remove(0);
    plant_denying_state_without_ttl(&redis, algorithm, &key).await;

    let d = limiter.check("u", cost).await.unwrap();
    if cost > 0 {
        assert!(!d.allowed, "{} {d:?}", algorithm.name());
        let wait = d.retry_after.expect("a denial says when to retry");
        assert!(
            wait <= HOUR + Duration::from_secs(1),
            "{}: retry_after {wait:?} is beyond the window",
            algorithm.name()
        );
    }
    let ttl: i64 = redis.client().pttl(&key).await.unwrap();
    assert!(
        ttl > 0 && ttl <= HOUR.as_millis() as i64,
        "{}: the key was not given a TTL within its window: PTTL {ttl}",
        algorithm.name()
    );
}

/// Garbage where a number belongs (not a number, NaN, a fraction where a
/// count is kept) counts as no state: the check is allowed (no script error
/// for ever) and the admitted request overwrites it with a TTL. The login
/// throttle's failure counter likewise starts again.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_numbers_count_as_no_state_and_are_overwritten(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    #[values(Algorithm::FixedWindow, Algorithm::SlidingCounter, Algorithm::Gcra)]
    algorithm: Algorithm,
    #[values("nan", "1.5", "garbage")] garbage: &str,
) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_garbage");
    let limiter = build(&redis, &prefix, vec![limit(algorithm, 10, HOUR)]);
    let key = limiter.keys("u").unwrap().remove(0);
    let c = redis.client();
    if algorithm == Algorithm::SlidingCounter {
        let _: () = c
            .hset(&key, [("s", garbage), ("c", garbage), ("p", garbage)])
            .await
            .unwrap();
    } else {
        let _: () = c.set(&key, garbage, None, None, false).await.unwrap();
    }
    let d = limiter.check("u", 1).await.unwrap();
    assert!(d.allowed, "{} {garbage}: {d:?}", algorithm.name());
    assert_eq!(d.remaining, 9, "{} {garbage}: {d:?}", algorithm.name());
    let ttl: i64 = c.pttl(&key).await.unwrap();
    assert!(ttl > 0, "{} {garbage}: PTTL {ttl}", algorithm.name());
    let d = limiter.check("u", 1).await.unwrap();
    assert_eq!(d.remaining, 8, "{} {garbage}: {d:?}", algorithm.name());
}

/// A login failure counter holding garbage (not an integer, or at the i64
/// limit, where INCR fails) starts again at one failure with a window,
/// instead of failing every later `record_failure`.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_login_failure_counter_starts_again(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_login_garbage");
    let login = LoginThrottle::builder(&redis, prefix.trim_end_matches(':'))
        .max_failures(3)
        .failure_window(HOUR)
        .lockout(HOUR)
        .fail_mode(FailMode::Closed)
        .build()
        .unwrap();
    let space = fredkit_core::KeySpace::new(prefix.trim_end_matches(':')).unwrap();
    for (user, garbage) in [("u1", "1.5"), ("u2", "9223372036854775807"), ("u3", "x")] {
        let counter = space.tagged(user, ["f"]).unwrap();
        let _: () = redis
            .client()
            .set(&counter, garbage, None, None, false)
            .await
            .unwrap();
        let s = login.record_failure(user).await.unwrap();
        assert!(!s.locked, "{garbage}: {s:?}");
        assert_eq!(s.remaining_attempts, 2, "{garbage}: {s:?}");
        let ttl: i64 = redis.client().pttl(&counter).await.unwrap();
        assert!(ttl > 0, "{garbage}: PTTL {ttl}");
    }
}
